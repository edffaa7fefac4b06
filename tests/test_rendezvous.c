/*
 * test_rendezvous.c - the master/node protocol of common/rendezvous.h, in one process.
 *
 * The test process is the master (rdzv_master_listen, rdzv_master_gather,
 * rdzv_master_send_world); the nodes are children it forks, which call
 * rdzv_connect and rdzv_join and send back through pipes what they received
 * and what they printed. Children that must arrive in order wait on a pipe
 * (a gate) until the ones before them have connected: the master takes
 * connections in the order they came. Some children speak the wire format by
 * hand, from its documentation (a 12-byte header, u32 magic "DDPR", u16 version 2,
 * u16 type, u32 length, network byte order; HELLO's proof is HMAC-SHA256 keyed with
 * the token over the CHALLENGE and HELLO's fields), to check the layout and to send
 * what no agent would. Some tests play the master themselves, to see the bytes a node
 * sends. Before each gather the stack is filled with a pattern, so that a variable
 * the master forgets to set shows up every time. Every wait has a deadline; children
 * die with the test.
 *
 * Covered: WORLD's contents (world size, each node's first rank with different
 * worker counts, ring addresses and ports as sent, NCCL's id), every reason to
 * refuse a node, the token (never sent; a wrong one, a replayed answer and a
 * connection that never answers the challenge are turned away while the job forms),
 * malformed HELLOs, the decoder on truncated, oversized and garbage bytes, the
 * listener closed once the world is formed, a node's view of a master that is
 * absent, silent or odd, and the control channels (ABORT, DONE, a node that goes
 * away).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "rendezvous.h"
#include "support/proc.h"

// Every test has its own port (Criterion runs tests in parallel): port_for_test(50 + n).
#define RDZV_TIMEOUT_S 10.0 // of the master and of every node: a test that waits this long fails
#define CHILD_DEADLINE_S 20.0

// How a node child ended.
enum {
    CHILD_JOINED = 0,
    CHILD_GATE_TIMED_OUT = 10,
    CHILD_CANNOT_CONNECT = 11,
    CHILD_JOIN_FAILED = 12,
    CHILD_NOT_CLOSED = 13, // a raw child: the master kept a garbage connection open
    CHILD_BAD_ANSWER = 14, // a raw child: the master's answer is not a WORLD
};

// ----------------------------------------------------------------------------
// nodes in child processes

typedef struct {
    pid_t pid;
    int err_fd;     // the read end of its stderr
    int answer_fd;  // the read end of what it received (a RdzvWorld, or raw bytes)
    int status;     // exit status once collected; -1 if it did not exit normally
    char err[4096]; // what it printed
    unsigned char answer[sizeof(RdzvWorld)];
    size_t answer_len;
} Child;

static int master_fd = -1; // the master's listening socket: no child may keep it open

// A gate: children that come later wait until `count` bytes arrived (one per child
// that has connected before them).
typedef struct {
    int fds[2];
} Gate;

static void gate_open(Gate* g) {
    cr_assert_eq(pipe(g->fds), 0, "pipe: %s", strerror(errno));
}

// In a child: waits for count bytes on the gate; 0, or -1 after 10 s.
static int gate_wait(const Gate* g, int count) {
    double deadline = now_seconds() + 10.0;
    char byte;
    for (int got = 0; got < count;) {
        struct pollfd p = {.fd = g->fds[0], .events = POLLIN};
        int ms = (int)((deadline - now_seconds()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) <= 0)
            return -1;
        got += read(g->fds[0], &byte, 1) == 1;
    }
    return 0;
}

static void gate_pass(const Gate* g) {
    if (write(g->fds[1], "x", 1) != 1)
        _exit(CHILD_GATE_TIMED_OUT);
}

static void write_all(int fd, const void* buf, size_t len) {
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, (const char*)buf + done, len - done);
        if (n <= 0)
            _exit(CHILD_GATE_TIMED_OUT);
        done += (size_t)n;
    }
}

// Forks a child whose stderr and answer come back through pipes; returns 0 in the child.
static pid_t fork_node(Child* c, int* answer_write_fd) {
    int err_pipe[2], answer_pipe[2];
    cr_assert(pipe(err_pipe) == 0 && pipe(answer_pipe) == 0, "pipe: %s", strerror(errno));
    memset(c, 0, sizeof *c);
    c->pid = fork_child();
    if (c->pid == 0) {
        if (master_fd >= 0)
            close(master_fd);
        close(err_pipe[0]), close(answer_pipe[0]);
        dup2(err_pipe[1], STDERR_FILENO);
        close(err_pipe[1]);
        *answer_write_fd = answer_pipe[1];
        return 0;
    }
    close(err_pipe[1]), close(answer_pipe[1]);
    c->err_fd = err_pipe[0], c->answer_fd = answer_pipe[0];
    return c->pid;
}

// When a node passes its gate `then`: once it has connected (a node that joins hears
// WORLD only when every node is in), or once the master has refused it (the master hears
// connections side by side: a node that must come after a refusal starts then).
typedef enum { ONCE_CONNECTED, ONCE_REFUSED } GateWhen;

// A node that joins as the agents do, with the job's token: rdzv_connect, then
// rdzv_join with own; it sends back the WORLD it received. It waits for `wait` bytes
// on gate `after` before it connects and passes gate `then` as `when` says (either gate
// may be NULL).
static void spawn_node(Child* c, int nnodes, int port, const char* token, const RdzvHello* own,
                       const Gate* after, int wait, const Gate* then, GateWhen when) {
    int answer_fd;
    if (fork_node(c, &answer_fd) != 0)
        return;
    if (after != NULL && gate_wait(after, wait) != 0)
        _exit(CHILD_GATE_TIMED_OUT);
    Rdzv r;
    RdzvWorld world;
    rdzv_init(&r, nnodes, own->node_rank, "127.0.0.1", port, token, RDZV_TIMEOUT_S, false);
    if (rdzv_connect(&r) != 0)
        _exit(CHILD_CANNOT_CONNECT);
    if (then != NULL && when == ONCE_CONNECTED)
        gate_pass(then);
    if (rdzv_join(&r, own, &world) != 0) {
        if (then != NULL && when == ONCE_REFUSED)
            gate_pass(then);
        _exit(CHILD_JOIN_FAILED);
    }
    write_all(answer_fd, &world, sizeof world);
    rdzv_close(&r);
    _exit(CHILD_JOINED);
}

// Waits for the child's end (killing it at the deadline, which fails the test) and
// reads what it printed and sent back.
static void collect(Child* c) {
    int wstatus = reap_child(c->pid, CHILD_DEADLINE_S);
    size_t len = 0;
    ssize_t n;
    while (len + 1 < sizeof c->err &&
           (n = read(c->err_fd, c->err + len, sizeof c->err - 1 - len)) > 0)
        len += (size_t)n;
    c->err[len] = '\0';
    while (c->answer_len < sizeof c->answer && (n = read(c->answer_fd, c->answer + c->answer_len,
                                                         sizeof c->answer - c->answer_len)) > 0)
        c->answer_len += (size_t)n;
    close(c->err_fd), close(c->answer_fd);
    cr_assert_neq(wstatus, -1, "a child was still running after %.0f s; its stderr:\n%s",
                  CHILD_DEADLINE_S, c->err);
    c->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
    cr_assert_neq(c->status, -1, "a child died (wait status 0x%x); its stderr:\n%s", wstatus,
                  c->err);
}

// A node child that joined: its WORLD.
static const RdzvWorld* joined_world(const Child* c, const char* who) {
    cr_assert_eq(c->status, CHILD_JOINED, "%s did not join: exit status %d; stderr:\n%s", who,
                 c->status, c->err);
    cr_assert_eq(c->answer_len, sizeof(RdzvWorld), "%s sent back %zu bytes of its WORLD", who,
                 c->answer_len);
    return (const RdzvWorld*)c->answer;
}

// ----------------------------------------------------------------------------
// the master's log: the test process's stderr, caught in a file

static FILE* caught;
static int saved_stderr = -1;

static void catch_stderr(void) {
    fflush(stderr);
    caught = tmpfile();
    cr_assert_not_null(caught, "tmpfile: %s", strerror(errno));
    saved_stderr = dup(STDERR_FILENO);
    cr_assert(saved_stderr >= 0 && dup2(fileno(caught), STDERR_FILENO) >= 0, "dup2: %s",
              strerror(errno));
}

// Gives stderr back and copies what was caught into log (len).
static void release_stderr(char* log, size_t len) {
    fflush(stderr);
    if (saved_stderr >= 0) {
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        saved_stderr = -1;
    }
    log[0] = '\0';
    if (caught != NULL) {
        rewind(caught);
        size_t n = fread(log, 1, len - 1, caught);
        log[n] = '\0';
        fclose(caught);
        caught = NULL;
    }
}

// .fini of every test: children left by a failed assertion are killed.
static void end_children_and_release_stderr(void) {
    char ignored[16];
    proc_end_leftovers();
    release_stderr(ignored, sizeof ignored);
}

// ----------------------------------------------------------------------------
// HELLOs and the master

#define TOKEN "job-token-4f1c"
#define BUILD "test-build"
#define SETTINGS "epochs=3 batch_size=32 seed=42"
#define WRONG_PROOF "wrong token or replayed answer (see --token-file or DDP_TOKEN)"

// A node's HELLO: the job's build and settings, ring at addr, ports port0 + i.
static RdzvHello hello_of(int node_rank, int nproc, const char* addr, int port0) {
    RdzvHello h = {.node_rank = node_rank, .nproc = nproc};
    snprintf(h.build_id, sizeof h.build_id, "%s", BUILD);
    snprintf(h.nccl_version, sizeof h.nccl_version, "none");
    snprintf(h.settings, sizeof h.settings, "%s", SETTINGS);
    snprintf(h.ring_addr, sizeof h.ring_addr, "%s", addr);
    for (int i = 0; i < nproc; i++)
        h.ring_ports[i] = port0 + i;
    return h;
}

static void master_listen(Rdzv* r, int nnodes, int port) {
    rdzv_init(r, nnodes, 0, "127.0.0.1", port, TOKEN, RDZV_TIMEOUT_S, false);
    char why[ERROR_TEXT_BYTES];
    cr_assert_eq(rdzv_master_listen(r, why, sizeof why), 0, "the master cannot listen: %s", why);
    master_fd = r->listen_fd;
}

// Fills the stack below the caller with a pattern, so that a local variable the code
// under test forgets to set holds garbage every time, not whatever an earlier call left.
static __attribute__((noinline)) void poison_stack(void) {
    volatile unsigned char junk[256 * 1024];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = 0xA5;
}

// Gathers with the master's log caught; asserts the world formed and returns the log.
static void master_gather(Rdzv* r, const RdzvHello* own, char* log, size_t len) {
    catch_stderr();
    poison_stack();
    int status = rdzv_master_gather(r, own);
    release_stderr(log, len);
    master_fd = r->listen_fd;
    cr_assert_eq(status, 0, "the world did not form; the master's log:\n%s", log);
}

static int count_of(const char* text, const char* what) {
    int n = 0;
    for (const char* at = strstr(text, what); at != NULL; at = strstr(at + 1, what))
        n++;
    return n;
}

// Whether a line of text starts with prefix and holds what.
static bool has_line(const char* text, const char* prefix, const char* what) {
    for (const char* line = text; line != NULL && *line != '\0';) {
        const char* nl = strchr(line, '\n');
        const char* at = strstr(line, what);
        if (strncmp(line, prefix, strlen(prefix)) == 0 && at != NULL && (nl == NULL || at < nl))
            return true;
        line = nl != NULL ? nl + 1 : NULL;
    }
    return false;
}

// ----------------------------------------------------------------------------
// WORLD

// Checks world against the nodes' HELLOs (nnodes): ranks numbered node by node.
static void expect_world(const RdzvWorld* w, const RdzvHello* hellos, int nnodes, const char* who) {
    int ranks = 0;
    for (int n = 0; n < nnodes; n++)
        ranks += hellos[n].nproc;
    cr_assert_eq(w->nnodes, nnodes, "%s: nnodes %d, want %d", who, w->nnodes, nnodes);
    cr_assert_eq(w->world_size, ranks, "%s: world size %d, want %d", who, w->world_size, ranks);
    int first = 0;
    for (int n = 0; n < nnodes; n++) {
        const RdzvHello* h = &hellos[n];
        cr_assert_eq(w->nproc[n], h->nproc, "%s: node %d has %d workers, want %d", who, n,
                     w->nproc[n], h->nproc);
        cr_assert_eq(w->rank_offset[n], first, "%s: node %d's first rank is %d, want %d", who, n,
                     w->rank_offset[n], first);
        for (int i = 0; i < h->nproc; i++) {
            int r = first + i;
            cr_assert_str_eq(w->ring_addr[r], h->ring_addr, "%s: rank %d's ring address", who, r);
            cr_assert_eq(w->ring_port[r], h->ring_ports[i], "%s: rank %d's ring port %d, want %d",
                         who, r, w->ring_port[r], h->ring_ports[i]);
        }
        first += h->nproc;
    }
}

Test(rendezvous, the_world_numbers_ranks_node_by_node_when_nodes_have_different_worker_counts,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(50);
    RdzvHello hellos[3] = {hello_of(0, 2, "127.0.0.1", 40000), hello_of(1, 3, "127.0.0.2", 41000),
                           hello_of(2, 1, "127.0.0.3", 42000)};
    Rdzv master;
    master_listen(&master, 3, port);
    Child nodes[3];
    spawn_node(&nodes[2], 3, port, TOKEN, &hellos[2], NULL, 0, NULL,
               ONCE_CONNECTED); // node 2 first: order is free
    spawn_node(&nodes[1], 3, port, TOKEN, &hellos[1], NULL, 0, NULL, ONCE_CONNECTED);
    char log[4096];
    master_gather(&master, &hellos[0], log, sizeof log);
    RdzvWorld world;
    rdzv_make_world(&master, &world);
    expect_world(&world, hellos, 3, "the master's world");
    cr_assert_eq(world.rank_offset[1], 2);
    cr_assert_eq(world.rank_offset[2], 5);
    // NCCL's id travels in WORLD, byte for byte.
    world.has_nccl_id = true;
    for (int i = 0; i < RDZV_NCCL_ID_BYTES; i++)
        world.nccl_id[i] = (unsigned char)(7 * i + 1);
    cr_assert_eq(rdzv_master_send_world(&master, &world), 0, "WORLD could not be sent");
    for (int n = 1; n < 3; n++) {
        char who[32];
        snprintf(who, sizeof who, "node %d's world", n);
        collect(&nodes[n]);
        const RdzvWorld* got = joined_world(&nodes[n], who);
        expect_world(got, hellos, 3, who);
        cr_assert(got->has_nccl_id, "%s: no NCCL id", who);
        cr_assert_arr_eq(got->nccl_id, world.nccl_id, RDZV_NCCL_ID_BYTES, "%s: NCCL's id", who);
    }
    // The master kept every node's HELLO as sent.
    for (int n = 1; n < 3; n++) {
        cr_assert_eq(master.hello[n].nproc, hellos[n].nproc);
        cr_assert_str_eq(master.hello[n].settings, SETTINGS);
        cr_assert_str_eq(master.hello[n].ring_addr, hellos[n].ring_addr);
    }
    rdzv_close(&master);
}

Test(rendezvous, the_master_stops_listening_once_the_world_is_formed,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(51);
    RdzvHello own = hello_of(0, 1, "127.0.0.1", 40000), node = hello_of(1, 1, "127.0.0.1", 40001);
    Rdzv master;
    master_listen(&master, 2, port);
    Child child;
    spawn_node(&child, 2, port, TOKEN, &node, NULL, 0, NULL, ONCE_CONNECTED);
    char log[4096];
    master_gather(&master, &own, log, sizeof log);
    cr_assert_eq(master.listen_fd, -1, "the master still has its listening socket");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int connected = connect(fd, (struct sockaddr*)&sa, sizeof sa);
    int err = errno;
    close(fd);
    cr_assert(connected != 0 && err == ECONNREFUSED,
              "a connection to the master's port after the world formed was %s",
              connected == 0 ? "accepted" : strerror(err));
    RdzvWorld world;
    rdzv_make_world(&master, &world);
    cr_assert_eq(rdzv_master_send_world(&master, &world), 0);
    collect(&child);
    expect_world(joined_world(&child, "node 1"), (RdzvHello[]){own, node}, 2, "node 1's world");
    rdzv_close(&master);
}

// ----------------------------------------------------------------------------
// REFUSE

// The master of 2 nodes gathers while `bad` children, started by the caller and each
// passing gate once connected, come first and a good node 1 comes last; the world must
// form with the good node. The master's log goes into log.
static void form_after_bad_ones(int port, Rdzv* master, Gate* gate, int bad, char* log,
                                size_t len) {
    RdzvHello own = hello_of(0, 1, "127.0.0.1", 40000), good = hello_of(1, 1, "127.0.0.1", 40001);
    Child child;
    spawn_node(&child, 2, port, TOKEN, &good, gate, bad, NULL, ONCE_CONNECTED);
    master_gather(master, &own, log, len);
    cr_assert_eq(master->hello[1].ring_ports[0], 40001, "a bad HELLO was taken for node 1");
    RdzvWorld world;
    rdzv_make_world(master, &world);
    cr_assert_eq(rdzv_master_send_world(master, &world), 0, "WORLD could not be sent");
    collect(&child);
    expect_world(joined_world(&child, "the good node"), (RdzvHello[]){own, good}, 2,
                 "the good node's world");
    rdzv_close(master);
}

Test(rendezvous, each_bad_hello_is_refused_with_its_reason_and_the_job_still_forms,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(52);
    enum { BAD = 7 };
    struct {
        RdzvHello hello;
        const char* token;
        const char* reason;
    } cases[BAD];
    for (int i = 0; i < BAD; i++) {
        cases[i].hello = hello_of(1, 1, "127.0.0.1", 40001);
        cases[i].token = TOKEN;
    }
    cases[0].token = "job-token-4f1d";
    cases[0].reason = WRONG_PROOF;
    cases[1].token = ""; // no token at all
    cases[1].reason = WRONG_PROOF;
    snprintf(cases[2].hello.build_id, sizeof cases[2].hello.build_id, "other-build");
    cases[2].reason = "build other-build differs from the master's test-build";
    snprintf(cases[3].hello.nccl_version, sizeof cases[3].hello.nccl_version, "2.28.9");
    cases[3].reason = "NCCL 2.28.9 differs from the master's none";
    snprintf(cases[4].hello.settings, sizeof cases[4].hello.settings,
             "epochs=3 batch_size=64 seed=42");
    cases[4].reason = "settings differ: batch_size=32 on the master, batch_size=64 on node 1";
    cases[5].hello.node_rank = 0;
    cases[5].reason = "node rank 0 is out of range: --nnodes 2 allows 1 to 1 besides the master";
    cases[6].hello.node_rank = 2;
    cases[6].reason = "node rank 2 is out of range: --nnodes 2 allows 1 to 1 besides the master";
    Rdzv master;
    master_listen(&master, 2, port);
    Gate gate;
    gate_open(&gate);
    Child bad[BAD];
    for (int i = 0; i < BAD; i++)
        spawn_node(&bad[i], 2, port, cases[i].token, &cases[i].hello, NULL, 0, &gate, ONCE_REFUSED);
    char log[8192];
    form_after_bad_ones(port, &master, &gate, BAD, log, sizeof log);
    for (int i = 0; i < BAD; i++) {
        collect(&bad[i]);
        char told[1200], logged[1200];
        snprintf(told, sizeof told, "the master refused this node: %s", cases[i].reason);
        cr_assert_eq(bad[i].status, CHILD_JOIN_FAILED,
                     "case %d (%s): exit status %d, want %d (refused); stderr:\n%s", i,
                     cases[i].reason, bad[i].status, CHILD_JOIN_FAILED, bad[i].err);
        cr_assert_not_null(strstr(bad[i].err, told), "case %d: the node was not told '%s':\n%s", i,
                           told, bad[i].err);
        snprintf(logged, sizeof logged,
                 "rendezvous: refused node %d from 127.0.0.1:", cases[i].hello.node_rank);
        cr_assert(has_line(log, logged, cases[i].reason),
                  "case %d: the master's log has no line '%s...: %s':\n%s", i, logged,
                  cases[i].reason, log);
    }
    cr_assert_eq(count_of(log, "rendezvous: refused node"), BAD,
                 "want %d refusals in the master's log:\n%s", BAD, log);
}

// ----------------------------------------------------------------------------
// the wire format, by hand

#define WIRE_VERSION 3
#define HEADER 12
#define CHALLENGE_TYPE 6
#define PROOF 32
#define NONCE 32
// HELLO's fields for one worker: node rank, nproc, build[64], NCCL version[16],
// settings[1024], ring address[16], one port, the node's challenge[32]; the proof follows.
#define HELLO_FIELDS_1 (4 + 4 + 64 + 16 + 1024 + 16 + 4 + NONCE)
// WORLD's fields for nodes of n[0], n[1]... workers, R ranks in all; the proof follows.
#define WORLD_FIELDS(nnodes, R) (4 + 4 + 4 * (nnodes) + (R) * (16 + 4) + 4 + 128)

typedef struct {
    unsigned char b[2 * RDZV_MAX_PAYLOAD];
    size_t n;
} Wire;

static void wire_u32(Wire* w, uint32_t v) {
    v = htonl(v);
    memcpy(w->b + w->n, &v, 4);
    w->n += 4;
}

// A string in a zero-padded field of size bytes.
static void wire_text(Wire* w, const char* s, size_t size) {
    memset(w->b + w->n, 0, size);
    memcpy(w->b + w->n, s, strlen(s));
    w->n += size;
}

// The 12-byte header: magic, version, type, payload length.
static void wire_header(Wire* w, uint16_t version, uint16_t type, uint32_t length) {
    wire_u32(w, 0x44445052u); // "DDPR"
    uint16_t v = htons(version), t = htons(type);
    memcpy(w->b + w->n, &v, 2);
    memcpy(w->b + w->n + 2, &t, 2);
    w->n += 4;
    wire_u32(w, length);
}

// A message of the given type around payload.
static Wire wire_message(uint16_t type, const Wire* payload) {
    Wire msg = {.n = 0};
    wire_header(&msg, WIRE_VERSION, type, (uint32_t)payload->n);
    memcpy(msg.b + msg.n, payload->b, payload->n);
    msg.n += payload->n;
    return msg;
}

// A HELLO message as documented: u32 node rank, u32 nproc, then fixed fields build
// (64 bytes), NCCL version (16), settings (1024), ring address (16), then `ports` u32
// ring ports (normally nproc of them), the node's 32-byte challenge (all 0x4e here),
// then a 32-byte proof, zero until sign_hello.
static Wire hello_wire(uint16_t type, int node_rank, int nproc, int ports, const char* settings) {
    Wire payload = {.n = 0};
    wire_u32(&payload, (uint32_t)node_rank);
    wire_u32(&payload, (uint32_t)nproc);
    wire_text(&payload, BUILD, 64);
    wire_text(&payload, "none", 16);
    wire_text(&payload, settings, 1024);
    wire_text(&payload, "127.0.0.5", 16);
    for (int i = 0; i < ports; i++)
        wire_u32(&payload, 45000u + (uint32_t)i);
    memset(payload.b + payload.n, 0x4e, NONCE);
    payload.n += NONCE;
    memset(payload.b + payload.n, 0, PROOF);
    payload.n += PROOF;
    return wire_message(type, &payload);
}

// HMAC-SHA256 keyed with token over "DDP-HELLO", the master's challenge and HELLO's
// fields: the proof of the HELLO message msg (its last 32 bytes), as documented.
static void hello_proof_of(unsigned char* proof, const Wire* msg, const char* token,
                           const unsigned char* challenge) {
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, (const unsigned char*)token, strlen(token));
    crypto_auth_hmacsha256_update(&state, (const unsigned char*)"DDP-HELLO", 9);
    crypto_auth_hmacsha256_update(&state, challenge, RDZV_CHALLENGE_BYTES);
    crypto_auth_hmacsha256_update(&state, msg->b + HEADER, msg->n - HEADER - PROOF);
    crypto_auth_hmacsha256_final(&state, proof);
}

// HMAC-SHA256 keyed with token over "DDP-WORLD", the master's challenge, the node's and
// WORLD's fields: the master's proof of the WORLD message msg (its last 32 bytes).
static void world_proof_of(unsigned char* proof, const Wire* msg, const char* token,
                           const unsigned char* challenge, const unsigned char* nonce) {
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, (const unsigned char*)token, strlen(token));
    crypto_auth_hmacsha256_update(&state, (const unsigned char*)"DDP-WORLD", 9);
    crypto_auth_hmacsha256_update(&state, challenge, RDZV_CHALLENGE_BYTES);
    crypto_auth_hmacsha256_update(&state, nonce, NONCE);
    crypto_auth_hmacsha256_update(&state, msg->b + HEADER, msg->n - HEADER - PROOF);
    crypto_auth_hmacsha256_final(&state, proof);
}

static void sign_hello(Wire* msg, const unsigned char* challenge) {
    hello_proof_of(msg->b + msg->n - PROOF, msg, TOKEN, challenge);
}

static Wire challenge_wire(const unsigned char* challenge) {
    Wire payload = {.n = RDZV_CHALLENGE_BYTES};
    memcpy(payload.b, challenge, RDZV_CHALLENGE_BYTES);
    return wire_message(CHALLENGE_TYPE, &payload);
}

// REFUSE (3) or ABORT (4) with its NUL-terminated reason.
static Wire text_wire(uint16_t type, const char* text) {
    Wire payload = {.n = strlen(text) + 1};
    memcpy(payload.b, text, payload.n);
    return wire_message(type, &payload);
}

// A WORLD message for nnodes nodes of nproc[n] workers, world_size as given.
static Wire world_wire(int world_size, int nnodes, const int* nproc) {
    Wire payload = {.n = 0};
    wire_u32(&payload, (uint32_t)world_size);
    wire_u32(&payload, (uint32_t)nnodes);
    for (int n = 0; n < nnodes; n++)
        wire_u32(&payload, (uint32_t)nproc[n]);
    for (int r = 0; r < world_size; r++) {
        wire_text(&payload, "127.0.0.1", 16);
        wire_u32(&payload, 40000u + (uint32_t)r);
    }
    wire_u32(&payload, 0);
    memset(payload.b + payload.n, 0, 128);
    payload.n += 128;
    memset(payload.b + payload.n, 0, PROOF); // until world_proof_of
    payload.n += PROOF;
    return wire_message(2, &payload);
}

// Appends b to a.
static void wire_append(Wire* a, const Wire* b) {
    memcpy(a->b + a->n, b->b, b->n);
    a->n += b->n;
}

// A blocking connection to 127.0.0.1:port, tried for 10 s; -1 if none.
static int connect_to(int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (double deadline = now_seconds() + 10.0; now_seconds() < deadline; usleep(20000)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr*)&sa, sizeof sa) == 0) {
            struct timeval t = {.tv_sec = 10};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
            return fd;
        }
        close(fd);
    }
    return -1;
}

static int recv_all(int fd, void* buf, size_t len) {
    for (size_t done = 0; done < len;) {
        ssize_t n = recv(fd, (char*)buf + done, len - done, 0);
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static uint32_t u32_at(const unsigned char* p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

// Reads the master's first message, which must be a CHALLENGE; its 32 bytes into out.
static int recv_challenge(int fd, unsigned char* out) {
    unsigned char m[HEADER + RDZV_CHALLENGE_BYTES];
    if (recv_all(fd, m, sizeof m) != 0 || u32_at(m) != 0x44445052u ||
        (m[4] << 8 | m[5]) != WIRE_VERSION || (m[6] << 8 | m[7]) != CHALLENGE_TYPE ||
        u32_at(m + 8) != RDZV_CHALLENGE_BYTES)
        return -1;
    memcpy(out, m + HEADER, RDZV_CHALLENGE_BYTES);
    return 0;
}

typedef enum {
    RAW_EXPECT_ANSWER, // reads the answer and sends back its header and payload
    RAW_EXPECT_CLOSE,  // expects the master to close the connection
    RAW_HANG_UP,       // closes the connection itself, at once
} RawMode;

// A child that reads the master's challenge, sends msg by hand (signed with the
// challenge if sign), passes gate then and then does what mode says; it starts once
// gate after (unless NULL) has been passed. It exits CHILD_BAD_ANSWER if the
// master's messages are not what they should be, CHILD_NOT_CLOSED if the master keeps
// a connection open for 10 s that it should close.
static void spawn_raw(Child* c, int port, const Wire* msg, bool sign, RawMode mode,
                      const Gate* after, const Gate* then) {
    int answer_fd;
    if (fork_node(c, &answer_fd) != 0)
        return;
    if (after != NULL && gate_wait(after, 1) != 0)
        _exit(CHILD_GATE_TIMED_OUT);
    int fd = connect_to(port);
    if (fd < 0)
        _exit(CHILD_CANNOT_CONNECT);
    static Wire out;
    unsigned char challenge[RDZV_CHALLENGE_BYTES];
    if (recv_challenge(fd, challenge) != 0)
        _exit(CHILD_BAD_ANSWER);
    out = *msg;
    if (sign)
        sign_hello(&out, challenge);
    if (send(fd, out.b, out.n, MSG_NOSIGNAL) != (ssize_t)out.n)
        _exit(CHILD_NOT_CLOSED);
    if (mode == RAW_HANG_UP)
        close(fd);
    // Once its piece is said: the master serves connections side by side, so a node that
    // comes later is only after this one if it starts now.
    if (then != NULL)
        gate_pass(then);
    unsigned char answer[RDZV_MAX_PAYLOAD];
    if (mode == RAW_HANG_UP)
        _exit(CHILD_JOINED);
    if (mode == RAW_EXPECT_CLOSE) {
        ssize_t n = recv(fd, answer, 1, 0);
        _exit(n == 0 || (n < 0 && errno == ECONNRESET) ? CHILD_JOINED : CHILD_NOT_CLOSED);
    }
    if (recv_all(fd, answer, HEADER) != 0)
        _exit(CHILD_BAD_ANSWER);
    uint32_t length = u32_at(answer + 8);
    if (length > sizeof answer - HEADER || recv_all(fd, answer + HEADER, length) != 0)
        _exit(CHILD_BAD_ANSWER);
    write_all(answer_fd, challenge, sizeof challenge); // what the answer's proof covers
    write_all(answer_fd, answer, HEADER + length);
    _exit(CHILD_JOINED);
}

Test(rendezvous, a_hello_written_by_hand_from_the_documented_layout_is_accepted,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(54);
    RdzvHello own = hello_of(0, 1, "127.0.0.1", 40000);
    Rdzv master;
    master_listen(&master, 2, port);
    Wire msg = hello_wire(1, 1, 2, 2, SETTINGS);
    Child raw;
    spawn_raw(&raw, port, &msg, true, RAW_EXPECT_ANSWER, NULL, NULL);
    char log[4096];
    master_gather(&master, &own, log, sizeof log);
    cr_assert_eq(master.hello[1].nproc, 2);
    cr_assert_str_eq(master.hello[1].ring_addr, "127.0.0.5");
    cr_assert_eq(master.hello[1].ring_ports[1], 45001);
    RdzvWorld world;
    rdzv_make_world(&master, &world);
    cr_assert_eq(rdzv_master_send_world(&master, &world), 0);
    collect(&raw);
    cr_assert_eq(raw.status, CHILD_JOINED, "no WORLD came back: status %d", raw.status);
    // WORLD: header (type 2), then u32 world size, u32 nnodes, nnodes x u32 nproc,
    // world size x (address[16], u32 port), u32 has NCCL id, the id's 128 bytes, the
    // master's proof; the child sent the challenge it answered before it.
    const unsigned char* a = raw.answer + RDZV_CHALLENGE_BYTES;
    size_t want_len = WORLD_FIELDS(2, 3) + PROOF;
    cr_assert_eq(raw.answer_len, RDZV_CHALLENGE_BYTES + 12 + want_len,
                 "WORLD is %zu bytes, want %zu", raw.answer_len - RDZV_CHALLENGE_BYTES,
                 12 + want_len);
    cr_assert_eq(u32_at(a), 0x44445052u, "magic 0x%08x", u32_at(a));
    cr_assert_eq(a[4] << 8 | a[5], WIRE_VERSION, "version");
    cr_assert_eq(a[6] << 8 | a[7], 2, "type: want 2 (WORLD)");
    cr_assert_eq(u32_at(a + 8), want_len, "the length field");
    const unsigned char* p = a + 12;
    cr_assert_eq(u32_at(p), 3, "world size");
    cr_assert_eq(u32_at(p + 4), 2, "nnodes");
    cr_assert_eq(u32_at(p + 8), 1, "node 0's nproc");
    cr_assert_eq(u32_at(p + 12), 2, "node 1's nproc");
    const char* addrs[3] = {"127.0.0.1", "127.0.0.5", "127.0.0.5"};
    int ports[3] = {40000, 45000, 45001};
    for (int r = 0; r < 3; r++) {
        const unsigned char* e = p + 16 + (size_t)r * 20;
        cr_assert_str_eq((const char*)e, addrs[r], "rank %d's address", r);
        cr_assert_eq(u32_at(e + 16), (uint32_t)ports[r], "rank %d's port", r);
    }
    cr_assert_eq(u32_at(p + 16 + 60), 0, "has_nccl_id");
    static Wire got;
    got.n = 12 + want_len;
    memcpy(got.b, a, got.n);
    unsigned char proof[PROOF], nonce[NONCE];
    memset(nonce, 0x4e, NONCE); // hello_wire's challenge
    world_proof_of(proof, &got, TOKEN, raw.answer, nonce);
    cr_assert_arr_eq(proof, a + got.n - PROOF, PROOF,
                     "the master's proof is not HMAC-SHA256(token, \"DDP-WORLD\" || challenges "
                     "|| WORLD's fields)");
    rdzv_close(&master);
}

// HELLO's reply on a raw child's connection: the message after the challenge it answered.
static const unsigned char* raw_reply(const Child* c) {
    return c->answer + RDZV_CHALLENGE_BYTES;
}

Test(rendezvous, a_second_node_with_a_taken_node_rank_is_refused,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(53);
    RdzvHello own = hello_of(0, 1, "127.0.0.1", 40000), node2 = hello_of(2, 1, "127.0.0.1", 40003);
    Rdzv master;
    master_listen(&master, 3, port);
    // Node 1 says its HELLO first; then its twin (another address, one worker); node 2
    // comes last. Each starts once the one before has spoken (the master hears
    // connections side by side, first HELLO first).
    Gate first, second;
    gate_open(&first), gate_open(&second);
    static Wire node1_hello, twin_hello;
    node1_hello = hello_wire(1, 1, 2, 2, SETTINGS);
    twin_hello = hello_wire(1, 1, 1, 1, SETTINGS);
    Child node1, twin, last;
    spawn_raw(&node1, port, &node1_hello, true, RAW_EXPECT_ANSWER, NULL, &first);
    spawn_raw(&twin, port, &twin_hello, true, RAW_EXPECT_ANSWER, &first, &second);
    spawn_node(&last, 3, port, TOKEN, &node2, &second, 1, NULL, ONCE_CONNECTED);
    char log[4096];
    master_gather(&master, &own, log, sizeof log);
    cr_assert_eq(master.hello[1].nproc, 2, "the twin took node 1's place; the master's log:\n%s",
                 log);
    RdzvWorld world;
    rdzv_make_world(&master, &world);
    cr_assert_eq(rdzv_master_send_world(&master, &world), 0);
    collect(&twin);
    const char* reason = "node rank 1 is taken already (two nodes with the same --node-rank?)";
    cr_assert_eq(twin.status, CHILD_JOINED, "the twin got no answer: status %d", twin.status);
    cr_assert_eq(raw_reply(&twin)[7], 3, "the twin's answer is not a REFUSE");
    cr_assert_str_eq((const char*)raw_reply(&twin) + HEADER, reason, "the twin's REFUSE");
    cr_assert_not_null(strstr(log, reason), "the master's log does not say '%s':\n%s", reason, log);
    collect(&node1);
    cr_assert_eq(raw_reply(&node1)[7], 2, "node 1's answer is not a WORLD");
    collect(&last);
    cr_assert_eq(joined_world(&last, "node 2")->world_size, 4, "node 2's world");
    rdzv_close(&master);
}

// Connections that each send one of msgs (count) come first, a good node 1 last: the
// master must ignore each with its reason (nobody refused) and form the job.
static void expect_ignored_then_formed(int port, const Wire* msgs, const RawMode* modes,
                                       const char* const* reasons, int count) {
    Rdzv master;
    master_listen(&master, 2, port);
    Gate gate;
    gate_open(&gate);
    Child bad[16];
    for (int i = 0; i < count; i++)
        spawn_raw(&bad[i], port, &msgs[i], false, modes[i], NULL, &gate);
    char log[8192];
    form_after_bad_ones(port, &master, &gate, count, log, sizeof log);
    for (int i = 0; i < count; i++) {
        collect(&bad[i]);
        cr_assert_eq(bad[i].status, CHILD_JOINED,
                     "%s: the master did not close the connection (status %d)", reasons[i],
                     bad[i].status);
    }
    cr_assert_eq(count_of(log, "rendezvous: ignored a connection from 127.0.0.1:"), count,
                 "want %d ignored connections in the master's log:\n%s", count, log);
    cr_assert_null(strstr(log, "refused"), "the master refused instead of ignoring:\n%s", log);
    for (int i = 0; i < count; i++)
        cr_expect(has_line(log, "rendezvous: ignored a connection from 127.0.0.1:", reasons[i]),
                  "the master's log does not say why it ignored a connection: '%s':\n%s",
                  reasons[i], log);
}

Test(rendezvous, hellos_that_do_not_parse_are_ignored_and_the_job_still_forms,
     .fini = end_children_and_release_stderr) {
    char no_nul[1100];
    memset(no_nul, 'x', 1024);
    no_nul[1024] = '\0'; // fills the settings field without a NUL byte
    Wire no_proof = hello_wire(1, 1, 1, 1, SETTINGS), done = {.n = 0};
    no_proof.n -= PROOF;
    no_proof.b[11] = (unsigned char)(no_proof.n - HEADER); // the length field's low byte
    wire_header(&done, WIRE_VERSION, 5, 0);
    unsigned char zeros[RDZV_CHALLENGE_BYTES] = {0};
    Wire msgs[] = {
        hello_wire(1, 1, 0, 0, SETTINGS),                             // nproc 0
        hello_wire(1, 1, WORKERS_MAX + 1, WORKERS_MAX + 1, SETTINGS), // nproc over WORKERS_MAX
        hello_wire(1, 1, 1, 2, SETTINGS),                             // a port more than nproc
        hello_wire(1, 1, 2, 1, SETTINGS),                             // a port less than nproc
        hello_wire(1, 1, 1, 1, no_nul),                               // a text field without a NUL
        no_proof,                                                     // no room for the proof
        hello_wire(2, 1, 1, 1, SETTINGS),                             // a HELLO sent as WORLD
        hello_wire(5, 1, 1, 1, SETTINGS),                             // a HELLO sent as DONE
        done,                                                         // a DONE
        challenge_wire(zeros),                                        // a challenge, not an answer
    };
    const char* const reasons[] = {
        ": not a well-formed HELLO\n",
        ": not a well-formed HELLO\n",
        ": not a well-formed HELLO\n",
        ": not a well-formed HELLO\n",
        ": not a well-formed HELLO\n",
        ": not a well-formed HELLO\n",
        ": not a well-formed WORLD\n",
        ": not a well-formed DONE\n",
        ": DONE in answer to the challenge, not HELLO\n",
        ": CHALLENGE in answer to the challenge, not HELLO\n",
    };
    enum { BAD = sizeof msgs / sizeof *msgs };
    RawMode modes[BAD];
    for (int i = 0; i < BAD; i++)
        modes[i] = RAW_EXPECT_CLOSE;
    expect_ignored_then_formed(port_for_test(55), msgs, modes, reasons, BAD);
}

Test(rendezvous, a_connection_that_breaks_the_framing_is_ignored_and_logged_with_its_reason,
     .fini = end_children_and_release_stderr) {
    Wire magic = {.n = 0}, version = {.n = 0}, type = {.n = 0}, huge = {.n = 0},
         cut = hello_wire(1, 1, 1, 1, SETTINGS);
    memset(magic.b, 'X', 64);
    magic.n = 64;
    wire_header(&version, 1, 1, HELLO_FIELDS_1 + PROOF); // an agent of the previous version
    wire_header(&type, WIRE_VERSION, 9, 0);
    wire_header(&huge, WIRE_VERSION, 1, 0x7fffffffu);
    cut.n = HEADER + 100; // the header promises HELLO_FIELDS_1 + PROOF bytes
    Wire msgs[] = {magic, version, type, huge, cut};
    RawMode modes[] = {RAW_EXPECT_CLOSE, RAW_EXPECT_CLOSE, RAW_EXPECT_CLOSE, RAW_EXPECT_CLOSE,
                       RAW_HANG_UP};
    const char* const reasons[] = {
        "bad magic 0x58585858 (not a multi_node agent?)",
        "protocol version 1, this build speaks 3",
        "unknown message type 9",
        "payload length 2147483647 is over the limit of 65536 bytes",
        "connection closed by the peer in the middle of a message",
    };
    expect_ignored_then_formed(port_for_test(59), msgs, modes, reasons, sizeof msgs / sizeof *msgs);
}

// ----------------------------------------------------------------------------
// a node's side: no master, a silent one, odd answers

Test(rendezvous, a_node_without_a_master_gives_up_at_its_deadline_and_says_why,
     .fini = end_children_and_release_stderr) {
    Rdzv node;
    int port = port_for_test(56);
    rdzv_init(&node, 2, 1, "127.0.0.1", port, TOKEN, 1.0, false);
    char log[4096];
    double start = now_seconds();
    catch_stderr();
    int status = rdzv_connect(&node);
    release_stderr(log, sizeof log);
    double took = now_seconds() - start;
    cr_assert_eq(status, -1, "connected to nothing");
    cr_assert(took > 0.5 && took < 3.0, "gave up after %.2f s with a deadline of 1 s", took);
    char where[32];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    const char* want[] = {"cannot reach the master", where, "Connection refused",
                          "is the master started"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_not_null(strstr(log, want[i]), "the message does not say '%s':\n%s", want[i],
                           log);
    cr_assert_eq(node.control_fd[0], -1);
}

// A listening socket that never accepts: connects succeed, nothing ever answers.
static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(bind(fd, (struct sockaddr*)&sa, sizeof sa) == 0 && listen(fd, 8) == 0,
              "cannot listen on port %d: %s", port, strerror(errno));
    return fd;
}

// Joins as node 1 of 2 with the job's token a master (the test, on listen_fd) that
// answers with `answer` (n bytes; none if n is 0); returns rdzv_join's result and its
// message in log. If sent is not NULL, the message the node sent comes back in it.
static int join_with_answer(int listen_fd, int port, const void* answer, size_t n, char* log,
                            size_t log_len, Wire* sent) {
    Rdzv node;
    rdzv_init(&node, 2, 1, "127.0.0.1", port, TOKEN, 1.0, false);
    cr_assert_eq(rdzv_connect(&node), 0, "cannot connect to the test's listener");
    int peer = accept(listen_fd, NULL, NULL);
    cr_assert_geq(peer, 0, "accept: %s", strerror(errno));
    if (n > 0) // sent before the node reads: it waits in the node's socket
        cr_assert_eq(send(peer, answer, n, MSG_NOSIGNAL), (ssize_t)n);
    RdzvHello own = hello_of(1, 1, "127.0.0.1", 40001);
    RdzvWorld world;
    catch_stderr();
    int status = rdzv_join(&node, &own, &world);
    release_stderr(log, log_len);
    if (sent != NULL) {
        struct timeval t = {.tv_sec = 5};
        setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
        cr_assert_eq(recv_all(peer, sent->b, HEADER), 0, "the node sent no message");
        sent->n = HEADER + u32_at(sent->b + 8);
        cr_assert(sent->n <= sizeof sent->b &&
                      recv_all(peer, sent->b + HEADER, sent->n - HEADER) == 0,
                  "the node's message is cut short");
    }
    close(peer);
    rdzv_close(&node);
    return status;
}

Test(rendezvous, a_node_gives_up_on_a_master_that_never_answers,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(57), fd = listen_on(port);
    char log[4096];
    double start = now_seconds();
    int status = join_with_answer(fd, port, NULL, 0, log, sizeof log, NULL);
    double took = now_seconds() - start;
    close(fd);
    cr_assert_eq(status, -1, "joined a master that said nothing");
    cr_assert(took < 3.0, "waited %.2f s with a deadline of 1 s", took);
    cr_assert_not_null(strstr(log, "waiting for the master's CHALLENGE: timed out"), "%s", log);
}

// How the test's fake master signs the WORLD it sends.
typedef enum { UNSIGNED, SIGNED, SIGNED_WITH_ANOTHER_TOKEN } Signing;

// Plays the master in a child, on listen_fd, for a node that connected already: sends a
// challenge first (if challenged), reads the node's HELLO, then sends msg, a WORLD signed
// for that node's challenges as signing says; then waits until the node hangs up.
static void spawn_fake_master(Child* c, int listen_fd, const Wire* msg, bool challenged,
                              Signing signing) {
    int answer_fd;
    if (fork_node(c, &answer_fd) != 0)
        return;
    struct pollfd waiting = {.fd = listen_fd, .events = POLLIN};
    if (poll(&waiting, 1, 10000) != 1) // the node connected before the child was forked
        _exit(CHILD_CANNOT_CONNECT);
    int fd = accept(listen_fd, NULL, NULL);
    struct timeval t = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
    unsigned char challenge[RDZV_CHALLENGE_BYTES] = {1, 2, 3}, nonce[NONCE] = {0};
    static Wire hello, out;
    if (challenged) {
        Wire first = challenge_wire(challenge);
        if (fd < 0 || send(fd, first.b, first.n, MSG_NOSIGNAL) != (ssize_t)first.n ||
            recv_all(fd, hello.b, HEADER) != 0 || u32_at(hello.b + 8) < NONCE + PROOF ||
            recv_all(fd, hello.b + HEADER, u32_at(hello.b + 8)) != 0)
            _exit(CHILD_BAD_ANSWER);
        hello.n = HEADER + u32_at(hello.b + 8);
        memcpy(nonce, hello.b + hello.n - PROOF - NONCE, NONCE);
    }
    out = *msg;
    if (signing != UNSIGNED)
        world_proof_of(out.b + out.n - PROOF, &out, signing == SIGNED ? TOKEN : "another-token",
                       challenge, nonce);
    if (send(fd, out.b, out.n, MSG_NOSIGNAL) != (ssize_t)out.n)
        _exit(CHILD_BAD_ANSWER);
    char byte;
    while (recv(fd, &byte, 1, 0) > 0) // until the node is done with it
        ;
    _exit(CHILD_JOINED);
}

Test(rendezvous, a_node_takes_only_a_world_that_fits_it_from_a_master_with_the_token,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(58);
    int fd = listen_on(port);
    unsigned char bytes[RDZV_CHALLENGE_BYTES] = {1, 2, 3};
    Wire short_challenge = challenge_wire(bytes);
    short_challenge.n--;
    short_challenge.b[11]--; // a 31-byte challenge
    Wire garbage = {.n = 12};
    memset(garbage.b, 'G', 12);
    const char* no_proof = "did not prove it knows the token";
    struct {
        Wire msg;
        bool challenged; // the master's challenge comes first
        Signing signing;
        int joins;
        const char* said;
    } cases[] = {
        {world_wire(2, 2, (int[]){1, 1}), true, SIGNED, 1, ""},
        {world_wire(2, 2, (int[]){1, 1}), true, UNSIGNED, 0, no_proof},
        {world_wire(2, 2, (int[]){1, 1}), true, SIGNED_WITH_ANOTHER_TOKEN, 0, no_proof},
        {world_wire(3, 3, (int[]){1, 1, 1}), true, SIGNED, 0, "not a WORLD that fits this node"},
        {world_wire(3, 2, (int[]){1, 2}), true, SIGNED, 0, "not a WORLD that fits this node"},
        {world_wire(3, 2, (int[]){1, 1}), true, SIGNED, 0,
         "the master's WORLD: not a well-formed WORLD"},
        {text_wire(3, WRONG_PROOF), true, UNSIGNED, 0,
         "the master refused this node: " WRONG_PROOF},
        {text_wire(7, "node 0: interrupted"), true, UNSIGNED, 0,
         "the master stopped the job: node 0: interrupted"},
        {text_wire(4, "rendezvous: timed out"), false, UNSIGNED, 0,
         "the master gave up: rendezvous: timed out"},
        {garbage, true, UNSIGNED, 0, "waiting for the master's WORLD: bad magic"},
        {world_wire(2, 2, (int[]){1, 1}), false, UNSIGNED, 0,
         "the master sent WORLD where CHALLENGE belongs"},
        {short_challenge, false, UNSIGNED, 0,
         "the master's CHALLENGE: not a well-formed CHALLENGE"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Rdzv node;
        rdzv_init(&node, 2, 1, "127.0.0.1", port, TOKEN, 5.0, false);
        cr_assert_eq(rdzv_connect(&node), 0, "cannot connect to the test's listener");
        Child master;
        spawn_fake_master(&master, fd, &cases[i].msg, cases[i].challenged, cases[i].signing);
        RdzvHello own = hello_of(1, 1, "127.0.0.1", 40001);
        RdzvWorld world;
        char log[4096];
        catch_stderr();
        int status = rdzv_join(&node, &own, &world);
        release_stderr(log, sizeof log);
        rdzv_close(&node);
        collect(&master);
        cr_assert_eq(status == 0, cases[i].joins, "case %zu: rdzv_join returned %d; it said:\n%s",
                     i, status, log);
        cr_assert_not_null(strstr(log, cases[i].said), "case %zu: it does not say '%s':\n%s", i,
                           cases[i].said, log);
    }
    close(fd);
}

// ----------------------------------------------------------------------------
// the token

// Plays the master for node 1 (in this process, with the job's token) on port: sends it
// challenge, then REFUSE once it has answered. Returns the HELLO it sent.
static void capture_hello(Wire* sent, int port, const unsigned char* challenge) {
    int fd = listen_on(port);
    static Wire answer;
    answer = challenge_wire(challenge);
    Wire refuse = text_wire(3, "seen enough");
    wire_append(&answer, &refuse);
    char log[4096];
    int status = join_with_answer(fd, port, answer.b, answer.n, log, sizeof log, sent);
    close(fd);
    cr_assert_eq(status, -1, "the node joined a master that refused it");
    cr_assert_not_null(strstr(log, "seen enough"), "the node did not report the refusal:\n%s", log);
}

static bool contains(const unsigned char* bytes, size_t n, const char* text) {
    size_t len = strlen(text);
    for (size_t i = 0; i + len <= n; i++)
        if (memcmp(bytes + i, text, len) == 0)
            return true;
    return false;
}

// Whether msg's proof is the documented HMAC of its fields under the job's token.
static bool proof_matches(const Wire* msg, const unsigned char* challenge) {
    unsigned char want[PROOF];
    hello_proof_of(want, msg, TOKEN, challenge);
    return memcmp(want, msg->b + msg->n - PROOF, PROOF) == 0;
}

Test(rendezvous, the_token_never_appears_in_what_a_node_sends,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(64);
    unsigned char first[RDZV_CHALLENGE_BYTES], second[RDZV_CHALLENGE_BYTES];
    memset(first, 0x11, sizeof first);
    memset(second, 0x22, sizeof second);
    static Wire a, b;
    capture_hello(&a, port, first);
    capture_hello(&b, port, second);
    cr_assert(!contains(a.b, a.n, TOKEN), "the token '%s' is in the node's HELLO", TOKEN);
    cr_assert_eq(a.n, HEADER + HELLO_FIELDS_1 + PROOF, "HELLO is %zu bytes, want %d", a.n,
                 HEADER + HELLO_FIELDS_1 + PROOF);
    cr_assert_eq(u32_at(a.b), 0x44445052u, "magic");
    cr_assert_eq(a.b[4] << 8 | a.b[5], WIRE_VERSION, "version");
    cr_assert_eq(a.b[6] << 8 | a.b[7], 1, "type: want 1 (HELLO)");
    cr_assert_str_eq((const char*)a.b + HEADER + 8 + 64 + 16, SETTINGS, "the settings field");
    cr_assert(proof_matches(&a, first),
              "the proof is not HMAC-SHA256(token, challenge || HELLO's fields)");
    cr_assert(proof_matches(&b, second), "the second answer's proof is not the documented HMAC");
    cr_assert_arr_eq(a.b, b.b, a.n - PROOF - NONCE, "the fields changed between the two answers");
    cr_assert(memcmp(a.b + a.n - PROOF - NONCE, b.b + b.n - PROOF - NONCE, NONCE) != 0,
              "the node challenged the master twice with the same bytes");
    cr_assert(memcmp(a.b + a.n - PROOF, b.b + b.n - PROOF, PROOF) != 0,
              "two challenges got the same proof: an answer could be replayed");
}

Test(rendezvous, a_hello_replayed_on_a_new_connection_is_refused_and_the_job_still_forms,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(61);
    unsigned char earlier[RDZV_CHALLENGE_BYTES];
    memset(earlier, 0x5a, sizeof earlier);
    static Wire recorded;
    capture_hello(&recorded, port_for_test(60), earlier); // a right answer, to another challenge
    cr_assert(proof_matches(&recorded, earlier), "the recorded HELLO is no right answer");
    Rdzv master;
    master_listen(&master, 2, port);
    Gate gate;
    gate_open(&gate);
    Child replay;
    spawn_raw(&replay, port, &recorded, false, RAW_EXPECT_ANSWER, NULL, &gate);
    char log[8192];
    form_after_bad_ones(port, &master, &gate, 1, log, sizeof log);
    collect(&replay);
    cr_assert_eq(replay.status, CHILD_JOINED, "the replay got no answer: status %d", replay.status);
    const unsigned char* answer = replay.answer + RDZV_CHALLENGE_BYTES;
    cr_assert_eq(answer[6] << 8 | answer[7], 3, "the answer is not a REFUSE");
    cr_assert_str_eq((const char*)answer + HEADER, WRONG_PROOF, "the REFUSE's reason");
    cr_assert(has_line(log, "rendezvous: refused node 1 from 127.0.0.1:", WRONG_PROOF),
              "the master's log has no line for the replay:\n%s", log);
}

Test(rendezvous, a_node_with_a_wrong_token_is_refused_and_logged_and_the_right_nodes_form_the_job,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(62);
    RdzvHello hellos[3] = {hello_of(0, 1, "127.0.0.1", 40000), hello_of(1, 1, "127.0.0.1", 40001),
                           hello_of(2, 1, "127.0.0.1", 40002)};
    Rdzv master;
    master_listen(&master, 3, port);
    Gate first, second;
    gate_open(&first), gate_open(&second);
    Child wrong, node1, node2;
    spawn_node(&wrong, 3, port, "job-token-4f1C", &hellos[2], NULL, 0, &first, ONCE_REFUSED);
    spawn_node(&node1, 3, port, TOKEN, &hellos[1], &first, 1, &second, ONCE_CONNECTED);
    spawn_node(&node2, 3, port, TOKEN, &hellos[2], &second, 1, NULL, ONCE_CONNECTED);
    char log[4096];
    master_gather(&master, &hellos[0], log, sizeof log);
    RdzvWorld world;
    rdzv_make_world(&master, &world);
    cr_assert_eq(rdzv_master_send_world(&master, &world), 0);
    collect(&wrong);
    cr_assert_eq(wrong.status, CHILD_JOIN_FAILED, "a wrong token joined: status %d:\n%s",
                 wrong.status, wrong.err);
    cr_assert_not_null(strstr(wrong.err, "the master refused this node: " WRONG_PROOF),
                       "the node was not told why:\n%s", wrong.err);
    cr_assert(has_line(log, "rendezvous: refused node 2 from 127.0.0.1:", WRONG_PROOF),
              "the master's log has no line for the wrong token:\n%s", log);
    cr_assert_eq(count_of(log, "refused"), 1, "want one refusal in the master's log:\n%s", log);
    collect(&node1);
    collect(&node2);
    expect_world(joined_world(&node1, "node 1"), hellos, 3, "node 1's world");
    expect_world(joined_world(&node2, "node 2"), hellos, 3, "node 2's world");
    rdzv_close(&master);
}

Test(rendezvous, a_connection_that_never_answers_the_challenge_holds_back_no_node,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(63);
    Rdzv master;
    master_listen(&master, 2, port);
    Gate gate;
    gate_open(&gate);
    Child silent;
    Wire nothing = {.n = 0};
    spawn_raw(&silent, port, &nothing, false, RAW_EXPECT_CLOSE, NULL, &gate);
    char log[8192];
    double start = now_seconds();
    form_after_bad_ones(port, &master, &gate, 1, log, sizeof log);
    double took = now_seconds() - start;
    collect(&silent);
    cr_assert_eq(silent.status, CHILD_JOINED, "the master kept the silent connection open");
    cr_assert(
        has_line(log, "rendezvous: ignored a connection from 127.0.0.1:", "the rendezvous is over"),
        "the master's log has no line for the silent connection:\n%s", log);
    cr_assert(took < 1.5, "the job formed after %.2f s: the silent connection held it back", took);
}

// ----------------------------------------------------------------------------
// the decoder, without sockets

// Decodes the first n bytes of msg; asserts the result (0 or -1), and a reason for a refusal.
static void expect_decoded(RdzvMessage* m, const Wire* msg, size_t n, int want, const char* what) {
    char why[256] = "";
    int got = rdzv_decode_message(m, msg->b, n, why, sizeof why);
    cr_assert_eq(got, want, "%s, %zu of %zu bytes: rdzv_decode_message returned %d (%s)", what, n,
                 msg->n, got, why);
    if (got != 0)
        cr_assert_str_not_empty(why, "%s, %zu bytes: refused without a reason", what, n);
}

// msg decodes; every shorter prefix, and msg with a byte more, do not. With grow_payload,
// also not msg with a byte more that its header counts.
static void expect_exact(RdzvMessage* m, const Wire* msg, bool grow_payload, const char* what) {
    static Wire longer;
    for (size_t n = 0; n < msg->n; n++)
        expect_decoded(m, msg, n, -1, what);
    longer = *msg;
    longer.b[longer.n++] = 0;
    expect_decoded(m, &longer, longer.n, -1, what);
    if (grow_payload) {
        uint32_t length = htonl(u32_at(longer.b + 8) + 1);
        memcpy(longer.b + 8, &length, 4);
        expect_decoded(m, &longer, longer.n, -1, what);
    }
    expect_decoded(m, msg, msg->n, 0, what);
}

Test(rendezvous, the_decoder_takes_each_valid_message_and_refuses_it_cut_short_or_padded) {
    static RdzvMessage m;
    static Wire hello, world, refuse, abort_msg, done, challenge;
    unsigned char bytes[RDZV_CHALLENGE_BYTES] = {9, 8, 7};
    hello = hello_wire(1, 1, 2, 2, SETTINGS);
    memset(hello.b + hello.n - PROOF, 0xab, PROOF);
    world = world_wire(3, 2, (int[]){1, 2});
    refuse = text_wire(3, WRONG_PROOF);
    abort_msg = text_wire(4, "node 1: [Rank 1] killed by signal 9 (Killed)");
    done.n = 0;
    wire_header(&done, WIRE_VERSION, 5, 0);
    challenge = challenge_wire(bytes);
    expect_exact(&m, &hello, true, "HELLO");
    cr_assert_eq(m.type, RDZV_HELLO);
    cr_assert(m.hello.node_rank == 1 && m.hello.nproc == 2 && m.hello.ring_ports[1] == 45001);
    cr_assert_str_eq(m.hello.settings, SETTINGS);
    cr_assert_str_eq(m.hello.ring_addr, "127.0.0.5");
    cr_assert_eq(m.signed_len, hello.n - HEADER - PROOF, "the proof covers %zu bytes",
                 m.signed_len);
    cr_assert(m.proof[0] == 0xab && m.proof[PROOF - 1] == 0xab, "the proof as sent");
    expect_exact(&m, &world, true, "WORLD");
    cr_assert(m.type == RDZV_WORLD && m.world.world_size == 3 && m.world.rank_offset[1] == 1);
    cr_assert_eq(m.signed_len, world.n - HEADER - PROOF, "the master's proof covers %zu bytes",
                 m.signed_len);
    expect_exact(&m, &refuse, false, "REFUSE");
    cr_assert(m.type == RDZV_REFUSE);
    cr_assert_str_eq(m.text, WRONG_PROOF);
    expect_exact(&m, &abort_msg, false, "ABORT");
    cr_assert(m.type == RDZV_ABORT);
    expect_exact(&m, &done, true, "DONE");
    cr_assert(m.type == RDZV_DONE);
    expect_exact(&m, &challenge, true, "CHALLENGE");
    cr_assert(m.type == RDZV_CHALLENGE);
    cr_assert_arr_eq(m.challenge, bytes, RDZV_CHALLENGE_BYTES);
}

// n bytes of a fixed pseudo-random sequence (state x) from position `from` of w on.
static void fill_random(Wire* w, size_t from, size_t n, uint32_t* x) {
    for (size_t i = from; i < from + n; i++) {
        *x = *x * 1103515245u + 12345u;
        w->b[i] = (unsigned char)(*x >> 16);
    }
    w->n = from + n;
}

Test(rendezvous, the_decoder_refuses_oversized_unknown_and_garbage_messages) {
    static RdzvMessage m;
    static Wire w;
    const struct {
        uint16_t type;
        uint32_t length;
        unsigned char fill;
    } bad[] = {
        {1, RDZV_MAX_PAYLOAD + 1, 0},     // over the limit, though every byte is there
        {0, 0, 0},                        // no such type
        {7, 0, 0},                        // no such type
        {0xffff, 0, 0},                   // no such type
        {3, 0, 0},                        // REFUSE without a reason
        {4, 20, 'x'},                     // ABORT whose reason has no NUL byte
        {4, RDZV_TEXT_BYTES + 1, 0},      // ABORT over the longest reason
        {6, RDZV_CHALLENGE_BYTES - 1, 7}, // a short challenge
        {6, RDZV_CHALLENGE_BYTES + 1, 7}, // a long one
        {5, 1, 0},                        // DONE with a payload
        {2, 0, 0},                        // an empty WORLD
        {1, 0, 0},                        // an empty HELLO
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        w.n = 0;
        wire_header(&w, WIRE_VERSION, bad[i].type, bad[i].length);
        memset(w.b + w.n, bad[i].fill, bad[i].length);
        w.n += bad[i].length;
        char what[64];
        snprintf(what, sizeof what, "case %zu (type %u, %u bytes)", i, bad[i].type, bad[i].length);
        expect_decoded(&m, &w, w.n, -1, what);
    }
    // Garbage: random bytes, and random payloads behind valid headers.
    uint32_t x = 2024;
    for (int i = 0; i < 3000; i++) {
        fill_random(&w, 0, (size_t)(x >> 8) % 2000, &x);
        expect_decoded(&m, &w, w.n, -1, "random bytes");
        uint16_t type = (uint16_t)(1 + i % 2); // HELLO or WORLD
        size_t length = type == 1 ? HELLO_FIELDS_1 + PROOF : WORLD_FIELDS(1, 1) + PROOF;
        w.n = 0;
        wire_header(&w, WIRE_VERSION, type, (uint32_t)length);
        fill_random(&w, HEADER, length, &x);
        expect_decoded(&m, &w, w.n, -1, "a random payload");
    }
}

// ----------------------------------------------------------------------------
// control channels

// A master of 2 nodes and node 1, joined by a socket pair instead of a rendezvous.
static void pair_up(Rdzv* master, Rdzv* node) {
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0, "socketpair: %s", strerror(errno));
    for (int i = 0; i < 2; i++)
        fcntl(sv[i], F_SETFL, fcntl(sv[i], F_GETFL) | O_NONBLOCK);
    rdzv_init(master, 2, 0, "127.0.0.1", 1, TOKEN, 1.0, false);
    rdzv_init(node, 2, 1, "127.0.0.1", 1, TOKEN, 1.0, false);
    master->control_fd[1] = sv[0];
    node->control_fd[0] = sv[1];
}

// Polls r until it says stop (what it found) or `within` seconds pass (RDZV_ALL_WELL).
static RdzvPoll poll_until_stop(Rdzv* r, char* reason, size_t len, double within) {
    for (double deadline = now_seconds() + within; now_seconds() < deadline; usleep(5000)) {
        RdzvPoll found = rdzv_poll(r, reason, len);
        if (found != RDZV_ALL_WELL)
            return found;
    }
    return RDZV_ALL_WELL;
}

Test(rendezvous, an_abort_and_a_stop_travel_both_ways_with_their_reasons,
     .fini = end_children_and_release_stderr) {
    Rdzv master, node;
    char reason[RDZV_TEXT_BYTES] = "";
    pair_up(&master, &node);
    cr_assert_eq(rdzv_poll(&master, reason, sizeof reason), RDZV_ALL_WELL, "all is well, yet: %s",
                 reason);
    rdzv_send_abort(&node, "node 1: [Rank 1] killed by signal 9 (Killed)", false);
    cr_assert_eq(poll_until_stop(&master, reason, sizeof reason, 2.0), RDZV_JOB_FAILED,
                 "the master saw no ABORT");
    cr_assert_str_eq(reason, "node 1: [Rank 1] killed by signal 9 (Killed)");
    rdzv_send_abort(&master, "node 0: [Rank 0] exited with status 1", false);
    cr_assert_eq(poll_until_stop(&node, reason, sizeof reason, 2.0), RDZV_JOB_FAILED,
                 "the node saw no ABORT");
    cr_assert_str_eq(reason, "node 0: [Rank 0] exited with status 1");
    // for good: a STOP, which no restart follows
    rdzv_send_abort(&node, "node 1: interrupted", true);
    cr_assert_eq(poll_until_stop(&master, reason, sizeof reason, 2.0), RDZV_JOB_STOPPED,
                 "the master saw no STOP");
    cr_assert_str_eq(reason, "node 1: interrupted");
    rdzv_send_abort(&master, "node 0: interrupted", true);
    cr_assert_eq(poll_until_stop(&node, reason, sizeof reason, 2.0), RDZV_JOB_STOPPED,
                 "the node saw no STOP");
    rdzv_close(&master);
    rdzv_close(&node);
}

Test(rendezvous, a_node_that_goes_away_stops_the_job_but_one_that_said_done_may_leave,
     .fini = end_children_and_release_stderr) {
    Rdzv master, node;
    char reason[RDZV_TEXT_BYTES] = "", log[4096];
    // went away without DONE: the master must stop, naming the node
    pair_up(&master, &node);
    rdzv_close(&node);
    cr_assert(poll_until_stop(&master, reason, sizeof reason, 2.0),
              "the master did not notice that node 1 went away");
    cr_assert_not_null(strstr(reason, "node 1 went away"), "reason: %s", reason);
    rdzv_close(&master);
    // DONE, then gone: the master's wait ends well
    pair_up(&master, &node);
    cr_assert_eq(rdzv_send_done(&node), 0);
    rdzv_close(&node);
    catch_stderr();
    int status = rdzv_master_wait_done(&master, now_seconds() + 2.0);
    release_stderr(log, sizeof log);
    cr_assert_eq(status, 0, "waiting for DONE failed:\n%s", log);
    cr_assert_eq(rdzv_poll(&master, reason, sizeof reason), 0, "after DONE: %s", reason);
    rdzv_close(&master);
    // a node that says nothing: the wait ends at its deadline
    pair_up(&master, &node);
    double start = now_seconds();
    catch_stderr();
    status = rdzv_master_wait_done(&master, now_seconds() + 0.3);
    release_stderr(log, sizeof log);
    cr_assert_eq(status, -1, "DONE from a silent node");
    cr_assert_lt(now_seconds() - start, 2.0, "the wait overran its deadline");
    cr_assert_not_null(strstr(log, "timed out waiting for 1 node to finish"), "%s", log);
    rdzv_close(&master);
    rdzv_close(&node);
}

// ----------------------------------------------------------------------------
// floods: strangers that connect and say nothing

#define FLOOD_CONNECTIONS 300

// A child that opens `count` connections to port and keeps them open, silent, for
// `seconds` (count 0: opens new ones without end until then, closing the oldest as it
// goes); it passes gate `then` once the first `count` (or 100) are open.
static void spawn_flood(Child* c, int port, int count, double seconds, const Gate* then) {
    int answer_fd;
    if (fork_node(c, &answer_fd) != 0)
        return;
    static int fds[FLOOD_CONNECTIONS];
    int open = 0, made = 0, want = count > 0 ? count : FLOOD_CONNECTIONS;
    double until = now_seconds() + seconds;
    while (now_seconds() < until) {
        if (count > 0 && made == count) {
            usleep(10000);
            continue;
        }
        if (open == want) // an endless flood: the oldest makes way
            close(fds[made % want]), open--;
        int fd = connect_to(port);
        if (fd < 0)
            _exit(CHILD_CANNOT_CONNECT);
        fds[made % want] = fd;
        open++, made++;
        if (then != NULL && made == (count > 0 ? count : 100))
            gate_pass(then);
    }
    _exit(CHILD_JOINED);
}

Test(rendezvous, a_flood_of_silent_connections_holds_back_no_node,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(65);
    Rdzv master;
    master_listen(&master, 2, port);
    Gate flooded;
    gate_open(&flooded);
    Child flood, node;
    spawn_flood(&flood, port, FLOOD_CONNECTIONS, 8.0, &flooded);
    RdzvHello own = hello_of(0, 1, "127.0.0.1", 40000), good = hello_of(1, 1, "127.0.0.1", 40001);
    spawn_node(&node, 2, port, TOKEN, &good, &flooded, 1, NULL, ONCE_CONNECTED);
    char log[65536];
    double start = now_seconds();
    master_gather(&master, &own, log, sizeof log);
    double took = now_seconds() - start;
    RdzvWorld world;
    rdzv_make_world(&master, &world);
    cr_assert_eq(rdzv_master_send_world(&master, &world), 0);
    collect(&node);
    cr_assert_eq(node.status, CHILD_JOINED, "the node did not join: %s", node.err);
    // 300 silent strangers, 64 served at a time, each with 2 s to answer: served one after
    // the other they would have held the node back for minutes; the flood lasts 8 s, and a
    // loaded machine takes up to about 4 s to let the node through it.
    cr_assert_lt(took, 6.0, "the node was held back %.1f s by the flood", took);
    cr_assert_geq(count_of(log, "newer connections are waiting"), 1,
                  "the oldest strangers did not make way:\n%.2000s", log);
    cr_assert_not_null(strstr(log, "more connections that did not answer as nodes"),
                       "the flood was logged line by line:\n%.2000s", log);
    cr_assert_lt(count_of(log, "\n"), 20, "the flood flooded the log:\n%.2000s", log);
    rdzv_close(&master);
    kill(flood.pid, SIGKILL);
    reap_child(flood.pid, 5.0);
}

Test(rendezvous, the_gather_gives_up_at_its_deadline_whatever_a_flood_does,
     .fini = end_children_and_release_stderr) {
    int port = port_for_test(66);
    Rdzv master;
    rdzv_init(&master, 2, 0, "127.0.0.1", port, TOKEN, 2.0, false);
    char why[ERROR_TEXT_BYTES];
    cr_assert_eq(rdzv_master_listen(&master, why, sizeof why), 0, "%s", why);
    master_fd = master.listen_fd;
    Gate flooding;
    gate_open(&flooding);
    Child flood;
    spawn_flood(&flood, port, 0, 10.0, &flooding);
    RdzvHello own = hello_of(0, 1, "127.0.0.1", 40000);
    char log[65536];
    catch_stderr();
    double start = now_seconds();
    int status = rdzv_master_gather(&master, &own);
    double took = now_seconds() - start;
    release_stderr(log, sizeof log);
    cr_assert_eq(status, -1, "a job formed of strangers");
    cr_assert(took > 1.9 && took < 3.0, "the gather with a 2 s deadline ended after %.2f s", took);
    cr_assert_not_null(strstr(log, "rendezvous: timed out after 2 s with 1 of 2 nodes"),
                       "the end is not the deadline's:\n%.2000s", log);
    rdzv_close(&master);
    kill(flood.pid, SIGKILL);
    reap_child(flood.pid, 5.0);
}
