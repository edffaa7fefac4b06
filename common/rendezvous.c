/*
 * rendezvous.c - the master/node protocol of a multi-node job (see rendezvous.h).
 *
 * Wire format: a 12-byte header, then the payload; integers in network byte order.
 *     u32 magic | u16 version | u16 type | u32 payload length
 * Strings travel in fixed-size fields, zero-padded; a field without a NUL byte is
 * refused, as is a length that does not match the type's layout.
 */
#include "rendezvous.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "net.h"
#include "timer.h"

typedef enum { MSG_HELLO = 1, MSG_WORLD = 2, MSG_REFUSE = 3, MSG_ABORT = 4, MSG_DONE = 5 } MsgType;

#define HEADER_BYTES 12
#define HELLO_WAIT_SECONDS 2.0 // how long one connection may take to say HELLO

// ----------------------------------------------------------------------------
// encoding: a cursor over a byte buffer that refuses to run past its end

typedef struct {
    unsigned char* buf;
    size_t len; // bytes written, or bytes available to read
    size_t pos;
    bool bad; // ran past the end
} Cursor;

static void put_u32(Cursor* c, uint32_t v) {
    if (c->pos + 4 > c->len) {
        c->bad = true;
        return;
    }
    v = htonl(v);
    memcpy(c->buf + c->pos, &v, 4);
    c->pos += 4;
}

static uint32_t get_u32(Cursor* c) {
    uint32_t v = 0;
    if (c->pos + 4 > c->len) {
        c->bad = true;
        return 0;
    }
    memcpy(&v, c->buf + c->pos, 4);
    c->pos += 4;
    return ntohl(v);
}

static void put_bytes(Cursor* c, const void* p, size_t n) {
    if (c->pos + n > c->len) {
        c->bad = true;
        return;
    }
    memcpy(c->buf + c->pos, p, n);
    c->pos += n;
}

static void get_bytes(Cursor* c, void* p, size_t n) {
    if (c->pos + n > c->len) {
        c->bad = true;
        return;
    }
    memcpy(p, c->buf + c->pos, n);
    c->pos += n;
}

// A string in a field of n bytes, zero-padded.
static void put_text(Cursor* c, const char* s, size_t n) {
    char field[RDZV_TEXT_BYTES] = {0};
    memcpy(field, s, strnlen(s, n - 1));
    put_bytes(c, field, n);
}

// Reads a field of n bytes; refuses it (bad) unless it holds a NUL.
static void get_text(Cursor* c, char* s, size_t n) {
    get_bytes(c, s, n);
    if (memchr(s, '\0', n) == NULL) {
        c->bad = true;
        s[0] = '\0';
    }
}

// ----------------------------------------------------------------------------
// messages

static int send_msg(int fd, MsgType type, const void* payload, size_t len, double deadline) {
    unsigned char header[HEADER_BYTES];
    uint32_t magic = htonl(RDZV_MAGIC), length = htonl((uint32_t)len);
    uint16_t version = htons(RDZV_VERSION), kind = htons((uint16_t)type);
    memcpy(header, &magic, 4);
    memcpy(header + 4, &version, 2);
    memcpy(header + 6, &kind, 2);
    memcpy(header + 8, &length, 4);
    if (net_send_all(fd, header, sizeof header, deadline) != NET_OK)
        return -1;
    return len == 0 || net_send_all(fd, payload, len, deadline) == NET_OK ? 0 : -1;
}

