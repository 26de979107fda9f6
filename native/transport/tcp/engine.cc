#include "transport/tcp/engine.h"

#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "util/crc32c.h"

namespace dwcp::transport::tcp {
namespace {

constexpr size_t kReadBuffer = 256 * 1024;
constexpr size_t kMaxIov = 64;

enum class HandleKind : uint8_t { kStream, kListener };

}  // namespace

// A message being sent, by chunks. It stays until the peer acknowledges it.
struct Engine::OutMessage {
  uint64_t id = 0;
  const uint8_t* data = nullptr;
  uint64_t len = 0;
  unsigned shift = 18;
  uint64_t chunks = 0;
  uint64_t next_chunk = 0;         // first chunk never sent
  std::deque<uint64_t> resend;     // chunks to send again after a stream loss
  std::vector<int32_t> sent_on;    // stream index each chunk last went out on
  bool queued = false;             // in Connection::queue
  bool acked = false;              // the peer holds it; done once no chunk is in flight
  int inflight = 0;                // chunks in stream queues (they point into `data`)
  bool all_sent() const { return next_chunk == chunks && resend.empty(); }
};

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
  bool connecting = false;
  bool alive = true;
  bool eof = false;
  bool write_shut = false;
  bool read_paused = false;  // receiver back-pressure
  uint32_t epoll_events = 0;  // what the fd is registered for (0: not registered)
  std::unique_ptr<StreamReader> reader;
  std::deque<OutChunk> out;
  size_t out_bytes = 0;
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> bytes_received{0};
};

struct Engine::Listener {
  HandleKind kind = HandleKind::kListener;
  uint64_t id = 0;
  Fd fd;
};

struct Engine::Connection {
  uint64_t id = 0;
  bool client = false;
  uint64_t listener = 0;
  std::array<uint8_t, 16> conn_id{};
  unsigned shift = 18;
  uint16_t expected_streams = 0;
  unsigned connect_resolved = 0;  // client: streams that connected or failed
  unsigned connected = 0;
  bool announced = false;
  bool closing = false;      // close() called, or the peer sent CLOSE
  bool close_sent = false;
  bool finished = false;     // closed and reported; kept only until the epoll batch ends
  std::vector<std::unique_ptr<Stream>> streams;
  std::deque<OutMessage*> queue;
  std::map<uint64_t, std::unique_ptr<OutMessage>> unacked;
  Reassembler reasm;
  size_t rr = 0;
  std::atomic<uint64_t> messages_sent{0}, messages_received{0}, bytes_sent{0}, bytes_received{0}, chunks_resent{0};

  explicit Connection(Limits limits) : reasm(limits) {}
  size_t live_streams() const {
    size_t n = 0;
    for (const auto& s : streams) n += s->alive && !s->connecting;
    return n;
  }
};

