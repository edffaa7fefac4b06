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
#include "file.h"
#include "net.h"
#include "timer.h"

#define HELLO_WAIT_SECONDS 2.0 // how long one connection may take to answer its challenge
#define HELLO_WAIT_TEXT "2 s"
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

// HELLO's fields, the node's challenge last; the proof follows them on the wire.
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
    put_bytes(&c, h->nonce, RDZV_CHALLENGE_BYTES);
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
    get_bytes(&c, h->nonce, RDZV_CHALLENGE_BYTES);
    m->signed_len = c.pos;
    get_bytes(&c, m->proof, RDZV_PROOF_BYTES);
    return c.bad || c.pos != len ? -1 : 0;
}

// WORLD's fields; the master's proof follows them on the wire.
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

static int decode_world(RdzvMessage* m, const unsigned char* buf, size_t len) {
    Cursor c = {.in = buf, .len = len};
    RdzvWorld* w = &m->world;
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
    m->signed_len = c.pos;
    get_bytes(&c, m->proof, RDZV_PROOF_BYTES);
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
        bad = decode_world(m, payload, len);
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

// HMAC-SHA256 keyed with the token over label, the challenges (each RDZV_CHALLENGE_BYTES;
// second may be NULL) and len bytes of a message's fields. The token stays here; only
// this digest travels. The label keeps a node's proof from ever passing as a master's.
static void make_proof(unsigned char* proof, const char* token, const char* label,
                       const unsigned char* first, const unsigned char* second,
                       const unsigned char* fields, size_t len) {
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, (const unsigned char*)token, strlen(token));
    crypto_auth_hmacsha256_update(&state, (const unsigned char*)label, strlen(label));
    crypto_auth_hmacsha256_update(&state, first, RDZV_CHALLENGE_BYTES);
    if (second != NULL)
        crypto_auth_hmacsha256_update(&state, second, RDZV_CHALLENGE_BYTES);
    crypto_auth_hmacsha256_update(&state, fields, len);
    crypto_auth_hmacsha256_final(&state, proof);
    sodium_memzero(&state, sizeof state); // it holds the key, padded
}

// A node's answer to the master's challenge: over HELLO's fields (its own challenge in them).
static void hello_proof(unsigned char* proof, const char* token, const unsigned char* challenge,
                        const unsigned char* fields, size_t len) {
    make_proof(proof, token, "DDP-HELLO", challenge, NULL, fields, len);
}

// The master's answer to a node's challenge: over both challenges and WORLD's fields, so
// that a WORLD is good for that node, on that connection, with that content only.
static void world_proof(unsigned char* proof, const char* token, const unsigned char* challenge,
                        const unsigned char* nonce, const unsigned char* fields, size_t len) {
    make_proof(proof, token, "DDP-WORLD", challenge, nonce, fields, len);
}

// Whether the proof in m (which arrived as bytes) is want's, compared in constant time:
// how long it takes says nothing about where the proofs differ.
static bool proof_matches(const unsigned char* want, const RdzvMessage* m) {
    return crypto_verify_32(want, m->proof) == 0;
}

// ----------------------------------------------------------------------------
// the token

#define TOKEN_FILE_MAX_BYTES 4096

// The first line of a token file, checked, into token.
static int token_from_file(const char* path, RdzvToken* token, char* why, size_t why_len) {
    size_t len;
    mode_t mode;
    char* text = file_read_all(path, TOKEN_FILE_MAX_BYTES, &len, &mode, why, why_len);
    if (text == NULL) {
        char problem[ERROR_TEXT_BYTES];
        snprintf(problem, sizeof problem, "%s", why);
        snprintf(why, why_len, "--token-file %s", problem);
        return -1;
    }
    size_t line = strcspn(text, "\r\n");
    if (line == 0)
        snprintf(why, why_len, "--token-file %s: its first line is empty (a token cannot be empty)",
                 path);
    else if (line > RDZV_TOKEN_BYTES)
        snprintf(why, why_len, "--token-file %s: the token is longer than %d characters", path,
                 RDZV_TOKEN_BYTES);
    else
        snprintf(token->text, sizeof token->text, "%.*s", (int)line, text);
    free(text);
    if (line == 0 || line > RDZV_TOKEN_BYTES)
        return -1;
    if ((mode & 077) != 0)
        snprintf(token->warning, sizeof token->warning,
                 "warning: --token-file %s can be read by other users (mode %04o): chmod 600 %s",
                 path, (unsigned)mode, path);
    return 0;
}