// Receives one message into payload (cap bytes). Returns 0, or -1 with why set.
static int recv_msg(int fd, MsgType* type, void* payload, size_t cap, size_t* len, double deadline,
                    char* why, size_t why_len) {
    unsigned char header[HEADER_BYTES];
    NetStatus st = net_recv_all(fd, header, sizeof header, deadline);
    uint32_t magic, length;
    uint16_t version, kind;
    memcpy(&magic, header, 4);
    memcpy(&version, header + 4, 2);
    memcpy(&kind, header + 6, 2);
    memcpy(&length, header + 8, 4);
    if (st != NET_OK)
        snprintf(why, why_len, "%s", net_status_str(st));
    else if (ntohl(magic) != RDZV_MAGIC)
        snprintf(why, why_len, "bad magic 0x%08x (not a multi_node agent?)", ntohl(magic));
    else if (ntohs(version) != RDZV_VERSION)
        snprintf(why, why_len, "protocol version %u, this build speaks %u", ntohs(version),
                 RDZV_VERSION);
    else if (ntohl(length) > cap)
        snprintf(why, why_len, "payload length %u is over the limit of %zu bytes", ntohl(length),
                 cap);
    else {
        *type = (MsgType)ntohs(kind);
        *len = ntohl(length);
        st = *len == 0 ? NET_OK : net_recv_all(fd, payload, *len, deadline);
        if (st == NET_OK)
            return 0;
        snprintf(why, why_len, "%s in the middle of a message", net_status_str(st));
    }
    return -1;
}

// Addresses from the wire must be dotted IPv4: a name would mean a DNS lookup without deadline.
static bool is_ipv4(const char* text) {
    struct in_addr addr;
    return inet_pton(AF_INET, text, &addr) == 1;
}

static size_t encode_hello(const RdzvHello* h, unsigned char* buf, size_t cap) {
    Cursor c = {.buf = buf, .len = cap};
    put_u32(&c, (uint32_t)h->node_rank);
    put_u32(&c, (uint32_t)h->nproc);
    put_text(&c, h->token, sizeof h->token);
    put_text(&c, h->build_id, sizeof h->build_id);
    put_text(&c, h->nccl_version, sizeof h->nccl_version);
    put_text(&c, h->settings, sizeof h->settings);
    put_text(&c, h->ring_addr, sizeof h->ring_addr);
    for (int i = 0; i < h->nproc; i++)
        put_u32(&c, (uint32_t)h->ring_ports[i]);
    return c.bad ? 0 : c.pos;
}

static int decode_hello(RdzvHello* h, unsigned char* buf, size_t len) {
    Cursor c = {.buf = buf, .len = len};
    h->node_rank = (int)get_u32(&c);
    h->nproc = (int)get_u32(&c);
    get_text(&c, h->token, sizeof h->token);
    get_text(&c, h->build_id, sizeof h->build_id);
    get_text(&c, h->nccl_version, sizeof h->nccl_version);
    get_text(&c, h->settings, sizeof h->settings);
    get_text(&c, h->ring_addr, sizeof h->ring_addr);
    if (c.bad || h->nproc < 1 || h->nproc > WORKERS_MAX || !is_ipv4(h->ring_addr))
        return -1;
    for (int i = 0; i < h->nproc; i++) {
        uint32_t port = get_u32(&c);
        if (port < 1 || port > 65535)
            return -1;
        h->ring_ports[i] = (int)port;
    }
    return c.bad || c.pos != len ? -1 : 0;
}

static size_t encode_world(const RdzvWorld* w, unsigned char* buf, size_t cap) {
    Cursor c = {.buf = buf, .len = cap};
    put_u32(&c, (uint32_t)w->world_size);
    put_u32(&c, (uint32_t)w->nnodes);
    for (int n = 0; n < w->nnodes; n++)
        put_u32(&c, (uint32_t)w->nproc[n]);
    for (int r = 0; r < w->world_size; r++) {
        put_text(&c, w->ring_addr[r], RDZV_ADDR_BYTES);
        put_u32(&c, (uint32_t)w->ring_port[r]);
    }
    put_u32(&c, w->has_nccl_id);
    put_bytes(&c, w->nccl_id, RDZV_NCCL_ID_BYTES);
    return c.bad ? 0 : c.pos;
}

