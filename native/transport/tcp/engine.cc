#include "transport/tcp/engine.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <random>

#include "transport/rate.h"
#include "transport/rdma/channel.h"
#include "util/crc32c.h"

namespace dwcp::transport::tcp {
namespace {

constexpr size_t kReadBuffer = 256 * 1024;
constexpr size_t kMaxIov = 1024;  // IOV_MAX: small chunks go out hundreds per syscall
// Payloads from this size go with MSG_ZEROCOPY on zero-copy streams; below
// it, pinning pages costs more than copying them.
constexpr uint32_t kZeroCopyMin = 16 * 1024;
// Payloads from this size go by vmsplice + splice on splicing streams.
constexpr uint32_t kSpliceMin = 64 * 1024;
// A listener out of file descriptors is not polled for this long.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);

enum class HandleKind : uint8_t { kStream, kListener, kTimer, kRdma };
HandleKind timer_tag = HandleKind::kTimer;  // epoll data of the timerfd
HandleKind rdma_tag = HandleKind::kRdma;    // epoll data of the RDMA completion channel

// RDMA lanes are streams without a socket; their indices sit above any TCP
// stream's so chunk bookkeeping (sent_on) tells them apart.
constexpr int32_t kLaneBase = 1 << 16;
// A bulk payload is registered whole (once for all its chunks) from this size.
constexpr uint64_t kRegisterMin = 64 * 1024;

}  // namespace

// A message being sent, by chunks. It stays until the peer acknowledges it.
struct Engine::OutMessage {
  uint64_t id = 0;
  const uint8_t* data = nullptr;
  uint64_t len = 0;
  uint8_t flags = 0;
  uint32_t count = 1;  // messages in it (more than one when packed)
  unsigned shift = 18;
  uint64_t chunks = 0;
  uint64_t next_chunk = 0;         // first chunk never sent
  std::deque<uint64_t> resend;     // chunks to send again after a stream loss
  std::vector<int32_t> sent_on;    // stream index each chunk last went out on
  bool queued = false;             // in Connection::queue
  bool acked = false;              // the peer holds it; done once no chunk is in flight
  int inflight = 0;                // chunks in stream queues (they point into `data`)
  int zc_pending = 0;              // MSG_ZEROCOPY sends of it the kernel may still read
  // Its registration for RDMA WRITEs, made when a chunk first goes by RDMA.
  rdma::Device* mr_device = nullptr;
  rdma::Region mr{};
  bool all_sent() const { return next_chunk == chunks && resend.empty(); }
  OutMessage() = default;
  OutMessage(const OutMessage&) = delete;
  OutMessage& operator=(const OutMessage&) = delete;
  ~OutMessage() {
    if (mr_device) mr_device->deregister(mr);
  }
};

namespace {

// Messages sent and not yet acknowledged, by id. A connection's ids are
// consecutive, so a ring indexed from the oldest one beats a search tree
// (one small message costs one slot, not a tree node).
class Unacked {
 public:
  using Ptr = std::unique_ptr<Engine::OutMessage>;
  // False for an id below the oldest kept or already present.
  bool insert(uint64_t id, Ptr m) {
    if (ring_.empty()) base_ = id;
    if (id < base_ || id - base_ > (1ull << 32)) return false;
    while (base_ + ring_.size() <= id) ring_.emplace_back();
    Ptr& slot = ring_[id - base_];
    if (slot) return false;
    slot = std::move(m);
    count_++;
    return true;
  }
  Engine::OutMessage* find(uint64_t id) const {
    return id >= base_ && id - base_ < ring_.size() ? ring_[id - base_].get() : nullptr;
  }
  void erase(uint64_t id) {
    if (id < base_ || id - base_ >= ring_.size() || !ring_[id - base_]) return;
    ring_[id - base_].reset();
    count_--;
    while (!ring_.empty() && !ring_.front()) {
      ring_.pop_front();
      base_++;
    }
  }
  bool empty() const { return count_ == 0; }
  void clear() {
    ring_.clear();
    count_ = 0;
  }
  // Calls f on every message, oldest first.
  template <class F>
  void for_each(F f) const {
    for (const Ptr& p : ring_) {
      if (p) f(p.get());
    }
  }
  // Messages with ids in [first, last), oldest first.
  template <class F>
  void for_range(uint64_t first, uint64_t last, F f) const {
    const uint64_t end = base_ + ring_.size();
    for (uint64_t id = std::max(first, base_); id < std::min(last, end); id++) {
      if (ring_[id - base_]) f(ring_[id - base_].get());
    }
  }

 private:
  std::deque<Ptr> ring_;
  uint64_t base_ = 0;
  size_t count_ = 0;
};

}  // namespace

// One item of a stream's output: a 40-byte header (a HELLO or a chunk
// header) and an optional payload borrowed from an OutMessage.
struct OutChunk {
  uint8_t header[kChunkHeaderSize];
  Engine::OutMessage* msg = nullptr;  // null for HELLO and control chunks
  const uint8_t* payload = nullptr;
  uint32_t len = 0;
  size_t written = 0;
  size_t total() const { return kChunkHeaderSize + len; }
};

struct Engine::Stream {
  HandleKind kind = HandleKind::kStream;
  Connection* conn = nullptr;  // null until a server stream's HELLO
  uint64_t listener = 0;
  int32_t index = 0;
  Fd fd;
  std::chrono::steady_clock::time_point hello_due{};  // accepted, before its HELLO: closed at this time
  uint32_t peer_timeout_ms = 0;  // SocketOptions::peer_timeout_ms
  // Since when the socket has waited on the peer (see check_liveness), as
  // the last check saw it.
  std::optional<std::chrono::steady_clock::time_point> pending_since;
  bool connecting = false;
  bool alive = true;
  bool eof = false;
  bool write_shut = false;
  bool read_paused = false;  // receiver back-pressure
  bool retiring = false;     // set_streams is taking it away: no new chunks
  bool retire_sent = false;  // our RETIRE is queued; the write side shuts after it
  int attempt = 0;           // re-dial attempt that made it (0: first dial)
  bool zerocopy = false;     // SO_ZEROCOPY is on
  uint32_t zc_next = 0;      // the kernel's number for our next MSG_ZEROCOPY send
  std::deque<std::pair<uint32_t, OutMessage*>> zc_wait;  // sends not yet reported done
  bool splice = false;       // large payloads go by vmsplice + splice
  Fd pipe_r, pipe_w;         // the splice pipe, made at the first large payload
  size_t piped = 0;          // bytes of the head chunk's payload in the pipe, not yet in the socket
  uint32_t epoll_events = 0;  // what the fd is registered for (0: not registered)
  std::unique_ptr<StreamReader> reader;
  std::deque<OutChunk> out;
  size_t out_bytes = 0;
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> bytes_received{0};
  RateMeter sent_rate{monotonic_ns()}, received_rate{monotonic_ns()};  // of the two above
  // An RDMA lane (no fd): chunks go to `channel`; `out` holds those handed
  // over and not yet reported done, oldest first.
  bool lane = false;
  bool lane_ready = false;  // may carry our data: the peer's end is connected
  uint32_t tag = 0;
  size_t lane_posted = 0;   // leading chunks of `out` handed to the channel
  uint64_t lane_next_id = 0;
  std::unique_ptr<rdma::Channel> channel;
};

struct Engine::Listener {
  HandleKind kind = HandleKind::kListener;
  uint64_t id = 0;
  bool lend = false;
  Transport transport = Transport::kAuto;
  RdmaOptions rdma;
  std::chrono::milliseconds handshake_timeout{kDefaultHandshakeTimeoutMs};
  SocketOptions accepted;  // options of the sockets it accepts
  Fd fd;
  // Out of file descriptors: not polled until then, so a listener the
  // kernel keeps readable does not spin the I/O thread.
  std::optional<std::chrono::steady_clock::time_point> paused_until;
};

struct Engine::Connection {
  uint64_t id = 0;
  bool client = false;
  uint64_t listener = 0;
  std::array<uint8_t, 16> conn_id{};
  // Client: where and how to dial streams (again).
  sockaddr_storage addr{};
  socklen_t alen = 0;
  SocketOptions sockopts;
  std::chrono::milliseconds connect_timeout{0};  // per dial; 0: none
  bool redial = false;
  unsigned shift = 18;
  uint16_t expected_streams = 0;
  uint16_t initial_streams = 0;  // server: streams the first HELLO announced
  uint16_t target_streams = 0;   // client: streams wanted (set_streams)
  unsigned connect_resolved = 0;  // client: streams that connected or failed
  unsigned connected = 0;
  bool announced = false;
  bool closing = false;      // close() called, or the peer sent CLOSE
  bool close_sent = false;
  // The peer's CLOSE arrived: it has nothing unacknowledged, so nothing more
  // needs an ACK from us. Only once both CLOSEs are out may a stream's write
  // side shut; before that the closing side must still acknowledge what the
  // other sent before it heard the CLOSE.
  bool peer_closed = false;
  bool finished = false;     // closed and reported; kept only until the epoll batch ends
  bool touched = false;      // in Engine::touched_
  bool app_paused = false;   // pause_reading(): its streams are not read
  std::vector<std::pair<uint64_t, uint64_t>> acks;      // (first id, count) to acknowledge
  struct Progress {
    uint64_t id, held, len;
  };
  std::vector<Progress> progress;  // reports to send
  std::vector<std::unique_ptr<Stream>> streams;
  std::deque<OutMessage*> queue;
  Unacked unacked;
  Reassembler reasm;
  size_t rr = 0;
  std::atomic<uint64_t> messages_sent{0}, messages_received{0}, bytes_sent{0}, bytes_received{0}, chunks_resent{0};
  std::atomic<uint64_t> zerocopy_sends{0}, zerocopy_copied{0}, spliced_bytes{0};
  // Bytes its streams and lanes wrote and read, headers included.
  RateMeter sent_rate{monotonic_ns()}, received_rate{monotonic_ns()};
  // RDMA. kOffered: a client waits for the server's answer (kConnected
  // waits with it). kAccepted: a server's lanes are connected; it sends on
  // them once the client says READY. kActive: lanes carry the data.
  // kOff: TCP only (never offered, declined, or fallen back).
  enum class Rdma : uint8_t { kNone, kOffered, kAccepted, kActive, kOff };
  Transport transport = Transport::kTcp;
  RdmaOptions rdma_opts;
  Rdma rdma = Rdma::kNone;
  Stream* offer_stream = nullptr;
  std::vector<std::unique_ptr<Stream>> lanes;
  size_t lane_rr = 0;
  std::vector<uint8_t> rdma_payload;  // our OFFER or ACCEPT records, while they are written
  std::atomic<uint64_t> lane_bytes_sent{0}, lane_bytes_received{0};
  // What stats() reports from other threads (note_lanes keeps them).
  std::atomic<bool> on_rdma{false};
  std::atomic<uint32_t> lanes_alive{0};

