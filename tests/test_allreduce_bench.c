/*
 * test_allreduce_bench.c - build/allreduce_bench --show, run as a class runs it.
 *
 * --show prints every rank's buffer after each step of one real ring all-reduce. These
 * tests read that table back and hold it to the algorithm, simulated here on its own
 * terms: rank r starts with (i % 9 + 1) x 10^r at element i; in reduce-scatter step s
 * rank r receives chunk r - s - 1 (mod N) from its left and adds it to its own, in
 * all-gather step s it receives chunk r - s and copies it over its own, and sends the
 * chunk its right neighbour receives. So every printed value, every bracket (the chunk
 * just received) and every "a->b chunk c" of a title is known before the program runs.
 * Bad values of --count, --slow and --ranks are refused with one line. With --bind every
 * rank names the CPU it is pinned to, a different one each, and more ranks than the CPUs
 * this process may use are refused.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/bound.h"
#include "support/proc.h"
#include "workers.h" // workers_cpu_count: the CPUs allreduce_bench counts

#define PROGRAM build_program("allreduce_bench")
#define MAX_RANKS 7
#define MAX_COUNT 16
#define MAX_LINES 256

// ----------------------------------------------------------------------------
// the algorithm, as the test expects it

// Which ranks' shares each chunk of each rank holds: bit q for rank q.
typedef struct {
    int ranks, count;
    unsigned held[MAX_RANKS][MAX_RANKS]; // [rank][chunk]
    int received[MAX_RANKS];             // the chunk each rank received last; -1 at the start
    int sent[MAX_RANKS];
} Expected;

static void expect_start(Expected* e, int ranks, int count) {
    *e = (Expected){.ranks = ranks, .count = count};
    for (int r = 0; r < ranks; r++) {
        e->received[r] = e->sent[r] = -1;
        for (int c = 0; c < ranks; c++)
            e->held[r][c] = 1u << r;
    }
}

static int mod(int a, int n) {
    return ((a % n) + n) % n;
}

// One step of reduce-scatter (adding) or all-gather (copying): all ranks at once.
static void expect_step(Expected* e, int step, int adding) {
    Expected before = *e;
    int N = e->ranks;
    for (int r = 0; r < N; r++) {
        int c = adding ? mod(r - step - 1, N) : mod(r - step, N);
        unsigned from_left = before.held[mod(r - 1, N)][c];
        e->held[r][c] = adding ? before.held[r][c] | from_left : from_left;
        e->received[r] = c;
        e->sent[mod(r - 1, N)] = c; // what r receives, its left neighbour sent
    }
}

// Element i of a chunk that holds the shares of the ranks in mask.
static long value_of(unsigned mask, int i) {
    long sum = 0, place = 1;
    for (int q = 0; q < MAX_RANKS; q++, place *= 10)
        if (mask & (1u << q))
            sum += place;
    return (i % 9 + 1) * sum;
}

// How many floats chunk c has: the first count % N chunks one more than the others.
static int chunk_size(int count, int N, int c) {
    return count / N + (c < count % N);
}

// ----------------------------------------------------------------------------
// reading the table

// Checks the line of rank r against e: its chunks, their values and the bracket.
static void expect_rank_line(const char* line, const Expected* e, int r, const char* row) {
    char want[32];
    snprintf(want, sizeof want, "    rank %d ", r);
    cr_assert(strncmp(line, want, strlen(want)) == 0, "%s: want rank %d's line, got '%s'", row, r,
              line);
    const char* p = line + strlen(want);
    for (int c = 0, first = 0; c < e->ranks; first += chunk_size(e->count, e->ranks, c), c++) {
        size_t len = strcspn(p, "|");
        char cell[256];
        snprintf(cell, sizeof cell, "%.*s", (int)len, p);
        int bracketed = strchr(cell, '[') != NULL && strchr(cell, ']') != NULL;
        cr_assert_eq(bracketed, e->received[r] == c,
                     "%s, rank %d, chunk %d: brackets where the received chunk is %d: '%s'", row, r,
                     c, e->received[r], line);
        char* q = cell;
        for (int i = 0; i < chunk_size(e->count, e->ranks, c); i++) {
            q += strspn(q, " [");
            char* end = NULL;
            long got = strtol(q, &end, 10);
            long expected = value_of(e->held[r][c], first + i);
            cr_assert(end != q && got == expected,
                      "%s, rank %d, element %d: got '%s', want %ld (ranks 0x%x): '%s'", row, r,
                      first + i, q, expected, e->held[r][c], line);
            q = end;
        }
        cr_assert_eq(strspn(q, " []"), strlen(q), "%s, rank %d, chunk %d has more: '%s'", row, r, c,
                     line);
        p += len + (p[len] == '|');
    }
}

// The title of a step: "PHASE step S: 0->1 chunk C, ..." with e's sent chunks.
static void expect_title(const char* line, const Expected* e, const char* phase, int step) {
    char want[512];
    int n = snprintf(want, sizeof want, "%s step %d:", phase, step);
    for (int r = 0; r < e->ranks; r++)
        n += snprintf(want + n, sizeof want - n, "%s %d->%d chunk %d", r > 0 ? "," : "", r,
                      (r + 1) % e->ranks, e->sent[r]);
    cr_assert(strncmp(line, want, strlen(want)) == 0, "want the title '%s', got '%s'", want, line);
}

// Runs --show and holds every row of its table to the algorithm.
static void expect_show(int ranks, int count, const char* transport, const char* slow) {
    char ranks_text[16], count_text[16];
    snprintf(ranks_text, sizeof ranks_text, "%d", ranks);
    snprintf(count_text, sizeof count_text, "%d", count);
    Proc p = proc_run(PROGRAM,
                      (const char*[]){"--ranks", ranks_text, "--count", count_text, "--show",
                                      "--transport", transport, "--slow", slow, NULL},
                      NULL);
    cr_assert_eq(p.status, 0, "--ranks %d --count %d: exit status %d; stderr:\n%s", ranks, count,
                 p.status, p.err.text);
    char* lines[MAX_LINES];
    int n = split_lines(p.out.text, lines, MAX_LINES), at = 0;
    while (at < n && strcmp(lines[at], "start") != 0)
        at++;
    cr_assert_lt(at, n, "no 'start' row:\n%s", p.out.text);
    Expected e;
    expect_start(&e, ranks, count);
    for (int row = 0; row < 2 * ranks - 1; row++) {
        int adding = row <= ranks - 1, step = adding ? row - 1 : row - ranks;
        const char* phase = adding ? "reduce-scatter" : "all-gather";
        if (row > 0) {
            expect_step(&e, step, adding);
            while (at < n && lines[at][0] == '\0')
                at++;
            cr_assert_lt(at, n, "the table ends before %s step %d", phase, step);
            expect_title(lines[at], &e, phase, step);
        }
        cr_assert_leq(at + ranks, n - 1, "the table ends inside row %d", row);
        char name[64];
        if (row == 0)
            snprintf(name, sizeof name, "start");
        else
            snprintf(name, sizeof name, "%s step %d", phase, step);
        for (int r = 0; r < ranks; r++)
            expect_rank_line(lines[at + 1 + r], &e, r, name);
        at += 1 + ranks;
    }
    for (int r = 0; r < ranks; r++) // and so every rank ends with every rank's share
        for (int c = 0; c < ranks; c++)
            cr_assert_eq(e.held[r][c], (1u << ranks) - 1, "the simulation itself is wrong");
    while (at < n && lines[at][0] == '\0')
        at++;
    cr_assert(at < n && strncmp(lines[at], "every rank holds the sum", 24) == 0,
              "no verdict after the table: '%s'", at < n ? lines[at] : "");
    proc_free(&p);
}

// ----------------------------------------------------------------------------

Test(allreduce_bench, show_prints_3_ranks_of_6_floats_step_by_step_as_the_ring_must_hold_them,
     .fini = proc_end_leftovers) {
    expect_show(3, 6, "auto", "0");
}

Test(allreduce_bench, show_holds_for_uneven_chunks_empty_chunks_and_7_ranks_over_both_transports,
     .fini = proc_end_leftovers) {
    struct {
        int ranks, count;
    } cases[] = {{2, 3}, {4, 10}, {5, 3}, {7, 16}, {3, 1}};
    const char* transports[] = {"shm", "socket"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int t = 0; t < 2; t++)
            expect_show(cases[i].ranks, cases[i].count, transports[t], "0");
}

Test(allreduce_bench, show_with_slow_prints_the_same_table, .fini = proc_end_leftovers) {
    expect_show(3, 6, "auto", "20");
}

Test(allreduce_bench, bad_show_count_slow_or_ranks_exit_2_with_one_line_naming_the_flag,
     .fini = proc_end_leftovers) {
    struct {
        const char* args[6];
        const char* name;
    } cases[] = {
        {{"--show", "--count", "0"}, "--count must be an integer in [1, 16]"},
        {{"--show", "--count", "17"}, "--count"},
        {{"--show", "--count", "six"}, "--count"},
        {{"--show", "--slow", "-1"}, "--slow must be an integer in [0, 60000]"},
        {{"--show", "--slow", "1s"}, "--slow"},
        {{"--count", "6"}, "--count needs --show"},
        {{"--slow", "100"}, "--slow needs --show"},
        {{"--show", "--ranks", "1"}, "--ranks in [2, 7]"},
        {{"--show", "--ranks", "8"}, "--ranks in [2, 7]"},
        {{"--show", "--backend", "mpi"}, "--show needs --backend ring"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Proc p = proc_run(PROGRAM, cases[i].args, NULL);
        cr_assert_eq(p.status, 2, "%s: exit status %d, want 2:\n%s", cases[i].args[0], p.status,
                     p.err.text);
        cr_assert_str_empty(p.out.text, "stdout is not empty:\n%s", p.out.text);
        cr_assert(strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
                  "want one line on stderr, got:\n%s", p.err.text);
        cr_assert_not_null(strstr(p.err.text, cases[i].name), "stderr does not say '%s': %s",
                           cases[i].name, p.err.text);
        proc_free(&p);
    }
}

Test(allreduce_bench, bind_pins_every_rank_to_a_cpu_of_its_own, .fini = proc_end_leftovers) {
    if (workers_cpu_count() < 2)
        cr_skip_test("one CPU here: two ranks cannot have one each");
    Proc p = proc_run(
        PROGRAM, (const char*[]){"--bind", "--min-bytes", "1K", "--max-bytes", "1K", NULL}, NULL);
    cr_assert_eq(p.status, 0, "exit status %d:\n%s", p.status, p.err.text);
    expect_bound_to_distinct_cpus("allreduce_bench --bind", p.err.text, 0, 2);
    cr_assert_not_null(strstr(p.out.text, "        1024        256 "), "no 1 KiB row:\n%s",
                       p.out.text);
    cr_assert(strstr(p.out.text, "        0\n") != NULL, "the sum is wrong:\n%s", p.out.text);
    proc_free(&p);
}

Test(allreduce_bench, bind_refuses_more_ranks_than_cpus_mpirun_and_nccl_in_one_line,
     .fini = proc_end_leftovers) {
    char ranks[16];
    snprintf(ranks, sizeof ranks, "%d", workers_cpu_count() + 1);
    const char* const* cases[] = {(const char*[]){"--bind", "--ranks", ranks, NULL},
                                  (const char*[]){"--bind", "--backend", "mpi", NULL},
                                  (const char*[]){"--bind", "--backend", "nccl", NULL}};
    const char* said[] = {"workers need a CPU each", "mpirun binds the ranks", "compute on GPUs"};
    for (int i = 0; i < 3; i++) {
        Proc p = proc_run(PROGRAM, cases[i], NULL);
        cr_assert_eq(p.status, 2, "case %d: exit status %d:\n%s", i, p.status, p.err.text);
        cr_assert(strstr(p.err.text, said[i]) != NULL &&
                      strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
                  "case %d: want one line saying '%s', got:\n%s", i, said[i], p.err.text);
        proc_free(&p);
    }
}