static int decode_world(RdzvWorld* w, unsigned char* buf, size_t len) {
    Cursor c = {.buf = buf, .len = len};
    memset(w, 0, sizeof *w);
    w->world_size = (int)get_u32(&c);
    w->nnodes = (int)get_u32(&c);
    if (c.bad || w->nnodes < 1 || w->nnodes > RDZV_MAX_NODES || w->world_size < 1 ||
        w->world_size > RDZV_MAX_RANKS)
        return -1;
    int ranks = 0;
    for (int n = 0; n < w->nnodes; n++) {
        w->nproc[n] = (int)get_u32(&c);
        if (w->nproc[n] < 1 || w->nproc[n] > WORKERS_MAX)
            return -1;
        w->rank_offset[n] = ranks;
        ranks += w->nproc[n];
    }
    if (ranks != w->world_size)
        return -1;
    for (int r = 0; r < w->world_size; r++) {
        get_text(&c, w->ring_addr[r], RDZV_ADDR_BYTES);
        uint32_t port = get_u32(&c);
        if (c.bad || !is_ipv4(w->ring_addr[r]) || port < 1 || port > 65535)
            return -1;
        w->ring_port[r] = (int)port;
    }
    w->has_nccl_id = get_u32(&c) != 0;
    get_bytes(&c, w->nccl_id, RDZV_NCCL_ID_BYTES);
    return c.bad || c.pos != len ? -1 : 0;
}

// ----------------------------------------------------------------------------
// the master

void rdzv_init(Rdzv* r, int nnodes, int node_rank, const char* master_addr, int master_port,
               double timeout_s, bool debug) {
    memset(r, 0, sizeof *r);
    *r = (Rdzv){.nnodes = nnodes,
                .node_rank = node_rank,
                .master_addr = master_addr,
                .master_port = master_port,
                .timeout_s = timeout_s,
                .debug = debug,
                .listen_fd = -1};
    for (int n = 0; n < RDZV_MAX_NODES; n++)
        r->control_fd[n] = -1;
}

int rdzv_master_listen(Rdzv* r) {
    r->listen_fd = net_listen(r->master_addr, r->master_port);
    if (r->listen_fd < 0) {
        int err = errno;
        fprintf(stderr, "error: bind %s:%d: %s; %s\n", r->master_addr, r->master_port,
                strerror(err),
                err == EADDRINUSE ? "use --master-port or stop the old run"
                                  : "is --master-addr an address of this machine (node 0)?");
        return -1;
    }
    if (r->debug)
        check_message("rendezvous: step 1) master listening on %s:%d for %d node%s", r->master_addr,
                      r->master_port, r->nnodes - 1, r->nnodes > 2 ? "s" : "");
    return 0;
}

