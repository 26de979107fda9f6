// Bounded multi-producer multi-consumer ring (D. Vyukov's sequence-numbered
// cells). Each cell carries a sequence number that says whose turn it is: a
// producer may fill cell i when its sequence equals the ticket it claimed, a
// consumer may empty it when the sequence is ticket + 1. Tickets are claimed
// with a compare-exchange on the shared position, so a full or empty ring is
// reported instead of waited on; no operation blocks another except a thread
// preempted between claiming a cell and publishing it, which delays only the
// consumer of that one cell.
//
// Cells are padded to a cache line so neighbouring producers and consumers
// do not false-share. Ordering is acquire/release on the cell sequence.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "queue/spsc_ring.h"

namespace dwcp::queue {

template <class T>
class MpmcRing {
  static_assert(std::is_nothrow_move_assignable_v<T> && std::is_default_constructible_v<T>,
                "items are moved in and out of preallocated cells");

 public:
  explicit MpmcRing(size_t capacity) {
    const size_t cap = ring_capacity(capacity);
    mask_ = cap - 1;
    cells_.reset(new Cell[cap]);
    for (size_t i = 0; i < cap; i++) cells_[i].seq.store(i, std::memory_order_relaxed);
  }
  MpmcRing(const MpmcRing&) = delete;
  MpmcRing& operator=(const MpmcRing&) = delete;

  size_t capacity() const { return mask_ + 1; }

  [[nodiscard]] bool try_push(T item) {
    size_t pos = enqueue_.pos.load(std::memory_order_relaxed);
    for (;;) {
      Cell& c = cells_[pos & mask_];
      const size_t seq = c.seq.load(std::memory_order_acquire);
      const auto diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
      if (diff == 0) {
        if (enqueue_.pos.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          c.value = std::move(item);
          c.seq.store(pos + 1, std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        return false;  // full: the cell still holds an item from a lap ago
      } else {
        pos = enqueue_.pos.load(std::memory_order_relaxed);
      }
    }
  }

  [[nodiscard]] bool try_pop(T& out) {
    size_t pos = dequeue_.pos.load(std::memory_order_relaxed);
    for (;;) {
      Cell& c = cells_[pos & mask_];
      const size_t seq = c.seq.load(std::memory_order_acquire);
      const auto diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos + 1);
      if (diff == 0) {
        if (dequeue_.pos.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          out = std::move(c.value);
          c.seq.store(pos + mask_ + 1, std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        return false;  // empty
      } else {
        pos = dequeue_.pos.load(std::memory_order_relaxed);
      }
    }
  }

  size_t size_approx() const {
    const size_t e = enqueue_.pos.load(std::memory_order_relaxed);
    const size_t d = dequeue_.pos.load(std::memory_order_relaxed);
    return e > d ? e - d : 0;
  }

 private:
  struct alignas(kCacheLine) Cell {
    std::atomic<size_t> seq{0};
    T value{};
  };
  struct alignas(kCacheLine) Position {
    std::atomic<size_t> pos{0};
  };

  Position enqueue_;
  Position dequeue_;
  alignas(kCacheLine) size_t mask_ = 0;
  std::unique_ptr<Cell[]> cells_;
};

}  // namespace dwcp::queue
