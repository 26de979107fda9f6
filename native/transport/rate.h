// Bytes per second over the last second, for stats(). The I/O thread adds
// bytes as it moves them into 100 ms buckets of a ring indexed by time;
// any thread may read the rate meanwhile. Relaxed atomics: a reading that
// races an add or a roll misses that add, nothing worse. Nothing runs while
// no bytes move, and from 1.1 s after the last byte a reading is exactly 0.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace dwcp::transport {

// The clock of RateMeter's times.
inline int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class RateMeter {
 public:
  static constexpr int64_t kBucketNs = 100'000'000;
  // The window: this many whole buckets and the one in progress (1.0-1.1 s).
  static constexpr int64_t kWindow = 10;
  static constexpr int64_t kRing = 16;

  // `born_ns`: when counting starts; a younger meter's rate is over its age.
  explicit RateMeter(int64_t born_ns = 0) : born_ns_(born_ns), epoch_(born_ns / kBucketNs) {}

  // The I/O thread only. `now_ns` may lag the reader's clock a little (a
  // time read once per batch of events): bytes land in that time's bucket.
  void add(int64_t now_ns, uint64_t bytes) {
    const int64_t e = now_ns / kBucketNs;
    const int64_t last = epoch_.load(std::memory_order_relaxed);
    if (e > last) {
      for (int64_t i = std::max(last + 1, e - kRing + 1); i <= e; i++) slot(i).store(0, std::memory_order_relaxed);
      epoch_.store(e, std::memory_order_release);
    } else if (e <= last - kRing) {
      return;
    }
    auto& b = slot(e);
    b.store(b.load(std::memory_order_relaxed) + bytes, std::memory_order_relaxed);
  }

  // `now_ns` must be current (no earlier than any add's): a lagging reader
  // counts bytes added after its `now_ns`.
  double rate(int64_t now_ns) const {
    const int64_t now_e = now_ns / kBucketNs;
    const int64_t last = epoch_.load(std::memory_order_acquire);
    const int64_t first = now_e - kWindow;
    uint64_t sum = 0;
    for (int64_t i = std::max(first, last - kRing + 1); i <= std::min(now_e, last); i++) {
      sum += slot(i).load(std::memory_order_relaxed);
    }
    const int64_t span = now_ns - std::max(first * kBucketNs, born_ns_);
    return span > 0 ? static_cast<double>(sum) * 1e9 / static_cast<double>(span) : 0.0;
  }

 private:
  std::atomic<uint64_t>& slot(int64_t e) { return ring_[static_cast<size_t>(e % kRing)]; }
  const std::atomic<uint64_t>& slot(int64_t e) const { return ring_[static_cast<size_t>(e % kRing)]; }

  int64_t born_ns_;
  std::atomic<int64_t> epoch_;  // the newest bucket written
  std::array<std::atomic<uint64_t>, kRing> ring_{};
};

}  // namespace dwcp::transport
