/*
 * net.h - moving bytes over sockets, with a deadline on every wait.
 *
 * Stream sockets deliver bytes in pieces: every function here loops until all
 * the bytes have moved, the peer has gone, or the deadline (a timer_seconds()
 * value) has passed. Sockets must be non-blocking (net_set_nonblocking), so
 * that no call can wait past the deadline. Writes never raise SIGPIPE.
 *
 * APIs: NetStatus, net_set_nonblocking, net_send_all, net_recv_all, net_exchange, net_status_str.
 */
#ifndef NET_H
#define NET_H

#include <stddef.h>

typedef enum {
    NET_OK = 0,
    NET_ERROR = -1,   // a system call failed: errno says why
    NET_TIMEOUT = -2, // the deadline passed
    NET_CLOSED = -3,  // the peer closed the connection or went away
} NetStatus;

int net_set_nonblocking(int fd);
NetStatus net_send_all(int fd, const void* buf, size_t len, double deadline);
NetStatus net_recv_all(int fd, void* buf, size_t len, double deadline);
// Sends send_len bytes on send_fd while receiving recv_len bytes on recv_fd, both
// at once: when every process of a ring sends first and receives second, large
// messages fill the socket buffers and everyone waits for ever.
NetStatus net_exchange(int send_fd, const void* send_buf, size_t send_len, int recv_fd,
                       void* recv_buf, size_t recv_len, double deadline);
// "timed out", "connection closed by the peer", or strerror(errno).
const char* net_status_str(NetStatus status);

#endif
