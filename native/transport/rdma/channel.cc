#include "transport/rdma/channel.h"

#include <algorithm>
#include <cstring>

namespace dwcp::transport::rdma {
namespace {

// SEND header: kind, the message head's length, 2 spare bytes, receive
// credits returned (u32), ring bytes returned (u64), value (u64: a small
// message's body length, a large one's). The head follows (and a small
// body after it). Little-endian, as both ends are x86 or ARM.
constexpr size_t kHeader = 24;

void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace

RegistrationCache::~RegistrationCache() {
  for (auto& [addr, e] : entries_) dev_->deregister(e.region);
}

Status RegistrationCache::get(const uint8_t* data, size_t len, Region* out) {
  // Entries are few (the buffers in flight): look back from `data` for one
  // that covers it.
  for (auto it = entries_.upper_bound({data, SIZE_MAX}); it != entries_.begin();) {
    --it;
    const Region& r = it->second.region;
    if (data >= r.addr && data + len <= r.addr + r.len) {
      it->second.users++;
      *out = r;
      return Status::kOk;
    }
  }
  Region r;
  if (Status st = dev_->register_memory(const_cast<uint8_t*>(data), len, Access::kLocal, &r); st != Status::kOk) return st;
  // No entry has this start and length: it would have covered `data`.
  entries_.emplace(std::make_pair(static_cast<const uint8_t*>(r.addr), r.len), Entry{r, 1});
  *out = r;
  return Status::kOk;
}

void RegistrationCache::release(const Region& r) {
  auto it = entries_.find({r.addr, r.len});
  if (it != entries_.end() && --it->second.users == 0) {
    dev_->deregister(it->second.region);
    entries_.erase(it);
  }
}

Channel::Channel(Device* dev, uint32_t tag, const ChannelOptions& options, Status* st)
    : dev_(dev), tag_(tag), opt_(options), regs_(dev) {
  *st = Status::kInvalidArgument;
  if (tag >= (1u << 24) || opt_.slot_bytes < kHeader + kMaxHead + 64 || opt_.slots < 4 || opt_.ring_bytes < opt_.max_piece || opt_.max_piece == 0 ||
      opt_.max_send < 2) {
    return;
  }
  qp_ = dev_->create_qp(opt_.max_send, opt_.slots, st);
  if (*st != Status::kOk) return;
  recv_buf_.resize(static_cast<size_t>(opt_.slots) * opt_.slot_bytes);
  send_buf_.resize(static_cast<size_t>(opt_.max_send) * opt_.slot_bytes);
  ring_.resize(opt_.ring_bytes);
  if ((*st = dev_->register_memory(recv_buf_.data(), recv_buf_.size(), Access::kLocal, &recv_mr_)) != Status::kOk) return;
  if ((*st = dev_->register_memory(send_buf_.data(), send_buf_.size(), Access::kLocal, &send_mr_)) != Status::kOk) return;
  // Only the ring is open to the peer's WRITEs.
  if ((*st = dev_->register_memory(ring_.data(), ring_.size(), Access::kRemoteWrite, &ring_mr_)) != Status::kOk) return;
  for (uint32_t i = 0; i < opt_.max_send; i++) free_send_slots_.push_back(opt_.max_send - 1 - i);
  for (uint32_t i = 0; i < opt_.slots; i++) {
    if ((*st = qp_->post_recv(wr(kRecvSlot, i), recv_mr_, static_cast<size_t>(i) * opt_.slot_bytes, opt_.slot_bytes)) != Status::kOk) return;
  }
}

Channel::~Channel() {
  qp_.reset();  // the adapter reads nothing of ours after this
  for (auto& m : queue_) {
    if (m->own_reg) regs_.release(m->mr);
  }
  if (ring_mr_.addr) dev_->deregister(ring_mr_);
  if (send_mr_.addr) dev_->deregister(send_mr_);
  if (recv_mr_.addr) dev_->deregister(recv_mr_);
}

ChannelSetup Channel::local() const {
  ChannelSetup s;
  if (qp_) s.endpoint = qp_->local();
  s.ring_addr = reinterpret_cast<uint64_t>(ring_mr_.addr);
  s.ring_rkey = ring_mr_.rkey;
  s.ring_bytes = opt_.ring_bytes;
  s.slots = opt_.slots;
  s.slot_bytes = opt_.slot_bytes;
  return s;
}

Status Channel::connect(const ChannelSetup& peer) {
  if (!qp_ || peer.slots < 4 || peer.slot_bytes < kHeader + kMaxHead + 64 || peer.ring_bytes < opt_.max_piece) return Status::kInvalidArgument;
  if (Status st = qp_->connect(peer.endpoint); st != Status::kOk) return st;
  peer_ = peer;
  ring_bytes_peer_ = peer.ring_bytes;
  slot_credits_ = peer.slots;
  ring_credits_ = peer.ring_bytes;
  connected_ = true;
  pump();
  return Status::kOk;
}

void Channel::send(uint64_t id, const uint8_t* head, size_t head_len, const uint8_t* body, size_t len, const Region* mr) {
  auto out = std::make_unique<Out>();
  out->id = id;
  out->data = body;
  out->len = len;
  out->head_len = static_cast<uint8_t>(std::min(head_len, kMaxHead));
  if (head_len) std::memcpy(out->head, head, out->head_len);
  if (mr) out->mr = *mr;
  queue_.push_back(std::move(out));
  pump();
}

void Channel::hold_credits(bool hold) {
  hold_ = hold;
  if (!hold && (owed_slots_ || owed_ring_)) {
    post_header(kCredit, 0, nullptr, nullptr, 0, nullptr, 0);
    pump();
  }
}

// A SEND from a staging slot: the header (with the credits we owe) and a
// small payload. Data keeps one receive credit back for credit messages.
bool Channel::post_header(Msg kind, uint64_t value, Out* msg, const uint8_t* head, size_t head_len, const uint8_t* payload, size_t len) {
  const uint32_t reserve = kind == kCredit ? 0 : 1;
  if (failed_ || slot_credits_ <= reserve || free_send_slots_.empty() || outstanding_ >= opt_.max_send) return false;
  const uint32_t slot = free_send_slots_.back();
  free_send_slots_.pop_back();
  uint8_t* p = send_buf_.data() + static_cast<size_t>(slot) * opt_.slot_bytes;
  std::memset(p, 0, kHeader);
  p[0] = kind;
  p[1] = static_cast<uint8_t>(head_len);
  // Credits held back (receiver back-pressure) stay owed.
  put32(p + 4, hold_ ? 0 : owed_slots_);
  put64(p + 8, hold_ ? 0 : owed_ring_);
  put64(p + 16, value);
  if (head_len) std::memcpy(p + kHeader, head, head_len);
  if (len) std::memcpy(p + kHeader + head_len, payload, len);
  if (qp_->post_send(wr(kSendSlot, slot), send_mr_, static_cast<size_t>(slot) * opt_.slot_bytes, kHeader + head_len + len) !=
      Status::kOk) {
    free_send_slots_.push_back(slot);
    fail(WcStatus::kLocalError);
    return false;
  }
  if (!hold_) {
    owed_slots_ = 0;
    owed_ring_ = 0;
  }
  slot_credits_--;
  outstanding_++;
  send_slot_msg_[slot] = msg;
  if (msg) msg->requests++;
  return true;
}

void Channel::pump() {
  if (!connected_ || failed_) return;
  const size_t small_max = std::min(opt_.slot_bytes, peer_.slot_bytes) - kHeader;
  const size_t piece_max = std::min<size_t>(opt_.max_piece, ring_bytes_peer_ / 2);
  for (auto& up : queue_) {
    Out* m = up.get();
    if (m->head_len + m->len <= small_max) {
      if (m->begun) continue;
      if (!post_header(kSmall, m->len, m, m->head, m->head_len, m->data, m->len)) return;
      m->begun = true;
      m->sent = m->len;
      continue;
    }
    if (m->sent == m->len) continue;
    if (!m->mr.addr) {
      if (regs_.get(m->data, m->len, &m->mr) != Status::kOk) {
        fail(WcStatus::kLocalError);
        return;
      }
      m->own_reg = true;
    }
    if (!m->begun) {
      if (!post_header(kLargeBegin, m->len, m, m->head, m->head_len, nullptr, 0)) return;
      m->begun = true;
    }
    const Region& r = m->mr;
    while (m->sent < m->len) {
      const size_t piece = std::min(piece_max, m->len - m->sent);
      const size_t pos = place(peer_ring_pos_, piece);
      const size_t waste = (pos == 0 && peer_ring_pos_ != 0) ? ring_bytes_peer_ - peer_ring_pos_ : 0;
      if (slot_credits_ <= 1 || ring_credits_ < piece + waste || outstanding_ >= opt_.max_send) return;
      const uint32_t index = next_write_++;
      const size_t offset = static_cast<size_t>(m->data - r.addr) + m->sent;
      if (qp_->post_write_imm(wr(kWrite, index), r, offset, piece, peer_.ring_addr + pos, peer_.ring_rkey, static_cast<uint32_t>(piece)) !=
          Status::kOk) {
        fail(WcStatus::kLocalError);
        return;
      }
      write_msg_[index] = m;
      m->requests++;
      outstanding_++;
      slot_credits_--;
      ring_credits_ -= piece + waste;
      peer_ring_pos_ = pos + piece;
      m->sent += piece;
    }
  }
}

void Channel::repost(uint32_t slot) {
  if (qp_->post_recv(wr(kRecvSlot, slot), recv_mr_, static_cast<size_t>(slot) * opt_.slot_bytes, opt_.slot_bytes) != Status::kOk) {
    fail(WcStatus::kLocalError);
  }
}

void Channel::fail(WcStatus s) {
  if (failed_) return;
  failed_ = true;
  failure_ = s;
  large_total_ = 0;
  large_.clear();
}

void Channel::deliver(const uint8_t* head, size_t head_len, const uint8_t* body, size_t len) {
  if (on_message_) {
    on_message_(head, head_len, body, len);
    return;
  }
  Bytes b(head, head + head_len);
  b.insert(b.end(), body, body + len);
  received_.push_back(std::move(b));
}

void Channel::consume(uint64_t wr_id, const Completion& c) {
  const auto kind = static_cast<Kind>((wr_id >> 32) & 0xff);
  const auto index = static_cast<uint32_t>(wr_id);
  if (kind == kRecvSlot) {
    if (c.opcode == WcOpcode::kRecvImm) {
      // A piece of the large message in progress, in our ring.
      const size_t len = c.byte_len;
      const size_t pos = (ring_pos_ + len <= opt_.ring_bytes) ? ring_pos_ : 0;
      const size_t waste = (pos == 0 && ring_pos_ != 0) ? opt_.ring_bytes - ring_pos_ : 0;
      if (large_total_ == 0 || c.imm != len || len == 0 || large_have_ + len > large_total_ || len > opt_.ring_bytes) {
        fail(WcStatus::kLocalError);  // a piece nobody announced: a broken peer
        return;
      }
      const uint8_t* piece = ring_.data() + pos;
      ring_pos_ = pos + len;
      large_have_ += len;
      if (large_have_ == len && len == large_total_) {
        // One piece: hand it over from the ring, no copy here.
        large_total_ = 0;
        deliver(large_head_, large_head_len_, piece, len);
      } else {
        large_.insert(large_.end(), piece, piece + len);
        if (large_have_ == large_total_) {
          large_total_ = 0;
          Bytes whole;
          whole.swap(large_);
          deliver(large_head_, large_head_len_, whole.data(), whole.size());
        }
      }
      // The piece's ring space is the peer's again once the next header goes.
      owed_ring_ += len + waste;
    } else {
      const uint8_t* p = recv_buf_.data() + static_cast<size_t>(index) * opt_.slot_bytes;
      const size_t head_len = c.byte_len >= kHeader ? p[1] : 0;
      if (c.byte_len < kHeader || head_len > kMaxHead || c.byte_len < kHeader + head_len) {
        fail(WcStatus::kLocalError);
        return;
      }
      slot_credits_ += get32(p + 4);
      ring_credits_ += get64(p + 8);
      const uint64_t value = get64(p + 16);
      const uint8_t* head = p + kHeader;
      switch (p[0]) {
        case kSmall:
          if (value != c.byte_len - kHeader - head_len) {
            fail(WcStatus::kLocalError);
            return;
          }
          deliver(head, head_len, head + head_len, value);
          break;
        case kLargeBegin:
          if (large_total_ != 0 || value == 0 || value > opt_.max_message || c.byte_len != kHeader + head_len) {
            fail(WcStatus::kLocalError);
            return;
          }
          large_total_ = value;
          large_have_ = 0;
          large_.clear();
          std::memcpy(large_head_, head, head_len);
          large_head_len_ = head_len;
          break;
        case kCredit:
          break;
        default:
          fail(WcStatus::kLocalError);
          return;
      }
    }
    owed_slots_++;
    repost(index);
    return;
  }
  // One of our sends finished: the peer's adapter has the bytes.
  outstanding_--;
  Out* m = nullptr;
  if (kind == kSendSlot) {
    auto it = send_slot_msg_.find(index);
    if (it != send_slot_msg_.end()) {
      m = it->second;
      send_slot_msg_.erase(it);
    }
    free_send_slots_.push_back(index);
  } else {
    auto it = write_msg_.find(index);
    if (it != write_msg_.end()) {
      m = it->second;
      write_msg_.erase(it);
    }
  }
  if (m) m->requests--;
  while (!queue_.empty()) {
    Out* f = queue_.front().get();
    if (!f->begun || f->sent != f->len || f->requests != 0) break;
    if (f->own_reg) regs_.release(f->mr);
    done_.push_back(f->id);
    queue_.pop_front();
  }
}

void Channel::on_completion(const Completion& c) {
  if (c.status != WcStatus::kSuccess) {
    fail(c.status);
    return;
  }
  if (failed_) return;
  consume(c.wr_id, c);
  if (failed_) return;
  // Tell the peer what it may send again before it runs dry.
  if (!hold_ && (owed_slots_ >= opt_.slots / 2 || owed_ring_ >= opt_.ring_bytes / 2)) post_header(kCredit, 0, nullptr, nullptr, 0, nullptr, 0);
  pump();
}

std::vector<Bytes> Channel::take_received() {
  std::vector<Bytes> out;
  out.swap(received_);
  return out;
}

std::vector<uint64_t> Channel::take_done() {
  std::vector<uint64_t> out;
  out.swap(done_);
  return out;
}

std::vector<uint64_t> Channel::unfinished() const {
  std::vector<uint64_t> ids;
  for (const auto& m : queue_) ids.push_back(m->id);
  return ids;
}

}  // namespace dwcp::transport::rdma