// Equal-time comparison: how long it takes says nothing about where the tokens differ.
static bool tokens_equal(const char* a, const char* b) {
    unsigned char diff = 0;
    for (size_t i = 0; i < RDZV_TOKEN_BYTES; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

// The first "key=value" where the master's settings and node's differ, as
// "settings differ: key=A on the master, key=B on node N".
static void first_setting_difference(const char* mine, const char* theirs, int node, char* out,
                                     size_t n) {
    char a[RDZV_TEXT_BYTES], b[RDZV_TEXT_BYTES];
    snprintf(a, sizeof a, "%s", mine);
    snprintf(b, sizeof b, "%s", theirs);
    char *save_a = NULL, *save_b = NULL;
    char* x = strtok_r(a, " ", &save_a);
    char* y = strtok_r(b, " ", &save_b);
    while (x != NULL && y != NULL && strcmp(x, y) == 0) {
        x = strtok_r(NULL, " ", &save_a);
        y = strtok_r(NULL, " ", &save_b);
    }
    snprintf(out, n, "settings differ: %s on the master, %s on node %d", x ? x : "(nothing)",
             y ? y : "(nothing)", node);
}

// Whether the node at the other end of fd (if any) has hung up: a restarted node gives up
// the place that its first connection took.
static bool peer_gone(int fd) {
    char byte;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return fd >= 0 && poll(&p, 1, 0) == 1 && recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

// Ranks of the nodes admitted so far, the master's included.
static int ranks_in(const Rdzv* r) {
    int ranks = r->hello[0].nproc;
    for (int i = 1; i < r->nnodes; i++)
        ranks += r->control_fd[i] >= 0 ? r->hello[i].nproc : 0;
    return ranks;
}

// Why the master refuses h, or "" if it accepts it.
static void check_hello(const Rdzv* r, const RdzvHello* own, const RdzvHello* h, char* why,
                        size_t n) {
    why[0] = '\0';
    if (!tokens_equal(own->token, h->token))
        snprintf(why, n, "wrong token (see --token-file or DDP_TOKEN)");
    else if (strcmp(own->build_id, h->build_id) != 0)
        snprintf(why, n,
                 "build %s differs from the master's %s (rebuild every node from the "
                 "same sources)",
                 h->build_id, own->build_id);
    else if (strcmp(own->nccl_version, h->nccl_version) != 0)
        snprintf(why, n, "NCCL %s differs from the master's %s", h->nccl_version,
                 own->nccl_version);
    else if (strcmp(own->settings, h->settings) != 0)
        first_setting_difference(own->settings, h->settings, h->node_rank, why, n);
    else if (h->node_rank < 1 || h->node_rank >= r->nnodes)
        snprintf(why, n,
                 "node rank %d is out of range: --nnodes %d allows 1 to %d besides the "
                 "master",
                 h->node_rank, r->nnodes, r->nnodes - 1);
    else if (r->control_fd[h->node_rank] >= 0 && !peer_gone(r->control_fd[h->node_rank]))
        snprintf(why, n, "node rank %d is taken already (two nodes with the same --node-rank?)",
                 h->node_rank);
    else if (ranks_in(r) + h->nproc > RDZV_MAX_RANKS)
        snprintf(why, n, "with its %d workers the world would have %d ranks, more than %d",
                 h->nproc, ranks_in(r) + h->nproc, RDZV_MAX_RANKS);
}

// Takes one connection from the listener: its HELLO is accepted, or refused with a reason.
static void admit_one(Rdzv* r, const RdzvHello* own, int fd) {
    char peer[64], why[512];
    unsigned char payload[RDZV_MAX_PAYLOAD];
    size_t len = 0;
    MsgType type;
    RdzvHello h;
    net_peer_name(fd, peer, sizeof peer);
    double deadline = timer_seconds() + HELLO_WAIT_SECONDS;
    bool received =
        recv_msg(fd, &type, payload, sizeof payload, &len, deadline, why, sizeof why) == 0;
    if (!received || type != MSG_HELLO || decode_hello(&h, payload, len) != 0) {
        if (received)
            snprintf(why, sizeof why, "not a well-formed HELLO");
        check_message("rendezvous: ignored a connection from %s: %s", peer, why);
        close(fd);
        return;
    }
    check_hello(r, own, &h, why, sizeof why);
    if (why[0] != '\0') {
        check_message("rendezvous: refused node %d from %s: %s", h.node_rank, peer, why);
        send_msg(fd, MSG_REFUSE, why, strlen(why) + 1, timer_seconds() + 1.0);
        close(fd);
        return;
    }
    if (r->control_fd[h.node_rank] >= 0) { // check_hello found its first holder gone
        check_message("rendezvous: node %d left before the world formed; %s takes its place",
                      h.node_rank, peer);
        close(r->control_fd[h.node_rank]);
    }
    r->control_fd[h.node_rank] = fd;
    r->hello[h.node_rank] = h;
    if (r->debug)
        check_message("rendezvous: step 2) node %d joined from %s with %d worker%s, ring at %s",
                      h.node_rank, peer, h.nproc, h.nproc > 1 ? "s" : "", h.ring_addr);
}

static int nodes_in(const Rdzv* r) {
    int n = 1; // the master
    for (int i = 1; i < r->nnodes; i++)
        n += r->control_fd[i] >= 0;
    return n;
}

int rdzv_master_gather(Rdzv* r, const RdzvHello* own) {
    r->hello[0] = *own;
    double deadline = timer_seconds() + r->timeout_s;
    while (nodes_in(r) < r->nnodes) {
        int fd = net_accept(r->listen_fd, deadline);
        if (fd >= 0) {
            admit_one(r, own, fd);
            continue;
        }
        char missing[256] = "", reason[512];
        for (int i = 1; i < r->nnodes; i++)
            if (r->control_fd[i] < 0)
                snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %d", i);
        snprintf(reason, sizeof reason,
                 "rendezvous: %s after %.0f s with %d of %d nodes; missing node rank%s:%s "
                 "(see --rdzv-timeout)",
                 errno == ETIMEDOUT ? "timed out" : strerror(errno), r->timeout_s, nodes_in(r),
                 r->nnodes, strchr(missing + 1, ' ') ? "s" : "", missing);
        check_message("%s", reason);
        rdzv_send_abort(r, reason); // the nodes that came need not wait any longer
        return -1;
    }
    // Step 3) everyone is in: stop listening, so that nobody else can join.
    close(r->listen_fd);
    r->listen_fd = -1;
    if (r->debug)
        check_message("rendezvous: step 3) all %d nodes are in: the master stops listening",
                      r->nnodes);
    return 0;
}

void rdzv_make_world(const Rdzv* r, RdzvWorld* w) {
    memset(w, 0, sizeof *w);
    w->nnodes = r->nnodes;
    for (int n = 0; n < r->nnodes; n++) {
        const RdzvHello* h = &r->hello[n];
        w->nproc[n] = h->nproc;
        w->rank_offset[n] = w->world_size;
        for (int i = 0; i < h->nproc && w->world_size < RDZV_MAX_RANKS; i++, w->world_size++) {
            snprintf(w->ring_addr[w->world_size], RDZV_ADDR_BYTES, "%s", h->ring_addr);
            w->ring_port[w->world_size] = h->ring_ports[i];
        }
    }
}

int rdzv_master_send_world(Rdzv* r, const RdzvWorld* world) {
    unsigned char payload[RDZV_MAX_PAYLOAD];
    size_t len = encode_world(world, payload, sizeof payload);
    double deadline = timer_seconds() + r->timeout_s;
    for (int n = 1; n < r->nnodes; n++) {
        if (r->debug)
            check_message("rendezvous: step 4) WORLD to node %d: world size %d, its first rank %d",
                          n, world->world_size, world->rank_offset[n]);
        if (len == 0 || send_msg(r->control_fd[n], MSG_WORLD, payload, len, deadline) != 0) {
            check_message("rendezvous: could not send WORLD to node %d", n);
            return -1;
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// a node

int rdzv_connect(Rdzv* r) {
    double deadline = timer_seconds() + r->timeout_s;
    char why[512];
    if (r->debug)
        check_message("rendezvous: step 1) node %d connecting to the master at %s:%d", r->node_rank,
                      r->master_addr, r->master_port);
    r->control_fd[0] = net_connect_retry(r->master_addr, r->master_port, deadline, why, sizeof why);
    if (r->control_fd[0] < 0) {
        check_message("rendezvous: cannot reach the master: %s; gave up before the %.0f s "
                      "deadline (see --rdzv-timeout)",
                      why, r->timeout_s);
        return -1;
    }
    return 0;
}

int rdzv_join(Rdzv* r, const RdzvHello* own, RdzvWorld* world) {
    // The master sends WORLD when the last node is in, and after its workers' set-up.
    double deadline = timer_seconds() + r->timeout_s + r->world_wait_s;
    char why[512];
    int fd = r->control_fd[0];
    unsigned char payload[RDZV_MAX_PAYLOAD];
    size_t len = encode_hello(own, payload, sizeof payload);
    MsgType type;
    if (r->debug)
        check_message("rendezvous: step 2) HELLO sent: node %d, %d worker%s, ring at %s",
                      own->node_rank, own->nproc, own->nproc > 1 ? "s" : "", own->ring_addr);
    snprintf(why, sizeof why, "sending HELLO failed");
    if (send_msg(fd, MSG_HELLO, payload, len, deadline) != 0 ||
        recv_msg(fd, &type, payload, sizeof payload, &len, deadline, why, sizeof why) != 0) {
        check_message("rendezvous: waiting for the master's answer: %s", why);
        return -1;
    }
    if (type == MSG_REFUSE || type == MSG_ABORT) {
        payload[len > 0 ? len - 1 : 0] = '\0';
        check_message("rendezvous: the master %s: %s",
                      type == MSG_REFUSE ? "refused this node" : "gave up", (char*)payload);
        return -1;
    }
    if (type != MSG_WORLD || decode_world(world, payload, len) != 0 || world->nnodes != r->nnodes ||
        world->nproc[r->node_rank] != own->nproc) {
        check_message("rendezvous: the master's answer is not a WORLD that fits this node");
        return -1;
    }
    if (r->debug)
        check_message("rendezvous: step 4) WORLD received: world size %d, first rank here %d",
                      world->world_size, world->rank_offset[r->node_rank]);
    return 0;
}

// ----------------------------------------------------------------------------
// control channels

static void send_text(int fd, MsgType type, const char* text) {
    if (fd >= 0)
        send_msg(fd, type, text, strlen(text) + 1, timer_seconds() + 1.0);
}

void rdzv_send_abort(Rdzv* r, const char* reason) {
    for (int n = 0; n < r->nnodes; n++)
        if (!r->done[n])
            send_text(r->control_fd[n], MSG_ABORT, reason);
}

int rdzv_send_done(Rdzv* r) {
    return send_msg(r->control_fd[0], MSG_DONE, NULL, 0, timer_seconds() + r->timeout_s);
}

// Reads what channel n has to say, if anything. 1: the job must stop (reason set).
static int read_control(Rdzv* r, int n, char* reason, size_t reason_len) {
    struct pollfd p = {.fd = r->control_fd[n], .events = POLLIN};
    if (p.fd < 0 || poll(&p, 1, 0) <= 0)
        return 0;
    char text[RDZV_TEXT_BYTES], why[256];
    size_t len = 0;
    MsgType type;
    const char* who = r->node_rank == 0 ? "node" : "the master, node";
    if (recv_msg(p.fd, &type, text, sizeof text - 1, &len, timer_seconds() + 1.0, why,
                 sizeof why) != 0) {
        close(r->control_fd[n]);
        r->control_fd[n] = -1;
        if (r->done[n])
            return 0; // a node that finished may leave
        snprintf(reason, reason_len, "%s %d went away (%s)", who, n, why);
        return 1;
    }
    text[len] = '\0';
    if (type == MSG_DONE) {
        r->done[n] = true;
        return 0;
    }
    snprintf(reason, reason_len, "%s", type == MSG_ABORT ? text : "unexpected message");
    return 1;
}

int rdzv_poll(Rdzv* r, char* reason, size_t reason_len) {
    for (int n = 0; n < r->nnodes; n++)
        if (n != r->node_rank && read_control(r, n, reason, reason_len) != 0)
            return 1;
    return 0;
}

int rdzv_master_wait_done(Rdzv* r, double deadline) {
    char reason[RDZV_TEXT_BYTES];
    for (;;) {
        int done = 1;
        for (int n = 1; n < r->nnodes; n++)
            done += r->done[n];
        if (done == r->nnodes)
            return 0;
        if (rdzv_poll(r, reason, sizeof reason) != 0) {
            check_message("job failed: %s", reason);
            return -1;
        }
        if (timer_seconds() > deadline) {
            check_message("timed out waiting for %d node%s to finish", r->nnodes - done,
                          r->nnodes - done > 1 ? "s" : "");
            return -1;
        }
        usleep(10000);
    }
}

void rdzv_close(Rdzv* r) {
    if (r->listen_fd >= 0)
        close(r->listen_fd);
    for (int n = 0; n < RDZV_MAX_NODES; n++)
        if (r->control_fd[n] >= 0)
            close(r->control_fd[n]);
    rdzv_init(r, r->nnodes, r->node_rank, r->master_addr, r->master_port, r->timeout_s, r->debug);
}
