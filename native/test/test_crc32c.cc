#include <cstring>

#include "test.h"
#include "util/crc32c.h"

using namespace dwcp;

TEST(crc32c_known_vectors) {
  const char* s = "123456789";
  CHECK_EQ(crc32c_portable(0, s, 9), 0xE3069283u);
  CHECK_EQ(crc32c(0, s, 9), 0xE3069283u);
  uint8_t zeros[32] = {};
  CHECK_EQ(crc32c(0, zeros, 32), 0x8A9136AAu);  // RFC 3720 B.4
}

TEST(crc32c_hw_matches_portable_and_chains) {
  if (!crc32c_hw_available()) return;
  std::mt19937_64 rng(test::seed());
  std::vector<uint8_t> buf(20000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t len : {0u, 1u, 7u, 8u, 9u, 63u, 64u, 1000u, 3071u, 3072u, 3073u, 6150u, 4999u, 19990u}) {
    for (size_t off : {0u, 1u, 3u}) {
      if (off + len > buf.size()) continue;
      CHECK_EQ(crc32c_hw(0, buf.data() + off, len), crc32c_portable(0, buf.data() + off, len));
    }
  }
  uint32_t whole = crc32c(0, buf.data(), buf.size());
  uint32_t part = crc32c(crc32c(0, buf.data(), 1234), buf.data() + 1234, buf.size() - 1234);
  CHECK_EQ(whole, part);
}

TEST(crc32c_vpclmul_matches_portable_and_chains) {
  if (!crc32c_vpclmul_available()) {
    std::fprintf(stderr, "    (no AVX-512 VPCLMULQDQ here: skipped)\n");
    return;
  }
  std::mt19937_64 rng(test::seed() + 1);
  std::vector<uint8_t> buf(70000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  // Every length around the fold boundaries, several alignments, chained CRCs.
  for (size_t len = 0; len < 1200; len++) {
    const size_t off = len % 7;
    const uint32_t init = static_cast<uint32_t>(rng());
    CHECK_EQ(crc32c_vpclmul(init, buf.data() + off, len), crc32c_portable(init, buf.data() + off, len));
  }
  for (size_t len : {4095u, 4096u, 4097u, 65536u, 69999u}) {
    CHECK_EQ(crc32c_vpclmul(0, buf.data(), len), crc32c_portable(0, buf.data(), len));
  }
  std::vector<uint8_t> zeros(4096, 0), ones(4096, 0xff);
  CHECK_EQ(crc32c_vpclmul(0, zeros.data(), zeros.size()), crc32c_portable(0, zeros.data(), zeros.size()));
  CHECK_EQ(crc32c_vpclmul(0, ones.data(), ones.size()), crc32c_portable(0, ones.data(), ones.size()));
  CHECK_EQ(std::strcmp(crc32c_path(), "vpclmul"), 0);
}
