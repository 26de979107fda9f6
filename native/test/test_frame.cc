// AMST framing: round trips, every field check, arbitrary stream splits,
// and reassembly from shuffled, duplicated chunks.
#include <algorithm>
#include <cstring>

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
    std::vector<uint8_t> got;
    StreamReader reader(
        Limits{}, true, [&](const Hello&) { hellos++; return Status::kOk; },
        [&](const ChunkHeader& h, const uint8_t* p) {
          if (h.type == ChunkType::kAck) {
            acks += h.message_id == 77;
            return Status::kOk;
          }
          bool done, dup;
          std::vector<std::pair<uint64_t, std::vector<uint8_t>>> ready;
          Status s = re.add(h, p, &done, &ready, &dup);
          for (auto& r : ready) got = std::move(r.second);
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
    CHECK(got == msg);
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
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> ready;
    CHECK(re.add(h, p.data(), &done, &ready, &dup) == Status::kOk);
    dups += dup;
    for (auto& [id, m] : ready) {
      CHECK(m == msgs[id]);
      order.push_back(id);
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
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> m;
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
