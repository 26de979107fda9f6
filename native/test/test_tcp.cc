// The engine over loopback: messages of every size across N streams, both
// directions, a stream reset mid-transfer, peer loss, clean close, and
// hostile peers. The transport contract (CONTRACT tests) runs twice: over
// TCP, and over RDMA lanes on the emulated verbs (native/test/
// emulated_verbs.h; the TCP streams then set up and stand by), so both
// carriers are held to the same behaviour. The RDMA path has not run on
// hardware.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "emulated_verbs.h"
#include "fixed_lender.h"
#include "test.h"
#include "transport/rdma/channel.h"
#include "transport/tcp/engine.h"

#include <poll.h>
#include "util/crc32c.h"

using namespace dwcp;
using namespace dwcp::transport;
using namespace dwcp::transport::tcp;
using Type = Event::Type;
namespace test = dwcp::test;

namespace {

// The carrier the contract tests run over now.
bool g_rdma = false;
test::EmulatedFabric g_fabric;

// Makes `e` use the emulated RDMA fabric when the contract runs over RDMA.
void prepare(Engine& e) {
  if (g_rdma) e.set_verbs(&g_fabric);
}

ConnectOptions dial(uint16_t port, uint16_t streams, unsigned chunk_shift) {
  ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.streams = streams;
  o.chunk_shift = chunk_shift;
  // RDMA or fail: a contract test must not pass over TCP by falling back.
  o.transport = g_rdma ? Transport::kRdma : Transport::kTcp;
  return o;
}

#define CONTRACT(name)                        \
  static void name##_body();                  \
  TEST(tcp_##name) {                          \
    g_rdma = false;                           \
    name##_body();                            \
  }                                           \
  TEST(rdma_##name) {                         \
    g_rdma = true;                            \
    name##_body();                            \
    g_rdma = false;                           \
  }                                           \
  static void name##_body()

// Collects events; owns received message buffers.
class Sink : public EventSink {
 public:
  ~Sink() override {
    for (auto& e : events_) {
      if (e.slab < 0) delete e.data;  // slabs belong to their lender
    }
  }
  void deliver(std::vector<Event>& events) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.insert(events_.end(), events.begin(), events.end());
    cv_.notify_all();
  }
  // Waits until `pred(events)` holds; false after 20 s. An owner-driven
  // engine is driven from here, as an event loop would.
  template <class Pred>
  bool wait(Pred pred) {
    if (driven) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      for (;;) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (pred(events_)) return true;
        }
        if (std::chrono::steady_clock::now() > deadline) return false;
        pollfd pfd{driven->poll_fd(), POLLIN, 0};
        ::poll(&pfd, 1, 10);
        driven->poll_once();
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return pred(events_); });
  }
  size_t count(Type t, uint64_t id = 0) {
    std::lock_guard<std::mutex> lock(mu_);
    return count_locked(t, id);
  }
  Event first(Type t, uint64_t id = 0) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& e : events_) {
      if (e.type == t && (id == 0 || e.id == id)) return e;
    }
    return Event{};
  }
  std::vector<Event> all(Type t, uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Event> out;
    for (auto& e : events_) {
      if (e.type == t && e.id == id) out.push_back(e);
    }
    return out;
  }
  size_t count_locked(Type t, uint64_t id) const {
    size_t n = 0;
    for (auto& e : events_) n += e.type == t && (id == 0 || e.id == id);
    return n;
  }
  std::vector<Event> events_;
  Engine* driven = nullptr;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

struct Pair {
  Sink sink;
  Engine engine;
  uint64_t listener = 0, client = 0, server = 0;
  uint16_t port = 0;

  explicit Pair(uint16_t streams, unsigned chunk_shift = 16, bool own_thread = true, SocketOptions socket = {})
      : engine(&sink, Limits{}, own_thread) {
    if (!own_thread) sink.driven = &engine;
    prepare(engine);
    listener = engine.listen("127.0.0.1", 0);
    CHECK(sink.wait([&](auto& ev) { return std::any_of(ev.begin(), ev.end(), [&](auto& e) { return e.id == listener; }); }));
    Event l = sink.first(Type::kListening, listener);
    CHECK(l.type == Type::kListening);
    port = static_cast<uint16_t>(l.value);
    ConnectOptions o = dial(port, streams, chunk_shift);
    o.socket = socket;
    client = engine.connect(o);
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kConnected, client) == 1 && sink.count_locked(Type::kIncoming, 0) == 1; }));
    CHECK_EQ(sink.first(Type::kConnected, client).value, streams);
    server = sink.first(Type::kIncoming).id;
    if (g_rdma) {
      // Both ends on RDMA before the test sends (the server's switch follows
      // the client's READY).
      CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kTransport, client) == 1 && sink.count_locked(Type::kTransport, server) == 1; }));
      ConnectionStats st;
      CHECK(engine.stats(client, &st) && st.rdma && st.lanes == std::min<uint32_t>(streams, kMaxLanes));
    }
  }
  // Over RDMA: the data went by the lanes, not by TCP.
  void check_carrier(uint64_t conn) {
    if (!g_rdma) return;
    ConnectionStats st;
    CHECK(engine.stats(conn, &st));
    CHECK(st.rdma);
    CHECK(st.lane_bytes_sent > 0);
    uint64_t tcp = 0;
    for (auto& s : st.streams) tcp += s.bytes_sent;
    CHECK(tcp < 4096);  // HELLO and RDMA set-up only
  }
};

std::vector<uint8_t> random_bytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

}  // namespace

