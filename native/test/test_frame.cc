// AMST framing: round trips, every field check, arbitrary stream splits,
// and reassembly from shuffled, duplicated chunks.
#include <algorithm>
#include <cstring>

#include "fixed_lender.h"
#include "test.h"
#include "transport/frame.h"
#include "util/crc32c.h"

using namespace dwcp;
using namespace dwcp::transport;
namespace test = dwcp::test;

namespace {

// Cuts `msg` into DATA chunks (header + payload bytes each).
std::vector<std::vector<uint8_t>> chunks_of(const std::vector<uint8_t>& msg, uint64_t id, unsigned shift) {
  std::vector<std::vector<uint8_t>> out;
  const uint64_t chunk = 1ull << shift;
  for (uint64_t off = 0; off < msg.size(); off += chunk) {
    ChunkHeader h;
    h.type = ChunkType::kData;
    h.chunk_shift = static_cast<uint8_t>(shift);
    h.message_id = id;
    h.offset = off;
    h.message_len = msg.size();
    h.payload_len = static_cast<uint32_t>(std::min<uint64_t>(chunk, msg.size() - off));
    h.payload_crc = crc32c(0, msg.data() + off, h.payload_len);
    std::vector<uint8_t> c(kChunkHeaderSize);
    write_chunk_header(h, c.data());
    c.insert(c.end(), msg.begin() + static_cast<long>(off), msg.begin() + static_cast<long>(off + h.payload_len));
    out.push_back(std::move(c));
  }
  return out;
}

// An on-chunk callback that adds each chunk to `re` and moves every message
// it delivers to `out`.
StreamReader::OnChunk adder(Reassembler& re, std::vector<Bytes>& out) {
  return [&re, &out](const ChunkHeader& h, const uint8_t* p) {
    bool done, dup;
    std::vector<Received> ready;
    Status s = re.add(h, p, &done, &ready, &dup);
    for (auto& r : ready) out.push_back(std::move(r.data.own));
    return s;
  };
}

}  // namespace

TEST(frame_hello_round_trip_and_checks) {
  Hello h;
  h.stream_index = 3;
  h.stream_count = 8;
  h.chunk_shift = 20;
  for (int i = 0; i < 16; i++) h.connection_id[i] = static_cast<uint8_t>(i * 7);
  uint8_t buf[kHelloSize];
  write_hello(h, buf);
  Hello r;
  CHECK(parse_hello(buf, &r) == Status::kOk);
  CHECK(r.stream_index == 3 && r.stream_count == 8 && r.chunk_shift == 20);
  CHECK(std::memcmp(r.connection_id, h.connection_id, 16) == 0);
  for (size_t i = 0; i < kHelloSize; i++) {
    uint8_t bad[kHelloSize];
    std::memcpy(bad, buf, kHelloSize);
    bad[i] ^= 0x10;
    CHECK(parse_hello(bad, &r) != Status::kOk);  // every bit is covered
  }
  h.stream_index = 8;  // index must be below count
  write_hello(h, buf);
  CHECK(parse_hello(buf, &r) == Status::kCorrupt);
}

