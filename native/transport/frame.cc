#include "transport/frame.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>

#include "util/crc32c.h"

namespace dwcp::transport {
namespace {

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
// Little-endian loads as single loads: the byte-by-byte form compiles to a
// chain of byte loads and shifts, and check_pack walks a chain of lengths
// where each load's address depends on the one before.
template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  if constexpr (sizeof v == 2) v = __builtin_bswap16(v);
  else if constexpr (sizeof v == 4) v = __builtin_bswap32(v);
  else v = __builtin_bswap64(v);
#endif
  return v;
}
uint16_t get16(const uint8_t* p) { return load_le<uint16_t>(p); }
uint32_t get32(const uint8_t* p) { return load_le<uint32_t>(p); }
uint64_t get64(const uint8_t* p) { return load_le<uint64_t>(p); }

}  // namespace

// HELLO: magic u32, version u8, reserved u8, stream index u16, stream count
// u16, chunk shift u8, reserved u8 + u32, connection id [16], reserved u32,
// header CRC32C u32 (of bytes 0..35).
void write_hello(const Hello& h, uint8_t out[kHelloSize]) {
  std::memset(out, 0, kHelloSize);
  put32(out, kHelloMagic);
  out[4] = kWireVersion;
  put16(out + 6, h.stream_index);
  put16(out + 8, h.stream_count);
  out[10] = h.chunk_shift;
  std::memcpy(out + 16, h.connection_id, 16);
  put32(out + 36, crc32c(0, out, 36));
}

Status parse_hello(const uint8_t in[kHelloSize], Hello* h) {
  if (get32(in) != kHelloMagic) return Status::kBadMagic;
  if (get32(in + 36) != crc32c(0, in, 36)) return Status::kHeaderChecksum;
  if (in[4] != kWireVersion) return Status::kUnsupportedVersion;
  if (in[5] != 0 || in[11] != 0 || get32(in + 12) != 0 || get32(in + 32) != 0) return Status::kCorrupt;
  Hello r;
  r.stream_index = get16(in + 6);
  r.stream_count = get16(in + 8);
  r.chunk_shift = in[10];
  std::memcpy(r.connection_id, in + 16, 16);
  if (r.stream_count == 0 || r.stream_index >= r.stream_count) return Status::kCorrupt;
  if (r.chunk_shift < kMinChunkShift || r.chunk_shift > kMaxChunkShift) return Status::kCorrupt;
  *h = r;
  return Status::kOk;
}

// Chunk header: type u8, chunk shift u8, reserved u16, payload length u32,
// message id u64, offset u64, message length u64, payload CRC32C u32,
// header CRC32C u32 (of bytes 0..35).
void write_chunk_header(const ChunkHeader& h, uint8_t out[kChunkHeaderSize]) {
  out[0] = static_cast<uint8_t>(h.type);
  out[1] = h.type == ChunkType::kData ? h.chunk_shift : 0;
  out[2] = h.type == ChunkType::kData ? h.flags : 0;
  out[3] = 0;
  put32(out + 4, h.payload_len);
  put64(out + 8, h.message_id);
  put64(out + 16, h.offset);
  put64(out + 24, h.message_len);
  put32(out + 32, h.payload_crc);
  put32(out + 36, crc32c(0, out, 36));
}

