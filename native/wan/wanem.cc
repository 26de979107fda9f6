// novacron-wanem: a WAN link in user space, since this kernel has no netem.
// Two TUN devices, A and B (moved into their network namespaces by the
// caller, see src/sys/wan.ts); every IP packet the kernel routes out of one
// comes back in through the other after the link's treatment, per direction:
//   loss      random (Bernoulli) or bursty (Gilbert-Elliott), on arrival;
//   queue     tail drop when the bytes waiting to be serialized exceed it;
//   rate      serialization at `rate` bits/s (departures spaced by size/rate);
//   delay     one-way propagation delay, plus uniform jitter in +-jitter;
//   reorder   a packet skips the propagation delay with this probability
//             (it overtakes others); without it delivery stays in order.
// A trace (lines `t_s rate_mbps delay_ms loss`, looped) changes rate, delay
// and loss over time, both directions alike.
//
// One thread: epoll on both TUN fds and a timerfd armed for the next
// delivery. SIGUSR1 writes counters to the stats file, SIGTERM/SIGINT
// write them and exit. Prints "ready" once both devices exist.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <queue>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Ns = int64_t;  // CLOCK_MONOTONIC nanoseconds

Ns now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<Ns>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "novacron-wanem: %s%s%s\n", what.c_str(), errno ? ": " : "", errno ? std::strerror(errno) : "");
  std::exit(2);
}

struct LinkParams {
  double delay_ms = 0;
  double jitter_ms = 0;
  double loss = 0;            // Bernoulli drop probability
  bool ge = false;            // Gilbert-Elliott instead
  double ge_p = 0, ge_r = 1;  // P(good -> bad), P(bad -> good) per packet
  double ge_bad_loss = 1, ge_good_loss = 0;
  double rate_bps = 0;        // 0: unlimited
  size_t queue_bytes = 0;     // 0: 1 MiB, or 100 ms at the rate if more
  double reorder = 0;
};

struct TraceStep {
  double t_s, rate_mbps, delay_ms, loss;
};

struct Packet {
  Ns deliver;
  uint64_t seq;
  std::vector<uint8_t> bytes;
};
struct Later {
  bool operator()(const Packet& a, const Packet& b) const { return a.deliver != b.deliver ? a.deliver > b.deliver : a.seq > b.seq; }
};

struct Counters {
  uint64_t in = 0, lost = 0, queue_dropped = 0, out = 0, bytes_out = 0, reordered = 0;
};

class Direction {
 public:
  Direction(std::string name, LinkParams p, uint64_t seed) : name_(std::move(name)), p_(p), rng_(seed) {}

  void set(const LinkParams& p) { p_ = p; }
  const LinkParams& params() const { return p_; }

  void arrive(std::vector<uint8_t>&& pkt, Ns now) {
    c_.in++;
    if (drop()) {
      c_.lost++;
      return;
    }
    // Bytes still waiting to go onto the wire: the serialization backlog.
    const size_t size = pkt.size();
    if (p_.rate_bps > 0) {
      const double backlog_bytes = last_depart_ > now ? (last_depart_ - now) * p_.rate_bps / 8e9 : 0;
      if (backlog_bytes + size > queue_limit()) {
        c_.queue_dropped++;
        return;
      }
    }
    Ns depart = now;
    if (p_.rate_bps > 0) {
      depart = std::max(now, last_depart_) + static_cast<Ns>(size * 8e9 / p_.rate_bps);
      last_depart_ = depart;
    }
    Ns deliver = depart;
    const bool skip = p_.reorder > 0 && uniform_(rng_) < p_.reorder;
    if (!skip) {
      double d = p_.delay_ms;
      if (p_.jitter_ms > 0) d += (uniform_(rng_) * 2 - 1) * p_.jitter_ms;
      deliver += static_cast<Ns>(std::max(0.0, d) * 1e6);
      // In order unless reordering is asked for: jitter stretches gaps but
      // does not swap packets (as a real path's queues would not).
      deliver = std::max(deliver, last_deliver_);
      last_deliver_ = deliver;
    } else {
      c_.reordered++;
    }
    q_.push(Packet{deliver, seq_++, std::move(pkt)});
  }

  Ns next() const { return q_.empty() ? -1 : q_.top().deliver; }

  // Writes every packet due by `now` to `fd`.
  void release(int fd, Ns now) {
    while (!q_.empty() && q_.top().deliver <= now) {
      const Packet& pk = q_.top();
      const ssize_t w = ::write(fd, pk.bytes.data(), pk.bytes.size());
      if (w < 0 && errno == EAGAIN) return;  // the kernel's queue is full: retry on the next tick
      if (w == static_cast<ssize_t>(pk.bytes.size())) {
        c_.out++;
        c_.bytes_out += pk.bytes.size();
      }
      q_.pop();
    }
  }

