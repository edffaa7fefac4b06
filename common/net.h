/*
 * net.h - moving bytes over sockets, with a deadline on every wait.
 *
 * Stream sockets deliver bytes in pieces: every function here loops until all
 * the bytes have moved, the peer has gone, or the deadline (a timer_seconds()
 * value) has passed. Sockets must be non-blocking (net_set_nonblocking), so
 * that no call can wait past the deadline. Writes never raise SIGPIPE.
 *
 * APIs: NetStatus, net_set_nonblocking, net_send_all, net_recv_all, net_exchange, net_status_str,
 *       net_listen, net_listen_in_range, net_local_port, net_local_addr, net_peer_name,
 * net_interface_of, net_connect_retry, net_accept.
 */
#ifndef NET_H
#define NET_H

#include <stddef.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    NET_OK = 0,
    NET_ERROR = -1,   // a system call failed: errno says why
    NET_TIMEOUT = -2, // the deadline passed
    NET_CLOSED = -3,  // the peer closed the connection or went away
} NetStatus;

int net_set_nonblocking(int fd);
NetStatus net_send_all(int fd, const void* buf, size_t len, double deadline);
NetStatus net_recv_all(int fd, void* buf, size_t len, double deadline);
#define NET_MAX_PIECES 4

// Sends the pieces send[0..send_count) on send_fd as one stream while receiving into
// recv[0..recv_count) from recv_fd, both at once: when every process of a ring sends
// first and receives second, large messages fill the socket buffers and everyone
// waits for ever. A piece list is, say, a header and its payload (at most
// NET_MAX_PIECES pieces).
NetStatus net_exchange(int send_fd, const struct iovec* send, int send_count, int recv_fd,
                       const struct iovec* recv, int recv_count, double deadline);
// "timed out", "connection closed by the peer", or strerror(errno).
const char* net_status_str(NetStatus status);

// A non-blocking TCP socket listening on addr:port (IPv4 dotted or a host name;
// port 0 picks a free one). Returns the fd, or -1 with errno set.
int net_listen(const char* addr, int port);
// net_listen on the first port of [*next, last] that is free; *next becomes the port after
// it. -1 with errno EADDRINUSE when none is.
int net_listen_in_range(const char* addr, int* next, int last);
// The port a socket is bound to, and its local IPv4 address as text.
int net_local_port(int fd);
void net_local_addr(int fd, char* out, size_t out_len);
// The address of the connected peer as text ("127.0.0.2:51234").
void net_peer_name(int fd, char* out, size_t out_len);
// The name of this machine's network interface that has IPv4 address addr ("eth0",
// "lo"), or "?" if none has it.
void net_interface_of(const char* addr, char* out, size_t out_len);
// Connects to addr:port, retrying with back-off (refused, unreachable, timed out)
// until the deadline; a non-blocking fd, or -1 with the last error in why.
int net_connect_retry(const char* addr, int port, double deadline, char* why, size_t why_len);
// Accepts one connection before the deadline; the new fd is non-blocking. -1 on
// timeout (errno ETIMEDOUT) or error.
int net_accept(int listen_fd, double deadline);

#ifdef __cplusplus
}
#endif

#endif