  explicit Connection(Limits limits) : reasm(limits) {}
  void note_lanes() {
    uint32_t n = 0;
    for (const auto& l : lanes) n += l->alive;
    lanes_alive.store(n);
    on_rdma.store(rdma == Rdma::kActive && lanes_up());
  }
  bool lanes_up() const {
    for (const auto& l : lanes) {
      if (l->alive && l->lane_ready) return true;
    }
    return false;
  }
  size_t live_streams() const {
    size_t n = 0;
    for (const auto& s : streams) n += s->alive && !s->connecting;
    return n;
  }
};

Engine::Engine(EventSink* sink, Limits limits, bool own_thread) : sink_(sink), limits_(limits) {
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  wake_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
  timer_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  ev.data.ptr = &timer_tag;
  epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, timer_.get(), &ev);
  if (own_thread) thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  if (thread_.joinable()) {
    stop_.store(true, std::memory_order_release);
    const uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
    thread_.join();
  } else {
    shutdown_all();
  }
}

void Engine::post(Command&& c) {
  // The I/O thread never waits on the owner, so this wait always ends. An
  // owner-driven engine is its own I/O thread: it makes room itself.
  while (!commands_.try_push(std::move(c))) {
    if (thread_.joinable()) std::this_thread::yield();
    else drain_commands();
  }
  // One eventfd write per wake-up, not per command: a burst of sends costs
  // one syscall. The I/O thread clears the flag before it drains the ring,
  // so a command pushed after that drain started finds it clear and wakes it.
  if (wake_pending_.exchange(true, std::memory_order_acq_rel)) return;
  const uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

uint64_t Engine::listen(const std::string& host, uint16_t port, bool lend, Transport transport, const RdmaOptions& rdma,
                        uint32_t handshake_timeout_ms, const SocketOptions& accepted) {
  Command c;
  c.type = Command::Type::kListen;
  c.id = next_id_++;
  c.host = host;
  c.port = port;
  c.lend = lend;
  c.transport = transport;
  c.rdma = rdma;
  c.handshake_timeout_ms = handshake_timeout_ms;
  c.accepted = accepted;
  const uint64_t id = c.id;
  post(std::move(c));
  return id;
}

uint64_t Engine::connect(const ConnectOptions& opts) {
  Command c;
  c.type = Command::Type::kConnect;
  c.id = next_id_++;
  c.connect = std::make_unique<ConnectOptions>(opts);
  const uint64_t id = c.id;
  post(std::move(c));
  return id;
}

void Engine::send(uint64_t conn, uint64_t message_id, const uint8_t* data, size_t len) {
  Command c;
  c.type = Command::Type::kSend;
  c.id = conn;
  c.message_id = message_id;
  c.data = data;
  c.len = len;
  post(std::move(c));
}

void Engine::send_many(uint64_t conn, uint64_t first_id, std::vector<SendItem> messages) {
  Command c;
  c.type = Command::Type::kSendMany;
  c.id = conn;
  c.message_id = first_id;
  c.many = std::make_unique<std::vector<SendItem>>(std::move(messages));
  post(std::move(c));
}

void Engine::close(uint64_t id) { post(Command::Type::kClose, id, 0); }

void Engine::destroy(uint64_t id) { post(Command::Type::kDestroy, id, 0); }

void Engine::delivered(uint64_t bytes) {
  const int64_t before = undelivered_.fetch_sub(static_cast<int64_t>(bytes));
  const auto limit = static_cast<int64_t>(limits_.max_undelivered_bytes);
  if (limit && before > limit && before - static_cast<int64_t>(bytes) <= limit) {
    Command c;
    c.type = Command::Type::kResume;
    post(std::move(c));
  }
}

void Engine::post(Command::Type type, uint64_t id, uint64_t value) {
  Command c;
  c.type = type;
  c.id = id;
  c.message_id = value;
  post(std::move(c));
}

void Engine::set_streams(uint64_t conn, uint16_t n) { post(Command::Type::kSetStreams, conn, n); }

void Engine::kill_stream(uint64_t conn, uint32_t index) { post(Command::Type::kKillStream, conn, index); }

void Engine::pause_reading(uint64_t conn, bool pause) { post(Command::Type::kPauseReading, conn, pause ? 1 : 0); }

int Engine::set_congestion(uint64_t conn, const std::string& name) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  auto it = conns_.find(conn);
  if (it == conns_.end() || it->second->finished) return ENOENT;
  Connection& c = *it->second;
  for (const auto& s : c.streams) {
    if (!s->fd) continue;
    if (setsockopt(s->fd.get(), IPPROTO_TCP, TCP_CONGESTION, name.data(), static_cast<socklen_t>(name.size())) != 0) return errno;
  }
  c.sockopts.congestion = name;
  return 0;
}

bool Engine::stats(uint64_t conn, ConnectionStats* out) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  auto it = conns_.find(conn);
  if (it == conns_.end()) return false;
  Connection& c = *it->second;
  const int64_t now = monotonic_ns();
  out->send_rate = c.sent_rate.rate(now);
  out->receive_rate = c.received_rate.rate(now);
  out->messages_sent = c.messages_sent.load();
  out->messages_received = c.messages_received.load();
  out->bytes_sent = c.bytes_sent.load();
  out->bytes_received = c.bytes_received.load();
  out->chunks_resent = c.chunks_resent.load();
  out->zerocopy_sends = c.zerocopy_sends.load();
  out->zerocopy_copied = c.zerocopy_copied.load();
  out->spliced_bytes = c.spliced_bytes.load();
  out->rdma = c.on_rdma.load();
  out->lanes = c.lanes_alive.load();
  out->lane_bytes_sent = c.lane_bytes_sent.load();
  out->lane_bytes_received = c.lane_bytes_received.load();
  out->streams.clear();
  for (const auto& s : c.streams) {
    StreamStats st;
    st.bytes_sent = s->bytes_sent.load();
    st.bytes_received = s->bytes_received.load();
    st.alive = s->alive && !s->connecting;
    st.send_rate = s->sent_rate.rate(now);
    st.receive_rate = s->received_rate.rate(now);
    if (s->fd) {
      tcp_info info{};
      socklen_t len = sizeof(info);
      if (getsockopt(s->fd.get(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0) {
        st.rtt_us = info.tcpi_rtt;
        st.rtt_var_us = info.tcpi_rttvar;
        st.total_retrans = info.tcpi_total_retrans;
        st.snd_cwnd = info.tcpi_snd_cwnd;
      }
      st.congestion = congestion_of(s->fd.get());
      socklen_t n = sizeof(int);
      getsockopt(s->fd.get(), SOL_SOCKET, SO_SNDBUF, &st.send_buffer, &n);
      n = sizeof(int);
      getsockopt(s->fd.get(), SOL_SOCKET, SO_RCVBUF, &st.recv_buffer, &n);
    }
    out->streams.push_back(std::move(st));
  }
  return true;
}

namespace {
bool endpoint_of(const sockaddr_storage& a, Endpoint* out) {
  char text[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    if (!inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text))) return false;
    out->port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    if (!inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text))) return false;
    out->port = ntohs(v6->sin6_port);
  } else {
    return false;
  }
  out->address = text;
  return true;
}
}  // namespace

bool Engine::addresses(uint64_t conn, Endpoint* local, Endpoint* remote) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  auto it = conns_.find(conn);
  if (it == conns_.end()) return false;
  for (const auto& s : it->second->streams) {
    if (!s->fd || s->connecting) continue;
    sockaddr_storage l{}, r{};
    socklen_t ll = sizeof(l), rl = sizeof(r);
    if (getsockname(s->fd.get(), reinterpret_cast<sockaddr*>(&l), &ll) == 0 &&
        getpeername(s->fd.get(), reinterpret_cast<sockaddr*>(&r), &rl) == 0 && endpoint_of(l, local) && endpoint_of(r, remote)) {
      return true;
    }
  }
  return false;
}

void Engine::run() {
  // Named so that top -H and perf tell it from Node's own threads.
  pthread_setname_np(pthread_self(), "amst-io");
  while (!stop_.load(std::memory_order_acquire)) iterate(-1);
  shutdown_all();
}

void Engine::iterate(int timeout_ms) {
  epoll_event evs[64];
  const int n = epoll_wait(epoll_.get(), evs, 64, timeout_ms);
  now_ns_ = monotonic_ns();
  for (int i = 0; i < n; i++) {
    void* p = evs[i].data.ptr;
    if (!p) {
      uint64_t v;
      (void)!::read(wake_.get(), &v, sizeof(v));
      wake_pending_.exchange(false, std::memory_order_acq_rel);
      drain_commands();
    } else if (p == &timer_tag) {
      uint64_t v;
      (void)!::read(timer_.get(), &v, sizeof(v));
      run_timers();
    } else if (p == &rdma_tag) {
      on_rdma_completions();
    } else if (*static_cast<HandleKind*>(p) == HandleKind::kListener) {
      on_listener(static_cast<Listener*>(p));
    } else {
      on_stream(static_cast<Stream*>(p), evs[i].events);
    }
  }
  flush_touched();
  // Queue pairs of lanes that died in this batch go before the events that
  // may let the application free what they were sending.
  dead_channels_.clear();
  if (!pending_.empty()) {
    // The sink may call back in (an owner-driven engine's sink runs JS,
    // which may send): events raised meanwhile wait for the next round.
    std::vector<Event> batch;
    batch.swap(pending_);
    sink_->deliver(batch);
  }
  graveyard_.clear();
  dead_conns_.clear();
  dead_channels_.clear();
}

// Closes everything without reporting (the sink may be going).
void Engine::shutdown_all() {
  std::lock_guard<std::mutex> lock(stats_mu_);
  conns_.clear();
  listeners_.clear();
  orphans_.clear();
  graveyard_.clear();
  dead_conns_.clear();
  dead_channels_.clear();
  lanes_by_tag_.clear();
  touched_.clear();
  for (auto& e : pending_) {
    if (e.slab < 0) delete e.data;
    else lender_->give(e.slab);
  }
  pending_.clear();
  Command c;
  while (commands_.try_pop(c)) {
  }
}

void Engine::drain_commands() {
  now_ns_ = monotonic_ns();  // also called outside iterate(), by an owner out of ring space
  Command c;
  while (commands_.try_pop(c)) handle(c);
}

