// HDE decoder: applies a frame onto the receiver's memory region. Input is
// untrusted: every length and position is checked, and a frame is applied
// only after all of it has been validated, so an error leaves the region
// exactly as it was.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "hde/format.h"
#include "hde/kernels.h"

namespace dwcp::hde {

struct DecoderOptions {
  uint32_t page_size = 4096;
  SimdPath simd = SimdPath::kAuto;
};

struct DecodeCounts {
  uint32_t pages = 0;
  uint32_t zero = 0;
  uint32_t dup = 0;
  uint32_t delta = 0;
  uint32_t full = 0;
};

class Decoder {
 public:
  [[nodiscard]] static Status create(const DecoderOptions& opts, std::unique_ptr<Decoder>* out);

  const PageGeometry& geometry() const { return geo_; }
  const Kernels& kernels() const { return *k_; }

  // Applies the record stream `raw` (already decompressed, `h` from
  // parse_header) onto `region`, whose page i is page number i.
  [[nodiscard]] Status apply(const FrameHeader& h, const uint8_t* raw, size_t raw_len,
                             uint8_t* region, size_t region_len, DecodeCounts* counts);
  // Convenience for uncompressed frames: header + records in one buffer.
  [[nodiscard]] Status apply_frame(const uint8_t* frame, size_t len, uint8_t* region,
                                   size_t region_len, DecodeCounts* counts);

 private:
  Decoder(const DecoderOptions& opts, const Kernels* k);
  template <bool kApply>
  Status walk(const uint8_t* p, const uint8_t* end, uint32_t records, uint8_t* region,
              uint64_t region_pages, DecodeCounts* counts);

  PageGeometry geo_;
  const Kernels* k_;
};

}  // namespace dwcp::hde
