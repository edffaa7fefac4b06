/*
 * test_bench_epoch.c - tools/bench_epoch.sh: the median of a program's own epoch times,
 * and with COPIES=N of N copies of it run at once (make bench-02's last line).
 *
 * The program is a shell script that each test writes into its temporary directory: it
 * prints an "Average time per epoch" line as the lessons do. Its copies prove that they
 * run at once without timing anything: each takes a numbered slot (mkdir is atomic),
 * then waits until every slot is taken, so copies run one after the other would end at
 * their wait's limit and fail. Run from the repository root, as `make test` does.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "support/proc.h"

#define SCRIPT "tools/bench_epoch.sh"

// A program for the script: copy k of a run (its slot) takes 0.00k seconds per epoch, and
// prints a gradient all-reduce line too, and a note on stderr; with FAIL_SLOT=k copy k
// fails instead, saying so.
static const char* const PROGRAM =
    "#!/bin/bash\n"
    "dir=$(dirname \"$0\")/slots-$RUN_ID\n"
    "mkdir -p \"$dir\"\n"
    "for k in 1 2 3 4 5 6 7 8 9; do mkdir \"$dir/$k\" 2>/dev/null && break; done\n"
    "for ((w = 0; w < 100; w++)); do\n"
    "    [ $(ls \"$dir\" | wc -l) -ge \"$WANT\" ] && break\n"
    "    sleep 0.1\n"
    "done\n"
    "[ $(ls \"$dir\" | wc -l) -ge \"$WANT\" ] || { echo 'no other copies' >&2; exit 1; }\n"
    "echo \"copy $k: a note on stderr\" >&2\n"
    "[ \"$k\" != \"${FAIL_SLOT:-}\" ] || { echo \"copy $k fails\" >&2; exit 1; }\n"
    "echo \"Average time per epoch: 0.00$k seconds\"\n"
    "echo \"Gradient all-reduce: 0.000$k seconds per epoch (10.0% of the time)\"\n";

// Writes the program into temp_dir; program gets its path.
static void write_program(char* program, size_t len) {
    snprintf(program, len, "%s/program.sh", temp_dir);
    write_file(program, PROGRAM, 0755);
}

// Runs the script on the program with env (NULL-terminated "KEY=value"s).
static Proc run(const char* program, const char* const env[]) {
    return proc_run(SCRIPT, (const char*[]){program, "--epochs", "3", NULL},
                    &(ProcOptions){.env = env});
}

Test(bench_epoch, copies_run_at_once_and_every_copy_counts_in_the_median, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char program[256];
    write_program(program, sizeof program);
    Proc p = run(program, (const char*[]){"COPIES=3", "REPEATS=1", "WANT=3", "RUN_ID=a", NULL});
    cr_assert_eq(p.status, 0, "exit status %d; stderr:\n%s", p.status, p.err.text);
    // The copies took 1, 2 and 3 ms: the median is the middle one, the range all three.
    cr_assert_not_null(strstr(p.out.text, "--epochs 3 (3 copies at once)\n"), "%s", p.out.text);
    cr_assert_not_null(strstr(p.out.text, "median: 2.000 ms per epoch  (min: 1.000 ms  max: "
                                          "3.000 ms)  all-reduce: median 0.200 ms per epoch"),
                       "%s", p.out.text);
    cr_assert_null(strstr(p.err.text, "a note on stderr"), "a good run's stderr was shown:\n%s",
                   p.err.text);
    proc_free(&p);
}

Test(bench_epoch, one_copy_that_fails_fails_the_run, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char program[256];
    write_program(program, sizeof program);
    Proc p = run(program, (const char*[]){"COPIES=2", "REPEATS=1", "WANT=2", "RUN_ID=b",
                                          "FAIL_SLOT=2", NULL});
    cr_assert_eq(p.status, 1, "exit status %d; stdout:\n%s", p.status, p.out.text);
    cr_assert(strstr(p.err.text, "copy 2 fails") != NULL && strstr(p.err.text, "run 1 failed"),
              "want the failed copy's stderr and the run named:\n%s", p.err.text);
    proc_free(&p);
}

Test(bench_epoch, a_bad_copies_value_exits_2_in_one_line, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char program[256];
    write_program(program, sizeof program);
    const char* const bad[] = {"COPIES=0", "COPIES=x", "COPIES=100", "COPIES=2 3"};
    for (int i = 0; i < 4; i++) {
        Proc p = run(program, (const char*[]){bad[i], "WANT=1", "RUN_ID=c", NULL});
        cr_assert_eq(p.status, 2, "%s: exit status %d", bad[i], p.status);
        cr_assert(strstr(p.err.text, "COPIES must be an integer in [1, 99]") != NULL &&
                      strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
                  "%s: want one line, got:\n%s", bad[i], p.err.text);
        proc_free(&p);
    }
}