Status parse_chunk_header(const uint8_t in[kChunkHeaderSize], const Limits& limits, ChunkHeader* h) {
  if (get32(in + 36) != crc32c(0, in, 36)) return Status::kHeaderChecksum;
  if (in[3] != 0) return Status::kCorrupt;
  ChunkHeader r;
  r.type = static_cast<ChunkType>(in[0]);
  r.chunk_shift = in[1];
  r.flags = in[2];
  if ((r.flags & ~kFlagPacked) != 0 || (r.flags != 0 && r.type != ChunkType::kData)) return Status::kCorrupt;
  r.payload_len = get32(in + 4);
  r.message_id = get64(in + 8);
  r.offset = get64(in + 16);
  r.message_len = get64(in + 24);
  r.payload_crc = get32(in + 32);
  switch (r.type) {
    case ChunkType::kData: {
      if (r.chunk_shift < kMinChunkShift || r.chunk_shift > kMaxChunkShift) return Status::kCorrupt;
      if (r.message_len == 0) return Status::kCorrupt;
      if (r.message_len > limits.max_message) return Status::kLimitExceeded;
      if ((r.flags & kFlagPacked) && r.message_len > kPackMax) return Status::kCorrupt;
      const uint64_t chunk = 1ull << r.chunk_shift;
      // Chunks sit on the message's chunk grid and are full but for the last.
      if (r.offset % chunk != 0 || r.offset >= r.message_len) return Status::kCorrupt;
      const uint64_t expect = r.message_len - r.offset < chunk ? r.message_len - r.offset : chunk;
      if (r.payload_len != expect) return Status::kCorrupt;
      break;
    }
    case ChunkType::kAck:
      if (r.chunk_shift || r.payload_len || r.offset || r.payload_crc) return Status::kCorrupt;
      if (r.message_len == 0 || r.message_len > kMaxAckRange || r.message_id + r.message_len < r.message_id) {
        return Status::kCorrupt;
      }
      break;
    case ChunkType::kProgress:
      if (r.chunk_shift || r.payload_len || r.payload_crc || r.offset > r.message_len) return Status::kCorrupt;
      break;
    case ChunkType::kClose:
    case ChunkType::kRetire:
      if (r.chunk_shift || r.payload_len || r.offset || r.message_len || r.payload_crc) return Status::kCorrupt;
      break;
    case ChunkType::kPing:
    case ChunkType::kPong:
      if (r.chunk_shift || r.payload_len > 64 || r.offset || r.message_len) return Status::kCorrupt;
      break;
    case ChunkType::kRdma:
      if (r.chunk_shift || r.message_len || r.offset < 1 || r.offset > 5 || r.payload_len > kMaxLanes * kLaneSetupSize ||
          r.payload_len % kLaneSetupSize != 0) {
        return Status::kCorrupt;
      }
      break;
    default:
      return Status::kCorrupt;
  }
  *h = r;
  return Status::kOk;
}

StreamReader::StreamReader(Limits limits, bool expect_hello, OnHello on_hello, OnChunk on_chunk, Place place)
    : limits_(limits),
      need_hello_(expect_hello),
      on_hello_(std::move(on_hello)),
      on_chunk_(std::move(on_chunk)),
      place_(std::move(place)) {}

Status StreamReader::finish_payload(const uint8_t* payload) {
  last_placed_ = direct_ != nullptr;
  const Status st = crc32c(0, payload, header_.payload_len) != header_.payload_crc ? Status::kPayloadChecksum
                                                                                     : on_chunk_(header_, payload);
  have_header_ = false;
  direct_ = nullptr;
  direct_have_ = 0;
  return st;
}

bool StreamReader::direct_window(uint8_t** dst, size_t* len) const {
  if (error_ != Status::kOk || !direct_) return false;
  *dst = direct_ + direct_have_;
  *len = header_.payload_len - direct_have_;
  return true;
}

Status StreamReader::direct_filled(size_t n) {
  direct_have_ += n;
  if (direct_have_ == header_.payload_len) error_ = finish_payload(direct_);
  return error_;
}

void StreamReader::detach_if_within(const uint8_t* base, size_t len) {
  if (!direct_ || direct_ < base || direct_ >= base + len) return;
  buf_.assign(direct_, direct_ + direct_have_);
  direct_ = nullptr;
  direct_have_ = 0;
}