Engine::Engine(EventSink* sink, Limits limits) : sink_(sink), limits_(limits) {
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  wake_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  stop_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void Engine::post(Command&& c) {
  // The I/O thread never waits on the owner, so this wait always ends.
  while (!commands_.try_push(std::move(c))) std::this_thread::yield();
  const uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

uint64_t Engine::listen(const std::string& host, uint16_t port) {
  Command c;
  c.type = Command::Type::kListen;
  c.id = next_id_++;
  c.host = host;
  c.port = port;
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

void Engine::close(uint64_t id) {
  Command c;
  c.type = Command::Type::kClose;
  c.id = id;
  post(std::move(c));
}

void Engine::destroy(uint64_t id) {
  Command c;
  c.type = Command::Type::kDestroy;
  c.id = id;
  post(std::move(c));
}

void Engine::delivered(uint64_t bytes) {
  const int64_t before = undelivered_.fetch_sub(static_cast<int64_t>(bytes));
  const auto limit = static_cast<int64_t>(limits_.max_undelivered_bytes);
  if (limit && before > limit && before - static_cast<int64_t>(bytes) <= limit) {
    Command c;
    c.type = Command::Type::kResume;
    post(std::move(c));
  }
}

void Engine::kill_stream(uint64_t conn, uint32_t index) {
  Command c;
  c.type = Command::Type::kKillStream;
  c.id = conn;
  c.message_id = index;
  post(std::move(c));
}

bool Engine::stats(uint64_t conn, ConnectionStats* out) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  auto it = conns_.find(conn);
  if (it == conns_.end()) return false;
  Connection& c = *it->second;
  out->messages_sent = c.messages_sent.load();
  out->messages_received = c.messages_received.load();
  out->bytes_sent = c.bytes_sent.load();
  out->bytes_received = c.bytes_received.load();
  out->chunks_resent = c.chunks_resent.load();
  out->streams.clear();
  for (const auto& s : c.streams) {
    StreamStats st;
    st.bytes_sent = s->bytes_sent.load();
    st.bytes_received = s->bytes_received.load();
    st.alive = s->alive && !s->connecting;
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
    }
    out->streams.push_back(std::move(st));
  }
  return true;
}

void Engine::run() {
  epoll_event evs[64];
  while (!stop_.load(std::memory_order_acquire)) {
    const int n = epoll_wait(epoll_.get(), evs, 64, -1);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      void* p = evs[i].data.ptr;
      if (!p) {
        uint64_t v;
        (void)!::read(wake_.get(), &v, sizeof(v));
        drain_commands();
      } else if (*static_cast<HandleKind*>(p) == HandleKind::kListener) {
        on_listener(static_cast<Listener*>(p));
      } else {
        on_stream(static_cast<Stream*>(p), evs[i].events);
      }
    }
    if (!pending_.empty()) {
      sink_->deliver(pending_);
      pending_.clear();
    }
    graveyard_.clear();
    dead_conns_.clear();
  }
  // Shutting down: close everything without reporting (the sink may be going).
  std::lock_guard<std::mutex> lock(stats_mu_);
  conns_.clear();
  listeners_.clear();
  orphans_.clear();
  graveyard_.clear();
  dead_conns_.clear();
  Command c;
  while (commands_.try_pop(c)) {
  }
}

void Engine::drain_commands() {
  Command c;
  while (commands_.try_pop(c)) handle(c);
}

void Engine::handle(Command& c) {
  switch (c.type) {
    case Command::Type::kListen: {
      auto l = std::make_unique<Listener>();
      l->id = c.id;
      int err = 0;
      uint16_t port = c.port;
      l->fd = tcp_listen(c.host, &port, 1024, &err);
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
    case Command::Type::kSend: {
      auto it = conns_.find(c.id);
      if (it == conns_.end() || it->second->closing || c.len == 0) {
        emit(Event{Event::Type::kSendFailed, c.id, 0, c.message_id,
                   c.len == 0 ? Status::kInvalidArgument : Status::kClosed, 0, nullptr});
        return;
      }
      Connection* conn = it->second.get();
      auto m = std::make_unique<OutMessage>();
      m->id = c.message_id;
      m->data = c.data;
      m->len = c.len;
      m->shift = conn->shift;
      m->chunks = (c.len + (1ull << m->shift) - 1) >> m->shift;
      m->sent_on.assign(m->chunks, -1);
      m->queued = true;
      conn->queue.push_back(m.get());
      conn->unacked[c.message_id] = std::move(m);
      pump(conn);
      return;
    }
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
      }
      return;
    }
    case Command::Type::kNone:
      return;
  }
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
  Connection* c = conn.get();
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    conns_[id] = std::move(conn);
  }
  for (uint16_t i = 0; i < c->expected_streams; i++) {
    auto s = std::make_unique<Stream>();
    s->conn = c;
    s->index = i;
    int err = 0;
    s->fd = tcp_socket(addr.ss_family, opts.socket, &err);
    if (s->fd && ::connect(s->fd.get(), reinterpret_cast<sockaddr*>(&addr), alen) != 0 && errno != EINPROGRESS) {
      err = errno;
      s->fd.reset();
    }
    Stream* sp = s.get();
    c->streams.push_back(std::move(s));
    if (!sp->fd) {
      sp->alive = false;
      c->connect_resolved++;
      if (c->connect_resolved == c->expected_streams && c->connected == 0) {
        emit(Event{Event::Type::kError, id, 0, 0, Status::kConnectionLost, err, nullptr});
        finish_close(c, Status::kConnectionLost);
        return;
      }
      continue;
    }
    sp->connecting = true;
    sp->reader = std::make_unique<StreamReader>(
        limits_, false, [](const Hello&) { return Status::kProtocol; },
        [this, sp](const ChunkHeader& h, const uint8_t* p) { return on_chunk(sp, h, p); });
    update_epoll(sp);
  }
}

