/*
 * test_collective.c - the ring all-reduce, broadcast and barrier, run by real processes.
 *
 * Each test forks one process per rank, connected as lesson 02 connects its
 * workers (comm_ring_socketpairs before the fork, comm_ring_keep_own after). Every
 * test runs twice: in suite ring_socket the bytes travel over those socketpairs, in
 * ring_shm through channels in shared memory (comm_ring_shm before the fork,
 * comm_init_ring_shm after), the sockets only telling each rank that its neighbours live.
 * Suite ring_mixed runs a few of them on rings of both (comm_init_ring_links), as lesson
 * 03 joins the ranks of a node by channels and the nodes by sockets.
 * Every rank runs a body on its own communicator, in a buffer that lives in
 * shared memory (mmap MAP_SHARED), and notes there what its call returned and
 * when; the test process reaps every rank, killing any still alive after
 * RANKS_DEADLINE_S, and only then asserts. What each rank writes on stderr is
 * kept, and shown when an assertion fails.
 *
 * Data are small integers wherever a result must be exact. The faults - a rank
 * that exits, is killed before or inside a call, or stalls - check principle 4:
 * the other ranks' calls return -1, fast (or at their deadline), never hang.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "collective.h"
#include "kernels.h"
#include "replicas.h"
#include "timer.h"

#define MAX_WORLD 8
#define RANKS_DEADLINE_S 30.0     // a rank still alive then is killed and the test fails
#define ERR_MAX 4096              // bytes of each rank's stderr kept
#define SENTINEL_BITS 0x7fc0beefu // a NaN that no collective writes: "untouched"

// How the ring's bytes travel in the running test (Criterion runs each test in a process
// of its own). RING_TEST(name) defines the test twice: ring_socket::name, ring_shm::name.
// OVER_MIXED: the link from rank r to r + 1 is a socket for odd r, a channel for even r.
typedef enum { OVER_SOCKETS, OVER_SHM, OVER_MIXED } Transport;
static Transport transport;

#define RING_TEST(name)                                                                            \
    static void ring_test_##name(void);                                                            \
    Test(ring_socket, name) {                                                                      \
        transport = OVER_SOCKETS;                                                                  \
        ring_test_##name();                                                                        \
    }                                                                                              \
    Test(ring_shm, name) {                                                                         \
        transport = OVER_SHM;                                                                      \
        ring_test_##name();                                                                        \
    }                                                                                              \
    static void ring_test_##name(void)

// ----------------------------------------------------------------------------
// running ranks as processes

typedef struct {
    volatile int called;        // the body reached its collective
    volatile int returned;      // the collective returned (rc is valid)
    int rc;                     // what the collective returned
    double start, end;          // timer_seconds() around the call (one clock for all processes)
    uint64_t hashes[MAX_WORLD]; // replicas_gather_hashes' answer
} RankReport;

typedef struct {
    int world_size;
    size_t slot;  // floats of each rank's buffer in data
    size_t count; // floats a collective moves
    double timeout_s;
    int root;   // of a broadcast
    int victim; // the rank that misbehaves (-1: none)
    RankReport report[MAX_WORLD];
    volatile int reaped[MAX_WORLD]; // set by the test process when it reaps a rank
    float data[];                   // (world_size, slot) every rank's buffer
} Shared;

typedef struct {
    Shared* sh;
    Communicator* comm;
    int rank;
    int send_fd, recv_fd; // the communicator's sockets
    float* buf;           // (slot) this rank's buffer, in shared memory
} RankCtx;

typedef void (*RankBody)(RankCtx* r);

typedef struct {
    // what to run
    int world_size;
    size_t count;
    size_t slot; // 0: max(count, 1)
    double timeout_s;
    int root;
    int victim;
    RankBody body;
    // what happened
    Shared* sh;
    size_t shared_bytes;
    int status[MAX_WORLD]; // waitpid status
    char err[MAX_WORLD][ERR_MAX];
} Ring;

// A communicator on the two sockets of rank, and on its channels in shm unless NULL.
static int make_communicator(Communicator** comm, CommSettings s, ShmRegion* shm, int send_fd,
                             int recv_fd) {
    if (shm == NULL)
        return comm_init_ring(comm, s, send_fd, recv_fd);
    if (transport == OVER_SHM)
        return comm_init_ring_shm(comm, s, shm, send_fd, recv_fd);
    int left = (s.rank + s.world_size - 1) % s.world_size;
    ShmLink send = {s.rank % 2 == 1 ? NULL : shm_region_channel(shm, s.rank), send_fd};
    ShmLink recv = {left % 2 == 1 ? NULL : shm_region_channel(shm, left), recv_fd};
    return comm_init_ring_links(comm, s, send, recv);
}

// One rank's life: its two sockets (and channels), a communicator, the body, then exit.
static void rank_process(Ring* g, int (*fds)[2], ShmRegion* shm, int rank, int err_fd) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); // never outlive the test
    dup2(err_fd, STDERR_FILENO);
    rank_log_set_rank(rank);
    RankCtx r = {.sh = g->sh, .rank = rank, .buf = g->sh->data + (size_t)rank * g->sh->slot};
    comm_ring_keep_own(fds, g->world_size, rank, &r.send_fd, &r.recv_fd);
    CommSettings s = {
        .rank = rank, .world_size = g->world_size, .timeout_s = g->timeout_s, .k = &kernels_cpu};
    if (make_communicator(&r.comm, s, shm, r.send_fd, r.recv_fd) != 0)
        _exit(3);
    g->body(&r);
    comm_destroy(r.comm);
    fflush(NULL);
    _exit(0);
}

// Reads what rank wrote on stderr into g->err[rank].
static void keep_stderr(Ring* g, int rank, int fd) {
    ssize_t n = pread(fd, g->err[rank], ERR_MAX - 1, 0);
    g->err[rank][n > 0 ? n : 0] = '\0';
    close(fd);
}

// Reaps every rank, marking each in shared memory as it goes; kills them all at the deadline.
static int reap_ranks(Ring* g, pid_t* pids) {
    int left = g->world_size, timed_out = 0;
    double deadline = timer_seconds() + RANKS_DEADLINE_S;
    while (left > 0) {
        for (int i = 0; i < g->world_size; i++)
            if (pids[i] > 0 && waitpid(pids[i], &g->status[i], WNOHANG) == pids[i]) {
                pids[i] = 0;
                __atomic_store_n(&g->sh->reaped[i], 1, __ATOMIC_SEQ_CST);
                left--;
            }
        if (left > 0 && timer_seconds() > deadline) {
            timed_out = 1;
            for (int i = 0; i < g->world_size; i++)
                if (pids[i] > 0) {
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], &g->status[i], 0);
                    pids[i] = 0;
                }
            left = 0;
        }
        usleep(1000);
    }
    return timed_out;
}

// Forks g->world_size ranks running g->body; returns once every one is reaped.
static void ring_run(Ring* g) {
    cr_assert(g->world_size >= 1 && g->world_size <= MAX_WORLD);
    size_t slot = g->slot > 0 ? g->slot : (g->count > 0 ? g->count : 1);
    g->shared_bytes = sizeof(Shared) + (size_t)g->world_size * slot * sizeof(float);
    g->sh = mmap(NULL, g->shared_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g->sh, MAP_FAILED, "mmap: %s", strerror(errno));
    *g->sh = (Shared){.world_size = g->world_size,
                      .slot = slot,
                      .count = g->count,
                      .timeout_s = g->timeout_s,
                      .root = g->root,
                      .victim = g->victim};
    uint32_t sentinel = SENTINEL_BITS;
    for (size_t i = 0; i < (size_t)g->world_size * slot; i++)
        memcpy(&g->sh->data[i], &sentinel, sizeof sentinel);

    int fds[MAX_WORLD][2], err_fds[MAX_WORLD];
    pid_t pids[MAX_WORLD] = {0};
    cr_assert_eq(comm_ring_socketpairs(fds, g->world_size), 0);
    ShmRegion* shm = NULL;
    if (transport != OVER_SOCKETS)
        cr_assert_not_null(shm = comm_ring_shm(g->world_size, 0), "comm_ring_shm: %s",
                           strerror(errno));
    for (int i = 0; i < g->world_size; i++) {
        FILE* f = tmpfile();
        cr_assert_not_null(f, "tmpfile: %s", strerror(errno));
        err_fds[i] = dup(fileno(f));
        fclose(f);
    }
    fflush(NULL);
    int fork_failed = 0;
    for (int i = 0; i < g->world_size && !fork_failed; i++) {
        pids[i] = fork();
        if (pids[i] == 0)
            rank_process(g, fds, shm, i, err_fds[i]);
        fork_failed = pids[i] < 0;
        if (fork_failed)
            pids[i] = 0;
    }
    for (int i = 0; i < g->world_size; i++)
        close(fds[i][0]), close(fds[i][1]);
    shm_region_unmap(shm);
    if (fork_failed) // the ranks started cannot finish: end them now
        for (int i = 0; i < g->world_size; i++)
            if (pids[i] > 0)
                kill(pids[i], SIGKILL);
    int timed_out = reap_ranks(g, pids);
    for (int i = 0; i < g->world_size; i++)
        keep_stderr(g, i, err_fds[i]);
    cr_assert(!fork_failed, "fork: %s", strerror(errno));
    cr_assert(!timed_out, "world %d: ranks still running after %.0f s were killed", g->world_size,
              RANKS_DEADLINE_S);
}

static void ring_free(Ring* g) {
    if (g->sh != NULL)
        munmap(g->sh, g->shared_bytes);
    g->sh = NULL;
}

static const char* describe_status(int status, char* out, size_t len) {
    if (WIFSIGNALED(status))
        snprintf(out, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(out, len, "exited with status %d", WEXITSTATUS(status));
    return out;
}

// Every rank exited 0 and its call returned 0.
static void expect_every_rank_succeeded(const Ring* g) {
    for (int r = 0; r < g->world_size; r++) {
        char how[64];
        const RankReport* rep = &g->sh->report[r];
        cr_assert(WIFEXITED(g->status[r]) && WEXITSTATUS(g->status[r]) == 0,
                  "world %d, count %zu: rank %d %s; its stderr:\n%s", g->world_size, g->count, r,
                  describe_status(g->status[r], how, sizeof how), g->err[r]);
        cr_assert(rep->returned && rep->rc == 0,
                  "world %d, count %zu: rank %d's call returned %d; its stderr:\n%s", g->world_size,
                  g->count, r, rep->rc, g->err[r]);
    }
}

// ----------------------------------------------------------------------------
// data and comparisons

// Rank r's element i: an integer in [-100, 100], so any sum over 8 ranks is exact.
static float int_value(int rank, size_t i) {
    return (float)((int)((i * 7919u + (size_t)rank * 104729u) % 201u) - 100);
}

static uint64_t mix(uint64_t x) { // splitmix64's finaliser
    x ^= x >> 30, x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27, x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Rank r's element i: a fraction in [-2^7, 2^7] with many bits, so sums round.
static float rounding_value(int rank, size_t i) {
    uint64_t h = mix(i * 64 + (uint64_t)rank + 1);
    float unit = (float)(h >> 40) / (float)(1 << 24) - 0.5f;
    return ldexpf(unit, (int)(h % 16) - 7);
}

static uint32_t bits_of(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

// got (n) must equal want (n) bit for bit; a failure names the worst element.
static void expect_same_bits(const float* got, const float* want, size_t n, const char* what) {
    size_t mismatches = 0, worst = 0;
    double max_diff = -1.0;
    for (size_t i = 0; i < n; i++) {
        if (bits_of(got[i]) == bits_of(want[i]))
            continue;
        mismatches++;
        double diff = fabs((double)got[i] - (double)want[i]);
        if (isnan(diff))
            diff = INFINITY;
        if (diff > max_diff)
            max_diff = diff, worst = i;
    }
    cr_assert_eq(mismatches, 0,
                 "%s: %zu of %zu elements differ; worst element %zu: got %.9g, want %.9g "
                 "(max difference %.9g)",
                 what, mismatches, n, worst, got[worst], want[worst], max_diff);
}

// The buffer of rank r in a finished run.
static const float* buffer_of(const Ring* g, int r) {
    return g->sh->data + (size_t)r * g->sh->slot;
}

// Every rank's first count floats are want (count) and every rank's are rank 0's, bit for bit.
static void expect_every_rank_holds(const Ring* g, const float* want, size_t count) {
    char what[128];
    for (int r = 0; r < g->world_size; r++) {
        snprintf(what, sizeof what, "world %d, count %zu: rank %d against the exact result",
                 g->world_size, count, r);
        expect_same_bits(buffer_of(g, r), want, count, what);
        snprintf(what, sizeof what, "world %d, count %zu: rank %d against rank 0", g->world_size,
                 count, r);
        expect_same_bits(buffer_of(g, r), buffer_of(g, 0), count, what);
    }
}

// The exact sum over ranks of int_value, times scale.
static float* int_sums(int world_size, size_t count) {
    float* sum = calloc(count + 1, sizeof(float));
    cr_assert_not_null(sum);
    for (size_t i = 0; i < count; i++)
        for (int r = 0; r < world_size; r++)
            sum[i] += int_value(r, i);
    return sum;
}

// ----------------------------------------------------------------------------
// rank bodies: each does one thing and notes what its call returned

static void call_started(RankCtx* r) {
    r->sh->report[r->rank].called = 1;
    r->sh->report[r->rank].start = timer_seconds();
}

static void call_ended(RankCtx* r, int rc) {
    RankReport* rep = &r->sh->report[r->rank];
    rep->end = timer_seconds();
    rep->rc = rc;
    rep->returned = 1;
}

static void fill_int_values(RankCtx* r, size_t count, float scale) {
    for (size_t i = 0; i < count; i++)
        r->buf[i] = scale * int_value(r->rank, i);
}

static void allreduce_sum_body(RankCtx* r) {
    fill_int_values(r, r->sh->count, 1.0f);
    call_started(r);
    call_ended(r, comm_allreduce_sum(r->comm, r->buf, r->sh->count, COMM_ONCE("test")));
}

static void allreduce_mean_body(RankCtx* r) {
    fill_int_values(r, r->sh->count, (float)r->sh->world_size);
    call_started(r);
    call_ended(r, comm_allreduce_mean(r->comm, r->buf, r->sh->count, COMM_ONCE("test")));
}

static void allreduce_rounding_body(RankCtx* r) {
    for (size_t i = 0; i < r->sh->count; i++)
        r->buf[i] = rounding_value(r->rank, i);
    call_started(r);
    call_ended(r, comm_allreduce_sum(r->comm, r->buf, r->sh->count, COMM_ONCE("test")));
}

// The root holds int_value(root, i); every other rank starts from a NaN.
static void broadcast_body(RankCtx* r) {
    for (size_t i = 0; i < r->sh->count; i++)
        r->buf[i] = r->rank == r->sh->root ? int_value(r->sh->root, i) : NAN;
    call_started(r);
    call_ended(r, comm_broadcast(r->comm, r->buf, r->sh->count, r->sh->root, COMM_ONCE("test")));
}

// ----------------------------------------------------------------------------
// the all-reduce: exact, and the same bits on every rank

// Runs a sum of count floats over world ranks and checks it.
static void expect_exact_allreduce(int world, size_t count) {
    Ring g = {.world_size = world,
              .count = count,
              .timeout_s = 10,
              .victim = -1,
              .body = allreduce_sum_body};
    ring_run(&g);
    expect_every_rank_succeeded(&g);
    float* want = int_sums(world, count);
    expect_every_rank_holds(&g, want, count);
    free(want);
    ring_free(&g);
}

RING_TEST(allreduce_of_zero_floats_succeeds_and_writes_nothing) {
    for (int world = 1; world <= MAX_WORLD; world++) {
        Ring g = {.world_size = world,
                  .count = 0,
                  .timeout_s = 10,
                  .victim = -1,
                  .body = allreduce_sum_body};
        ring_run(&g);
        expect_every_rank_succeeded(&g);
        for (int r = 0; r < world; r++)
            cr_assert_eq(bits_of(buffer_of(&g, r)[0]), SENTINEL_BITS,
                         "world %d: rank %d's buffer was written: %g", world, r,
                         buffer_of(&g, r)[0]);
        ring_free(&g);
    }
}

RING_TEST(allreduce_of_one_float_is_the_exact_sum_on_every_rank) {
    for (int world = 1; world <= MAX_WORLD; world++)
        expect_exact_allreduce(world, 1);
}

RING_TEST(allreduce_of_fewer_floats_than_ranks_is_exact_on_every_rank) {
    // Some chunks are empty: those ring steps move zero bytes.
    for (int world = 2; world <= MAX_WORLD; world++)
        expect_exact_allreduce(world, (size_t)world - 1);
}

RING_TEST(allreduce_of_an_odd_count_is_exact_on_every_rank) {
    // 1001 = 7 * 11 * 13: chunks of unequal sizes for every world size but 1 and 7.
    for (int world = 1; world <= MAX_WORLD; world++) {
        expect_exact_allreduce(world, 1001);
        expect_exact_allreduce(world, (size_t)world + 1);
    }
}

RING_TEST(allreduce_of_a_million_floats_is_exact_on_every_rank) {
    // Chunks far larger than a socket's buffer: sends and receives must overlap.
    expect_exact_allreduce(2, 1000000);
    expect_exact_allreduce(4, 1000003);
}

RING_TEST(allreduce_is_bitwise_identical_on_every_rank_when_sums_round) {
    // Each chunk is summed at one rank and copied: the same bits everywhere, though
    // not the bits of a serial sum, which adds in another order.
    const int worlds[] = {3, 5, 8};
    const size_t count = 1001;
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++) {
        Ring g = {.world_size = worlds[w],
                  .count = count,
                  .timeout_s = 10,
                  .victim = -1,
                  .body = allreduce_rounding_body};
        ring_run(&g);
        expect_every_rank_succeeded(&g);
        char what[96];
        for (int r = 1; r < g.world_size; r++) {
            snprintf(what, sizeof what, "world %d: rank %d against rank 0", g.world_size, r);
            expect_same_bits(buffer_of(&g, r), buffer_of(&g, 0), count, what);
        }
        double max_rel = 0.0;
        size_t worst = 0;
        for (size_t i = 0; i < count; i++) {
            double sum = 0.0, magnitude = 0.0;
            for (int r = 0; r < g.world_size; r++)
                sum += rounding_value(r, i), magnitude += fabs(rounding_value(r, i));
            double rel = fabs(buffer_of(&g, 0)[i] - sum) / magnitude;
            if (rel > max_rel)
                max_rel = rel, worst = i;
        }
        // float addition of world terms: at most world - 1 roundings of 2^-24 each
        cr_assert_leq(max_rel, g.world_size * 6e-8,
                      "world %d: worst element %zu differs from the serial sum by %.3g of its "
                      "magnitude",
                      g.world_size, worst, max_rel);
        ring_free(&g);
    }
}

RING_TEST(two_ranks_hold_the_float_sum_of_their_two_values_bit_for_bit) {
    // Two ranks round each sum once, a + b, wherever it is made: at one rank of the ring
    // and copied, or at both in the pairwise exchange that two ranks over channels take up
    // to 32 KiB (8192 floats), where a + b == b + a. Sizes on both sides of that limit.
    const size_t counts[] = {1, 4481, 8192, 8193, 100000};
    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
        Ring g = {.world_size = 2,
                  .count = counts[c],
                  .timeout_s = 10,
                  .victim = -1,
                  .body = allreduce_rounding_body};
        ring_run(&g);
        expect_every_rank_succeeded(&g);
        float* want = calloc(counts[c], sizeof(float));
        cr_assert_not_null(want);
        for (size_t i = 0; i < counts[c]; i++)
            want[i] = rounding_value(0, i) + rounding_value(1, i);
        expect_every_rank_holds(&g, want, counts[c]);
        free(want);
        ring_free(&g);
    }
}

RING_TEST(allreduce_mean_is_exact_when_values_are_multiples_of_the_world_size) {
    for (int world = 1; world <= MAX_WORLD; world++) {
        Ring g = {.world_size = world,
                  .count = 1001,
                  .timeout_s = 10,
                  .victim = -1,
                  .body = allreduce_mean_body};
        ring_run(&g);
        expect_every_rank_succeeded(&g);
        float* want = int_sums(world, g.count); // the mean of world * x is the sum of x
        expect_every_rank_holds(&g, want, g.count);
        free(want);
        ring_free(&g);
    }
}

// Three sums of different sizes, one after another, on one communicator: its buffers grow.
static const size_t changing_counts[] = {5, 100000, 1, 1001, 0, 2};
#define CHANGING_CALLS (sizeof changing_counts / sizeof *changing_counts)

static void changing_sizes_body(RankCtx* r) {
    size_t at = 0;
    int rc = 0;
    call_started(r);
    for (size_t c = 0; c < CHANGING_CALLS && rc == 0; c++) {
        for (size_t i = 0; i < changing_counts[c]; i++)
            r->buf[at + i] = int_value(r->rank, i + c);
        rc = comm_allreduce_sum(r->comm, r->buf + at, changing_counts[c], COMM_ONCE("test"));
        at += changing_counts[c];
    }
    call_ended(r, rc);
}

RING_TEST(one_communicator_serves_calls_of_changing_sizes) {
    size_t total = 0;
    for (size_t c = 0; c < CHANGING_CALLS; c++)
        total += changing_counts[c];
    Ring g = {.world_size = 3,
              .count = total,
              .timeout_s = 10,
              .victim = -1,
              .body = changing_sizes_body};
    ring_run(&g);
    expect_every_rank_succeeded(&g);
    float* want = calloc(total + 1, sizeof(float));
    cr_assert_not_null(want);
    size_t at = 0;
    for (size_t c = 0; c < CHANGING_CALLS; c++) {
        for (size_t i = 0; i < changing_counts[c]; i++)
            for (int r = 0; r < g.world_size; r++)
                want[at + i] += int_value(r, i + c);
        at += changing_counts[c];
    }
    expect_every_rank_holds(&g, want, total);
    free(want);
    ring_free(&g);
}

// ----------------------------------------------------------------------------
// broadcast and barrier

static void expect_broadcast_from(int world, int root, size_t count) {
    Ring g = {.world_size = world,
              .count = count,
              .timeout_s = 10,
              .root = root,
              .victim = -1,
              .body = broadcast_body};
    ring_run(&g);
    expect_every_rank_succeeded(&g);
    float* want = malloc((count + 1) * sizeof(float));
    cr_assert_not_null(want);
    for (size_t i = 0; i < count; i++)
        want[i] = int_value(root, i);
    char what[96];
    for (int r = 0; r < world; r++) {
        snprintf(what, sizeof what, "world %d, broadcast from rank %d: rank %d", world, root, r);
        expect_same_bits(buffer_of(&g, r), want, count, what);
    }
    free(want);
    ring_free(&g);
}

RING_TEST(broadcast_from_rank_0_gives_every_rank_the_roots_buffer) {
    for (int world = 1; world <= MAX_WORLD; world++) {
        expect_broadcast_from(world, 0, 1001);
        expect_broadcast_from(world, 0, 1);
    }
    expect_broadcast_from(3, 0, 1000000); // more than the sockets hold: the ring must pipeline
}

RING_TEST(broadcast_from_a_non_zero_root_gives_every_rank_the_roots_buffer) {
    for (int world = 2; world <= MAX_WORLD; world++) {
        expect_broadcast_from(world, world - 1, 1001);
        expect_broadcast_from(world, world / 2, 1001);
    }
    expect_broadcast_from(4, 2, 1000000);
}

#define LATE_RANK_DELAY_S 0.2

// The late rank arrives LATE_RANK_DELAY_S after the others; start and end frame the barrier.
static void barrier_body(RankCtx* r) {
    if (r->rank == r->sh->victim)
        usleep((useconds_t)(LATE_RANK_DELAY_S * 1e6));
    call_started(r);
    call_ended(r, comm_barrier(r->comm));
}

RING_TEST(barrier_lets_nobody_leave_before_the_last_rank_arrives) {
    const int worlds[] = {1, 2, 3, 5, 8};
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++) {
        int world = worlds[w];
        for (int late = 0; late<world; late += world> 1 ? world - 1 : 1) { // first and last
            Ring g = {.world_size = world, .timeout_s = 10, .victim = late, .body = barrier_body};
            ring_run(&g);
            expect_every_rank_succeeded(&g);
            double arrived = g.sh->report[late].start;
            for (int r = 0; r < world; r++)
                cr_assert_geq(g.sh->report[r].end, arrived,
                              "world %d: rank %d left the barrier %.6f s before rank %d arrived",
                              world, r, arrived - g.sh->report[r].end, late);
            ring_free(&g);
        }
    }
}

// ----------------------------------------------------------------------------
// the all-gather of one number per rank (the replica check's hashes)

static uint64_t hash_of_rank(int rank) { // every bit pattern, the top bits set
    return 0xC000000000000000ull | mix((uint64_t)rank + 77) | (rank == 0 ? ~0ull : 0);
}

static void gather_hashes_body(RankCtx* r) {
    call_started(r);
    call_ended(r, comm_allgather_u64(r->comm, "hashes", hash_of_rank(r->rank),
                                     r->sh->report[r->rank].hashes));
}

RING_TEST(allgather_u64_gives_every_rank_every_ranks_64_bit_number) {
    for (int world = 1; world <= MAX_WORLD; world++) {
        Ring g = {.world_size = world, .timeout_s = 10, .victim = -1, .body = gather_hashes_body};
        ring_run(&g);
        expect_every_rank_succeeded(&g);
        for (int r = 0; r < world; r++)
            for (int of = 0; of < world; of++)
                cr_assert_eq(g.sh->report[r].hashes[of], hash_of_rank(of),
                             "world %d: rank %d has 0x%016llx as rank %d's hash, want 0x%016llx",
                             world, r, (unsigned long long)g.sh->report[r].hashes[of], of,
                             (unsigned long long)hash_of_rank(of));
        ring_free(&g);
    }
}

// ----------------------------------------------------------------------------
// fingerprints: ranks that call different collectives fail at the first one, naming both

#define FINGERPRINT_STEPS 5
#define SKIPPED_STEP 2

// Steps 0..4 of epoch 0, one gradient all-reduce each; the victim skips step 2. The
// report's rc is the first failed step's index + 1 (0: none failed).
static void skipping_body(RankCtx* r) {
    call_started(r);
    int failed = 0;
    for (int step = 0; step < FINGERPRINT_STEPS && failed == 0; step++) {
        if (r->rank == r->sh->victim && step == SKIPPED_STEP)
            continue;
        fill_int_values(r, r->sh->count, 1.0f);
        if (comm_allreduce_mean(r->comm, r->buf, r->sh->count, COMM_CALL("gradients", 0, step)) !=
            0)
            failed = step + 1;
    }
    call_ended(r, failed);
}

RING_TEST(a_rank_that_skips_an_allreduce_makes_the_next_call_fail_naming_both_calls) {
    for (int world = 2; world <= 3; world++) {
        Ring g = {
            .world_size = world, .count = 100, .timeout_s = 5, .victim = 1, .body = skipping_body};
        ring_run(&g);
        // The victim's right neighbour receives its step-4 call where it expects step 3
        // (steps print from 1), and the victim, whose left neighbour is at step 3, fails too.
        int right = 2 % world;
        cr_assert_eq(g.sh->report[right].rc, SKIPPED_STEP + 1,
                     "world %d: rank %d failed at step %d, want %d:\n%s", world, right,
                     g.sh->report[right].rc, SKIPPED_STEP + 1, g.err[right]);
        cr_assert_eq(g.sh->report[1].rc, SKIPPED_STEP + 2,
                     "world %d: the rank that skipped failed at step %d, want %d:\n%s", world,
                     g.sh->report[1].rc, SKIPPED_STEP + 2, g.err[1]);
        char want[256];
        snprintf(want, sizeof want,
                 "rank 1 is at all-reduce (mean) \"gradients\" (epoch 1, step 4, 100 floats), "
                 "this rank at all-reduce (mean) \"gradients\" (epoch 1, step 3, 100 floats)");
        cr_assert_not_null(strstr(g.err[right], want), "world %d: rank %d does not say '%s':\n%s",
                           world, right, want, g.err[right]);
        cr_assert_not_null(strstr(g.err[1], "is at all-reduce (mean) \"gradients\" (epoch 1, "
                                            "step 3, 100 floats), this rank at all-reduce (mean) "
                                            "\"gradients\" (epoch 1, step 4"),
                           "world %d: the rank that skipped does not name both calls:\n%s", world,
                           g.err[1]);
        ring_free(&g);
    }
}

// Rank 0 all-reduces "train loss", the others "eval loss": the same size, not the same call.
static void misnamed_body(RankCtx* r) {
    fill_int_values(r, r->sh->count, 1.0f);
    call_started(r);
    call_ended(r, comm_allreduce_sum(r->comm, r->buf, r->sh->count,
                                     COMM_CALL(r->rank == 0 ? "train loss" : "eval loss", 4, -1)));
}

RING_TEST(collectives_with_other_names_fail_on_every_rank_that_meets_them) {
    Ring g = {.world_size = 2, .count = 1, .timeout_s = 5, .victim = -1, .body = misnamed_body};
    ring_run(&g);
    for (int r = 0; r < 2; r++) {
        cr_assert_eq(g.sh->report[r].rc, -1, "rank %d's call succeeded", r);
        cr_assert_not_null(strstr(g.err[r], r == 0 ? "\"eval loss\" (epoch 5, 1 float), this "
                                                     "rank at all-reduce (sum) \"train loss\""
                                                   : "\"train loss\" (epoch 5, 1 float), this "
                                                     "rank at all-reduce (sum) \"eval loss\""),
                           "rank %d does not name both calls:\n%s", r, g.err[r]);
    }
    ring_free(&g);
}

// A program's host collectives (as MPI's are), here made of the ring itself: their
// frames are not ours, so the communicator compares fingerprints in a collective.
static int host_sum(void* ring, float* buf, size_t count) {
    return comm_allreduce_sum(ring, buf, count, COMM_ONCE("host engine"));
}
static int host_broadcast(void* ring, float* buf, size_t count, int root) {
    return comm_broadcast(ring, buf, count, root, COMM_ONCE("host engine"));
}
static int host_barrier(void* ring) {
    return comm_barrier(ring);
}

// Two calls on a communicator of host collectives; the victim's second is another step.
static void host_body(RankCtx* r) {
    CommSettings s = {
        .rank = r->rank, .world_size = r->sh->world_size, .timeout_s = 5, .k = &kernels_cpu};
    HostCollectives ops = {"ring as host", host_sum, host_broadcast, host_barrier, r->comm};
    Communicator* host = NULL;
    call_started(r);
    int failed = comm_init_host(&host, s, ops) != 0;
    for (int step = 0; step < 2 && !failed; step++) {
        fill_int_values(r, r->sh->count, 1.0f);
        int as_step = r->rank == r->sh->victim && step == 1 ? 7 : step;
        failed =
            comm_allreduce_sum(host, r->buf, r->sh->count, COMM_CALL("gradients", 0, as_step)) != 0
                ? step + 1
                : 0;
    }
    comm_destroy(host);
    call_ended(r, failed);
}

Test(host_collectives, fingerprints_are_compared_before_the_first_call_only_without_debug) {
    transport = OVER_SOCKETS;
    Ring g = {.world_size = 3, .count = 10, .timeout_s = 5, .victim = 2, .body = host_body};
    ring_run(&g);
    // The first call's fingerprints agree; the second's differ, but only --debug compares
    // every call: without it, the engine runs the call (and the data is what it is).
    for (int r = 0; r < 3; r++)
        cr_assert_eq(g.sh->report[r].rc, 0, "rank %d failed at call %d:\n%s", r, g.sh->report[r].rc,
                     g.err[r]);
    ring_free(&g);
}

// As host_body, with --debug: every call's fingerprints are compared.
static void host_debug_body(RankCtx* r) {
    CommSettings s = {.rank = r->rank,
                      .world_size = r->sh->world_size,
                      .timeout_s = 5,
                      .debug = true,
                      .k = &kernels_cpu};
    HostCollectives ops = {"ring as host", host_sum, host_broadcast, host_barrier, r->comm};
    Communicator* host = NULL;
    call_started(r);
    int failed = comm_init_host(&host, s, ops) != 0;
    for (int step = 0; step < 2 && !failed; step++) {
        fill_int_values(r, r->sh->count, 1.0f);
        int as_step = r->rank == r->sh->victim && step == 1 ? 7 : step;
        if (comm_allreduce_sum(host, r->buf, r->sh->count, COMM_CALL("gradients", 0, as_step)))
            failed = step + 1;
    }
    comm_destroy(host);
    call_ended(r, failed);
}

Test(host_collectives, under_debug_a_call_that_differs_fails_on_every_rank_naming_it) {
    transport = OVER_SOCKETS;
    Ring g = {.world_size = 3, .count = 10, .timeout_s = 5, .victim = 2, .body = host_debug_body};
    ring_run(&g);
    for (int r = 0; r < 3; r++) {
        cr_assert_eq(g.sh->report[r].rc, 2, "rank %d: want a failure at call 2, got %d:\n%s", r,
                     g.sh->report[r].rc, g.err[r]);
        cr_assert_not_null(strstr(g.err[r], r == 2 ? "rank 0 is at all-reduce (sum) "
                                                   : "rank 2 is at all-reduce (sum) "
                                                     "\"gradients\" (epoch 1, step 8"),
                           "rank %d does not name the call that differs:\n%s", r, g.err[r]);
    }
    ring_free(&g);
}

// ----------------------------------------------------------------------------
// faults: a peer that dies makes every other rank fail fast; one that stalls, at the deadline

#define FAULT_TIMEOUT_S 5.0
#define WAIT_FOR_PEERS_S 10.0

// Waits (bounded) until flag is set by another process.
static void wait_for_flag(volatile int* flag) {
    double deadline = timer_seconds() + WAIT_FOR_PEERS_S;
    while (!__atomic_load_n(flag, __ATOMIC_SEQ_CST) && timer_seconds() < deadline)
        usleep(1000);
}

static void exits_before_calling_body(RankCtx* r) {
    if (r->rank == r->sh->victim)
        _exit(0); // a clean exit, without a word to the others
    allreduce_sum_body(r);
}

static void killed_before_calling_body(RankCtx* r) {
    if (r->rank == r->sh->victim)
        raise(SIGKILL);
    allreduce_sum_body(r);
}

// The victim enters the all-reduce first and is killed inside it (SIGALRM, whose default
// action ends the process); the others call once the test process has reaped it.
static void killed_inside_the_call_body(RankCtx* r) {
    if (r->rank == r->sh->victim) {
        struct itimerval t = {.it_value = {.tv_usec = 50000}};
        fill_int_values(r, r->sh->count, 1.0f);
        call_started(r);
        setitimer(ITIMER_REAL, &t, NULL);
        comm_allreduce_sum(r->comm, r->buf, r->sh->count,
                           COMM_ONCE("test")); // blocks: nobody else has called
        call_ended(r, 0);
        _exit(0);
    }
    wait_for_flag(&r->sh->reaped[r->sh->victim]);
    allreduce_sum_body(r);
}

// The others call first; once all are inside the all-reduce, the victim is killed.
static void killed_while_the_others_wait_body(RankCtx* r) {
    if (r->rank == r->sh->victim) {
        for (int o = 0; o < r->sh->world_size; o++)
            if (o != r->rank)
                wait_for_flag(&r->sh->report[o].called);
        usleep(50000);
        raise(SIGKILL);
    }
    allreduce_sum_body(r);
}

// Every rank but the victim: its call returned -1 in well under the timeout, and it exited 0.
static void expect_the_others_failed_fast(const Ring* g, const char* fault) {
    for (int r = 0; r < g->world_size; r++) {
        if (r == g->victim)
            continue;
        const RankReport* rep = &g->sh->report[r];
        char how[64];
        cr_assert(WIFEXITED(g->status[r]) && WEXITSTATUS(g->status[r]) == 0,
                  "%s, world %d: rank %d %s; its stderr:\n%s", fault, g->world_size, r,
                  describe_status(g->status[r], how, sizeof how), g->err[r]);
        cr_assert(rep->returned && rep->rc == -1,
                  "%s, world %d: rank %d's all-reduce returned %d, want -1", fault, g->world_size,
                  r, rep->rc);
        // Not a timing: a peer's socket closing wakes the others at once, while a
        // hang would last the whole timeout.
        double took = rep->end - rep->start;
        cr_assert_lt(took, g->timeout_s / 2,
                     "%s, world %d: rank %d's all-reduce took %.3f s to fail (timeout %.0f s)",
                     fault, g->world_size, r, took, g->timeout_s);
        cr_assert(strstr(g->err[r], "[Rank ") != NULL && strstr(g->err[r], "ring") != NULL,
                  "%s, world %d: rank %d failed without a message naming the ring step: '%s'",
                  fault, g->world_size, r, g->err[r]);
    }
    // The victim's right neighbour names it, as its left, and says the connection closed.
    int right = (g->victim + 1) % g->world_size;
    char left_name[32];
    snprintf(left_name, sizeof left_name, "ranks %d (left)", g->victim);
    cr_assert(strstr(g->err[right], left_name) != NULL &&
                  strstr(g->err[right], "connection closed") != NULL,
              "%s, world %d: rank %d's message does not name rank %d as a closed peer: '%s'", fault,
              g->world_size, right, g->victim, g->err[right]);
}

static void run_fault(RankBody body, const char* fault, size_t count, int world, int victim,
                      int want_signal) {
    Ring g = {.world_size = world,
              .count = count,
              .timeout_s = FAULT_TIMEOUT_S,
              .victim = victim,
              .body = body};
    ring_run(&g);
    char how[64];
    int st = g.status[victim];
    cr_assert(want_signal ? WIFSIGNALED(st) && WTERMSIG(st) == want_signal
                          : WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "%s, world %d: the victim, rank %d, %s", fault, world, victim,
              describe_status(st, how, sizeof how));
    cr_assert(!g.sh->report[victim].returned, "%s: the victim's all-reduce returned", fault);
    expect_the_others_failed_fast(&g, fault);
    ring_free(&g);
}

RING_TEST(allreduce_fails_fast_on_every_rank_when_a_peer_exits_before_calling) {
    const int worlds[] = {2, 3, 5, 8};
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++) {
        run_fault(exits_before_calling_body, "a peer exits", 1001, worlds[w], 1, 0);
        run_fault(exits_before_calling_body, "a peer exits", 1001, worlds[w], 0, 0);
    }
}

RING_TEST(allreduce_fails_fast_on_every_rank_when_a_peer_is_killed_before_calling) {
    const int worlds[] = {2, 3, 5, 8};
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++)
        run_fault(killed_before_calling_body, "a peer is killed", 1001, worlds[w], worlds[w] - 1,
                  SIGKILL);
}

RING_TEST(allreduce_fails_fast_when_a_peer_is_killed_inside_the_call) {
    // A million floats: the victim dies with a chunk half sent.
    run_fault(killed_inside_the_call_body, "a peer is killed in its all-reduce", 1000000, 2, 1,
              SIGALRM);
    run_fault(killed_inside_the_call_body, "a peer is killed in its all-reduce", 1000000, 4, 2,
              SIGALRM);
}

RING_TEST(allreduce_fails_fast_when_a_peer_is_killed_while_the_others_wait_in_it) {
    const int worlds[] = {2, 3, 5};
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++)
        run_fault(killed_while_the_others_wait_body, "a peer is killed while the others wait", 1001,
                  worlds[w], 1, SIGKILL);
    run_fault(killed_while_the_others_wait_body, "a peer is killed while the others wait", 1000000,
              4, 3, SIGKILL);
}

#define STALL_TIMEOUT_S 1.0

// After a barrier, the victim never calls: it waits until its left neighbour has gone.
static void stalls_body(RankCtx* r) {
    if (comm_barrier(r->comm) != 0)
        _exit(4);
    if (r->rank != r->sh->victim) {
        allreduce_sum_body(r);
        return;
    }
    char sink[4096];
    double deadline = timer_seconds() + WAIT_FOR_PEERS_S;
    struct pollfd p = {.fd = r->recv_fd, .events = POLLIN};
    while (timer_seconds() < deadline && poll(&p, 1, 100) >= 0) {
        ssize_t n = read(r->recv_fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
    }
    _exit(0);
}

RING_TEST(allreduce_returns_minus_1_at_its_deadline_when_a_peer_stalls) {
    const int worlds[] = {2, 3, 4};
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++) {
        Ring g = {.world_size = worlds[w],
                  .count = 1001,
                  .timeout_s = STALL_TIMEOUT_S,
                  .victim = 1,
                  .body = stalls_body};
        ring_run(&g);
        int timed_out = 0;
        for (int r = 0; r < g.world_size; r++) {
            char how[64];
            cr_assert(WIFEXITED(g.status[r]) && WEXITSTATUS(g.status[r]) == 0,
                      "world %d: rank %d %s; its stderr:\n%s", g.world_size, r,
                      describe_status(g.status[r], how, sizeof how), g.err[r]);
            if (r == g.victim)
                continue;
            const RankReport* rep = &g.sh->report[r];
            cr_assert(rep->returned && rep->rc == -1,
                      "world %d: rank %d's all-reduce returned %d with a stalled peer",
                      g.world_size, r, rep->rc);
            // The first failure anywhere is a deadline; ranks start within moments of
            // each other, so none fails much earlier - and none hangs.
            double took = rep->end - rep->start;
            cr_assert(took >= 0.75 * STALL_TIMEOUT_S && took < STALL_TIMEOUT_S + 3.0,
                      "world %d: rank %d's all-reduce failed after %.3f s, timeout %.1f s",
                      g.world_size, r, took, STALL_TIMEOUT_S);
            timed_out |= strstr(g.err[r], "timed out") != NULL;
        }
        cr_assert(timed_out, "world %d: no rank reported a timeout; rank 0's stderr: '%s'",
                  g.world_size, g.err[0]);
        ring_free(&g);
    }
}

// ----------------------------------------------------------------------------
// rings of sockets and channels both

Test(ring_mixed, allreduce_is_exact_when_links_alternate_between_sockets_and_channels) {
    transport = OVER_MIXED;
    ring_test_allreduce_of_an_odd_count_is_exact_on_every_rank();
    ring_test_allreduce_of_a_million_floats_is_exact_on_every_rank();
    ring_test_allreduce_is_bitwise_identical_on_every_rank_when_sums_round();
}

Test(ring_mixed, broadcast_gives_every_rank_the_roots_buffer_over_sockets_and_channels) {
    transport = OVER_MIXED;
    ring_test_broadcast_from_a_non_zero_root_gives_every_rank_the_roots_buffer();
}

Test(ring_mixed, allreduce_fails_fast_when_a_peer_dies_on_a_ring_of_sockets_and_channels) {
    transport = OVER_MIXED;
    ring_test_allreduce_fails_fast_when_a_peer_is_killed_inside_the_call();
    ring_test_allreduce_fails_fast_on_every_rank_when_a_peer_exits_before_calling();
}

Test(ring_mixed, allreduce_returns_minus_1_at_its_deadline_on_a_ring_of_sockets_and_channels) {
    transport = OVER_MIXED;
    ring_test_allreduce_returns_minus_1_at_its_deadline_when_a_peer_stalls();
}

// ----------------------------------------------------------------------------
// the pause of a polling wait (NCCL's waits use it)

Test(backoff, a_wait_yields_through_its_spin_then_sleeps_half_its_length_up_to_the_cap) {
    const double spin_s = 50e-6;
    const unsigned cap_us = 1000;
    for (double waited = 0; waited < spin_s; waited += 5e-6)
        cr_assert_eq(timer_backoff_us(waited, spin_s, cap_us), 0,
                     "after %.0f us of a 50 us spin: a sleep of %u us", waited * 1e6,
                     timer_backoff_us(waited, spin_s, cap_us));
    unsigned previous = 0;
    for (double waited = spin_s; waited < 0.01; waited *= 1.5) {
        unsigned us = timer_backoff_us(waited, spin_s, cap_us);
        cr_assert(us >= 1 && us <= cap_us, "after %.0f us: %u us, not in [1, %u]", waited * 1e6, us,
                  cap_us);
        cr_assert(us >= previous, "after %.0f us: %u us, shorter than the %u us before",
                  waited * 1e6, us, previous);
        cr_assert(us == cap_us || us <= waited * 1e6 / 2 + 1,
                  "after %.0f us: %u us, more than half the wait", waited * 1e6, us);
        previous = us;
    }
    cr_assert_eq(previous, cap_us, "a wait of 10 ms does not reach the %u us cap", cap_us);
}