TEST(frame_chunk_header_checks) {
  Limits lim;
  lim.max_message = 1 << 20;
  ChunkHeader h;
  h.type = ChunkType::kData;
  h.chunk_shift = 12;
  h.message_id = 9;
  h.offset = 8192;
  h.message_len = 10000;
  h.payload_len = 10000 - 8192;
  uint8_t buf[kChunkHeaderSize];
  write_chunk_header(h, buf);
  ChunkHeader r;
  CHECK(parse_chunk_header(buf, lim, &r) == Status::kOk);
  CHECK(r.offset == 8192 && r.payload_len == 1808 && r.message_id == 9);
  auto status_of = [&](ChunkHeader x) {
    write_chunk_header(x, buf);
    return parse_chunk_header(buf, lim, &r);
  };
  ChunkHeader x = h;
  x.offset = 100;  // off the chunk grid
  CHECK(status_of(x) == Status::kCorrupt);
  x = h;
  x.payload_len = 1000;  // not the exact remaining length
  CHECK(status_of(x) == Status::kCorrupt);
  x = h;
  x.message_len = (1 << 20) + 1;
  x.offset = 0;
  x.payload_len = 4096;
  CHECK(status_of(x) == Status::kLimitExceeded);
  x = h;
  x.chunk_shift = 30;
  CHECK(status_of(x) == Status::kCorrupt);
  x = ChunkHeader{};
  x.type = ChunkType::kAck;
  x.chunk_shift = 0;
  x.message_id = 4;
  CHECK(status_of(x) == Status::kCorrupt);  // an ACK covers at least one message
  x.message_len = 3;
  CHECK(status_of(x) == Status::kOk);
  x.message_len = kMaxAckRange + 1;
  CHECK(status_of(x) == Status::kCorrupt);
  x.message_id = ~0ull - 1;
  x.message_len = 3;  // would wrap
  CHECK(status_of(x) == Status::kCorrupt);
  x.message_id = 4;
  x.message_len = 1;
  x.payload_len = 1;
  CHECK(status_of(x) == Status::kCorrupt);
  x = ChunkHeader{};
  x.type = ChunkType::kProgress;
  x.chunk_shift = 0;
  x.message_id = 2;
  x.offset = 100;
  x.message_len = 1000;
  CHECK(status_of(x) == Status::kOk);
  x.offset = 1001;
  CHECK(status_of(x) == Status::kCorrupt);
  x = ChunkHeader{};
  x.type = ChunkType::kRetire;
  x.chunk_shift = 0;
  CHECK(status_of(x) == Status::kOk);
  x.message_len = 1;
  CHECK(status_of(x) == Status::kCorrupt);
  x = ChunkHeader{};
  x.type = static_cast<ChunkType>(9);
  x.chunk_shift = 0;
  CHECK(status_of(x) == Status::kCorrupt);
  write_chunk_header(h, buf);
  buf[20] ^= 1;
  CHECK(parse_chunk_header(buf, lim, &r) == Status::kHeaderChecksum);
}

TEST(frame_stream_reader_any_split) {
  std::mt19937_64 rng(test::seed() + 20);
  std::vector<uint8_t> msg(50000);
  for (auto& b : msg) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> wire(kHelloSize);
  Hello hello;
  hello.chunk_shift = 13;
  write_hello(hello, wire.data());
  for (auto& c : chunks_of(msg, 0, 13)) wire.insert(wire.end(), c.begin(), c.end());
  ChunkHeader ack;
  ack.type = ChunkType::kAck;
  ack.chunk_shift = 0;
  ack.message_id = 77;
  ack.message_len = 1;
  wire.resize(wire.size() + kChunkHeaderSize);
  write_chunk_header(ack, wire.data() + wire.size() - kChunkHeaderSize);
  for (int trial = 0; trial < 200; trial++) {
    int hellos = 0, acks = 0;
    Reassembler re(Limits{});
    Bytes got;
    StreamReader reader(
        Limits{}, true, [&](const Hello&) { hellos++; return Status::kOk; },
        [&](const ChunkHeader& h, const uint8_t* p) {
          if (h.type == ChunkType::kAck) {
            acks += h.message_id == 77;
            return Status::kOk;
          }
          bool done, dup;
          std::vector<Received> ready;
          Status s = re.add(h, p, &done, &ready, &dup);
          for (auto& r : ready) got = std::move(r.data.own);
          return s;
        });
    size_t pos = 0;
    while (pos < wire.size()) {
      size_t n = trial == 0 ? 1 : 1 + rng() % 9000;
      n = std::min(n, wire.size() - pos);
      CHECK(reader.feed(wire.data() + pos, n) == Status::kOk);
      pos += n;
    }
    CHECK(hellos == 1 && acks == 1);
    CHECK(test::same_bytes(got, msg));
  }
  // A flipped payload byte is caught, and the reader then refuses everything.
  std::vector<uint8_t> bad = wire;
  bad[kHelloSize + kChunkHeaderSize + 5] ^= 1;
  StreamReader reader(Limits{}, true, [](const Hello&) { return Status::kOk; },
                      [](const ChunkHeader&, const uint8_t*) { return Status::kOk; });
  CHECK(reader.feed(bad.data(), bad.size()) == Status::kPayloadChecksum);
  CHECK(reader.feed(wire.data(), 10) == Status::kPayloadChecksum);
}

