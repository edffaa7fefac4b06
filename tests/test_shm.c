/*
 * test_shm.c - byte channels in shared memory, between real processes.
 *
 * Each test forks a ring of processes as a parent forks ranks: the channels
 * (shm_region_create) and the socketpairs (comm_ring_socketpairs) are made before the
 * fork, and rank r sends on channel r to rank r + 1 and receives on channel r - 1. Each
 * rank runs a body, which notes in shared memory what its calls returned, how long they
 * took and, in words, the first thing it found wrong. The test process reaps every
 * rank, killing any still alive after RANKS_DEADLINE_S, and only then asserts.
 *
 * Data are byte patterns that depend on the position in the stream and on the sender,
 * or small integers where floats are added, so that every result is exact.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "collective.h"
#include "shm.h"
#include "timer.h"

#define MAX_RANKS 16
#define RANKS_DEADLINE_S 30.0 // a rank still alive then is killed and the test fails
#define CALL_TIMEOUT_S 20.0   // deadline of calls that should succeed
#define NOTE_MAX 256

// ----------------------------------------------------------------------------
// running a ring of processes

typedef enum { ALL_CHANNELS, LINK_1_TO_0_IS_A_SOCKET } Links;

typedef struct {
    double took;         // its wall time, seconds
    double cpu;          // the CPU time this process used during it, seconds
    char note[NOTE_MAX]; // the first failed check, "" if none
} RankResult;

typedef struct {
    int world;
    int victim;           // the rank that misbehaves, -1: none
    volatile int release; // set by a rank to let the victim go on
    pid_t pids[MAX_RANKS];
    RankResult result[MAX_RANKS];
} Shared;

typedef struct {
    Shared* sh;
    int rank, world;
    ShmLink to, from; // to rank + 1, from rank - 1
} Rank;

typedef void (*RankBody)(Rank* r);

typedef struct {
    int world;
    size_t capacity;
    Links links;
    int victim;
    RankBody body;
    Shared* sh; // what the ranks reported
    int wstatus[MAX_RANKS];
} Ring;

// Notes the first thing rank r found wrong.
static void note(Rank* r, const char* format, ...) __attribute__((format(printf, 2, 3)));
static void note(Rank* r, const char* format, ...) {
    char* out = r->sh->result[r->rank].note;
    if (out[0] != '\0')
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(out, NOTE_MAX, format, args);
    va_end(args);
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void rank_process(Ring* g, ShmRegion* region, int (*fds)[2], int rank) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); // never outlive the test
    Rank r = {.sh = g->sh, .rank = rank, .world = g->world};
    int send_fd, recv_fd;
    comm_ring_keep_own(fds, g->world, rank, &send_fd, &recv_fd);
    r.to = (ShmLink){shm_region_channel(region, rank), send_fd};
    r.from = (ShmLink){shm_region_channel(region, (rank + g->world - 1) % g->world), recv_fd};
    if (g->links == LINK_1_TO_0_IS_A_SOCKET && rank == 1)
        r.to.channel = NULL;
    if (g->links == LINK_1_TO_0_IS_A_SOCKET && rank == 0)
        r.from.channel = NULL;
    g->body(&r);
    _exit(0);
}

// Reaps every rank; kills them all at the deadline. Returns whether it had to.
static int reap_ranks(Ring* g) {
    int left = g->world, timed_out = 0;
    double deadline = timer_seconds() + RANKS_DEADLINE_S;
    pid_t* pids = g->sh->pids;
    while (left > 0) {
        for (int i = 0; i < g->world; i++)
            if (pids[i] > 0 && waitpid(pids[i], &g->wstatus[i], WNOHANG) == pids[i])
                pids[i] = 0, left--;
        if (left > 0 && timer_seconds() > deadline) {
            timed_out = 1;
            for (int i = 0; i < g->world; i++)
                if (pids[i] > 0) {
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], &g->wstatus[i], 0);
                    pids[i] = 0;
                }
            left = 0;
        }
        usleep(1000);
    }
    return timed_out;
}

// Forks g->world ranks running g->body over fresh channels; returns once all are reaped.
static void ring_run(Ring* g) {
    cr_assert(g->world >= 1 && g->world <= MAX_RANKS);
    g->sh = mmap(NULL, sizeof *g->sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g->sh, MAP_FAILED, "mmap: %s", strerror(errno));
    *g->sh = (Shared){.world = g->world, .victim = g->victim};
    ShmRegion* region = shm_region_create(g->world, g->capacity);
    cr_assert_not_null(region, "shm_region_create(%d, %zu): %s", g->world, g->capacity,
                       strerror(errno));
    int fds[MAX_RANKS][2];
    cr_assert_eq(comm_ring_socketpairs(fds, g->world), 0);
    fflush(NULL);
    for (int i = 0; i < g->world; i++) {
        pid_t pid = fork();
        if (pid == 0)
            rank_process(g, region, fds, i);
        g->sh->pids[i] = pid > 0 ? pid : 0;
        if (pid < 0) // the ranks started cannot finish: end them now
            for (int k = 0; k < i; k++)
                kill(g->sh->pids[k], SIGKILL);
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    }
    for (int i = 0; i < g->world; i++)
        close(fds[i][0]), close(fds[i][1]);
    shm_region_unmap(region);
    int timed_out = reap_ranks(g);
    cr_assert(!timed_out, "%d ranks: some still ran after %.0f s and were killed", g->world,
              RANKS_DEADLINE_S);
}

static void ring_free(Ring* g) {
    munmap(g->sh, sizeof *g->sh);
}

static const char* describe(int wstatus, char* out, size_t len) {
    if (WIFSIGNALED(wstatus))
        snprintf(out, len, "was killed by signal %d", WTERMSIG(wstatus));
    else
        snprintf(out, len, "exited with status %d", WEXITSTATUS(wstatus));
    return out;
}

// Every rank but the victim exited 0 and noted nothing wrong.
static void expect_ranks_fine(const Ring* g, const char* what) {
    for (int r = 0; r < g->world; r++) {
        if (r == g->victim)
            continue;
        char how[64];
        cr_assert(WIFEXITED(g->wstatus[r]) && WEXITSTATUS(g->wstatus[r]) == 0,
                  "%s, %d ranks: rank %d %s", what, g->world, r,
                  describe(g->wstatus[r], how, sizeof how));
        cr_assert_str_empty(g->sh->result[r].note, "%s, %d ranks: rank %d: %s", what, g->world, r,
                            g->sh->result[r].note);
    }
}

// ----------------------------------------------------------------------------
// data

// Byte k of the stream that rank `from` sends in round `round`.
static uint8_t pattern(int from, int round, size_t k) {
    return (uint8_t)(k * 131u + (k >> 9) + (size_t)from * 17u + (size_t)round * 29u);
}

static void fill(uint8_t* buf, size_t len, int from, int round, size_t offset) {
    for (size_t k = 0; k < len; k++)
        buf[k] = pattern(from, round, offset + k);
}

// Whether buf holds the stream of rank from at offset; notes the first wrong byte.
static int expect_pattern(Rank* r, const uint8_t* buf, size_t len, int from, int round,
                          size_t offset) {
    for (size_t k = 0; k < len; k++)
        if (buf[k] != pattern(from, round, offset + k)) {
            note(r, "round %d: byte %zu of the stream from rank %d is %u, want %u", round,
                 offset + k, from, buf[k], pattern(from, round, offset + k));
            return 0;
        }
    return 1;
}

static int left_of(const Rank* r) {
    return (r->rank + r->world - 1) % r->world;
}

static void expect_status(Rank* r, NetStatus st, NetStatus want, const char* what) {
    if (st != want)
        note(r, "%s: %s (%d), want %s", what, net_status_str(st), st, net_status_str(want));
}

// ----------------------------------------------------------------------------
// a stream arrives in order, whatever the sizes of the sends and the receives

#define STREAM_SENDS 300

static size_t send_size(int i) {
    return (size_t)(i * 37 % 301) + 1;
}

static size_t stream_total(void) {
    size_t total = 0;
    for (int i = 0; i < STREAM_SENDS; i++)
        total += send_size(i);
    return total;
}

// Rank 0 sends messages of one set of odd sizes; rank 1 receives them in another.
static void odd_sizes_body(Rank* r) {
    uint8_t buf[512];
    size_t at = 0, total = stream_total();
    for (int i = 0; r->rank == 0 && i < STREAM_SENDS; i++) {
        fill(buf, send_size(i), 0, 0, at);
        NetStatus st = shm_send_all(r->to, buf, send_size(i), timer_seconds() + CALL_TIMEOUT_S);
        expect_status(r, st, NET_OK, "shm_send_all");
        at += send_size(i);
    }
    for (int j = 0; r->rank == 1 && at < total; j++) {
        size_t want = (size_t)(j * 53 % 257) + 1;
        size_t n = want < total - at ? want : total - at;
        NetStatus st = shm_recv_all(r->from, buf, n, timer_seconds() + CALL_TIMEOUT_S);
        expect_status(r, st, NET_OK, "shm_recv_all");
        if (st != NET_OK || !expect_pattern(r, buf, n, 0, 0, at))
            return;
        at += n;
    }
}

Test(shm, a_stream_arrives_in_order_across_wrap_arounds_with_odd_sizes) {
    const size_t capacities[] = {64, 256, 4096};
    for (size_t c = 0; c < sizeof capacities / sizeof *capacities; c++) {
        Ring g = {.world = 2, .capacity = capacities[c], .victim = -1, .body = odd_sizes_body};
        ring_run(&g);
        char what[64];
        snprintf(what, sizeof what, "capacity %zu", capacities[c]);
        expect_ranks_fine(&g, what);
        ring_free(&g);
    }
}

// Rank 0 sends 4 pieces of 1, 3, 69 and 127 bytes; rank 1 scatters them into 2, 62, 13, 123.
static void pieces_body(Rank* r) {
    size_t send_lens[4] = {1, 3, 69, 127}, recv_lens[4] = {2, 62, 13, 123};
    size_t* lens = r->rank == 0 ? send_lens : recv_lens;
    uint8_t bytes[200];
    for (int round = 0; round < 50; round++) {
        struct iovec pieces[4];
        size_t at = 0;
        for (int i = 0; i < 4; i++) {
            pieces[i] = (struct iovec){bytes + at, lens[i]};
            at += lens[i];
        }
        double deadline = timer_seconds() + CALL_TIMEOUT_S;
        if (r->rank == 0)
            fill(bytes, sizeof bytes, 0, round, 0);
        NetStatus st =
            r->rank == 0
                ? shm_exchange(r->to, pieces, 4, (ShmLink){NULL, -1}, NULL, 0, 0, deadline)
                : shm_exchange((ShmLink){NULL, -1}, NULL, 0, r->from, pieces, 4, 0, deadline);
        expect_status(r, st, NET_OK, "shm_exchange");
        if (st != NET_OK || (r->rank == 1 && !expect_pattern(r, bytes, sizeof bytes, 0, round, 0)))
            return;
    }
}

Test(shm, pieces_of_odd_sizes_are_gathered_and_scattered_in_order) {
    Ring g = {.world = 2, .capacity = 64, .victim = -1, .body = pieces_body};
    ring_run(&g);
    expect_ranks_fine(&g, "capacity 64, 200-byte messages");
    ring_free(&g);
}

// ----------------------------------------------------------------------------
// the exchange: both directions at once

#define BIG_BYTES ((1u << 20) + 4) // far more than the channels hold

typedef struct {
    uint32_t from, round;
} Header;

// Every rank sends a header and BIG_BYTES to the right while receiving from the left.
static void big_exchange_body(Rank* r) {
    uint8_t* out = malloc(BIG_BYTES);
    uint8_t* in = malloc(BIG_BYTES);
    for (int round = 0; round < 3 && out != NULL && in != NULL; round++) {
        Header h_out = {(uint32_t)r->rank, (uint32_t)round}, h_in = {0, 0};
        fill(out, BIG_BYTES, r->rank, round, 0);
        struct iovec send[2] = {{&h_out, sizeof h_out}, {out, BIG_BYTES}};
        struct iovec recv[2] = {{&h_in, sizeof h_in}, {in, BIG_BYTES}};
        NetStatus st =
            shm_exchange(r->to, send, 2, r->from, recv, 2, 0, timer_seconds() + CALL_TIMEOUT_S);
        expect_status(r, st, NET_OK, "shm_exchange");
        if (st != NET_OK)
            break;
        if (h_in.from != (uint32_t)left_of(r) || h_in.round != (uint32_t)round)
            note(r, "round %d: a header from rank %u, round %u; want rank %d", round, h_in.from,
                 h_in.round, left_of(r));
        if (!expect_pattern(r, in, BIG_BYTES, left_of(r), round, 0))
            break;
    }
    free(out);
    free(in);
}

Test(shm, an_exchange_of_messages_larger_than_the_channels_completes_around_a_ring) {
    const int worlds[] = {2, 3, 5};
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++) {
        Ring g = {.world = worlds[w], .capacity = 4096, .victim = -1, .body = big_exchange_body};
        ring_run(&g);
        expect_ranks_fine(&g, "capacity 4096, 1 MiB messages");
        ring_free(&g);
    }
}

Test(shm, an_exchange_over_a_channel_one_way_and_a_socket_the_other_completes) {
    Ring g = {.world = 2,
              .capacity = 4096,
              .links = LINK_1_TO_0_IS_A_SOCKET,
              .victim = -1,
              .body = big_exchange_body};
    ring_run(&g);
    expect_ranks_fine(&g, "rank 0 to 1 over a channel, 1 to 0 over a socket");
    ring_free(&g);
}

#define ADD_COUNT 1001

static float add_value(int from, int round, size_t i) {
    return (float)((int)((i * 7919u + (size_t)from * 104729u + (size_t)round) % 201u) - 100);
}

// Rank 0 sends a 3-byte header and floats; rank 1 adds them into floats of its own. The
// header shifts the floats off the ring's 4-byte grid, so some are cut by its end.
static void adding_body(Rank* r) {
    float values[ADD_COUNT];
    uint8_t header[3];
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < ADD_COUNT; i++)
            values[i] = add_value(r->rank, round, i);
        fill(header, sizeof header, r->rank, round, 0);
        struct iovec pieces[2] = {{header, sizeof header}, {values, sizeof values}};
        double deadline = timer_seconds() + CALL_TIMEOUT_S;
        NetStatus st =
            r->rank == 0
                ? shm_exchange(r->to, pieces, 2, (ShmLink){NULL, -1}, NULL, 0, 0, deadline)
                : shm_exchange((ShmLink){NULL, -1}, NULL, 0, r->from, pieces, 2, 1u << 1, deadline);
        expect_status(r, st, NET_OK, "shm_exchange");
        if (st != NET_OK || r->rank == 0)
            continue;
        if (!expect_pattern(r, header, sizeof header, 0, round, 0))
            return;
        for (size_t i = 0; i < ADD_COUNT; i++)
            if (values[i] != add_value(1, round, i) + add_value(0, round, i)) {
                note(r, "round %d: float %zu is %g, want %g + %g", round, i, values[i],
                     add_value(1, round, i), add_value(0, round, i));
                return;
            }
    }
}

Test(shm, a_receive_that_adds_sums_the_floats_into_the_destination) {
    const size_t capacities[] = {64, 4096};
    for (size_t c = 0; c < sizeof capacities / sizeof *capacities; c++) {
        Ring g = {.world = 2, .capacity = capacities[c], .victim = -1, .body = adding_body};
        ring_run(&g);
        char what[64];
        snprintf(what, sizeof what, "capacity %zu", capacities[c]);
        expect_ranks_fine(&g, what);
        ring_free(&g);
    }
}

// ----------------------------------------------------------------------------
// deadlines, and peers that die or stop

#define SHORT_TIMEOUT_S 0.5
#define WAIT_FOR_RELEASE_S 10.0

static void wait_for_release(Rank* r) {
    double deadline = timer_seconds() + WAIT_FOR_RELEASE_S;
    while (!__atomic_load_n(&r->sh->release, __ATOMIC_SEQ_CST) && timer_seconds() < deadline)
        usleep(1000);
}

// Runs one call with a deadline SHORT_TIMEOUT_S away and notes when it did not time out
// at about that deadline.
static void expect_timeout(Rank* r, const char* what, ShmLink to, const void* send, size_t send_n,
                           ShmLink from, void* recv, size_t recv_n) {
    struct iovec out = {(void*)send, send_n}, in = {recv, recv_n};
    double start = timer_seconds();
    NetStatus st =
        shm_exchange(to, &out, send_n > 0, from, &in, recv_n > 0, 0, start + SHORT_TIMEOUT_S);
    double took = timer_seconds() - start;
    expect_status(r, st, NET_TIMEOUT, what);
    if (took < SHORT_TIMEOUT_S || took > SHORT_TIMEOUT_S + 2.0)
        note(r, "%s: timed out after %.3f s, its deadline was %.1f s away", what, took,
             SHORT_TIMEOUT_S);
}

// Rank 1 lives but does nothing; rank 0 waits for bytes, then for room, then for both.
static void silent_peer_body(Rank* r) {
    if (r->rank == 1) {
        wait_for_release(r);
        return;
    }
    uint8_t buf[8192] = {0};
    ShmLink none = {NULL, -1};
    expect_timeout(r, "a receive from a silent peer", none, NULL, 0, r->from, buf, 100);
    // 4096 bytes fill the channel; the rest waits for room that never comes.
    expect_timeout(r, "a send to a silent peer", r->to, buf, sizeof buf, none, NULL, 0);
    expect_timeout(r, "an exchange with a silent peer", r->to, buf, 1, r->from, buf, 1);
    __atomic_store_n(&r->sh->release, 1, __ATOMIC_SEQ_CST);
}

Test(shm, calls_return_timeout_at_their_deadline_when_the_peer_is_silent) {
    Ring g = {.world = 2, .capacity = 4096, .victim = -1, .body = silent_peer_body};
    ring_run(&g);
    expect_ranks_fine(&g, "a silent peer");
    ring_free(&g);
}

#define DIES_AFTER_BYTES (64u << 10)
#define SEEN_WITHIN_S 2.0 // well before CALL_TIMEOUT_S: the hang-up, not the deadline

// The victim moves DIES_AFTER_BYTES of a 1 MiB message, then is killed (or exits); the
// other rank's call must return NET_CLOSED long before its deadline.
static void dies_mid_transfer_body(Rank* r) {
    uint8_t* buf = calloc(1, BIG_BYTES);
    bool victim = r->rank == r->sh->victim, sender = r->rank == 0;
    size_t n = victim ? DIES_AFTER_BYTES : BIG_BYTES;
    double start = timer_seconds(), deadline = start + CALL_TIMEOUT_S;
    NetStatus st = buf == NULL ? NET_ERROR
                   : sender    ? shm_send_all(r->to, buf, n, deadline)
                               : shm_recv_all(r->from, buf, n, deadline);
    if (victim) {
        expect_status(r, st, NET_OK, "the victim's part of the message");
        raise(SIGKILL);
    }
    double took = timer_seconds() - start;
    expect_status(r, st, NET_CLOSED,
                  sender ? "a send to a peer that died" : "a receive from a peer that died");
    if (took > SEEN_WITHIN_S)
        note(r, "the death was seen after %.3f s, the deadline was %.0f s away", took,
             CALL_TIMEOUT_S);
    free(buf);
}

Test(shm, a_peer_that_dies_mid_transfer_is_seen_long_before_the_deadline) {
    for (int victim = 0; victim < 2; victim++) {
        Ring g = {.world = 2, .capacity = 4096, .victim = victim, .body = dies_mid_transfer_body};
        ring_run(&g);
        char what[64];
        snprintf(what, sizeof what, "the %s died", victim == 0 ? "sender" : "receiver");
        expect_ranks_fine(&g, what);
        cr_assert(WIFSIGNALED(g.wstatus[victim]) && WTERMSIG(g.wstatus[victim]) == SIGKILL,
                  "%s: the victim did not die as planned: %s", what, g.sh->result[victim].note);
        ring_free(&g);
    }
}

// The victim stops itself (SIGSTOP) before it sends: alive, but silent for ever. The
// other rank's receive must end at its deadline; then it kills the victim.
static void stops_body(Rank* r) {
    if (r->rank == r->sh->victim) {
        raise(SIGSTOP);
        return;
    }
    uint8_t buf[100];
    expect_timeout(r, "a receive from a stopped peer", (ShmLink){NULL, -1}, NULL, 0, r->from, buf,
                   sizeof buf);
    kill(r->sh->pids[r->sh->victim], SIGKILL);
}

Test(shm, a_stopped_peer_trips_the_deadline) {
    Ring g = {.world = 2, .capacity = 4096, .victim = 0, .body = stops_body};
    ring_run(&g);
    expect_ranks_fine(&g, "a stopped peer");
    ring_free(&g);
}

// ----------------------------------------------------------------------------
// more ranks than cores

#define LATE_S 1.0
#define EXCHANGE_BYTES (64u << 10)

// Rank 0 starts a message around the ring LATE_S late; every other rank waits for it
// from its left, noting the CPU time the wait cost, then passes it on to its right.
static void late_rank_body(Rank* r) {
    static uint8_t buf[EXCHANGE_BYTES];
    double deadline = timer_seconds() + CALL_TIMEOUT_S;
    if (r->rank == 0) {
        usleep((useconds_t)(LATE_S * 1e6));
        fill(buf, sizeof buf, 0, 0, 0);
        expect_status(r, shm_send_all(r->to, buf, sizeof buf, deadline), NET_OK, "shm_send_all");
        expect_status(r, shm_recv_all(r->from, buf, sizeof buf, deadline), NET_OK, "shm_recv_all");
        expect_pattern(r, buf, sizeof buf, 0, 0, 0);
        return;
    }
    double start = timer_seconds(), cpu = cpu_seconds();
    NetStatus st = shm_recv_all(r->from, buf, sizeof buf, deadline);
    RankResult* res = &r->sh->result[r->rank];
    res->took = timer_seconds() - start;
    res->cpu = cpu_seconds() - cpu;
    expect_status(r, st, NET_OK, "shm_recv_all");
    if (st == NET_OK && expect_pattern(r, buf, sizeof buf, 0, 0, 0))
        expect_status(r, shm_send_all(r->to, buf, sizeof buf, deadline), NET_OK, "shm_send_all");
}

Test(shm, ranks_that_wait_for_a_late_peer_sleep_instead_of_spinning) {
    // Eight ranks on this machine's few cores: ranks that spun while they waited would
    // share the cores and use a quarter of the wait each, and more on a quiet machine.
    Ring g = {.world = 8, .capacity = 4096, .victim = -1, .body = late_rank_body};
    ring_run(&g);
    expect_ranks_fine(&g, "a late rank 0");
    for (int r = 1; r < g.world; r++) {
        const RankResult* res = &g.sh->result[r];
        cr_assert_gt(res->took, 0.5 * LATE_S, "rank %d did not wait for rank 0: %.3f s", r,
                     res->took);
        cr_assert_lt(res->cpu, 0.05 * res->took,
                     "rank %d used %.3f s of CPU time in a wait of %.3f s", r, res->cpu, res->took);
    }
    ring_free(&g);
}

// Rounds of exchanges that outgrow the channels around a ring of 16.
static void many_rounds_body(Rank* r) {
    static uint8_t out[EXCHANGE_BYTES], in[EXCHANGE_BYTES];
    for (int round = 0; round < 20; round++) {
        fill(out, sizeof out, r->rank, round, 0);
        struct iovec send = {out, sizeof out}, recv = {in, sizeof in};
        NetStatus st =
            shm_exchange(r->to, &send, 1, r->from, &recv, 1, 0, timer_seconds() + CALL_TIMEOUT_S);
        expect_status(r, st, NET_OK, "shm_exchange");
        if (st != NET_OK || !expect_pattern(r, in, sizeof in, left_of(r), round, 0))
            return;
    }
}

Test(shm, a_ring_of_sixteen_ranks_on_few_cores_completes_round_after_round) {
    Ring g = {.world = 16, .capacity = 4096, .victim = -1, .body = many_rounds_body};
    ring_run(&g);
    expect_ranks_fine(&g, "20 rounds of 64 KiB through 4 KiB channels");
    ring_free(&g);
}

// ----------------------------------------------------------------------------
// what is refused

Test(shm, a_region_takes_only_power_of_two_capacities_in_range_and_some_channels) {
    const size_t bad[] = {100, 32, 3 * 4096, (size_t)SHM_MAX_CHANNEL_BYTES * 2};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        ShmRegion* r = shm_region_create(2, bad[i]);
        cr_assert(r == NULL && errno == EINVAL, "capacity %zu: %s", bad[i],
                  r == NULL ? strerror(errno) : "accepted");
    }
    errno = 0;
    cr_assert(shm_region_create(0, 4096) == NULL && errno == EINVAL, "0 channels were accepted");
    ShmRegion* r = shm_region_create(3, 0);
    cr_assert_not_null(r, "the default capacity: %s", strerror(errno));
    cr_assert_eq(shm_region_count(r), 3);
    cr_assert_eq(shm_channel_capacity(shm_region_channel(r, 2)), SHM_DEFAULT_CHANNEL_BYTES);
    shm_region_unmap(r);
}

static void expect_refused(NetStatus st, const char* what) {
    int err = errno;
    cr_assert(st == NET_ERROR && err == EINVAL, "%s: %s, errno %d (%s), want EINVAL", what,
              net_status_str(st), err, strerror(err));
}

Test(shm, an_exchange_refuses_adding_pieces_it_cannot_add_and_too_many_pieces) {
    ShmRegion* region = shm_region_create(1, 4096);
    cr_assert_not_null(region);
    ShmLink channel = {shm_region_channel(region, 0), -1}, socket = {NULL, 0}, none = {NULL, -1};
    float f[4];
    struct iovec odd = {f, 7}, floats = {f, sizeof f}, five[5];
    for (int i = 0; i < 5; i++)
        five[i] = (struct iovec){f, 1};
    double deadline = timer_seconds() + 1.0;
    expect_refused(shm_exchange(none, NULL, 0, channel, &odd, 1, 1u, deadline),
                   "an adding piece of 7 bytes");
    expect_refused(shm_exchange(none, NULL, 0, socket, &floats, 1, 1u, deadline),
                   "adding what a socket brings");
    expect_refused(shm_exchange(none, NULL, 0, channel, &floats, 1, 1u << 1, deadline),
                   "adding into a piece that is not there");
    expect_refused(shm_exchange(channel, five, 5, none, NULL, 0, 0, deadline), "five pieces");
    expect_refused(shm_exchange(none, &floats, 1, none, NULL, 0, 0, deadline),
                   "bytes for no link at all");
    shm_region_unmap(region);
}