void Engine::handle(Command& c) {
  switch (c.type) {
    case Command::Type::kListen: {
      auto l = std::make_unique<Listener>();
      l->id = c.id;
      l->lend = c.lend;
      l->transport = c.transport;
      l->rdma = c.rdma;
      l->handshake_timeout = std::chrono::milliseconds(c.handshake_timeout_ms);
      l->accepted = c.accepted;
      int err = 0;
      uint16_t port = c.port;
      l->fd = tcp_listen(c.host, &port, 1024, &err, l->accepted);
      if (!l->fd) {
        emit(Event{Event::Type::kError, c.id, 0, 0, Status::kInvalidArgument, err, nullptr});
        return;
      }
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = l.get();
      epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, l->fd.get(), &ev);
      emit(Event{Event::Type::kListening, c.id, 0, port, Status::kOk, 0, nullptr});
      listeners_[c.id] = std::move(l);
      return;
    }
    case Command::Type::kConnect:
      start_connect(c.id, *c.connect);
      return;
    case Command::Type::kSend:
      enqueue_send(c.id, c.message_id, c.data, c.len);
      return;
    case Command::Type::kSendMany:
      for (size_t i = 0; i < c.many->size(); i++) {
        const SendItem& m = (*c.many)[i];
        enqueue_send(c.id, c.message_id + i, m.data, m.len, m.flags);
      }
      return;
    case Command::Type::kClose: {
      if (auto l = listeners_.find(c.id); l != listeners_.end()) {
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, l->second->fd.get(), nullptr);
        emit(Event{Event::Type::kClosed, c.id, 0, 0, Status::kOk, 0, nullptr});
        listeners_.erase(l);
        return;
      }
      auto it = conns_.find(c.id);
      if (it == conns_.end()) return;
      it->second->closing = true;
      maybe_finish_graceful(it->second.get());
      return;
    }
    case Command::Type::kDestroy: {
      if (listeners_.count(c.id)) {
        Command close_cmd;
        close_cmd.type = Command::Type::kClose;
        close_cmd.id = c.id;
        handle(close_cmd);
        return;
      }
      auto it = conns_.find(c.id);
      if (it != conns_.end()) finish_close(it->second.get(), Status::kClosed);
      return;
    }
    case Command::Type::kKillStream: {
      auto it = conns_.find(c.id);
      if (it == conns_.end()) return;
      for (auto& s : it->second->streams) {
        if (s->index == static_cast<int32_t>(c.message_id) && s->alive && !s->connecting) {
          // An RST, as a dead path or peer would leave: SO_LINGER 0 then close.
          linger lg{1, 0};
          setsockopt(s->fd.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
          stream_failed(s.get(), ECONNRESET);
          return;
        }
      }
      return;
    }
    case Command::Type::kResume: {
      if (!reading_paused_) return;
      reading_paused_ = false;
      for (auto& [id, conn] : conns_) {
        for (auto& st : conn->streams) {
          if (st->read_paused) {
            st->read_paused = false;
            update_epoll(st.get());
          }
        }
        for (auto& l : conn->lanes) {
          if (l->read_paused && l->alive) {
            l->read_paused = false;
            l->channel->hold_credits(conn->app_paused);
            lane_progress(l.get());
          }
        }
      }
      return;
    }
    case Command::Type::kPauseReading: {
      auto it = conns_.find(c.id);
      if (it == conns_.end() || it->second->finished) return;
      Connection* conn = it->second.get();
      const bool pause = c.message_id != 0;
      if (conn->app_paused == pause) return;
      conn->app_paused = pause;
      for (auto& st : conn->streams) update_epoll(st.get());
      for (auto& l : conn->lanes) {
        if (!l->alive || !l->channel || l->read_paused) continue;
        l->channel->hold_credits(pause);
        if (!pause) lane_progress(l.get());
      }
      return;
    }
    case Command::Type::kSetStreams: {
      auto it = conns_.find(c.id);
      if (it == conns_.end() || !it->second->client || it->second->closing) return;
      Connection* conn = it->second.get();
      const auto n = static_cast<int32_t>(std::clamp<uint64_t>(c.message_id, 1, 512));
      int32_t slots = 0;
      for (auto& st : conn->streams) slots = std::max(slots, st->index + 1);
      conn->expected_streams = static_cast<uint16_t>(std::max(n, slots));
      conn->target_streams = static_cast<uint16_t>(n);
      std::vector<Stream*> leaving;
      for (auto& st : conn->streams) {
        if (st->index >= n && st->alive && !st->retiring) leaving.push_back(st.get());
      }
      for (Stream* st : leaving) {
        // One still connecting never said HELLO: the peer knows nothing of it.
        if (st->connecting) drop_fd(st);
        else retire(st);
      }
      for (int32_t i = 0; i < n; i++) {
        bool present = false;
        for (auto& st : conn->streams) present |= st->index == i && st->alive && !st->retiring;
        if (!present) dial_stream(conn, i, 0);
      }
      return;
    }
    case Command::Type::kNone:
      return;
  }
}

// Dials stream `index` of client connection `c`, replacing a dead stream of
// that index. Returns null when the socket could not even be started (a
// re-dial is then scheduled).
Engine::Stream* Engine::dial_stream(Connection* c, int32_t index, int attempt) {
  auto s = std::make_unique<Stream>();
  s->conn = c;
  s->index = index;
  s->attempt = attempt;
  int err = 0;
  SocketOptions opts;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);  // set_congestion may change them from another thread
    opts = c->sockopts;
  }
  s->fd = tcp_socket(c->addr.ss_family, opts, &err);
  if (s->fd && opts.zerocopy) {
    const int one = 1;
    s->zerocopy = setsockopt(s->fd.get(), SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) == 0;
  }
  s->splice = opts.splice && !s->zerocopy;
  s->peer_timeout_ms = opts.peer_timeout_ms;
  if (s->fd && ::connect(s->fd.get(), reinterpret_cast<sockaddr*>(&c->addr), c->alen) != 0 && errno != EINPROGRESS) {
    s->fd.reset();
  }
  Stream* sp = s.get();
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    auto old = std::find_if(c->streams.begin(), c->streams.end(), [&](const auto& t) { return t->index == index && !t->alive; });
    if (old != c->streams.end()) {
      graveyard_.push_back(std::move(*old));
      *old = std::move(s);
    } else {
      c->streams.push_back(std::move(s));
    }
    // set_congestion may have run since the options were copied; now that
    // the stream is listed it would be covered, so catch up here.
    if (sp->fd && c->sockopts.congestion != opts.congestion && !c->sockopts.congestion.empty()) {
      setsockopt(sp->fd.get(), IPPROTO_TCP, TCP_CONGESTION, c->sockopts.congestion.data(),
                 static_cast<socklen_t>(c->sockopts.congestion.size()));
    }
  }
  if (!sp->fd) {
    sp->alive = false;
    if (c->announced) schedule_redial(c, index, attempt + 1);
    return nullptr;
  }
  sp->connecting = true;
  sp->reader = make_reader(sp, false);
  update_epoll(sp);
  const bool first_checked = sp->peer_timeout_ms && !liveness_due_;
  if (first_checked) liveness_due_ = std::chrono::steady_clock::now();
  if (c->connect_timeout.count() > 0) {
    dial_deadlines_.emplace(std::chrono::steady_clock::now() + c->connect_timeout, Dial{c->id, index, attempt});
  }
  if (first_checked || c->connect_timeout.count() > 0) arm_timer();
  return sp;
}

void Engine::schedule_redial(Connection* c, int32_t index, int attempt) {
  if (!c->redial || c->closing || c->finished || attempt >= kRedialAttempts) return;
  // 50 ms, 100 ms, 200 ms...: a path that flaps is not hammered.
  const auto due = std::chrono::steady_clock::now() + std::chrono::milliseconds(50 << attempt);
  redials_.emplace(due, Dial{c->id, index, attempt});
  arm_timer();
}

// Sets the timerfd for whichever comes first: a re-dial, a dial's deadline,
// the next liveness check, an accepted socket's HELLO deadline, a paused
// listener's resumption; disarms it when none is pending.
void Engine::arm_timer() {
  std::optional<std::chrono::steady_clock::time_point> next;
  const auto consider = [&](std::chrono::steady_clock::time_point t) {
    if (!next || t < *next) next = t;
  };
  if (!redials_.empty()) consider(redials_.begin()->first);
  if (!dial_deadlines_.empty()) consider(dial_deadlines_.begin()->first);
  if (liveness_due_) consider(*liveness_due_);
  if (hello_due_) consider(*hello_due_);
  for (const auto& [id, l] : listeners_) {
    if (l->paused_until) consider(*l->paused_until);
  }
  itimerspec its{};
  if (next) {
    const auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(*next - std::chrono::steady_clock::now());
    const long long ns = std::max<long long>(wait.count(), 1);
    its.it_value.tv_sec = static_cast<time_t>(ns / 1000000000);
    its.it_value.tv_nsec = static_cast<long>(ns % 1000000000);
  }
  timerfd_settime(timer_.get(), 0, &its, nullptr);
}

namespace {

// Takes the entries of a schedule that are due by `now`, earliest first.
template <class Schedule>
std::vector<typename Schedule::mapped_type> take_due(Schedule& m, std::chrono::steady_clock::time_point now) {
  std::vector<typename Schedule::mapped_type> due;
  while (!m.empty() && m.begin()->first <= now) {
    due.push_back(m.begin()->second);
    m.erase(m.begin());
  }
  return due;
}

}  // namespace

void Engine::run_timers() {
  const auto now = std::chrono::steady_clock::now();
  for (const Dial& r : take_due(redials_, now)) {
    auto it = conns_.find(r.conn);
    if (it == conns_.end() || it->second->closing || it->second->finished) continue;
    Connection* c = it->second.get();
    bool live = false;
    for (auto& st : c->streams) live |= st->index == r.index && st->alive;
    if (!live && r.index < c->target_streams) dial_stream(c, r.index, r.attempt);
  }
  // Dials still unanswered (a host that drops SYNs) fail like refused ones:
  // connect() resolves with the streams that did connect, or rejects.
  for (const Dial& d : take_due(dial_deadlines_, now)) {
    auto it = conns_.find(d.conn);
    if (it == conns_.end() || it->second->finished) continue;
    for (auto& st : it->second->streams) {
      if (st->index == d.index && st->attempt == d.attempt && st->alive && st->connecting) {
        stream_failed(st.get(), ETIMEDOUT);
        break;
      }
    }
  }
  if (liveness_due_ && *liveness_due_ <= now) check_liveness(now);
  // Sockets that connected and said nothing (a scan, a stalled or hostile
  // client) would otherwise hold a descriptor each for good.
  if (hello_due_ && *hello_due_ <= now) {
    // In one pass: a flood's worth of sockets may time out together.
    const auto silent = std::stable_partition(orphans_.begin(), orphans_.end(), [&](const auto& s) { return s->hello_due > now; });
    for (auto it = silent; it != orphans_.end(); ++it) {
      drop_fd(it->get());
      graveyard_.push_back(std::move(*it));
    }
    orphans_.erase(silent, orphans_.end());
    hello_due_.reset();
    for (const auto& s : orphans_) {
      if (!hello_due_ || s->hello_due < *hello_due_) hello_due_ = s->hello_due;
    }
  }
  for (auto& [id, l] : listeners_) {
    if (!l->paused_until || *l->paused_until > now) continue;
    l->paused_until.reset();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = l.get();
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, l->fd.get(), &ev);
  }
  arm_timer();
}

