// Thin RAII and option helpers over POSIX TCP sockets.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

namespace dwcp::transport::tcp {

// Owns a file descriptor; closes it once.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    reset(o.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct SocketOptions {
  std::string congestion;  // TCP_CONGESTION, e.g. "cubic" or "bbr"; empty: system default
  int send_buffer = 0;     // SO_SNDBUF bytes; 0: system default
  int recv_buffer = 0;     // SO_RCVBUF bytes; 0: system default
  bool zerocopy = false;   // MSG_ZEROCOPY for large payloads (SO_ZEROCOPY), where the kernel allows it
  bool splice = true;      // vmsplice + splice for large payloads (when not zerocopy)
  // A peer that acknowledges nothing for about this long fails the socket
  // with ETIMEDOUT: a host that vanished without a reset is noticed in
  // seconds, not TCP's ~15 minutes. Idle sockets: TCP keepalive, set here
  // (whole seconds). Sockets with data outstanding: the engine's check of
  // TCP_INFO, which unlike TCP_USER_TIMEOUT leaves alone a live peer that
  // keeps its window shut (it answers the kernel's window probes).
  // 0: neither (the kernel's defaults).
  uint32_t peer_timeout_ms = 30000;
};

// Numeric IPv4/IPv6 address and port; false when `host` is not numeric.
bool make_address(const std::string& host, uint16_t port, sockaddr_storage* addr, socklen_t* len);
// Non-blocking TCP socket with TCP_NODELAY and the options applied. On
// failure returns an invalid Fd and sets *err (errno).
Fd tcp_socket(int family, const SocketOptions& opts, int* err);
// Applies the per-connection options to an accepted or new socket.
int apply_options(int fd, const SocketOptions& opts);
// Congestion control and buffer sizes only (0 or an errno).
int apply_buffers_and_congestion(int fd, const SocketOptions& opts);
// Bound, listening, non-blocking socket; *port receives the bound port.
// `accepted`'s congestion control and buffer sizes are set on it (what
// accepted sockets inherit); a congestion control the kernel lacks fails it.
Fd tcp_listen(const std::string& host, uint16_t* port, int backlog, int* err, const SocketOptions& accepted = SocketOptions{});
// The congestion control a socket uses, or "" when unknown.
std::string congestion_of(int fd);

}  // namespace dwcp::transport::tcp
