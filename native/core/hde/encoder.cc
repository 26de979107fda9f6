#include "hde/encoder.h"

#include <cstring>
#include <exception>

#include "util/bits.h"
#include "util/crc32c.h"
#include "util/varint.h"

namespace dwcp::hde {
namespace {

alignas(64) const uint8_t kZeroPage[1u << kMaxPageShift] = {};

inline unsigned count_overhead(size_t runs) {
  return runs < kAuxCountEscape ? 0 : static_cast<unsigned>(varint_size(runs - kAuxCountEscape));
}

inline uint8_t count_aux(size_t runs) {
  return static_cast<uint8_t>(runs < kAuxCountEscape ? runs : kAuxCountEscape);
}

inline uint8_t* put_count(uint8_t* o, size_t runs) {
  return runs < kAuxCountEscape ? o : put_varint(o, runs - kAuxCountEscape);
}

inline uint8_t* put_token(uint8_t* o, const TokenLayout& t, uint32_t gap, uint32_t len) {
  uint32_t v = gap | ((len - 1) << t.pos_bits);
  o[0] = static_cast<uint8_t>(v);
  o[1] = static_cast<uint8_t>(v >> 8);
  if (t.bytes == 3) o[2] = static_cast<uint8_t>(v >> 16);
  return o + t.bytes;
}


// Tokens needed for a run of `len` units (a shift: this is per run, and a
// division per run showed as a quarter of the encoder's time).
inline uint32_t tokens_for(uint32_t len, const TokenLayout& t) {
  return (len + t.max_len - 1) >> t.max_len_log2;
}

// Writes cur ^ ref for n bytes at `o` and, when `patch` is set, copies cur
// over it. Short word runs (most of them) are done inline: a kernel call per
// 8-byte run would cost more than the work.
inline void emit_xor(const Kernels& k, uint8_t* o, const uint8_t* cur, const uint8_t* ref,
                     uint8_t* patch, uint32_t n) {
  if (n <= 64 && n % 8 == 0) {
    for (uint32_t i = 0; i < n; i += 8) {
      const uint64_t c = load64(cur + i);
      const uint64_t x = c ^ load64(ref + i);
      std::memcpy(o + i, &x, 8);
      if (patch) std::memcpy(patch + i, &c, 8);
    }
    return;
  }
  k.xor_bytes(o, cur, ref, n);
  if (patch) std::memcpy(patch, cur, n);
}

}  // namespace

const uint8_t* zero_page() { return kZeroPage; }

Status Encoder::create(const EncoderOptions& opts, std::unique_ptr<Encoder>* out) {
  if (opts.page_size < (1u << kMinPageShift) || opts.page_size > (1u << kMaxPageShift) ||
      (opts.page_size & (opts.page_size - 1)) != 0) {
    return Status::kInvalidArgument;
  }
  if (!(opts.delta_threshold >= 0.0 && opts.delta_threshold <= 1.0)) return Status::kInvalidArgument;
  const Kernels* k = select_kernels(opts.simd);
  if (!k) return Status::kInvalidArgument;
  try {
    out->reset(new Encoder(opts, k));
  } catch (const std::exception&) {
    return Status::kLimitExceeded;  // the cache could not be allocated
  }
  return Status::kOk;
}

Encoder::Encoder(const EncoderOptions& opts, const Kernels* k)
    : opts_(opts),
      geo_(static_cast<unsigned>(__builtin_ctz(opts.page_size))),
      k_(k),
      cache_(opts.page_size, opts.cache_bytes),
      delta_limit_bytes_(static_cast<uint32_t>(opts.delta_threshold * opts.page_size)),
      bitmap_(geo_.words / 64),
      runs_(geo_.words / 2 + 1) {
  if (opts_.detect_duplicates && cache_.capacity() > 0) {
    size_t n = 1024;
    while (n < cache_.capacity()) n <<= 1;
    dup_.assign(n, DupEntry{0, UINT64_MAX});
    dup_mask_ = n - 1;
  }
}

size_t Encoder::max_encoded_size(size_t pages) const {
  // +64: the bitmap kernels may store a full vector past a record's end.
  return kHeaderSize + pages * (static_cast<size_t>(geo_.page_size) + 1 + kMaxVarint64) + 64;
}

void Encoder::reset() {
  cache_.clear();
  for (auto& e : dup_) e = DupEntry{0, UINT64_MAX};
}

uint8_t* Encoder::put_tag(uint8_t* o, Kind kind, uint64_t pn, uint8_t aux) {
  const bool seq = pn == expected_pn_;
  *o++ = static_cast<uint8_t>((static_cast<unsigned>(kind) << 5) | (seq ? kTagSeqBit : 0) | aux);
  if (!seq) o = put_varint(o, zigzag(static_cast<int64_t>(pn - expected_pn_)));
  expected_pn_ = pn + 1;
  return o;
}

uint8_t* Encoder::try_delta(const uint8_t* cur, uint64_t pn, uint32_t slot, uint8_t* o) {
  const bool base_zero = cache_.is_zero(slot);
  uint8_t* base = cache_.data(slot);
  const uint8_t* ref = base_zero ? kZeroPage : base;
  const uint32_t P = geo_.page_size;

  const uint32_t changed = k_->diff_words(cur, ref, P, bitmap_.data(), delta_limit_bytes_ / 8);
  if (changed > delta_limit_bytes_ / 8) return nullptr;
  if (changed == 0) {
    stats_.unchanged++;
    return put_tag(o, Kind::kDeltaWords, pn, 0);
  }

  // Word runs from the bitmap: a run starts at a set bit whose lower
  // neighbour is clear and ends at one whose upper neighbour is clear. The
  // two masks are walked separately, which keeps the loops branch-light.
  size_t nruns = 0;
  {
    const size_t nw = bitmap_.size();
    size_t ns = 0, ne = 0;
    for (size_t i = 0; i < nw; i++) {
      const uint64_t m = bitmap_[i];
      if (m == 0) continue;
      const uint64_t below = i > 0 ? bitmap_[i - 1] >> 63 : 0;
      const uint64_t above = i + 1 < nw ? bitmap_[i + 1] << 63 : 0;
      const uint32_t base_word = static_cast<uint32_t>(i * 64);
      for (uint64_t st = m & ~((m << 1) | below); st; st &= st - 1) {
        runs_[ns++].start = base_word + static_cast<uint32_t>(__builtin_ctzll(st));
      }
      for (uint64_t en = m & ~((m >> 1) | above); en; en &= en - 1) {
        runs_[ne].len = base_word + static_cast<uint32_t>(__builtin_ctzll(en)) + 1 - runs_[ne].start;
        ne++;
      }
    }
    nruns = ns;
  }

  // Cost of each encoding of the same runs; the cheapest is written.
  const TokenLayout& wt = geo_.word_token;
  const TokenLayout& bt = geo_.byte_token;
  uint32_t words_tokens = 0, byte_tokens = 0, byte_literal = 0;
  for (size_t r = 0; r < nruns; r++) {
    const Run& run = runs_[r];
    words_tokens += tokens_for(run.len, wt);
    const uint32_t first = run.start * 8, last = (run.start + run.len - 1) * 8;
    const uint32_t lead = static_cast<uint32_t>(__builtin_ctzll(load64(cur + first) ^ load64(ref + first))) / 8;
    const uint32_t trail = static_cast<uint32_t>(__builtin_clzll(load64(cur + last) ^ load64(ref + last))) / 8;
    const uint32_t blen = run.len * 8 - lead - trail;
    byte_literal += blen;
    byte_tokens += tokens_for(blen, bt);
  }
  // Runs longer than a token carries are split, so counts are of tokens.
  const uint32_t cost_words = count_overhead(words_tokens) + words_tokens * wt.bytes + changed * 8;
  const uint32_t cost_bitmap = geo_.words / 8 + changed * 8;
  const uint32_t cost_bytes = count_overhead(byte_tokens) + byte_tokens * bt.bytes + byte_literal;
  const bool word1_ok = nruns == 1 && runs_[0].len <= geo_.word1_max_len;
  const uint32_t cost_word1 = word1_ok ? geo_.word1_extra + changed * 8 : UINT32_MAX;

  uint32_t best = cost_word1;
  Kind kind = Kind::kDeltaWord1;
  if (cost_words < best) best = cost_words, kind = Kind::kDeltaWords;
  if (cost_bitmap < best) best = cost_bitmap, kind = Kind::kDeltaBitmap;
  if (cost_bytes < best) best = cost_bytes, kind = Kind::kDeltaBytes;
  if (best > delta_limit_bytes_) return nullptr;

  // The receiver's copy becomes `cur`; keep ours in step. A zero baseline has
  // no bytes yet, so it is materialised whole instead of patched.
  uint8_t* patch = base_zero ? nullptr : base;
  switch (kind) {
    case Kind::kDeltaWord1: {
      const uint32_t v = runs_[0].start | ((runs_[0].len - 1) << wt.pos_bits);
      o = put_tag(o, kind, pn, static_cast<uint8_t>(v & kAuxMask));
      o[0] = static_cast<uint8_t>(v >> 4);
      if (geo_.word1_extra == 2) o[1] = static_cast<uint8_t>(v >> 12);
      o += geo_.word1_extra;
      const uint32_t off = runs_[0].start * 8, n = runs_[0].len * 8;
      emit_xor(*k_, o, cur + off, ref + off, patch ? patch + off : nullptr, n);
      o += n;
      break;
    }
    case Kind::kDeltaWords: {
      o = put_tag(o, kind, pn, count_aux(words_tokens));
      o = put_count(o, words_tokens);
      uint32_t pos = 0;
      for (size_t r = 0; r < nruns; r++) {
        uint32_t start = runs_[r].start, left = runs_[r].len;
        while (left > 0) {
          const uint32_t len = left < wt.max_len ? left : wt.max_len;
          o = put_token(o, wt, start - pos, len);
          const uint32_t off = start * 8, n = len * 8;
          emit_xor(*k_, o, cur + off, ref + off, patch ? patch + off : nullptr, n);
          o += n;
          start += len;
          left -= len;
          pos = start;
        }
      }
      break;
    }
    case Kind::kDeltaBytes: {
      o = put_tag(o, kind, pn, count_aux(byte_tokens));
      o = put_count(o, byte_tokens);
      uint32_t pos = 0;
      for (size_t r = 0; r < nruns; r++) {
        const uint32_t first = runs_[r].start * 8, last = (runs_[r].start + runs_[r].len - 1) * 8;
        const uint32_t lead = static_cast<uint32_t>(__builtin_ctzll(load64(cur + first) ^ load64(ref + first))) / 8;
        const uint32_t trail = static_cast<uint32_t>(__builtin_clzll(load64(cur + last) ^ load64(ref + last))) / 8;
        uint32_t start = first + lead, left = runs_[r].len * 8 - lead - trail;
        while (left > 0) {
          const uint32_t len = left < bt.max_len ? left : bt.max_len;
          o = put_token(o, bt, start - pos, len);
          k_->xor_bytes(o, cur + start, ref + start, len);
          if (patch) std::memcpy(patch + start, cur + start, len);
          o += len;
          start += len;
          left -= len;
          pos = start;
        }
      }
      break;
    }
    case Kind::kDeltaBitmap: {
      o = put_tag(o, kind, pn, 0);
      for (uint64_t m : bitmap_) {
        for (int b = 0; b < 8; b++) *o++ = static_cast<uint8_t>(m >> (8 * b));
      }
      o = k_->emit_words(o, cur, ref, patch, bitmap_.data(), geo_.words);
      break;
    }
    default:
      break;
  }
  if (base_zero) {
    k_->stream_copy(base, cur, P);
    cache_.set_zero(slot, false);
  }
  return o;
}

// Duplicate candidates are found by hashing four 64-byte lines spread over
// the page; the full byte compare that follows is what decides. Hashing the
// whole page would cost as much as sending it on pages that are not
// duplicates, which are nearly all of them.
uint64_t Encoder::sample_hash(const uint8_t* cur) const {
  alignas(64) uint8_t sample[256];
  const uint32_t q = geo_.page_size / 4;
  for (uint32_t i = 0; i < 4; i++) std::memcpy(sample + i * 64, cur + i * q, 64);
  return k_->hash(sample, sizeof(sample));
}

uint8_t* Encoder::store_page(const uint8_t* cur, uint64_t pn) {
  if (cache_.capacity() == 0) return nullptr;
  bool inserted;
  const uint32_t slot = cache_.insert_or_touch(pn, &inserted);
  k_->stream_copy(cache_.data(slot), cur, geo_.page_size);
  cache_.set_zero(slot, false);
  return cache_.data(slot);
}

uint8_t* Encoder::encode_page(const uint8_t* cur, uint64_t pn, uint8_t* o) {
  const uint32_t P = geo_.page_size;
  stats_.pages++;

  if (k_->is_zero(cur, P)) {
    stats_.zero++;
    if (cache_.capacity() > 0) {
      bool inserted;
      cache_.set_zero(cache_.insert_or_touch(pn, &inserted), true);
    }
    return put_tag(o, Kind::kZero, pn, 0);
  }

  const uint32_t slot = cache_.find(pn);
  if (slot != BaselineCache::kNone) {
    if (uint8_t* end = try_delta(cur, pn, slot, o)) {
      stats_.delta++;
      cache_.touch(slot);
      return end;
    }
  }

  // Duplicate detection costs a hash of the page, so it runs only where a
  // delta did not pay.
  if (!dup_.empty()) {
    const uint64_t h = sample_hash(cur);
    DupEntry& e = dup_[h & dup_mask_];
    if (e.hash == h && e.pn != UINT64_MAX) {
      const uint32_t src = cache_.find(e.pn);
      if (src != BaselineCache::kNone && !cache_.is_zero(src) &&
          std::memcmp(cache_.data(src), cur, P) == 0) {
        const uint64_t src_pn = e.pn;
        stats_.dup++;
        o = put_tag(o, Kind::kDup, pn, 0);
        o = put_varint(o, zigzag(static_cast<int64_t>(src_pn - pn)));
        store_page(cur, pn);
        return o;
      }
    }
    e = DupEntry{h, pn};
  }

  stats_.full++;
  o = put_tag(o, Kind::kFull, pn, 0);
  std::memcpy(o, cur, P);
  store_page(cur, pn);
  return o + P;
}

template <class Next>
Status Encoder::encode_frame(size_t n, Next next, uint8_t* out, size_t cap, size_t* written) {
  if (n > kMaxRecords) return Status::kLimitExceeded;
  if (cap < max_encoded_size(n)) return Status::kOutputTooSmall;
  const uint64_t evictions_before = cache_.evictions();
  expected_pn_ = 0;
  uint8_t* o = out + kHeaderSize;
  for (size_t i = 0; i < n; i++) {
    const uint8_t* page;
    uint64_t pn;
    next(&page, &pn);
    o = encode_page(page, pn, o);
  }
  FrameHeader h;
  h.page_shift = static_cast<uint8_t>(geo_.page_shift);
  h.record_count = static_cast<uint32_t>(n);
  h.raw_len = static_cast<uint32_t>(o - (out + kHeaderSize));
  h.payload_len = h.raw_len;
  h.raw_crc = crc32c(0, out + kHeaderSize, h.raw_len);
  write_header(h, out);
  *written = static_cast<size_t>(o - out);
  stats_.batches++;
  stats_.bytes_in += static_cast<uint64_t>(n) * geo_.page_size;
  stats_.bytes_out += *written;
  stats_.cache_evictions += cache_.evictions() - evictions_before;
  return Status::kOk;
}

Status Encoder::encode(const uint8_t* pages, const uint64_t* pns, size_t n, uint8_t* out,
                       size_t cap, size_t* written) {
  size_t i = 0;
  return encode_frame(
      n,
      [&](const uint8_t** page, uint64_t* pn) {
        *page = pages + i * geo_.page_size;
        *pn = pns[i];
        i++;
      },
      out, cap, written);
}

Status Encoder::encode_dirty(const uint8_t* region, size_t region_len, const uint8_t* bitmap,
                             size_t bitmap_len, uint64_t first_page, uint8_t* out, size_t cap,
                             size_t* written, size_t* pages) {
  if (region_len % geo_.page_size != 0) return Status::kInvalidArgument;
  const size_t npages = region_len / geo_.page_size;
  if (bitmap_len != (npages + 7) / 8) return Status::kInvalidArgument;
  if (npages % 8 && (bitmap[bitmap_len - 1] >> (npages % 8))) return Status::kInvalidArgument;
  size_t n = 0;
  for (size_t i = 0; i < bitmap_len; i++) n += popcount64(bitmap[i]);
  size_t byte = 0;
  unsigned bits = bitmap_len ? bitmap[0] : 0;
  *pages = n;
  return encode_frame(
      n,
      [&](const uint8_t** page, uint64_t* pn) {
        while (bits == 0) bits = bitmap[++byte];
        const size_t idx = byte * 8 + static_cast<size_t>(__builtin_ctz(bits));
        bits &= bits - 1;
        *page = region + idx * geo_.page_size;
        *pn = first_page + idx;
      },
      out, cap, written);
}

}  // namespace dwcp::hde