// A stream whose socket has waited on the peer longer than its peer timeout,
// with no ACK from the peer in that time, has lost its peer (a host gone
// without a reset): it fails now rather than after TCP's ~15 minutes of
// retransmissions. Waiting means data in flight, or two window probes in a
// row unanswered. A live peer that stopped reading has shut its window and
// answers each probe (one outstanding at most, briefly), and however far
// apart the kernel spaces its probes (up to two minutes), it is left alone.
// Runs every eighth of the shortest timeout (100 ms to 2 s) while any
// stream has one.
void Engine::check_liveness(std::chrono::steady_clock::time_point now) {
  uint32_t shortest = 0;
  std::vector<Stream*> dead;
  for (auto& [id, c] : conns_) {
    if (c->finished) continue;
    for (auto& st : c->streams) {
      Stream* s = st.get();
      if (!s->alive || s->lane || s->connecting || !s->fd || !s->peer_timeout_ms) continue;
      shortest = shortest ? std::min(shortest, s->peer_timeout_ms) : s->peer_timeout_ms;
      tcp_info info{};
      socklen_t len = sizeof(info);
      if (getsockopt(s->fd.get(), IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
          (info.tcpi_unacked == 0 && info.tcpi_probes < 2)) {
        s->pending_since.reset();
        continue;
      }
      if (!s->pending_since) s->pending_since = now;
      const auto limit = std::chrono::milliseconds(s->peer_timeout_ms);
      if (now - *s->pending_since >= limit && std::chrono::milliseconds(info.tcpi_last_ack_recv) >= limit) {
        dead.push_back(s);
      }
    }
  }
  // Failing a stream may close its connection; the objects stay valid
  // until the end of this event batch.
  for (Stream* s : dead) {
    if (s->alive && s->conn && !s->conn->finished) stream_failed(s, ETIMEDOUT);
  }
  if (shortest == 0) {
    liveness_due_.reset();
  } else {
    liveness_due_ = now + std::clamp(std::chrono::milliseconds(shortest / 8), std::chrono::milliseconds(100),
                                     std::chrono::milliseconds(2000));
  }
}

// Takes a stream out of service without losing what it carries: nothing new
// is put on it, a RETIRE follows what is queued, then its write side shuts.
void Engine::retire(Stream* s) {
  if (s->retiring && s->retire_sent) return;
  s->retiring = true;
  s->retire_sent = true;
  push_control(s, ChunkType::kRetire, 0, 0, 0);
  flush(s);
}

// Appends a header-only chunk to the stream's output.
void Engine::push_control(Stream* s, ChunkType type, uint64_t message_id, uint64_t offset, uint64_t len) {
  OutChunk oc;
  ChunkHeader h;
  h.type = type;
  h.chunk_shift = 0;
  h.message_id = message_id;
  h.offset = offset;
  h.message_len = len;
  write_chunk_header(h, oc.header);
  s->out.push_back(oc);
  s->out_bytes += kChunkHeaderSize;
  if (s->lane) post_lane(s);
}

// Closes a stream's socket without reporting anything.
void Engine::drop_fd(Stream* s) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  if (s->epoll_events) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->fd.get(), nullptr);
  s->epoll_events = 0;
  s->fd.reset();
  s->pipe_r.reset();
  s->pipe_w.reset();
  s->piped = 0;
  s->alive = false;
  s->connecting = false;
}

// Both ends have retired `s` and it is drained: close it quietly.
void Engine::retired(Stream* s) {
  Connection* c = s->conn;
  drop_fd(s);
  emit(Event{Event::Type::kStreamRetired, c->id, 0, static_cast<uint64_t>(s->index), Status::kOk, 0, nullptr});
  maybe_finish_graceful(c);
}

void Engine::enqueue_send(uint64_t conn_id, uint64_t message_id, const uint8_t* data, size_t len, uint8_t flags) {
  auto it = conns_.find(conn_id);
  uint32_t packed = 0;
  const bool bad = len == 0 || ((flags & kFlagPacked) && (len > kPackMax || check_pack(data, len, &packed) != Status::kOk));
  if (it == conns_.end() || it->second->closing || bad) {
    emit(Event{Event::Type::kSendFailed, conn_id, 0, message_id, bad ? Status::kInvalidArgument : Status::kClosed, 0, nullptr});
    return;
  }
  Connection* conn = it->second.get();
  auto m = std::make_unique<OutMessage>();
  m->id = message_id;
  m->data = data;
  m->len = len;
  m->flags = flags;
  m->count = packed ? packed : 1;
  m->shift = conn->shift;
  m->chunks = (len + (1ull << m->shift) - 1) >> m->shift;
  m->sent_on.assign(m->chunks, -1);
  m->queued = true;
  conn->queue.push_back(m.get());
  if (!conn->unacked.insert(message_id, std::move(m))) {
    conn->queue.pop_back();  // it was just queued
    emit(Event{Event::Type::kSendFailed, conn_id, 0, message_id, Status::kInvalidArgument, 0, nullptr});
    return;
  }
  touch(conn);  // pumped once after the whole batch of commands
}

void Engine::start_connect(uint64_t id, const ConnectOptions& opts) {
  auto conn = std::make_unique<Connection>(limits_);
  conn->id = id;
  conn->client = true;
  conn->shift = std::clamp<unsigned>(opts.chunk_shift, kMinChunkShift, kMaxChunkShift);
  conn->expected_streams = std::max<uint16_t>(1, opts.streams);
  std::random_device rd;
  for (auto& b : conn->conn_id) b = static_cast<uint8_t>(rd());
  sockaddr_storage addr;
  socklen_t alen;
  if (!make_address(opts.host, opts.port, &addr, &alen)) {
    // Like every failed connection: kError, then kClosed.
    emit(Event{Event::Type::kError, id, 0, 0, Status::kInvalidArgument, EINVAL, nullptr});
    emit(Event{Event::Type::kClosed, id, 0, 0, Status::kInvalidArgument, 0, nullptr});
    return;
  }
  conn->addr = addr;
  conn->alen = alen;
  conn->sockopts = opts.socket;
  conn->connect_timeout = std::chrono::milliseconds(opts.connect_timeout_ms);
  conn->redial = opts.redial;
  if (opts.lend && lender_) conn->reasm.set_lender(lender_);
  conn->transport = opts.transport;
  conn->rdma_opts = opts.rdma;
  if (opts.transport != Transport::kTcp) {
    std::string why;
    if (!rdma_device(opts.rdma.device, opts.rdma.gid_index, &why)) {
      if (opts.transport == Transport::kRdma) {
        emit(Event{Event::Type::kError, id, 0, 0, Status::kUnavailable, 0, nullptr});
        emit(Event{Event::Type::kClosed, id, 0, 0, Status::kUnavailable, 0, nullptr});
        return;
      }
      conn->rdma = Connection::Rdma::kOff;  // auto, and no device here: TCP
    }
  } else {
    conn->rdma = Connection::Rdma::kOff;
  }
  conn->target_streams = conn->expected_streams;
  Connection* c = conn.get();
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    conns_[id] = std::move(conn);
  }
  for (uint16_t i = 0; i < c->expected_streams; i++) {
    if (dial_stream(c, i, 0)) continue;
    c->connect_resolved++;
    if (c->connect_resolved == c->expected_streams && c->connected == 0) {
      emit(Event{Event::Type::kError, id, 0, 0, Status::kConnectionLost, errno, nullptr});
      finish_close(c, Status::kConnectionLost);
      return;
    }
  }
}

void Engine::stream_ready(Stream* s) {
  Connection* c = s->conn;
  s->connecting = false;
  if (c->announced && c->closing) {
    // A re-dial that finished after close(): the peer never heard of it.
    drop_fd(s);
    return;
  }
  OutChunk hello;
  Hello h;
  h.stream_index = static_cast<uint16_t>(s->index);
  h.stream_count = c->expected_streams;
  h.chunk_shift = static_cast<uint8_t>(c->shift);
  std::memcpy(h.connection_id, c->conn_id.data(), 16);
  write_hello(h, hello.header);
  s->out.push_front(hello);
  s->out_bytes += kChunkHeaderSize;
  c->connected++;
  if (c->announced) {
    emit(Event{Event::Type::kStreamUp, c->id, 0, static_cast<uint64_t>(s->index), Status::kOk, 0, nullptr});
    pump(c);
    flush(s);
    return;
  }
  c->connect_resolved++;
  if (c->rdma == Connection::Rdma::kNone) {
    // The first stream up carries the RDMA offer, after its HELLO.
    std::vector<LaneSetup> setups;
    const size_t want = c->rdma_opts.lanes ? c->rdma_opts.lanes : c->expected_streams;
    const Status made = make_lanes(c, std::clamp<size_t>(want, 1, kMaxLanes), &setups);
    if (made == Status::kOk) {
      c->rdma = Connection::Rdma::kOffered;
      c->offer_stream = s;
      send_rdma(c, s, RdmaStep::kOffer, 0, &setups);
    } else {
      rdma_refused(c, made, 0);
      if (c->finished) return;
    }
  }
  maybe_announce(c);
  pump(c);
  flush(s);
}

// A client connection is announced once every first dial has resolved and
// an RDMA offer, if any, has its answer; when no dial succeeded, it fails
// with the last one's error.
void Engine::maybe_announce(Connection* c, int err) {
  if (c->announced || c->finished || c->connect_resolved < c->expected_streams || c->rdma == Connection::Rdma::kOffered) return;
  if (c->connected == 0) {
    emit(Event{Event::Type::kError, c->id, 0, 0, Status::kConnectionLost, err, nullptr});
    finish_close(c, Status::kConnectionLost);
    return;
  }
  c->announced = true;
  emit(Event{Event::Type::kConnected, c->id, 0, c->connected, Status::kOk, 0, nullptr});
}

void Engine::on_listener(Listener* l) {
  bool rearm = false;  // a new HELLO deadline or a pause for the timer
  for (;;) {
    const int fd = accept4(l->fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // The connection stays queued while the listener stays readable:
        // stop polling it for a while instead of spinning on the error.
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, l->fd.get(), nullptr);
        l->paused_until = std::chrono::steady_clock::now() + kAcceptPause;
        rearm = true;
      }
      break;  // EAGAIN, or a transient error: wait for the next readiness
    }
    rearm = true;
    auto s = std::make_unique<Stream>();
    s->fd.reset(fd);
    s->listener = l->id;
    s->hello_due = std::chrono::steady_clock::now() + l->handshake_timeout;
    if (!hello_due_ || s->hello_due < *hello_due_) hello_due_ = s->hello_due;
    apply_options(fd, l->accepted);
    s->splice = l->accepted.splice;
    s->peer_timeout_ms = l->accepted.peer_timeout_ms;
    if (s->peer_timeout_ms && !liveness_due_) liveness_due_ = std::chrono::steady_clock::now();
    Stream* sp = s.get();
    sp->reader = make_reader(sp, true);
    update_epoll(sp);
    orphans_.push_back(std::move(s));
  }
  if (rearm) arm_timer();
}

// Large payloads are read from the socket straight into their message.
std::unique_ptr<StreamReader> Engine::make_reader(Stream* s, bool server) {
  auto on_hello = [this, s, server](const Hello& h) { return server ? this->on_hello(s, h) : Status::kProtocol; };
  auto on_chunk = [this, s](const ChunkHeader& h, const uint8_t* p) { return this->on_chunk(s, h, p); };
  auto place = [s](const ChunkHeader& h, uint8_t** dst) {
    *dst = nullptr;
    return s->conn ? s->conn->reasm.reserve(h, dst) : Status::kProtocol;
  };
  return std::make_unique<StreamReader>(limits_, server, on_hello, on_chunk, place);
}

