/*
 * test_trace.c - --trace FILE and --phases on every lesson (common/trace.h).
 *
 * Each test runs a lesson briefly on the CPU with --trace into the test's temporary
 * directory, then tests/check_trace.py reads the file as JSON and checks that every span
 * is closed and nested on its track, that every rank is there, and that each all-reduce
 * of an epoch has a span on every rank, the ranks' spans overlapping in time: lesson 01,
 * lesson 02 with 1 and 2 ranks, lesson 04 with 2 ranks (its buckets on the communication
 * thread's track), lesson 03 with 2 nodes on 127.0.0.1 (a file per node). check_trace.py
 * itself must refuse a trace whose ranks are not all there. A FILE that cannot be written
 * (a directory, a directory that does not exist) is refused at the start with one line,
 * before any training; --phases prints its table with every phase.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "support/proc.h"

#define CHECK_TRACE "tests/check_trace.py"
#define STEP_SPANS "forward,loss,backward,optimizer,eval,epoch"

// The trace file of a test, in its temporary directory.
static void trace_path(char* out, size_t len) {
    snprintf(out, len, "%s/trace.json", temp_dir);
}

// Runs program with args (NULL-terminated, at most 20) and --device cpu --epochs 2
// --data-size 400; it must succeed.
static void run_lesson(const char* program, const char* const* args) {
    const char* all[PROC_MAX_ARGS + 1] = {"--device", "cpu", "--epochs", "2", "--data-size", "400"};
    int n = 6;
    for (int i = 0; args[i] != NULL; i++)
        all[n++] = args[i];
    all[n] = NULL;
    Proc p = proc_run(build_program(program), all, NULL);
    cr_assert_eq(p.status, 0, "%s exited with %d:\n%s", program, p.status, p.err.text);
    cr_assert(strstr(p.out.text, "Trace: ") != NULL, "%s did not say where its trace went:\n%s",
              program, p.out.text);
    proc_free(&p);
}

// check_trace.py on files (NULL-terminated, at most 2) for ranks; its exit status.
static int check_trace(int ranks, const char* expect, bool comm_track, const char* const* files,
                       char* output, size_t output_len) {
    char count[16];
    snprintf(count, sizeof count, "%d", ranks);
    const char* args[10] = {"--ranks", count, "--expect", expect};
    int n = 4;
    if (comm_track)
        args[n++] = "--comm-track";
    for (int i = 0; files[i] != NULL; i++)
        args[n++] = files[i];
    args[n] = NULL;
    Proc p = proc_run(CHECK_TRACE, args, NULL);
    snprintf(output, output_len, "%s%s", p.out.text, p.err.text);
    int status = p.status;
    proc_free(&p);
    return status;
}

// check_trace.py must pass files.
static void expect_good_trace(int ranks, const char* expect, bool comm_track,
                              const char* const* files) {
    char output[4096];
    cr_assert_eq(check_trace(ranks, expect, comm_track, files, output, sizeof output), 0, "%s",
                 output);
}

Test(trace, lesson_01_writes_one_rank_with_every_phase, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    run_lesson("hello_gpu", (const char*[]){"--trace", path, NULL});
    expect_good_trace(1, STEP_SPANS, false, (const char*[]){path, NULL});
}

Test(trace, lesson_02_with_one_rank, .init = temp_dir_make, .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    run_lesson("multi_gpu", (const char*[]){"--gpus", "1", "--trace", path, NULL});
    expect_good_trace(1, STEP_SPANS ",gradients", false, (const char*[]){path, NULL});
}

Test(trace, lesson_02_with_two_ranks_overlaps_their_all_reduces, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128], part[160];
    trace_path(path, sizeof path);
    run_lesson("multi_gpu", (const char*[]){"--gpus", "2", "--trace", path, NULL});
    expect_good_trace(2, STEP_SPANS ",gradients,train loss,eval loss", false,
                      (const char*[]){path, NULL});
    snprintf(part, sizeof part, "%s.rank1", path);
    cr_assert_eq(access(part, F_OK), -1, "the merged part %s was left behind", part);
}

Test(trace, the_check_refuses_a_trace_without_every_rank, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128], output[4096];
    trace_path(path, sizeof path);
    run_lesson("multi_gpu", (const char*[]){"--gpus", "2", "--trace", path, NULL});
    cr_assert_neq(
        check_trace(3, "forward", false, (const char*[]){path, NULL}, output, sizeof output), 0,
        "a trace of 2 ranks passed as one of 3:\n%s", output);
    cr_assert(strstr(output, "rank 2 has no track") != NULL, "%s", output);
}

Test(trace, lesson_04_puts_the_buckets_on_the_communication_thread, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    run_lesson("ddp_overlap", (const char*[]){"--gpus", "2", "--trace", path, NULL});
    expect_good_trace(2, STEP_SPANS ",bucket 0,wait for buckets", true,
                      (const char*[]){path, NULL});
}

// Starts lesson 03's node (of 2, 1 worker each) on 127.0.0.1:port, tracing to path.
static void start_node(Proc* p, int node, int port, const char* path) {
    char rank[8], port_text[16];
    snprintf(rank, sizeof rank, "%d", node);
    snprintf(port_text, sizeof port_text, "%d", port);
    const char* args[] = {"--nnodes",
                          "2",
                          "--node-rank",
                          rank,
                          "--master-addr",
                          "127.0.0.1",
                          "--master-port",
                          port_text,
                          "--nproc-per-node",
                          "1",
                          "--epochs",
                          "2",
                          "--data-size",
                          "400",
                          "--device",
                          "cpu",
                          "--trace",
                          path,
                          NULL};
    proc_start(p, build_program("multi_node"), args,
               &(ProcOptions){.name = node == 0 ? "node 0" : "node 1",
                              .env = (const char*[]){"DDP_TOKEN=tok-test-trace", NULL},
                              .unset_env = (const char*[]){"MASTER_ADDR", "MASTER_PORT", "NNODES",
                                                           "NODE_RANK", NULL}});
}

Test(trace, lesson_03_writes_a_file_per_node, .init = temp_dir_make, .fini = proc_end_leftovers) {
    if (access(build_program("multi_node"), X_OK) != 0)
        cr_skip_test("no %s: a build without libsodium leaves lesson 03 out",
                     build_program("multi_node"));
    char path[128], node1[160];
    trace_path(path, sizeof path);
    snprintf(node1, sizeof node1, "%s.node1", path);
    int port = port_for_test(400);
    Proc nodes[2];
    for (int i = 0; i < 2; i++)
        start_node(&nodes[i], i, port, path);
    for (int i = 0; i < 2; i++) {
        proc_finish(&nodes[i], now_seconds() + PROC_DEADLINE_S);
        cr_assert_eq(nodes[i].status, 0, "node %d exited with %d:\n%s", i, nodes[i].status,
                     nodes[i].err.text);
    }
    // One machine: the two files share its clock, so the all-reduces can be compared.
    expect_good_trace(2, STEP_SPANS ",rendezvous,fork,ring connection,gradients", false,
                      (const char*[]){path, node1, NULL});
    for (int i = 0; i < 2; i++)
        proc_free(&nodes[i]);
}

// program with --trace at bad must exit 2 at once with one line naming --trace.
static void expect_refused(const char* program, const char* bad) {
    Proc p =
        proc_run(build_program(program),
                 (const char*[]){"--device", "cpu", "--epochs", "1", "--trace", bad, NULL}, NULL);
    cr_assert_eq(p.status, 2, "%s --trace %s exited with %d:\n%s", program, bad, p.status,
                 p.err.text);
    cr_assert(strncmp(p.err.text, "error: --trace ", 15) == 0 &&
                  strchr(p.err.text, '\n') == p.err.text + strlen(p.err.text) - 1,
              "not one line naming --trace:\n%s", p.err.text);
    cr_assert(strstr(p.out.text, "Epoch [") == NULL, "%s trained first:\n%s", program, p.out.text);
    proc_free(&p);
}

Test(trace, a_file_that_cannot_be_written_is_refused_at_the_start, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/dir/trace.json", temp_dir);
    const char* programs[] = {"hello_gpu", "multi_gpu", "ddp_overlap"};
    for (size_t i = 0; i < sizeof programs / sizeof *programs; i++) {
        expect_refused(programs[i], temp_dir);
        expect_refused(programs[i], missing);
    }
}

Test(trace, phases_prints_every_phase_of_both_ranks, .fini = proc_end_leftovers) {
    Proc p = proc_run(build_program("multi_gpu"),
                      (const char*[]){"--device", "cpu", "--epochs", "2", "--data-size", "400",
                                      "--gpus", "2", "--phases", NULL},
                      NULL);
    cr_assert_eq(p.status, 0, "%s", p.err.text);
    const char* table = strstr(p.out.text, "Where the time goes");
    cr_assert_not_null(table, "no table:\n%s", p.out.text);
    cr_assert(strstr(table, "over 2 ranks") != NULL, "%s", table);
    const char* phases[] = {"forward", "backward", "all-reduce", "optimizer", "eval", "other"};
    for (size_t i = 0; i < sizeof phases / sizeof *phases; i++) {
        char row[32];
        snprintf(row, sizeof row, "\n  %s ", phases[i]);
        cr_assert(strstr(table, row) != NULL, "no row for %s:\n%s", phases[i], table);
    }
    proc_free(&p);
}
