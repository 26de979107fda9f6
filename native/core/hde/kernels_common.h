// Pieces shared by the SIMD kernel files. Included only by kernels_*.cc,
// each compiled with its own instruction-set flags.
#pragma once
#include <cstddef>
#include <cstdint>
#include <xmmintrin.h>

#include <cstring>

#include "util/bits.h"

namespace dwcp::hde {

// memcpy whose 64-byte-aligned middle goes through `stream(dst, src)`, a
// non-temporal store of kWidth bytes; head and tail are plain copies.
template <size_t kWidth, class Stream>
inline void stream_copy_with(uint8_t* dst, const uint8_t* src, size_t n, Stream stream) {
  const size_t head = (64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63;
  if (n < head + 64) {
    std::memcpy(dst, src, n);
    return;
  }
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + kWidth <= n; i += kWidth) stream(dst + i, src + i);
  _mm_sfence();
  std::memcpy(dst + i, src + i, n - i);
}

// The loop every diff_words shares: one 64-bit change mask per 512-byte
// block from `block_mask(a, b)`, a running count, and the early stop.
template <class BlockMask>
inline uint32_t diff_words_with(const uint8_t* a, const uint8_t* b, size_t n, uint64_t* bitmap,
                                uint32_t limit, BlockMask block_mask) {
  uint32_t count = 0;
  for (size_t blk = 0; blk < n; blk += 512) {
    const uint64_t m = block_mask(a + blk, b + blk);
    *bitmap++ = m;
    count += popcount64(m);
    if (count > limit) return count;
  }
  return count;
}

}  // namespace dwcp::hde