Status Engine::on_hello(Stream* s, const Hello& h) {
  std::array<uint8_t, 16> key;
  std::memcpy(key.data(), h.connection_id, 16);
  Connection* c;
  auto found = by_conn_id_.find(key);
  if (found != by_conn_id_.end() && conns_.count(found->second)) {
    c = conns_[found->second].get();
  } else {
    auto conn = std::make_unique<Connection>(limits_);
    conn->id = next_id_++;
    conn->listener = s->listener;
    auto l = listeners_.find(s->listener);
    if (l != listeners_.end() && l->second->lend && lender_) conn->reasm.set_lender(lender_);
    conn->transport = l != listeners_.end() ? l->second->transport : Transport::kTcp;
    if (l != listeners_.end()) conn->rdma_opts = l->second->rdma;
    conn->conn_id = key;
    conn->shift = h.chunk_shift;
    conn->expected_streams = h.stream_count;
    conn->initial_streams = h.stream_count;
    conn->announced = true;
    c = conn.get();
    by_conn_id_[key] = c->id;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      conns_[c->id] = std::move(conn);
    }
    emit(Event{Event::Type::kIncoming, c->id, s->listener, h.stream_count, Status::kOk, 0, nullptr});
  }
  s->conn = c;
  s->index = h.stream_index;
  bool earlier = false;
  for (auto& t : c->streams) earlier |= t->index == s->index;
  auto it = std::find_if(orphans_.begin(), orphans_.end(), [s](const auto& p) { return p.get() == s; });
  if (it != orphans_.end()) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    c->streams.push_back(std::move(*it));
    orphans_.erase(it);
  }
  c->connected++;
  if (earlier) {
    // A re-dial: the client has given up on the stream this one replaces,
    // even if no error reached us yet. What it carried goes again.
    std::vector<Stream*> old;
    for (auto& t : c->streams) {
      if (t.get() != s && t->index == s->index) old.push_back(t.get());
    }
    for (Stream* t : old) stream_failed(t, ECONNRESET);
    if (c->finished) return Status::kOk;
    std::lock_guard<std::mutex> lock(stats_mu_);
    for (auto t = c->streams.begin(); t != c->streams.end();) {
      if (t->get() != s && (*t)->index == s->index) {
        graveyard_.push_back(std::move(*t));
        t = c->streams.erase(t);
      } else {
        ++t;
      }
    }
  }
  if (earlier || h.stream_index >= c->initial_streams) {
    emit(Event{Event::Type::kStreamUp, c->id, 0, static_cast<uint64_t>(s->index), Status::kOk, 0, nullptr});
  }
  pump(c);
  return Status::kOk;
}

Status Engine::on_chunk(Stream* s, const ChunkHeader& h, const uint8_t* payload) {
  Connection* c = s->conn;
  if (!c) return Status::kProtocol;  // chunks before a HELLO
  switch (h.type) {
    case ChunkType::kData: {
      bool completed = false, dup = false;
      uint64_t progress = 0;
      std::vector<Received> ready;
      const auto [base, base_len] = c->reasm.partial_buffer(h.message_id);
      Status st = c->reasm.add(h, payload, &completed, &ready, &dup, &progress);
      if (st != Status::kOk) return st;
      if (completed && base) {
        // Another stream may be reading a resent copy of a chunk straight
        // into this buffer, which is the delivered message now.
        for (auto& t : c->streams) {
          if (t.get() != s && t->reader) t->reader->detach_if_within(base, base_len);
        }
      }
      for (size_t i = 0; i < ready.size(); i++) {
        MessageBuf& r = ready[i].data;
        const size_t len = r.bytes().size();
        uint32_t count = 0;
        if (ready[i].flags & kFlagPacked) {
          if (Status ps = check_pack(r.bytes().data(), len, &count); ps != Status::kOk) {
            for (size_t j = i; j < ready.size(); j++) {
              if (ready[j].data.lent) lender_->give(ready[j].data.slab);
            }
            return ps;
          }
        }
        c->messages_received += count ? count : 1;
        c->bytes_received += len;
        if (limits_.max_undelivered_bytes) undelivered_ += static_cast<int64_t>(len);
        Event e{Event::Type::kMessage, c->id, 0, ready[i].id, Status::kOk, 0, r.lent ? r.lent : new Bytes(std::move(r.own)), count};
        e.slab = r.slab;
        emit(e);
      }
      // Acknowledge a message once it is whole here, and again whenever a
      // resent chunk of it shows the sender has not heard (its ACK may have
      // gone down with a stream). ACKs and progress reports wait for the end
      // of the event batch, where consecutive ids merge into one range.
      if (completed || (dup && c->reasm.complete(h.message_id))) {
        if (!c->acks.empty() && c->acks.back().first + c->acks.back().second == h.message_id) {
          c->acks.back().second++;
        } else {
          c->acks.emplace_back(h.message_id, 1);
        }
        touch(c);
      } else if (progress) {
        c->progress.push_back(Connection::Progress{h.message_id, progress, h.message_len});
        touch(c);
      }
      return Status::kOk;
    }
    case ChunkType::kAck: {
      const uint64_t last = h.message_id + h.message_len;  // the parser bounds the range
      std::vector<OutMessage*> hit;
      c->unacked.for_range(h.message_id, last, [&](OutMessage* m) {
        if (!m->acked) hit.push_back(m);
      });
      for (OutMessage* m : hit) {
        m->acked = true;
        if (m->queued) {
          c->queue.erase(std::find(c->queue.begin(), c->queue.end(), m));
          m->queued = false;
        }
        // Resends of it not yet started are pointless now; ones half written
        // must finish (the stream's framing depends on it) and still read the
        // caller's buffer, so the message completes when the last one is out.
        if (m->inflight > 0) {
          for (auto& st : c->streams) {
            for (auto oc = st->out.begin(); oc != st->out.end();) {
              if (oc->msg == m && oc->written == 0) {
                st->out_bytes -= oc->total();
                m->inflight--;
                oc = st->out.erase(oc);
              } else {
                ++oc;
              }
            }
          }
        }
        maybe_complete(c, m);
        if (c->finished) break;
      }
      return Status::kOk;
    }
    case ChunkType::kProgress: {
      OutMessage* m = c->unacked.find(h.message_id);
      if (m && !m->acked && h.message_len == m->len) {
        Event e{Event::Type::kSendProgress, c->id, 0, h.message_id, Status::kOk, 0, nullptr};
        e.extra = h.offset;
        emit(e);
      }
      return Status::kOk;
    }
    case ChunkType::kClose:
      c->closing = true;
      c->peer_closed = true;
      maybe_finish_graceful(c);
      return Status::kOk;
    case ChunkType::kRetire:
      if (!s->retire_sent) retire(s);
      s->retiring = true;
      return Status::kOk;
    case ChunkType::kPing:
    case ChunkType::kPong:
      return Status::kOk;
    case ChunkType::kRdma:
      return s->lane ? Status::kProtocol : on_rdma(s, h, payload);
  }
  return Status::kProtocol;
}

void Engine::touch(Connection* c) {
  if (c->touched) return;
  c->touched = true;
  touched_.push_back(c);
}

// End of an event batch: queued sends go out, ACK ranges and progress
// reports with them, a few syscalls for however many messages.
void Engine::flush_touched() {
  // pump() may fail a stream and close a connection; the Connection objects
  // stay valid until the batch ends (dead_conns_).
  std::vector<Connection*> list;
  list.swap(touched_);
  for (Connection* c : list) {
    c->touched = false;
    if (c->finished) continue;
    // Progress first, the latest per message, none for a message whose ACK
    // goes out now (the sender drops reports that follow an ACK anyway).
    for (size_t i = 0; i < c->progress.size(); i++) {
      const auto& p = c->progress[i];
      if (i + 1 < c->progress.size() && c->progress[i + 1].id == p.id) continue;
      if (!c->reasm.complete(p.id)) queue_control(c, ChunkType::kProgress, p.id, p.held, p.len);
    }
    c->progress.clear();
    for (const auto& [first, count] : c->acks) queue_control(c, ChunkType::kAck, first, 0, count);
    c->acks.clear();
    pump(c);
  }
}

void Engine::queue_control(Connection* c, ChunkType type, uint64_t message_id, uint64_t offset, uint64_t len) {
  Stream* target = nullptr;
  // ACKs and progress reports take the RDMA lanes when the data does: the
  // shortest way back. One lost with its lane is made good: the sender
  // resends what that lane carried, and the resent chunks are acknowledged.
  if (c->rdma == Connection::Rdma::kActive) {
    for (size_t i = 0; i < c->lanes.size() && !target; i++) {
      Stream* l = c->lanes[(c->lane_rr + i) % c->lanes.size()].get();
      if (l->alive && l->lane_ready) target = l;
    }
  }
  for (size_t i = 0; i < c->streams.size() && !target; i++) {
    Stream* s = c->streams[(c->rr + i) % c->streams.size()].get();
    if (s->alive && !s->connecting && !s->write_shut && !s->retiring) target = s;
  }
  if (target) push_control(target, type, message_id, offset, len);
}

void Engine::pump(Connection* c) {
  if (c->finished) return;
  // Keep about two chunks queued per stream: enough to fill the socket
  // buffer, few enough that a lost stream strands little.
  const size_t high_water = 2 * ((1u << c->shift) + kChunkHeaderSize);
  // Fill the streams, then write. A stream whose socket took everything has
  // room again and no EPOLLOUT to call us back, so go round until the queue
  // is empty or every stream with data is waiting on its socket.
  // Lanes take the data while any is up; they keep up to half the peer's
  // ring each in flight (RDMA has no socket buffer to fill).
  const bool rdma = c->rdma == Connection::Rdma::kActive && c->lanes_up();
  auto& carriers = rdma ? c->lanes : c->streams;
  size_t& rr = rdma ? c->lane_rr : c->rr;
  const size_t water = rdma ? std::max<size_t>(high_water, c->rdma_opts.ring_bytes / 2) : high_water;
  for (;;) {
    while (!c->queue.empty()) {
      Stream* s = nullptr;
      for (size_t i = 0; i < carriers.size() && !s; i++) {
        Stream* t = carriers[(rr + i) % carriers.size()].get();
        if (t->alive && !t->connecting && !t->write_shut && !t->retiring && (!t->lane || t->lane_ready) && t->out_bytes < water) s = t;
      }
      if (!s) break;
      rr = (rr + 1) % carriers.size();
      OutMessage* m = c->queue.front();
      uint64_t chunk;
      if (!m->resend.empty()) {
        chunk = m->resend.front();
        m->resend.pop_front();
      } else {
        chunk = m->next_chunk++;
      }
      const uint64_t off = chunk << m->shift;
      OutChunk oc;
      ChunkHeader h;
      h.type = ChunkType::kData;
      h.chunk_shift = static_cast<uint8_t>(m->shift);
      h.flags = m->flags;
      h.message_id = m->id;
      h.offset = off;
      h.message_len = m->len;
      h.payload_len = static_cast<uint32_t>(std::min<uint64_t>(1ull << m->shift, m->len - off));
      h.payload_crc = crc32c(0, m->data + off, h.payload_len);
      write_chunk_header(h, oc.header);
      oc.msg = m;
      oc.payload = m->data + off;
      oc.len = h.payload_len;
      m->inflight++;
      s->out.push_back(oc);
      s->out_bytes += oc.total();
      m->sent_on[chunk] = s->index;
      if (m->all_sent()) {
        m->queued = false;
        c->queue.pop_front();
      }
      if (s->lane) {
        if (!m->mr_device && m->len >= kRegisterMin && device_) {
          // One registration for all the message's chunks, on every lane;
          // without it (registration failed) the channel registers each.
          rdma::Region r;
          if (device_->register_memory(const_cast<uint8_t*>(m->data), m->len, rdma::Access::kLocal, &r) == Status::kOk) {
            m->mr = r;
            m->mr_device = device_.get();
          }
        }
        post_lane(s);
        if (c->finished) return;
      }
    }
    if (rdma) {
      // Set-up steps and CLOSEs still go by TCP.
      for (auto& sp : c->streams) {
        if (sp->alive && !sp->connecting && !sp->out.empty()) flush(sp.get());
        if (c->finished) return;
      }
    }
    bool room = false;
    for (auto& sp : carriers) {
      Stream* s = sp.get();
      if (!s->alive || s->connecting) continue;
      if (!s->lane && !s->out.empty() && !flush(s)) continue;
      if (c->finished) return;
      room |= s->alive && !s->write_shut && !s->retiring && s->out_bytes < water;
    }
    if (rdma && !c->lanes_up()) {
      // The last lane failed just now and gave its chunks back: to TCP.
      pump(c);
      return;
    }
    if (c->queue.empty() || !room) return;
  }
}

