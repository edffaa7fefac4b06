/*
 * net.c - deadline-bounded socket transfers (see net.h).
 */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

static size_t total_bytes(const struct iovec* iov, int count) {
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += iov[i].iov_len;
    return total;
}

// The pieces of iov that remain after its first done bytes, into rest; returns how many.
static int remaining(const struct iovec* iov, int count, size_t done, struct iovec* rest) {
    int n = 0;
    for (int i = 0; i < count && n < NET_MAX_PIECES; i++) {
        if (done >= iov[i].iov_len) {
            done -= iov[i].iov_len;
            continue;
        }
        rest[n++] = (struct iovec){(char*)iov[i].iov_base + done, iov[i].iov_len - done};
        done = 0;
    }
    return n;
}

// One non-blocking step in one direction: moves what the socket takes now.
static NetStatus step(int fd, const struct iovec* iov, int count, size_t* done, int sending) {
    struct iovec rest[NET_MAX_PIECES];
    struct msghdr msg = {.msg_iov = rest, .msg_iovlen = (size_t)remaining(iov, count, *done, rest)};
    ssize_t n = sending ? sendmsg(fd, &msg, MSG_NOSIGNAL) : recvmsg(fd, &msg, 0);
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

NetStatus net_exchange(int send_fd, const struct iovec* send, int send_count, int recv_fd,
                       const struct iovec* recv, int recv_count, double deadline) {
    size_t send_len = total_bytes(send, send_count), recv_len = total_bytes(recv, recv_count);
    size_t sent = 0, received = 0;
    double spin_until = timer_seconds() + NET_SPIN_SECONDS;
    while (sent < send_len || received < recv_len) {
        // Try first, poll only when a socket is not ready: small messages then
        // cost one system call each way.
        NetStatus s = NET_OK;
        if (sent < send_len)
            s = step(send_fd, send, send_count, &sent, 1);
        if (s == NET_OK && received < recv_len)
            s = step(recv_fd, recv, recv_count, &received, 0);
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
    struct iovec piece = {(void*)buf, len};
    return net_exchange(fd, &piece, 1, -1, NULL, 0, deadline);
}

NetStatus net_recv_all(int fd, void* buf, size_t len, double deadline) {
    struct iovec piece = {buf, len};
    return net_exchange(-1, NULL, 0, fd, &piece, 1, deadline);
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

// ----------------------------------------------------------------------------
// TCP

// addr (dotted IPv4 or a host name) and port as a sockaddr; 0, or -1 with errno.
static int resolve(const char* addr, int port, struct sockaddr_in* out) {
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &out->sin_addr) == 1)
        return 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(addr, NULL, &hints, &res) != 0 || res == NULL) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    out->sin_addr = ((struct sockaddr_in*)res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return 0;
}

int net_listen(const char* addr, int port) {
    struct sockaddr_in sa;
    if (resolve(addr, port, &sa) != 0)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0)
        return -1;
    // SO_REUSEADDR: a port whose last run's connections linger in TIME_WAIT can be
    // bound again at once; a port with a live listener still cannot.
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr*)&sa, sizeof sa) != 0 || listen(fd, 64) != 0 ||
        net_set_nonblocking(fd) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int net_listen_in_range(const char* addr, int* next, int last) {
    for (; *next <= last; (*next)++) {
        int fd = net_listen(addr, *next);
        if (fd >= 0 || errno != EADDRINUSE) {
            *next += fd >= 0;
            return fd;
        }
    }
    errno = EADDRINUSE;
    return -1;
}

int net_local_port(int fd) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    return getsockname(fd, (struct sockaddr*)&sa, &len) == 0 ? ntohs(sa.sin_port) : -1;
}

void net_local_addr(int fd, char* out, size_t out_len) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr*)&sa, &len) != 0 ||
        inet_ntop(AF_INET, &sa.sin_addr, out, (socklen_t)out_len) == NULL)
        snprintf(out, out_len, "0.0.0.0");
}

void net_peer_name(int fd, char* out, size_t out_len) {
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof sa;
    char ip[INET_ADDRSTRLEN] = "?";
    if (getpeername(fd, (struct sockaddr*)&sa, &len) == 0)
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(out, out_len, "%s:%d", ip, ntohs(sa.sin_port));
}

void net_interface_of(const char* addr, char* out, size_t out_len) {
    struct in_addr want;
    struct ifaddrs* list = NULL;
    snprintf(out, out_len, "?");
    if (inet_pton(AF_INET, addr, &want) != 1 || getifaddrs(&list) != 0)
        return;
    for (struct ifaddrs* i = list; i != NULL; i = i->ifa_next)
        if (i->ifa_addr != NULL && i->ifa_addr->sa_family == AF_INET &&
            ((struct sockaddr_in*)i->ifa_addr)->sin_addr.s_addr == want.s_addr) {
            snprintf(out, out_len, "%s", i->ifa_name);
            break;
        }
    freeifaddrs(list);
}

// One connection attempt, bounded by deadline. Returns the fd or -1 with errno.
static int connect_once(const struct sockaddr_in* sa, double deadline) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0)
        return -1;
    if (net_set_nonblocking(fd) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr*)sa, sizeof *sa) == 0)
        return fd;
    int err = errno;
    if (err == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int ready = poll(&p, 1, ms_until(deadline));
        socklen_t len = sizeof err;
        if (ready == 0)
            err = ETIMEDOUT;
        else if (ready < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err == 0)
            return fd;
    }
    close(fd);
    errno = err;
    return -1;
}

static const char* connect_hint(int err) {
    switch (err) {
    case ECONNREFUSED:
        return "nothing listens there yet: is the master started, and is the port right?";
    case ETIMEDOUT:
        return "no answer: a firewall may drop the packets, or the address is wrong";
    case EHOSTUNREACH:
    case ENETUNREACH:
        return "no route to that address: check the address and this node's network";
    default:
        return "check the address and port";
    }
}

int net_connect_retry(const char* addr, int port, double deadline, char* why, size_t why_len) {
    struct sockaddr_in sa;
    double backoff = 0.05;
    int attempts = 0;
    for (;;) {
        attempts++;
        // The name is looked up again at every attempt: a master that starts later may
        // not be in the DNS yet (a cluster's scheduler registers nodes as they boot).
        bool resolved = resolve(addr, port, &sa) == 0;
        int fd = resolved ? connect_once(&sa, deadline) : -1;
        if (fd >= 0)
            return fd;
        int err = errno;
        if (timer_seconds() + backoff > deadline) {
            if (!resolved)
                snprintf(why, why_len, "cannot resolve '%s' (tried %d times)", addr, attempts);
            else
                snprintf(why, why_len, "connect %s:%d: %s after %d attempts (%s)", addr, port,
                         strerror(err), attempts, connect_hint(err));
            return -1;
        }
        usleep((useconds_t)(backoff * 1e6));
        backoff = backoff * 2 > 1.0 ? 1.0 : backoff * 2;
    }
}

int net_accept(int listen_fd, double deadline) {
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd >= 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (net_set_nonblocking(fd) == 0)
                return fd;
            close(fd);
            return -1;
        }
        // accept() also reports errors of the connection it dropped (a peer that
        // reset it, say): those are for the next try, not the listener's end.
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED &&
            errno != EPROTO && errno != ENETDOWN && errno != EHOSTUNREACH && errno != ENONET &&
            errno != ENETUNREACH && errno != EHOSTDOWN && errno != EOPNOTSUPP)
            return -1;
        struct pollfd p = {.fd = listen_fd, .events = POLLIN};
        if (poll(&p, 1, ms_until(deadline)) == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
    }
}