CONTRACT(messages_of_every_size_both_ways) {
  Pair p(4);
  std::mt19937_64 rng(test::seed() + 30);
  std::vector<std::vector<uint8_t>> msgs;
  for (size_t n : {1u, 100u, 65535u, 65536u, 65537u, 300000u, 3u << 20, 7u}) msgs.push_back(random_bytes(n, rng));
  for (uint64_t i = 0; i < msgs.size(); i++) p.engine.send(p.client, i, msgs[i].data(), msgs[i].size());
  for (uint64_t i = 0; i < 3; i++) p.engine.send(p.server, i, msgs[i].data(), msgs[i].size());
  CHECK(p.sink.wait([&](auto&) {
    return p.sink.count_locked(Type::kSendDone, p.client) == msgs.size() && p.sink.count_locked(Type::kMessage, p.server) == msgs.size() &&
           p.sink.count_locked(Type::kSendDone, p.server) == 3 && p.sink.count_locked(Type::kMessage, p.client) == 3;
  }));
  auto got = p.sink.all(Type::kMessage, p.server);
  for (uint64_t i = 0; i < msgs.size(); i++) {
    CHECK_EQ(got[i].value, i);  // delivered in send order
    CHECK(test::same_bytes(*got[i].data, msgs[i]));
  }
  auto back = p.sink.all(Type::kMessage, p.client);
  for (uint64_t i = 0; i < 3; i++) CHECK(test::same_bytes(*back[i].data, msgs[i]));
  ConnectionStats st;
  CHECK(p.engine.stats(p.client, &st));
  CHECK_EQ(st.streams.size(), 4u);
  if (!g_rdma) {
    size_t used = 0;
    for (auto& s : st.streams) used += s.bytes_sent > 100000;
    CHECK(used >= 3);  // the large messages were striped
  }
  CHECK_EQ(st.messages_sent, msgs.size());
  p.check_carrier(p.client);
  p.check_carrier(p.server);
  Endpoint local, remote, s_local, s_remote;
  CHECK(p.engine.addresses(p.client, &local, &remote));
  CHECK(remote.address == "127.0.0.1" && remote.port == p.port && local.address == "127.0.0.1");
  CHECK(p.engine.addresses(p.server, &s_local, &s_remote));
  CHECK(s_local.port == p.port && s_remote.address == "127.0.0.1" && s_remote.port != p.port);
  CHECK(!p.engine.addresses(999999, &local, &remote));
}

// pause_reading holds one connection's incoming data back (its streams are
// not read, its lanes grant no credits) until it is resumed; nothing is lost.
CONTRACT(pause_reading_holds_a_connection_back) {
  Pair p(2);
  std::mt19937_64 rng(test::seed() + 31);
  std::vector<std::vector<uint8_t>> msgs;
  for (int i = 0; i < 32; i++) msgs.push_back(random_bytes(1u << 20, rng));
  // One engine runs both ends: the pause is in force before the first send.
  p.engine.pause_reading(p.server, true);
  p.engine.pause_reading(p.server, true);
  p.engine.pause_reading(12345, true);  // unknown: ignored
  for (uint64_t i = 0; i < msgs.size(); i++) p.engine.send(p.client, i, msgs[i].data(), msgs[i].size());
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  if (p.sink.driven) p.engine.poll_once();
  CHECK(p.sink.count(Type::kSendDone, p.client) < msgs.size() / 2);
  CHECK(p.sink.count(Type::kMessage, p.server) < msgs.size() / 2);
  p.engine.pause_reading(p.server, false);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == msgs.size(); }));
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got.size(), msgs.size());
  for (uint64_t i = 0; i < got.size(); i++) {
    CHECK_EQ(got[i].value, i);
    CHECK(test::same_bytes(*got[i].data, msgs[i]));
  }
}

TEST(tcp_survives_a_stream_reset_mid_message) {
  Pair p(4);
  std::mt19937_64 rng(test::seed() + 31);
  std::vector<std::vector<uint8_t>> msgs;
  for (int i = 0; i < 6; i++) msgs.push_back(random_bytes(8u << 20, rng));
  for (uint64_t i = 0; i < msgs.size(); i++) p.engine.send(p.client, i, msgs[i].data(), msgs[i].size());
  p.engine.kill_stream(p.client, 1);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == msgs.size(); }));
  CHECK_EQ(p.sink.count(Type::kStreamLost, p.client), 1u);
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got.size(), msgs.size());
  for (size_t i = 0; i < msgs.size(); i++) CHECK(test::same_bytes(*got[i].data, msgs[i]));
  CHECK_EQ(p.sink.count(Type::kSendFailed), 0u);
  // The lost stream is dialled again; both ends see it come back.
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kStreamUp, p.client) == 1 && p.sink.count_locked(Type::kStreamUp, p.server) == 1; }));
  CHECK_EQ(p.sink.first(Type::kStreamUp, p.client).value, 1u);
  ConnectionStats st;
  CHECK(p.engine.stats(p.client, &st));
  size_t alive = 0;
  for (auto& s : st.streams) alive += s.alive;
  CHECK_EQ(alive, 4u);
  // And carries traffic: a message striped over all four again.
  p.engine.send(p.client, msgs.size(), msgs[0].data(), msgs[0].size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) == msgs.size() + 1; }));
  CHECK(test::same_bytes(*p.sink.all(Type::kMessage, p.server).back().data, msgs[0]));
}

// set_streams while messages flow: grow 2 -> 5, shrink 5 -> 1, nothing lost,
// no stream counted as lost, and a clean close after.
TEST(tcp_set_streams_grow_and_shrink_under_load) {
  Pair p(2, 14);
  std::mt19937_64 rng(test::seed() + 40);
  std::vector<std::vector<uint8_t>> msgs;
  for (int i = 0; i < 12; i++) msgs.push_back(random_bytes((1u << 20) + static_cast<size_t>(i), rng));
  uint64_t next = 0;
  auto send_some = [&](int n) {
    for (int i = 0; i < n; i++, next++) p.engine.send(p.client, next, msgs[next % msgs.size()].data(), msgs[next % msgs.size()].size());
  };
  auto alive = [&](uint64_t conn) {
    ConnectionStats st;
    CHECK(p.engine.stats(conn, &st));
    size_t n = 0;
    for (auto& s : st.streams) n += s.alive;
    return n;
  };
  send_some(6);
  p.engine.set_streams(p.client, 5);
  send_some(6);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kStreamUp, p.client) == 3 && p.sink.count_locked(Type::kStreamUp, p.server) == 3; }));
  CHECK_EQ(alive(p.client), 5u);
  send_some(6);
  p.engine.set_streams(p.client, 1);
  send_some(6);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kStreamRetired, p.client) == 4 && p.sink.count_locked(Type::kStreamRetired, p.server) == 4; }));
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == next; }));
  CHECK_EQ(alive(p.client), 1u);
  CHECK_EQ(alive(p.server), 1u);
  CHECK_EQ(p.sink.count(Type::kStreamLost), 0u);
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got.size(), next);
  for (uint64_t i = 0; i < next; i++) CHECK(test::same_bytes(*got[i].data, msgs[i % msgs.size()]));
  p.engine.close(p.client);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1; }));
  CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
  CHECK(p.sink.first(Type::kClosed, p.server).status == Status::kOk);
}