// Moves the head chunk's payload into the socket by page references:
// vmsplice puts the caller's pages in the stream's pipe and splice hands them
// to TCP, so the only copy left is the receiver's (on loopback and veth as
// well, where MSG_ZEROCOPY copies). The kernel may still hold those pages
// when the peer acknowledges the message, but only for duplicates of bytes
// the peer has read, which TCP discards. Returns the bytes the socket took,
// 0 when it is full, -1 with errno set on failure.
ssize_t Engine::splice_out(Stream* s) {
  const OutChunk& head = s->out.front();
  if (!s->pipe_r) {
    int p[2];
    if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
    s->pipe_r.reset(p[0]);
    s->pipe_w.reset(p[1]);
    // Room for a whole chunk (one page more when it is not page-aligned)
    // saves syscalls; the default 64 KiB works too, so failure is fine.
    const size_t want = std::min<size_t>(size_t{1} << 20, std::max<size_t>(size_t{64} << 10, 2 * head.len));
    (void)::fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(want));
  }
  const size_t sent = head.written - kChunkHeaderSize;
  if (s->piped == 0) {
    iovec iov{const_cast<uint8_t*>(head.payload) + sent, head.len - sent};
    const ssize_t v = ::vmsplice(s->pipe_w.get(), &iov, 1, SPLICE_F_NONBLOCK);
    if (v <= 0) return v == 0 ? (errno = EIO, -1) : -1;
    s->piped = static_cast<size_t>(v);
  }
  // More to come (of this chunk, or queued after it): let TCP fill segments.
  const bool more = sent + s->piped < head.len || s->out.size() > 1;
  const ssize_t r = ::splice(s->pipe_r.get(), nullptr, s->fd.get(), nullptr, s->piped,
                             SPLICE_F_NONBLOCK | SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
  if (r < 0) return errno == EAGAIN ? 0 : -1;
  s->piped -= static_cast<size_t>(r);
  if (s->conn) s->conn->spliced_bytes += static_cast<uint64_t>(r);
  return r;
}

bool Engine::flush(Stream* s) {
  while (!s->out.empty()) {
    OutChunk& head = s->out.front();
    ssize_t r;
    int flags = MSG_NOSIGNAL;
    if (s->splice && head.written >= kChunkHeaderSize && head.len >= kSpliceMin) {
      r = splice_out(s);
      if (r == 0) break;
      if (r < 0) {
        if (errno == EINTR) continue;
        if (s->piped == 0 && errno != EPIPE && errno != ECONNRESET) {
          // No pipe, or pages vmsplice cannot take: copy from here on.
          s->splice = false;
          continue;
        }
        stream_failed(s, errno);
        return false;
      }
    } else {
      iovec iov[kMaxIov];
      size_t n = 0;
      if (s->zerocopy && head.written >= kChunkHeaderSize && head.len >= kZeroCopyMin) {
        // A large payload alone, with MSG_ZEROCOPY: the kernel reads the
        // caller's buffer until it reports the send done. Headers never go
        // this way: their memory is reused as soon as the queue moves on.
        const size_t w = head.written - kChunkHeaderSize;
        iov[n++] = iovec{const_cast<uint8_t*>(head.payload) + w, head.len - w};
        flags |= MSG_ZEROCOPY;
      }
      // Large payloads on zero-copy or splicing streams go alone, by their
      // own path; copied bytes stop at the header of one.
      const auto alone = [s](const OutChunk& c) {
        return (s->zerocopy && c.len >= kZeroCopyMin) || (s->splice && c.len >= kSpliceMin);
      };
      for (auto it = s->out.begin(); !(flags & MSG_ZEROCOPY) && it != s->out.end() && n + 2 <= kMaxIov; ++it) {
        if (alone(*it) && it->written >= kChunkHeaderSize) break;
        size_t w = it->written;
        if (w < kChunkHeaderSize) {
          iov[n++] = iovec{it->header + w, kChunkHeaderSize - w};
          w = 0;
        } else {
          w -= kChunkHeaderSize;
        }
        if (alone(*it)) {
          if (s->splice && !s->zerocopy) flags |= MSG_MORE;  // the spliced payload follows at once
          break;
        }
        if (it->len > w) iov[n++] = iovec{const_cast<uint8_t*>(it->payload) + w, it->len - w};
      }
      // sendmsg with MSG_NOSIGNAL, not writev: a peer gone away must be an
      // EPIPE for this stream, not a SIGPIPE for a host that did not ignore it.
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = n;
      r = ::sendmsg(s->fd.get(), &msg, flags);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) continue;
        if (errno == ENOBUFS && (flags & MSG_ZEROCOPY)) {
          // Out of pinnable memory (optmem): copy from here on.
          s->zerocopy = false;
          continue;
        }
        stream_failed(s, errno);
        return false;
      }
      if (flags & MSG_ZEROCOPY) {
        s->zc_wait.emplace_back(s->zc_next++, head.msg);
        if (head.msg) head.msg->zc_pending++;
        if (s->conn) s->conn->zerocopy_sends++;
      }
    }
    s->bytes_sent += static_cast<uint64_t>(r);
    s->sent_rate.add(now_ns_, static_cast<uint64_t>(r));
    if (s->conn) s->conn->sent_rate.add(now_ns_, static_cast<uint64_t>(r));
    size_t left = static_cast<size_t>(r);
    while (left > 0) {
      OutChunk& f = s->out.front();
      const size_t need = f.total() - f.written;
      if (left >= need) {
        left -= need;
        s->out_bytes -= f.total();
        OutMessage* m = f.msg;
        s->out.pop_front();
        if (m && --m->inflight == 0 && m->acked) maybe_complete(s->conn, m);
      } else {
        f.written += left;
        left = 0;
      }
    }
  }
  Connection* c = s->conn;
  if (s->out.empty() && c && ((c->close_sent && c->peer_closed) || s->retire_sent) && !s->write_shut) {
    ::shutdown(s->fd.get(), SHUT_WR);
    s->write_shut = true;
    if (s->retiring && s->eof) {
      retired(s);
      return true;
    }
  }
  update_epoll(s);
  return true;
}

bool Engine::reading_held(const Stream* s) { return s->read_paused || (s->conn && s->conn->app_paused); }

void Engine::update_epoll(Stream* s) {
  if (!s->alive || !s->fd) return;
  const bool want_out = !s->out.empty() || s->connecting;
  // After the peer's end of stream there is nothing to read (and a
  // level-triggered EPOLLIN would fire forever); only pending output counts.
  const bool want_in = !s->eof && !reading_held(s);
  const uint32_t events = (want_in ? static_cast<uint32_t>(EPOLLIN) : 0u) | (want_out ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  if (events == s->epoll_events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = s;
  if (events == 0) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->fd.get(), nullptr);
  else epoll_ctl(epoll_.get(), s->epoll_events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s->fd.get(), &ev);
  s->epoll_events = events;
}

// Reads MSG_ZEROCOPY completions off the error queue; with `all`, the
// stream is going and every outstanding send counts as done.
void Engine::zerocopy_done(Stream* s, bool all) {
  uint32_t done_to = 0;
  bool any = false;
  while (!all) {
    char control[128];
    msghdr msg{};
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    if (::recvmsg(s->fd.get(), &msg, MSG_ERRQUEUE) < 0) break;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      const bool recverr = (cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) || (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR);
      if (!recverr) continue;
      sock_extended_err ee;
      std::memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
      if (ee.ee_errno != 0 || ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
      // Sends ee_info..ee_data are done; the kernel may have copied them.
      if (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) s->conn->zerocopy_copied += ee.ee_data - ee.ee_info + 1;
      done_to = ee.ee_data;
      any = true;
    }
  }
  std::vector<OutMessage*> finished;
  while (!s->zc_wait.empty() && (all || (any && static_cast<int32_t>(s->zc_wait.front().first - done_to) <= 0))) {
    OutMessage* m = s->zc_wait.front().second;
    s->zc_wait.pop_front();
    if (m && --m->zc_pending == 0) finished.push_back(m);
  }
  for (OutMessage* m : finished) maybe_complete(s->conn, m);
}

void Engine::on_stream(Stream* s, uint32_t events) {
  if (!s->alive) return;
  if (s->zerocopy && (events & EPOLLERR) && !s->connecting) {
    // EPOLLERR also means "completions queued": drain them, and it is a
    // failure only if the socket has a real error too.
    zerocopy_done(s, false);
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == 0) events &= ~static_cast<uint32_t>(EPOLLERR);
    else {
      stream_failed(s, err);
      return;
    }
    if (!s->alive) return;
  }
  if (s->connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) stream_failed(s, err);
    else if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) stream_ready(s);
    return;
  }
  if (events & EPOLLIN) {
    static thread_local std::vector<uint8_t> buf(kReadBuffer);
    for (;;) {
      const auto limit = static_cast<int64_t>(limits_.max_undelivered_bytes);
      if (limit && undelivered_.load() > limit) {
        // The application is behind: stop reading; TCP flow control does the rest.
        s->read_paused = true;
        reading_paused_ = true;
        update_epoll(s);
        break;
      }
      if (reading_held(s)) {  // joined a paused connection with its HELLO
        update_epoll(s);
        break;
      }
      // A payload being placed is read straight into its message, and what
      // follows it into the buffer, in one syscall.
      iovec iov[2];
      int niov = 0;
      uint8_t* place = nullptr;
      size_t place_len = 0;
      if (s->reader->direct_window(&place, &place_len)) iov[niov++] = iovec{place, place_len};
      // With a payload being placed, take only the next header after it, so
      // the payload after that can be placed too.
      const size_t need = place_len ? kChunkHeaderSize : s->reader->header_need();
      iov[niov++] = iovec{buf.data(), need ? need : buf.size()};
      const ssize_t r = ::readv(s->fd.get(), iov, niov);
      if (r > 0) {
        s->bytes_received += static_cast<uint64_t>(r);
        s->received_rate.add(now_ns_, static_cast<uint64_t>(r));
        if (s->conn) s->conn->received_rate.add(now_ns_, static_cast<uint64_t>(r));
        const size_t placed = std::min(static_cast<size_t>(r), place_len);
        Status st = placed ? s->reader->direct_filled(placed) : Status::kOk;
        if (!s->alive) return;
        if (st == Status::kOk && static_cast<size_t>(r) > placed) st = s->reader->feed(buf.data(), static_cast<size_t>(r) - placed);
        if (st != Status::kOk) {
          // A peer that breaks the protocol loses the whole connection.
          if (s->conn) {
            finish_close(s->conn, st == Status::kLimitExceeded ? st : Status::kProtocol);
          } else {
            stream_failed(s, EPROTO);
          }
          return;
        }
        if (!s->alive) return;
        // Read on until EAGAIN, even after a short read: when the peer's
        // FIN has arrived too, this is the only EPOLLIN that reports it.
      } else if (r == 0) {
        s->eof = true;
        Connection* c = s->conn;
        if (!c) {
          stream_failed(s, 0);
          return;
        }
        if (s->retiring) {
          // The peer retired this stream; once ours is out too, it is done.
          update_epoll(s);
          if (!s->retire_sent) retire(s);
          if (s->alive && s->write_shut) retired(s);
        } else if (c->closing && c->peer_closed) {
          // Clean end: the peer sent CLOSE and finished writing. (Closing
          // here without the peer's CLOSE, its end is the peer going away:
          // waiting for that CLOSE would keep close() from ever finishing.)
          update_epoll(s);
          maybe_finish_graceful(c);
        } else {
          stream_failed(s, ECONNRESET);
        }
        return;
      } else {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) continue;
        stream_failed(s, errno);
        return;
      }
    }
  }
  if (events & EPOLLOUT) {
    if (!flush(s)) return;
    if (s->conn) pump(s->conn);
  }
  // A hang-up after both ends shut down is the normal end of a closing
  // stream (its EOF was read above); only a pending socket error, or a
  // hang-up on a stream still expected to carry data, is a failure.
  if ((events & (EPOLLERR | EPOLLHUP)) && s->alive && !s->eof && !reading_held(s)) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    stream_failed(s, err ? err : ECONNRESET);
  }
}

