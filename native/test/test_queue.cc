// Queue semantics single-threaded, then under real concurrency (these run
// in the TSan build too, which checks the memory ordering).
#include <memory>
#include <thread>
#include <vector>

#include "queue/mpmc_ring.h"
#include "queue/spsc_ring.h"
#include "test.h"

using namespace dwcp::queue;
namespace test = dwcp::test;

namespace {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr uint64_t kItems = 200000;
#else
constexpr uint64_t kItems = 4000000;
#endif
}  // namespace

TEST(spsc_fill_drain_wrap) {
  SpscRing<uint64_t> q(5);
  CHECK_EQ(q.capacity(), 8u);
  uint64_t v = 0;
  CHECK(!q.try_pop(v));
  for (int lap = 0; lap < 5; lap++) {
    for (uint64_t i = 0; i < 8; i++) CHECK(q.try_push(lap * 100 + i));
    CHECK(!q.try_push(999));
    CHECK_EQ(q.size_approx(), 8u);
    for (uint64_t i = 0; i < 8; i++) {
      CHECK(q.try_pop(v));
      CHECK_EQ(v, lap * 100 + i);
    }
    CHECK(!q.try_pop(v));
  }
  uint64_t in[6] = {1, 2, 3, 4, 5, 6}, out[10];
  CHECK_EQ(q.try_push_n(in, 6), 6u);
  CHECK_EQ(q.try_push_n(in, 6), 2u);  // only two slots left
  CHECK_EQ(q.try_pop_n(out, 10), 8u);
  CHECK_EQ(out[5], 6u);
  CHECK_EQ(out[7], 2u);
}

TEST(spsc_move_only_items) {
  SpscRing<std::unique_ptr<int>> q(4);
  CHECK(q.try_push(std::make_unique<int>(7)));
  std::unique_ptr<int> p;
  CHECK(q.try_pop(p));
  CHECK(p && *p == 7);
}

TEST(spsc_two_threads_keep_order) {
  SpscRing<uint64_t> q(1024);
  std::thread producer([&] {
    uint64_t next = 0, batch[16];
    while (next < kItems) {
      if (next % 3 == 0) {
        size_t n = 0;
        while (n < 16 && next + n < kItems) batch[n] = next + n, n++;
        next += q.try_push_n(batch, n);
      } else if (q.try_push(next)) {
        next++;
      }
    }
  });
  uint64_t expect = 0, buf[32];
  bool ok = true;
  while (expect < kItems) {
    size_t n = q.try_pop_n(buf, 32);
    for (size_t i = 0; i < n; i++) ok &= buf[i] == expect++;
  }
  producer.join();
  CHECK(ok);
  CHECK_EQ(q.size_approx(), 0u);
}

TEST(mpmc_fill_drain_wrap) {
  MpmcRing<uint64_t> q(4);
  uint64_t v;
  CHECK(!q.try_pop(v));
  for (int lap = 0; lap < 5; lap++) {
    for (uint64_t i = 0; i < 4; i++) CHECK(q.try_push(i));
    CHECK(!q.try_push(4));
    for (uint64_t i = 0; i < 4; i++) {
      CHECK(q.try_pop(v));
      CHECK_EQ(v, i);
    }
    CHECK(!q.try_pop(v));
  }
}

// Every item arrives exactly once, and each consumer sees each producer's
// items in the order they were pushed.
static void mpmc_run(int producers, int consumers, size_t capacity) {
  MpmcRing<uint64_t> q(capacity);
  const uint64_t per = kItems / static_cast<uint64_t>(producers);
  std::vector<std::vector<uint64_t>> got(static_cast<size_t>(consumers));
  std::atomic<uint64_t> popped{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; p++) {
    threads.emplace_back([&, p] {
      for (uint64_t i = 0; i < per;) {
        if (q.try_push((static_cast<uint64_t>(p) << 40) | i)) i++;
        else std::this_thread::yield();
      }
    });
  }
  for (int c = 0; c < consumers; c++) {
    threads.emplace_back([&, c] {
      uint64_t v;
      while (popped.load(std::memory_order_relaxed) < per * static_cast<uint64_t>(producers)) {
        if (q.try_pop(v)) {
          got[static_cast<size_t>(c)].push_back(v);
          popped.fetch_add(1, std::memory_order_relaxed);
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<uint8_t> seen(per * static_cast<uint64_t>(producers), 0);
  for (const auto& list : got) {
    std::vector<int64_t> last(static_cast<size_t>(producers), -1);
    for (uint64_t v : list) {
      const uint64_t p = v >> 40, i = v & ((1ull << 40) - 1);
      CHECK(p < static_cast<uint64_t>(producers) && i < per);
      CHECK(static_cast<int64_t>(i) > last[p]);
      last[p] = static_cast<int64_t>(i);
      CHECK_EQ(seen[p * per + i]++, 0);
    }
  }
  for (uint8_t s : seen) CHECK_EQ(s, 1);
}

TEST(mpmc_threads_exactly_once_in_order) {
  mpmc_run(1, 1, 1024);
  mpmc_run(2, 2, 1024);
  mpmc_run(3, 1, 64);
  mpmc_run(1, 3, 64);
  mpmc_run(2, 2, 2);  // tiny ring: constant full/empty contention
}
