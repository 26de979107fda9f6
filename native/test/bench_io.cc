// epoll against io_uring for the transport's two patterns, over loopback TCP
// between two threads: a 64-byte ping-pong (round trip p50 and p99) and a
// bulk receive (256 KiB reads into a 4 MiB buffer). The AMST engine drives
// its sockets with epoll; this is the measurement behind that choice, rerun
// on each kernel that matters with `npm run bench:io`. io_uring is driven by
// its raw system calls (no liburing), one ring per thread, one
// io_uring_enter per round trip and side. Interleaved
// rounds, medians and ranges. Bulk also runs with a sender that splices its
// pages instead of copying them (the engine's way): the ceiling of one
// stream here without checksums or framing. That receiver reads into one
// 4 MiB buffer, which stays in cache; a receiver of 4 MiB messages fills
// one while the one before is delivered, so the splicing run is repeated
// into two buffers in turn: the ceiling for `bench transport`'s bulk run.
// JSON line last:
// {"bench":"io","epoll_rtt_p50_us":..,"uring_rtt_p50_us":..,"epoll_bulk_gbps":..,"uring_bulk_gbps":..,"splice_bulk_gbps":..,"splice_two_buffers_gbps":..}
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

// A submission and a completion ring, mapped from the kernel.
class Uring {
 public:
  explicit Uring(unsigned entries) {
    io_uring_params p{};
    fd_ = static_cast<int>(::syscall(__NR_io_uring_setup, entries, &p));
    if (fd_ < 0) die("io_uring_setup");
    sq_len_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_len_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sq_len_ = cq_len_ = std::max(sq_len_, cq_len_);
    sq_ = ::mmap(nullptr, sq_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
    if (sq_ == MAP_FAILED) die("mmap sq");
    cq_ = single ? sq_ : ::mmap(nullptr, cq_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    if (cq_ == MAP_FAILED) die("mmap cq");
    sqes_len_ = p.sq_entries * sizeof(io_uring_sqe);
    sqes_ = static_cast<io_uring_sqe*>(::mmap(nullptr, sqes_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES));
    if (sqes_ == MAP_FAILED) die("mmap sqes");
    auto at = [](void* base, unsigned off) { return reinterpret_cast<unsigned*>(static_cast<char*>(base) + off); };
    sq_tail_ = at(sq_, p.sq_off.tail);
    sq_mask_ = *at(sq_, p.sq_off.ring_mask);
    sq_array_ = at(sq_, p.sq_off.array);
    cq_head_ = at(cq_, p.cq_off.head);
    cq_tail_ = at(cq_, p.cq_off.tail);
    cq_mask_ = *at(cq_, p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(static_cast<char*>(cq_) + p.cq_off.cqes);
    tail_ = *sq_tail_;
  }
  ~Uring() {
    ::munmap(sqes_, sqes_len_);
    if (cq_ != sq_) ::munmap(cq_, cq_len_);
    ::munmap(sq_, sq_len_);
    ::close(fd_);
  }
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  void prep(uint8_t op, int fd, void* buf, unsigned len, uint64_t tag, int msg_flags = 0) {
    const unsigned idx = tail_ & sq_mask_;
    io_uring_sqe* s = &sqes_[idx];
    std::memset(s, 0, sizeof(*s));
    s->opcode = op;
    s->fd = fd;
    s->addr = reinterpret_cast<uint64_t>(buf);
    s->len = len;
    s->msg_flags = static_cast<uint32_t>(msg_flags);
    s->user_data = tag;
    sq_array_[idx] = idx;
    tail_++;
    queued_++;
  }
  // Submits what is prepared and waits until `wait_nr` completions are in.
  void enter(unsigned wait_nr) {
    __atomic_store_n(sq_tail_, tail_, __ATOMIC_RELEASE);
    const unsigned n = queued_;
    queued_ = 0;
    for (;;) {
      const long r = ::syscall(__NR_io_uring_enter, fd_, n, wait_nr, IORING_ENTER_GETEVENTS, nullptr, 0);
      if (r >= 0) return;
      if (errno != EINTR) die("io_uring_enter");
    }
  }
  // Takes the completions in; the result of the one tagged `tag` (the
  // others must have succeeded).
  int reap(uint64_t tag) {
    int res = 0;
    bool seen = false;
    for (unsigned head = *cq_head_; head != __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE); head++) {
      const io_uring_cqe& c = cqes_[head & cq_mask_];
      if (c.user_data == tag) {
        res = c.res;
        seen = true;
      } else if (c.res < 0) {
        throw std::runtime_error("io_uring op failed: " + std::string(std::strerror(-c.res)));
      }
      __atomic_store_n(cq_head_, head + 1, __ATOMIC_RELEASE);
    }
    if (!seen) throw std::runtime_error("io_uring: completion missing");
    return res;
  }

 private:
  int fd_ = -1;
  void* sq_ = nullptr;
  void* cq_ = nullptr;
  size_t sq_len_ = 0, cq_len_ = 0, sqes_len_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  unsigned tail_ = 0;
  unsigned queued_ = 0;
};

// A connected loopback TCP pair, TCP_NODELAY and CUBIC on both ends (the
// system default may be BBR, several times slower on loopback).
std::pair<int, int> tcp_pair() {
  const int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof(a);
  if (::bind(l, reinterpret_cast<sockaddr*>(&a), alen) != 0 || ::listen(l, 1) != 0) die("listen");
  ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &alen);
  const int c = ::socket(AF_INET, SOCK_STREAM, 0);
  if (::connect(c, reinterpret_cast<sockaddr*>(&a), alen) != 0) die("connect");
  const int s = ::accept(l, nullptr, nullptr);
  ::close(l);
  const int one = 1;
  for (int fd : {c, s}) {
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, "cubic", 5);
  }
  return {c, s};
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Reads exactly `len` bytes the epoll way: wait for readiness, then read.
void epoll_read(int ep, int fd, uint8_t* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    const ssize_t r = ::recv(fd, buf + got, len - got, 0);
    if (r > 0) {
      got += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) throw std::runtime_error("peer closed");
    if (errno != EAGAIN) die("recv");
    epoll_event ev;
    ::epoll_wait(ep, &ev, 1, -1);
  }
}

