// The encoder's picture of what the receiver holds: the last content sent
// for each recently sent page, bounded in bytes, least recently used out.
// Only `insert_or_touch` changes the LRU order, so a receiver that replays
// the same record sequence can keep an identical copy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace dwcp::hde {

class BaselineCache {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  BaselineCache(uint32_t page_size, uint64_t capacity_bytes);
  BaselineCache(const BaselineCache&) = delete;
  BaselineCache& operator=(const BaselineCache&) = delete;

  uint32_t capacity() const { return slots_; }
  uint32_t size() const { return used_; }
  uint64_t evictions() const { return evictions_; }

  // Slot holding `pn`, or kNone. Does not change the LRU order.
  [[nodiscard]] uint32_t find(uint64_t pn) const;
  // Slot for `pn`, made most recently used; inserts (evicting the least
  // recently used page when full) when absent. `*inserted` tells which.
  // Must not be called when capacity() == 0.
  uint32_t insert_or_touch(uint64_t pn, bool* inserted);
  // Makes a slot returned by find() the most recently used.
  void touch(uint32_t slot) {
    if (head_ != slot) {
      unlink(slot);
      push_front(slot);
    }
  }
  void clear();

  uint8_t* data(uint32_t slot) { return data_.get() + static_cast<size_t>(slot) * page_size_; }
  const uint8_t* data(uint32_t slot) const {
    return data_.get() + static_cast<size_t>(slot) * page_size_;
  }
  // A zero page is kept as a flag: no bytes are written for it.
  bool is_zero(uint32_t slot) const { return meta_[slot].zero; }
  void set_zero(uint32_t slot, bool zero) { meta_[slot].zero = zero; }
  uint64_t page_number(uint32_t slot) const { return meta_[slot].pn; }

 private:
  struct Meta {
    uint64_t pn;
    uint32_t prev;
    uint32_t next;
    bool zero;
  };
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };

  size_t bucket_of(uint64_t pn) const;
  void unlink(uint32_t slot);
  void push_front(uint32_t slot);
  void map_erase(uint64_t pn);

  uint32_t page_size_;
  uint32_t slots_;
  uint32_t used_ = 0;
  uint64_t evictions_ = 0;
  uint32_t head_ = kNone;  // most recently used
  uint32_t tail_ = kNone;  // least recently used
  std::unique_ptr<uint8_t, FreeDeleter> data_;
  std::vector<Meta> meta_;
  // Open addressing with linear probing. The key is stored beside the slot so
  // a lookup touches one cache line, not the slot's metadata as well.
  struct Bucket {
    uint64_t pn;
    uint32_t slot;  // kNone when empty
  };
  std::vector<Bucket> map_;
  size_t map_mask_ = 0;
};

}  // namespace dwcp::hde