CONTRACT(peer_loss_fails_pending_sends) {
  Pair p(2);
  std::vector<uint8_t> big(32u << 20, 7);
  p.engine.send(p.client, 0, big.data(), big.size());
  p.engine.destroy(p.server);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1; }));
  CHECK(p.sink.count(Type::kSendFailed, p.client) + p.sink.count(Type::kSendDone, p.client) == 1);
  Event closed = p.sink.first(Type::kClosed, p.client);
  CHECK(closed.status == Status::kConnectionLost);
}

CONTRACT(clean_close_after_pending_sends) {
  Pair p(4);
  std::vector<uint8_t> m(1u << 20, 9);
  p.engine.send(p.client, 0, m.data(), m.size());
  p.engine.send(p.server, 0, m.data(), 1000);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.server) == 1; }));
  p.engine.close(p.client);
  CHECK(p.sink.wait([&](auto&) {
    return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1;
  }));
  CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
  CHECK(p.sink.first(Type::kClosed, p.server).status == Status::kOk);
  CHECK_EQ(p.sink.count(Type::kSendDone, p.client), 1u);
  CHECK_EQ(p.sink.count(Type::kMessage, p.server), 1u);
  p.engine.send(p.client, 1, m.data(), m.size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendFailed, p.client) == 1; }));
  CHECK(p.sink.first(Type::kSendFailed, p.client).status == Status::kClosed);
}

// close() called as the peer goes away without a CLOSE: the streams' ends
// are a lost peer, not the clean end a graceful close waits for.
TEST(tcp_close_as_the_peer_goes_away_finishes) {
  for (uint16_t streams : {uint16_t{1}, uint16_t{3}}) {
    Pair p(streams);
    std::vector<uint8_t> m(1000, 5);
    p.engine.send(p.client, 0, m.data(), m.size());
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 1; }));
    p.engine.destroy(p.server);
    p.engine.close(p.client);
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1; }));
  }
}

TEST(tcp_refused_and_hostile_peers) {
  Sink sink;
  Engine engine(&sink);
  // Nothing listens on this port once we closed it.
  const uint64_t l = engine.listen("127.0.0.1", 0);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kListening, l) == 1; }));
  const uint16_t port = static_cast<uint16_t>(sink.first(Type::kListening, l).value);

  // A client that sends garbage instead of a HELLO never becomes a connection.
  int raw = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(::connect(raw, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  uint8_t junk[100];
  std::memset(junk, 0x5a, sizeof(junk));
  CHECK(::write(raw, junk, sizeof(junk)) == 100);
  char b;
  CHECK(::read(raw, &b, 1) <= 0);  // the engine hung up
  ::close(raw);

  // A valid HELLO followed by a corrupt chunk: the connection is dropped
  // with a protocol error.
  raw = ::socket(AF_INET, SOCK_STREAM, 0);
  CHECK(::connect(raw, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  Hello h;
  h.connection_id[0] = 42;
  uint8_t hello[kHelloSize];
  write_hello(h, hello);
  CHECK(::write(raw, hello, sizeof(hello)) == static_cast<ssize_t>(sizeof(hello)));
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kIncoming, 0) == 1; }));
  const uint64_t conn = sink.first(Type::kIncoming).id;
  uint8_t chunk[kChunkHeaderSize];
  ChunkHeader ch;
  ch.type = ChunkType::kData;
  ch.chunk_shift = 12;
  ch.message_len = 10;
  ch.payload_len = 10;
  ch.payload_crc = 1234;  // wrong
  write_chunk_header(ch, chunk);
  CHECK(::write(raw, chunk, sizeof(chunk)) == static_cast<ssize_t>(sizeof(chunk)));
  CHECK(::write(raw, junk, 10) == 10);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, conn) == 1; }));
  CHECK(sink.first(Type::kClosed, conn).status == Status::kProtocol);
  ::close(raw);

  engine.close(l);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, l) == 1; }));
  ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.streams = 3;
  const uint64_t c = engine.connect(o);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kError, c) == 1; }));
  CHECK_EQ(sink.first(Type::kError, c).os_error, ECONNREFUSED);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, c) == 1; }));
  ConnectOptions bad_host;
  bad_host.host = "not-an-ip";
  bad_host.port = 1;
  const uint64_t bad = engine.connect(bad_host);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kError, bad) == 1 && sink.count_locked(Type::kClosed, bad) == 1; }));
}

// A dial nobody answers (a listener whose accept queue is full drops SYNs,
// as a host behind a dropping firewall does) fails at the connect timeout
// instead of after the kernel's two minutes of SYN retries.
TEST(tcp_connect_timeout) {
  const int full = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof(a);
  CHECK(::bind(full, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  CHECK(::listen(full, 0) == 0);  // room for one connection, never accepted
  CHECK(::getsockname(full, reinterpret_cast<sockaddr*>(&a), &alen) == 0);
  const int filler = ::socket(AF_INET, SOCK_STREAM, 0);
  CHECK(::connect(filler, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  Sink sink;
  Engine engine(&sink);
  ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = ntohs(a.sin_port);
  o.streams = 2;
  o.transport = Transport::kTcp;
  o.connect_timeout_ms = 300;
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t c = engine.connect(o);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, c) == 1; }));
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(waited >= std::chrono::milliseconds(250));
  CHECK(waited < std::chrono::milliseconds(5000));
  CHECK_EQ(sink.first(Type::kError, c).os_error, ETIMEDOUT);
  CHECK_EQ(sink.count(Type::kConnected, c), 0u);
  ::close(filler);
  ::close(full);
}