Status StreamReader::feed(const uint8_t* data, size_t len) {
  while (error_ == Status::kOk && len > 0) {
    if (direct_) {
      const size_t take = std::min<size_t>(len, header_.payload_len - direct_have_);
      std::memcpy(direct_ + direct_have_, data, take);
      data += take;
      len -= take;
      (void)direct_filled(take);
      continue;
    }
    size_t want;
    if (need_hello_) want = kHelloSize;
    else if (!have_header_) want = kChunkHeaderSize;
    else want = header_.payload_len;
    // Whole units straight from the input when nothing is buffered.
    const uint8_t* unit = nullptr;
    if (buf_.empty() && len >= want) {
      unit = data;
      data += want;
      len -= want;
    } else {
      const size_t take = want - buf_.size() < len ? want - buf_.size() : len;
      buf_.insert(buf_.end(), data, data + take);
      data += take;
      len -= take;
      if (buf_.size() < want) break;
      unit = buf_.data();
    }
    if (need_hello_) {
      Hello h;
      error_ = parse_hello(unit, &h);
      if (error_ == Status::kOk) error_ = on_hello_(h);
      need_hello_ = false;
    } else if (!have_header_) {
      error_ = parse_chunk_header(unit, limits_, &header_);
      have_header_ = error_ == Status::kOk && header_.payload_len > 0;
      if (error_ == Status::kOk && !have_header_) {
        // An empty payload's CRC32C is 0.
        error_ = header_.payload_crc == 0 ? on_chunk_(header_, nullptr) : Status::kPayloadChecksum;
      } else if (have_header_ && place_ && header_.type == ChunkType::kData && header_.payload_len >= kDirectMin) {
        error_ = place_(header_, &direct_);
      }
    } else {
      error_ = finish_payload(unit);
    }
    buf_.clear();
  }
  return error_;
}

void write_lane_setups(const std::vector<LaneSetup>& lanes, std::vector<uint8_t>* out) {
  out->assign(lanes.size() * kLaneSetupSize, 0);
  for (size_t i = 0; i < lanes.size(); i++) {
    uint8_t* p = out->data() + i * kLaneSetupSize;
    const LaneSetup& l = lanes[i];
    put32(p, l.endpoint.qpn);
    put32(p + 4, l.endpoint.psn);
    put16(p + 8, l.endpoint.lid);
    std::memcpy(p + 12, l.endpoint.gid, 16);
    put32(p + 28, l.endpoint.mtu);
    put64(p + 32, l.ring_addr);
    put32(p + 40, l.ring_rkey);
    put32(p + 44, l.ring_bytes);
    put32(p + 48, l.slots);
    put32(p + 52, l.slot_bytes);
  }
}

Status parse_lane_setups(const uint8_t* data, size_t len, std::vector<LaneSetup>* out) {
  if (len == 0 || len % kLaneSetupSize != 0 || len / kLaneSetupSize > kMaxLanes) return Status::kCorrupt;
  std::vector<LaneSetup> lanes(len / kLaneSetupSize);
  for (size_t i = 0; i < lanes.size(); i++) {
    const uint8_t* p = data + i * kLaneSetupSize;
    LaneSetup& l = lanes[i];
    l.endpoint.qpn = get32(p);
    l.endpoint.psn = get32(p + 4) & 0xffffff;  // PSNs are 24 bits
    l.endpoint.lid = get16(p + 8);
    std::memcpy(l.endpoint.gid, p + 12, 16);
    l.endpoint.mtu = get32(p + 28);
    l.ring_addr = get64(p + 32);
    l.ring_rkey = get32(p + 40);
    l.ring_bytes = get32(p + 44);
    l.slots = get32(p + 48);
    l.slot_bytes = get32(p + 52);
    const bool mtu_ok = l.endpoint.mtu == 256 || l.endpoint.mtu == 512 || l.endpoint.mtu == 1024 || l.endpoint.mtu == 2048 || l.endpoint.mtu == 4096;
    if (l.endpoint.qpn == 0 || l.endpoint.qpn > 0xffffff || !mtu_ok || l.slots < 4 || l.slots > 4096 || l.slot_bytes < 256 || l.slot_bytes > 65536 ||
        l.ring_bytes < (64u << 10) || l.ring_bytes > (1u << 30) || l.ring_addr == 0 || l.ring_addr + l.ring_bytes < l.ring_addr) {
      return Status::kCorrupt;
    }
  }
  *out = std::move(lanes);
  return Status::kOk;
}

