// The RDMA channel's logic against the emulated verbs (no RDMA NIC here):
// ordering across SENDs and RDMA WRITEs, ring wrap-around, credits under
// load in both directions, a queue pair failing mid-transfer, and the
// registration cache. The RDMA path has not run on hardware.
#include <random>

#include "emulated_verbs.h"
#include "test.h"
#include "transport/rdma/channel.h"

using namespace dwcp;
using namespace dwcp::transport;
using namespace dwcp::transport::rdma;

namespace {

struct Ends {
  test::EmulatedFabric fabric;
  std::unique_ptr<Device> da, db;
  std::unique_ptr<Channel> a, b;
  std::vector<Bytes> at_a, at_b;
  std::vector<uint64_t> done_a, done_b;

  explicit Ends(ChannelOptions o = {}) {
    Status st;
    da = fabric.open("emu0", -1, &st);
    db = fabric.open("emu0", -1, &st);
    a = std::make_unique<Channel>(da.get(), 1, o, &st);
    CHECK(st == Status::kOk);
    b = std::make_unique<Channel>(db.get(), 2, o, &st);
    CHECK(st == Status::kOk);
    CHECK(a->connect(b->local()) == Status::kOk);
    CHECK(b->connect(a->local()) == Status::kOk);
  }
  // Queues `ab` at a and `ba` at b before either runs, drives, and checks
  // that both arrive whole, in order, and are reported done.
  void exchange(const std::vector<std::vector<uint8_t>>& ab, const std::vector<std::vector<uint8_t>>& ba) {
    for (uint64_t i = 0; i < ab.size(); i++) a->send(i, ab[i].data(), ab[i].size());
    for (uint64_t i = 0; i < ba.size(); i++) b->send(i, ba[i].data(), ba[i].size());
    drive();
    CHECK(!a->failed() && !b->failed());
    CHECK_EQ(at_b.size(), ab.size());
    CHECK_EQ(at_a.size(), ba.size());
    for (size_t i = 0; i < at_b.size() && i < ab.size(); i++) CHECK(test::same_bytes(at_b[i], ab[i]));
    for (size_t i = 0; i < at_a.size() && i < ba.size(); i++) CHECK(test::same_bytes(at_a[i], ba[i]));
    CHECK_EQ(done_a.size(), ab.size());
    CHECK_EQ(done_b.size(), ba.size());
  }
  // Feeds completions until nothing moves.
  void drive() {
    Completion c[16];
    for (bool moved = true; moved;) {
      moved = false;
      for (auto [dev, ch] : {std::pair{da.get(), a.get()}, std::pair{db.get(), b.get()}}) {
        for (size_t n; (n = dev->poll(c, 16)) > 0;) {
          moved = true;
          for (size_t i = 0; i < n; i++) {
            CHECK_EQ(Channel::channel_of(c[i].wr_id), ch == a.get() ? 1u : 2u);
            ch->on_completion(c[i]);
          }
        }
      }
    }
    for (auto& m : a->take_received()) at_a.push_back(std::move(m));
    for (auto& m : b->take_received()) at_b.push_back(std::move(m));
    for (auto id : a->take_done()) done_a.push_back(id);
    for (auto id : b->take_done()) done_b.push_back(id);
  }
};

std::vector<uint8_t> bytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

ChannelOptions with_ring(uint32_t ring_bytes, uint32_t max_piece) {
  ChannelOptions o;
  o.ring_bytes = ring_bytes;
  o.max_piece = max_piece;
  return o;
}

}  // namespace

