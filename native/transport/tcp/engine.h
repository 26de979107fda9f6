// AMST over TCP: one I/O thread (epoll) drives every connection of an
// engine. A connection is N TCP streams between two hosts carrying one
// ordered flow of messages: each message is cut into chunks striped over the
// streams and reassembled by the receiver, which acknowledges it whole.
//
// Threads: the owner calls the public methods from one thread; they only
// enqueue a command on a lock-free SPSC ring and wake the I/O thread through
// an eventfd. Everything else happens on the I/O thread, which reports
// results through EventSink::deliver in batches.
//
// Buffers: a message given to send() is read in place by the I/O thread and
// must stay valid and unchanged until its kSendDone or kSendFailed event.
// Received messages are handed over as heap vectors the sink then owns.
#pragma once
#include <array>
#include <cerrno>
#include <atomic>
#include <optional>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "queue/spsc_ring.h"
#include "transport/frame.h"
#include "transport/rdma/verbs.h"
#include "transport/tcp/socket.h"
#include "util/status.h"

namespace dwcp::transport::rdma {
class Channel;
}

namespace dwcp::transport::tcp {

// What carries a connection's data. kAuto: RDMA queue pairs when this host
// has an RDMA device and the peer agrees, else TCP. kRdma: RDMA or fail
// (kUnavailable). Either way the TCP streams stay up: they set RDMA up, and
// the connection falls back to them, without losing a message, when RDMA
// fails mid-connection.
enum class Transport : uint8_t { kTcp, kAuto, kRdma };

struct RdmaOptions {
  uint16_t lanes = 0;               // queue pairs per connection (0: one per stream, at most kMaxLanes)
  uint32_t ring_bytes = 4u << 20;   // per lane: where the peer's RDMA WRITEs land
  std::string device;               // empty: the first device with an active port
  int gid_index = -1;               // RoCE: which GID to use; -1 picks (see Verbs::open)
};

struct Event {
  enum class Type : uint8_t {
    kListening,   // listener `id` bound; `value` = port
    kIncoming,    // new connection `id` accepted by listener `listener`; `value` = streams announced
    kConnected,   // outgoing connection `id` is up; `value` = streams connected
    kMessage,     // connection `id` received `data` (owned by the receiver of the event); `extra` > 0: a pack of that many messages
    kSendDone,    // message `value` of connection `id` is held by the peer
    kSendProgress,  // the peer holds `extra` bytes of message `value` of connection `id` (large messages)
    kSendFailed,  // message `value` of connection `id` will not be delivered (`status`)
    kStreamLost,  // connection `id` lost stream `value` and carries on (`os_error`)
    kStreamUp,    // connection `id` gained stream `value` (re-dialled, or added by set_streams)
    kStreamRetired,  // connection `id` retired stream `value` cleanly (set_streams, by either end)
    kTransport,   // connection `id` now carries its data over `value` (0 TCP, 1 RDMA); `status` says why it left RDMA
    kClosed,      // connection or listener `id` is closed (`status` kOk when cleanly)
    kError,       // listen/connect `id` failed (`status`, `os_error`); a connection then also gets kClosed
  };
  Type type = Type::kError;
  uint64_t id = 0;
  uint64_t listener = 0;
  uint64_t value = 0;
  Status status = Status::kOk;
  int os_error = 0;
  Bytes* data = nullptr;
  uint64_t extra = 0;
  // kMessage: >= 0 when `data` is a slab of the engine's Lender (which still
  // owns it; the receiver of the event gives it back), else -1: `data` is
  // owned by the receiver of the event.
  int32_t slab = -1;
};

class EventSink {
 public:
  virtual ~EventSink() = default;
  // Called on the I/O thread with every event since the last call. May block
  // (that is back-pressure: the I/O thread waits).
  virtual void deliver(std::vector<Event>& events) = 0;
};

struct ConnectOptions {
  std::string host;
  uint16_t port = 0;
  uint16_t streams = 4;
  unsigned chunk_shift = 18;  // 256 KiB chunks
  SocketOptions socket;
  // Dial a lost stream again (with back-off, up to kRedialAttempts times).
  bool redial = true;
  // Receive large messages into the engine's Lender's slabs (set_lender).
  bool lend = false;
  Transport transport = Transport::kTcp;
  RdmaOptions rdma;
  // A stream's dial (first or again) that has not connected by then fails
  // with ETIMEDOUT, like a refused one; 0: the kernel's SYN retries (~2 min).
  uint32_t connect_timeout_ms = 10000;
};

constexpr int kRedialAttempts = 6;

struct StreamStats {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  // Bytes per second written and read over the last second (1.0-1.1 s),
  // chunk headers included.
  double send_rate = 0;
  double receive_rate = 0;
  bool alive = false;
  uint32_t rtt_us = 0;
  uint32_t rtt_var_us = 0;
  uint32_t total_retrans = 0;
  uint32_t snd_cwnd = 0;
  std::string congestion;
  int send_buffer = 0;  // SO_SNDBUF / SO_RCVBUF as the kernel reports them
  int recv_buffer = 0;
};

struct Endpoint {
  std::string address;
  uint16_t port = 0;
};

struct ConnectionStats {
  uint64_t zerocopy_sends = 0;   // payloads sent with MSG_ZEROCOPY
  uint64_t zerocopy_copied = 0;  // of those, ones the kernel copied after all (loopback, veth...)
  uint64_t spliced_bytes = 0;    // payload bytes handed to TCP by vmsplice + splice
  uint64_t messages_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_sent = 0;      // payload bytes acknowledged by the peer
  uint64_t bytes_received = 0;  // payload bytes of messages received whole
  uint64_t chunks_resent = 0;
  bool rdma = false;             // data goes over RDMA lanes now
  uint32_t lanes = 0;            // RDMA lanes alive
  uint64_t lane_bytes_sent = 0;  // bytes posted to RDMA lanes (chunk headers included)
  uint64_t lane_bytes_received = 0;
  // Its streams' and lanes' rates together (as in StreamStats).
  double send_rate = 0;
  double receive_rate = 0;
  std::vector<StreamStats> streams;
};

// One message of send_many(). `flags` kFlagPacked: `data` is a pack (see
// frame.h) the caller built.
struct SendItem {
  const uint8_t* data = nullptr;
  size_t len = 0;
  uint8_t flags = 0;
};

// A request from the owner thread to the I/O thread.
struct EngineCommand {
  enum class Type : uint8_t { kNone, kListen, kConnect, kSend, kSendMany, kClose, kDestroy, kKillStream, kResume, kSetStreams, kPauseReading } type = Type::kNone;
  uint64_t id = 0;
  uint64_t message_id = 0;
  const uint8_t* data = nullptr;
  size_t len = 0;
  std::unique_ptr<ConnectOptions> connect;
  std::unique_ptr<std::vector<SendItem>> many;  // kSendMany
  std::string host;
  uint16_t port = 0;
  bool lend = false;  // kListen
  Transport transport = Transport::kTcp;  // kListen: whether RDMA offers are taken
  RdmaOptions rdma;                        // kListen: for accepted connections' lanes
  uint32_t handshake_timeout_ms = 0;       // kListen
  SocketOptions accepted;                  // kListen: options of accepted sockets
};

// How long an accepted socket may take to send its HELLO before it is closed.
constexpr uint32_t kDefaultHandshakeTimeoutMs = 10000;

class Engine {
 public:
  // With `own_thread` the engine runs its loop on a thread of its own.
  // Without, the owner drives it: it waits for poll_fd() to be readable (an
  // epoll fd, so any event loop can watch it) and calls poll_once() on the
  // owner thread, where the sink then receives events. That saves the
  // cross-thread wake-ups of a request/response exchange.
  explicit Engine(EventSink* sink, Limits limits = Limits{}, bool own_thread = true);
  ~Engine();  // stops the I/O thread and closes everything

