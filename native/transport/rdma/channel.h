// A reliable, ordered message channel over one RC queue pair: the RDMA
// transport's unit, as a TCP stream is the TCP engine's.
//
// Small messages (up to a receive slot, 4 KiB by default) go by SEND into
// receives the peer has posted; large ones by a SEND announcing the length,
// then RDMA WRITEs with immediate straight from the caller's (registered)
// buffer into a ring the peer registered and advertised, the immediate
// carrying the piece's length. Both ends place pieces by the same rule (at
// the ring position, or at its start when the piece does not fit before the
// end), so the receiver needs no addresses on the wire. RC delivers SENDs
// and WRITEs of one QP in order, which orders messages.
//
// Flow control by credits: one per receive posted at the peer (every SEND
// and WRITE-with-immediate consumes one) and one per ring byte. Receivers
// return both in the header of their own SENDs, or in a credit-only SEND
// once half the receives are owed; the last receive credit is kept for such
// messages, so two ends out of credits can always tell each other.
//
// Not thread-safe: the owner (the engine's I/O thread) feeds completions and
// calls send(). A failed completion fails the channel; `unfinished()` lists
// the messages to send again another way (TCP) so none is lost.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "transport/frame.h"
#include "transport/rdma/verbs.h"

namespace dwcp::transport::rdma {

struct ChannelOptions {
  uint32_t slot_bytes = 4096;    // receive slot: small messages and control
  uint32_t slots = 64;           // receives kept posted (the peer's receive credits)
  uint32_t ring_bytes = 4u << 20;  // the ring the peer WRITEs large messages into
  uint32_t max_piece = 1u << 20;   // largest single WRITE
  uint32_t max_send = 128;       // send requests outstanding at once
  // Largest message body accepted: a peer announcing more fails the
  // channel rather than making it buffer without bound.
  uint64_t max_message = (16u << 20) + 4096;
};

// What the peer needs to connect to a channel: its QP endpoint and ring. It
// is the wire record of the set-up exchange as it is (frame.h).
using ChannelSetup = LaneSetup;

// Registrations of caller buffers in flight, shared by every message that
// lies inside one (chunks of one large buffer, a buffer sliced into many
// messages). An entry goes when its last user releases it: a registration
// kept after the buffer is freed would pin pages the allocator may hand to
// someone else, and later WRITEs from "the same address" would send stale
// bytes. Callers that own long-lived buffers register them once themselves
// and pass the Region (Channel::send).
class RegistrationCache {
 public:
  explicit RegistrationCache(Device* dev) : dev_(dev) {}
  ~RegistrationCache();
  RegistrationCache(const RegistrationCache&) = delete;
  RegistrationCache& operator=(const RegistrationCache&) = delete;
  // A region covering [data, data + len): found (one more user) or registered now.
  Status get(const uint8_t* data, size_t len, Region* out);
  // One user of region `r` (from get) is done with it.
  void release(const Region& r);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Region region;
    uint32_t users;
  };
  Device* dev_;
  std::map<std::pair<const uint8_t*, size_t>, Entry> entries_;  // by start and length
};

class Channel {
 public:
  // `tag` (below 2^24) marks this channel's work requests, so the owner can
  // route completions of a shared completion queue: see channel_of().
  Channel(Device* dev, uint32_t tag, const ChannelOptions& options, Status* st);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  static uint32_t channel_of(uint64_t wr_id) { return static_cast<uint32_t>(wr_id >> 40); }
  // Completion-queue entries a channel with `o` may need at once.
  static size_t cq_entries(const ChannelOptions& o) { return static_cast<size_t>(o.max_send) + o.slots; }

  ChannelSetup local() const;
  Status connect(const ChannelSetup& peer);

  // Bytes a message's head (see send) may have.
  static constexpr size_t kMaxHead = 64;
  // A whole message received: its head and its body, valid during the call
  // only (the body may sit in the ring the peer writes into).
  using OnMessage = std::function<void(const uint8_t* head, size_t head_len, const uint8_t* body, size_t len)>;
  // Where received messages go; without one they collect for take_received().
  void set_on_message(OnMessage f) { on_message_ = std::move(f); }

