/*
 * test_bench_plot.c - tools/bench_plot.sh draws a benchmark run's pictures from its files.
 *
 * Each test writes the files of a small run as tools/bench.sh leaves them (the CSV with
 * its header, the loss curves, an allreduce_bench table) into its temporary directory
 * and runs the script on them: the pictures must be PNGs, the series of the scaling plot
 * named in words (the lesson, the backend, the nodes), in the CSV's order, with min-max
 * bars around every median, and a machine without gnuplot gets one line and status 0.
 * Run from the repository root, as `make test` does.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "support/proc.h"

#define SCRIPT "tools/bench_plot.sh"

// The rows of a run: lesson 01, the ring on 1 to 3 ranks, lesson 04, lesson 03 and torch.
static const char* const CSV =
    "# tools/bench.sh --quick (preset default, 3 runs after a warm-up)\n"
    "# machine: test\n"
    "name,impl,device,backend,nodes,ranks,scaling,data_size,median_s,min_s,max_s,allreduce_s,"
    "final_eval_loss,samples_per_s,speedup,efficiency,command\n"
    "c-1-cpu,c,cpu,none,1,1,strong,800,0.0010,0.0009,0.0012,0,0.03,640000,1.00,1.00,\"x\"\n"
    "c-ring-1-cpu,c,cpu,ring,1,1,strong,800,0.0010,0.0009,0.0011,0,0.03,640000,1.00,1.00,\"x\"\n"
    "c-ring-2-cpu,c,cpu,ring,1,2,strong,800,0.0008,0.0007,0.0010,0,0.03,800000,1.25,0.62,\"x\"\n"
    "c-ring-3-cpu,c,cpu,ring,1,3,strong,800,0.0009,0.0008,0.0012,0,0.03,710000,1.11,0.37,\"x\"\n"
    "c-buckets-2-cpu,c,cpu,buckets,1,2,strong,800,0.0012,0.0011,0.0013,0,0.03,530000,0.83,"
    "0.42,\"x\"\n"
    "c-2nodes-cpu,c,cpu,ring,2,2,strong,800,0.0011,0.0010,0.0015,0,0.03,580000,0.91,0.45,"
    "\"x\"\n"
    "torch-1-cpu,torch,cpu,gloo,1,1,strong,800,0.030,0.028,0.035,0,0.03,21000,1.00,1.00,\"x\"\n";

static const char* const ALLREDUCE =
    "# all-reduce of floats (sum), backend ring/shm, 2 ranks; time: the slowest rank's mean\n"
    "     size(B)      count   time(us)  algbw(GB/s)  busbw(GB/s)   #wrong\n"
    "        1024        256       8.99        0.114        0.114        0\n"
    "       16384       4096       2.63        6.225        6.225        0\n"
    "       65536      16384       7.25        9.044        9.044        0\n";

// Writes the files of a run into temp_dir; base gets their common prefix.
static void write_run(char* base, size_t len) {
    char path[512], curves[256];
    snprintf(base, len, "%s/bench-1", temp_dir);
    snprintf(path, sizeof path, "%s.csv", base);
    write_file(path, CSV, 0644);
    snprintf(path, sizeof path, "%s-allreduce-ring.txt", base);
    write_file(path, ALLREDUCE, 0644);
    snprintf(curves, sizeof curves, "%s-curves", base);
    cr_assert_eq(mkdir(curves, 0755), 0);
    const char* names[] = {"c-1-cpu", "c-ring-2-cpu", "torch-1-cpu"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s.csv", curves, names[i]);
        write_file(path, "epoch,train_loss,eval_loss\n1,0.1,0.09\n2,0.05,0.04\n3,0.02,0.015\n",
                   0644);
    }
}

static int is_png(const char* path) {
    size_t len = 0;
    char* data = access(path, F_OK) == 0 ? read_file(path, &len) : NULL;
    int ok = data != NULL && len > 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0;
    free(data);
    return ok;
}

static int have_gnuplot(void) {
    return system("command -v gnuplot >/dev/null 2>&1") == 0;
}

Test(bench_plot, draws_four_pngs_with_series_named_in_words_and_min_max_bars, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    if (!have_gnuplot())
        cr_skip_test("gnuplot is not installed");
    char base[128], csv[160], path[256];
    write_run(base, sizeof base);
    snprintf(csv, sizeof csv, "%s.csv", base);
    Proc p = proc_run(SCRIPT, (const char*[]){csv, NULL}, NULL);
    cr_assert_eq(p.status, 0, "exit status %d; stderr:\n%s", p.status, p.err.text);
    cr_assert_str_empty(p.err.text, "gnuplot complained:\n%s", p.err.text);
    const char* pictures[] = {"scaling", "loss", "allreduce", "allreduce-latency"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s-%s.png", base, pictures[i]);
        cr_assert(is_png(path), "%s is missing or not a PNG", path);
    }
    snprintf(path, sizeof path, "%s-scaling.dat", base);
    char* dat = read_file(path, NULL);
    const char* series[] = {
        "\"C, one process (lesson 01)\"\n1 ", "\"C, ring, 1 node (lesson 02)\"\n1 ",
        "\"C, ring, buckets overlapped (lesson 04)\"\n2 ",
        "\"C, ring, 2 nodes on one machine (lesson 03)\"\n2 ", "\"PyTorch DDP, gloo\"\n1 "};
    const char* at = dat;
    for (int i = 0; i < 5; i++) {
        const char* found = strstr(at, series[i]);
        cr_assert_not_null(found, "series %d (%s) is missing or out of order:\n%s", i, series[i],
                           dat);
        at = found + 1;
    }
    cr_assert_null(strstr(dat, "c-ring"), "a legend is a row's name:\n%s", dat);
    // The ring's three points: ranks, median, min, max, speedup and its range, bars around.
    const char* ring = strstr(dat, "(lesson 02)\"\n") + strlen("(lesson 02)\"\n");
    for (int ranks = 1; ranks <= 3; ranks++) {
        double r, t, lo, hi, s, s_lo, s_hi;
        int n = 0;
        cr_assert_eq(
            sscanf(ring, "%lf %lf %lf %lf %lf %lf %lf%n", &r, &t, &lo, &hi, &s, &s_lo, &s_hi, &n),
            7, "the ring's row for %d ranks: %.60s", ranks, ring);
        cr_assert(r == ranks && lo <= t && t <= hi && s_lo <= s && s <= s_hi && s_lo < s_hi,
                  "the ring's row for %d ranks has no bars around its median: %.60s", ranks, ring);
        ring += n + 1;
    }
    free(dat);
    proc_free(&p);
}

Test(bench_plot, without_gnuplot_says_so_in_one_line_and_exits_0, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    // A PATH of what the script needs besides gnuplot.
    char base[128], csv[160], bin[128], link[256], path_env[160], names[512];
    write_run(base, sizeof base);
    snprintf(csv, sizeof csv, "%s.csv", base);
    snprintf(bin, sizeof bin, "%s/bin", temp_dir);
    cr_assert_eq(mkdir(bin, 0755), 0);
    const char* tools[] = {"/bin/bash", "/usr/bin/awk", "/bin/sed", "/bin/grep"};
    for (int i = 0; i < 4; i++) {
        snprintf(link, sizeof link, "%s/%s", bin, strrchr(tools[i], '/') + 1);
        cr_assert_eq(symlink(tools[i], link), 0, "symlink %s", tools[i]);
    }
    snprintf(path_env, sizeof path_env, "PATH=%s", bin);
    Proc p = proc_run(SCRIPT, (const char*[]){csv, NULL},
                      &(ProcOptions){.env = (const char*[]){path_env, NULL}});
    cr_assert_eq(p.status, 0, "exit status %d; stderr:\n%s", p.status, p.err.text);
    cr_assert(strstr(p.err.text, "gnuplot not found") != NULL &&
                  strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
              "want one line about gnuplot, got:\n%s", p.err.text);
    snprintf(names, sizeof names, "%s-scaling.png", base);
    cr_assert_neq(access(names, F_OK), 0, "a picture without gnuplot: %s", names);
    proc_free(&p);
}

Test(bench_plot, a_missing_csv_exits_2_with_its_usage) {
    Proc p = proc_run(SCRIPT, (const char*[]){"/nonexistent/bench.csv", NULL}, NULL);
    cr_assert_eq(p.status, 2, "exit status %d", p.status);
    cr_assert_not_null(strstr(p.err.text, "usage: tools/bench_plot.sh"), "%s", p.err.text);
    proc_free(&p);
}