TEST(frame_reassembly_shuffled_and_duplicated) {
  std::mt19937_64 rng(test::seed() + 21);
  Reassembler re(Limits{});
  std::vector<std::vector<uint8_t>> msgs;
  std::vector<std::pair<ChunkHeader, std::vector<uint8_t>>> all;
  for (uint64_t id = 0; id < 20; id++) {
    std::vector<uint8_t> m(1 + rng() % 40000);
    for (auto& b : m) b = static_cast<uint8_t>(rng());
    for (auto& c : chunks_of(m, id, 12)) {
      ChunkHeader h;
      CHECK(parse_chunk_header(c.data(), Limits{}, &h) == Status::kOk);
      all.emplace_back(h, std::vector<uint8_t>(c.begin() + kChunkHeaderSize, c.end()));
      if (rng() % 4 == 0) all.emplace_back(h, std::vector<uint8_t>(c.begin() + kChunkHeaderSize, c.end()));
    }
    msgs.push_back(std::move(m));
  }
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<uint64_t> order;
  size_t dups = 0;
  for (auto& [h, p] : all) {
    bool done, dup;
    std::vector<Received> ready;
    CHECK(re.add(h, p.data(), &done, &ready, &dup) == Status::kOk);
    dups += dup;
    for (auto& r : ready) {
      CHECK(test::same_bytes(r.data.own, msgs[r.id]));
      order.push_back(r.id);
    }
  }
  CHECK_EQ(order.size(), 20u);
  for (uint64_t i = 0; i < order.size(); i++) CHECK_EQ(order[i], i);  // released in id order
  CHECK(dups > 0);
  CHECK_EQ(re.pending_messages(), 0u);
  CHECK_EQ(re.pending_bytes(), 0u);
}

TEST(frame_reassembly_limits) {
  Limits lim;
  lim.max_pending_bytes = 100000;
  Reassembler re(lim);
  std::vector<uint8_t> big(80000, 1), big2(80000, 2);
  auto c1 = chunks_of(big, 0, 12), c2 = chunks_of(big2, 1, 12);
  ChunkHeader h;
  bool done, dup;
  std::vector<Received> m;
  CHECK(parse_chunk_header(c1[0].data(), Limits{}, &h) == Status::kOk);
  CHECK(re.add(h, c1[0].data() + kChunkHeaderSize, &done, &m, &dup) == Status::kOk);
  CHECK(parse_chunk_header(c2[0].data(), Limits{}, &h) == Status::kOk);
  CHECK(re.add(h, c2[0].data() + kChunkHeaderSize, &done, &m, &dup) == Status::kLimitExceeded);
  // A chunk claiming a different length for a message in progress is corrupt.
  std::vector<uint8_t> other(90000, 3);
  auto c3 = chunks_of(other, 0, 12);
  CHECK(parse_chunk_header(c3[1].data(), Limits{}, &h) == Status::kOk);
  CHECK(re.add(h, c3[1].data() + kChunkHeaderSize, &done, &m, &dup) == Status::kCorrupt);
}