TEST(rdma_messages_of_every_size_in_order) {
  Ends e(with_ring(1u << 20, 256u << 10));
  std::mt19937_64 rng(test::seed() + 60);
  std::vector<std::vector<uint8_t>> msgs;
  // Around the small limit (4096 - 24), pieces, and more than the ring.
  for (size_t n : {1u, 100u, 4072u, 4073u, 300000u, (3u << 20) + 7, 5u, 700000u}) msgs.push_back(bytes(n, rng));
  for (uint64_t i = 0; i < msgs.size(); i++) e.a->send(i, msgs[i].data(), msgs[i].size());
  e.drive();
  CHECK_EQ(e.at_b.size(), msgs.size());
  for (size_t i = 0; i < msgs.size() && i < e.at_b.size(); i++) CHECK(test::same_bytes(e.at_b[i], msgs[i]));
  CHECK_EQ(e.done_a.size(), msgs.size());
  for (uint64_t i = 0; i < e.done_a.size(); i++) CHECK_EQ(e.done_a[i], i);
  CHECK(!e.a->failed() && !e.b->failed());
}

TEST(rdma_credits_hold_under_load_both_ways) {
  // Eight receives and a 64 KiB ring: thousands of messages must wait for
  // credits, never overrun the peer (the emulation fails a SEND that finds
  // no receive posted) and never deadlock.
  ChannelOptions o = with_ring(64u << 10, 16u << 10);
  o.slots = 8;
  o.max_send = 4;
  Ends e(o);
  std::mt19937_64 rng(test::seed() + 61);
  std::vector<std::vector<uint8_t>> ab, ba;
  for (int i = 0; i < 2000; i++) ab.push_back(bytes(1 + rng() % (i % 10 == 0 ? 100000 : 3000), rng));
  for (int i = 0; i < 500; i++) ba.push_back(bytes(1 + rng() % 40000, rng));
  e.exchange(ab, ba);
  // Once both ends are idle, the credits are back but for less than what
  // triggers a credit message (half the receives, half the ring).
  CHECK(e.a->receive_credits() > o.slots / 2);
  CHECK(e.a->ring_credits() > o.ring_bytes / 2);
}

TEST(rdma_a_failed_queue_pair_lists_what_to_resend) {
  Ends e(with_ring(256u << 10, 64u << 10));
  std::mt19937_64 rng(test::seed() + 62);
  std::vector<std::vector<uint8_t>> msgs;
  for (int i = 0; i < 6; i++) msgs.push_back(bytes(i % 2 ? 1000 : 200000, rng));
  for (uint64_t i = 0; i < 3; i++) e.a->send(i, msgs[i].data(), msgs[i].size());
  e.drive();
  CHECK_EQ(e.at_b.size(), 3u);
  // The peer's QP dies (a fatal event); what is sent next fails.
  e.fabric.fail_qp(e.b->local().endpoint.qpn);
  for (uint64_t i = 3; i < msgs.size(); i++) e.a->send(i, msgs[i].data(), msgs[i].size());
  e.drive();
  CHECK(e.a->failed());
  CHECK(e.a->failure() == WcStatus::kRetryExceeded);
  const auto left = e.a->unfinished();
  CHECK_EQ(left.size(), 3u);
  for (size_t i = 0; i < left.size(); i++) CHECK_EQ(left[i], 3 + i);
  CHECK_EQ(e.done_a.size(), 3u);
  CHECK_EQ(e.at_b.size(), 3u);  // nothing half-delivered
}

TEST(rdma_registrations_live_while_used) {
  test::EmulatedFabric fabric;
  Status st;
  auto dev = fabric.open("emu0", -1, &st);
  auto* emu = static_cast<test::EmulatedDevice*>(dev.get());
  std::vector<uint8_t> buf(1u << 20);
  {
    RegistrationCache cache(dev.get());
    Region r1, r2, r3;
    CHECK(cache.get(buf.data(), buf.size(), &r1) == Status::kOk);
    CHECK(cache.get(buf.data() + 4096, 8192, &r2) == Status::kOk);  // inside the first: shared
    CHECK_EQ(r1.lkey, r2.lkey);
    CHECK_EQ(emu->registered(), 1u);
    std::vector<uint8_t> other(4096);
    CHECK(cache.get(other.data(), other.size(), &r3) == Status::kOk);
    CHECK_EQ(cache.size(), 2u);
    cache.release(r1);
    CHECK_EQ(emu->registered(), 2u);  // r2 still uses it
    cache.release(r2);
    CHECK_EQ(emu->registered(), 1u);  // gone with its last user: no stale pages pinned
    cache.release(r3);
    CHECK_EQ(cache.size(), 0u);
    CHECK(cache.get(other.data(), other.size(), &r3) == Status::kOk);
  }
  CHECK_EQ(emu->registered(), 0u);  // deregistered with the cache
}