// Sockets that connect and never send their HELLO (whole or in part) are
// closed after the listener's handshake timeout; a real client still gets in.
TEST(tcp_silent_sockets_time_out) {
  Sink sink;
  Engine engine(&sink);
  const uint64_t l = engine.listen("127.0.0.1", 0, false, Transport::kTcp, RdmaOptions{}, 150);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kListening, l) == 1; }));
  const uint16_t port = static_cast<uint16_t>(sink.first(Type::kListening, l).value);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  Hello h;
  uint8_t hello[kHelloSize];
  write_hello(h, hello);
  int silent[3];
  for (int i = 0; i < 3; i++) {
    silent[i] = ::socket(AF_INET, SOCK_STREAM, 0);
    CHECK(::connect(silent[i], reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  }
  CHECK(::write(silent[2], hello, kHelloSize / 2) == static_cast<ssize_t>(kHelloSize / 2));  // half a HELLO
  const auto t0 = std::chrono::steady_clock::now();
  for (int fd : silent) {
    pollfd p{fd, POLLIN, 0};
    CHECK(::poll(&p, 1, 5000) == 1);  // the engine hung up
    char b;
    CHECK(::read(fd, &b, 1) <= 0);
    ::close(fd);
  }
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(waited >= std::chrono::milliseconds(100));
  CHECK(waited < std::chrono::milliseconds(4000));
  CHECK_EQ(sink.count(Type::kIncoming), 0u);
  ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.streams = 2;
  o.transport = Transport::kTcp;
  const uint64_t conn = engine.connect(o);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kConnected, conn) == 1; }));
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kIncoming, 0) == 1; }));
  // Past the timeout, a connection that opened its streams stays.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_EQ(sink.count(Type::kClosed, conn), 0u);
  engine.destroy(conn);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, conn) == 1; }));
}

CONTRACT(one_buffer_many_messages) {
  // Callers may send the same bytes many times at once (chunks of different
  // messages then point at the same memory).
  Pair p(4, 14);
  std::vector<uint8_t> m(1u << 20, 5);
  for (uint64_t i = 0; i < 64; i++) p.engine.send(p.client, i, m.data(), m.size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 64; }));
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) == 64; }));
  for (auto& e : p.sink.all(Type::kMessage, p.server)) CHECK(test::same_bytes(*e.data, m));
}

CONTRACT(receiver_back_pressure) {
  // Receiver with a 2 MiB limit on received-but-unconsumed bytes: it stops
  // reading until the application reports progress, and then resumes.
  Sink rsink, ssink;
  Limits lim;
  lim.max_undelivered_bytes = 2u << 20;
  Engine receiver(&rsink, lim);
  Engine sender(&ssink);
  prepare(receiver);
  prepare(sender);
  const uint64_t l = receiver.listen("127.0.0.1", 0);
  CHECK(rsink.wait([&](auto&) { return rsink.count_locked(Type::kListening, l) == 1; }));
  ConnectOptions o = dial(static_cast<uint16_t>(rsink.first(Type::kListening, l).value), 2, 16);
  const uint64_t c = sender.connect(o);
  CHECK(ssink.wait([&](auto&) { return ssink.count_locked(Type::kConnected, c) == 1; }));
  std::vector<uint8_t> m(1u << 20, 3);
  for (uint64_t i = 0; i < 64; i++) sender.send(c, i, m.data(), m.size());
  CHECK(rsink.wait([&](auto&) { return rsink.count_locked(Type::kMessage, 0) >= 2; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const size_t early = rsink.count(Type::kMessage);
  CHECK(early < 40);  // held back well before the 64 MiB
  size_t consumed = 0;
  while (consumed < 64) {
    CHECK(rsink.wait([&](auto&) { return rsink.count_locked(Type::kMessage, 0) > consumed; }));
    const size_t now = rsink.count(Type::kMessage);
    receiver.delivered((now - consumed) * m.size());
    consumed = now;
  }
  CHECK(ssink.wait([&](auto&) { return ssink.count_locked(Type::kSendDone, c) == 64; }));
}

CONTRACT(clean_close_after_bulk_on_many_streams) {
  // Regression: with data and the peer's FIN arriving together, the FIN was
  // missed and the hang-up taken for a failure, stalling the close.
  for (int round = 0; round < 4; round++) {
    Pair p(8);
    std::vector<uint8_t> m(2u << 20, static_cast<uint8_t>(round));
    for (uint64_t i = 0; i < 16; i++) p.engine.send(p.client, i, m.data(), m.size());
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 16; }));
    p.engine.close(p.client);
    CHECK(p.sink.wait([&](auto&) {
      return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1;
    }));
    CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
    CHECK(p.sink.first(Type::kClosed, p.server).status == Status::kOk);
    CHECK_EQ(p.sink.count(Type::kStreamLost), 0u);
  }
}

// The same engine with no thread of its own, driven by the test thread as
// Node's event loop drives it: messages both ways, a lost stream, a clean close.
CONTRACT(owner_driven_engine) {
  Pair p(3, 14, false);
  std::mt19937_64 rng(test::seed() + 38);
  std::vector<std::vector<uint8_t>> msgs;
  for (size_t n : {1u, 64u, 16384u, 16385u, 200000u, 1u << 20}) msgs.push_back(random_bytes(n, rng));
  for (uint64_t i = 0; i < msgs.size(); i++) p.engine.send(p.client, i, msgs[i].data(), msgs[i].size());
  p.engine.send(p.server, 0, msgs[1].data(), msgs[1].size());
  CHECK(p.sink.wait([&](auto&) {
    return p.sink.count_locked(Type::kSendDone, p.client) == msgs.size() && p.sink.count_locked(Type::kMessage, p.client) == 1;
  }));
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got.size(), msgs.size());
  for (uint64_t i = 0; i < msgs.size(); i++) CHECK(test::same_bytes(*got[i].data, msgs[i]));
  p.engine.kill_stream(p.client, 0);
  for (uint64_t i = 0; i < msgs.size(); i++) p.engine.send(p.client, msgs.size() + i, msgs[i].data(), msgs[i].size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 2 * msgs.size(); }));
  got = p.sink.all(Type::kMessage, p.server);
  for (uint64_t i = 0; i < msgs.size(); i++) CHECK(test::same_bytes(*got[msgs.size() + i].data, msgs[i]));
  CHECK_EQ(p.sink.count(Type::kStreamLost, p.client), 1u);
  // More sends than the command ring holds, with nobody polling: the
  // owner's own send makes room rather than waiting for itself.
  const uint64_t base = 2 * msgs.size();
  std::vector<uint8_t> small(24, 0x42);
  for (uint64_t i = 0; i < 10000; i++) p.engine.send(p.client, base + i, small.data(), small.size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == base + 10000; }));
  CHECK_EQ(p.sink.all(Type::kMessage, p.server).size(), base + 10000);
  p.engine.close(p.client);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1; }));
  CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
}

