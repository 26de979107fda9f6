// Queue microbenchmark: SPSC and MPMC throughput with 8-byte items at
// capacity 65,536, SPSC round trip, and a bare cache-line ping-pong between
// the two CPUs (the floor for any round trip). Threads are pinned; each
// figure is the median of RUNS runs, with the range. `npm run bench:queue`.
#include <pthread.h>
#include <sched.h>
#include <xmmintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "queue/mpmc_ring.h"
#include "queue/spsc_ring.h"

using namespace dwcp::queue;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kCapacity = 65536;
int g_cpus[2] = {0, 1};

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

// Spin briefly, then give the core away: with more threads than cores a
// pure spin would burn the time slice of the thread it is waiting for.
struct Backoff {
  unsigned n = 0;
  void operator()() {
    if (++n < 64) {
      _mm_pause();
    } else {
      sched_yield();
      n = 0;
    }
  }
};

struct Stat {
  double median, lo, hi;
};

Stat stat(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Runs `fns[i]` on CPU g_cpus[i % 2], all released together; returns seconds.
double run_pinned(const std::vector<std::function<void()>>& fns) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (size_t i = 0; i < fns.size(); i++) {
    ts.emplace_back([&, i] {
      pin(g_cpus[i % 2]);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) _mm_pause();
      fns[i]();
    });
  }
  while (ready.load() != static_cast<int>(fns.size())) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : ts) t.join();
  return seconds_since(t0);
}

double spsc_mops(uint64_t items) {
  SpscRing<uint64_t> q(kCapacity);
  uint64_t sum = 0;
  const double s = run_pinned({
      [&] {
        Backoff b;
        for (uint64_t i = 0; i < items; i++) {
          while (!q.try_push(i)) b();
        }
      },
      [&] {
        Backoff b;
        uint64_t v;
        for (uint64_t i = 0; i < items; i++) {
          while (!q.try_pop(v)) b();
          sum += v;
        }
      },
  });
  if (sum != items * (items - 1) / 2) std::abort();
  return items / s / 1e6;
}

double spsc_rtt_ns(uint64_t trips) {
  SpscRing<uint64_t> there(kCapacity), back(kCapacity);
  const double s = run_pinned({
      [&] {
        uint64_t v;
        for (uint64_t i = 0; i < trips; i++) {
          while (!there.try_push(i)) _mm_pause();
          while (!back.try_pop(v)) _mm_pause();
        }
      },
      [&] {
        uint64_t v;
        for (uint64_t i = 0; i < trips; i++) {
          while (!there.try_pop(v)) _mm_pause();
          while (!back.try_push(v)) _mm_pause();
        }
      },
  });
  return s / trips * 1e9;
}

double mpmc_mops(int producers, int consumers, uint64_t items) {
  MpmcRing<uint64_t> q(kCapacity);
  const uint64_t per = items / static_cast<uint64_t>(producers);
  const uint64_t total = per * static_cast<uint64_t>(producers);
  std::atomic<uint64_t> popped{0};
  std::vector<std::function<void()>> fns;
  // Interleave so each CPU gets producers and consumers alike.
  for (int i = 0; i < std::max(producers, consumers); i++) {
    if (i < producers) {
      fns.push_back([&] {
        Backoff b;
        for (uint64_t k = 0; k < per; k++) {
          while (!q.try_push(k)) b();
        }
      });
    }
    if (i < consumers) {
      fns.push_back([&] {
        Backoff b;
        uint64_t v, mine = 0;
        while (popped.load(std::memory_order_relaxed) < total) {
          if (q.try_pop(v)) {
            // Count in batches so the shared counter is not the bottleneck.
            if (++mine == 256) popped.fetch_add(mine, std::memory_order_relaxed), mine = 0;
          } else {
            if (mine) popped.fetch_add(mine, std::memory_order_relaxed), mine = 0;
            b();
          }
        }
      });
    }
  }
  const double s = run_pinned(fns);
  return total / s / 1e6;
}

double c2c_rtt_ns(uint64_t trips) {
  alignas(64) std::atomic<uint64_t> flag{0};
  const double s = run_pinned({
      [&] {
        for (uint64_t i = 0; i < trips; i++) {
          flag.store(2 * i + 1, std::memory_order_release);
          while (flag.load(std::memory_order_acquire) != 2 * i + 2) _mm_pause();
        }
      },
      [&] {
        for (uint64_t i = 0; i < trips; i++) {
          while (flag.load(std::memory_order_acquire) != 2 * i + 1) _mm_pause();
          flag.store(2 * i + 2, std::memory_order_release);
        }
      },
  });
  return s / trips * 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  // A queue that stalls shows as a run that never ends: fail it instead.
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::minutes(5));
    std::fprintf(stderr, "bench_queue: no progress for 5 minutes, a queue stalled\n");
    std::_Exit(3);
  }).detach();
  const int runs = argc > 1 ? std::atoi(argv[1]) : 10;
  const uint64_t items = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20000000;
  if (std::thread::hardware_concurrency() < 2) g_cpus[1] = 0;
  std::vector<double> spsc, rtt, m11, m22, c2c;
  for (int r = 0; r < runs; r++) {
    spsc.push_back(spsc_mops(items));
    rtt.push_back(spsc_rtt_ns(200000));
    m11.push_back(mpmc_mops(1, 1, items));
    m22.push_back(mpmc_mops(2, 2, items));
    c2c.push_back(c2c_rtt_ns(200000));
  }
  const Stat a = stat(spsc), b = stat(rtt), c = stat(m11), d = stat(m22), e = stat(c2c);
  std::fprintf(stderr, "%d runs, %llu items, capacity %zu, CPUs %d and %d\n", runs,
               static_cast<unsigned long long>(items), kCapacity, g_cpus[0], g_cpus[1]);
  std::fprintf(stderr, "spsc 1+1        %7.1f M items/s  (range %.1f-%.1f)\n", a.median, a.lo, a.hi);
  std::fprintf(stderr, "spsc round trip %7.0f ns        (range %.0f-%.0f)\n", b.median, b.lo, b.hi);
  std::fprintf(stderr, "mpmc 1+1        %7.1f M items/s  (range %.1f-%.1f)\n", c.median, c.lo, c.hi);
  std::fprintf(stderr, "mpmc 2+2        %7.1f M items/s  (range %.1f-%.1f)\n", d.median, d.lo, d.hi);
  std::fprintf(stderr, "cache-line ping-pong %5.0f ns     (range %.0f-%.0f)\n", e.median, e.lo, e.hi);
  std::printf(
      "{\"bench\":\"queue\",\"spsc_mops\":%.1f,\"spsc_rtt_ns\":%.0f,\"mpmc11_mops\":%.1f,\"mpmc22_mops\":%.1f,"
      "\"c2c_rtt_ns\":%.0f,\"runs\":%d,\"ranges\":{\"spsc_mops\":[%.1f,%.1f],\"spsc_rtt_ns\":[%.0f,%.0f],"
      "\"mpmc11_mops\":[%.1f,%.1f],\"mpmc22_mops\":[%.1f,%.1f],\"c2c_rtt_ns\":[%.0f,%.0f]}}\n",
      a.median, b.median, c.median, d.median, e.median, runs, a.lo, a.hi, b.lo, b.hi, c.lo, c.hi, d.lo, d.hi,
      e.lo, e.hi);
  return 0;
}
