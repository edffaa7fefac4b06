/*
 * rendezvous.c - the master/node protocol of a multi-node job (see rendezvous.h).
 *
 * Wire format: a 12-byte header, then the payload; integers in network byte order.
 *     u32 magic | u16 version | u16 type | u32 payload length
 * Strings travel in fixed-size fields, zero-padded; a field without a NUL byte is
 * refused, as is a length that does not match the type's layout. The cryptography is
 * libsodium's: random challenges (randombytes_buf), HMAC-SHA256 proofs, and their
 * comparison in constant time.
 */
#include "rendezvous.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "net.h"
#include "timer.h"

#define HELLO_WAIT_SECONDS 2.0 // how long one connection may take to answer its challenge
#define MESSAGE_BYTES (RDZV_HEADER_BYTES + RDZV_MAX_PAYLOAD)
#define NOT_A_MESSAGE 1 // recv_msg: bytes came, but they are no valid message

_Static_assert(RDZV_PROOF_BYTES == crypto_auth_hmacsha256_BYTES, "a proof is an HMAC-SHA256");

// ----------------------------------------------------------------------------
// encoding: a cursor over a byte buffer that refuses to run past its end

typedef struct {
    unsigned char* out;      // encoding: where to write
    const unsigned char* in; // decoding: what to read
    size_t len;              // bytes that fit, or bytes available to read
    size_t pos;
    bool bad; // ran past the end
} Cursor;

static void put_u32(Cursor* c, uint32_t v) {
    if (c->pos + 4 > c->len) {
        c->bad = true;
        return;
    }
    v = htonl(v);
    memcpy(c->out + c->pos, &v, 4);
    c->pos += 4;
}

static uint32_t get_u32(Cursor* c) {
    uint32_t v = 0;
    if (c->pos + 4 > c->len) {
        c->bad = true;
        return 0;
    }
    memcpy(&v, c->in + c->pos, 4);
    c->pos += 4;
    return ntohl(v);
}

static void put_bytes(Cursor* c, const void* p, size_t n) {
    if (c->pos + n > c->len) {
        c->bad = true;
        return;
    }
    memcpy(c->out + c->pos, p, n);
    c->pos += n;
}

static void get_bytes(Cursor* c, void* p, size_t n) {
    if (c->pos + n > c->len) {
        c->bad = true;
        return;
    }
    memcpy(p, c->in + c->pos, n);
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
    if (c->bad || memchr(s, '\0', n) == NULL) {
        c->bad = true;
        s[0] = '\0';
    }
}

// ----------------------------------------------------------------------------
// payloads

// Addresses from the wire must be dotted IPv4: a name would mean a DNS lookup without deadline.
static bool is_ipv4(const char* text) {
    struct in_addr addr;
    return inet_pton(AF_INET, text, &addr) == 1;
}

// HELLO's fields; the proof follows them on the wire.
static size_t encode_hello(const RdzvHello* h, unsigned char* buf, size_t cap) {
    Cursor c = {.out = buf, .len = cap};
    put_u32(&c, (uint32_t)h->node_rank);
    put_u32(&c, (uint32_t)h->nproc);
    put_text(&c, h->build_id, sizeof h->build_id);
    put_text(&c, h->nccl_version, sizeof h->nccl_version);
    put_text(&c, h->settings, sizeof h->settings);
    put_text(&c, h->ring_addr, sizeof h->ring_addr);
    for (int i = 0; i < h->nproc; i++)
        put_u32(&c, (uint32_t)h->ring_ports[i]);
    return c.bad ? 0 : c.pos;
}

static int decode_hello(RdzvMessage* m, const unsigned char* buf, size_t len) {
    Cursor c = {.in = buf, .len = len};
    RdzvHello* h = &m->hello;
    h->node_rank = (int)get_u32(&c);
    h->nproc = (int)get_u32(&c);
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
    m->signed_len = c.pos;
    get_bytes(&c, m->proof, RDZV_PROOF_BYTES);
    return c.bad || c.pos != len ? -1 : 0;
}

