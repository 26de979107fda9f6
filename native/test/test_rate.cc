#include <thread>

#include "test.h"
#include "transport/rate.h"

using namespace dwcp::transport;

namespace {
constexpr int64_t kMs = 1'000'000;
constexpr int64_t kT0 = 1'000'000 * kMs;  // an arbitrary clock reading, a bucket boundary
}  // namespace

// 1 MB every 10 ms for 3 s reads as 100 MB/s, then 0 from 1.0-1.1 s
// after the last byte, and stays 0 however long the silence.
TEST(rate_meter_steady_then_silent) {
  RateMeter m(kT0);
  int64_t t = kT0;
  for (; t < kT0 + 3000 * kMs; t += 10 * kMs) m.add(t, 1'000'000);
  for (int64_t at : {t - 5 * kMs, t + 40 * kMs}) {
    const double r = m.rate(at);
    CHECK(r > 0.95e8 && r < 1.05e8);
  }
  // The last bytes were in the bucket that ended at t: a second later they are out.
  CHECK(m.rate(t + 990 * kMs) > 0);
  CHECK_EQ(m.rate(t + 1000 * kMs), 0.0);
  CHECK_EQ(m.rate(t + 60'000 * kMs), 0.0);
  // Bytes after a long silence count alone, not against old buckets the ring reuses.
  m.add(t + 60'000 * kMs, 5'000'000);
  const double r = m.rate(t + 60'050 * kMs);
  CHECK(r > 4.5e6 && r < 5.0e6);  // 5 MB over 1.05 s
}

// A meter younger than the window divides by its age, not by a second.
TEST(rate_meter_young) {
  RateMeter m(kT0 + 30 * kMs);
  m.add(kT0 + 40 * kMs, 2'000'000);
  m.add(kT0 + 220 * kMs, 2'000'000);
  const double r = m.rate(kT0 + 230 * kMs);  // 4 MB in 200 ms
  CHECK(r > 1.99e7 && r < 2.01e7);
  CHECK_EQ(RateMeter(kT0).rate(kT0), 0.0);
}

// An add stamped a little behind the newest bucket (a time read before a
// batch of events) still counts; one older than the ring does not.
TEST(rate_meter_late_adds) {
  RateMeter m(kT0);
  m.add(kT0 + 500 * kMs, 1000);
  m.add(kT0 + 450 * kMs, 1000);
  m.add(kT0 - 5000 * kMs, 1'000'000'000);
  const double r = m.rate(kT0 + 500 * kMs);
  CHECK(r > 3999 && r < 4001);
}

// The I/O thread adds while another thread reads (run under TSan), both on
// the real clock, as in the engine: 100 bytes every 0.1 ms is at most 1 MB/s
// whatever the interleaving, and no reading says more.
TEST(rate_meter_concurrent_reader) {
  const auto now = monotonic_ns;
  const int64_t start = now();
  RateMeter m(start);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int64_t t = now(); t < start + 600 * kMs; t = now()) {
      m.add(t, 100);
      while (now() < t + kMs / 10) {
      }
    }
    done.store(true);
  });
  // From 50 ms on: earlier, one add over a few microseconds of age is a
  // true but meaningless rate.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int bad = 0, read = 0;
  while (!done.load()) {
    const double r = m.rate(now());
    read++;
    if (r < 0 || r > 1.01e6) bad++;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  writer.join();
  CHECK(read > 0);
  CHECK_EQ(bad, 0);
  const double r = m.rate(now());
  CHECK(r > 0 && r <= 1.01e6);
}