  int poll_fd() const { return epoll_.get(); }
  // Handles whatever is ready without blocking; owner-driven engines only.
  void poll_once() { iterate(0); }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  struct OutMessage;

  // Each returns an id at once; the outcome arrives as events.
  // With `lend`, accepted connections receive into the Lender's slabs.
  // With `transport` other than kTcp, RDMA offers from clients are taken
  // when this host has a device. An accepted socket that has not sent its
  // HELLO within `handshake_timeout_ms` is closed; accepted sockets get
  // `accepted` (congestion control, buffers, splice, peer timeout:
  // SocketOptions; their zerocopy is never turned on).
  uint64_t listen(const std::string& host, uint16_t port, bool lend = false, Transport transport = Transport::kAuto,
                  const RdmaOptions& rdma = RdmaOptions{}, uint32_t handshake_timeout_ms = kDefaultHandshakeTimeoutMs,
                  const SocketOptions& accepted = SocketOptions{});
  // The verbs RDMA connections use (tests: an emulation). Call before
  // listen/connect; `verbs` outlives the engine. Without it the engine
  // opens libibverbs the first time a connection asks for RDMA.
  void set_verbs(rdma::Verbs* verbs) { verbs_ = verbs; }
  // Where connections that lend (ConnectOptions::lend, listen) receive
  // large messages. Call before listen/connect; `lender` outlives the engine.
  void set_lender(transport::Lender* lender) { lender_ = lender; }
  uint64_t connect(const ConnectOptions& opts);
  // Queues `len` (> 0) bytes at `data` as message `message_id` (ids per
  // connection start at 0 and increase by one). When the command ring is
  // full this waits for the I/O thread, which never waits for the owner.
  void send(uint64_t conn, uint64_t message_id, const uint8_t* data, size_t len);
  // Queues messages first_id, first_id + 1, ... in one command: one ring
  // slot and one wake-up for the lot. Same rules as send().
  void send_many(uint64_t conn, uint64_t first_id, std::vector<SendItem> messages);
  // Sends what is queued, then closes; destroy() closes now and fails sends.
  void close(uint64_t id);
  void destroy(uint64_t id);
  // Counters and TCP_INFO of each stream; false when `conn` is unknown.
  bool stats(uint64_t conn, ConnectionStats* out);
  // The addresses of `conn`'s first stream with a socket (numeric; an IPv4
  // peer of a dual-stack listener as ::ffff:a.b.c.d); false when it has none.
  bool addresses(uint64_t conn, Endpoint* local, Endpoint* remote);
  // Switches every live stream of `conn` (and streams dialled later) to
  // congestion control `name`, now, from any thread. 0, ENOENT for an
  // unknown connection, or the setsockopt errno (ENOENT also for an
  // algorithm the kernel lacks).
  int set_congestion(uint64_t conn, const std::string& name);
  // Fault injection: resets stream `index` of `conn` as a network failure would.
  void kill_stream(uint64_t conn, uint32_t index);
  // Grows (dials more streams) or shrinks (retires the highest-numbered
  // streams cleanly) a client connection to `n` streams; ignored on server
  // connections. Outcomes arrive as kStreamUp / kStreamRetired.
  void set_streams(uint64_t conn, uint16_t n);
  // The sink's owner has consumed `bytes` of received messages (any thread).
  void delivered(uint64_t bytes);
  // Stops (or starts again) reading `conn`'s streams and granting its RDMA
  // lanes credits: the application's back-pressure on one connection. What
  // was already read is still delivered; the peer's sends then wait on TCP
  // flow control.
  void pause_reading(uint64_t conn, bool pause);

