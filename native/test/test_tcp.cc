// The TCP engine over loopback: messages of every size across N streams,
// both directions, a stream reset mid-transfer, peer loss, clean close, and
// hostile peers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "test.h"
#include "transport/tcp/engine.h"
#include "util/crc32c.h"

using namespace dwcp;
using namespace dwcp::transport;
using namespace dwcp::transport::tcp;
using Type = Event::Type;
namespace test = dwcp::test;

namespace {

// Collects events; owns received message buffers.
class Sink : public EventSink {
 public:
  ~Sink() override {
    for (auto& e : events_) delete e.data;
  }
  void deliver(std::vector<Event>& events) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.insert(events_.end(), events.begin(), events.end());
    cv_.notify_all();
  }
  // Waits until `pred(events)` holds; false after 20 s.
  template <class Pred>
  bool wait(Pred pred) {
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

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

struct Pair {
  Sink sink;
  Engine engine{&sink};
  uint64_t listener = 0, client = 0, server = 0;
  uint16_t port = 0;

  explicit Pair(uint16_t streams, unsigned chunk_shift = 16) {
    listener = engine.listen("127.0.0.1", 0);
    CHECK(sink.wait([&](auto& ev) { return std::any_of(ev.begin(), ev.end(), [&](auto& e) { return e.id == listener; }); }));
    Event l = sink.first(Type::kListening, listener);
    CHECK(l.type == Type::kListening);
    port = static_cast<uint16_t>(l.value);
    ConnectOptions o;
    o.host = "127.0.0.1";
    o.port = port;
    o.streams = streams;
    o.chunk_shift = chunk_shift;
    client = engine.connect(o);
    CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kConnected, client) == 1 && sink.count_locked(Type::kIncoming, 0) == 1; }));
    CHECK_EQ(sink.first(Type::kConnected, client).value, streams);
    server = sink.first(Type::kIncoming).id;
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

TEST(tcp_messages_of_every_size_both_ways) {
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
    CHECK(*got[i].data == msgs[i]);
  }
  auto back = p.sink.all(Type::kMessage, p.client);
  for (uint64_t i = 0; i < 3; i++) CHECK(*back[i].data == msgs[i]);
  ConnectionStats st;
  CHECK(p.engine.stats(p.client, &st));
  CHECK_EQ(st.streams.size(), 4u);
  size_t used = 0;
  for (auto& s : st.streams) used += s.bytes_sent > 100000;
  CHECK(used >= 3);  // the large messages were striped
  CHECK_EQ(st.messages_sent, msgs.size());
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
  for (size_t i = 0; i < msgs.size(); i++) CHECK(*got[i].data == msgs[i]);
  CHECK_EQ(p.sink.count(Type::kSendFailed), 0u);
}

TEST(tcp_peer_loss_fails_pending_sends) {
  Pair p(2);
  std::vector<uint8_t> big(32u << 20, 7);
  p.engine.send(p.client, 0, big.data(), big.size());
  p.engine.destroy(p.server);
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kClosed, p.client) == 1; }));
  CHECK(p.sink.count(Type::kSendFailed, p.client) + p.sink.count(Type::kSendDone, p.client) == 1);
  Event closed = p.sink.first(Type::kClosed, p.client);
  CHECK(closed.status == Status::kConnectionLost);
}

TEST(tcp_clean_close_after_pending_sends) {
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
  const uint64_t bad = engine.connect(ConnectOptions{"not-an-ip", 1, 1, 16, {}});
  CHECK(sink.wait([&](auto&) { return sink.count_locked(Type::kError, bad) == 1 && sink.count_locked(Type::kClosed, bad) == 1; }));
}

TEST(tcp_one_buffer_many_messages) {
  // Callers may send the same bytes many times at once (chunks of different
  // messages then point at the same memory).
  Pair p(4, 14);
  std::vector<uint8_t> m(1u << 20, 5);
  for (uint64_t i = 0; i < 64; i++) p.engine.send(p.client, i, m.data(), m.size());
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kSendDone, p.client) == 64; }));
  CHECK(p.sink.wait([&](auto&) { return p.sink.count_locked(Type::kMessage, p.server) == 64; }));
  for (auto& e : p.sink.all(Type::kMessage, p.server)) CHECK(*e.data == m);
}

TEST(tcp_receiver_back_pressure) {
  // Receiver with a 2 MiB limit on received-but-unconsumed bytes: it stops
  // reading until the application reports progress, and then resumes.
  Sink rsink, ssink;
  Limits lim;
  lim.max_undelivered_bytes = 2u << 20;
  Engine receiver(&rsink, lim);
  Engine sender(&ssink);
  const uint64_t l = receiver.listen("127.0.0.1", 0);
  CHECK(rsink.wait([&](auto&) { return rsink.count_locked(Type::kListening, l) == 1; }));
  ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = static_cast<uint16_t>(rsink.first(Type::kListening, l).value);
  o.streams = 2;
  o.chunk_shift = 16;
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

TEST(tcp_clean_close_after_bulk_on_many_streams) {
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
