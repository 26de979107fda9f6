// AVX-512 (F+BW+VL), built with matching -m flags; only reached after the CPU
// check in dispatch.cc. One 64-byte compare yields the mask of 8 words.
#include <immintrin.h>

#include <cstring>

#include "hde/kernels.h"
#include "util/bits.h"
#include "hde/kernels_common.h"

namespace dwcp::hde {
namespace {

inline __m512i ld(const uint8_t* p) { return _mm512_loadu_si512(p); }

bool is_zero(const uint8_t* p, size_t n) {
  size_t i = 0;
  for (; i + 256 <= n; i += 256) {
    __m512i acc = _mm512_or_si512(_mm512_or_si512(ld(p + i), ld(p + i + 64)),
                                  _mm512_or_si512(ld(p + i + 128), ld(p + i + 192)));
    if (_mm512_test_epi64_mask(acc, acc)) return false;
  }
  for (; i < n; i += 64) {
    __m512i v = ld(p + i);
    if (_mm512_test_epi64_mask(v, v)) return false;
  }
  return true;
}

uint32_t diff_words(const uint8_t* a, const uint8_t* b, size_t n, uint64_t* bitmap,
                    uint32_t limit) {
  return diff_words_with(a, b, n, bitmap, limit, [](const uint8_t* pa, const uint8_t* pb) {
    uint64_t m = 0;
    for (unsigned j = 0; j < 8; j++) {
      m |= static_cast<uint64_t>(_mm512_cmpneq_epu64_mask(ld(pa + j * 64), ld(pb + j * 64))) << (j * 8);
    }
    return m;
  });
}

void xor_bytes(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) _mm512_storeu_si512(dst + i, _mm512_xor_si512(ld(a + i), ld(b + i)));
  if (i < n) {
    __mmask64 k = (~0ull) >> (64 - (n - i));
    __m512i va = _mm512_maskz_loadu_epi8(k, a + i);
    __m512i vb = _mm512_maskz_loadu_epi8(k, b + i);
    _mm512_mask_storeu_epi8(dst + i, k, _mm512_xor_si512(va, vb));
  }
}

void xor_into(uint8_t* dst, const uint8_t* src, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) _mm512_storeu_si512(dst + i, _mm512_xor_si512(ld(dst + i), ld(src + i)));
  if (i < n) {
    __mmask64 k = (~0ull) >> (64 - (n - i));
    __m512i vd = _mm512_maskz_loadu_epi8(k, dst + i);
    __m512i vs = _mm512_maskz_loadu_epi8(k, src + i);
    _mm512_mask_storeu_epi8(dst + i, k, _mm512_xor_si512(vd, vs));
  }
}

void stream_copy(uint8_t* dst, const uint8_t* src, size_t n) {
  stream_copy_with<64>(dst, src, n, [](uint8_t* d, const uint8_t* s) { _mm512_stream_si512(reinterpret_cast<__m512i*>(d), ld(s)); });
}

// Per 64-byte line: the changed-word mask selects lanes, compress packs the
// XORed words together (in a register: the memory form is microcoded and slow
// on some cores), and one unaligned store writes them.
uint8_t* emit_words(uint8_t* out, const uint8_t* cur, const uint8_t* ref, uint8_t* patch,
                    const uint64_t* bitmap, size_t nwords) {
  for (size_t i = 0; i < nwords / 64; i++) {
    const uint64_t m = bitmap[i];
    if (!m) continue;
    for (unsigned j = 0; j < 8; j++) {
      const __mmask8 k = static_cast<__mmask8>(m >> (8 * j));
      if (!k) continue;
      const size_t off = (i * 64 + j * 8) * 8;
      const __m512i c = ld(cur + off);
      _mm512_storeu_si512(out, _mm512_maskz_compress_epi64(k, _mm512_xor_si512(c, ld(ref + off))));
      out += popcount64(k) * 8;
      if (patch) _mm512_mask_storeu_epi64(patch + off, k, c);
    }
  }
  return out;
}

const uint8_t* apply_words(uint8_t* page, const uint8_t* in, const uint8_t* bm, size_t nwords) {
  for (size_t i = 0; i < nwords / 8; i += 8) {
    uint64_t m;
    std::memcpy(&m, bm + i, 8);
    if (!m) continue;
    for (unsigned j = 0; j < 8; j++) {
      const __mmask8 k = static_cast<__mmask8>(m >> (8 * j));
      if (!k) continue;
      const unsigned n = popcount64(k);
      // A masked load reads only the words present, never past the input.
      const __m512i v = _mm512_maskz_loadu_epi64(static_cast<__mmask8>((1u << n) - 1), in);
      uint8_t* line = page + (i * 8 + j * 8) * 8;
      _mm512_storeu_si512(line, _mm512_xor_si512(ld(line), _mm512_maskz_expand_epi64(k, v)));
      in += n * 8;
    }
  }
  return in;
}

uint64_t hash(const uint8_t* p, size_t n) {
  using namespace hash_detail;
  __m512i acc = _mm512_setzero_si512();
  __m512i key = _mm512_loadu_si512(kLaneKeys);
  const __m512i step = _mm512_set1_epi64(static_cast<long long>(kBlockStep));
  for (size_t blk = 0; blk < n; blk += 64) {
    __m512i x = ld(p + blk);
    __m512i v = _mm512_xor_si512(x, key);
    acc = _mm512_add_epi64(acc, _mm512_add_epi64(_mm512_mul_epu32(v, _mm512_srli_epi64(v, 32)), x));
    key = _mm512_add_epi64(key, step);
  }
  uint64_t lanes[8];
  _mm512_storeu_si512(lanes, acc);
  return finish(lanes, n);
}

const Kernels kKernels{SimdPath::kAvx512, "avx512", is_zero, diff_words, xor_bytes, xor_into,
                       stream_copy, emit_words, apply_words, hash};

}  // namespace

const Kernels& avx512_kernels() { return kKernels; }

}  // namespace dwcp::hde
