// The AMST engine without Node: two engines in one process (each with its
// I/O thread) move 4 GiB in 4 MiB messages, 16 in flight, over loopback;
// the receiver lends slabs as `lendBuffers` does and takes each one back as
// soon as it is delivered. What `bench transport` measures, minus
// JavaScript, N-API and a second process: the engine's own ceiling here.
// Interleaved rounds over the stream counts, medians and ranges. JSON last:
// {"bench":"engine","gbps":{"1":..,"4":..}}
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "fixed_lender.h"
#include "transport/tcp/engine.h"

using namespace dwcp;
using namespace dwcp::transport;
using namespace dwcp::transport::tcp;

namespace {

constexpr size_t kMessage = 4u << 20;
constexpr uint64_t kWindow = 16;


// Counts what it is told; gives slabs back and reports consumption at once.
class Sink : public EventSink {
 public:
  test::FixedLender* slabs = nullptr;
  Engine* engine = nullptr;
  void deliver(std::vector<Event>& events) override {
    std::lock_guard<std::mutex> lock(mu);
    uint64_t bytes = 0;
    for (auto& e : events) {
      if (e.type == Event::Type::kMessage) {
        bytes += e.data->size();
        if (e.slab >= 0) slabs->give(e.slab);
        else delete e.data;
      } else if (e.type == Event::Type::kSendDone) {
        done++;
      } else {
        other.push_back(e);
      }
    }
    if (bytes && engine) engine->delivered(bytes);
    cv.notify_all();
  }
  template <class Pred>
  void wait(Pred pred) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return pred(); });
  }
  // The first event of type `t` so far, if any (call with `mu` held or
  // once the I/O thread has gone quiet).
  const Event* find(Event::Type t) const {
    for (auto& e : other) {
      if (e.type == t) return &e;
    }
    return nullptr;
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Event> other;
  uint64_t done = 0;
};

double run(uint16_t streams, uint64_t total) {
  test::FixedLender slabs(16, kMessage);
  Sink rsink, ssink;
  rsink.slabs = ssink.slabs = &slabs;
  Limits limits;
  limits.max_undelivered_bytes = 256ull << 20;
  Engine receiver(&rsink, limits);
  rsink.engine = &receiver;
  receiver.set_lender(&slabs);
  Engine sender(&ssink, limits);
  receiver.listen("127.0.0.1", 0, true);
  rsink.wait([&] { return rsink.find(Event::Type::kListening) != nullptr; });
  ConnectOptions o;
  o.host = "127.0.0.1";
  {
    std::lock_guard<std::mutex> lock(rsink.mu);
    o.port = static_cast<uint16_t>(rsink.find(Event::Type::kListening)->value);
  }
  o.streams = streams;
  o.socket.congestion = "cubic";
  const uint64_t conn = sender.connect(o);
  ssink.wait([&] { return ssink.find(Event::Type::kConnected) || ssink.find(Event::Type::kError); });
  std::unique_lock<std::mutex> lock(ssink.mu);
  const bool connected = ssink.find(Event::Type::kConnected) != nullptr;
  lock.unlock();
  if (!connected) {
    std::fprintf(stderr, "bench_engine: connect failed\n");
    std::exit(1);
  }
  std::vector<uint8_t> msg(kMessage, 0xa5);
  const uint64_t count = total / kMessage;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < count; i++) {
    ssink.wait([&] { return i - ssink.done < kWindow; });
    sender.send(conn, i, msg.data(), msg.size());
  }
  ssink.wait([&] { return ssink.done == count; });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  sender.destroy(conn);
  return static_cast<double>(count * kMessage) * 8 / secs / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const std::vector<uint16_t> counts = {1, 4};
  std::map<uint16_t, std::vector<double>> gbps;
  for (int r = 0; r < rounds; r++) {
    for (uint16_t n : counts) gbps[n].push_back(run(n, 4ull << 30));
  }
  std::printf("AMST engine alone, 4 GiB in 4 MiB messages over loopback, %d rounds:\n", rounds);
  std::string json = "{\"bench\":\"engine\",\"gbps\":{";
  for (uint16_t n : counts) {
    auto v = gbps[n];
    std::sort(v.begin(), v.end());
    std::printf("  %u stream(s): median %.2f (%.2f-%.2f) Gbit/s\n", n, v[v.size() / 2], v.front(), v.back());
    char b[64];
    std::snprintf(b, sizeof(b), "%s\"%u\":%.2f", n == counts.front() ? "" : ",", n, v[v.size() / 2]);
    json += b;
  }
  std::printf("%s}}\n", json.c_str());
  return 0;
}