  // Queues message `id` (ids increase): `head` (up to kMaxHead bytes,
  // copied now) then `body`, which must stay valid and unchanged until the
  // id appears in take_done() or unfinished(). A large body goes by RDMA
  // WRITE from `mr` when given (a registration covering it, kept by the
  // caller until then), else from a registration made for the message.
  void send(uint64_t id, const uint8_t* head, size_t head_len, const uint8_t* body, size_t len, const Region* mr = nullptr);
  void send(uint64_t id, const uint8_t* data, size_t len) { send(id, nullptr, 0, data, len); }
  // Handles one completion of this channel's requests.
  void on_completion(const Completion& c);
  // While held, the peer gets no new credits: it stops once it has used
  // those it has (the receiver's back-pressure). Releasing sends them.
  void hold_credits(bool hold);

  // Whole messages received since the last call, in order (head and body
  // together), when no OnMessage is set.
  std::vector<Bytes> take_received();
  // Messages whose every request has completed (the peer's adapter holds them).
  std::vector<uint64_t> take_done();
  bool failed() const { return failed_; }
  WcStatus failure() const { return failure_; }
  // After a failure: messages not known to be delivered, oldest first.
  std::vector<uint64_t> unfinished() const;
  uint32_t receive_credits() const { return slot_credits_; }
  uint64_t ring_credits() const { return ring_credits_; }

 private:
  enum Kind : uint8_t { kRecvSlot = 1, kSendSlot = 2, kWrite = 3 };
  enum Msg : uint8_t { kSmall = 1, kCredit = 2, kLargeBegin = 3 };
  struct Out {
    uint64_t id;
    const uint8_t* data;
    size_t len;
    uint8_t head[kMaxHead];
    uint8_t head_len = 0;
    Region mr{};               // large: where the body is WRITTEN from
    bool own_reg = false;      // mr came from regs_ (released when done)
    size_t sent = 0;           // bytes posted (large), or 0/len (small)
    bool begun = false;        // large: the announcing SEND is posted
    uint32_t requests = 0;     // posted and not yet completed
  };
  uint64_t wr(Kind k, uint32_t index) const { return (static_cast<uint64_t>(tag_) << 40) | (static_cast<uint64_t>(k) << 32) | index; }
  size_t place(size_t pos, size_t len) const { return pos + len <= ring_bytes_peer_ ? pos : 0; }
  bool post_header(Msg kind, uint64_t value, Out* msg, const uint8_t* head, size_t head_len, const uint8_t* payload, size_t len);
  void deliver(const uint8_t* head, size_t head_len, const uint8_t* body, size_t len);
  void pump();
  void fail(WcStatus s);
  void repost(uint32_t slot);
  void consume(uint64_t wr_id, const Completion& c);

  Device* dev_;
  uint32_t tag_;
  ChannelOptions opt_;
  std::unique_ptr<QueuePair> qp_;
  std::vector<uint8_t> recv_buf_;  // slots x slot_bytes, registered
  std::vector<uint8_t> send_buf_;  // max_send x slot_bytes staging for SENDs, registered
  std::vector<uint8_t> ring_;      // where the peer's WRITEs land, registered
  Region recv_mr_{}, send_mr_{}, ring_mr_{};
  RegistrationCache regs_;
  std::vector<uint32_t> free_send_slots_;
  std::unordered_map<uint32_t, Out*> send_slot_msg_;  // staging slot -> message (null: credit)
  std::unordered_map<uint32_t, Out*> write_msg_;      // write request index -> message
  uint32_t next_write_ = 0;
  uint32_t outstanding_ = 0;

  // Sending side.
  ChannelSetup peer_{};
  uint32_t ring_bytes_peer_ = 0;
  uint32_t slot_credits_ = 0;
  uint64_t ring_credits_ = 0;
  size_t peer_ring_pos_ = 0;
  std::deque<std::unique_ptr<Out>> queue_;  // in id order; front ones may be in flight
  std::vector<uint64_t> done_;

  // Receiving side.
  uint32_t owed_slots_ = 0;
  uint64_t owed_ring_ = 0;
  size_t ring_pos_ = 0;
  uint64_t large_total_ = 0;  // a large message in progress (0: none)
  uint64_t large_have_ = 0;
  uint8_t large_head_[kMaxHead];
  size_t large_head_len_ = 0;
  Bytes large_;               // pieces of a message that took more than one WRITE
  std::vector<Bytes> received_;
  OnMessage on_message_;
  bool hold_ = false;

  bool connected_ = false;
  bool failed_ = false;
  WcStatus failure_ = WcStatus::kSuccess;
};

}  // namespace dwcp::transport::rdma