// A large message's receiver reports progress; the sender sees it rise.
CONTRACT(progress_reports) {
  Pair p(2, 14);
  std::mt19937_64 rng(test::seed() + 39);
  auto big = random_bytes(32u << 20, rng);
  p.engine.send(p.client, 0, big.data(), big.size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 1; }));
  auto prog = p.sink.all(Type::kSendProgress, p.client);
  // At most one per sixteenth; reports of one event batch merge, so fewer.
  CHECK(prog.size() >= 1 && prog.size() <= 15);
  uint64_t last = 0;
  for (auto& e : prog) {
    CHECK(e.value == 0 && e.extra > last && e.extra < big.size());
    last = e.extra;
  }
}

// One end closes while the other is still sending. The closer keeps
// acknowledging what arrives until the sender has drained, so nothing hangs:
// every message is either acknowledged (and delivered) or failed as CLOSED,
// and both ends close cleanly.
CONTRACT(close_while_the_peer_sends) {
  for (int round = 0; round < 3; round++) {
    Pair p(3, 14);
    std::vector<uint8_t> m(300000, static_cast<uint8_t>(round));
    uint64_t next = 0;
    for (; next < 40; next++) p.engine.send(p.client, next, m.data(), m.size());
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) >= 5; }));
    p.engine.close(p.server);
    for (; next < 80; next++) p.engine.send(p.client, next, m.data(), m.size());
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1; }));
    // Sends the engine took after the connection was gone fail after its kClosed.
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) + p.sink.count_locked(Type::kSendFailed, p.client) == next; }));
    const size_t done = p.sink.count(Type::kSendDone, p.client), failed = p.sink.count(Type::kSendFailed, p.client);
    CHECK_EQ(done + failed, next);
    CHECK_EQ(p.sink.count(Type::kMessage, p.server), done);  // acknowledged = delivered
    for (auto& e : p.sink.all(Type::kSendFailed, p.client)) CHECK(e.status == Status::kClosed);
    CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
    CHECK(p.sink.first(Type::kClosed, p.server).status == Status::kOk);
  }
}

// Both ends close at once while each still has messages in flight.
CONTRACT(both_ends_close_at_once) {
  for (int round = 0; round < 10; round++) {
    Pair p(static_cast<uint16_t>(1 + round % 4), 14);
    std::vector<uint8_t> m(100000 + static_cast<size_t>(round) * 1000, 0x5c);
    for (uint64_t i = 0; i < 10; i++) {
      p.engine.send(p.client, i, m.data(), m.size());
      p.engine.send(p.server, i, m.data(), m.size());
    }
    p.engine.close(p.client);
    p.engine.close(p.server);
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1; }));
    CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
    CHECK(p.sink.first(Type::kClosed, p.server).status == Status::kOk);
    CHECK_EQ(p.sink.count(Type::kSendDone, p.client) + p.sink.count(Type::kSendFailed, p.client), 10u);
    CHECK_EQ(p.sink.count(Type::kMessage, p.server), p.sink.count(Type::kSendDone, p.client));
  }
}

// Sends `msgs` (each from byte `skip` on), resets stream 1, sends them all
// again, and checks the peer got every one intact and in order.
void send_across_a_reset(Pair& p, const std::vector<std::vector<uint8_t>>& msgs, size_t skip = 0) {
  const uint64_t n = msgs.size();
  for (uint64_t i = 0; i < 2 * n; i++) {
    if (i == n) p.engine.kill_stream(p.client, 1);
    const auto& m = msgs[i % n];
    p.engine.send(p.client, i, m.data() + skip, m.size() - skip);
  }
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 2 * n; }));
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got.size(), 2 * n);
  for (size_t i = 0; i < got.size(); i++) {
    const auto& m = msgs[i % n];
    CHECK(test::same_bytes(*got[i].data, std::vector<uint8_t>(m.begin() + static_cast<std::ptrdiff_t>(skip), m.end())));
  }
}

// MSG_ZEROCOPY streams: every message intact, the kernel's completions
// drained (loopback copies, and says so), sends done only after both the
// peer's ACK and the kernel's completion; a lost stream still loses nothing.
TEST(tcp_zerocopy_sends) {
  SocketOptions zc;
  zc.zerocopy = true;
  Pair p(3, 16, true, zc);
  Sink& sink = p.sink;
  Engine& engine = p.engine;
  const uint64_t c = p.client;
  std::mt19937_64 rng(test::seed() + 41);
  std::vector<std::vector<uint8_t>> msgs;
  for (size_t n : {100u, 20000u, 65536u, 1u << 20, 3u << 20}) msgs.push_back(random_bytes(n, rng));
  send_across_a_reset(p, msgs);
  ConnectionStats st;
  CHECK(engine.stats(c, &st));
  CHECK(st.zerocopy_sends > 0);
  CHECK(st.zerocopy_copied <= st.zerocopy_sends);
  std::fprintf(stderr, "    zero-copy sends %llu, copied by the kernel %llu\n", static_cast<unsigned long long>(st.zerocopy_sends),
               static_cast<unsigned long long>(st.zerocopy_copied));
  engine.close(c);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, c) == 1; }));
  CHECK(sink.first(Type::kClosed, c).status == Status::kOk);
}

// Large payloads go by vmsplice + splice by default; the bytes arrive intact
// through a stream reset mid-message, and splice = false copies instead.
TEST(tcp_spliced_sends) {
  for (const bool splice : {true, false}) {
    SocketOptions so;
    so.splice = splice;
    Pair p(3, 17, true, so);
    std::mt19937_64 rng(test::seed() + 43);
    std::vector<std::vector<uint8_t>> msgs;
    // Odd sizes and an odd offset: pages vmsplice takes only in part.
    for (size_t n : {100u, 65536u, 70001u, 1u << 20, (3u << 20) + 5}) msgs.push_back(random_bytes(n + 3, rng));
    send_across_a_reset(p, msgs, 3);
    Sink& sink = p.sink;
    Engine& engine = p.engine;
    const uint64_t c = p.client;
    ConnectionStats st;
    CHECK(engine.stats(c, &st));
    if (splice) CHECK(st.spliced_bytes >= (4u << 20));
    else CHECK_EQ(st.spliced_bytes, 0u);
    engine.close(c);
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, c) == 1; }));
  }
}


