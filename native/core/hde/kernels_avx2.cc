// AVX2, built with -mavx2; only reached after the CPU check in dispatch.cc.
#include <immintrin.h>

#include "hde/kernels.h"
#include "util/bits.h"
#include "hde/kernels_common.h"

namespace dwcp::hde {
namespace {

inline __m256i ld(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline void st(uint8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

bool is_zero(const uint8_t* p, size_t n) {
  size_t i = 0;
  for (; i + 256 <= n; i += 256) {
    __m256i acc = _mm256_or_si256(_mm256_or_si256(ld(p + i), ld(p + i + 32)),
                                  _mm256_or_si256(ld(p + i + 64), ld(p + i + 96)));
    acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_or_si256(ld(p + i + 128), ld(p + i + 160)),
                                               _mm256_or_si256(ld(p + i + 192), ld(p + i + 224))));
    if (!_mm256_testz_si256(acc, acc)) return false;
  }
  for (; i < n; i += 64) {
    __m256i acc = _mm256_or_si256(ld(p + i), ld(p + i + 32));
    if (!_mm256_testz_si256(acc, acc)) return false;
  }
  return true;
}

uint32_t diff_words(const uint8_t* a, const uint8_t* b, size_t n, uint64_t* bitmap,
                    uint32_t limit) {
  return diff_words_with(a, b, n, bitmap, limit, [](const uint8_t* pa, const uint8_t* pb) {
    // Most blocks of a dirty page are unchanged: test the whole block first.
    __m256i any = _mm256_setzero_si256();
    for (unsigned off = 0; off < 512; off += 64) {
      any = _mm256_or_si256(any, _mm256_or_si256(_mm256_xor_si256(ld(pa + off), ld(pb + off)),
                                                 _mm256_xor_si256(ld(pa + off + 32), ld(pb + off + 32))));
    }
    uint64_t m = 0;
    if (_mm256_testz_si256(any, any)) return m;
    for (unsigned w = 0; w < 64; w += 8) {
      const auto eq0 = static_cast<unsigned>(
          _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(ld(pa + w * 8), ld(pb + w * 8)))));
      const auto eq1 = static_cast<unsigned>(_mm256_movemask_pd(
          _mm256_castsi256_pd(_mm256_cmpeq_epi64(ld(pa + w * 8 + 32), ld(pb + w * 8 + 32)))));
      m |= static_cast<uint64_t>(~(eq0 | (eq1 << 4)) & 0xffu) << w;
    }
    return m;
  });
}

void xor_bytes(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) st(dst + i, _mm256_xor_si256(ld(a + i), ld(b + i)));
  for (; i < n; i++) dst[i] = a[i] ^ b[i];
}

void xor_into(uint8_t* dst, const uint8_t* src, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) st(dst + i, _mm256_xor_si256(ld(dst + i), ld(src + i)));
  for (; i < n; i++) dst[i] ^= src[i];
}

void stream_copy(uint8_t* dst, const uint8_t* src, size_t n) {
  stream_copy_with<32>(dst, src, n, [](uint8_t* d, const uint8_t* s) { _mm256_stream_si256(reinterpret_cast<__m256i*>(d), ld(s)); });
}

uint64_t hash(const uint8_t* p, size_t n) {
  using namespace hash_detail;
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  __m256i key0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneKeys));
  __m256i key1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneKeys + 4));
  const __m256i step = _mm256_set1_epi64x(static_cast<long long>(kBlockStep));
  for (size_t blk = 0; blk < n; blk += 64) {
    __m256i x0 = ld(p + blk), x1 = ld(p + blk + 32);
    __m256i v0 = _mm256_xor_si256(x0, key0), v1 = _mm256_xor_si256(x1, key1);
    acc0 = _mm256_add_epi64(acc0, _mm256_add_epi64(_mm256_mul_epu32(v0, _mm256_srli_epi64(v0, 32)), x0));
    acc1 = _mm256_add_epi64(acc1, _mm256_add_epi64(_mm256_mul_epu32(v1, _mm256_srli_epi64(v1, 32)), x1));
    key0 = _mm256_add_epi64(key0, step);
    key1 = _mm256_add_epi64(key1, step);
  }
  uint64_t lanes[8];
  st(reinterpret_cast<uint8_t*>(lanes), acc0);
  st(reinterpret_cast<uint8_t*>(lanes + 4), acc1);
  return finish(lanes, n);
}

const Kernels kKernels{SimdPath::kAvx2, "avx2", is_zero, diff_words, xor_bytes, xor_into, stream_copy,
                       emit_words_scalar, apply_words_scalar, hash};

}  // namespace

const Kernels& avx2_kernels() { return kKernels; }

}  // namespace dwcp::hde