int rdzv_read_token(const char* token_file, RdzvToken* token, char* why, size_t why_len) {
    *token = (RdzvToken){0};
    if (token_file != NULL)
        return token_from_file(token_file, token, why, why_len);
    const char* env = getenv("DDP_TOKEN"); // an empty one is as good as unset
    if (env != NULL && strlen(env) > RDZV_TOKEN_BYTES) {
        snprintf(why, why_len, "DDP_TOKEN is longer than %d characters", RDZV_TOKEN_BYTES);
        return -1;
    }
    snprintf(token->text, sizeof token->text, "%s", env != NULL ? env : "");
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

// A connection that has its challenge and has not answered yet. The master serves up to
// RDZV_MAX_PENDING of them side by side, so that one that says nothing holds back nobody.
typedef struct {
    int fd;            // -1: a free slot
    double deadline;   // its answer is due by then
    double arrived_at; // the oldest gives way when every slot is taken
    unsigned char challenge[RDZV_CHALLENGE_BYTES];
    unsigned char* bytes; // (MESSAGE_BYTES) what it sent so far
    size_t got, want;     // bytes so far; bytes of its message once the header is in
    RdzvType type;        // the message's, once the header is in
    char peer[64];
} Pending;

// The first few ignored connections are logged one by one; a flood of strangers is
// counted, so that it cannot flood the log too (rdzv_master_gather says how many).
#define LOGGED_IGNORED 10

static void pending_close(Rdzv* r, Pending* p, const char* why) {
    if (why != NULL && r->ignored++ < LOGGED_IGNORED)
        rank_log("rendezvous: ignored a connection from %s: %s", p->peer, why);
    close(p->fd);
    p->fd = -1;
}

// Step 2) a fresh challenge for a new connection, in slot p.
static void pending_open(Rdzv* r, Pending* p, int fd, double gather_deadline) {
    double now = timer_seconds();
    *p = (Pending){.fd = fd, .arrived_at = now, .bytes = p->bytes, .want = RDZV_HEADER_BYTES};
    p->deadline =
        now + HELLO_WAIT_SECONDS < gather_deadline ? now + HELLO_WAIT_SECONDS : gather_deadline;
    net_peer_name(fd, p->peer, sizeof p->peer);
    randombytes_buf(p->challenge, RDZV_CHALLENGE_BYTES);
    NetStatus sent = send_msg(fd, RDZV_CHALLENGE, p->challenge, RDZV_CHALLENGE_BYTES, p->deadline);
    if (sent != NET_OK) {
        char why[128];
        snprintf(why, sizeof why, "sending the challenge: %s", net_status_str(sent));
        pending_close(r, p, why);
    }
}

// Takes every connection waiting on the listener into a free slot, the oldest pending
// one giving way when none is free.
static void accept_waiting(Rdzv* r, Pending* pending, double gather_deadline) {
    int fd;
    while ((fd = net_accept(r->listen_fd, 0.0)) >= 0) { // a deadline passed: do not wait
        Pending* slot = NULL;
        for (int i = 0; i < RDZV_MAX_PENDING; i++)
            if (slot == NULL || pending[i].fd < 0 ||
                (slot->fd >= 0 && pending[i].arrived_at < slot->arrived_at))
                slot = &pending[i];
        if (slot->fd >= 0)
            pending_close(r, slot, "no answer yet, and newer connections are waiting");
        pending_open(r, slot, fd, gather_deadline);
    }
}

// Whether the HELLO in m (which arrived as bytes, answering challenge) proves that its
// sender knows the token and answered this connection (a recorded HELLO answered another).
static bool hello_proof_is_right(const Rdzv* r, const unsigned char* challenge,
                                 const RdzvMessage* m, const unsigned char* bytes) {
    unsigned char want[RDZV_PROOF_BYTES];
    hello_proof(want, r->token, challenge, bytes + RDZV_HEADER_BYTES, m->signed_len);
    return proof_matches(want, m);
}

// What the master makes of a message that came whole.
typedef enum { ANSWER_ACCEPTED, ANSWER_REFUSED, ANSWER_NOT_A_HELLO } Answer;

// Checks the message that came whole on p: a HELLO to accept (m filled), one refused (the
// node was told why, and it was logged), or no HELLO at all (why says what it was).
static Answer check_answer(const Rdzv* r, const RdzvHello* own, Pending* p, RdzvMessage* m,
                           char* why, size_t why_len) {
    size_t len = p->got - RDZV_HEADER_BYTES;
    if (decode_payload(m, p->type, p->bytes + RDZV_HEADER_BYTES, len, why, why_len) != 0)
        return ANSWER_NOT_A_HELLO;
    if (m->type != RDZV_HELLO) {
        snprintf(why, why_len, "%s in answer to the challenge, not HELLO", type_name(m->type));
        return ANSWER_NOT_A_HELLO;
    }
    check_hello(r, own, &m->hello, hello_proof_is_right(r, p->challenge, m, p->bytes), why,
                why_len);
    if (why[0] == '\0')
        return ANSWER_ACCEPTED;
    rank_log("rendezvous: refused node %d from %s: %s", m->hello.node_rank, p->peer, why);
    send_msg(p->fd, RDZV_REFUSE, why, strlen(why) + 1, timer_seconds() + 1.0);
    return ANSWER_REFUSED;
}

#define RING_TEXT_BYTES (RDZV_ADDR_BYTES + WORKERS_MAX * 6)

// "ADDR:PORT,PORT,...": where a node's workers listen for the ring, for --debug; out.
static const char* ring_of(const RdzvHello* h, char out[RING_TEXT_BYTES]) {
    size_t used = (size_t)snprintf(out, RING_TEXT_BYTES, "%s:", h->ring_addr);
    for (int i = 0; i < h->nproc && used < RING_TEXT_BYTES; i++)
        used += (size_t)snprintf(out + used, RING_TEXT_BYTES - used, "%s%d", i > 0 ? "," : "",
                                 h->ring_ports[i]);
    return out;
}

// A whole message came on p: a HELLO is accepted, or refused with a reason.
static void admit(Rdzv* r, const RdzvHello* own, Pending* p) {
    static RdzvMessage m; // 8 KB: not on the stack
    char why[ERROR_TEXT_BYTES] = "";
    Answer answer = check_answer(r, own, p, &m, why, sizeof why);
    if (answer != ANSWER_ACCEPTED) {
        pending_close(r, p, answer == ANSWER_NOT_A_HELLO ? why : NULL);
        return;
    }
    const RdzvHello* h = &m.hello;
    if (r->control_fd[h->node_rank] >= 0) { // check_hello found its first holder gone
        rank_log("rendezvous: node %d left before the world formed; %s takes its place",
                 h->node_rank, p->peer);
        close(r->control_fd[h->node_rank]);
    }
    r->control_fd[h->node_rank] = p->fd;
    r->hello[h->node_rank] = *h;
    memcpy(r->challenge[h->node_rank], p->challenge, RDZV_CHALLENGE_BYTES);
    p->fd = -1; // the connection is the node's control channel now
    char ring[RING_TEXT_BYTES];
    if (r->debug)
        rank_log("rendezvous: step 2) node %d joined from %s with %d worker%s, ring at %s",
                 h->node_rank, p->peer, h->nproc, h->nproc > 1 ? "s" : "", ring_of(h, ring));
}

// Reads all that p's connection has now; a whole message goes on to admit. All of it: a
// stranger that has sent its garbage (and hung up) is dealt with before a node that
// comes after it has said a word.
static void read_pending(Rdzv* r, const RdzvHello* own, Pending* p) {
    char why[ERROR_TEXT_BYTES];
    while (p->got < p->want) {
        ssize_t n = recv(p->fd, p->bytes + p->got, p->want - p->got, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return; // the rest comes later
        if (n <= 0) {
            bool closed = n == 0 || errno == ECONNRESET || errno == EPIPE;
            snprintf(why, sizeof why, "%s%s",
                     closed ? "connection closed by the peer" : strerror(errno),
                     p->got > 0 ? " in the middle of a message" : "");
            pending_close(r, p, why);
            return;
        }
        p->got += (size_t)n;
        size_t payload = 0;
        if (p->got == RDZV_HEADER_BYTES) { // the header is in: now the payload it announces
            if (parse_header(p->bytes, &p->type, &payload, why, sizeof why) != 0) {
                pending_close(r, p, why);
                return;
            }
            p->want += payload;
        }
    }
    admit(r, own, p);
}

static int nodes_in(const Rdzv* r) {
    int n = 1; // the master
    for (int i = 1; i < r->nnodes; i++)
        n += r->control_fd[i] >= 0;
    return n;
}

// Waits on the listener and every pending connection until one of them has something, a
// pending answer is overdue (closed here), or deadline. fds (1 + RDZV_MAX_PENDING).
static void wait_for_any(Rdzv* r, Pending* pending, struct pollfd* fds, double deadline) {
    double now = timer_seconds(), until = deadline;
    fds[0] = (struct pollfd){.fd = r->listen_fd, .events = POLLIN};
    for (int i = 0; i < RDZV_MAX_PENDING; i++) {
        if (pending[i].fd >= 0 && pending[i].deadline <= now)
            pending_close(r, &pending[i],
                          "timed out (no answer to the challenge within " HELLO_WAIT_TEXT ")");
        fds[1 + i] = (struct pollfd){.fd = pending[i].fd, .events = POLLIN};
        if (pending[i].fd >= 0 && pending[i].deadline < until)
            until = pending[i].deadline;
    }
    int ms = until > now ? (int)((until - now) * 1000.0) + 1 : 0;
    poll(fds, 1 + RDZV_MAX_PENDING, ms);
}

// Says which node ranks are missing when the gather times out, and ends it for everyone.
static void give_up_gather(Rdzv* r) {
    char missing[256] = "", reason[512];
    for (int i = 1; i < r->nnodes; i++)
        if (r->control_fd[i] < 0)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %d", i);
    snprintf(reason, sizeof reason,
             "rendezvous: timed out after %.0f s with %d of %d nodes; missing node rank%s:%s "
             "(see --rdzv-timeout)",
             r->timeout_s, nodes_in(r), r->nnodes, strchr(missing + 1, ' ') ? "s" : "", missing);
    rank_log("%s", reason);
    rdzv_send_abort(r, reason, true); // the nodes that came need not wait any longer
}

int rdzv_master_gather(Rdzv* r, const RdzvHello* own) {
    r->hello[0] = *own;
    r->ignored = 0;
    char ring[RING_TEXT_BYTES];
    if (r->debug)
        rank_log("rendezvous: step 2) the master's %d worker%s, ring at %s", own->nproc,
                 own->nproc > 1 ? "s" : "", ring_of(own, ring));
    double deadline = timer_seconds() + r->timeout_s;
    Pending* pending = calloc(RDZV_MAX_PENDING, sizeof *pending);
    unsigned char* buffers = malloc((size_t)RDZV_MAX_PENDING * MESSAGE_BYTES);
    struct pollfd fds[1 + RDZV_MAX_PENDING];
    if (pending == NULL || buffers == NULL) {
        free(pending), free(buffers);
        rank_log("rendezvous: out of memory for the connections to come");
        return -1;
    }
    for (int i = 0; i < RDZV_MAX_PENDING; i++)
        pending[i] = (Pending){.fd = -1, .bytes = buffers + (size_t)i * MESSAGE_BYTES};
    while (nodes_in(r) < r->nnodes && timer_seconds() < deadline) {
        wait_for_any(r, pending, fds, deadline);
        if (fds[0].revents & POLLIN)
            accept_waiting(r, pending, deadline);
        // Every connection with something to say is heard, even after the last node is in.
        for (int i = 0; i < RDZV_MAX_PENDING; i++)
            if (pending[i].fd >= 0 && pending[i].fd == fds[1 + i].fd && fds[1 + i].revents)
                read_pending(r, own, &pending[i]);
    }
    for (int i = 0; i < RDZV_MAX_PENDING; i++)
        if (pending[i].fd >= 0)
            pending_close(r, &pending[i], "the rendezvous is over");
    free(pending), free(buffers);
    if (r->ignored > LOGGED_IGNORED)
        rank_log("rendezvous: ignored %d more connections that did not answer as nodes",
                 r->ignored - LOGGED_IGNORED);
    if (nodes_in(r) < r->nnodes) {
        give_up_gather(r);
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
    size_t len = encode_world(world, payload, sizeof payload - RDZV_PROOF_BYTES);
    double deadline = timer_seconds() + r->timeout_s;
    for (int n = 1; n < r->nnodes; n++) {
        if (r->debug)
            rank_log("rendezvous: step 4) WORLD to node %d: world size %d, its first rank %d", n,
                     world->world_size, world->rank_offset[n]);
        // The same world for every node, with a proof for that node's challenges.
        world_proof(payload + len, r->token, r->challenge[n], r->hello[n].nonce, payload, len);
        if (len == 0 || send_msg(r->control_fd[n], RDZV_WORLD, payload, len + RDZV_PROOF_BYTES,
                                 deadline) != NET_OK) {
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
    if (m->type == RDZV_REFUSE || m->type == RDZV_ABORT || m->type == RDZV_STOP) {
        rank_log("rendezvous: the master %s: %s",
                 m->type == RDZV_REFUSE ? "refused this node"
                 : m->type == RDZV_STOP ? "stopped the job"
                                        : "gave up",
                 m->text);
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
    memcpy(r->challenge[0], m.challenge, RDZV_CHALLENGE_BYTES);
    // Step 2) HELLO answers the challenge: its fields with a challenge of this node's own,
    // then their proof.
    RdzvHello hello = *own;
    randombytes_buf(hello.nonce, RDZV_CHALLENGE_BYTES);
    size_t len = encode_hello(&hello, bytes, sizeof bytes - RDZV_PROOF_BYTES);
    hello_proof(bytes + len, r->token, r->challenge[0], bytes, len);
    len += RDZV_PROOF_BYTES;
    char ring[RING_TEXT_BYTES];
    if (r->debug)
        rank_log("rendezvous: step 2) HELLO sent: node %d, %d worker%s, ring at %s", own->node_rank,
                 own->nproc, own->nproc > 1 ? "s" : "", ring_of(own, ring));
    NetStatus sent = send_msg(fd, RDZV_HELLO, bytes, len, deadline);
    if (sent != NET_OK) {
        rank_log("rendezvous: sending HELLO: %s", net_status_str(sent));
        return -1;
    }
    RETURN_IF_FAILED(expect_from_master(fd, RDZV_WORLD, &m, bytes, deadline));
    // Step 4) WORLD, believed only with the master's proof of the token.
    unsigned char want[RDZV_PROOF_BYTES];
    world_proof(want, r->token, r->challenge[0], hello.nonce, bytes + RDZV_HEADER_BYTES,
                m.signed_len);
    if (!proof_matches(want, &m)) {
        rank_log("rendezvous: the master at %s:%d did not prove it knows the token (a wrong "
                 "token there, or not the master at all): this node refuses its WORLD",
                 r->master_addr, r->master_port);
        return -1;
    }
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
