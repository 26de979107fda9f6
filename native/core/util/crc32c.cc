#include "util/crc32c.h"

#include <array>
#include <cstdlib>
#include <cstring>

#include "util/cpu.h"

namespace dwcp {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

// Slicing-by-8 tables: the portable path still runs at a few GB/s.
struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  Tables() {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
      for (int s = 1; s < 8; s++) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
  }
};

const Tables& tables() {
  static const Tables tb;
  return tb;
}

}  // namespace

uint32_t crc32c_portable(uint32_t crc, const void* data, size_t len) {
  const auto& t = tables().t;
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  while (len >= 8) {
    uint32_t lo = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                  (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
    lo ^= crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    p += 8;
    len -= 8;
  }
  while (len--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

bool crc32c_hw_available() { return cpu_features().sse42; }

// DWCP_HDE_SIMD set to anything but avx512 also keeps CRC32C off AVX-512
// (valgrind cannot decode it).
bool crc32c_vpclmul_available() {
  const CpuFeatures& f = cpu_features();
  const char* forced = std::getenv("DWCP_HDE_SIMD");
  return f.sse42 && f.avx512f && f.vpclmulqdq && (!forced || !*forced || std::strcmp(forced, "avx512") == 0 || std::strcmp(forced, "auto") == 0);
}

namespace {
enum class Path { kTable, kSse42, kVpclmul };
Path chosen_path() {
  static const Path p = crc32c_vpclmul_available() ? Path::kVpclmul : crc32c_hw_available() ? Path::kSse42 : Path::kTable;
  return p;
}
}  // namespace

const char* crc32c_path() {
  switch (chosen_path()) {
    case Path::kVpclmul: return "vpclmul";
    case Path::kSse42: return "sse4.2";
    case Path::kTable: return "table";
  }
  return "table";
}

uint32_t crc32c(uint32_t crc, const void* data, size_t len) {
  switch (chosen_path()) {
    case Path::kVpclmul: return crc32c_vpclmul(crc, data, len);
    case Path::kSse42: return crc32c_hw(crc, data, len);
    case Path::kTable: break;
  }
  return crc32c_portable(crc, data, len);
}

}  // namespace dwcp
