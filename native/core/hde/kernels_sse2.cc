// SSE2: the x86-64 baseline, so it needs no special compiler flags.
#include <emmintrin.h>

#include "hde/kernels.h"
#include "util/bits.h"
#include "hde/kernels_common.h"

namespace dwcp::hde {
namespace {

inline __m128i ld(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline void st(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

bool is_zero(const uint8_t* p, size_t n) {
  const __m128i z = _mm_setzero_si128();
  for (size_t i = 0; i < n; i += 64) {
    __m128i acc = _mm_or_si128(_mm_or_si128(ld(p + i), ld(p + i + 16)),
                               _mm_or_si128(ld(p + i + 32), ld(p + i + 48)));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(acc, z)) != 0xffff) return false;
  }
  return true;
}

uint32_t diff_words(const uint8_t* a, const uint8_t* b, size_t n, uint64_t* bitmap,
                    uint32_t limit) {
  return diff_words_with(a, b, n, bitmap, limit, [](const uint8_t* pa, const uint8_t* pb) {
    // Most blocks of a dirty page are unchanged: test the whole block first.
    __m128i any = _mm_setzero_si128();
    for (unsigned off = 0; off < 512; off += 32) {
      any = _mm_or_si128(any, _mm_or_si128(_mm_xor_si128(ld(pa + off), ld(pb + off)),
                                           _mm_xor_si128(ld(pa + off + 16), ld(pb + off + 16))));
    }
    uint64_t m = 0;
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(any, _mm_setzero_si128())) == 0xffff) return m;
    for (unsigned w = 0; w < 64; w += 2) {
      const auto eq = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(ld(pa + w * 8), ld(pb + w * 8))));
      m |= static_cast<uint64_t>((eq & 0xff) != 0xff) << w;
      m |= static_cast<uint64_t>((eq >> 8) != 0xff) << (w + 1);
    }
    return m;
  });
}

void xor_bytes(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) st(dst + i, _mm_xor_si128(ld(a + i), ld(b + i)));
  for (; i < n; i++) dst[i] = a[i] ^ b[i];
}

void xor_into(uint8_t* dst, const uint8_t* src, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) st(dst + i, _mm_xor_si128(ld(dst + i), ld(src + i)));
  for (; i < n; i++) dst[i] ^= src[i];
}

void stream_copy(uint8_t* dst, const uint8_t* src, size_t n) {
  stream_copy_with<16>(dst, src, n, [](uint8_t* d, const uint8_t* s) { _mm_stream_si128(reinterpret_cast<__m128i*>(d), ld(s)); });
}

uint64_t hash(const uint8_t* p, size_t n) {
  using namespace hash_detail;
  __m128i acc[4], key[4];
  for (int i = 0; i < 4; i++) {
    acc[i] = _mm_setzero_si128();
    key[i] = _mm_set_epi64x(static_cast<long long>(kLaneKeys[2 * i + 1]),
                            static_cast<long long>(kLaneKeys[2 * i]));
  }
  const __m128i step = _mm_set1_epi64x(static_cast<long long>(kBlockStep));
  for (size_t blk = 0; blk < n; blk += 64) {
    for (int i = 0; i < 4; i++) {
      __m128i x = ld(p + blk + i * 16);
      __m128i v = _mm_xor_si128(x, key[i]);
      __m128i prod = _mm_mul_epu32(v, _mm_srli_epi64(v, 32));
      acc[i] = _mm_add_epi64(acc[i], _mm_add_epi64(prod, x));
      key[i] = _mm_add_epi64(key[i], step);
    }
  }
  uint64_t lanes[8];
  for (int i = 0; i < 4; i++) st(reinterpret_cast<uint8_t*>(lanes + 2 * i), acc[i]);
  return finish(lanes, n);
}

const Kernels kKernels{SimdPath::kSse2, "sse2", is_zero, diff_words, xor_bytes, xor_into, stream_copy,
                       emit_words_scalar, apply_words_scalar, hash};

}  // namespace

const Kernels& sse2_kernels() { return kKernels; }

}  // namespace dwcp::hde