void Engine::stream_ready(Stream* s) {
  Connection* c = s->conn;
  s->connecting = false;
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
  c->connect_resolved++;
  if (!c->announced && c->connect_resolved == c->expected_streams) {
    c->announced = true;
    emit(Event{Event::Type::kConnected, c->id, 0, c->connected, Status::kOk, 0, nullptr});
  }
  pump(c);
  flush(s);
}

void Engine::on_listener(Listener* l) {
  for (;;) {
    const int fd = accept4(l->fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or a transient error: wait for the next readiness
    auto s = std::make_unique<Stream>();
    s->fd.reset(fd);
    s->listener = l->id;
    apply_options(fd, SocketOptions{});
    Stream* sp = s.get();
    sp->reader = std::make_unique<StreamReader>(
        limits_, true, [this, sp](const Hello& h) { return on_hello(sp, h); },
        [this, sp](const ChunkHeader& h, const uint8_t* p) { return on_chunk(sp, h, p); });
    update_epoll(sp);
    orphans_.push_back(std::move(s));
  }
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
    conn->conn_id = key;
    conn->shift = h.chunk_shift;
    conn->expected_streams = h.stream_count;
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
  auto it = std::find_if(orphans_.begin(), orphans_.end(), [s](const auto& p) { return p.get() == s; });
  if (it != orphans_.end()) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    c->streams.push_back(std::move(*it));
    orphans_.erase(it);
  }
  c->connected++;
  pump(c);
  return Status::kOk;
}

Status Engine::on_chunk(Stream* s, const ChunkHeader& h, const uint8_t* payload) {
  Connection* c = s->conn;
  if (!c) return Status::kProtocol;  // chunks before a HELLO
  switch (h.type) {
    case ChunkType::kData: {
      bool completed = false, dup = false;
      std::vector<std::pair<uint64_t, std::vector<uint8_t>>> ready;
      Status st = c->reasm.add(h, payload, &completed, &ready, &dup);
      if (st != Status::kOk) return st;
      for (auto& [id, msg] : ready) {
        c->messages_received++;
        c->bytes_received += msg.size();
        if (limits_.max_undelivered_bytes) undelivered_ += static_cast<int64_t>(msg.size());
        emit(Event{Event::Type::kMessage, c->id, 0, id, Status::kOk, 0, new std::vector<uint8_t>(std::move(msg))});
      }
      // Acknowledge a message once it is whole here, and again whenever a
      // resent chunk of it shows the sender has not heard (its ACK may have
      // gone down with a stream).
      if (completed || (dup && c->reasm.complete(h.message_id))) queue_control(c, ChunkType::kAck, h.message_id);
      return Status::kOk;
    }
    case ChunkType::kAck: {
      auto it = c->unacked.find(h.message_id);
      if (it == c->unacked.end() || it->second->acked) return Status::kOk;  // repeated ACK
      OutMessage* m = it->second.get();
      m->acked = true;
      if (m->queued) {
        c->queue.erase(std::find(c->queue.begin(), c->queue.end(), m));
        m->queued = false;
      }
      // Resends of it not yet started are pointless now; ones half written
      // must finish (the stream's framing depends on it) and still read the
      // caller's buffer, so the message completes when the last one is out.
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
      maybe_complete(c, m);
      return Status::kOk;
    }
    case ChunkType::kClose:
      c->closing = true;
      maybe_finish_graceful(c);
      return Status::kOk;
    case ChunkType::kPing:
    case ChunkType::kPong:
      return Status::kOk;
  }
  return Status::kProtocol;
}

