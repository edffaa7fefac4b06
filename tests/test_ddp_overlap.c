/*
 * test_ddp_overlap.c - lesson 04's program, run as a user runs it, against lesson 02's,
 * and hurt on purpose.
 *
 * Each test starts build/ddp_overlap (and build/multi_gpu) through tests/support/proc.h,
 * as tests/test_multi_gpu.c does: a process group of its own, output captured, killed
 * at PROC_DEADLINE_S.
 *
 * Covered: the buckets change the schedule, not the numbers: with 2 ranks lesson 04 is
 * lesson 02 bit for bit (each element is one sum of two either way), overlapping or not;
 * with 3 and 4 ranks within 1e-6 per epoch, and the replicas agree. --accumulate N with
 * batch B is lesson 02 with batch N*B within 1e-6, also where the shard does not split
 * into whole steps. The summary's lines. A worker killed while the buckets are in
 * flight ends the job fast, and a peer that stops answering trips --timeout; bad flags.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/losses.h"
#include "support/proc.h"

#define DDP_OVERLAP build_program("ddp_overlap")
#define MULTI_GPU build_program("multi_gpu")
#define EPOCHS "6"
#define EPOCH_COUNT 6
// Sums of 3 or 4 floats in another grouping: a few roundings of 2^-24 per step, which
// Adam carries on; 1e-6 relative over 6 epochs, as the issue that made the lesson asks.
#define REGROUPED_RTOL 1e-6
// A step summed from N micro-batches regroups each weight's N * B terms more than that:
// builds of three vector widths (SSE2, AVX2, AVX-512) of two versions of the CPU kernels
// gave 3e-7 to 1.1e-6 over 6 epochs, so 2e-6; a micro-batch lost, doubled or weighted
// wrong changes a step's gradient by a quarter or more.
#define ACCUMULATED_RTOL 2e-6
#define FAILURE_EXIT_S 5.0 // after a fault the parent must be gone within this

// Runs program with --device cpu and args (NULL-terminated), writing dir/losses.csv, and
// asserts a clean run; returns its stdout (malloc).
static char* run_into(const char* program, const char* dir, const char* const* args) {
    const char* all[PROC_MAX_ARGS] = {"--device", "cpu", "--epochs", EPOCHS, "--out", dir};
    int n = 6;
    for (int i = 0; args[i] != NULL; i++) {
        cr_assert_lt(n, PROC_MAX_ARGS - 1, "too many arguments");
        all[n++] = args[i];
    }
    all[n] = NULL;
    Proc p = proc_run(program, all, NULL);
    cr_assert_eq(p.status, 0, "%s: exit status %d; stderr:\n%s", program, p.status, p.err.text);
    cr_assert_str_empty(p.err.text, "%s: stderr is not empty:\n%s", program, p.err.text);
    cr_assert_not_null(strstr(p.out.text, "Replicas agree: yes"), "%s: replicas differ:\n%s",
                       program, p.out.text);
    char* out = strdup(p.out.text);
    proc_free(&p);
    return out;
}

// The "Replicas agree: ..." line of out (into line).
static void replica_line(const char* out, char* line, size_t len) {
    const char* at = strstr(out, "Replicas agree: ");
    cr_assert_not_null(at, "no replica line:\n%s", out);
    snprintf(line, len, "%.*s", (int)strcspn(at, "\n"), at);
}

static char* dir_named(const char* name) {
    static char dirs[8][160];
    static int next;
    char* d = dirs[next++ % 8];
    snprintf(d, sizeof dirs[0], "%s/%s", temp_dir, name);
    return d;
}

// ----------------------------------------------------------------------------
// a) the same numbers as lesson 02

Test(ddp_overlap, two_ranks_are_lesson_02_bit_for_bit_overlapping_or_not, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char* d02 = dir_named("02");
    char* d04 = dir_named("04");
    char* d04_no = dir_named("04_no_overlap");
    char* out02 = run_into(MULTI_GPU, d02, (const char*[]){"--gpus", "2", NULL});
    char* out04 = run_into(DDP_OVERLAP, d04, (const char*[]){"--gpus", "2", NULL});
    char* out04_no =
        run_into(DDP_OVERLAP, d04_no, (const char*[]){"--gpus", "2", "--no-overlap", NULL});
    expect_same_losses("lesson 04 against lesson 02, 2 ranks", d04, d02, EPOCH_COUNT, 0.0);
    expect_same_losses("lesson 04 --no-overlap against lesson 02, 2 ranks", d04_no, d02,
                       EPOCH_COUNT, 0.0);
    char a[128], b[128], c[128];
    replica_line(out02, a, sizeof a);
    replica_line(out04, b, sizeof b);
    replica_line(out04_no, c, sizeof c);
    cr_assert_str_eq(b, a, "lesson 04's final weights differ from lesson 02's: '%s', '%s'", b, a);
    cr_assert_str_eq(c, a, "lesson 04 --no-overlap's final weights differ: '%s', '%s'", c, a);
    free(out02);
    free(out04);
    free(out04_no);
}

static void expect_regrouped_sums_agree(const char* ranks) {
    char* d02 = dir_named("02");
    char* d04 = dir_named("04");
    free(run_into(MULTI_GPU, d02, (const char*[]){"--gpus", ranks, NULL}));
    free(run_into(DDP_OVERLAP, d04, (const char*[]){"--gpus", ranks, NULL}));
    char what[64];
    snprintf(what, sizeof what, "lesson 04 against lesson 02, %s ranks", ranks);
    expect_same_losses(what, d04, d02, EPOCH_COUNT, REGROUPED_RTOL);
}

Test(ddp_overlap, three_and_four_ranks_agree_with_lesson_02_within_1e_6, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_regrouped_sums_agree("3");
    expect_regrouped_sums_agree("4");
}

// Every epoch's eval loss of dir_a within rtol of dir_b's.
static void expect_same_eval_losses(const char* what, const char* dir_a, const char* dir_b,
                                    double rtol) {
    double a[EPOCH_COUNT + 1][2], b[EPOCH_COUNT + 1][2];
    cr_assert_eq(losses_read(dir_a, a, EPOCH_COUNT + 1), EPOCH_COUNT, "%s: %s", what, dir_a);
    cr_assert_eq(losses_read(dir_b, b, EPOCH_COUNT + 1), EPOCH_COUNT, "%s: %s", what, dir_b);
    for (int e = 0; e < EPOCH_COUNT; e++) {
        double rel = fabs(a[e][1] - b[e][1]) / fabs(b[e][1]);
        cr_assert(rel <= rtol,
                  "%s: epoch %d's eval loss %.9g against %.9g: relative difference "
                  "%.3g > %.0e",
                  what, e + 1, a[e][1], b[e][1], rel, rtol);
    }
}

// --accumulate N with batch B against lesson 02 with batch N*B: the same samples per step.
// The train loss is the mean over the batches, micro-batches here: the two agree only
// when every step has N micro-batches (uneven, only the eval losses are compared).
static void expect_accumulation_is_one_big_batch(const char* accumulate, const char* micro,
                                                 const char* big, bool even) {
    char* d02 = dir_named("02");
    char* d04 = dir_named("04");
    free(run_into(MULTI_GPU, d02, (const char*[]){"--gpus", "2", "--batch-size", big, NULL}));
    char* out = run_into(
        DDP_OVERLAP, d04,
        (const char*[]){"--gpus", "2", "--batch-size", micro, "--accumulate", accumulate, NULL});
    char want[96];
    snprintf(want, sizeof want, "Accumulate: %s micro-batches of %s per step", accumulate, micro);
    cr_assert_not_null(strstr(out, want), "no '%s' line:\n%s", want, out);
    char what[96];
    snprintf(what, sizeof what, "--accumulate %s x batch %s against batch %s", accumulate, micro,
             big);
    if (even)
        expect_same_losses(what, d04, d02, EPOCH_COUNT, ACCUMULATED_RTOL);
    else
        expect_same_eval_losses(what, d04, d02, ACCUMULATED_RTOL);
    free(out);
}

Test(ddp_overlap, accumulating_micro_batches_trains_as_one_batch_of_them_all, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_accumulation_is_one_big_batch("4", "8", "32", true);
    // 800 samples per rank: 100 micro-batches of 8, 34 steps of 24, the last one of 8.
    expect_accumulation_is_one_big_batch("3", "8", "24", false);
}

Test(ddp_overlap, the_summary_names_the_buckets_and_what_the_all_reduce_cost, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char* out = run_into(DDP_OVERLAP, dir_named("04"), (const char*[]){"--gpus", "2", NULL});
    cr_assert_not_null(strstr(out, "  Buckets: 3 (cap 1 KiB), last layer first: 1028 16384 "
                                   "512 bytes\n"),
                       "no (or another) bucket line:\n%s", out);
    cr_assert_not_null(strstr(out, "  Overlap: yes\n"), "no overlap line:\n%s", out);
    const char* at = strstr(out, "Per step: ");
    cr_assert_not_null(at, "no per-step line:\n%s", out);
    double compute, exposed, allreduce;
    int hidden;
    cr_assert_eq(sscanf(at,
                        "Per step: compute %lf us, exposed all-reduce %lf us of %lf us: %d%% "
                        "hidden",
                        &compute, &exposed, &allreduce, &hidden),
                 4, "unreadable per-step line:\n%s", at);
    cr_assert(compute > 0 && exposed >= 0 && allreduce > 0 && hidden >= 0 && hidden <= 100,
              "implausible per-step line: %.*s", (int)strcspn(at, "\n"), at);
    free(out);
}

// ----------------------------------------------------------------------------
// b) faults while buckets are in flight

// Starts 2 ranks at hidden size 512, where the buckets' all-reduces take a good share of
// every step, and returns once rank 0 trains; pids[0..1] are the workers.
static void start_long_run(Proc* p, pid_t* pids, const char* timeout) {
    proc_start(p, DDP_OVERLAP,
               (const char*[]){"--device", "cpu", "--gpus", "2", "--epochs", "1000000",
                               "--hidden-size", "512", "--timeout", timeout, NULL},
               NULL);
    cr_assert(proc_wait_for(p, PROC_STDOUT, "Epoch [", 1, now_seconds() + PROC_DEADLINE_S),
              "no epoch line came; stdout:\n%s\nstderr:\n%s", p->out.text, p->err.text);
    proc_wait_for_children(p, pids, 2);
}

Test(ddp_overlap, a_worker_killed_with_buckets_in_flight_ends_the_job_fast,
     .fini = proc_end_leftovers) {
    Proc p;
    pid_t workers[2];
    start_long_run(&p, workers, "60");
    // Stopped first, so that rank 0 runs on into a collective that waits for rank 1 (nearly
    // every one is a bucket's), then killed there: the deadline (60 s) must not be what ends it.
    cr_assert_eq(kill(workers[1], SIGSTOP), 0, "stop rank 1: %s", strerror(errno));
    usleep(300 * 1000);
    double killed_at = now_seconds();
    cr_assert_eq(kill(workers[1], SIGKILL), 0, "kill rank 1: %s", strerror(errno));
    proc_finish(&p, killed_at + PROC_DEADLINE_S);
    double took = p.exited_at - killed_at;
    cr_assert(!p.timed_out && took < FAILURE_EXIT_S,
              "the parent exited %.2f s after rank 1 was killed; stderr:\n%s", took, p.err.text);
    cr_assert(WIFEXITED(p.wstatus) && WEXITSTATUS(p.wstatus) != 0,
              "the parent did not exit with a failure (wait status 0x%x)", p.wstatus);
    cr_assert_not_null(strstr(p.err.text, "[Rank 1] killed by signal 9"),
                       "stderr does not say that rank 1 was killed:\n%s", p.err.text);
    expect_pids_gone(workers, 2, 0.0, "after rank 1 was killed");
    proc_free(&p);
}

Test(ddp_overlap, a_peer_that_stops_answering_trips_the_timeout, .fini = proc_end_leftovers) {
    Proc p;
    pid_t workers[2];
    start_long_run(&p, workers, "2");
    double stopped_at = now_seconds();
    cr_assert_eq(kill(workers[1], SIGSTOP), 0, "stop rank 1: %s", strerror(errno));
    proc_finish(&p, stopped_at + PROC_DEADLINE_S);
    // Rank 0's collective ends at its 2 s deadline; then rank 0 exits and the parent ends
    // the stopped rank 1 at once: SIGTERM alone would wait for it until the grace period's
    // SIGKILL (WORKERS_GRACE_SECONDS, 2 s), so 1.5 s tells the two apart.
    double took = p.exited_at - stopped_at;
    cr_assert(!p.timed_out && took < 2.0 + 1.5,
              "the parent exited %.2f s after rank 1 stopped (--timeout 2); stderr:\n%s", took,
              p.err.text);
    cr_assert(WIFEXITED(p.wstatus) && WEXITSTATUS(p.wstatus) != 0,
              "the parent did not exit with a failure (wait status 0x%x)", p.wstatus);
    cr_assert_not_null(strstr(p.err.text, "[Rank 0] exited with status 1: "),
                       "stderr does not say that rank 0 failed:\n%s", p.err.text);
    cr_assert_not_null(strstr(p.err.text, "timed out (see --timeout)"),
                       "stderr does not name the deadline:\n%s", p.err.text);
    expect_pids_gone(workers, 2, 0.0, "after rank 0 timed out");
    proc_free(&p);
}

// ----------------------------------------------------------------------------
// c) flags

Test(ddp_overlap, bad_lesson_04_flags_exit_2_with_one_line_naming_the_flag,
     .fini = proc_end_leftovers) {
    const char* cases[][3] = {
        {"--bucket-cap-kb", "0", "--bucket-cap-kb"},
        {"--bucket-cap-kb", "1k", "--bucket-cap-kb"},
        {"--accumulate", "0", "--accumulate"},
        {"--accumulate", "", "--accumulate"},
        {"--no-overlap", "yes", "yes"},
        // buckets are announced between the backward pass's kernels: no graph, no fusion
        {"--kernels", "graph", "--kernels graph: lesson 04 announces gradient buckets"},
        {"--kernels", "fused", "--kernels fused: lesson 04 announces gradient buckets"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Proc p = proc_run(DDP_OVERLAP, (const char*[]){cases[i][0], cases[i][1], NULL}, NULL);
        cr_assert_eq(p.status, 2, "%s '%s': exit status %d, want 2; stderr:\n%s", cases[i][0],
                     cases[i][1], p.status, p.err.text);
        cr_assert(strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
                  "%s '%s': want one line on stderr, got:\n%s", cases[i][0], cases[i][1],
                  p.err.text);
        cr_assert_not_null(strstr(p.err.text, cases[i][2]), "%s '%s': stderr does not name %s:\n%s",
                           cases[i][0], cases[i][1], cases[i][2], p.err.text);
        cr_assert_str_empty(p.out.text, "%s '%s': stdout is not empty:\n%s", cases[i][0],
                            cases[i][1], p.out.text);
        proc_free(&p);
    }
}

Test(ddp_overlap, help_names_the_lessons_own_flags, .fini = proc_end_leftovers) {
    Proc p = proc_run(DDP_OVERLAP, (const char*[]){"--help", NULL}, NULL);
    cr_assert_eq(p.status, 0, "--help: exit status %d", p.status);
    const char* flags[] = {"--bucket-cap-kb N", "--no-overlap", "--accumulate N", "--gpus N",
                           "--timeout SECONDS"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        cr_assert_not_null(strstr(p.out.text, flags[i]), "--help does not name %s:\n%s", flags[i],
                           p.out.text);
    proc_free(&p);
}
