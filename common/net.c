/*
 * net.c - deadline-bounded socket transfers (see net.h).
 */
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>

#include "timer.h"

#define NET_SPIN_SECONDS 50e-6

int net_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags == -1 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Milliseconds left until deadline for poll(), rounded up; 0 once it has passed.
static int ms_until(double deadline) {
    double left = deadline - timer_seconds();
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

// One non-blocking step in one direction: moves what the socket takes now.
static NetStatus step(int fd, char* buf, size_t* done, size_t len, int sending) {
    ssize_t n = sending ? send(fd, buf + *done, len - *done, MSG_NOSIGNAL)
                        : recv(fd, buf + *done, len - *done, 0);
    if (n > 0) {
        *done += (size_t)n;
        return NET_OK;
    }
    if (n == 0 && !sending)
        return NET_CLOSED;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return NET_OK;
    return errno == EPIPE || errno == ECONNRESET ? NET_CLOSED : NET_ERROR;
}

NetStatus net_exchange(int send_fd, const void* send_buf, size_t send_len, int recv_fd,
                       void* recv_buf, size_t recv_len, double deadline) {
    size_t sent = 0, received = 0;
    double spin_until = timer_seconds() + NET_SPIN_SECONDS;
    while (sent < send_len || received < recv_len) {
        // Try first, poll only when a socket is not ready: small messages then
        // cost one system call each way.
        NetStatus s = NET_OK;
        if (sent < send_len)
            s = step(send_fd, (char*)send_buf, &sent, send_len, 1);
        if (s == NET_OK && received < recv_len)
            s = step(recv_fd, recv_buf, &received, recv_len, 0);
        if (s != NET_OK)
            return s;
        if (sent == send_len && received == recv_len)
            break;
        // A peer on the same machine usually answers within microseconds: try
        // again for a moment (yielding the core) before poll() puts us to sleep,
        // since a sleep and a wake-up cost more than the message.
        if (timer_seconds() < spin_until) {
            sched_yield();
            continue;
        }
        struct pollfd fds[2];
        nfds_t n = 0;
        if (sent < send_len)
            fds[n++] = (struct pollfd){.fd = send_fd, .events = POLLOUT};
        if (received < recv_len)
            fds[n++] = (struct pollfd){.fd = recv_fd, .events = POLLIN};
        int ready = poll(fds, n, ms_until(deadline));
        if (ready == 0)
            return NET_TIMEOUT;
        if (ready < 0 && errno != EINTR)
            return NET_ERROR;
    }
    return NET_OK;
}

NetStatus net_send_all(int fd, const void* buf, size_t len, double deadline) {
    return net_exchange(fd, buf, len, -1, NULL, 0, deadline);
}

NetStatus net_recv_all(int fd, void* buf, size_t len, double deadline) {
    return net_exchange(-1, NULL, 0, fd, buf, len, deadline);
}

const char* net_status_str(NetStatus status) {
    switch (status) {
    case NET_OK:
        return "ok";
    case NET_TIMEOUT:
        return "timed out";
    case NET_CLOSED:
        return "connection closed by the peer";
    default:
        return strerror(errno);
    }
}
