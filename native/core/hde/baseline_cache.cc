#include "hde/baseline_cache.h"

#include <cstdlib>
#include <algorithm>
#include <new>

namespace dwcp::hde {
namespace {

// Keeps consecutive page numbers in consecutive buckets (the common access
// pattern, and prefetch friendly) while folding high bits in so that large
// power-of-two strides still spread.
uint64_t mix(uint64_t k) { return k ^ (k >> 17) ^ (k >> 31) ^ (k >> 47); }

}  // namespace

BaselineCache::BaselineCache(uint32_t page_size, uint64_t capacity_bytes)
    : page_size_(page_size),
      slots_(static_cast<uint32_t>(std::min<uint64_t>(capacity_bytes / page_size, UINT32_MAX / 4))) {
  if (slots_ == 0) return;
  // Pages are written only when first used, so a large cache costs address
  // space, not memory, until it fills.
  void* p = std::aligned_alloc(64, static_cast<size_t>(slots_) * page_size_);
  if (!p) throw std::bad_alloc();
  data_.reset(static_cast<uint8_t*>(p));
  meta_.resize(slots_);
  size_t buckets = 16;
  while (buckets < static_cast<size_t>(slots_) * 2) buckets <<= 1;
  map_.assign(buckets, Bucket{0, kNone});
  map_mask_ = buckets - 1;
}

size_t BaselineCache::bucket_of(uint64_t pn) const { return mix(pn) & map_mask_; }

uint32_t BaselineCache::find(uint64_t pn) const {
  if (slots_ == 0) return kNone;
  for (size_t b = bucket_of(pn);; b = (b + 1) & map_mask_) {
    const Bucket& e = map_[b];
    if (e.slot == kNone) return kNone;
    if (e.pn == pn) return e.slot;
  }
}

void BaselineCache::map_erase(uint64_t pn) {
  size_t b = bucket_of(pn);
  while (map_[b].pn != pn || map_[b].slot == kNone) b = (b + 1) & map_mask_;
  // Backward-shift deletion keeps probe chains intact without tombstones.
  size_t hole = b;
  for (size_t j = (hole + 1) & map_mask_; map_[j].slot != kNone; j = (j + 1) & map_mask_) {
    size_t home = bucket_of(map_[j].pn);
    bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
    if (movable) {
      map_[hole] = map_[j];
      hole = j;
    }
  }
  map_[hole].slot = kNone;
}

void BaselineCache::unlink(uint32_t s) {
  Meta& m = meta_[s];
  if (m.prev != kNone) meta_[m.prev].next = m.next; else head_ = m.next;
  if (m.next != kNone) meta_[m.next].prev = m.prev; else tail_ = m.prev;
}

void BaselineCache::push_front(uint32_t s) {
  meta_[s].prev = kNone;
  meta_[s].next = head_;
  if (head_ != kNone) meta_[head_].prev = s;
  head_ = s;
  if (tail_ == kNone) tail_ = s;
}

uint32_t BaselineCache::insert_or_touch(uint64_t pn, bool* inserted) {
  uint32_t s = find(pn);
  if (s != kNone) {
    touch(s);
    *inserted = false;
    return s;
  }
  if (used_ < slots_) {
    s = used_++;
  } else {
    s = tail_;
    unlink(s);
    map_erase(meta_[s].pn);
    evictions_++;
  }
  meta_[s].pn = pn;
  meta_[s].zero = false;
  for (size_t b = bucket_of(pn);; b = (b + 1) & map_mask_) {
    if (map_[b].slot == kNone) {
      map_[b] = Bucket{pn, s};
      break;
    }
  }
  push_front(s);
  *inserted = true;
  return s;
}

void BaselineCache::clear() {
  used_ = 0;
  head_ = tail_ = kNone;
  std::fill(map_.begin(), map_.end(), Bucket{0, kNone});
}

}  // namespace dwcp::hde