 private:
  struct Stream;
  struct Connection;
  struct Listener;
  using Command = EngineCommand;
  void post(Command&& c);
  void post(Command::Type type, uint64_t id, uint64_t value);
  void run();
  void iterate(int timeout_ms);
  void shutdown_all();
  void drain_commands();
  void handle(Command& c);
  void on_listener(Listener* l);
  void on_stream(Stream* s, uint32_t events);
  void start_connect(uint64_t id, const ConnectOptions& opts);
  void enqueue_send(uint64_t conn, uint64_t message_id, const uint8_t* data, size_t len, uint8_t flags = 0);
  Stream* dial_stream(Connection* c, int32_t index, int attempt);
  void schedule_redial(Connection* c, int32_t index, int attempt);
  void run_timers();
  void arm_timer();
  void check_liveness(std::chrono::steady_clock::time_point now);
  void retire(Stream* s);
  void push_control(Stream* s, ChunkType type, uint64_t message_id, uint64_t offset, uint64_t len);
  void drop_fd(Stream* s);
  void zerocopy_done(Stream* s, bool all);
  void retired(Stream* s);
  void stream_ready(Stream* s);
  Status on_chunk(Stream* s, const ChunkHeader& h, const uint8_t* payload);
  Status on_hello(Stream* s, const Hello& h);
  std::unique_ptr<StreamReader> make_reader(Stream* s, bool server);
  void pump(Connection* c);
  bool flush(Stream* s);
  ssize_t splice_out(Stream* s);
  void queue_control(Connection* c, ChunkType type, uint64_t message_id, uint64_t offset = 0, uint64_t len = 0);
  void touch(Connection* c);
  void flush_touched();
  void stream_failed(Stream* s, int err);
  // `err`: the errno that ended it, when the last stream failed.
  void finish_close(Connection* c, Status status, int err = 0);
  void maybe_complete(Connection* c, OutMessage* m);
  void maybe_finish_graceful(Connection* c);
  void update_epoll(Stream* s);
  // Not to be read now: the engine-wide back-pressure, or pause_reading().
  static bool reading_held(const Stream* s);
  void emit(Event e) { pending_.push_back(e); }
  // RDMA lanes (engine.cc, "RDMA lanes").
  rdma::Device* rdma_device(const std::string& name, int gid_index, std::string* why);
  Status make_lanes(Connection* c, size_t n, std::vector<LaneSetup>* setups);
  void send_rdma(Connection* c, Stream* via, RdmaStep step, uint64_t arg, const std::vector<LaneSetup>* setups);
  Status on_rdma(Stream* s, const ChunkHeader& h, const uint8_t* payload);
  Status rdma_step(Stream* s, const ChunkHeader& h, const uint8_t* payload);
  void on_rdma_completions();
  void lane_progress(Stream* lane);
  void on_lane_message(Stream* lane, const uint8_t* head, size_t head_len, const uint8_t* body, size_t len);
  void post_lane(Stream* lane);
  void lane_failed(Stream* lane, bool tell_peer, Status why);
  void close_lane(Stream* l);
  void drop_lanes(Connection* c);
  void rdma_refused(Connection* c, Status why, int err);
  void requeue(Connection* c, int32_t index);
  void maybe_announce(Connection* c, int err = ECONNREFUSED);