TEST(rdma_channel_registers_bodies_only_while_in_flight) {
  Ends e(with_ring(1u << 20, 256u << 10));
  auto* emu = static_cast<test::EmulatedDevice*>(e.da.get());
  const size_t fixed = emu->registered();  // receive slots, staging, ring
  std::mt19937_64 rng(test::seed() + 64);
  auto big = bytes(600000, rng);
  // Three messages inside one buffer share one registration.
  e.a->send(0, big.data(), 200000);
  e.a->send(1, big.data() + 200000, 200000);
  e.a->send(2, big.data() + 400000, 200000);
  CHECK(emu->registered() <= fixed + 3);
  e.drive();
  CHECK_EQ(e.done_a.size(), 3u);
  CHECK_EQ(emu->registered(), fixed);
  // A caller's own registration is used as given and left alone.
  Region mine;
  CHECK(e.da->register_memory(big.data(), big.size(), Access::kLocal, &mine) == Status::kOk);
  e.a->send(3, nullptr, 0, big.data(), big.size(), &mine);
  e.drive();
  CHECK_EQ(e.done_a.size(), 4u);
  CHECK_EQ(emu->registered(), fixed + 1);
  e.da->deregister(mine);
}

TEST(rdma_heads_travel_with_bodies) {
  Ends e(with_ring(1u << 20, 256u << 10));
  std::mt19937_64 rng(test::seed() + 65);
  struct Got {
    std::vector<uint8_t> head, body;
  };
  std::vector<Got> got;
  e.b->set_on_message([&](const uint8_t* h, size_t hl, const uint8_t* b, size_t n) { got.push_back(Got{{h, h + hl}, {b, b + n}}); });
  std::vector<std::vector<uint8_t>> heads, bodies;
  for (size_t n : {0u, 1u, 3900u, 4000u, 100000u, 600000u}) {
    heads.push_back(bytes(40, rng));
    bodies.push_back(bytes(n, rng));
  }
  for (uint64_t i = 0; i < heads.size(); i++) e.a->send(i, heads[i].data(), heads[i].size(), bodies[i].data(), bodies[i].size());
  e.drive();
  CHECK_EQ(got.size(), heads.size());
  for (size_t i = 0; i < got.size() && i < heads.size(); i++) {
    CHECK(test::same_bytes(got[i].head, heads[i]));
    CHECK(test::same_bytes(got[i].body, bodies[i]));
  }
}

TEST(rdma_an_oversized_announcement_fails_the_channel) {
  ChannelOptions o = with_ring(256u << 10, 64u << 10);
  o.max_message = 100000;
  Ends e(o);
  std::mt19937_64 rng(test::seed() + 67);
  auto ok = bytes(100000, rng), big = bytes(100001, rng);
  e.a->send(0, ok.data(), ok.size());
  e.drive();
  CHECK_EQ(e.at_b.size(), 1u);
  e.a->send(1, big.data(), big.size());
  e.drive();
  CHECK(e.b->failed());  // it would not buffer what it does not accept
  CHECK_EQ(e.at_b.size(), 1u);
}

TEST(rdma_held_credits_stop_the_sender) {
  ChannelOptions o = with_ring(256u << 10, 64u << 10);
  o.slots = 8;
  Ends e(o);
  std::mt19937_64 rng(test::seed() + 66);
  e.b->hold_credits(true);
  std::vector<std::vector<uint8_t>> msgs;
  for (int i = 0; i < 40; i++) msgs.push_back(bytes(i % 2 ? 500 : 50000, rng));
  for (uint64_t i = 0; i < msgs.size(); i++) e.a->send(i, msgs[i].data(), msgs[i].size());
  e.drive();
  // Stopped short, with no error: it used the credits it had.
  CHECK(!e.a->failed() && !e.b->failed());
  CHECK(e.at_b.size() < msgs.size());
  CHECK(e.at_b.size() >= 3u);
  e.b->hold_credits(false);
  e.drive();
  CHECK_EQ(e.at_b.size(), msgs.size());
  for (size_t i = 0; i < msgs.size() && i < e.at_b.size(); i++) CHECK(test::same_bytes(e.at_b[i], msgs[i]));
}