// Payloads read in place (as the engine does with readv), in random pieces,
// mixed with buffered feeding: every message comes out whole. Messages of
// one chunk are placed too from kDirectMin bytes on (32 KiB chunks here).
TEST(frame_reader_places_payloads_in_their_message) {
  std::mt19937_64 rng(test::seed() + 23);
  std::vector<std::vector<uint8_t>> msgs;
  std::vector<uint8_t> wire;
  const std::vector<size_t> sizes = {100000, 20000, 140000, 5000, 32768, 180000, StreamReader::kDirectMin, 220000,
                                     StreamReader::kDirectMin - 1, 300000};
  for (uint64_t id = 0; id < sizes.size(); id++) {
    msgs.push_back(std::vector<uint8_t>(sizes[id]));
    for (auto& b : msgs.back()) b = static_cast<uint8_t>(rng());
    for (auto& c : chunks_of(msgs.back(), id, 15)) wire.insert(wire.end(), c.begin(), c.end());
  }
  Reassembler re(Limits{});
  std::vector<Bytes> got;
  size_t placed_calls = 0;
  StreamReader reader(
      Limits{}, false, [](const Hello&) { return Status::kProtocol; }, adder(re, got),
      [&](const ChunkHeader& h, uint8_t** dst) {
        placed_calls++;
        return re.reserve(h, dst);
      });
  size_t pos = 0, direct_bytes = 0;
  while (pos < wire.size()) {
    uint8_t* dst;
    size_t room;
    const size_t n = std::min<size_t>(wire.size() - pos, 1 + rng() % 50000);
    if (reader.direct_window(&dst, &room)) {
      const size_t k = std::min(n, room);
      std::memcpy(dst, wire.data() + pos, k);  // as readv would
      CHECK(reader.direct_filled(k) == Status::kOk);
      direct_bytes += k;
      pos += k;
    } else {
      // Small pieces, so payloads mostly start in place; some run on.
      const size_t m = std::min<size_t>(wire.size() - pos, 1 + rng() % (rng() % 8 ? 60 : 40000));
      CHECK(reader.feed(wire.data() + pos, m) == Status::kOk);
      pos += m;
    }
  }
  CHECK_EQ(got.size(), msgs.size());
  for (size_t i = 0; i < msgs.size(); i++) CHECK(test::same_bytes(got[i], msgs[i]));
  CHECK(placed_calls > 0 && direct_bytes > wire.size() / 2);
  CHECK_EQ(re.pending_messages(), 0u);
  CHECK_EQ(re.pending_bytes(), 0u);
  // A one-chunk message in place, then a resent copy of it: one delivery.
  {
    Reassembler r1(Limits{});
    std::vector<Bytes> out;
    StreamReader one(
        Limits{}, false, [](const Hello&) { return Status::kProtocol; }, adder(r1, out),
        [&](const ChunkHeader& h, uint8_t** dst) { return r1.reserve(h, dst); });
    auto c = chunks_of(msgs[1], 0, 15);
    CHECK_EQ(c.size(), 1u);
    CHECK(one.feed(c[0].data(), kChunkHeaderSize) == Status::kOk);
    uint8_t* at;
    size_t room;
    CHECK(one.direct_window(&at, &room));
    CHECK_EQ(room, msgs[1].size());
    std::memcpy(at, c[0].data() + kChunkHeaderSize, room);
    CHECK(one.direct_filled(room) == Status::kOk);
    CHECK(one.feed(c[0].data(), c[0].size()) == Status::kOk);
    CHECK_EQ(out.size(), 1u);
    CHECK(test::same_bytes(out[0], msgs[1]));
    CHECK_EQ(r1.pending_bytes(), 0u);
  }
  // A small one-chunk message has no place (add() copies it whole): asking
  // starts no partial state that its add() would then leave behind.
  {
    Reassembler r2(Limits{});
    std::vector<Bytes> out;
    auto c = chunks_of(msgs[3], 0, 15);
    ChunkHeader h;
    CHECK(parse_chunk_header(c[0].data(), Limits{}, &h) == Status::kOk);
    uint8_t* at = reinterpret_cast<uint8_t*>(1);
    CHECK(r2.reserve(h, &at) == Status::kOk);
    CHECK(at == nullptr);
    CHECK_EQ(r2.pending_messages(), 0u);
    CHECK(adder(r2, out)(h, c[0].data() + kChunkHeaderSize) == Status::kOk);
    CHECK_EQ(out.size(), 1u);
    CHECK_EQ(r2.pending_messages(), 0u);
  }
  // A corrupted payload read in place is still caught by its CRC.
  Reassembler re2(Limits{});
  StreamReader bad(
      Limits{}, false, [](const Hello&) { return Status::kProtocol; },
      [&](const ChunkHeader&, const uint8_t*) { return Status::kOk; },
      [&](const ChunkHeader& h, uint8_t** dst) { return re2.reserve(h, dst); });
  auto chunks = chunks_of(msgs[0], 0, 15);
  CHECK(bad.feed(chunks[0].data(), kChunkHeaderSize) == Status::kOk);
  uint8_t* dst;
  size_t room;
  CHECK(bad.direct_window(&dst, &room));
  std::memcpy(dst, chunks[0].data() + kChunkHeaderSize, room);
  dst[7] ^= 1;
  CHECK(bad.direct_filled(room) == Status::kPayloadChecksum);
}