void Engine::stream_failed(Stream* s, int err) {
  if (!s->alive) return;
  Connection* c = s->conn;
  const bool was_connecting = s->connecting;
  drop_fd(s);
  std::vector<OutMessage*> finished;
  for (auto& oc : s->out) {
    if (oc.msg && --oc.msg->inflight == 0 && oc.msg->acked) finished.push_back(oc.msg);
  }
  // A dead socket reports no more completions; the kernel only ever reads
  // those pages, and what it would still send there is gone with it.
  for (auto& [seq, m] : s->zc_wait) {
    if (m && --m->zc_pending == 0 && m->acked && m->inflight == 0) finished.push_back(m);
  }
  s->zc_wait.clear();
  s->out.clear();
  s->out_bytes = 0;
  for (OutMessage* m : finished) maybe_complete(c, m);
  if (c && c->finished) return;
  if (!c) {
    auto it = std::find_if(orphans_.begin(), orphans_.end(), [s](const auto& p) { return p.get() == s; });
    if (it != orphans_.end()) {
      graveyard_.push_back(std::move(*it));
      orphans_.erase(it);
    }
    return;
  }
  if (was_connecting && c->announced) {
    schedule_redial(c, s->index, s->attempt + 1);  // a re-dial or an added stream that did not connect
    return;
  }
  if (was_connecting) {
    c->connect_resolved++;
    maybe_announce(c, err);
    return;
  }
  if (c->rdma == Connection::Rdma::kOffered && c->offer_stream == s) {
    // The offer went down with its stream: no answer will come.
    c->offer_stream = nullptr;
    rdma_refused(c, Status::kUnavailable, err);
    if (c->finished) return;
  }
  if (c->live_streams() == 0) {
    finish_close(c, c->closing && c->unacked.empty() ? Status::kOk : Status::kConnectionLost, err);
    return;
  }
  requeue(c, s->index);
  emit(Event{Event::Type::kStreamLost, c->id, 0, static_cast<uint64_t>(s->index), Status::kOk, err, nullptr});
  if (c->client && !s->retiring) schedule_redial(c, s->index, 0);
  pump(c);
}

// Everything stream (or lane) `index` carried for unacknowledged messages
// goes again on the others; the receiver drops whatever it already had.
void Engine::requeue(Connection* c, int32_t index) {
  c->unacked.for_each([&](OutMessage* m) {
    if (m->acked) return;
    for (uint64_t k = 0; k < m->next_chunk; k++) {
      if (m->sent_on[k] == index) {
        m->resend.push_back(k);
        m->sent_on[k] = -1;
        c->chunks_resent++;
      }
    }
    if (!m->resend.empty() && !m->queued) {
      m->queued = true;
      c->queue.push_front(m);
    }
  });
}

// ---- RDMA lanes ----------------------------------------------------------

namespace {

constexpr uint64_t kAllLanes = 0xffff;  // DOWN: every lane

}  // namespace

// The engine's device, opened the first time a connection wants RDMA; its
// completion channel joins the epoll set, so completions are handled on
// the I/O thread like socket readiness.
rdma::Device* Engine::rdma_device(const std::string& name, int gid_index, std::string* why) {
  if (device_) return device_.get();
  if (!device_tried_) {
    device_tried_ = true;
    if (!verbs_) {
      own_verbs_ = rdma::open_ibverbs(&device_error_);
      verbs_ = own_verbs_.get();
    }
    if (verbs_) {
      std::string pick;
      for (const auto& d : verbs_->devices()) {
        if (!name.empty() && d.name != name) continue;
        for (const auto& p : d.ports) {
          if (p.state == "active" && pick.empty()) pick = d.name;
        }
      }
      if (pick.empty()) {
        device_error_ = name.empty() ? "no RDMA device with an active port" : "no RDMA device " + name + " with an active port";
      } else {
        Status st;
        device_ = verbs_->open(pick, gid_index, &st);
        if (!device_) device_error_ = "cannot open RDMA device " + pick + ": " + status_name(st);
      }
    }
    if (device_) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = &rdma_tag;
      epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, device_->event_fd(), &ev);
    }
  }
  if (why) *why = device_error_;
  return device_.get();
}

// kOk, kUnavailable (no device, or no room left in its completion queue)
// or kDeviceError.
Status Engine::make_lanes(Connection* c, size_t n, std::vector<LaneSetup>* setups) {
  rdma::Device* dev = rdma_device(c->rdma_opts.device, c->rdma_opts.gid_index, nullptr);
  if (!dev) return Status::kUnavailable;
  rdma::ChannelOptions o;
  o.ring_bytes = c->rdma_opts.ring_bytes;
  o.max_piece = std::min<uint32_t>(o.max_piece, o.ring_bytes / 2);
  // Every lane of the engine shares the device's completion queue: more
  // lanes than it has room for and it would overrun, so this connection
  // stays on TCP instead (auto) or fails (rdma).
  if ((lanes_by_tag_.size() + n) * rdma::Channel::cq_entries(o) > dev->cq_capacity()) return Status::kUnavailable;
  setups->clear();
  for (size_t i = 0; i < n; i++) {
    auto l = std::make_unique<Stream>();
    l->lane = true;
    l->conn = c;
    l->index = kLaneBase + static_cast<int32_t>(i);
    do {
      l->tag = next_tag_;
      next_tag_ = next_tag_ + 1 < (1u << 24) ? next_tag_ + 1 : 1;
    } while (lanes_by_tag_.count(l->tag));
    Status st;
    l->channel = std::make_unique<rdma::Channel>(dev, l->tag, o, &st);
    if (st != Status::kOk) {
      drop_lanes(c);
      return Status::kDeviceError;
    }
    Stream* lp = l.get();
    l->channel->set_on_message([this, lp](const uint8_t* h, size_t hl, const uint8_t* b, size_t len) { on_lane_message(lp, h, hl, b, len); });
    lanes_by_tag_[l->tag] = lp;
    setups->push_back(l->channel->local());
    std::lock_guard<std::mutex> lock(stats_mu_);
    c->lanes.push_back(std::move(l));
  }
  c->note_lanes();
  return Status::kOk;
}

// A client's RDMA set-up did not work out: `rdma` connections fail with
// `why`, `auto` ones go on over TCP.
void Engine::rdma_refused(Connection* c, Status why, int err) {
  drop_lanes(c);
  c->rdma = Connection::Rdma::kOff;
  if (c->transport == Transport::kRdma) {
    emit(Event{Event::Type::kError, c->id, 0, 0, why, err, nullptr});
    finish_close(c, why);
    return;
  }
  maybe_announce(c);
}

// Takes lane `l` off the device: its queue pair goes now, so the adapter
// reads nothing of the caller's after this, unless a completion of this
// lane is being handled: then at the end of the batch.
void Engine::close_lane(Stream* l) {
  lanes_by_tag_.erase(l->tag);
  l->alive = false;
  l->lane_ready = false;
  if (l == current_lane_) dead_channels_.push_back(std::move(l->channel));
  else l->channel.reset();
}

// Lanes that never carried data (set-up refused or failed).
void Engine::drop_lanes(Connection* c) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  for (auto& l : c->lanes) {
    close_lane(l.get());
    graveyard_.push_back(std::move(l));
  }
  c->lanes.clear();
  c->note_lanes();
}

// A set-up step over TCP, on `via` or any live stream; it goes out with the
// rest of the batch.
void Engine::send_rdma(Connection* c, Stream* via, RdmaStep step, uint64_t arg, const std::vector<LaneSetup>* setups) {
  Stream* s = via && via->alive && !via->connecting && !via->write_shut ? via : nullptr;
  for (size_t i = 0; i < c->streams.size() && !s; i++) {
    Stream* t = c->streams[i].get();
    if (t->alive && !t->connecting && !t->write_shut) s = t;
  }
  if (!s) return;
  OutChunk oc;
  ChunkHeader h;
  h.type = ChunkType::kRdma;
  h.chunk_shift = 0;
  h.message_id = arg;
  h.offset = static_cast<uint64_t>(step);
  h.message_len = 0;
  if (setups) {
    write_lane_setups(*setups, &c->rdma_payload);
    h.payload_len = static_cast<uint32_t>(c->rdma_payload.size());
    h.payload_crc = crc32c(0, c->rdma_payload.data(), c->rdma_payload.size());
    oc.payload = c->rdma_payload.data();
    oc.len = h.payload_len;
  }
  write_chunk_header(h, oc.header);
  s->out.push_back(oc);
  s->out_bytes += oc.total();
  touch(c);
}

Status Engine::on_rdma(Stream* s, const ChunkHeader& h, const uint8_t* payload) {
  const Status st = rdma_step(s, h, payload);
  s->conn->note_lanes();
  return st;
}