Status check_pack(const uint8_t* data, size_t len, uint32_t* count) {
  if (len < 4) return Status::kCorrupt;
  const uint32_t n = get32(data);
  size_t at = 4;
  for (uint32_t i = 0; i < n; i++) {
    if (len - at < 4) return Status::kCorrupt;
    const uint32_t m = get32(data + at);
    at += 4;
    if (m > len - at) return Status::kCorrupt;
    at += m;
  }
  if (n == 0 || at != len) return Status::kCorrupt;
  *count = n;
  return Status::kOk;
}

BufferPool& BufferPool::shared() {
  static BufferPool* pool = new BufferPool(128u << 20);
  return *pool;
}

size_t BufferPool::size_class(size_t n) {
  if (n < kMinSize) return n;
  const unsigned top = 63 - static_cast<unsigned>(__builtin_clzll(n));
  const size_t step = size_t{1} << (top - 3);
  return (n + step - 1) & ~(step - 1);
}

Bytes BufferPool::take(size_t n) {
  Bytes b;
  if (n >= kMinSize) {
    const size_t cls = size_class(n);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        b = std::move(it->second.back());
        it->second.pop_back();
        pooled_ -= cls;
      }
    }
    if (b.capacity() < cls) b.reserve(cls);
  }
  b.resize(n);
  return b;
}

void BufferPool::give(Bytes&& b) {
  const size_t cls = b.capacity();
  if (cls < kMinSize || size_class(cls) != cls) return;  // not one of ours: freed with `b`
  Bytes keep = std::move(b);
  std::lock_guard<std::mutex> lock(mu_);
  if (pooled_ + cls > max_bytes_) return;  // `keep` is freed after the lock is released
  keep.clear();
  pooled_ += cls;
  free_[cls].push_back(std::move(keep));
}

size_t BufferPool::pooled_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pooled_;
}

Reassembler::~Reassembler() {
  if (!lender_) return;
  for (auto& [id, p] : partial_) {
    if (p.data.lent) lender_->give(p.data.slab);
  }
  for (auto& [id, h] : held_) {
    if (h.data.lent) lender_->give(h.data.slab);
  }
}

bool Reassembler::allocate(size_t n, MessageBuf* out) noexcept {
  try {
    MessageBuf b;
    if (lender_ && n >= BufferPool::kMinSize) b.lent = lender_->take(n, &b.slab);
    if (!b.lent) b.own = BufferPool::shared().take(n);
    *out = std::move(b);
    return true;
  } catch (const std::bad_alloc&) {
    return false;
  } catch (const std::length_error&) {
    return false;
  }
}

Status Reassembler::find_or_start(const ChunkHeader& h, Partial** out) {
  const uint64_t chunks = (h.message_len + (1ull << h.chunk_shift) - 1) >> h.chunk_shift;
  auto it = partial_.find(h.message_id);
  if (it == partial_.end()) {
    if (pending_bytes_ + h.message_len > limits_.max_pending_bytes) return Status::kLimitExceeded;
    Partial p;
    if (!allocate(h.message_len, &p.data)) return Status::kLimitExceeded;
    try {
      p.have.assign((chunks + 63) / 64, 0);
    } catch (const std::bad_alloc&) {
      return Status::kLimitExceeded;
    }
    p.chunks = chunks;
    p.chunk_shift = h.chunk_shift;
    p.flags = h.flags;
    pending_bytes_ += h.message_len;
    it = partial_.emplace(h.message_id, std::move(p)).first;
  }
  // Every chunk of one message must agree on its shape.
  if (it->second.chunk_shift != h.chunk_shift || it->second.data.bytes().size() != h.message_len || it->second.flags != h.flags) {
    return Status::kCorrupt;
  }
  *out = &it->second;
  return Status::kOk;
}