static size_t encode_world(const RdzvWorld* w, unsigned char* buf, size_t cap) {
    Cursor c = {.out = buf, .len = cap};
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

static int decode_world(RdzvWorld* w, const unsigned char* buf, size_t len) {
    Cursor c = {.in = buf, .len = len};
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

// REFUSE's and ABORT's reason: at most RDZV_TEXT_BYTES, NUL-terminated.
static int decode_text(char* text, const unsigned char* buf, size_t len) {
    if (len < 1 || len > RDZV_TEXT_BYTES || memchr(buf, '\0', len) == NULL)
        return -1;
    memcpy(text, buf, len);
    return 0;
}

// ----------------------------------------------------------------------------
// messages

static const char* type_name(RdzvType type) {
    static const char* const names[] = {"?",     "HELLO", "WORLD",     "REFUSE",
                                        "ABORT", "DONE",  "CHALLENGE", "STOP"};
    return type >= RDZV_HELLO && type <= RDZV_STOP ? names[type] : names[0];
}

// Checks a 12-byte header; its type and payload length. 0, or -1 with why set.
static int parse_header(const unsigned char* header, RdzvType* type, size_t* len, char* why,
                        size_t why_len) {
    uint32_t magic, length;
    uint16_t version, kind;
    memcpy(&magic, header, 4);
    memcpy(&version, header + 4, 2);
    memcpy(&kind, header + 6, 2);
    memcpy(&length, header + 8, 4);
    magic = ntohl(magic), version = ntohs(version), kind = ntohs(kind), length = ntohl(length);
    if (magic != RDZV_MAGIC)
        snprintf(why, why_len, "bad magic 0x%08x (not a multi_node agent?)", magic);
    else if (version != RDZV_VERSION)
        snprintf(why, why_len, "protocol version %u, this build speaks %u", version, RDZV_VERSION);
    else if (kind < RDZV_HELLO || kind > RDZV_STOP)
        snprintf(why, why_len, "unknown message type %u", kind);
    else if (length > RDZV_MAX_PAYLOAD)
        snprintf(why, why_len, "payload length %u is over the limit of %d bytes", length,
                 RDZV_MAX_PAYLOAD);
    else {
        *type = (RdzvType)kind;
        *len = length;
        return 0;
    }
    return -1;
}

// Decodes a payload of the given type (len bytes) into m. 0, or -1 with why set.
static int decode_payload(RdzvMessage* m, RdzvType type, const unsigned char* payload, size_t len,
                          char* why, size_t why_len) {
    memset(m, 0, sizeof *m);
    m->type = type;
    int bad = 0;
    switch (type) {
    case RDZV_HELLO:
        bad = decode_hello(m, payload, len);
        break;
    case RDZV_WORLD:
        bad = decode_world(&m->world, payload, len);
        break;
    case RDZV_REFUSE:
    case RDZV_ABORT:
    case RDZV_STOP:
        bad = decode_text(m->text, payload, len);
        break;
    case RDZV_DONE:
        bad = len != 0;
        break;
    case RDZV_CHALLENGE:
        bad = len != RDZV_CHALLENGE_BYTES;
        if (!bad)
            memcpy(m->challenge, payload, RDZV_CHALLENGE_BYTES);
        break;
    }
    if (bad)
        snprintf(why, why_len, "not a well-formed %s", type_name(type));
    return bad ? -1 : 0;
}

int rdzv_decode_message(RdzvMessage* out, const unsigned char* bytes, size_t len, char* why,
                        size_t why_len) {
    RdzvType type;
    size_t payload_len;
    if (len < RDZV_HEADER_BYTES) {
        snprintf(why, why_len, "%zu bytes are shorter than the 12-byte header", len);
        return -1;
    }
    if (parse_header(bytes, &type, &payload_len, why, why_len) != 0)
        return -1;
    if (payload_len != len - RDZV_HEADER_BYTES) {
        snprintf(why, why_len, "the header says %zu payload bytes, %zu came", payload_len,
                 len - RDZV_HEADER_BYTES);
        return -1;
    }
    return decode_payload(out, type, bytes + RDZV_HEADER_BYTES, payload_len, why, why_len);
}

// One write for header and payload: they leave together, and to a peer that has sent its
// message and hung up already the write still succeeds, so that what it sent is read.
static NetStatus send_msg(int fd, RdzvType type, const void* payload, size_t len, double deadline) {
    unsigned char header[RDZV_HEADER_BYTES];
    uint32_t magic = htonl(RDZV_MAGIC), length = htonl((uint32_t)len);
    uint16_t version = htons(RDZV_VERSION), kind = htons((uint16_t)type);
    memcpy(header, &magic, 4);
    memcpy(header + 4, &version, 2);
    memcpy(header + 6, &kind, 2);
    memcpy(header + 8, &length, 4);
    struct iovec pieces[2] = {{header, sizeof header}, {(void*)payload, len}};
    return net_exchange(fd, pieces, len > 0 ? 2 : 1, -1, NULL, 0, deadline);
}

// Receives one message: its bytes into bytes (MESSAGE_BYTES), decoded into m by the same
// code as rdzv_decode_message. Returns 0; a NetStatus if the bytes did not come; or
// NOT_A_MESSAGE. why says which.
static int recv_msg(int fd, RdzvMessage* m, unsigned char* bytes, double deadline, char* why,
                    size_t why_len) {
    RdzvType type;
    size_t len = 0;
    NetStatus st = net_recv_all(fd, bytes, RDZV_HEADER_BYTES, deadline);
    if (st != NET_OK) {
        snprintf(why, why_len, "%s", net_status_str(st));
        return st;
    }
    if (parse_header(bytes, &type, &len, why, why_len) != 0)
        return NOT_A_MESSAGE;
    st = len == 0 ? NET_OK : net_recv_all(fd, bytes + RDZV_HEADER_BYTES, len, deadline);
    if (st != NET_OK) {
        snprintf(why, why_len, "%s in the middle of a message", net_status_str(st));
        return st;
    }
    return decode_payload(m, type, bytes + RDZV_HEADER_BYTES, len, why, why_len) == 0
               ? 0
               : NOT_A_MESSAGE;
}

// ----------------------------------------------------------------------------
// proofs

// libsodium must be initialised before its first use; sodium_init may be called again.
#define CRYPTO_FAILED                                                                              \
    "rendezvous: libsodium failed to initialise (sodium_init): no challenge and no proof "         \
    "without it"
static bool crypto_ready(void) {
    return sodium_init() >= 0;
}

// The answer to a challenge: HMAC-SHA256 keyed with the token over the challenge and
// HELLO's fields (len bytes). The token stays here; only this digest travels.
static void hello_proof(unsigned char* proof, const char* token, const unsigned char* challenge,
                        const unsigned char* fields, size_t len) {
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, (const unsigned char*)token, strlen(token));
    crypto_auth_hmacsha256_update(&state, challenge, RDZV_CHALLENGE_BYTES);
    crypto_auth_hmacsha256_update(&state, fields, len);
    crypto_auth_hmacsha256_final(&state, proof);
    sodium_memzero(&state, sizeof state); // it holds the key, padded
}

// Whether m, the HELLO that arrived as bytes, proves that its sender knows the token and
// answered this connection's challenge (a HELLO recorded elsewhere answered another).
static bool proof_is_right(const Rdzv* r, const unsigned char* challenge, const RdzvMessage* m,
                           const unsigned char* bytes) {
    unsigned char want[RDZV_PROOF_BYTES];
    hello_proof(want, r->token, challenge, bytes + RDZV_HEADER_BYTES, m->signed_len);
    // Constant time: how long it takes says nothing about where the proofs differ.
    return crypto_verify_32(want, m->proof) == 0;
}

// ----------------------------------------------------------------------------
// the token

int rdzv_read_token(const char* token_file, char* token, size_t len, char* why, size_t why_len) {
    const char* env = getenv("DDP_TOKEN");
    if (token_file == NULL) {
        if (env != NULL && strlen(env) > RDZV_TOKEN_BYTES) {
            snprintf(why, why_len, "DDP_TOKEN is longer than %d characters", RDZV_TOKEN_BYTES);
            return -1;
        }
        snprintf(token, len, "%s", env != NULL ? env : "");
        return 0;
    }
    FILE* f = fopen(token_file, "r");
    if (f == NULL || fgets(token, (int)len, f) == NULL) {
        snprintf(why, why_len, "--token-file %s: %s", token_file,
                 f == NULL ? strerror(errno) : "the file is empty");
        if (f != NULL)
            fclose(f);
        return -1;
    }
    fclose(f);
    token[strcspn(token, "\r\n")] = '\0';
    if (strlen(token) > RDZV_TOKEN_BYTES) {
        snprintf(why, why_len, "--token-file %s: the token is longer than %d characters",
                 token_file, RDZV_TOKEN_BYTES);
        return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// the master

void rdzv_init(Rdzv* r, int nnodes, int node_rank, const char* master_addr, int master_port,
               const char* token, double timeout_s, bool debug) {
    memset(r, 0, sizeof *r);
    *r = (Rdzv){.nnodes = nnodes,
                .node_rank = node_rank,
                .master_addr = master_addr,
                .master_port = master_port,
                .timeout_s = timeout_s,
                .debug = debug,
                .listen_fd = -1};
    snprintf(r->token, sizeof r->token, "%s", token);
    for (int n = 0; n < RDZV_MAX_NODES; n++)
        r->control_fd[n] = -1;
}

int rdzv_master_listen(Rdzv* r, char* why, size_t why_len) {
    if (!crypto_ready()) {
        snprintf(why, why_len, "%s", CRYPTO_FAILED);
        return -1;
    }
    r->listen_fd = net_listen(r->master_addr, r->master_port);
    if (r->listen_fd < 0) {
        int err = errno;
        snprintf(why, why_len, "bind %s:%d: %s; %s", r->master_addr, r->master_port, strerror(err),
                 err == EADDRINUSE ? "use --master-port or stop the old run"
                                   : "is --master-addr an address of this machine (node 0)?");
        return -1;
    }
    if (r->debug)
        rank_log("rendezvous: step 1) master listening on %s:%d for %d node%s", r->master_addr,
                 r->master_port, r->nnodes - 1, r->nnodes > 2 ? "s" : "");
    return 0;
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

// Why the master refuses h, or "" if it accepts it. The proof comes first, so that a
// stranger learns nothing else about the job.
static void check_hello(const Rdzv* r, const RdzvHello* own, const RdzvHello* h, bool proof_ok,
                        char* why, size_t n) {
    why[0] = '\0';
    if (!proof_ok)
        snprintf(why, n, "wrong token or replayed answer (see --token-file or DDP_TOKEN)");
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

// Step 2) sends a fresh challenge (nonce) over fd and reads the answer, all within
// HELLO_WAIT_SECONDS. 0 with a HELLO in m (as it arrived in bytes), or -1 with why set.
static int challenge_and_read(int fd, unsigned char* nonce, RdzvMessage* m, unsigned char* bytes,
                              char* why, size_t why_len) {
    double deadline = timer_seconds() + HELLO_WAIT_SECONDS;
    randombytes_buf(nonce, RDZV_CHALLENGE_BYTES);
    NetStatus sent = send_msg(fd, RDZV_CHALLENGE, nonce, RDZV_CHALLENGE_BYTES, deadline);
    if (sent != NET_OK) {
        snprintf(why, why_len, "sending the challenge: %s", net_status_str(sent));
        return -1;
    }
    int got = recv_msg(fd, m, bytes, deadline, why, why_len);
    if (got == NET_TIMEOUT)
        snprintf(why + strlen(why), why_len - strlen(why),
                 " (no answer to the challenge within %.0f s)", HELLO_WAIT_SECONDS);
    else if (got == 0 && m->type != RDZV_HELLO)
        snprintf(why, why_len, "%s in answer to the challenge, not HELLO", type_name(m->type));
    return got == 0 && m->type == RDZV_HELLO ? 0 : -1;
}

// Takes one connection from the listener: its HELLO is accepted, or refused with a reason.
static void admit_one(Rdzv* r, const RdzvHello* own, int fd) {
    char peer[64], why[512];
    unsigned char nonce[RDZV_CHALLENGE_BYTES], bytes[MESSAGE_BYTES];
    RdzvMessage m;
    net_peer_name(fd, peer, sizeof peer);
    if (challenge_and_read(fd, nonce, &m, bytes, why, sizeof why) != 0) {
        rank_log("rendezvous: ignored a connection from %s: %s", peer, why);
        close(fd);
        return;
    }
    const RdzvHello* h = &m.hello;
    check_hello(r, own, h, proof_is_right(r, nonce, &m, bytes), why, sizeof why);
    if (why[0] != '\0') {
        rank_log("rendezvous: refused node %d from %s: %s", h->node_rank, peer, why);
        send_msg(fd, RDZV_REFUSE, why, strlen(why) + 1, timer_seconds() + 1.0);
        close(fd);
        return;
    }
    if (r->control_fd[h->node_rank] >= 0) { // check_hello found its first holder gone
        rank_log("rendezvous: node %d left before the world formed; %s takes its place",
                 h->node_rank, peer);
        close(r->control_fd[h->node_rank]);
    }
    r->control_fd[h->node_rank] = fd;
    r->hello[h->node_rank] = *h;
    if (r->debug)
        rank_log("rendezvous: step 2) node %d joined from %s with %d worker%s, ring at %s",
                 h->node_rank, peer, h->nproc, h->nproc > 1 ? "s" : "", h->ring_addr);
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
        rank_log("%s", reason);
        rdzv_send_abort(r, reason, true); // the nodes that came need not wait any longer
        return -1;
    }
    // Step 3) everyone is in: stop listening, so that nobody else can join.
    close(r->listen_fd);
    r->listen_fd = -1;
    if (r->debug)
        rank_log("rendezvous: step 3) all %d nodes are in: the master stops listening", r->nnodes);
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
            rank_log("rendezvous: step 4) WORLD to node %d: world size %d, its first rank %d", n,
                     world->world_size, world->rank_offset[n]);
        if (len == 0 || send_msg(r->control_fd[n], RDZV_WORLD, payload, len, deadline) != NET_OK) {
            rank_log("rendezvous: could not send WORLD to node %d", n);
            return -1;
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// a node

int rdzv_connect(Rdzv* r) {
    if (!crypto_ready()) {
        rank_log("%s", CRYPTO_FAILED);
        return -1;
    }
    double deadline = timer_seconds() + r->timeout_s;
    char why[512];
    if (r->debug)
        rank_log("rendezvous: step 1) node %d connecting to the master at %s:%d", r->node_rank,
                 r->master_addr, r->master_port);
    r->control_fd[0] = net_connect_retry(r->master_addr, r->master_port, deadline, why, sizeof why);
    if (r->control_fd[0] < 0) {
        rank_log("rendezvous: cannot reach the master: %s; gave up before the %.0f s "
                 "deadline (see --rdzv-timeout)",
                 why, r->timeout_s);
        return -1;
    }
    return 0;
}

// Node: receives the master's next message, which must be of type want; a REFUSE or an
// ABORT instead is reported with the master's reason. Returns 0, or -1 after a message.
static int expect_from_master(int fd, RdzvType want, RdzvMessage* m, unsigned char* bytes,
                              double deadline) {
    char why[512];
    if (recv_msg(fd, m, bytes, deadline, why, sizeof why) != 0) {
        rank_log("rendezvous: waiting for the master's %s: %s", type_name(want), why);
        return -1;
    }
    if (m->type == RDZV_REFUSE || m->type == RDZV_ABORT) {
        rank_log("rendezvous: the master %s: %s",
                 m->type == RDZV_REFUSE ? "refused this node" : "gave up", m->text);
        return -1;
    }
    if (m->type != want) {
        rank_log("rendezvous: the master sent %s where %s belongs", type_name(m->type),
                 type_name(want));
        return -1;
    }
    return 0;
}

int rdzv_join(Rdzv* r, const RdzvHello* own, RdzvWorld* world) {
    // The master sends WORLD when the last node is in, and after its workers' set-up.
    double deadline = timer_seconds() + r->timeout_s + r->world_wait_s;
    int fd = r->control_fd[0];
    unsigned char bytes[MESSAGE_BYTES];
    RdzvMessage m;
    RETURN_IF_FAILED(expect_from_master(fd, RDZV_CHALLENGE, &m, bytes, deadline));
    // Step 2) HELLO answers the challenge: its fields, then their proof.
    size_t len = encode_hello(own, bytes, sizeof bytes - RDZV_PROOF_BYTES);
    hello_proof(bytes + len, r->token, m.challenge, bytes, len);
    len += RDZV_PROOF_BYTES;
    if (r->debug)
        rank_log("rendezvous: step 2) HELLO sent: node %d, %d worker%s, ring at %s", own->node_rank,
                 own->nproc, own->nproc > 1 ? "s" : "", own->ring_addr);
    NetStatus sent = send_msg(fd, RDZV_HELLO, bytes, len, deadline);
    if (sent != NET_OK) {
        rank_log("rendezvous: sending HELLO: %s", net_status_str(sent));
        return -1;
    }
    RETURN_IF_FAILED(expect_from_master(fd, RDZV_WORLD, &m, bytes, deadline));
    if (m.world.nnodes != r->nnodes || m.world.nproc[r->node_rank] != own->nproc) {
        rank_log("rendezvous: the master's answer is not a WORLD that fits this node");
        return -1;
    }
    *world = m.world;
    if (r->debug)
        rank_log("rendezvous: step 4) WORLD received: world size %d, first rank here %d",
                 world->world_size, world->rank_offset[r->node_rank]);
    return 0;
}

// ----------------------------------------------------------------------------
// control channels

// A reason longer than a REFUSE or an ABORT may carry is cut, so that it still arrives.
static void send_text(int fd, RdzvType type, const char* text) {
    char field[RDZV_TEXT_BYTES];
    snprintf(field, sizeof field, "%s", text);
    if (fd >= 0)
        send_msg(fd, type, field, strlen(field) + 1, timer_seconds() + 1.0);
}

void rdzv_send_abort(Rdzv* r, const char* reason, bool for_good) {
    for (int n = 0; n < r->nnodes; n++)
        if (!r->done[n])
            send_text(r->control_fd[n], for_good ? RDZV_STOP : RDZV_ABORT, reason);
}

int rdzv_send_done(Rdzv* r) {
    return send_msg(r->control_fd[0], RDZV_DONE, NULL, 0, timer_seconds() + r->timeout_s) == NET_OK
               ? 0
               : -1;
}

// Reads what channel n has to say, if anything (the cause of a stop into reason).
static RdzvPoll read_control(Rdzv* r, int n, char* reason, size_t reason_len) {
    struct pollfd p = {.fd = r->control_fd[n], .events = POLLIN};
    if (p.fd < 0 || poll(&p, 1, 0) <= 0)
        return 0;
    unsigned char bytes[MESSAGE_BYTES];
    RdzvMessage m;
    char why[256];
    const char* who = r->node_rank == 0 ? "node" : "the master, node";
    if (recv_msg(p.fd, &m, bytes, timer_seconds() + 1.0, why, sizeof why) != 0) {
        close(r->control_fd[n]);
        r->control_fd[n] = -1;
        if (r->done[n])
            return RDZV_ALL_WELL; // a node that finished may leave
        snprintf(reason, reason_len, "%s %d went away (%s)", who, n, why);
        return RDZV_JOB_FAILED;
    }
    if (m.type == RDZV_DONE) {
        r->done[n] = true;
        return RDZV_ALL_WELL;
    }
    bool told = m.type == RDZV_ABORT || m.type == RDZV_STOP;
    snprintf(reason, reason_len, "%s", told ? m.text : "unexpected message");
    return m.type == RDZV_STOP ? RDZV_JOB_STOPPED : RDZV_JOB_FAILED;
}

RdzvPoll rdzv_poll(Rdzv* r, char* reason, size_t reason_len) {
    for (int n = 0; n < r->nnodes; n++) {
        RdzvPoll found = n != r->node_rank ? read_control(r, n, reason, reason_len) : RDZV_ALL_WELL;
        if (found != RDZV_ALL_WELL)
            return found;
    }
    return RDZV_ALL_WELL;
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
            rank_log("job failed: %s", reason);
            return -1;
        }
        if (timer_seconds() > deadline) {
            rank_log("timed out waiting for %d node%s to finish", r->nnodes - done,
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
    char token[sizeof r->token]; // rdzv_init clears r before it copies the token
    memcpy(token, r->token, sizeof token);
    rdzv_init(r, r->nnodes, r->node_rank, r->master_addr, r->master_port, token, r->timeout_s,
              r->debug);
}
