/*
 * test_multi_node.c - lesson 03's node agents, several "nodes" on one machine.
 *
 * Each test starts build/multi_node agents (one per node, as start_multi_node.sh
 * does on a cluster) from the repository root, as `make test` does, with
 * --master-addr 127.0.0.1 and a port of its own (Criterion runs tests in
 * parallel). Every agent runs in a process group of its own with its stdout and
 * stderr captured (tests/support/proc.h); an agent still going at its deadline is killed with its
 * group, a test that fails midway kills everything it started, and every test
 * checks that no process of an agent's group is left.
 *
 * Covered: jobs of 2 and 3 nodes with 1 or 2 workers each train exactly like
 * lesson 02 with the same world size; start order does not matter; and the
 * faults of principle 4: a killed worker (and, with --max-restarts, the restart
 * that makes up for it), no master, a wrong token, a node rank
 * taken twice, other settings, a port in use, garbage on the master's port,
 * and bad flags.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "support/bound.h"
#include "support/losses.h"
#include "support/proc.h"
#include "workers.h" // workers_cpu_count: the CPUs --bind counts

#define MULTI_NODE build_program("multi_node")
#define MULTI_GPU build_program("multi_gpu")
#define FAILURE_EXIT_S 10.0 // after a fault every node must be gone within this
#define GONE_WAIT_S 3.0     // how long an agent's group may take to vanish once it exited

// Every test has its own ports (Criterion runs tests in parallel): port_for_test with an
// offset of its own, all below the ephemeral range the ring's listeners come from.

// ----------------------------------------------------------------------------
// starting nodes

// Unset for every program: the torchrun variables would change the defaults (and a
// NCCL_SOCKET_IFNAME of the caller's what the agents give NCCL).
static const char* const TORCHRUN_VARS[] = {
    "MASTER_ADDR", "MASTER_PORT", "NNODES",    "NODE_RANK",          "WORLD_SIZE",
    "RANK",        "LOCAL_RANK",  "DDP_TOKEN", "NCCL_SOCKET_IFNAME", NULL};

// Starts program with args in a clean environment plus env ("KEY=value"..., may be NULL).
static void start_clean(Proc* p, const char* name, const char* program, const char* const* args,
                        const char* const* env) {
    proc_start(p, program, args,
               &(ProcOptions){.name = name, .env = env, .unset_env = TORCHRUN_VARS});
}

typedef struct {
    int nnodes, node_rank, port;
    int nproc;             // --nproc-per-node
    int epochs;            // 0: 3
    int data_size;         // 0: 400
    int rdzv_timeout;      // 0: 30
    const char* out;       // --out DIR, or NULL
    const char* extra[10]; // more flags, NULL-terminated
    const char* env[4];    // "KEY=value", NULL-terminated
    int no_token;          // start without the job's token (else DDP_TOKEN=TOKEN, unless
                           // env or extra give one)
} Node;

// The token of every job of these tests, unless a test gives another.
#define TOKEN "tok-test-multi-node"

// Whether the node is given a token of its own, in env or as --token-file.
static int has_own_token(const Node* n) {
    for (int i = 0; n->env[i] != NULL; i++)
        if (strncmp(n->env[i], "DDP_TOKEN=", 10) == 0)
            return 1;
    for (int i = 0; n->extra[i] != NULL; i++)
        if (strcmp(n->extra[i], "--token-file") == 0)
            return 1;
    return 0;
}

static void start_node(Proc* p, const Node* n) {
    char text[6][16];
    snprintf(text[0], 16, "%d", n->nnodes);
    snprintf(text[1], 16, "%d", n->node_rank);
    snprintf(text[2], 16, "%d", n->port);
    snprintf(text[3], 16, "%d", n->nproc > 0 ? n->nproc : 1);
    snprintf(text[4], 16, "%d", n->epochs > 0 ? n->epochs : 3);
    snprintf(text[5], 16, "%d", n->data_size > 0 ? n->data_size : 400);
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", n->rdzv_timeout > 0 ? n->rdzv_timeout : 30);
    const char* args[PROC_MAX_ARGS + 1] = {
        "--nnodes",      text[0], "--node-rank",      text[1], "--master-addr",  "127.0.0.1",
        "--master-port", text[2], "--nproc-per-node", text[3], "--epochs",       text[4],
        "--data-size",   text[5], "--device",         "cpu",   "--rdzv-timeout", timeout};
    int k = 18;
    if (n->out != NULL) {
        args[k++] = "--out";
        args[k++] = n->out;
    }
    for (int i = 0; n->extra[i] != NULL; i++)
        args[k++] = n->extra[i];
    args[k] = NULL;
    const char* env[6] = {NULL};
    int e = 0;
    for (; n->env[e] != NULL; e++)
        env[e] = n->env[e];
    if (!n->no_token && !has_own_token(n))
        env[e++] = "DDP_TOKEN=" TOKEN;
    char name[32];
    snprintf(name, sizeof name, "node %d", n->node_rank);
    start_clean(p, name, MULTI_NODE, args, env);
}

// Waits until the master listens: it says so (the loopback warning) before anything else.
static void wait_until_listening(Proc* master) {
    cr_assert(proc_wait_for(master, PROC_STDERR, "the master listens on 127.0.0.1", 1,
                            now_seconds() + 20.0),
              "the master did not start listening; stderr:\n%s", master->err.text);
}

// Runs p to its end; asserts it exited non-zero, and that its stderr holds every text.
static void expect_refused(Proc* p, const char* const* texts) {
    proc_finish(p, now_seconds() + PROC_DEADLINE_S);
    proc_expect_ended(p);
    cr_assert_neq(p->status, 0, "%s was not refused: exit status 0; stderr:\n%s", p->name,
                  p->err.text);
    const char* from = p->err.text;
    for (int i = 0; texts[i] != NULL; i++) {
        const char* at = strstr(from, texts[i]);
        cr_assert_not_null(at, "%s: stderr does not say '%s' (after what came before):\n%s",
                           p->name, texts[i], p->err.text);
        from = at + strlen(texts[i]);
    }
    proc_expect_group_gone(p, GONE_WAIT_S);
}

// Runs every node to its end and expects each to exit 0 with nothing left behind.
static void expect_job_completes(Proc* nodes, int n) {
    for (int i = 0; i < n; i++) {
        proc_finish(&nodes[i], nodes[i].started_at + PROC_DEADLINE_S);
        proc_expect_ended(&nodes[i]);
    }
    for (int i = 0; i < n; i++) {
        cr_assert_eq(nodes[i].status, 0, "%s: exit status %d; stderr:\n%s", nodes[i].name,
                     nodes[i].status, nodes[i].err.text);
        proc_expect_group_gone(&nodes[i], GONE_WAIT_S);
    }
    cr_assert_not_null(strstr(nodes[0].out.text, "Replicas agree: yes ("),
                       "the master did not print that the replicas agree:\n%s", nodes[0].out.text);
}

// ----------------------------------------------------------------------------
// reading the output

static int count_of(const char* text, const char* what) {
    int n = 0;
    for (const char* at = strstr(text, what); at != NULL; at = strstr(at + 1, what))
        n++;
    return n;
}

static int count_lines(const char* text) {
    int n = 0;
    for (const char* p = text; *p; p++)
        n += *p == '\n';
    return n;
}

// The stderr line that starts with prefix, copied into line ("" if none).
static void line_starting(const char* text, const char* prefix, char* line, size_t len) {
    line[0] = '\0';
    for (const char* at = text; at != NULL && *at != '\0';) {
        const char* nl = strchr(at, '\n');
        size_t n = nl != NULL ? (size_t)(nl - at) : strlen(at);
        if (strncmp(at, prefix, strlen(prefix)) == 0) {
            snprintf(line, len, "%.*s", (int)n, at);
            return;
        }
        at = nl != NULL ? nl + 1 : NULL;
    }
}

// The eval losses of the "Epoch [e/E] - Train Loss: x, Eval Loss: y" lines; how many.
static int eval_losses(const char* out, double* losses, int max) {
    int n = 0;
    for (const char* line = out; line != NULL && *line != '\0' && n < max;) {
        int e, epochs;
        double train;
        if (sscanf(line, "Epoch [%d/%d] - Train Loss: %lf, Eval Loss: %lf", &e, &epochs, &train,
                   &losses[n]) == 4)
            n++;
        line = strchr(line, '\n');
        line = line != NULL ? line + 1 : NULL;
    }
    return n;
}

// ----------------------------------------------------------------------------
// 1) jobs of several nodes train like lesson 02 with the same world size

#define JOB_EPOCHS 3
// losses.csv has 9 significant digits, which give back the float exactly: the ring over
// TCP and over socketpairs do the same sums in the same order, so the losses are equal.
#define EQUAL_RTOL 1e-6

// The output of a finished job: rank r lives on node r / nproc as local rank r % nproc,
// node 0 alone prints the banner, the epochs and the verdict, and the loss goes down.
static void expect_job_output(Proc* nodes, int nnodes, int nproc) {
    int world = nnodes * nproc;
    char want[128];
    const char* out0 = nodes[0].out.text;
    snprintf(want, sizeof want, "  World size: %d\n", world);
    cr_assert_not_null(strstr(out0, want), "the banner does not say '%s':\n%s", want, out0);
    snprintf(want, sizeof want, "  Nodes: %d\n", nnodes);
    cr_assert_not_null(strstr(out0, want), "the banner does not say '%s':\n%s", want, out0);
    snprintf(want, sizeof want, "Replicas agree: yes (%d ranks", world);
    for (int n = 0; n < nnodes; n++)
        cr_assert_eq(count_of(nodes[n].out.text, want), n == 0, "%s prints '%s' %d times:\n%s",
                     nodes[n].name, want, count_of(nodes[n].out.text, want), nodes[n].out.text);
    for (int r = 0; r < world; r++) {
        snprintf(want, sizeof want, "[Rank %d] Process initialized on ", r);
        for (int n = 0; n < nnodes; n++)
            cr_assert_eq(count_of(nodes[n].out.text, want), n == r / nproc,
                         "rank %d should start once, on node %d; %s printed:\n%s", r, r / nproc,
                         nodes[n].name, nodes[n].out.text);
        snprintf(want, sizeof want, "local_rank: %d, world_size: %d,", r % nproc, world);
        const char* line = strstr(nodes[r / nproc].out.text, "[Rank ");
        while (line != NULL && atoi(line + 6) != r)
            line = strstr(line + 1, "[Rank ");
        cr_assert(line != NULL && strstr(line, want) != NULL &&
                      strstr(line, want) < strchr(line, '\n'),
                  "rank %d's init line does not say '%s':\n%s", r, want, nodes[r / nproc].out.text);
    }
    double eval[JOB_EPOCHS + 1];
    cr_assert_eq(eval_losses(out0, eval, JOB_EPOCHS + 1), JOB_EPOCHS,
                 "want %d epoch lines from node 0:\n%s", JOB_EPOCHS, out0);
    for (int n = 1; n < nnodes; n++)
        cr_assert_null(strstr(nodes[n].out.text, "Epoch ["), "%s prints epochs:\n%s", nodes[n].name,
                       nodes[n].out.text);
    cr_assert_lt(eval[JOB_EPOCHS - 1], eval[0], "the eval loss went from %.6f to %.6f", eval[0],
                 eval[JOB_EPOCHS - 1]);
}

// build/multi_gpu with the same world size and settings writes the same losses.csv.
static void expect_losses_of_multi_gpu(const char* node_dir, int world) {
    char gpu_dir[128], ranks[16];
    snprintf(gpu_dir, sizeof gpu_dir, "%s/multi_gpu", temp_dir);
    snprintf(ranks, sizeof ranks, "%d", world);
    Proc g;
    start_clean(&g, "multi_gpu", MULTI_GPU,
                (const char*[]){"--device", "cpu", "--gpus", ranks, "--epochs", "3", "--data-size",
                                "400", "--out", gpu_dir, NULL},
                NULL);
    proc_finish(&g, now_seconds() + PROC_DEADLINE_S);
    proc_expect_ended(&g);
    cr_assert_eq(g.status, 0, "multi_gpu: exit status %d; stderr:\n%s", g.status, g.err.text);
    char what[64];
    snprintf(what, sizeof what, "%d ranks: multi_node against multi_gpu", world);
    expect_same_losses(what, node_dir, gpu_dir, JOB_EPOCHS, EQUAL_RTOL);
    proc_free(&g);
}

// Starts nnodes agents of nproc workers (node `first` first, the rest after delay_s),
// runs them to the end and checks the job against lesson 02.
static void expect_a_job_like_multi_gpu(int nnodes, int nproc, int port, int first,
                                        double delay_s) {
    char out_dir[128];
    snprintf(out_dir, sizeof out_dir, "%s/multi_node", temp_dir);
    Proc nodes[4];
    for (int k = 0; k < nnodes; k++) {
        int n = (first + k) % nnodes;
        if (k == 1 && delay_s > 0)
            usleep((useconds_t)(delay_s * 1e6));
        start_node(&nodes[n], &(Node){.nnodes = nnodes,
                                      .node_rank = n,
                                      .port = port,
                                      .nproc = nproc,
                                      .out = n == 0 ? out_dir : NULL});
    }
    expect_job_completes(nodes, nnodes);
    expect_job_output(nodes, nnodes, nproc);
    expect_losses_of_multi_gpu(out_dir, nnodes * nproc);
    for (int n = 0; n < nnodes; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, two_nodes_of_one_worker_train_exactly_like_multi_gpu_with_two_ranks,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    expect_a_job_like_multi_gpu(2, 1, port_for_test(0), 0, 0.0);
}

Test(multi_node, two_nodes_of_two_workers_train_exactly_like_multi_gpu_with_four_ranks,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    expect_a_job_like_multi_gpu(2, 2, port_for_test(1), 0, 0.0);
}

Test(multi_node, three_nodes_of_one_worker_train_exactly_like_multi_gpu_with_three_ranks,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    expect_a_job_like_multi_gpu(3, 1, port_for_test(2), 0, 0.0);
}

Test(multi_node, three_nodes_of_two_workers_train_exactly_like_multi_gpu_with_six_ranks,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    expect_a_job_like_multi_gpu(3, 2, port_for_test(3), 0, 0.0);
}

// --bind counts the CPUs of each node: two nodes of two workers, each node's two on CPUs of
// their own (on one machine both nodes take its first two), and the job's numbers unchanged.
Test(multi_node, bind_puts_each_nodes_workers_on_cpus_of_their_own, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    if (workers_cpu_count() < 2)
        cr_skip_test("one CPU here: two workers cannot have one each");
    char out_dir[128];
    snprintf(out_dir, sizeof out_dir, "%s/multi_node", temp_dir);
    Proc nodes[2];
    for (int n = 0; n < 2; n++)
        start_node(&nodes[n], &(Node){.nnodes = 2,
                                      .node_rank = n,
                                      .port = port_for_test(35),
                                      .nproc = 2,
                                      .out = n == 0 ? out_dir : NULL,
                                      .extra = {"--bind"}});
    expect_job_completes(nodes, 2);
    expect_bound_to_distinct_cpus("node 0", nodes[0].err.text, 0, 2);
    expect_bound_to_distinct_cpus("node 1", nodes[1].err.text, 2, 2);
    expect_losses_of_multi_gpu(out_dir, 4);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, a_worker_node_started_a_second_before_the_master_waits_for_it,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    expect_a_job_like_multi_gpu(2, 1, port_for_test(4), 1, 1.0);
}

// Waits for node 0 to print text (an epoch line). A job that never gets there fails with
// what every node said: the node that did not join may be any of them.
static void expect_node_0_prints(Proc* nodes, int count, const char* text) {
    if (proc_wait_for(&nodes[0], PROC_STDOUT, text, 1, now_seconds() + PROC_DEADLINE_S))
        return;
    char said[16384] = "";
    for (int n = 0; n < count; n++) {
        size_t at = strlen(said);
        snprintf(said + at, sizeof said - at, "\n%s's stderr:\n%s", nodes[n].name,
                 nodes[n].err.text);
    }
    cr_assert_fail("no '%s' from node 0; its stdout:\n%s%s", text, nodes[0].out.text, said);
}

// ----------------------------------------------------------------------------
// 2a) a worker killed on node 1

Test(multi_node, a_worker_killed_on_node_1_stops_every_node_and_each_names_it,
     .fini = proc_end_leftovers) {
    enum { NNODES = 3 };
    Proc nodes[NNODES];
    for (int n = 0; n < NNODES; n++)
        start_node(&nodes[n], &(Node){.nnodes = NNODES,
                                      .node_rank = n,
                                      .port = port_for_test(5),
                                      .epochs = 100000,
                                      .data_size = 200});
    expect_node_0_prints(nodes, NNODES, "Epoch [");
    pid_t workers[NNODES];
    for (int n = 0; n < NNODES; n++)
        proc_wait_for_children(&nodes[n], &workers[n], 1);
    double killed_at = now_seconds();
    cr_assert_eq(kill(workers[1], SIGKILL), 0, "kill node 1's worker (pid %d): %s", workers[1],
                 strerror(errno));
    for (int n = 0; n < NNODES; n++) {
        proc_finish(&nodes[n], killed_at + PROC_DEADLINE_S);
        proc_expect_ended(&nodes[n]);
    }
    for (int n = 0; n < NNODES; n++) {
        double took = nodes[n].exited_at - killed_at;
        cr_assert_lt(took, FAILURE_EXIT_S, "%s exited %.2f s after node 1's worker was killed",
                     nodes[n].name, took);
        cr_assert_neq(nodes[n].status, 0, "%s exited 0 after a worker was killed", nodes[n].name);
        proc_expect_group_gone(&nodes[n], GONE_WAIT_S);
    }
    expect_pids_gone(workers, NNODES, GONE_WAIT_S, "after node 1's worker was killed");
    // Principle 4: every node names who failed and why, not only its own echo of it.
    for (int n = 0; n < NNODES; n++) {
        char prefix[64], line[1024];
        snprintf(prefix, sizeof prefix, "node %d: job stopped: ", n);
        line_starting(nodes[n].err.text, prefix, line, sizeof line);
        cr_expect_not_null(strstr(line, "[Rank 1] killed by signal 9"),
                           "%s: no stop line '%s...' naming '[Rank 1] killed by signal 9' after "
                           "node 1's worker was killed; stderr:\n%s",
                           nodes[n].name, prefix, nodes[n].err.text);
    }
    for (int n = 0; n < NNODES; n++)
        proc_free(&nodes[n]);
}

// ----------------------------------------------------------------------------
// 2a) the same with --max-restarts 1: every node restarts, the job ends as if unbroken

Test(multi_node, with_max_restarts_1_a_killed_worker_restarts_every_node_and_changes_no_loss,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    enum { NNODES = 2, EPOCHS = 30 };
    char whole[128], restarted[128], ck[128];
    snprintf(whole, sizeof whole, "%s/whole", temp_dir);
    snprintf(restarted, sizeof restarted, "%s/restarted", temp_dir);
    snprintf(ck, sizeof ck, "%s/ck", temp_dir);
    Proc nodes[NNODES];
    for (int n = 0; n < NNODES; n++) // the unbroken run
        start_node(&nodes[n], &(Node){.nnodes = NNODES,
                                      .node_rank = n,
                                      .port = port_for_test(30),
                                      .epochs = EPOCHS,
                                      .data_size = 20000,
                                      .out = n == 0 ? whole : NULL});
    expect_job_completes(nodes, NNODES);
    for (int n = 0; n < NNODES; n++) {
        proc_free(&nodes[n]);
        start_node(&nodes[n], &(Node){.nnodes = NNODES,
                                      .node_rank = n,
                                      .port = port_for_test(31),
                                      .epochs = EPOCHS,
                                      .data_size = 20000,
                                      .out = n == 0 ? restarted : NULL,
                                      .extra = {"--checkpoint-dir", ck, "--max-restarts", "1"}});
    }
    expect_node_0_prints(nodes, NNODES, "Epoch [10/");
    pid_t worker;
    proc_wait_for_children(&nodes[1], &worker, 1);
    cr_assert_eq(kill(worker, SIGKILL), 0, "kill node 1's worker: %s", strerror(errno));
    expect_job_completes(nodes, NNODES);
    for (int n = 0; n < NNODES; n++) {
        char want[128];
        snprintf(want, sizeof want,
                 "node %d: restart 1/1 after: node 1: [Rank 1] killed by signal 9", n);
        cr_assert_not_null(strstr(nodes[n].err.text, want), "%s: no '%s'; stderr:\n%s",
                           nodes[n].name, want, nodes[n].err.text);
    }
    expect_same_losses("restarted once against the unbroken job", restarted, whole, EPOCHS, 0.0);
    for (int n = 0; n < NNODES; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, a_job_that_diverges_ends_on_every_node_without_a_restart, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char ck[128];
    snprintf(ck, sizeof ck, "%s/ck", temp_dir);
    int port = port_for_test(33);
    Proc nodes[2];
    for (int n = 0; n < 2; n++)
        start_node(&nodes[n],
                   &(Node){.nnodes = 2,
                           .node_rank = n,
                           .port = port,
                           .epochs = 5,
                           .extra = {"--optimizer", "sgd", "--learning-rate", "10",
                                     "--checkpoint-dir", ck, "--max-restarts", "2", NULL}});
    for (int n = 0; n < 2; n++) {
        proc_finish(&nodes[n], now_seconds() + PROC_DEADLINE_S);
        proc_expect_ended(&nodes[n]);
        cr_assert_neq(nodes[n].status, 0, "node %d: a diverged job exited 0", n);
        cr_assert_null(strstr(nodes[n].err.text, "restart 1/2"),
                       "node %d retried a diverged job:\n%s", n, nodes[n].err.text);
        char want[96];
        snprintf(want, sizeof want,
                 "node %d: no restart: it could not cure what ended the job: ", n);
        cr_assert_not_null(strstr(nodes[n].err.text, want), "node %d does not say '%s':\n%s", n,
                           want, nodes[n].err.text);
    }
    cr_assert_not_null(strstr(nodes[0].err.text, "diverged"), "node 0 does not name the cause:\n%s",
                       nodes[0].err.text);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, with_max_restarts_an_interrupted_agent_ends_the_job_on_every_node,
     .fini = proc_end_leftovers) {
    enum { NNODES = 2 };
    Proc nodes[NNODES];
    for (int n = 0; n < NNODES; n++)
        start_node(&nodes[n], &(Node){.nnodes = NNODES,
                                      .node_rank = n,
                                      .port = port_for_test(32),
                                      .epochs = 100000,
                                      .data_size = 200,
                                      .extra = {"--max-restarts", "3"}});
    expect_node_0_prints(nodes, NNODES, "Epoch [");
    double stopped_at = now_seconds();
    cr_assert_eq(kill(nodes[1].pid, SIGTERM), 0, "SIGTERM to node 1: %s", strerror(errno));
    for (int n = 0; n < NNODES; n++) {
        proc_finish(&nodes[n], stopped_at + PROC_DEADLINE_S);
        proc_expect_ended(&nodes[n]);
        double took = nodes[n].exited_at - stopped_at;
        cr_assert_lt(took, FAILURE_EXIT_S, "%s exited %.2f s after node 1 was interrupted",
                     nodes[n].name, took);
        cr_assert_neq(nodes[n].status, 0, "%s exited 0", nodes[n].name);
        cr_assert_null(strstr(nodes[n].err.text, "restart "),
                       "%s restarted after an interruption; stderr:\n%s", nodes[n].name,
                       nodes[n].err.text);
        proc_expect_group_gone(&nodes[n], GONE_WAIT_S);
    }
    cr_assert_not_null(strstr(nodes[0].err.text, "node 0: job stopped: node 1: interrupted"),
                       "node 0 does not name the interruption; stderr:\n%s", nodes[0].err.text);
    for (int n = 0; n < NNODES; n++)
        proc_free(&nodes[n]);
}

// ----------------------------------------------------------------------------
// 2b) the master never started

Test(multi_node, a_node_whose_master_never_started_gives_up_at_its_rdzv_timeout,
     .fini = proc_end_leftovers) {
    Proc p;
    start_node(&p,
               &(Node){.nnodes = 2, .node_rank = 1, .port = port_for_test(6), .rdzv_timeout = 2});
    proc_finish(&p, now_seconds() + PROC_DEADLINE_S);
    proc_expect_ended(&p);
    double took = p.exited_at - p.started_at;
    cr_assert_neq(p.status, 0, "exit status 0 without a master");
    cr_assert(took > 1.0 && took < 6.0, "gave up after %.2f s with --rdzv-timeout 2", took);
    const char* want[] = {"cannot reach the master", "Connection refused",
                          "is the master started, and is the port right?", "--rdzv-timeout"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_not_null(strstr(p.err.text, want[i]), "stderr does not say '%s':\n%s", want[i],
                           p.err.text);
    proc_expect_group_gone(&p, GONE_WAIT_S);
    proc_free(&p);
}

// ----------------------------------------------------------------------------
// 2c) tokens

Test(multi_node, a_node_with_the_wrong_token_is_refused_and_the_right_one_still_joins,
     .fini = proc_end_leftovers) {
    int port = port_for_test(7);
    Proc nodes[2], wrong;
    start_node(&nodes[0], &(Node){.nnodes = 2, .port = port, .env = {"DDP_TOKEN=tok-right-5e1"}});
    start_node(
        &wrong,
        &(Node){.nnodes = 2, .node_rank = 1, .port = port, .env = {"DDP_TOKEN=tok-wrong-5e1"}});
    expect_refused(&wrong, (const char*[]){"refused", "wrong token or replayed answer", NULL});
    cr_assert(proc_wait_for(&nodes[0], PROC_STDERR, "wrong token", 1, now_seconds() + 10.0),
              "the master does not log the refusal; stderr:\n%s", nodes[0].err.text);
    cr_assert_not_null(strstr(nodes[0].err.text, "refused node 1 from 127.0.0.1:"),
                       "the master's log does not say whom it refused:\n%s", nodes[0].err.text);
    cr_assert(strstr(nodes[0].err.text, "tok-") == NULL && strstr(wrong.err.text, "tok-") == NULL,
              "a token is in a log:\n%s\n%s", nodes[0].err.text, wrong.err.text);
    start_node(
        &nodes[1],
        &(Node){.nnodes = 2, .node_rank = 1, .port = port, .env = {"DDP_TOKEN=tok-right-5e1"}});
    expect_job_completes(nodes, 2);
    proc_free(&wrong);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, token_files_are_checked_like_ddp_token, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    int port = port_for_test(8);
    char right[128], wrong[128];
    snprintf(right, sizeof right, "%s/right", temp_dir);
    snprintf(wrong, sizeof wrong, "%s/wrong", temp_dir);
    write_file(right, "s3cret-right\n", 0600);
    write_file(wrong, "s3cret-wrong\n", 0644);
    Proc nodes[2], bad, none;
    start_node(&nodes[0], &(Node){.nnodes = 2, .port = port, .extra = {"--token-file", right}});
    start_node(
        &bad, &(Node){.nnodes = 2, .node_rank = 1, .port = port, .extra = {"--token-file", wrong}});
    expect_refused(&bad, (const char*[]){"refused", "wrong token", NULL});
    cr_assert_not_null(strstr(bad.err.text, "can be read by other users (mode 0644)"),
                       "a token file that others can read is not warned about:\n%s", bad.err.text);
    // No token at all, by the user's explicit word: the master still wants its token.
    start_node(
        &none,
        &(Node){.nnodes = 2, .node_rank = 1, .port = port, .no_token = 1, .extra = {"--insecure"}});
    expect_refused(&none, (const char*[]){"warning: --insecure", "refused", "wrong token", NULL});
    cr_assert(proc_wait_for(&nodes[0], PROC_STDERR, "wrong token", 2, now_seconds() + 10.0),
              "the master does not log both refusals; stderr:\n%s", nodes[0].err.text);
    start_node(
        &nodes[1],
        &(Node){.nnodes = 2, .node_rank = 1, .port = port, .extra = {"--token-file", right}});
    expect_job_completes(nodes, 2);
    cr_assert_null(strstr(nodes[0].err.text, "can be read by other users"),
                   "a token file of mode 0600 was warned about:\n%s", nodes[0].err.text);
    proc_free(&bad);
    proc_free(&none);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, a_job_of_several_nodes_without_a_token_needs_insecure, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    int port = port_for_test(15);
    char blank[128], fifo[128];
    snprintf(blank, sizeof blank, "%s/blank", temp_dir);
    snprintf(fifo, sizeof fifo, "%s/fifo", temp_dir);
    write_file(blank, "\nthe token would be on the second line\n", 0600);
    cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
    struct {
        Node node;
        const char* want;
    } cases[] = {
        {{.nnodes = 2, .port = port, .no_token = 1}, "a job of 2 nodes needs a token"},
        {{.nnodes = 2, .port = port, .extra = {"--token-file", blank}},
         "its first line is empty (a token cannot be empty)"},
        {{.nnodes = 2, .port = port, .extra = {"--token-file", fifo}}, "not a regular file"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Proc p;
        start_node(&p, &cases[i].node);
        proc_finish(&p, now_seconds() + 10.0); // a FIFO must not block the start
        proc_expect_ended(&p);
        cr_assert_eq(p.status, 2, "case %zu: exit status %d, want 2; stderr:\n%s", i, p.status,
                     p.err.text);
        cr_assert_not_null(strstr(p.err.text, cases[i].want), "case %zu: want '%s' in:\n%s", i,
                           cases[i].want, p.err.text);
        proc_free(&p);
    }
}

// ----------------------------------------------------------------------------
// 2d) a node rank taken twice, 2e) other settings

Test(multi_node, a_second_node_with_a_taken_node_rank_is_refused_and_the_job_still_forms,
     .fini = proc_end_leftovers) {
    int port = port_for_test(9);
    Proc nodes[3], twin;
    // --debug: the master says when node 1 has joined, so the twin comes second.
    start_node(&nodes[0], &(Node){.nnodes = 3, .port = port, .extra = {"--debug"}});
    start_node(&nodes[1], &(Node){.nnodes = 3, .node_rank = 1, .port = port});
    cr_assert(proc_wait_for(&nodes[0], PROC_STDERR, "node 1 joined", 1, now_seconds() + 20.0),
              "node 1 did not join; master's stderr:\n%s", nodes[0].err.text);
    start_node(&twin, &(Node){.nnodes = 3, .node_rank = 1, .port = port});
    expect_refused(&twin, (const char*[]){"refused", "node rank 1 is taken already", NULL});
    start_node(&nodes[2], &(Node){.nnodes = 3, .node_rank = 2, .port = port});
    expect_job_completes(nodes, 3);
    cr_assert_not_null(strstr(nodes[0].out.text, "Replicas agree: yes (3 ranks"),
                       "the job did not form of nodes 0, 1 and 2:\n%s", nodes[0].out.text);
    proc_free(&twin);
    for (int n = 0; n < 3; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, a_node_with_other_settings_is_refused_naming_the_setting,
     .fini = proc_end_leftovers) {
    int port = port_for_test(10);
    Proc nodes[2], other;
    start_node(&nodes[0], &(Node){.nnodes = 2, .port = port, .epochs = 3});
    start_node(&other, &(Node){.nnodes = 2, .node_rank = 1, .port = port, .epochs = 4});
    expect_refused(&other, (const char*[]){"refused", "epochs=3", "epochs=4", NULL});
    cr_assert(proc_wait_for(&nodes[0], PROC_STDERR, "epochs=4", 1, now_seconds() + 10.0),
              "the master does not log the refusal; stderr:\n%s", nodes[0].err.text);
    start_node(&nodes[1], &(Node){.nnodes = 2, .node_rank = 1, .port = port, .epochs = 3});
    expect_job_completes(nodes, 2);
    proc_free(&other);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

// ----------------------------------------------------------------------------
// 2f) the port in use

// Starts a master on port, expects exit status 2 within 1 s and the bind message.
static void expect_port_in_use(int port) {
    Proc p;
    start_node(&p, &(Node){.nnodes = 2, .port = port});
    proc_finish(&p, now_seconds() + PROC_DEADLINE_S);
    proc_expect_ended(&p);
    char want[160];
    snprintf(want, sizeof want,
             "bind 127.0.0.1:%d: Address already in use; use --master-port or stop the old run",
             port);
    cr_assert_eq(p.status, 2, "exit status %d, want 2; stderr:\n%s", p.status, p.err.text);
    cr_assert_not_null(strstr(p.err.text, want), "stderr does not say '%s':\n%s", want, p.err.text);
    double took = p.exited_at - p.started_at;
    cr_assert_lt(took, 1.0, "took %.2f s to give up on a port in use", took);
    proc_expect_group_gone(&p, GONE_WAIT_S);
    proc_free(&p);
}

// A TCP socket listening on 127.0.0.1:port.
static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(bind(fd, (struct sockaddr*)&sa, sizeof sa) == 0 && listen(fd, 4) == 0,
              "cannot listen on 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

Test(multi_node, a_master_on_a_port_in_use_exits_2_at_once_and_says_so,
     .fini = proc_end_leftovers) {
    int taken = port_for_test(11), fd = listen_on(taken);
    expect_port_in_use(taken);
    close(fd);
    // a running master holds its port the same way
    Proc first;
    int held = port_for_test(12);
    start_node(&first, &(Node){.nnodes = 2, .port = held});
    wait_until_listening(&first);
    expect_port_in_use(held);
    cr_assert(!first.reaped, "the first master ended: %s", first.err.text);
    proc_kill(&first);
    proc_expect_group_gone(&first, GONE_WAIT_S);
    proc_free(&first);
}

// The ports of a "ring at 127.0.0.1:P,Q" line of a --debug run's stderr after `after`;
// returns how many (into ports).
static int ring_ports_named(const char* err, const char* after, int* ports, int max) {
    const char* at = strstr(err, after);
    cr_assert_not_null(at, "no '%s' line:\n%s", after, err);
    at = strstr(at, "ring at 127.0.0.1:");
    cr_assert_not_null(at, "no ring address after '%s':\n%s", after, err);
    at += strlen("ring at 127.0.0.1:");
    int n = 0;
    for (char* end; n < max; at = end + 1) {
        ports[n++] = (int)strtol(at, &end, 10);
        if (*end != ',')
            break;
    }
    return n;
}

// NCCL would pick an interface of its own; each agent gives it the rendezvous' one, unless
// the user set NCCL_SOCKET_IFNAME, and --debug says which.
Test(multi_node, nccl_socket_ifname_is_the_rendezvous_interface_unless_the_user_set_one,
     .fini = proc_end_leftovers) {
    int port = port_for_test(34);
    Proc nodes[2];
    start_node(&nodes[0], &(Node){.nnodes = 2, .port = port, .extra = {"--debug", NULL}});
    start_node(&nodes[1], &(Node){.nnodes = 2,
                                  .node_rank = 1,
                                  .port = port,
                                  .extra = {"--debug", NULL},
                                  .env = {"NCCL_SOCKET_IFNAME=eth9", NULL}});
    expect_job_completes(nodes, 2);
    const char* set = "NCCL_SOCKET_IFNAME=lo: the interface of this node's rendezvous address "
                      "127.0.0.1";
    cr_assert_not_null(strstr(nodes[0].err.text, set), "the master's stderr:\n%s",
                       nodes[0].err.text);
    cr_assert_not_null(strstr(nodes[1].err.text, "NCCL_SOCKET_IFNAME=eth9: yours, left as it is"),
                       "node 1's stderr:\n%s", nodes[1].err.text);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

Test(multi_node, ring_ports_keep_every_worker_in_the_range_and_a_full_range_is_named,
     .fini = proc_end_leftovers) {
    // Five ports, the first one held by this test: the 2 x 2 workers take the other four.
    int lo = port_for_test(20), hi = lo + 4, held = listen_on(lo);
    int port = port_for_test(25);
    char range[32];
    snprintf(range, sizeof range, "%d-%d", lo, hi);
    Proc nodes[2];
    for (int n = 0; n < 2; n++)
        start_node(&nodes[n], &(Node){.nnodes = 2,
                                      .node_rank = n,
                                      .port = port,
                                      .nproc = 2,
                                      .extra = {"--ring-ports", range, "--debug", NULL}});
    expect_job_completes(nodes, 2);
    int ports[4], counts[2];
    counts[0] = ring_ports_named(nodes[0].err.text, "the master's 2 workers", ports, 2);
    counts[1] = ring_ports_named(nodes[1].err.text, "HELLO sent", ports + 2, 2);
    cr_assert(counts[0] == 2 && counts[1] == 2, "want 2 ring ports per node, got %d and %d",
              counts[0], counts[1]);
    for (int i = 0; i < 4; i++) {
        cr_assert(ports[i] > lo && ports[i] <= hi,
                  "a worker listens on %d, outside %d-%d "
                  "(or on %d, which this test holds)",
                  ports[i], lo + 1, hi, lo);
        for (int j = 0; j < i; j++)
            cr_assert_neq(ports[i], ports[j], "two workers listen on port %d", ports[i]);
    }
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);

    // Three ports, one held: the four workers do not fit, and the node that comes short
    // says so (the other waits for it until its rendezvous timeout, ended here).
    snprintf(range, sizeof range, "%d-%d", lo, lo + 2);
    for (int n = 0; n < 2; n++)
        start_node(&nodes[n], &(Node){.nnodes = 2,
                                      .node_rank = n,
                                      .port = port,
                                      .nproc = 2,
                                      .rdzv_timeout = 5,
                                      .extra = {"--ring-ports", range, NULL}});
    char want[128];
    snprintf(want, sizeof want, "ring: no free port left in --ring-ports %s on 127.0.0.1", range);
    for (int n = 0; n < 2; n++)
        proc_finish(&nodes[n], now_seconds() + PROC_DEADLINE_S);
    int named = 0;
    for (int n = 0; n < 2; n++) {
        cr_assert_neq(nodes[n].status, 0, "node %d: exit status 0 without enough ring ports", n);
        named += strstr(nodes[n].err.text, want) != NULL;
    }
    cr_assert_geq(named, 1, "no node says '%s':\n%s\n%s", want, nodes[0].err.text,
                  nodes[1].err.text);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
    close(held);
}

// ----------------------------------------------------------------------------
// 2g) garbage on the master's port

// A connection to 127.0.0.1:port (which listens already).
static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr*)&sa, sizeof sa), 0, "connect to port %d: %s", port,
                 strerror(errno));
    struct timeval t = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
    return fd;
}

// A message header as the wire format has it: magic, version (3), type, length.
static void put_header(unsigned char* h, uint32_t magic, uint16_t version, uint16_t type,
                       uint32_t length) {
    magic = htonl(magic), length = htonl(length);
    version = htons(version), type = htons(type);
    memcpy(h, &magic, 4);
    memcpy(h + 4, &version, 2);
    memcpy(h + 6, &type, 2);
    memcpy(h + 8, &length, 4);
}

#define VERSION 3
#define HELLO 1
// HELLO's payload for one worker: node rank, nproc, build[64], nccl[16], settings[1024],
// ring address[16], one port, the node's challenge[32], the proof[32].
#define HELLO_BYTES (4 + 4 + 64 + 16 + 1024 + 16 + 4 + 32 + 32)
#define CHALLENGE_BYTES (12 + 32) // the master's first message on every connection

// Sends bytes (len) on a new connection (and hangs up at once if hang_up), then waits
// until the master has logged the count-th ignored connection, saying reason, and
// has closed it (after its CHALLENGE, which the test does not answer).
static void send_garbage(Proc* master, int port, const void* bytes, size_t len, int hang_up,
                         int count, const char* reason) {
    int fd = connect_to(port);
    if (len > 0)
        cr_assert_eq(send(fd, bytes, len, MSG_NOSIGNAL), (ssize_t)len, "send: %s", strerror(errno));
    if (hang_up)
        close(fd), fd = -1;
    const char* logged = "rendezvous: ignored a connection from 127.0.0.1:";
    cr_assert(proc_wait_for(master, PROC_STDERR, logged, count, now_seconds() + 10.0),
              "the master did not log connection %d (%s); stderr:\n%s", count, reason,
              master->err.text);
    const char* last = master->err.text;
    for (int i = 0; i < count; i++)
        last = strstr(last, logged) + 1;
    const char* nl = strchr(last, '\n');
    const char* said = strstr(last, reason);
    cr_expect(said != NULL && (nl == NULL || said < nl),
              "the master's log of connection %d does not say '%s':\n%s", count, reason,
              master->err.text);
    if (fd >= 0) {
        unsigned char challenge[CHALLENGE_BYTES], byte;
        for (size_t n = 0; n < sizeof challenge;) {
            ssize_t got = recv(fd, challenge + n, sizeof challenge - n, 0);
            cr_assert_gt(got, 0, "connection %d: no CHALLENGE from the master", count);
            n += (size_t)got;
        }
        cr_assert(challenge[7] == 6 && challenge[11] == 32,
                  "connection %d: the master's first message is not a CHALLENGE", count);
        ssize_t got = recv(fd, &byte, 1, 0);
        cr_assert(got == 0 || (got < 0 && errno == ECONNRESET),
                  "the master kept connection %d open (recv: %zd, %s)", count, got,
                  got < 0 ? strerror(errno) : "data");
        close(fd);
    }
}

Test(multi_node, garbage_on_the_master_port_is_logged_and_ignored, .fini = proc_end_leftovers) {
    int port = port_for_test(13);
    Proc nodes[2];
    start_node(&nodes[0], &(Node){.nnodes = 2, .port = port});
    wait_until_listening(&nodes[0]);
    // i) random bytes
    unsigned char junk[64];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof junk; i++)
        x = x * 1103515245u + 12345u, junk[i] = (unsigned char)(x >> 16);
    junk[0] = 'X';
    send_garbage(&nodes[0], port, junk, sizeof junk, 0, 1, "bad magic");
    // ii) a valid header announcing 2 GiB
    unsigned char msg[12 + HELLO_BYTES];
    put_header(msg, 0x44445052u, VERSION, HELLO, 0x7fffffffu);
    send_garbage(&nodes[0], port, msg, 12, 0, 2, "payload length 2147483647 is over the limit");
    // iii) a valid header, then a hang-up in the middle of the payload
    put_header(msg, 0x44445052u, VERSION, HELLO, HELLO_BYTES);
    memset(msg + 12, 0, 100);
    send_garbage(&nodes[0], port, msg, 12 + 100, 1, 3,
                 "connection closed by the peer in the middle of a message");
    // iv) another protocol version: an agent of the version before
    put_header(msg, 0x44445052u, 1, HELLO, HELLO_BYTES);
    send_garbage(&nodes[0], port, msg, 12, 0, 4, "protocol version 1, this build speaks 3");
    // v) a HELLO of the right length whose text fields hold no NUL byte
    put_header(msg, 0x44445052u, VERSION, HELLO, HELLO_BYTES);
    memset(msg + 12, 'A', HELLO_BYTES);
    uint32_t one = htonl(1);
    memcpy(msg + 12, &one, 4), memcpy(msg + 16, &one, 4);
    send_garbage(&nodes[0], port, msg, sizeof msg, 0, 5, "not a well-formed HELLO");
    // vi) a connection that says nothing: the master waits a moment only
    send_garbage(&nodes[0], port, msg, 0, 0, 6,
                 "timed out (no answer to the challenge within 2 s)");
    cr_assert_null(strstr(nodes[0].err.text, "refused"),
                   "the master refused garbage as a node:\n%s", nodes[0].err.text);
    start_node(&nodes[1], &(Node){.nnodes = 2, .node_rank = 1, .port = port});
    expect_job_completes(nodes, 2);
    for (int n = 0; n < 2; n++)
        proc_free(&nodes[n]);
}

// ----------------------------------------------------------------------------
// 2h) bad flags

// Runs with args and env and expects status 2, nothing on stdout and one stderr line
// naming name.
static void expect_usage_error(const char* const* args, const char* const* env, const char* name) {
    char shown[256] = "";
    for (int i = 0; env != NULL && env[i] != NULL; i++)
        snprintf(shown + strlen(shown), sizeof shown - strlen(shown), "%s ", env[i]);
    snprintf(shown + strlen(shown), sizeof shown - strlen(shown), "multi_node");
    for (int i = 0; args[i] != NULL; i++)
        snprintf(shown + strlen(shown), sizeof shown - strlen(shown), " %s", args[i]);
    Proc p;
    start_clean(&p, "multi_node", MULTI_NODE, args, env);
    proc_finish(&p, now_seconds() + PROC_DEADLINE_S);
    proc_expect_ended(&p);
    cr_assert_eq(p.status, 2, "%s: exit status %d, want 2; stderr:\n%s", shown, p.status,
                 p.err.text);
    cr_assert_str_empty(p.out.text, "%s: stdout is not empty:\n%s", shown, p.out.text);
    cr_assert_eq(count_lines(p.err.text), 1, "%s: want one line on stderr, got:\n%s", shown,
                 p.err.text);
    cr_assert_not_null(strstr(p.err.text, name), "%s: stderr does not name %s: %s", shown, name,
                       p.err.text);
    proc_expect_group_gone(&p, GONE_WAIT_S);
    proc_free(&p);
}

Test(multi_node, bad_flags_exit_2_with_one_line_naming_the_flag, .fini = proc_end_leftovers) {
    // Each keeps to this test's port, should it get as far as listening.
    char bad_flags_port[16];
    snprintf(bad_flags_port, sizeof bad_flags_port, "%d", port_for_test(14));
    struct {
        const char* args[10];
        const char* env[2];
        const char* name;
    } cases[] = {
        {{"--nnodes", "0", "--master-port", bad_flags_port}, {NULL}, "--nnodes"},
        {{"--nnodes", "65", "--master-port", bad_flags_port}, {NULL}, "--nnodes"},
        {{"--nnodes", "2", "--node-rank", "2", "--master-port", bad_flags_port},
         {NULL},
         "--node-rank"},
        {{"--node-rank", "-1", "--master-port", bad_flags_port}, {NULL}, "--node-rank"},
        {{"--master-port", "70000"}, {NULL}, "--master-port"},
        {{"--master-port", "0"}, {NULL}, "--master-port"},
        {{"--nnodes", "2"}, {"MASTER_PORT=abc"}, "MASTER_PORT"},
        {{"--master-port", bad_flags_port, "--nnodes", "2", "--node-rank", "1"},
         {"NNODES=x"},
         "NNODES"},
        {{"--device", "cpu", "--master-port", bad_flags_port, "--token-file", "/nonexistent"},
         {NULL},
         "--token-file /nonexistent"},
        {{"--rdzv-timeout", "0", "--master-port", bad_flags_port}, {NULL}, "--rdzv-timeout"},
        {{"--master-addr", "", "--master-port", bad_flags_port}, {NULL}, "--master-addr"},
        {{"--ring-ports", "5-3", "--master-port", bad_flags_port}, {NULL}, "--ring-ports"},
        {{"--ring-ports", "1-65536", "--master-port", bad_flags_port}, {NULL}, "--ring-ports"},
        {{"--master-port", bad_flags_port}, {"DDP_RING_PORTS=41000"}, "DDP_RING_PORTS"},
        {{"--ring-ports", "41000-41000", "--nproc-per-node", "2", "--device", "cpu",
          "--master-port", bad_flags_port},
         {NULL},
         "--ring-ports 41000-41000 has 1 port for this node's 2 workers"},
        {{"--device", "cpu", "--kernels", "graph", "--master-port", bad_flags_port},
         {NULL},
         "--kernels graph needs a GPU"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_usage_error(cases[i].args, cases[i].env, cases[i].name);
    char workers[16]; // --bind: one more worker than this machine has CPUs
    snprintf(workers, sizeof workers, "%d", workers_cpu_count() + 1);
    if (workers_cpu_count() < WORKERS_MAX)
        expect_usage_error((const char*[]){"--device", "cpu", "--bind", "--nproc-per-node", workers,
                                           "--master-port", bad_flags_port, NULL},
                           NULL, "need a CPU each");
}
