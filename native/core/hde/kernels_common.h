// Pieces shared by the SIMD kernel files. Included only by kernels_*.cc,
// each compiled with its own instruction-set flags.
#pragma once
#include <cstddef>
#include <cstdint>
#include <xmmintrin.h>

#include <cstring>

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

}  // namespace dwcp::hde