// A lending listener's connections receive large messages into the
// lender's slabs (small ones, and large ones while none is free, as owned
// buffers); a connection that goes mid-message gives its slab back.
CONTRACT(lent_slabs) {
  test::FixedLender lender(2, 1u << 20);
  Sink sink;
  Engine engine(&sink);
  engine.set_lender(&lender);
  prepare(engine);
  const uint64_t l = engine.listen("127.0.0.1", 0, true);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kListening, l) == 1; }));
  ConnectOptions o = dial(static_cast<uint16_t>(sink.first(Type::kListening, l).value), 2, 16);
  const uint64_t c = engine.connect(o);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kConnected, c) == 1 && sink.count_locked(Type::kIncoming, 0) == 1; }));
  const uint64_t server = sink.first(Type::kIncoming).id;
  std::mt19937_64 rng(test::seed() + 44);
  std::vector<std::vector<uint8_t>> msgs;
  for (size_t n : {100u, 65536u, 300000u, 1u << 20, (1u << 20) + 1, 200000u}) msgs.push_back(random_bytes(n, rng));
  uint64_t next = 0;
  for (int round = 0; round < 3; round++) {
    for (auto& m : msgs) engine.send(c, next++, m.data(), m.size());
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kMessage, server) == next; }));
    auto got = sink.all(Type::kMessage, server);
    size_t lent = 0;
    for (size_t i = next - msgs.size(); i < next; i++) {
      const auto& m = msgs[i % msgs.size()];
      CHECK(test::same_bytes(*got[i].data, m));
      // Below 64 KiB or above the slab size: owned. Two slabs for three
      // messages in between when none is given back on the way: one owned.
      if (m.size() < 65536 || m.size() > (1u << 20)) CHECK_EQ(got[i].slab, -1);
      if (got[i].slab >= 0) lent++;
    }
    CHECK(lent >= 2);
    CHECK_EQ(lender.out(), 2u);
    for (size_t i = next - msgs.size(); i < next; i++) {
      if (got[i].slab >= 0) lender.give(got[i].slab);
    }
  }
  engine.close(c);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, c) == 1; }));
  // A peer that sends one chunk of a two-chunk message and hangs up: the
  // slab the message was going into comes back.
  int raw = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(o.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(::connect(raw, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  Hello h;
  h.connection_id[0] = 7;
  h.chunk_shift = 16;
  uint8_t hello[kHelloSize];
  write_hello(h, hello);
  CHECK(::write(raw, hello, sizeof(hello)) == static_cast<ssize_t>(sizeof(hello)));
  std::vector<uint8_t> half = random_bytes(1u << 16, rng);
  ChunkHeader ch;
  ch.type = ChunkType::kData;
  ch.chunk_shift = 16;
  ch.message_len = 2u << 16;
  ch.payload_len = 1u << 16;
  ch.payload_crc = crc32c(0, half.data(), half.size());
  uint8_t header[kChunkHeaderSize];
  write_chunk_header(ch, header);
  const size_t before = lender.takes();
  CHECK(::write(raw, header, sizeof(header)) == static_cast<ssize_t>(sizeof(header)));
  CHECK(::write(raw, half.data(), half.size()) == static_cast<ssize_t>(half.size()));
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kIncoming, 0) == 2; }));
  for (int i = 0; i < 2000 && lender.takes() == before; i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK_EQ(lender.takes(), before + 1);
  CHECK_EQ(lender.out(), 1u);
  ::close(raw);
  // Closed: the client, its server side, and now the raw peer's.
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, 0) == 3; }));
  for (int i = 0; i < 2000 && lender.out() != 0; i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK_EQ(lender.out(), 0u);
}

// Shrinking while the streams of a growth are still connecting, and a
// congestion change racing the dials: streams end up as asked, all on the
// new congestion control, and nothing is lost.
TEST(tcp_set_streams_while_dialling) {
  Pair p(2, 14);
  std::vector<uint8_t> m(200000, 0x3a);
  for (uint64_t i = 0; i < 8; i++) p.engine.send(p.client, i, m.data(), m.size());
  p.engine.set_streams(p.client, 12);
  CHECK_EQ(p.engine.set_congestion(p.client, "bbr"), 0);
  p.engine.set_streams(p.client, 3);
  for (uint64_t i = 8; i < 16; i++) p.engine.send(p.client, i, m.data(), m.size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 16; }));
  auto alive = [&] {
    ConnectionStats st;
    CHECK(p.engine.stats(p.client, &st));
    size_t n = 0;
    for (auto& s : st.streams) n += s.alive;
    return n;
  };
  for (int i = 0; i < 200 && alive() != 3; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ConnectionStats st;
  CHECK(p.engine.stats(p.client, &st));
  size_t n = 0;
  for (auto& s : st.streams) {
    if (!s.alive) continue;
    n++;
    CHECK(s.congestion == "bbr");
  }
  CHECK_EQ(n, 3u);
  CHECK_EQ(p.sink.count(Type::kMessage, p.server), 16u);
  CHECK_EQ(p.sink.count(Type::kSendFailed), 0u);
  p.engine.close(p.client);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1; }));
  CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
}