// A small message of one chunk is copied whole by add(), with no partial
// state; reserve() must not start any for it either, or it would never end.
bool Reassembler::whole_at_once(const ChunkHeader& h) {
  return h.payload_len == h.message_len && h.payload_len < StreamReader::kDirectMin;
}

Status Reassembler::reserve(const ChunkHeader& h, uint8_t** dst) {
  *dst = nullptr;
  if (h.type != ChunkType::kData || complete(h.message_id) || whole_at_once(h)) return Status::kOk;
  Partial* p;
  if (Status st = find_or_start(h, &p); st != Status::kOk) return st;
  const uint64_t idx = h.offset >> h.chunk_shift;
  if (!(p->have[idx / 64] & (1ull << (idx % 64)))) *dst = p->data.bytes().data() + h.offset;
  return Status::kOk;
}

std::pair<const uint8_t*, size_t> Reassembler::partial_buffer(uint64_t id) const {
  auto it = partial_.find(id);
  if (it == partial_.end()) return {nullptr, 0};
  return {it->second.data.bytes().data(), it->second.data.bytes().size()};
}

Status Reassembler::add(const ChunkHeader& h, const uint8_t* payload, bool* completed,
                        std::vector<Received>* ready, bool* duplicate,
                        uint64_t* progress) {
  *completed = false;
  *duplicate = false;
  if (progress) *progress = 0;
  if (h.type != ChunkType::kData) return Status::kInvalidArgument;
  if (complete(h.message_id)) {
    *duplicate = true;
    return Status::kOk;
  }
  MessageBuf whole;
  if (whole_at_once(h)) {
    // The common small message. A larger one of one chunk goes the partial
    // way, where reserve() may have had it read in place.
    if (pending_bytes_ + h.message_len > limits_.max_pending_bytes) return Status::kLimitExceeded;
    if (!allocate(h.payload_len, &whole)) return Status::kLimitExceeded;
    if (h.payload_len) std::memcpy(whole.bytes().data(), payload, h.payload_len);
  } else {
    Partial* pp;
    if (Status st = find_or_start(h, &pp); st != Status::kOk) return st;
    Partial& p = *pp;
    const uint64_t idx = h.offset >> h.chunk_shift;
    uint64_t& word = p.have[idx / 64];
    const uint64_t bit = 1ull << (idx % 64);
    if (word & bit) {
      *duplicate = true;
      return Status::kOk;
    }
    word |= bit;
    uint8_t* place = p.data.bytes().data() + h.offset;
    if (payload != place) std::memcpy(place, payload, h.payload_len);  // read in place otherwise
    p.bytes += h.payload_len;
    if (++p.received < p.chunks) {
      if (progress && p.bytes - p.reported >= h.message_len / 16) {
        p.reported = p.bytes;
        *progress = p.bytes;
      }
      return Status::kOk;
    }
    whole = std::move(p.data);
    pending_bytes_ -= h.message_len;
    partial_.erase(h.message_id);
  }
  *completed = true;
  if (h.message_id != next_) {
    if (held_.size() >= limits_.max_out_of_order) {
      if (whole.lent) lender_->give(whole.slab);
      return Status::kLimitExceeded;
    }
    pending_bytes_ += whole.bytes().size();
    held_.emplace(h.message_id, Held{std::move(whole), h.flags});
    return Status::kOk;
  }
  ready->push_back(Received{next_++, std::move(whole), h.flags});
  for (auto it = held_.begin(); it != held_.end() && it->first == next_; it = held_.erase(it)) {
    pending_bytes_ -= it->second.data.bytes().size();
    ready->push_back(Received{next_++, std::move(it->second.data), it->second.flags});
  }
  return Status::kOk;
}

}  // namespace dwcp::transport