// Stream A is reading chunk 0 in place when stream B delivers the same
// chunk (a resend) and completes the message. A must stop writing into the
// delivered buffer: under ASan, a write after it is freed would fail here.
TEST(frame_reader_detaches_from_a_message_completed_elsewhere) {
  std::mt19937_64 rng(test::seed() + 24);
  std::vector<uint8_t> msg(3 * 32768);
  for (auto& b : msg) b = static_cast<uint8_t>(rng());
  auto chunks = chunks_of(msg, 0, 15);
  Reassembler re(Limits{});
  std::vector<Bytes> got;
  auto on_chunk = adder(re, got);
  auto place = [&](const ChunkHeader& h, uint8_t** dst) { return re.reserve(h, dst); };
  auto no_hello = [](const Hello&) { return Status::kProtocol; };
  StreamReader a(Limits{}, false, no_hello, on_chunk, place);
  StreamReader b(Limits{}, false, no_hello, on_chunk, place);
  CHECK(a.feed(chunks[0].data(), kChunkHeaderSize + 1000) == Status::kOk);
  uint8_t* dst;
  size_t room;
  CHECK(a.direct_window(&dst, &room));
  const auto [base, len] = re.partial_buffer(0);
  CHECK(base != nullptr);
  for (auto& c : chunks) CHECK(b.feed(c.data(), c.size()) == Status::kOk);
  CHECK_EQ(got.size(), 1u);
  a.detach_if_within(base, len);
  CHECK(!a.direct_window(&dst, &room));
  got.clear();  // the delivered message is gone
  CHECK(a.feed(chunks[0].data() + kChunkHeaderSize + 1000, chunks[0].size() - kChunkHeaderSize - 1000) == Status::kOk);
  CHECK(got.empty());  // a duplicate of a delivered message
}

TEST(buffer_pool_reuses_and_bounds) {
  // Size classes: exact below the pooled minimum, else an eighth of the power of two.
  CHECK_EQ(BufferPool::size_class(1000), 1000u);
  CHECK_EQ(BufferPool::size_class(64 * 1024), 64u * 1024);
  CHECK_EQ(BufferPool::size_class(64 * 1024 + 1), 72u * 1024);
  CHECK_EQ(BufferPool::size_class(4u << 20), 4u << 20);
  CHECK_EQ(BufferPool::size_class((4u << 20) + 1), (4u << 20) + (512u << 10));
  for (size_t n = BufferPool::kMinSize; n < (64u << 20); n = n * 9 / 8 + 7) {
    const size_t c = BufferPool::size_class(n);
    CHECK(c >= n && c - n <= n / 8);
  }

  BufferPool pool(10u << 20);
  Bytes a = pool.take(4u << 20);
  CHECK_EQ(a.size(), 4u << 20);
  a[0] = 7;
  const uint8_t* where = a.data();
  pool.give(std::move(a));
  CHECK_EQ(pool.pooled_bytes(), 4u << 20);
  Bytes b = pool.take((4u << 20) - 100);  // same class: the same memory comes back
  CHECK(b.data() == where);
  CHECK_EQ(b.size(), (4u << 20) - 100);
  CHECK_EQ(pool.pooled_bytes(), 0u);
  // Beyond its budget the pool frees instead of keeping.
  Bytes c = pool.take(4u << 20), d = pool.take(4u << 20), e = pool.take(4u << 20);
  pool.give(std::move(b));
  pool.give(std::move(c));
  pool.give(std::move(d));
  CHECK_EQ(pool.pooled_bytes(), 8u << 20);
  pool.give(std::move(e));
  CHECK_EQ(pool.pooled_bytes(), 8u << 20);
  // Small buffers and foreign capacities are not kept.
  pool.give(Bytes(1000));
  Bytes odd;
  odd.reserve((4u << 20) + 1);
  pool.give(std::move(odd));
  CHECK_EQ(pool.pooled_bytes(), 8u << 20);
}