CONTRACT(packed_messages) {
  // send_many with packs: one id each, counted as their messages at both
  // ends; a pack whose layout is wrong fails at the sender, before the wire.
  Pair p(2, 12);
  std::vector<uint8_t> pack = {3, 0, 0, 0, 1, 0, 0, 0, 'a', 2, 0, 0, 0, 'b', 'c', 0, 0, 0, 0};
  std::vector<uint8_t> plain(100000, 9);
  std::vector<uint8_t> broken = {2, 0, 0, 0, 1, 0, 0, 0, 'a'};
  std::vector<uint8_t> oversize(kPackMax + 8, 0);
  p.engine.send_many(p.client, 0, {{pack.data(), pack.size(), kFlagPacked}, {plain.data(), plain.size(), 0}, {pack.data(), pack.size(), kFlagPacked}});
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 3; }));
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) == 3; }));
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got[0].extra, 3u);
  CHECK(test::same_bytes(*got[0].data, pack));
  CHECK_EQ(got[1].extra, 0u);
  CHECK(test::same_bytes(*got[1].data, plain));
  CHECK_EQ(got[2].extra, 3u);
  ConnectionStats cs, ss;
  CHECK(p.engine.stats(p.client, &cs) && p.engine.stats(p.server, &ss));
  CHECK_EQ(cs.messages_sent, 7u);
  CHECK_EQ(ss.messages_received, 7u);
  p.engine.send_many(p.client, 3, {{broken.data(), broken.size(), kFlagPacked}, {oversize.data(), oversize.size(), kFlagPacked}});
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendFailed, p.client) == 2; }));
  for (auto& e : p.sink.all(Type::kSendFailed, p.client)) CHECK(e.status == Status::kInvalidArgument);
}

// ---- RDMA lanes: selection and fallback (emulated verbs) ------------------

namespace {

// Forwards a second engine's events into a shared Sink with its ids moved
// up by kServerIds, so they cannot be taken for the first engine's (both
// number from 1).
constexpr uint64_t kServerIds = 1u << 20;
class OffsetSink : public EventSink {
 public:
  explicit OffsetSink(Sink* to) : to_(to) {}
  void deliver(std::vector<Event>& events) override {
    for (auto& e : events) {
      e.id += kServerIds;
      if (e.listener) e.listener += kServerIds;
    }
    to_->deliver(events);
  }

 private:
  Sink* to_;
};

// A listener and a client on separate engines, each with its own verbs;
// server-side ids in `sink` are offset by kServerIds.
struct RdmaPair {
  Sink sink;
  OffsetSink server_sink{&sink};
  Engine server_engine{&server_sink}, client_engine{&sink};
  uint64_t listener = 0, client = 0, server = 0;
  RdmaPair(rdma::Verbs* server_verbs, rdma::Verbs* client_verbs, Transport listen_as, Transport connect_as, uint16_t streams = 3) {
    server_engine.set_verbs(server_verbs);
    client_engine.set_verbs(client_verbs);
    listener = server_engine.listen("127.0.0.1", 0, false, listen_as) + kServerIds;
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kListening, listener) == 1; }));
    ConnectOptions o = dial(static_cast<uint16_t>(sink.first(Type::kListening, listener).value), streams, 16);
    o.transport = connect_as;
    client = client_engine.connect(o);
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, client) == 1 || sink.count_locked(Type::kConnected, client) == 1; }));
    if (sink.count(Type::kConnected, client)) {
      CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kIncoming, 0) == 1; }));
      server = sink.first(Type::kIncoming).id;
    }
  }
  bool rdma(Engine& e, uint64_t conn) {
    ConnectionStats st;
    CHECK(e.stats(&e == &server_engine ? conn - kServerIds : conn, &st));
    return st.rdma;
  }
};

}  // namespace

TEST(rdma_selection_auto_rdma_and_tcp) {
  test::EmulatedFabric fabric;
  test::NoDevices none;
  {
    // auto at both ends with devices: RDMA.
    RdmaPair p(&fabric, &fabric, Transport::kAuto, Transport::kAuto);
    CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kTransport, p.server) == 1; }));
    CHECK(p.rdma(p.client_engine, p.client) && p.rdma(p.server_engine, p.server));
    ConnectionStats st;
    CHECK(p.client_engine.stats(p.client, &st));
    CHECK_EQ(st.lanes, 3u);  // one per stream by default
  }
  {
    // No device here: auto is TCP, rdma fails at once with UNAVAILABLE.
    RdmaPair p(&fabric, &none, Transport::kAuto, Transport::kAuto);
    CHECK_EQ(p.sink.count(Type::kConnected, p.client), 1u);
    CHECK(!p.rdma(p.client_engine, p.client));
    RdmaPair q(&fabric, &none, Transport::kAuto, Transport::kRdma);
    CHECK_EQ(q.sink.count(Type::kConnected, q.client), 0u);
    CHECK(q.sink.first(Type::kError, q.client).status == Status::kUnavailable);
    CHECK(q.sink.first(Type::kClosed, q.client).status == Status::kUnavailable);
  }
  {
    // No device at the peer, or a peer that takes TCP only: it declines;
    // auto carries on over TCP, rdma fails with UNAVAILABLE.
    for (auto [verbs, as] : {std::pair<rdma::Verbs*, Transport>{&none, Transport::kAuto}, {&fabric, Transport::kTcp}}) {
      RdmaPair p(verbs, &fabric, as, Transport::kAuto);
      CHECK_EQ(p.sink.count(Type::kConnected, p.client), 1u);
      CHECK(!p.rdma(p.client_engine, p.client));
      std::vector<uint8_t> m(300000, 1);
      p.client_engine.send(p.client, 0, m.data(), m.size());
      CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) == 1; }));
      RdmaPair q(verbs, &fabric, as, Transport::kRdma);
      CHECK_EQ(q.sink.count(Type::kConnected, q.client), 0u);
      CHECK(q.sink.first(Type::kClosed, q.client).status == Status::kUnavailable);
    }
  }
  CHECK(fabric.qpns().empty());  // every QP went with its connection
}

