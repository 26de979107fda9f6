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
};

// What the peer needs besides the QP endpoint; exchanged out of band.
struct ChannelSetup {
  Endpoint endpoint;
  uint64_t ring_addr = 0;
  uint32_t ring_rkey = 0;
  uint32_t ring_bytes = 0;
  uint32_t slots = 0;
  uint32_t slot_bytes = 0;
};

// Registrations of caller buffers, reused while the same buffer is sent
// again (registration pins pages: far too slow per message), bounded.
class RegistrationCache {
 public:
  explicit RegistrationCache(Device* dev, size_t max_entries = 64) : dev_(dev), max_(max_entries) {}
  ~RegistrationCache();
  RegistrationCache(const RegistrationCache&) = delete;
  RegistrationCache& operator=(const RegistrationCache&) = delete;
  // A region covering [data, data + len), registered now or found.
  Status get(const uint8_t* data, size_t len, Region* out);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Region region;
    uint64_t used;
  };
  Device* dev_;
  size_t max_;
  uint64_t tick_ = 0;
  std::map<const uint8_t*, Entry> entries_;  // by start address
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

  ChannelSetup local() const;
  Status connect(const ChannelSetup& peer);

  // Queues message `id` (ids increase); `data` must stay valid and
  // unchanged until the id appears in take_done() or unfinished().
  void send(uint64_t id, const uint8_t* data, size_t len);
  // Handles one completion of this channel's requests.
  void on_completion(const Completion& c);

  // Whole messages received since the last call, in order.
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
    size_t sent = 0;           // bytes posted (large), or 0/len (small)
    bool begun = false;        // large: the announcing SEND is posted
    uint32_t requests = 0;     // posted and not yet completed
  };
  uint64_t wr(Kind k, uint32_t index) const { return (static_cast<uint64_t>(tag_) << 40) | (static_cast<uint64_t>(k) << 32) | index; }
  size_t place(size_t pos, size_t len) const { return pos + len <= ring_bytes_peer_ ? pos : 0; }
  bool post_header(Msg kind, uint64_t value, Out* msg, const uint8_t* payload, size_t len);
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
  Bytes large_;
  std::vector<Bytes> received_;

  bool connected_ = false;
  bool failed_ = false;
  WcStatus failure_ = WcStatus::kSuccess;
};

}  // namespace dwcp::transport::rdma