  EventSink* sink_;
  transport::Lender* lender_ = nullptr;
  // RDMA: declared before the connections, so their queue pairs and
  // registrations go before the device that made them.
  rdma::Verbs* verbs_ = nullptr;
  std::unique_ptr<rdma::Verbs> own_verbs_;
  std::unique_ptr<rdma::Device> device_;
  std::string device_error_;  // why device_ is null, once tried
  bool device_tried_ = false;
  uint32_t next_tag_ = 1;
  std::unordered_map<uint32_t, Stream*> lanes_by_tag_;
  Stream* current_lane_ = nullptr;  // whose completion is being handled
  std::vector<std::unique_ptr<rdma::Channel>> dead_channels_;  // freed after the current batch
  Limits limits_;
  Fd epoll_;
  Fd wake_;
  Fd timer_;  // timerfd: whatever comes first of what arm_timer() lists
  struct Dial {  // dial `attempt` of stream `index` of connection `conn`
    uint64_t conn;
    int32_t index;
    int attempt;
  };
  std::multimap<std::chrono::steady_clock::time_point, Dial> redials_;
  std::multimap<std::chrono::steady_clock::time_point, Dial> dial_deadlines_;  // dials that must have connected by then
  std::optional<std::chrono::steady_clock::time_point> liveness_due_;  // next check_liveness, while any stream has a peer timeout
  int64_t now_ns_ = 0;  // monotonic_ns() when this batch of events began: what rate meters are stamped with
  // The earliest HELLO deadline of the accepted sockets (orphans_), or
  // earlier (one that has since said HELLO): arming the timer stays O(1)
  // however many sockets a flood leaves waiting.
  std::optional<std::chrono::steady_clock::time_point> hello_due_;
  std::atomic<bool> wake_pending_{false};  // an eventfd write is on its way; skip another
  std::vector<Connection*> touched_;        // connections with sends or ACKs to push out
  std::atomic<uint64_t> next_id_{1};
  queue::SpscRing<Command> commands_{4096};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> undelivered_{0};
  bool reading_paused_ = false;  // I/O thread only
  std::vector<Event> pending_;
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> conns_;
  std::unordered_map<uint64_t, std::unique_ptr<Listener>> listeners_;
  std::map<std::array<uint8_t, 16>, uint64_t> by_conn_id_;  // server side: HELLO id -> connection
  std::vector<std::unique_ptr<Stream>> orphans_;             // accepted streams before their HELLO
  std::vector<std::unique_ptr<Stream>> graveyard_;           // freed after the current epoll batch
  std::vector<std::unique_ptr<Connection>> dead_conns_;      // likewise
  std::mutex stats_mu_;                                      // guards fds against stats() readers
  std::thread thread_;
};

}  // namespace dwcp::transport::tcp