TEST(frame_packed_flag_and_layout) {
  // The flag is DATA-only, one bit, and bounds the message to kPackMax.
  ChunkHeader h;
  h.type = ChunkType::kData;
  h.chunk_shift = 12;
  h.flags = kFlagPacked;
  h.message_len = 100;
  h.payload_len = 100;
  uint8_t buf[kChunkHeaderSize];
  write_chunk_header(h, buf);
  ChunkHeader r;
  CHECK(parse_chunk_header(buf, Limits{}, &r) == Status::kOk);
  CHECK_EQ(r.flags, kFlagPacked);
  const auto sealed = [&](uint8_t byte2, uint8_t byte3) {
    write_chunk_header(h, buf);
    buf[2] = byte2;
    buf[3] = byte3;
    const uint32_t c = crc32c(0, buf, 36);
    std::memcpy(buf + 36, &c, 4);
    return parse_chunk_header(buf, Limits{}, &r);
  };
  CHECK(sealed(kFlagPacked, 0) == Status::kOk);
  CHECK(sealed(2, 0) == Status::kCorrupt);            // unknown flag
  CHECK(sealed(kFlagPacked, 1) == Status::kCorrupt);  // reserved byte
  h.type = ChunkType::kClose;
  h.message_len = 0;
  h.payload_len = 0;
  h.chunk_shift = 0;
  CHECK(sealed(kFlagPacked, 0) == Status::kCorrupt);  // flags on a control chunk
  h.type = ChunkType::kData;
  h.chunk_shift = 12;
  h.message_len = kPackMax + 1;
  h.payload_len = 4096;
  CHECK(sealed(kFlagPacked, 0) == Status::kCorrupt);  // a pack over the limit
  CHECK(sealed(0, 0) == Status::kOk);                 // the same message unpacked is fine

  // Layouts: [u32 count] then [u32 len][bytes] x count, nothing left over.
  const auto pack_of = [](std::vector<std::vector<uint8_t>> msgs, size_t extra = 0) {
    std::vector<uint8_t> p(4);
    const auto n = static_cast<uint32_t>(msgs.size());
    std::memcpy(p.data(), &n, 4);
    for (auto& m : msgs) {
      const auto l = static_cast<uint32_t>(m.size());
      p.insert(p.end(), reinterpret_cast<const uint8_t*>(&l), reinterpret_cast<const uint8_t*>(&l) + 4);
      p.insert(p.end(), m.begin(), m.end());
    }
    p.resize(p.size() + extra);
    return p;
  };
  uint32_t count = 0;
  auto ok = pack_of({{1, 2}, {}, {3}});
  CHECK(check_pack(ok.data(), ok.size(), &count) == Status::kOk);
  CHECK_EQ(count, 3u);
  auto trailing = pack_of({{1}}, 1);
  CHECK(check_pack(trailing.data(), trailing.size(), &count) == Status::kCorrupt);
  auto empty = pack_of({});
  CHECK(check_pack(empty.data(), empty.size(), &count) == Status::kCorrupt);
  CHECK(check_pack(ok.data(), 3, &count) == Status::kCorrupt);
  for (size_t cut = 4; cut < ok.size(); cut++) CHECK(check_pack(ok.data(), cut, &count) == Status::kCorrupt);
  auto huge = pack_of({{1, 2, 3}});
  huge[4] = 0xff;  // a length far past the end
  huge[7] = 0xff;
  CHECK(check_pack(huge.data(), huge.size(), &count) == Status::kCorrupt);
  auto many = pack_of({{1}});
  many[0] = 0xff;  // more messages claimed than present
  many[3] = 0xff;
  CHECK(check_pack(many.data(), many.size(), &count) == Status::kCorrupt);

  // Chunks of one message must agree on the flag; the flag comes out with it.
  Reassembler re(Limits{});
  std::vector<uint8_t> msg = pack_of({std::vector<uint8_t>(3000, 7), std::vector<uint8_t>(3000, 8)});
  auto cs = chunks_of(msg, 0, 12);
  CHECK_EQ(cs.size(), 2u);
  bool done, dup;
  std::vector<Received> ready;
  ChunkHeader c0, c1;
  CHECK(parse_chunk_header(cs[0].data(), Limits{}, &c0) == Status::kOk);
  CHECK(parse_chunk_header(cs[1].data(), Limits{}, &c1) == Status::kOk);
  c0.flags = kFlagPacked;
  CHECK(re.add(c0, cs[0].data() + kChunkHeaderSize, &done, &ready, &dup) == Status::kOk);
  CHECK(re.add(c1, cs[1].data() + kChunkHeaderSize, &done, &ready, &dup) == Status::kCorrupt);  // flag missing
  c1.flags = kFlagPacked;
  CHECK(re.add(c1, cs[1].data() + kChunkHeaderSize, &done, &ready, &dup) == Status::kOk);
  CHECK(done && ready.size() == 1);
  CHECK_EQ(ready[0].flags, kFlagPacked);
  CHECK(check_pack(ready[0].data.own.data(), ready[0].data.own.size(), &count) == Status::kOk && count == 2);
}


