// Scalar reference: the definition every SIMD path is tested against.
#include <cstring>

#include "hde/kernels.h"
#include "hde/kernels_common.h"
#include "util/bits.h"

namespace dwcp::hde {
namespace {


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
  return diff_words_with(a, b, n, bitmap, limit, [](const uint8_t* pa, const uint8_t* pb) {
    uint64_t m = 0;
    for (unsigned w = 0; w < 64; w++) m |= static_cast<uint64_t>(load64(pa + w * 8) != load64(pb + w * 8)) << w;
    return m;
  });
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
                       emit_words_scalar, apply_words_scalar, hash};

}  // namespace

uint8_t* emit_words_scalar(uint8_t* out, const uint8_t* cur, const uint8_t* ref, uint8_t* patch,
                           const uint64_t* bitmap, size_t nwords) {
  for (size_t i = 0; i < nwords / 64; i++) {
    for (uint64_t m = bitmap[i]; m; m &= m - 1) {
      const size_t off = (i * 64 + static_cast<size_t>(__builtin_ctzll(m))) * 8;
      const uint64_t c = load64(cur + off);
      const uint64_t x = c ^ load64(ref + off);
      std::memcpy(out, &x, 8);
      out += 8;
      if (patch) std::memcpy(patch + off, &c, 8);
    }
  }
  return out;
}

const uint8_t* apply_words_scalar(uint8_t* page, const uint8_t* in, const uint8_t* bm, size_t nwords) {
  for (size_t i = 0; i < nwords / 8; i += 8) {
    uint8_t* words = page + i * 64;
    for (uint64_t m = load64(bm + i); m; m &= m - 1) {
      uint8_t* w = words + __builtin_ctzll(m) * 8;
      const uint64_t x = load64(w) ^ load64(in);
      std::memcpy(w, &x, 8);
      in += 8;
    }
  }
  return in;
}

const Kernels& scalar_kernels() { return kKernels; }

}  // namespace dwcp::hde
