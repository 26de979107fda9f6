// Bounded single-producer single-consumer ring. Used between the JS thread
// and an I/O thread, where exactly one thread sits on each side.
//
// Each side owns one index and keeps a cached copy of the other's, so in
// the common case a push or pop touches only its own cache line; the shared
// line moves only when the cached view says full (or empty). All ordering is
// acquire/release on the index atomics themselves (no standalone fences), so
// ThreadSanitizer can check it.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>

namespace dwcp::queue {

constexpr size_t kCacheLine = 64;

// Ring sizes are powers of two (index & mask), at least 2.
inline size_t ring_capacity(size_t requested) {
  size_t cap = 2;
  while (cap < requested) cap <<= 1;
  return cap;
}

template <class T>
class SpscRing {
  static_assert(std::is_nothrow_move_assignable_v<T> && std::is_default_constructible_v<T>,
                "items are moved in and out of preallocated slots");

 public:
  // `capacity` is rounded up to a power of two.
  explicit SpscRing(size_t capacity) {
    mask_ = ring_capacity(capacity) - 1;
    slots_.reset(new T[mask_ + 1]);
  }
  SpscRing(const SpscRing&) = delete;
  SpscRing& operator=(const SpscRing&) = delete;

  size_t capacity() const { return mask_ + 1; }

  // Producer side. False when full.
  [[nodiscard]] bool try_push(T item) {
    const size_t tail = p_.tail.load(std::memory_order_relaxed);
    if (tail - p_.head_cache > mask_) {
      p_.head_cache = c_.head.load(std::memory_order_acquire);
      if (tail - p_.head_cache > mask_) return false;
    }
    slots_[tail & mask_] = std::move(item);
    p_.tail.store(tail + 1, std::memory_order_release);
    return true;
  }

  // Producer side: pushes up to n items from `items`, returns how many.
  size_t try_push_n(T* items, size_t n) {
    const size_t tail = p_.tail.load(std::memory_order_relaxed);
    size_t room = mask_ + 1 - (tail - p_.head_cache);
    if (room < n) {
      p_.head_cache = c_.head.load(std::memory_order_acquire);
      room = mask_ + 1 - (tail - p_.head_cache);
    }
    const size_t k = n < room ? n : room;
    for (size_t i = 0; i < k; i++) slots_[(tail + i) & mask_] = std::move(items[i]);
    if (k) p_.tail.store(tail + k, std::memory_order_release);
    return k;
  }

  // Consumer side. False when empty.
  [[nodiscard]] bool try_pop(T& out) {
    const size_t head = c_.head.load(std::memory_order_relaxed);
    if (head == c_.tail_cache) {
      c_.tail_cache = p_.tail.load(std::memory_order_acquire);
      if (head == c_.tail_cache) return false;
    }
    out = std::move(slots_[head & mask_]);
    c_.head.store(head + 1, std::memory_order_release);
    return true;
  }

  // Consumer side: pops up to n items into `out`, returns how many.
  size_t try_pop_n(T* out, size_t n) {
    const size_t head = c_.head.load(std::memory_order_relaxed);
    size_t avail = c_.tail_cache - head;
    if (avail < n) {
      c_.tail_cache = p_.tail.load(std::memory_order_acquire);
      avail = c_.tail_cache - head;
    }
    const size_t k = n < avail ? n : avail;
    for (size_t i = 0; i < k; i++) out[i] = std::move(slots_[(head + i) & mask_]);
    if (k) c_.head.store(head + k, std::memory_order_release);
    return k;
  }

  // Either side; exact only when the other side is idle.
  size_t size_approx() const {
    return p_.tail.load(std::memory_order_acquire) - c_.head.load(std::memory_order_acquire);
  }

 private:
  // Producer-owned and consumer-owned state on separate cache lines.
  struct alignas(kCacheLine) Producer {
    std::atomic<size_t> tail{0};
    size_t head_cache = 0;
  };
  struct alignas(kCacheLine) Consumer {
    std::atomic<size_t> head{0};
    size_t tail_cache = 0;
  };

  Producer p_;
  Consumer c_;
  alignas(kCacheLine) size_t mask_ = 0;
  std::unique_ptr<T[]> slots_;
};

}  // namespace dwcp::queue