void Engine::queue_control(Connection* c, ChunkType type, uint64_t message_id) {
  Stream* target = nullptr;
  for (size_t i = 0; i < c->streams.size() && !target; i++) {
    Stream* s = c->streams[(c->rr + i) % c->streams.size()].get();
    if (s->alive && !s->connecting && !s->write_shut) target = s;
  }
  if (!target) return;
  OutChunk oc;
  ChunkHeader h;
  h.type = type;
  h.chunk_shift = 0;
  h.message_id = message_id;
  write_chunk_header(h, oc.header);
  target->out.push_back(oc);
  target->out_bytes += kChunkHeaderSize;
  flush(target);
}

void Engine::pump(Connection* c) {
  if (c->finished) return;
  // Keep about two chunks queued per stream: enough to fill the socket
  // buffer, few enough that a lost stream strands little.
  const size_t high_water = 2 * ((1u << c->shift) + kChunkHeaderSize);
  // Fill the streams, then write. A stream whose socket took everything has
  // room again and no EPOLLOUT to call us back, so go round until the queue
  // is empty or every stream with data is waiting on its socket.
  for (;;) {
    while (!c->queue.empty()) {
      Stream* s = nullptr;
      for (size_t i = 0; i < c->streams.size() && !s; i++) {
        Stream* t = c->streams[(c->rr + i) % c->streams.size()].get();
        if (t->alive && !t->connecting && !t->write_shut && t->out_bytes < high_water) s = t;
      }
      if (!s) break;
      c->rr = (c->rr + 1) % c->streams.size();
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
    }
    bool room = false;
    for (auto& s : c->streams) {
      if (!s->alive || s->connecting) continue;
      if (!s->out.empty() && !flush(s.get())) continue;
      if (c->finished) return;
      room |= s->alive && !s->write_shut && s->out_bytes < high_water;
    }
    if (c->queue.empty() || !room) return;
  }
}