// Large messages land in lent slabs while one is free; a reassembler that
// goes with a lent message held out of order gives the slab back.
TEST(frame_reassembler_lends) {
  test::FixedLender lender(1, 1u << 20);
  std::mt19937_64 rng(test::seed() + 45);
  std::vector<uint8_t> a(200000), b(300000);
  for (auto& x : a) x = static_cast<uint8_t>(rng());
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  {
    Reassembler re(Limits{});
    re.set_lender(&lender);
    bool done, dup;
    std::vector<Received> ready;
    ChunkHeader h;
    for (auto& c : chunks_of(a, 0, 16)) {
      CHECK(parse_chunk_header(c.data(), Limits{}, &h) == Status::kOk);
      CHECK(re.add(h, c.data() + kChunkHeaderSize, &done, &ready, &dup) == Status::kOk);
    }
    CHECK_EQ(ready.size(), 1u);
    CHECK(ready[0].data.lent != nullptr && ready[0].data.slab == 0);
    CHECK(test::same_bytes(*ready[0].data.lent, a));
    // The slab is out: the next message is owned. Then give it back, and
    // message 3 (ahead of 2) takes it and is held when the reassembler goes.
    for (auto& c : chunks_of(b, 1, 16)) {
      CHECK(parse_chunk_header(c.data(), Limits{}, &h) == Status::kOk);
      CHECK(re.add(h, c.data() + kChunkHeaderSize, &done, &ready, &dup) == Status::kOk);
    }
    CHECK_EQ(ready.size(), 2u);
    CHECK(ready[1].data.lent == nullptr && test::same_bytes(ready[1].data.own, b));
    lender.give(0);
    for (auto& c : chunks_of(b, 3, 16)) {
      CHECK(parse_chunk_header(c.data(), Limits{}, &h) == Status::kOk);
      CHECK(re.add(h, c.data() + kChunkHeaderSize, &done, &ready, &dup) == Status::kOk);
    }
    CHECK_EQ(ready.size(), 2u);
    CHECK_EQ(lender.out(), 1u);
  }
  CHECK_EQ(lender.out(), 0u);
}