// Lanes share their device's completion queue; a connection that would
// need more room than is left stays on TCP (auto) or fails (rdma), and the
// room comes back when connections close.
TEST(rdma_lanes_stay_within_the_completion_queue) {
  test::EmulatedFabric fabric;
  rdma::ChannelOptions defaults;
  fabric.cq_capacity = 3 * rdma::Channel::cq_entries(defaults);  // three lanes per device
  Sink sink;
  OffsetSink server_sink(&sink);
  Engine server(&server_sink), client(&sink);
  server.set_verbs(&fabric);
  client.set_verbs(&fabric);
  const uint64_t l = server.listen("127.0.0.1", 0) + kServerIds;
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kListening, l) == 1; }));
  const auto port = static_cast<uint16_t>(sink.first(Type::kListening, l).value);
  auto open = [&](Transport t) {
    ConnectOptions o = dial(port, 3, 16);
    o.transport = t;
    const uint64_t id = client.connect(o);
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kConnected, id) + sink.count_locked(Type::kClosed, id) == 1; }));
    return id;
  };
  auto rdma = [&](uint64_t id) {
    ConnectionStats st;
    return client.stats(id, &st) && st.rdma;
  };
  const uint64_t a = open(Transport::kAuto);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kTransport, a) == 1; }));
  CHECK(rdma(a));
  const uint64_t b = open(Transport::kAuto);  // no room: TCP
  CHECK_EQ(sink.count(Type::kConnected, b), 1u);
  CHECK(!rdma(b));
  const uint64_t c = open(Transport::kRdma);  // no room: fails
  CHECK(sink.first(Type::kClosed, c).status == Status::kUnavailable);
  client.destroy(a);
  // Both ends of `a` go, and their queue pairs with them.
  for (int i = 0; i < 2000 && !fabric.qpns().empty(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(fabric.qpns().empty());
  const uint64_t d = open(Transport::kRdma);  // room again
  CHECK_EQ(sink.count(Type::kConnected, d), 1u);
  CHECK(rdma(d));
}

// Queue pairs die mid-transfer, one and then all: what they carried goes
// again on the others and then on TCP; every message arrives once, whole
// and in order; both ends end up on TCP and say so.
TEST(rdma_falls_back_to_tcp_without_losing_a_message) {
  test::EmulatedFabric fabric;
  RdmaPair p(&fabric, &fabric, Transport::kAuto, Transport::kRdma, 4);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kTransport, p.server) == 1; }));
  std::mt19937_64 rng(test::seed() + 70);
  std::vector<std::vector<uint8_t>> msgs;
  for (size_t n : {100u, 70000u, 1u << 20, (4u << 20) + 3, 5000u, 300000u}) msgs.push_back(random_bytes(n, rng));
  const uint64_t n = msgs.size();
  uint64_t next = 0;
  auto send_round = [&] {
    for (uint64_t i = 0; i < n; i++, next++) p.client_engine.send(p.client, next, msgs[next % n].data(), msgs[next % n].size());
  };
  send_round();
  // One lane's QP fails (as after a fatal async event): the others carry on.
  fabric.fail_qp(fabric.qpns().front());
  send_round();
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == next; }));
  ConnectionStats st;
  CHECK(p.client_engine.stats(p.client, &st));
  CHECK(st.rdma);
  CHECK_EQ(st.lanes, 3u);
  // Then every QP: the connection moves to TCP.
  send_round();
  for (uint32_t qpn : fabric.qpns()) fabric.fail_qp(qpn);
  send_round();
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == next; }));
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kTransport, p.client) == 2 && p.sink.count_locked(Type::kTransport, p.server) == 2; }));
  CHECK_EQ(p.sink.all(Type::kTransport, p.client).back().value, 0u);
  CHECK(p.sink.all(Type::kTransport, p.client).back().status == Status::kDeviceError);
  CHECK_EQ(p.sink.count(Type::kSendFailed), 0u);
  // The server's engine acknowledges a batch before its sink sees it.
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) >= next; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // and no duplicate follows
  auto got = p.sink.all(Type::kMessage, p.server);
  CHECK_EQ(got.size(), next);
  for (uint64_t i = 0; i < got.size(); i++) {
    CHECK_EQ(got[i].value, i);
    CHECK(test::same_bytes(*got[i].data, msgs[i % n]));
  }
  CHECK(!p.rdma(p.client_engine, p.client) && !p.rdma(p.server_engine, p.server));
  // And TCP carries what follows; a clean close.
  send_round();
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) == next; }));
  p.client_engine.close(p.client);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1 && p.sink.count_locked(Type::kClosed, p.server) == 1; }));
  CHECK(p.sink.first(Type::kClosed, p.client).status == Status::kOk);
  CHECK(p.sink.first(Type::kClosed, p.server).status == Status::kOk);
}

// Set-up steps that break the protocol close the connection.
TEST(rdma_hostile_setup_steps) {
  test::EmulatedFabric fabric;
  Sink sink;
  Engine engine(&sink);
  engine.set_verbs(&fabric);
  const uint64_t l = engine.listen("127.0.0.1", 0, false, Transport::kAuto);
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kListening, l) == 1; }));
  const auto port = static_cast<uint16_t>(sink.first(Type::kListening, l).value);
  auto try_step = [&](uint8_t id, RdmaStep step, std::vector<uint8_t> payload) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    Hello h;
    h.connection_id[0] = id;
    uint8_t buf[kHelloSize];
    write_hello(h, buf);
    CHECK(::write(fd, buf, sizeof(buf)) == static_cast<ssize_t>(sizeof(buf)));
    ChunkHeader ch;
    ch.type = ChunkType::kRdma;
    ch.chunk_shift = 0;
    ch.offset = static_cast<uint64_t>(step);
    ch.payload_len = static_cast<uint32_t>(payload.size());
    ch.payload_crc = crc32c(0, payload.data(), payload.size());
    uint8_t header[kChunkHeaderSize];
    write_chunk_header(ch, header);
    CHECK(::write(fd, header, sizeof(header)) == static_cast<ssize_t>(sizeof(header)));
    if (!payload.empty()) CHECK(::write(fd, payload.data(), payload.size()) == static_cast<ssize_t>(payload.size()));
    return fd;
  };
  std::vector<uint8_t> garbage(kLaneSetupSize, 0xff);  // qpn, mtu, sizes all out of range
  const int f1 = try_step(1, RdmaStep::kOffer, garbage);
  const int f2 = try_step(2, RdmaStep::kAccept, {});     // a server never gets ACCEPT, and it has no records
  const int f3 = try_step(3, RdmaStep::kReady, {});      // READY with no offer
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kClosed, 0) == 3; }));
  size_t protocol = 0;
  for (uint64_t id = 1; id < 20; id++) {
    for (auto& e : sink.all(Type::kClosed, id)) protocol += e.status == Status::kProtocol;
  }
  CHECK_EQ(protocol, 3u);
  ::close(f1);
  ::close(f2);
  ::close(f3);
  CHECK(fabric.qpns().empty());
}
