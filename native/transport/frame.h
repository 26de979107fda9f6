// AMST wire format: what travels on each TCP stream of a connection.
//
// A stream opens with a 40-byte HELLO naming the connection it belongs to;
// then it carries chunks, each a 40-byte header and a payload. Messages are
// cut into chunks of 2^chunk_shift bytes (the last one shorter) that may
// travel on any stream, in any order, more than once (after a stream is
// lost); the receiver reassembles them by (message id, offset). Header and
// payload each carry a CRC32C. Everything is little-endian. Input is
// untrusted: every field is checked and a bad one is a Status, never a crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "transport/rdma/verbs.h"
#include "util/status.h"

namespace dwcp::transport {

constexpr uint32_t kHelloMagic = 0x31534d41u;  // "AMS1"
constexpr uint8_t kWireVersion = 3;
constexpr size_t kHelloSize = 40;
constexpr size_t kChunkHeaderSize = 40;
constexpr unsigned kMinChunkShift = 12;  // 4 KiB
constexpr unsigned kMaxChunkShift = 24;  // 16 MiB

enum class ChunkType : uint8_t {
  kData = 1,   // a piece of a message
  kAck = 2,       // the peer holds messages `message_id` .. `message_id + message_len - 1` whole
  kClose = 3,     // the peer will send nothing more (no payload)
  kPing = 4,      // echo request; payload up to 64 bytes
  kPong = 5,      // echo reply
  kProgress = 6,  // the peer holds `offset` of the `message_len` bytes of message `message_id`
  kRetire = 7,    // this stream carries nothing more; its end is not a failure
  kRdma = 8,      // RDMA set-up: `offset` the RdmaStep, `message_id` its argument, payload LaneSetup records
};

// The steps of moving a connection's data onto RDMA queue pairs ("lanes"),
// negotiated over its TCP streams, which stay up as the fallback:
//   client OFFER (its lanes) -> server ACCEPT (its lanes, already connected
//   to the client's) or DECLINE (`message_id`: a RdmaDecline) -> client
//   READY (its lanes connected: the server may send on them now).
// Either end sends DOWN (`message_id`: the lane) when a lane fails, so the
// other stops using it at once instead of after its transport retries.
enum class RdmaStep : uint8_t { kOffer = 1, kAccept = 2, kDecline = 3, kReady = 4, kDown = 5 };
enum class RdmaDecline : uint8_t { kNoDevice = 1, kRefused = 2, kDeviceError = 3 };  // a malformed offer is a protocol error

// What one end tells the other about one lane: its queue pair and the ring
// the other end WRITEs large messages into (the lane's channel set-up,
// rdma::ChannelSetup). 64 bytes on the wire.
struct LaneSetup {
  rdma::Endpoint endpoint;
  uint64_t ring_addr = 0;
  uint32_t ring_rkey = 0;
  uint32_t ring_bytes = 0;
  uint32_t slots = 0;
  uint32_t slot_bytes = 0;
};
constexpr size_t kLaneSetupSize = 64;
constexpr uint32_t kMaxLanes = 16;

void write_lane_setups(const std::vector<LaneSetup>& lanes, std::vector<uint8_t>* out);
// Checks every record (sizes and counts within what a channel can use).
[[nodiscard]] Status parse_lane_setups(const uint8_t* data, size_t len, std::vector<LaneSetup>* out);

// DATA flags (byte 2 of the header; every chunk of a message carries the same).
// kFlagPacked: the message is many small messages in one, laid out as
// [u32 count] then count x ([u32 length][bytes]), at most kPackMax bytes.
// Packing gives a burst of small messages one id, one chunk, one ACK and one
// CRC between them instead of one each.
constexpr uint8_t kFlagPacked = 1;
constexpr size_t kPackMax = 64 * 1024;

// Checks the layout of a packed message (every length inside, nothing left
// over, at least one message) and gives the message count.
[[nodiscard]] Status check_pack(const uint8_t* data, size_t len, uint32_t* count);

// ACK ranges are bounded so one forged ACK cannot make a sender walk 2^64 ids.
constexpr uint64_t kMaxAckRange = 1u << 20;

// An allocator whose resize() leaves new bytes uninitialised: a message
// buffer is written in full by the chunks that fill it, so zeroing it first
// would be a wasted pass over every received byte.
template <class T>
struct NoInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInitAllocator<U>;
  };
  NoInitAllocator() = default;
  template <class U>
  NoInitAllocator(const NoInitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// A received message.
using Bytes = std::vector<uint8_t, NoInitAllocator<uint8_t>>;

// Storage for large received messages, reused. A fresh multi-MiB buffer
// costs a page fault and a kernel zero-fill per 4 KiB page before the socket
// data is even copied in, a third of the receiver's CPU time in a bulk
// transfer; a buffer handed back once its message is consumed costs none.
// Thread-safe: filled on I/O threads, given back from wherever the message
// was freed (a Buffer finalizer on a JS thread).
class BufferPool {
 public:
  static constexpr size_t kMinSize = 64 * 1024;  // smaller messages are allocated as usual
  explicit BufferPool(size_t max_bytes) : max_bytes_(max_bytes) {}
  // The process's pool (never destroyed: buffers may come back late).
  static BufferPool& shared();
  // A buffer of `n` bytes, contents unspecified.
  Bytes take(size_t n);
  // Keeps `b` for reuse when there is room, else frees it.
  void give(Bytes&& b);
  size_t pooled_bytes() const;
  // Capacity `take(n)` allocates: `n` rounded up to an eighth of its power
  // of two, so buffers of similar sizes share a class (at most 12.5 % unused).
  static size_t size_class(size_t n);

 private:
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<Bytes>> free_;  // by capacity
  size_t pooled_ = 0;
  const size_t max_bytes_;
};

// Memory a consumer of received messages lends the receiver and takes back
// after use (see native/binding/amst_wrap.cc): messages then land in the same
// few buffers over and over, which stay in cache and cost the consumer no
// allocation. Thread-safe.
class Lender {
 public:
  virtual ~Lender() = default;
  // A buffer of at least `n` bytes, resized to `n`, still owned by the
  // lender and named by *slab; null when none is free.
  virtual Bytes* take(size_t n, int32_t* slab) = 0;
  // Takes back a slab the receiver no longer needs (a message abandoned).
  virtual void give(int32_t slab) = 0;
};

// A received message's storage: pooled bytes it owns, or a lent slab.
struct MessageBuf {
  Bytes own;
  Bytes* lent = nullptr;
  int32_t slab = -1;
  Bytes& bytes() { return lent ? *lent : own; }
  const Bytes& bytes() const { return lent ? *lent : own; }
};

struct Hello {
  uint16_t stream_index = 0;
  uint16_t stream_count = 1;
  uint8_t connection_id[16] = {};
  uint8_t chunk_shift = 18;
};

struct ChunkHeader {
  ChunkType type = ChunkType::kData;
  uint8_t chunk_shift = 18;  // DATA: chunk size of this message, log2
  uint8_t flags = 0;         // DATA: kFlag*
  uint32_t payload_len = 0;
  uint64_t message_id = 0;
  uint64_t offset = 0;       // DATA: byte offset of the payload in the message
  uint64_t message_len = 0;  // DATA: whole message length
  uint32_t payload_crc = 0;  // CRC32C of the payload
};

struct Limits {
  uint64_t max_message = 1ull << 32;        // largest message a receiver accepts
  uint64_t max_pending_bytes = 1ull << 32;  // partly received messages, all together
  size_t max_out_of_order = 1u << 16;       // messages completed ahead of an earlier one
  // Received bytes handed to the sink but not yet reported consumed
  // (Engine::delivered); above this the engine stops reading sockets and TCP
  // pushes back on the sender. 0: no limit.
  uint64_t max_undelivered_bytes = 0;
};

void write_hello(const Hello& h, uint8_t out[kHelloSize]);
[[nodiscard]] Status parse_hello(const uint8_t in[kHelloSize], Hello* h);

// Writes the header; payload_crc must already be set for DATA.
void write_chunk_header(const ChunkHeader& h, uint8_t out[kChunkHeaderSize]);
// Checks the header CRC and every field against `limits`; does not see the payload.
[[nodiscard]] Status parse_chunk_header(const uint8_t in[kChunkHeaderSize], const Limits& limits,
                                        ChunkHeader* h);

// Feeds bytes read from one stream and calls back per complete, verified
// chunk (header, payload view valid during the call). After the first error
// it accepts nothing more: the stream must be closed.
class StreamReader {
 public:
  using OnHello = std::function<Status(const Hello&)>;
  using OnChunk = std::function<Status(const ChunkHeader&, const uint8_t* payload)>;
  // Asked for each DATA chunk of at least kDirectMin bytes: where its payload
  // should land (null: buffer it here as usual).
  using Place = std::function<Status(const ChunkHeader&, uint8_t** dst)>;
  static constexpr size_t kDirectMin = 16 * 1024;

  StreamReader(Limits limits, bool expect_hello, OnHello on_hello, OnChunk on_chunk, Place place = nullptr);
  // Consumes all of `data`; returns the first error seen (also on later calls).
  [[nodiscard]] Status feed(const uint8_t* data, size_t len);
  Status error() const { return error_; }

  // Zero-copy receive: while a payload is being placed, the caller may read
  // from the socket straight to `*dst` (up to `*len` bytes), then report how
  // many arrived with direct_filled(). on_chunk is then called with the
  // payload at its place (after the CRC check).
  bool direct_window(uint8_t** dst, size_t* len) const;
  [[nodiscard]] Status direct_filled(size_t n);
  // The memory [base, base + len) is no longer ours to write (its message
  // completed by way of another stream): keep what was read here instead.
  void detach_if_within(const uint8_t* base, size_t len);
  // After a placed payload, the bytes of the next chunk header still
  // missing: reading just those lets the next payload be placed too, rather
  // than arrive in a bulk read and be copied. 0 when that does not apply.
  size_t header_need() const {
    return last_placed_ && !need_hello_ && !have_header_ && error_ == Status::kOk ? kChunkHeaderSize - buf_.size() : 0;
  }

 private:
  Status finish_payload(const uint8_t* payload);
  Limits limits_;
  bool need_hello_;
  OnHello on_hello_;
  OnChunk on_chunk_;
  Place place_;
  std::vector<uint8_t> buf_;  // header, then payload being collected
  ChunkHeader header_;
  bool have_header_ = false;
  uint8_t* direct_ = nullptr;  // the payload's place, when placed
  size_t direct_have_ = 0;
  bool last_placed_ = false;   // the last payload was placed
  Status error_ = Status::kOk;
};

// A message put back together, with the flags its chunks carried.
struct Received {
  uint64_t id = 0;
  MessageBuf data;
  uint8_t flags = 0;
};

// Rebuilds messages from DATA chunks arriving in any order, possibly twice,
// and releases them in message-id order (senders number messages 0, 1, 2...).
class Reassembler {
 public:
  explicit Reassembler(Limits limits) : limits_(limits) {}
  ~Reassembler();
  Reassembler(const Reassembler&) = delete;
  Reassembler& operator=(const Reassembler&) = delete;
  // Messages of BufferPool::kMinSize bytes and more go into slabs `lender`
  // lends while it has any free (it must outlive this reassembler).
  void set_lender(Lender* lender) { lender_ = lender; }

  // Copies the chunk in. `*completed` tells whether this chunk finished its
  // message; every message now deliverable in order is appended to `*ready`
  // A chunk of a message already complete sets `*duplicate`.
  // When `progress` is given and this chunk took a partly received message
  // past another sixteenth of its length, `*progress` is set to the bytes
  // held (else 0): the cue for a PROGRESS report to the sender.
  [[nodiscard]] Status add(const ChunkHeader& h, const uint8_t* payload, bool* completed,
                           std::vector<Received>* ready, bool* duplicate,
                           uint64_t* progress = nullptr);
  // Where the payload of DATA chunk `h` belongs, for reading it in place:
  // inside the partly received message (made now if it is the first chunk;
  // a message of one chunk is such a message until that chunk is in), or
  // null when that chunk is already here.
  // Checks what add() checks; add() later skips the copy onto itself.
  [[nodiscard]] Status reserve(const ChunkHeader& h, uint8_t** dst);
  // The buffer of a partly received message, for detaching readers.
  std::pair<const uint8_t*, size_t> partial_buffer(uint64_t id) const;
  // Whether message `id` has arrived whole (delivered or held for order).
  bool complete(uint64_t id) const { return id < next_ || held_.count(id) > 0; }
  // Every id below this one has been delivered.
  uint64_t next_id() const { return next_; }
  // Ids complete and waiting for an earlier one, in order.
  std::vector<uint64_t> held_ids() const {
    std::vector<uint64_t> ids;
    for (const auto& [id, h] : held_) ids.push_back(id);
    return ids;
  }
  size_t pending_messages() const { return partial_.size() + held_.size(); }
  uint64_t pending_bytes() const { return pending_bytes_; }

 private:
  struct Partial {
    MessageBuf data;
    std::vector<uint64_t> have;  // bit per chunk
    uint64_t chunks = 0;
    uint64_t received = 0;
    uint64_t bytes = 0;
    uint64_t reported = 0;
    uint8_t chunk_shift = 0;
    uint8_t flags = 0;
  };
  struct Held {
    MessageBuf data;
    uint8_t flags;
  };

  Limits limits_;
  std::unordered_map<uint64_t, Partial> partial_;
  std::map<uint64_t, Held> held_;  // complete, waiting for an earlier id
  uint64_t next_ = 0;                              // every id below it was delivered
  uint64_t pending_bytes_ = 0;                     // partial and held bytes
  Lender* lender_ = nullptr;

  // False when the memory cannot be had: a size the peer declared may be
  // more than this host can allocate, which must end the connection, not
  // the process.
  bool allocate(size_t n, MessageBuf* out) noexcept;
  static bool whole_at_once(const ChunkHeader& h);

  Status find_or_start(const ChunkHeader& h, Partial** out);
};

}  // namespace dwcp::transport
