/*
 * test_trace.c - --trace FILE and --phases on every lesson (common/trace.h).
 *
 * Each test runs a lesson briefly on the CPU with --trace into the test's temporary
 * directory, then tests/check_trace.py reads the file as JSON and checks that every span
 * is closed and nested on its track, that every rank is there, and that each all-reduce
 * of an epoch has a span on every rank, the ranks' spans overlapping in time: lesson 01,
 * lesson 02 with 1 and 2 ranks, lesson 04 with 2 ranks (its buckets on the communication
 * thread's track), lesson 03 with 2 nodes on 127.0.0.1 (a file per node, and one joined
 * by tools/trace_join.py). check_trace.py itself must refuse a trace whose ranks are not
 * all there. A run interrupted by SIGINT (lessons 01 and 02) still writes its trace, the
 * spans it was in marked unfinished. A FILE that cannot be written (a directory, a
 * directory that does not exist) is refused at the start with one line, before any
 * training; --phases prints its table with every phase; tools/trace_plot.sh draws a PNG
 * of a trace (where gnuplot is installed) and refuses a bad STEPS. In this process: a
 * phase counts a span only when nothing but an epoch encloses it, and never the
 * communication thread's.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/proc.h"
#include "trace.h"

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

// check_trace.py on files (NULL-terminated, at most 2) for ranks, with one more flag
// (--comm-track, --interrupted) or NULL; its exit status.
static int check_trace(int ranks, const char* expect, const char* flag, const char* const* files,
                       char* output, size_t output_len) {
    char count[16];
    snprintf(count, sizeof count, "%d", ranks);
    const char* args[10] = {"--ranks", count, "--expect", expect};
    int n = 4;
    if (flag != NULL)
        args[n++] = flag;
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
static void expect_good_trace(int ranks, const char* expect, const char* flag,
                              const char* const* files) {
    char output[4096];
    cr_assert_eq(check_trace(ranks, expect, flag, files, output, sizeof output), 0, "%s", output);
}

Test(trace, lesson_01_writes_one_rank_with_every_phase, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    run_lesson("hello_gpu", (const char*[]){"--trace", path, NULL});
    expect_good_trace(1, STEP_SPANS, NULL, (const char*[]){path, NULL});
}

Test(trace, lesson_02_with_one_rank, .init = temp_dir_make, .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    run_lesson("multi_gpu", (const char*[]){"--gpus", "1", "--trace", path, NULL});
    expect_good_trace(1, STEP_SPANS ",gradients", NULL, (const char*[]){path, NULL});
}

Test(trace, lesson_02_with_two_ranks_overlaps_their_all_reduces, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128], part[160];
    trace_path(path, sizeof path);
    run_lesson("multi_gpu", (const char*[]){"--gpus", "2", "--trace", path, NULL});
    expect_good_trace(2, STEP_SPANS ",gradients,train loss,eval loss", NULL,
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
        check_trace(3, "forward", NULL, (const char*[]){path, NULL}, output, sizeof output), 0,
        "a trace of 2 ranks passed as one of 3:\n%s", output);
    cr_assert(strstr(output, "rank 2 has no track") != NULL, "%s", output);
}

Test(trace, lesson_04_puts_the_buckets_on_the_communication_thread, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    // Wide layers: many buckets and a long backward pass, and 100 steps a rank, so that the
    // communication thread gets some buckets however loaded the machine (the training
    // thread runs those still queued when it comes to wait; 10 steps were once too few).
    run_lesson("ddp_overlap", (const char*[]){"--gpus", "2", "--hidden-size", "256", "--data-size",
                                              "4000", "--trace", path, NULL});
    expect_good_trace(2, STEP_SPANS ",bucket 0,wait for buckets", "--comm-track",
                      (const char*[]){path, NULL});
}

// program with args (NULL-terminated), interrupted by SIGINT to its whole group (as Ctrl-C
// in a terminal) once its second epoch is done, must end by that signal, its trace at
// path written.
static void interrupt_lesson(const char* program, const char* const* args, const char* path) {
    Proc p;
    proc_start(&p, build_program(program), args, NULL);
    cr_assert(proc_wait_for(&p, PROC_STDOUT, "Epoch [2/", 1, now_seconds() + PROC_DEADLINE_S),
              "%s did not train:\n%s", program, p.err.text);
    kill(-p.pid, SIGINT);
    proc_finish(&p, now_seconds() + PROC_DEADLINE_S);
    cr_assert_eq(p.status, 128 + SIGINT, "%s ended with %d:\n%s", program, p.status, p.err.text);
    cr_assert_eq(access(path, F_OK), 0, "%s wrote no %s:\n%s", program, path, p.err.text);
    proc_free(&p);
}

Test(trace, an_interrupted_run_writes_what_it_recorded, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char path[128];
    trace_path(path, sizeof path);
    interrupt_lesson(
        "hello_gpu",
        (const char*[]){"--device", "cpu", "--epochs", "100000", "--trace", path, NULL}, path);
    expect_good_trace(1, STEP_SPANS, "--interrupted", (const char*[]){path, NULL});
    interrupt_lesson("multi_gpu",
                     (const char*[]){"--device", "cpu", "--epochs", "100000", "--gpus", "2",
                                     "--trace", path, NULL},
                     path);
    expect_good_trace(2, STEP_SPANS ",gradients", "--interrupted", (const char*[]){path, NULL});
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
    int port = port_for_test(380);
    Proc nodes[2];
    for (int i = 0; i < 2; i++)
        start_node(&nodes[i], i, port, path);
    for (int i = 0; i < 2; i++) {
        proc_finish(&nodes[i], now_seconds() + PROC_DEADLINE_S);
        cr_assert_eq(nodes[i].status, 0, "node %d exited with %d:\n%s", i, nodes[i].status,
                     nodes[i].err.text);
    }
    // One machine: the two files share its clock, so the all-reduces can be compared, and
    // tools/trace_join.py makes one file of them.
    expect_good_trace(2, STEP_SPANS ",rendezvous,fork,ring connection,gradients", NULL,
                      (const char*[]){path, node1, NULL});
    char joined[160];
    snprintf(joined, sizeof joined, "%s/joined.json", temp_dir);
    Proc j = proc_run("tools/trace_join.py", (const char*[]){joined, path, node1, NULL}, NULL);
    cr_assert_eq(j.status, 0, "trace_join.py exited with %d:\n%s", j.status, j.err.text);
    proc_free(&j);
    expect_good_trace(2, STEP_SPANS ",rendezvous,fork", NULL, (const char*[]){joined, NULL});
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

// Whether the phase table has a row for phase.
static bool has_row(const char* table, const char* phase) {
    char row[32];
    snprintf(row, sizeof row, "\n  %s ", phase);
    return strstr(table, row) != NULL;
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
    for (size_t i = 0; i < sizeof phases / sizeof *phases; i++)
        cr_assert(has_row(table, phases[i]), "no row for %s:\n%s", phases[i], table);
    proc_free(&p);
}

Test(trace, phases_leave_out_a_phase_that_took_no_time, .fini = proc_end_leftovers) {
    Proc p = proc_run(
        build_program("hello_gpu"),
        (const char*[]){"--device", "cpu", "--epochs", "2", "--data-size", "400", "--phases", NULL},
        NULL);
    cr_assert_eq(p.status, 0, "%s", p.err.text);
    const char* table = strstr(p.out.text, "Where the time goes");
    cr_assert_not_null(table, "no table:\n%s", p.out.text);
    const char* phases[] = {"forward", "backward", "optimizer", "eval", "other"};
    for (size_t i = 0; i < sizeof phases / sizeof *phases; i++)
        cr_assert(has_row(table, phases[i]), "no row for %s:\n%s", phases[i], table);
    // One rank has no all-reduce, and the CPU runs a step kernel by kernel.
    const char* empty[] = {"all-reduce", "graph/fused"};
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++)
        cr_assert(!has_row(table, empty[i]), "a row for %s, which took no time:\n%s", empty[i],
                  table);
    proc_free(&p);
}

Test(trace, trace_plot_draws_a_png_of_a_few_steps, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0)
        cr_skip_test("no gnuplot (./setup.sh installs it)");
    char path[128], png[160];
    trace_path(path, sizeof path);
    snprintf(png, sizeof png, "%s/trace.png", temp_dir);
    run_lesson("ddp_overlap", (const char*[]){"--gpus", "2", "--trace", path, NULL});
    Proc p = proc_run("tools/trace_plot.sh", (const char*[]){path, png, "3", NULL}, NULL);
    cr_assert_eq(p.status, 0, "trace_plot.sh exited with %d:\n%s", p.status, p.err.text);
    proc_free(&p);
    size_t len = 0;
    char* bytes = read_file(png, &len);
    cr_assert(len > 8 && memcmp(bytes, "\x89PNG", 4) == 0, "%s is not a PNG", png);
    free(bytes);
    p = proc_run("tools/trace_plot.sh", (const char*[]){path, png, "0", NULL}, NULL);
    cr_assert_eq(p.status, 2, "STEPS 0 was taken:\n%s", p.err.text);
    proc_free(&p);
}

// ----------------------------------------------------------------------------
// the phases' rule, in this process

// A span of kind around nothing.
static void span(TraceKind kind) {
    trace_begin(kind);
    trace_end(0);
}

static void* optimizer_on_the_comm_thread(void* arg) {
    (void)arg;
    trace_thread_is_comm();
    span(TRACE_OPTIMIZER);
    return NULL;
}

Test(trace, a_phase_counts_a_span_only_when_nothing_but_an_epoch_encloses_it) {
    cr_assert_eq(trace_start(NULL, TRACE_ALONE, 0, 0, false), 0);
    trace_begin_call(TRACE_EPOCH, "epoch", 0, 0, -1);
    span(TRACE_OPTIMIZER); // counts
    span(TRACE_OPTIMIZER); // counts
    trace_begin(TRACE_EVAL);
    span(TRACE_OPTIMIZER); // eval's: does not count as a step
    trace_end(0);
    trace_end(0);
    trace_begin_named(TRACE_COLLECTIVE, "barrier");
    span(TRACE_OPTIMIZER); // inside a collective: does not count
    trace_end(0);
    span(TRACE_OPTIMIZER); // outside any epoch: counts
    pthread_t comm;
    cr_assert_eq(pthread_create(&comm, NULL, optimizer_on_the_comm_thread, NULL), 0);
    pthread_join(comm, NULL); // the communication thread's spans count in no phase
    float row[TRACE_PHASE_ROW];
    trace_phase_row(row, 10.0);
    cr_assert_eq(row[TRACE_PHASES], 3.0f, "%g optimizer steps counted, not 3", row[TRACE_PHASES]);
    float sum = 0.0f;
    for (int p = 0; p < TRACE_PHASES; p++) {
        cr_assert_geq(row[p], 0.0f, "phase %d: %g seconds", p, row[p]);
        sum += row[p];
    }
    cr_assert_float_eq(sum, 10.0f, 1e-3f, "the phases add up to %g of 10 seconds", sum);
    trace_stop();
}

// A step that one launch does whole (--kernels graph or fused in lesson 01) is a step and
// graph/fused's; the gradients' launch (an all-reduce and the update follow) only the latter.
Test(trace, a_step_of_one_launch_counts_as_a_step_and_its_time_as_graph_fused) {
    cr_assert_eq(trace_start(NULL, TRACE_ALONE, 0, 0, false), 0);
    const TraceKind kinds[] = {TRACE_FAST_STEP, TRACE_FAST_STEP, TRACE_FAST_GRADIENTS,
                               TRACE_OPTIMIZER};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        trace_begin(kinds[i]);
        usleep(2000);
        trace_end(0);
    }
    float row[TRACE_PHASE_ROW];
    trace_phase_row(row, 1.0);
    cr_assert_eq(row[TRACE_PHASES], 3.0f, "%g steps counted, not 3", row[TRACE_PHASES]);
    cr_assert_geq(row[PHASE_FAST], 6e-3f, "graph/fused holds %g s of three 2 ms spans",
                  row[PHASE_FAST]);
    cr_assert_geq(row[PHASE_OPTIMIZER], 2e-3f, "optimizer holds %g s", row[PHASE_OPTIMIZER]);
    cr_assert(row[PHASE_FORWARD] == 0.0f && row[PHASE_BACKWARD] == 0.0f,
              "forward %g s, backward %g s: a launch's time went to them", row[PHASE_FORWARD],
              row[PHASE_BACKWARD]);
    trace_stop();
}
