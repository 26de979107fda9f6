// Scalar reference: the definition every SIMD path is tested against.
#include <cstring>

#include "hde/kernels.h"

namespace dwcp::hde {
namespace {

inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

bool is_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i += 64) {
    uint64_t acc = 0;
    for (size_t j = 0; j < 64; j += 8) acc |= load64(p + i + j);
    if (acc) return false;
  }
  return true;
}

uint32_t diff_words(const uint8_t* a, const uint8_t* b, size_t n, uint64_t* bitmap,
                    uint32_t limit) {
  uint32_t count = 0;
  for (size_t blk = 0; blk < n; blk += 512) {
    uint64_t m = 0;
    for (unsigned w = 0; w < 64; w++) {
      m |= static_cast<uint64_t>(load64(a + blk + w * 8) != load64(b + blk + w * 8)) << w;
    }
    *bitmap++ = m;
    count += static_cast<uint32_t>(__builtin_popcountll(m));
    if (count > limit) return count;
  }
  return count;
}

void xor_bytes(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = load64(a + i) ^ load64(b + i);
    std::memcpy(dst + i, &v, 8);
  }
  for (; i < n; i++) dst[i] = a[i] ^ b[i];
}

void xor_into(uint8_t* dst, const uint8_t* src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = load64(dst + i) ^ load64(src + i);
    std::memcpy(dst + i, &v, 8);
  }
  for (; i < n; i++) dst[i] ^= src[i];
}

void stream_copy(uint8_t* dst, const uint8_t* src, size_t n) { std::memcpy(dst, src, n); }

uint64_t hash(const uint8_t* p, size_t n) {
  using namespace hash_detail;
  uint64_t acc[8] = {0};
  uint64_t key[8];
  for (int i = 0; i < 8; i++) key[i] = kLaneKeys[i];
  for (size_t blk = 0; blk < n; blk += 64) {
    for (int i = 0; i < 8; i++) {
      uint64_t x = load64(p + blk + i * 8);
      uint64_t v = x ^ key[i];
      acc[i] += (v & 0xffffffffu) * (v >> 32) + x;
      key[i] += kBlockStep;
    }
  }
  return finish(acc, n);
}

const Kernels kKernels{SimdPath::kScalar, "scalar", is_zero, diff_words, xor_bytes, xor_into, stream_copy,
                       hash};

}  // namespace

const Kernels& scalar_kernels() { return kKernels; }

}  // namespace dwcp::hde
