// Built with -msse4.2; only called after the CPU check in crc32c.cc.
#include <nmmintrin.h>

#include <cstring>

#include "util/bits.h"
#include "util/crc32c.h"

namespace dwcp {
namespace {

// Long inputs run as three interleaved streams of kBlock bytes, hiding the
// instruction's 3-cycle latency; the streams are joined with a linear
// "append kBlock zero bytes" operator held as four byte tables.
constexpr size_t kBlock = 1024;


struct ShiftOp {
  uint32_t t[4][256];
  ShiftOp() {
    for (int j = 0; j < 4; j++) {
      for (uint32_t v = 0; v < 256; v++) {
        uint64_t c = static_cast<uint64_t>(v) << (8 * j);
        for (size_t i = 0; i < kBlock; i += 8) c = _mm_crc32_u64(c, 0);
        t[j][v] = static_cast<uint32_t>(c);
      }
    }
  }
  uint32_t operator()(uint32_t c) const {
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
  }
};

}  // namespace

uint32_t crc32c_hw(uint32_t crc, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  if (len >= 3 * kBlock) {
    static const ShiftOp shift;
    do {
      uint64_t c1 = 0, c2 = 0;
      for (size_t i = 0; i < kBlock; i += 8) {
        c = _mm_crc32_u64(c, load64(p + i));
        c1 = _mm_crc32_u64(c1, load64(p + kBlock + i));
        c2 = _mm_crc32_u64(c2, load64(p + 2 * kBlock + i));
      }
      c = shift(shift(static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1)) ^ static_cast<uint32_t>(c2);
      p += 3 * kBlock;
      len -= 3 * kBlock;
    } while (len >= 3 * kBlock);
  }
  while (len >= 8) {
    c = _mm_crc32_u64(c, load64(p));
    p += 8;
    len -= 8;
  }
  auto c32 = static_cast<uint32_t>(c);
  while (len--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}

}  // namespace dwcp