int epoll_for(int fd) {
  const int ep = ::epoll_create1(0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  return ep;
}

constexpr size_t kPing = 64;

// Round trips in microseconds, sorted.
std::vector<double> pingpong(bool uring, int rounds) {
  auto [c, s] = tcp_pair();
  std::thread echo([s = s, uring, rounds] {
    if (uring) {
      // One enter per round: the echo and the next receive go together,
      // and the call returns when the receive completes. Two buffers, so a
      // receive never lands in one a send may still read.
      Uring u(8);
      uint8_t bufs[2][kPing];
      u.prep(IORING_OP_RECV, s, bufs[0], kPing, 1, MSG_WAITALL);
      u.enter(1);
      for (int i = 0; i < rounds; i++) {
        if (u.reap(1) != static_cast<int>(kPing)) throw std::runtime_error("short echo read");
        u.prep(IORING_OP_SEND, s, bufs[i % 2], kPing, 2);
        const bool more = i + 1 < rounds;
        if (more) u.prep(IORING_OP_RECV, s, bufs[(i + 1) % 2], kPing, 1, MSG_WAITALL);
        u.enter(more ? 2 : 1);
      }
    } else {
      uint8_t buf[kPing];
      set_nonblocking(s);
      const int ep = epoll_for(s);
      for (int i = 0; i < rounds; i++) {
        epoll_read(ep, s, buf, kPing);
        if (::send(s, buf, kPing, 0) != static_cast<ssize_t>(kPing)) die("send");
      }
      ::close(ep);
    }
  });
  std::vector<double> us;
  us.reserve(static_cast<size_t>(rounds));
  uint8_t msg[kPing] = {1};
  uint8_t back[kPing];
  if (uring) {
    Uring u(8);
    for (int i = 0; i < rounds; i++) {
      const auto t0 = Clock::now();
      u.prep(IORING_OP_SEND, c, msg, kPing, 1);
      u.prep(IORING_OP_RECV, c, back, kPing, 2, MSG_WAITALL);
      u.enter(2);
      if (u.reap(2) != static_cast<int>(kPing)) throw std::runtime_error("short read");
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  } else {
    set_nonblocking(c);
    const int ep = epoll_for(c);
    for (int i = 0; i < rounds; i++) {
      const auto t0 = Clock::now();
      if (::send(c, msg, kPing, 0) != static_cast<ssize_t>(kPing)) die("send");
      epoll_read(ep, c, back, kPing);
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    ::close(ep);
  }
  echo.join();
  ::close(c);
  ::close(s);
  us.erase(us.begin(), us.begin() + rounds / 10);  // warm-up
  std::sort(us.begin(), us.end());
  return us;
}

constexpr size_t kRead = 256 * 1024;

// Gbit/s of a bulk receive of `total` bytes into `buffers` 4 MiB buffers in
// turn; the sender writes 256 KiB at a time, copying (send) or handing over
// its pages (vmsplice + splice, as the engine does for large payloads).
double bulk(bool uring, size_t total, bool splice = false, size_t buffers = 1) {
  auto [c, s] = tcp_pair();
  std::thread sender([c = c, total, splice] {
    std::vector<uint8_t> src(4u << 20, 0x5a);
    int p[2];
    if (splice && (::pipe(p) != 0 || ::fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0)) die("pipe");
    for (size_t sent = 0; sent < total;) {
      const size_t off = sent % src.size();
      const size_t n = std::min({kRead, total - sent, src.size() - off});
      if (!splice) {
        const ssize_t w = ::send(c, src.data() + off, n, 0);
        if (w <= 0) die("bulk send");
        sent += static_cast<size_t>(w);
        continue;
      }
      iovec iov{src.data() + off, n};
      const ssize_t v = ::vmsplice(p[1], &iov, 1, 0);
      if (v <= 0) die("vmsplice");
      for (ssize_t left = v; left > 0;) {
        const ssize_t w = ::splice(p[0], nullptr, c, nullptr, static_cast<size_t>(left), SPLICE_F_MORE);
        if (w <= 0) die("splice");
        left -= w;
      }
      sent += static_cast<size_t>(v);
    }
    if (splice) {
      ::close(p[0]);
      ::close(p[1]);
    }
  });
  std::vector<uint8_t> dst(buffers * (4u << 20), 1);
  const auto t0 = Clock::now();
  size_t got = 0;
  if (uring) {
    Uring u(8);
    while (got < total) {
      const size_t off = got % dst.size();
      u.prep(IORING_OP_RECV, s, dst.data() + off, static_cast<unsigned>(std::min(kRead, dst.size() - off)), 1);
      u.enter(1);
      const int r = u.reap(1);
      if (r <= 0) throw std::runtime_error("bulk recv");
      got += static_cast<size_t>(r);
    }
  } else {
    set_nonblocking(s);
    const int ep = epoll_for(s);
    while (got < total) {
      const size_t off = got % dst.size();
      const ssize_t r = ::recv(s, dst.data() + off, std::min(kRead, dst.size() - off), 0);
      if (r > 0) {
        got += static_cast<size_t>(r);
      } else if (r < 0 && errno == EAGAIN) {
        epoll_event ev;
        ::epoll_wait(ep, &ev, 1, -1);
      } else {
        die("bulk recv");
      }
    }
    ::close(ep);
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  sender.join();
  ::close(c);
  ::close(s);
  return static_cast<double>(total) * 8 / secs / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string range(const std::vector<double>& v, int digits) {
  char b[96];
  std::snprintf(b, sizeof(b), "median %.*f (%.*f-%.*f)", digits, median(v), digits, *std::min_element(v.begin(), v.end()), digits,
                *std::max_element(v.begin(), v.end()));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  const int rounds = 20000;
  const size_t total = size_t{2} << 30;
  std::vector<double> e50, u50, e99, u99, eb, ub, sb, s2;
  try {
    for (int i = 0; i < runs; i++) {
      auto e = pingpong(false, rounds);
      auto u = pingpong(true, rounds);
      e50.push_back(e[e.size() / 2]);
      e99.push_back(e[e.size() * 99 / 100]);
      u50.push_back(u[u.size() / 2]);
      u99.push_back(u[u.size() * 99 / 100]);
      eb.push_back(bulk(false, total));
      ub.push_back(bulk(true, total));
      sb.push_back(bulk(false, total, true));
      s2.push_back(bulk(false, total, true, 2));
    }
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bench_io: %s\n", ex.what());
    return 1;
  }
  std::printf("64-byte ping-pong round trip, us: epoll p50 %s, p99 %s; io_uring p50 %s, p99 %s\n", range(e50, 1).c_str(),
              range(e99, 1).c_str(), range(u50, 1).c_str(), range(u99, 1).c_str());
  std::printf("bulk receive, Gbit/s: epoll %s; io_uring %s; epoll with a splicing sender %s, the same into two 4 MiB buffers in turn %s\n",
              range(eb, 2).c_str(), range(ub, 2).c_str(), range(sb, 2).c_str(), range(s2, 2).c_str());
  std::printf("{\"bench\":\"io\",\"epoll_rtt_p50_us\":%.1f,\"uring_rtt_p50_us\":%.1f,\"epoll_rtt_p99_us\":%.1f,\"uring_rtt_p99_us\":%.1f,"
              "\"epoll_bulk_gbps\":%.2f,\"uring_bulk_gbps\":%.2f,\"splice_bulk_gbps\":%.2f,\"splice_two_buffers_gbps\":%.2f}\n",
              median(e50), median(u50), median(e99), median(u99), median(eb), median(ub), median(sb), median(s2));
  return 0;
}