Status Engine::rdma_step(Stream* s, const ChunkHeader& h, const uint8_t* payload) {
  Connection* c = s->conn;
  const auto step = static_cast<RdmaStep>(h.offset);
  const bool records = step == RdmaStep::kOffer || step == RdmaStep::kAccept;
  if (records != (h.payload_len > 0)) return Status::kProtocol;
  std::vector<LaneSetup> peer;
  if (records && parse_lane_setups(payload, h.payload_len, &peer) != Status::kOk) return Status::kProtocol;
  using R = Connection::Rdma;
  switch (step) {
    case RdmaStep::kOffer: {
      if (c->client || c->rdma != R::kNone) return Status::kProtocol;
      c->rdma = R::kOff;
      if (c->transport == Transport::kTcp) {
        send_rdma(c, s, RdmaStep::kDecline, static_cast<uint64_t>(RdmaDecline::kRefused), nullptr);
        return Status::kOk;
      }
      std::vector<LaneSetup> mine;
      const Status made = make_lanes(c, peer.size(), &mine);
      bool ok = made == Status::kOk;
      for (size_t i = 0; ok && i < peer.size(); i++) ok = c->lanes[i]->channel->connect(peer[i]) == Status::kOk;
      if (!ok) {
        drop_lanes(c);
        const RdmaDecline why = !device_ ? RdmaDecline::kNoDevice : made == Status::kUnavailable ? RdmaDecline::kRefused : RdmaDecline::kDeviceError;
        send_rdma(c, s, RdmaStep::kDecline, static_cast<uint64_t>(why), nullptr);
        return Status::kOk;
      }
      c->rdma = R::kAccepted;
      send_rdma(c, s, RdmaStep::kAccept, 0, &mine);
      return Status::kOk;
    }
    case RdmaStep::kAccept: {
      if (!c->client || c->rdma != R::kOffered || peer.size() != c->lanes.size()) return Status::kProtocol;
      c->offer_stream = nullptr;
      bool ok = true;
      for (size_t i = 0; ok && i < peer.size(); i++) ok = c->lanes[i]->channel->connect(peer[i]) == Status::kOk;
      if (!ok) {
        send_rdma(c, s, RdmaStep::kDown, kAllLanes, nullptr);
        rdma_refused(c, Status::kDeviceError, 0);
        return Status::kOk;
      }
      for (auto& l : c->lanes) l->lane_ready = true;
      c->rdma = R::kActive;
      send_rdma(c, s, RdmaStep::kReady, 0, nullptr);
      emit(Event{Event::Type::kTransport, c->id, 0, 1, Status::kOk, 0, nullptr});
      maybe_announce(c);
      touch(c);
      return Status::kOk;
    }
    case RdmaStep::kDecline: {
      if (!c->client || c->rdma != R::kOffered || h.message_id < static_cast<uint64_t>(RdmaDecline::kNoDevice) ||
          h.message_id > static_cast<uint64_t>(RdmaDecline::kDeviceError)) {
        return Status::kProtocol;
      }
      c->offer_stream = nullptr;
      rdma_refused(c, Status::kUnavailable, 0);
      return Status::kOk;
    }
    case RdmaStep::kReady:
      if (c->client || c->rdma != R::kAccepted) return Status::kProtocol;
      for (auto& l : c->lanes) l->lane_ready = l->alive;
      c->rdma = R::kActive;
      emit(Event{Event::Type::kTransport, c->id, 0, 1, Status::kOk, 0, nullptr});
      touch(c);
      return Status::kOk;
    case RdmaStep::kDown:
      // The peer lost a lane (or all): stop using ours at once. Late or
      // repeated notices are harmless.
      if (c->rdma == R::kAccepted && h.message_id == kAllLanes) {
        drop_lanes(c);
        c->rdma = R::kOff;
        return Status::kOk;
      }
      for (size_t i = 0; i < c->lanes.size(); i++) {
        if ((h.message_id == kAllLanes || h.message_id == i) && c->lanes[i]->alive) lane_failed(c->lanes[i].get(), false, Status::kDeviceError);
        if (c->finished) break;
      }
      return Status::kOk;
  }
  return Status::kProtocol;
}

void Engine::on_rdma_completions() {
  if (!device_) return;
  rdma::Completion cs[64];
  std::vector<Stream*> moved;
  for (size_t n; (n = device_->poll(cs, 64)) > 0;) {
    for (size_t i = 0; i < n; i++) {
      auto it = lanes_by_tag_.find(rdma::Channel::channel_of(cs[i].wr_id));
      if (it == lanes_by_tag_.end()) continue;  // a lane gone since it was posted
      Stream* l = it->second;
      current_lane_ = l;
      l->channel->on_completion(cs[i]);
      current_lane_ = nullptr;
      if (std::find(moved.begin(), moved.end(), l) == moved.end()) moved.push_back(l);
    }
  }
  for (Stream* l : moved) lane_progress(l);
}

// After completions: chunks the adapter is done with, or a failed lane.
void Engine::lane_progress(Stream* l) {
  if (!l->alive || !l->channel) return;
  Connection* c = l->conn;
  if (l->channel->failed()) {
    lane_failed(l, true, Status::kDeviceError);
    return;
  }
  const auto done = l->channel->take_done();
  std::vector<OutMessage*> finished;
  for (size_t i = 0; i < done.size() && !l->out.empty(); i++) {
    OutChunk& f = l->out.front();
    l->out_bytes -= f.total();
    if (f.msg && --f.msg->inflight == 0 && f.msg->acked) finished.push_back(f.msg);
    l->out.pop_front();
    l->lane_posted--;
  }
  for (OutMessage* m : finished) {
    maybe_complete(c, m);
    if (c->finished) return;
  }
  if (!done.empty()) touch(c);  // room on the lane: pump at the end of the batch
}

void Engine::on_lane_message(Stream* l, const uint8_t* head, size_t head_len, const uint8_t* body, size_t len) {
  Connection* c = l->conn;
  if (!l->alive || c->finished) return;
  l->bytes_received += head_len + len;
  c->lane_bytes_received += head_len + len;
  c->received_rate.add(now_ns_, head_len + len);
  ChunkHeader h;
  Status st = head_len == kChunkHeaderSize ? parse_chunk_header(head, limits_, &h) : Status::kProtocol;
  if (st == Status::kOk && (h.payload_len != len || (h.type != ChunkType::kData && h.type != ChunkType::kAck && h.type != ChunkType::kProgress))) {
    st = Status::kProtocol;
  }
  if (st == Status::kOk && (len ? crc32c(0, body, len) : 0u) != h.payload_crc) st = Status::kPayloadChecksum;
  if (st == Status::kOk) st = on_chunk(l, h, body);
  if (st != Status::kOk) {
    finish_close(c, st == Status::kLimitExceeded ? st : Status::kProtocol);
    return;
  }
  const auto limit = static_cast<int64_t>(limits_.max_undelivered_bytes);
  if (limit && undelivered_.load() > limit && !l->read_paused) {
    // The application is behind: the peer gets no more credits on this lane.
    l->read_paused = true;
    reading_paused_ = true;
    l->channel->hold_credits(true);
  }
}

// Hands the lane's new chunks to its channel. They stay in `out` until the
// channel reports them done: the adapter may read them until then.
void Engine::post_lane(Stream* l) {
  Connection* c = l->conn;
  while (l->alive && l->lane_posted < l->out.size()) {
    OutChunk& oc = l->out[l->lane_posted++];
    const rdma::Region* mr = oc.msg && oc.msg->mr_device ? &oc.msg->mr : nullptr;
    oc.written = oc.total();  // ACKs must not drop it: it is the channel's now
    l->channel->send(l->lane_next_id++, oc.header, kChunkHeaderSize, oc.payload, oc.len, mr);
    l->bytes_sent += oc.total();
    c->lane_bytes_sent += oc.total();
    c->sent_rate.add(now_ns_, oc.total());
  }
  if (l->alive && l->channel->failed()) lane_failed(l, true, Status::kDeviceError);
}

// Takes a lane out of service; what it carried for unacknowledged messages
// goes again on the other lanes or, with none left, on TCP.
void Engine::lane_failed(Stream* l, bool tell_peer, Status why) {
  if (!l->alive) return;
  Connection* c = l->conn;
  close_lane(l);  // first: the adapter reads none of these chunks after
  std::vector<OutMessage*> finished;
  for (auto& oc : l->out) {
    if (oc.msg && --oc.msg->inflight == 0 && oc.msg->acked) finished.push_back(oc.msg);
  }
  l->out.clear();
  l->out_bytes = 0;
  l->lane_posted = 0;
  for (OutMessage* m : finished) {
    maybe_complete(c, m);
    if (c->finished) return;
  }
  requeue(c, l->index);
  // ACKs that went down with the lane are gone too, and a message whose
  // chunks all went by other lanes will not be resent to draw another:
  // acknowledge again everything complete here (the sender ignores what it
  // no longer waits for).
  const uint64_t next = c->reasm.next_id();
  if (next > 0) {
    const uint64_t first = next > kMaxAckRange ? next - kMaxAckRange : 0;
    c->acks.emplace_back(first, next - first);
  }
  for (uint64_t id : c->reasm.held_ids()) c->acks.emplace_back(id, 1);
  if (tell_peer) send_rdma(c, nullptr, RdmaStep::kDown, static_cast<uint64_t>(l->index - kLaneBase), nullptr);
  if (c->rdma == Connection::Rdma::kActive && !c->lanes_up()) {
    c->rdma = Connection::Rdma::kOff;
    emit(Event{Event::Type::kTransport, c->id, 0, 0, why, 0, nullptr});
  }
  c->note_lanes();
  touch(c);
}

void Engine::maybe_complete(Connection* c, OutMessage* m) {
  if (!c || c->finished || !m->acked || m->inflight > 0 || m->zc_pending > 0) return;
  c->messages_sent += m->count;
  c->bytes_sent += m->len;
  emit(Event{Event::Type::kSendDone, c->id, 0, m->id, Status::kOk, 0, nullptr});
  c->unacked.erase(m->id);
  maybe_finish_graceful(c);
}

void Engine::maybe_finish_graceful(Connection* c) {
  if (c->finished || !c->closing || !c->unacked.empty()) return;
  if (!c->close_sent) {
    c->close_sent = true;
    for (auto& s : c->streams) {
      if (!s->alive || s->connecting || s->retiring) continue;
      push_control(s.get(), ChunkType::kClose, 0, 0, 0);
      flush(s.get());
    }
  } else if (c->peer_closed) {
    for (auto& s : c->streams) {
      if (s->alive && !s->connecting && !s->write_shut) flush(s.get());  // shuts the write side
    }
  }
  if (c->finished) return;
  // Done when every stream has both sent its CLOSE and seen the peer's end.
  for (auto& s : c->streams) {
    if (s->alive && !s->connecting && !(s->eof && s->write_shut)) return;
  }
  finish_close(c, Status::kOk);
}

void Engine::finish_close(Connection* c, Status status, int err) {
  if (c->finished) return;
  c->finished = true;
  // It is freed at the end of this round; touched_ may outlive that.
  if (c->touched) touched_.erase(std::remove(touched_.begin(), touched_.end(), c), touched_.end());
  c->touched = false;
  for (auto& l : c->lanes) close_lane(l.get());
  c->note_lanes();
  c->unacked.for_each([&](OutMessage* m) {
    if (m->acked) {
      emit(Event{Event::Type::kSendDone, c->id, 0, m->id, Status::kOk, 0, nullptr});
      return;
    }
    const Status why = status == Status::kOk ? Status::kClosed : status;
    emit(Event{Event::Type::kSendFailed, c->id, 0, m->id, why, err, nullptr});
  });
  c->unacked.clear();
  c->queue.clear();
  emit(Event{Event::Type::kClosed, c->id, 0, 0, status, status == Status::kOk ? 0 : err, nullptr});
  std::unique_ptr<Connection> dead;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    for (auto& s : c->streams) {
      s->zc_wait.clear();  // its messages are freed below
      if (s->fd && s->epoll_events) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->fd.get(), nullptr);
      s->epoll_events = 0;
      s->fd.reset();
      s->alive = false;
    }
    auto it = conns_.find(c->id);
    if (it != conns_.end()) {
      dead = std::move(it->second);
      conns_.erase(it);
    }
  }
  if (!c->client) by_conn_id_.erase(c->conn_id);
  // Its streams may still have events in the current epoll batch.
  if (dead) dead_conns_.push_back(std::move(dead));
}

}  // namespace dwcp::transport::tcp