bool Engine::flush(Stream* s) {
  while (!s->out.empty()) {
    iovec iov[kMaxIov];
    size_t n = 0;
    for (auto it = s->out.begin(); it != s->out.end() && n + 2 <= kMaxIov; ++it) {
      size_t w = it->written;
      if (w < kChunkHeaderSize) {
        iov[n++] = iovec{it->header + w, kChunkHeaderSize - w};
        w = 0;
      } else {
        w -= kChunkHeaderSize;
      }
      if (it->len > w) iov[n++] = iovec{const_cast<uint8_t*>(it->payload) + w, it->len - w};
    }
    // sendmsg with MSG_NOSIGNAL, not writev: a peer gone away must be an
    // EPIPE for this stream, not a SIGPIPE for a host that did not ignore it.
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    const ssize_t r = ::sendmsg(s->fd.get(), &msg, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      stream_failed(s, errno);
      return false;
    }
    s->bytes_sent += static_cast<uint64_t>(r);
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
  if (s->out.empty() && c && c->close_sent && !s->write_shut) {
    ::shutdown(s->fd.get(), SHUT_WR);
    s->write_shut = true;
  }
  update_epoll(s);
  return true;
}

void Engine::update_epoll(Stream* s) {
  if (!s->alive || !s->fd) return;
  const bool want_out = !s->out.empty() || s->connecting;
  // After the peer's end of stream there is nothing to read (and a
  // level-triggered EPOLLIN would fire forever); only pending output counts.
  const bool want_in = !s->eof && !s->read_paused;
  const uint32_t events = (want_in ? static_cast<uint32_t>(EPOLLIN) : 0u) | (want_out ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  if (events == s->epoll_events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = s;
  if (events == 0) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->fd.get(), nullptr);
  else epoll_ctl(epoll_.get(), s->epoll_events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s->fd.get(), &ev);
  s->epoll_events = events;
}

void Engine::on_stream(Stream* s, uint32_t events) {
  if (!s->alive) return;
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
      const ssize_t r = ::read(s->fd.get(), buf.data(), buf.size());
      if (r > 0) {
        s->bytes_received += static_cast<uint64_t>(r);
        const Status st = s->reader->feed(buf.data(), static_cast<size_t>(r));
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
        if (c->closing) {
          // Clean end: the peer sent CLOSE and finished writing.
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
  if ((events & (EPOLLERR | EPOLLHUP)) && s->alive && !s->eof && !s->read_paused) {
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
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    if (s->epoll_events) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->fd.get(), nullptr);
    s->epoll_events = 0;
    s->fd.reset();
    s->alive = false;
    s->connecting = false;
  }
  std::vector<OutMessage*> finished;
  for (auto& oc : s->out) {
    if (oc.msg && --oc.msg->inflight == 0 && oc.msg->acked) finished.push_back(oc.msg);
  }
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
  if (was_connecting) {
    c->connect_resolved++;
    if (c->connect_resolved == c->expected_streams && !c->announced) {
      if (c->connected == 0) {
        emit(Event{Event::Type::kError, c->id, 0, 0, Status::kConnectionLost, err, nullptr});
        finish_close(c, Status::kConnectionLost);
        return;
      }
      c->announced = true;
      emit(Event{Event::Type::kConnected, c->id, 0, c->connected, Status::kOk, 0, nullptr});
    }
    return;
  }
  if (c->live_streams() == 0) {
    finish_close(c, c->closing && c->unacked.empty() ? Status::kOk : Status::kConnectionLost);
    return;
  }
  // Everything this stream carried for unacknowledged messages goes again
  // on the others; the receiver drops whatever it already had.
  for (auto& [id, m] : c->unacked) {
    if (m->acked) continue;
    for (uint64_t k = 0; k < m->next_chunk; k++) {
      if (m->sent_on[k] == s->index) {
        m->resend.push_back(k);
        m->sent_on[k] = -1;
        c->chunks_resent++;
      }
    }
    if (!m->resend.empty() && !m->queued) {
      m->queued = true;
      c->queue.push_front(m.get());
    }
  }
  emit(Event{Event::Type::kStreamLost, c->id, 0, static_cast<uint64_t>(s->index), Status::kOk, err, nullptr});
  pump(c);
}

void Engine::maybe_complete(Connection* c, OutMessage* m) {
  if (!c || c->finished || !m->acked || m->inflight > 0) return;
  c->messages_sent++;
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
      if (!s->alive || s->connecting) continue;
      OutChunk oc;
      ChunkHeader h;
      h.type = ChunkType::kClose;
      h.chunk_shift = 0;
      write_chunk_header(h, oc.header);
      s->out.push_back(oc);
      s->out_bytes += kChunkHeaderSize;
      flush(s.get());
    }
  }
  // Done when every stream has both sent its CLOSE and seen the peer's end.
  for (auto& s : c->streams) {
    if (s->alive && !s->connecting && !(s->eof && s->write_shut)) return;
  }
  finish_close(c, Status::kOk);
}

void Engine::finish_close(Connection* c, Status status) {
  if (c->finished) return;
  c->finished = true;
  for (auto& [id, m] : c->unacked) {
    if (m->acked) {
      emit(Event{Event::Type::kSendDone, c->id, 0, id, Status::kOk, 0, nullptr});
      continue;
    }
    const Status why = status == Status::kOk ? Status::kClosed : status;
    emit(Event{Event::Type::kSendFailed, c->id, 0, id, why, 0, nullptr});
  }
  c->unacked.clear();
  c->queue.clear();
  emit(Event{Event::Type::kClosed, c->id, 0, 0, status, 0, nullptr});
  std::unique_ptr<Connection> dead;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    for (auto& s : c->streams) {
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
