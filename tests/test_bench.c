/*
 * test_bench.c - tools/bench.sh and tools/bench_overlap.sh refuse what they cannot run,
 * in one line, before they run anything.
 *
 * Their runs are the benchmark itself (`make bench`, `make bench-04`, and `bench.sh
 * --quick` in CI), not a test; what a test can hold them to is their options: each bad
 * one ends the script with exit status 2 and one line on stderr that names the option,
 * and nothing on stdout. Run from the repository root, as `make test` does.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "support/proc.h"
#include "workers.h" // workers_cpu_count: the CPUs --bind counts, as nproc does

static void expect_refused(const char* script, const char* const* args, const char* named) {
    Proc p = proc_run(script, args, NULL);
    cr_assert_eq(p.status, 2, "%s %s: exit status %d, want 2; stderr:\n%s", script, args[0],
                 p.status, p.err.text);
    cr_assert_str_empty(p.out.text, "%s %s: stdout is not empty:\n%s", script, args[0],
                        p.out.text);
    cr_assert(strstr(p.err.text, named) != NULL &&
                  strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
              "%s %s: want one line naming '%s', got:\n%s", script, args[0], named, p.err.text);
    proc_free(&p);
}

Test(bench, bad_options_exit_2_with_one_line_naming_the_option, .fini = proc_end_leftovers) {
    char ranks[16]; // --bind: one rank more than there are CPUs to bind to
    snprintf(ranks, sizeof ranks, "%d", workers_cpu_count() + 1);
    const char* bench = "tools/bench.sh";
    expect_refused(bench, (const char*[]){"--repeats", "0", NULL}, "--repeats");
    expect_refused(bench, (const char*[]){"--repeats", NULL}, "--repeats");
    expect_refused(bench, (const char*[]){"--max-ranks", "x", NULL}, "--max-ranks");
    expect_refused(bench, (const char*[]){"--preset", "huge", NULL}, "--preset");
    expect_refused(bench, (const char*[]){"--bogus", NULL}, "--bogus");
    expect_refused(bench, (const char*[]){"--bind", "--max-ranks", ranks, NULL},
                   "--bind: --max-ranks");
    const char* overlap = "tools/bench_overlap.sh";
    expect_refused(overlap, (const char*[]){"--ranks", NULL}, "--ranks");
    expect_refused(overlap, (const char*[]){"--preset", "huge", NULL}, "--preset");
    expect_refused(overlap, (const char*[]){"--repeats", "0", NULL}, "--repeats");
    expect_refused(overlap, (const char*[]){"--bogus", NULL}, "--bogus");
}