  std::string json() const {
    std::ostringstream o;
    o << "\"" << name_ << "\":{\"in\":" << c_.in << ",\"lost\":" << c_.lost << ",\"queueDropped\":" << c_.queue_dropped
      << ",\"out\":" << c_.out << ",\"bytesOut\":" << c_.bytes_out << ",\"reordered\":" << c_.reordered << ",\"queued\":" << q_.size()
      << "}";
    return o.str();
  }

 private:
  bool drop() {
    if (!p_.ge) return p_.loss > 0 && uniform_(rng_) < p_.loss;
    // Gilbert-Elliott: a two-state chain stepped once per packet.
    if (bad_) {
      if (uniform_(rng_) < p_.ge_r) bad_ = false;
    } else if (uniform_(rng_) < p_.ge_p) {
      bad_ = true;
    }
    return uniform_(rng_) < (bad_ ? p_.ge_bad_loss : p_.ge_good_loss);
  }
  double queue_limit() const {
    if (p_.queue_bytes) return static_cast<double>(p_.queue_bytes);
    return std::max(1048576.0, p_.rate_bps / 8 * 0.1);
  }

  std::string name_;
  LinkParams p_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> uniform_{0.0, 1.0};
  bool bad_ = false;
  Ns last_depart_ = 0;
  Ns last_deliver_ = 0;
  uint64_t seq_ = 0;
  std::priority_queue<Packet, std::vector<Packet>, Later> q_;
  Counters c_;
};

int open_tun(const std::string& name) {
  const int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail("open /dev/net/tun");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  if (name.size() >= IFNAMSIZ) fail("device name too long: " + name);
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd, TUNSETIFF, &ifr) < 0) fail("TUNSETIFF " + name);
  return fd;
}

std::vector<TraceStep> load_trace(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read trace " + path);
  std::vector<TraceStep> steps;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    TraceStep s{};
    std::istringstream ls(line);
    if (!(ls >> s.t_s >> s.rate_mbps >> s.delay_ms >> s.loss)) {
      errno = 0;
      fail("bad trace line: " + line);
    }
    steps.push_back(s);
  }
  if (steps.empty()) {
    errno = 0;
    fail("empty trace " + path);
  }
  return steps;
}

double number(const char* flag, const char* v) {
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  if (!end || *end || !std::isfinite(d) || d < 0) {
    errno = 0;
    fail(std::string("bad value for ") + flag + ": " + v);
  }
  return d;
}

// `--name V` sets both directions; `--ab-name V` / `--ba-name V` one of them.
bool apply(LinkParams& p, const std::string& key, const char* v) {
  if (key == "delay-ms") p.delay_ms = number("delay-ms", v);
  else if (key == "jitter-ms") p.jitter_ms = number("jitter-ms", v);
  else if (key == "loss") p.loss = number("loss", v);
  else if (key == "rate-bps") p.rate_bps = number("rate-bps", v);
  else if (key == "queue-bytes") p.queue_bytes = static_cast<size_t>(number("queue-bytes", v));
  else if (key == "reorder") p.reorder = number("reorder", v);
  else if (key == "ge") {
    // P,R,BAD_LOSS,GOOD_LOSS
    double g[4];
    std::string s(v);
    for (int i = 0; i < 4; i++) {
      const size_t comma = s.find(',');
      const std::string part = s.substr(0, comma);
      g[i] = number("ge", part.c_str());
      if (comma == std::string::npos && i < 3) {
        errno = 0;
        fail("--ge needs P,R,BAD_LOSS,GOOD_LOSS");
      }
      s = comma == std::string::npos ? "" : s.substr(comma + 1);
    }
    p.ge = true;
    p.ge_p = g[0];
    p.ge_r = g[1];
    p.ge_bad_loss = g[2];
    p.ge_good_loss = g[3];
  } else {
    return false;
  }
  if (p.loss > 1 || p.reorder > 1 || p.ge_p > 1 || p.ge_r > 1 || p.ge_bad_loss > 1 || p.ge_good_loss > 1) {
    errno = 0;
    fail("probabilities must be within 0..1");
  }
  return true;
}


}  // namespace

