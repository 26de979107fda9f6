// HDE encoder: turns a batch of pages into one frame of records (ZERO, DUP,
// DELTA, FULL) against a baseline cache that mirrors the receiver.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "hde/baseline_cache.h"
#include "hde/format.h"
#include "hde/kernels.h"

namespace dwcp::hde {

struct EncoderOptions {
  uint32_t page_size = 4096;
  uint64_t cache_bytes = 256ull << 20;
  // A delta is sent only when its body is at most this fraction of a page.
  double delta_threshold = 0.75;
  bool detect_duplicates = true;
  SimdPath simd = SimdPath::kAuto;
};

struct EncoderStats {
  uint64_t batches = 0;
  uint64_t pages = 0;
  uint64_t zero = 0;
  uint64_t dup = 0;
  uint64_t delta = 0;      // includes `unchanged`
  uint64_t unchanged = 0;  // deltas with no changed byte
  uint64_t full = 0;
  uint64_t bytes_in = 0;   // page bytes consumed
  uint64_t bytes_out = 0;  // frame bytes produced (header + records, uncompressed)
  uint64_t cache_evictions = 0;
};

class Encoder {
 public:
  [[nodiscard]] static Status create(const EncoderOptions& opts, std::unique_ptr<Encoder>* out);

  const PageGeometry& geometry() const { return geo_; }
  const Kernels& kernels() const { return *k_; }
  const EncoderStats& stats() const { return stats_; }
  // Upper bound of a frame carrying `pages` pages.
  size_t max_encoded_size(size_t pages) const;

  // Encodes `n` contiguous pages with page numbers `pns` into `out`, which
  // must hold max_encoded_size(n) bytes. Writes an uncompressed frame.
  [[nodiscard]] Status encode(const uint8_t* pages, const uint64_t* pns, size_t n, uint8_t* out,
                              size_t cap, size_t* written);
  // Encodes the pages of `region` whose bit is set in `bitmap` (bit i of byte
  // i/8, least significant first, is page i; its page number is
  // first_page + i). `*pages` receives the number of pages encoded.
  [[nodiscard]] Status encode_dirty(const uint8_t* region, size_t region_len,
                                    const uint8_t* bitmap, size_t bitmap_len, uint64_t first_page,
                                    uint8_t* out, size_t cap, size_t* written, size_t* pages);
  // Drops every baseline; the receiver must be told to do the same.
  void reset();

 private:
  struct Run {
    uint32_t start;
    uint32_t len;
  };

  Encoder(const EncoderOptions& opts, const Kernels* k);
  template <class Next>
  Status encode_frame(size_t n, Next next, uint8_t* out, size_t cap, size_t* written);
  uint8_t* encode_page(const uint8_t* cur, uint64_t pn, uint8_t* o);
  uint8_t* put_tag(uint8_t* o, Kind kind, uint64_t pn, uint8_t aux);
  // Writes a delta record when one pays; returns nullptr otherwise.
  uint8_t* try_delta(const uint8_t* cur, uint64_t pn, uint32_t slot, uint8_t* o);
  uint8_t* store_page(const uint8_t* cur, uint64_t pn);
  uint64_t sample_hash(const uint8_t* cur) const;

  EncoderOptions opts_;
  PageGeometry geo_;
  const Kernels* k_;
  BaselineCache cache_;
  uint32_t delta_limit_bytes_;
  uint64_t expected_pn_ = 0;
  std::vector<uint64_t> bitmap_;
  std::vector<Run> runs_;
  struct DupEntry {
    uint64_t hash;
    uint64_t pn;
  };
  std::vector<DupEntry> dup_;
  size_t dup_mask_ = 0;
  EncoderStats stats_;
};

// A page of zeros as large as the largest page, for zero baselines.
const uint8_t* zero_page();

}  // namespace dwcp::hde