TEST(rdma_both_ends_out_of_credits_still_tell_each_other) {
  // Small messages only, both ways, all queued before either end runs:
  // each spends its receive credits at once and must still be able to
  // return the other's (the credit kept back for credit messages).
  ChannelOptions o;
  o.slots = 6;
  Ends e(o);
  std::mt19937_64 rng(test::seed() + 63);
  std::vector<std::vector<uint8_t>> ab, ba;
  for (int i = 0; i < 300; i++) ab.push_back(bytes(1 + rng() % 2000, rng));
  for (int i = 0; i < 300; i++) ba.push_back(bytes(1 + rng() % 2000, rng));
  e.exchange(ab, ba);
}

TEST(rdma_libibverbs_opens_at_run_time) {
  // Where rdma-core is installed the library loads and lists its devices
  // (none on the machines this was written on); elsewhere it says why not.
  std::string error;
  auto verbs = open_ibverbs(&error);
  if (!verbs) {
    CHECK(!error.empty());
    std::fprintf(stderr, "    libibverbs: %s\n", error.c_str());
    return;
  }
  const auto devices = verbs->devices();
  std::fprintf(stderr, "    libibverbs loaded, %zu device(s)\n", devices.size());
  for (const auto& d : devices) CHECK(!d.name.empty());
  Status st;
  CHECK(verbs->open("no-such-device", -1, &st) == nullptr);
  CHECK(st != Status::kOk);
}

TEST(rdma_only_remote_write_memory_takes_writes) {
  // What the channel relies on: the emulation, like an adapter, refuses an
  // RDMA WRITE into memory registered for local access only.
  test::EmulatedFabric fabric;
  Status st;
  auto da = fabric.open("emu0", -1, &st), db = fabric.open("emu0", -1, &st);
  auto qa = da->create_qp(4, 4, &st), qb = db->create_qp(4, 4, &st);
  CHECK(qa->connect(qb->local()) == Status::kOk && qb->connect(qa->local()) == Status::kOk);
  std::vector<uint8_t> src(4096, 1), local(4096), open(4096), slot(64);
  Region rs, rl, ro, rslot;
  CHECK(da->register_memory(src.data(), src.size(), Access::kLocal, &rs) == Status::kOk);
  CHECK(db->register_memory(local.data(), local.size(), Access::kLocal, &rl) == Status::kOk);
  CHECK(db->register_memory(open.data(), open.size(), Access::kRemoteWrite, &ro) == Status::kOk);
  CHECK(db->register_memory(slot.data(), slot.size(), Access::kLocal, &rslot) == Status::kOk);
  CHECK(qb->post_recv(1, rslot, 0, slot.size()) == Status::kOk);
  CHECK(qa->post_write_imm(2, rs, 0, 100, reinterpret_cast<uint64_t>(open.data()), ro.rkey, 100) == Status::kOk);
  Completion c[4];
  CHECK_EQ(da->poll(c, 4), 1u);
  CHECK(c[0].status == WcStatus::kSuccess);
  CHECK_EQ(open[0], 1);
  CHECK(qb->post_recv(3, rslot, 0, slot.size()) == Status::kOk);
  CHECK(qa->post_write_imm(4, rs, 0, 100, reinterpret_cast<uint64_t>(local.data()), rl.rkey, 100) == Status::kOk);
  CHECK_EQ(da->poll(c, 4), 1u);
  CHECK(c[0].status == WcStatus::kRemoteAccess);
  CHECK_EQ(local[0], 0);
  for (Region r : {rs}) da->deregister(r);
  for (Region r : {rl, ro, rslot}) db->deregister(r);
}