int main(int argc, char** argv) {
  std::string tun_a, tun_b, stats_path, trace_path;
  uint64_t seed = 1;
  LinkParams ab, ba;
  for (int i = 1; i < argc; i++) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0 || i + 1 >= argc) {
      errno = 0;
      fail("usage: novacron-wanem --tun-a NAME --tun-b NAME [--[ab-|ba-]delay-ms|jitter-ms|loss|rate-bps|queue-bytes|reorder V] "
           "[--[ab-|ba-]ge P,R,BAD,GOOD] [--trace FILE] [--stats FILE] [--seed N]");
    }
    const char* v = argv[++i];
    std::string key = flag.substr(2);
    if (key == "tun-a") tun_a = v;
    else if (key == "tun-b") tun_b = v;
    else if (key == "stats") stats_path = v;
    else if (key == "trace") trace_path = v;
    else if (key == "seed") seed = static_cast<uint64_t>(number("seed", v));
    else if (key.rfind("ab-", 0) == 0 ? apply(ab, key.substr(3), v) : key.rfind("ba-", 0) == 0 ? apply(ba, key.substr(3), v) : (apply(ab, key, v) && apply(ba, key, v))) {
    } else {
      errno = 0;
      fail("unknown flag --" + key);
    }
  }
  if (tun_a.empty() || tun_b.empty()) {
    errno = 0;
    fail("--tun-a and --tun-b are required");
  }
  std::vector<TraceStep> trace;
  if (!trace_path.empty()) trace = load_trace(trace_path);

  // Timers fire on time rather than up to 50 us late (the default slack).
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  const int fa = open_tun(tun_a);
  const int fb = open_tun(tun_b);
  Direction dirs[2] = {Direction("ab", ab, seed), Direction("ba", ba, seed * 7919 + 1)};

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGUSR1);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  const int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  const int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  if (sfd < 0 || tfd < 0 || ep < 0) fail("signalfd/timerfd/epoll");
  for (int fd : {fa, fb, sfd, tfd}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  auto write_stats = [&] {
    if (stats_path.empty()) return;
    const std::string tmp = stats_path + ".tmp";
    std::ofstream out(tmp);
    out << "{" << dirs[0].json() << "," << dirs[1].json() << "}\n";
    out.close();
    std::rename(tmp.c_str(), stats_path.c_str());
  };

  std::printf("ready\n");
  std::fflush(stdout);

  const Ns start = now_ns();
  size_t step = 0;
  Ns next_step = trace.empty() ? -1 : start;
  const double trace_len = trace.empty() ? 0 : trace.back().t_s + (trace.size() > 1 ? trace.back().t_s - trace[trace.size() - 2].t_s : 1);
  uint64_t loops = 0;
  std::vector<uint8_t> buf(65536);
  for (;;) {
    Ns now = now_ns();
    if (next_step >= 0 && now >= next_step) {
      // Apply the trace step due now (looping), then schedule the next.
      const TraceStep& s = trace[step];
      for (auto& d : dirs) {
        LinkParams p = d.params();
        p.rate_bps = s.rate_mbps * 1e6;
        p.delay_ms = s.delay_ms;
        p.loss = s.loss;
        d.set(p);
      }
      step++;
      if (step == trace.size()) {
        step = 0;
        loops++;
      }
      next_step = start + static_cast<Ns>((trace[step].t_s + static_cast<double>(loops) * trace_len) * 1e9);
    }
    dirs[0].release(fb, now);
    dirs[1].release(fa, now);
    Ns wake = -1;
    for (Ns t : {dirs[0].next(), dirs[1].next(), next_step}) {
      if (t >= 0 && (wake < 0 || t < wake)) wake = t;
    }
    itimerspec its{};
    if (wake >= 0) {
      const Ns at = std::max(wake, now + 1);
      its.it_value.tv_sec = at / 1000000000;
      its.it_value.tv_nsec = at % 1000000000;
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, nullptr);
    epoll_event evs[4];
    const int n = epoll_wait(ep, evs, 4, -1);
    if (n < 0 && errno != EINTR) fail("epoll_wait");
    for (int i = 0; i < n; i++) {
      const int fd = evs[i].data.fd;
      if (fd == tfd) {
        uint64_t x;
        (void)!::read(tfd, &x, sizeof(x));
      } else if (fd == sfd) {
        signalfd_siginfo si;
        while (::read(sfd, &si, sizeof(si)) == sizeof(si)) {
          write_stats();
          if (si.ssi_signo != SIGUSR1) return 0;
        }
      } else {
        Direction& d = fd == fa ? dirs[0] : dirs[1];
        const Ns t = now_ns();
        for (;;) {
          const ssize_t r = ::read(fd, buf.data(), buf.size());
          if (r <= 0) break;
          d.arrive(std::vector<uint8_t>(buf.begin(), buf.begin() + r), t);
        }
      }
    }
  }
}
