/*
 * test_scripts.c - the scripts that start jobs: start_multi_node.sh, launch.sh and
 * setup.sh --multi-node.
 *
 * Each test runs a script as a child process in a process group of its own, from the
 * repository root (where `make test` runs the suite), its stdout and stderr going to
 * files in the test's temporary directory, under a hard deadline after which the
 * whole group is killed (tests/support/proc.h). The nodes of a job are agents on this
 * machine that meet at 127.0.0.1, with tools/local_rsh.sh standing in for ssh.
 * Criterion runs the tests in parallel, so each owns a port (port_for_test(100 + n)) and finds
 * what it left behind in /proc by that port: a build/multi_node whose command line has
 * `--master-port PORT`. The .fini kills whatever a failed test left. Needs
 * `make NO_CUDA=1` (or `make`) first.
 *
 * tests/support/ssh_like_rsh.sh is a remote shell that behaves as ssh does: it joins its
 * arguments into one string and runs it with sh -c in a clean environment. The jobs
 * launched through it prove that the token, the flags and the job's settings reach the
 * nodes through that one string and stdin, and through nothing else. A value that the
 * scripts must refuse carries $(touch MARKER) or PATH[$(touch MARKER)] (bash runs the
 * command in an array subscript): the marker must never appear.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "support/proc.h"

#define STOP_WITHIN_S 15.0    // launch.sh stops every node within this after a failure or Ctrl-C
#define REFUSED_WITHIN_S 10.0 // a script refuses a FIFO within this (a read of one blocks)
#define GONE_WITHIN_S 5.0     // agents of a job that ended are gone within this
#define LINE_BYTES (PATH_MAX + 1024) // a line of output that names a path

// ----------------------------------------------------------------------------
// helpers: child processes

static char repo[PATH_MAX]; // the repository root: the current directory
static int test_port;       // this test's port, for end_leftovers

// The variables the scripts read; a child starts without them, then gets the test's.
static const char* const SCRIPT_VARS[] = {
    "HOSTS_FILE",    "MASTER_ADDR", "MASTER_PORT",    "NNODES",  "NODE_RANK",
    "GPUS_PER_NODE", "DDP_TOKEN",   "DDP_TOKEN_FILE", "DDP_RSH", NULL};

// Starts argv[0] (a path) with env, its stdout and stderr going to temp_dir/NAME.out and
// NAME.err: nodes that a script leaves behind may write on, and must neither block nor die
// of SIGPIPE for it.
static void run_start(Proc* r, const char* name, const char* const env[],
                      const char* const argv[]) {
    proc_start(
        r, argv[0], argv + 1,
        &(ProcOptions){.name = name, .env = env, .unset_env = SCRIPT_VARS, .output_to_files = 1});
}

static void run_script(Proc* r, const char* name, const char* const env[],
                       const char* const argv[]) {
    run_start(r, name, env, argv);
    proc_finish(r, r->started_at + PROC_DEADLINE_S);
    cr_assert_neq(r->status, -1, "%s ran past the %.0f s deadline; stdout:\n%s\nstderr:\n%s",
                  argv[0], PROC_DEADLINE_S, r->out.text, r->err.text);
}

// ----------------------------------------------------------------------------
// helpers: what a job left behind, found in /proc

// Whether pid is a build/multi_node, not a zombie, whose command line has
// --master-port *port.
static int is_agent_of_port(pid_t pid, const void* port) {
    if (!pid_runs(pid))
        return 0;
    char buf[4096];
    int len = read_pid_file(pid, "cmdline", buf, sizeof buf);
    if (len < 0)
        return 0;
    size_t n = (size_t)len;
    const char* base = strrchr(buf, '/');
    if (strcmp(base != NULL ? base + 1 : buf, "multi_node") != 0)
        return 0;
    char want[16];
    snprintf(want, sizeof want, "%d", *(const int*)port);
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (strcmp(buf + i, "--master-port") == 0 && i + 14 < n && strcmp(buf + i + 14, want) == 0)
            return 1;
    return 0;
}

// Counts the agents of port now running; their pids go to pids (up to max).
static int agents_of_port(int port, pid_t* pids, int max) {
    return pids_where(is_agent_of_port, &port, pids, max);
}

// Polls until no agent of port runs or until seconds after since; returns how many run.
static int agents_left(int port, double since, double seconds) {
    pid_t pids[1];
    int count;
    while ((count = agents_of_port(port, pids, 1)) > 0 && now_seconds() - since < seconds)
        usleep(100000);
    return count;
}

// ----------------------------------------------------------------------------
// helpers: setup and teardown, text

// .init; the checks come first, as no .fini follows a failed .init.
static void make_tmp_dir(void) {
    cr_assert_not_null(getcwd(repo, sizeof repo));
    cr_assert(access("start_multi_node.sh", X_OK) == 0 &&
                  access(build_program("multi_node"), X_OK) == 0 &&
                  access(build_program("multi_gpu"), X_OK) == 0,
              "run from the repository root after `make NO_CUDA=1` (cwd: %s)", repo);
    temp_dir_make();
}

// The strings a test made, freed by its .fini: a failed assertion ends the test's body, not
// the .fini.
static char* owned[64];
static int owned_count;

static char* own(char* s) {
    cr_assert_not_null(s, "out of memory");
    cr_assert_lt(owned_count, 64, "a test made more than 64 strings");
    return owned[owned_count++] = s;
}

// .fini: kills every group the test started and any agent of its port, then removes temp_dir.
static void end_leftovers(void) {
    while (owned_count > 0)
        free(owned[--owned_count]);
    proc_end_leftovers();
    pid_t pids[64];
    int count = test_port > 0 ? agents_of_port(test_port, pids, 64) : 0;
    for (int i = 0; i < count && i < 64; i++)
        kill(pids[i], SIGKILL);
}

TestSuite(start_multi_node, .init = make_tmp_dir, .fini = end_leftovers, .timeout = 120);
TestSuite(launch, .init = make_tmp_dir, .fini = end_leftovers, .timeout = 120);
TestSuite(setup, .init = make_tmp_dir, .fini = end_leftovers, .timeout = 120);

// A path in the test's temporary directory (the .fini frees it).
static char* tmp_path(const char* name) {
    char* path = own(malloc(PATH_MAX));
    snprintf(path, PATH_MAX, "%s/%s", temp_dir, name);
    return path;
}

// "NAME=VALUE", for a child's environment (the .fini frees it).
static char* env_var(const char* name, const char* value) {
    char* s = own(malloc(strlen(name) + strlen(value) + 2));
    sprintf(s, "%s=%s", name, value);
    return s;
}

static char* port_var(int port) {
    char value[16];
    snprintf(value, sizeof value, "%d", port);
    return env_var("MASTER_PORT", value);
}

static void first_line(char* line, size_t len, const char* text) {
    size_t n = strcspn(text, "\n");
    snprintf(line, len, "%.*s", (int)n, text);
}

// The first line of text that does not start with prefix, NULL when every line does.
static const char* line_without_prefix(const char* text, const char* prefix) {
    for (const char* line = text; *line != '\0';) {
        if (strncmp(line, prefix, strlen(prefix)) != 0)
            return line;
        const char* end = strchr(line, '\n');
        line = end != NULL ? end + 1 : line + strlen(line);
    }
    return NULL;
}

// A FIFO in the test's temporary directory that nobody writes: a read of it blocks for ever.
static char* fifo_path(const char* name) {
    char* path = tmp_path(name);
    cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo %s: %s", path, strerror(errno));
    return path;
}

// Finishes r, which must end by itself within REFUSED_WITHIN_S of its start.
static void finish_at_once(Proc* r) {
    proc_finish(r, r->started_at + REFUSED_WITHIN_S);
    cr_assert_neq(r->status, -1, "%s still ran %.0f s after its start (blocked?); stderr:\n%s",
                  r->name, REFUSED_WITHIN_S, r->err.text);
}

// A value that a script must refuse before any use: NAME=VALUE in its environment (or a
// flag and its value), with %s in VALUE standing for a marker file's path, and what the
// refusal says the variable must be. No value holds ' or a control character, so that the
// script shows it as 'VALUE'.
typedef struct {
    const char* name;
    const char* value;
    const char* must_be;
} BadValue;

// bad's value with the marker's path in place of its %s, into text (len bytes).
static void bad_value_text(char* text, size_t len, const BadValue* bad, const char* marker) {
    snprintf(text, len, bad->value, marker);
}

// The environment of the count NAME=VALUE pairs of base, with name=value in place of its
// own NAME (or after them): the strings in vars (count + 1), their pointers in env
// (count + 2, NULL-terminated).
static void env_with(const char** env, char vars[][LINE_BYTES], const char* const base[][2],
                     size_t count, const char* name, const char* value) {
    size_t n = 0;
    for (size_t b = 0; b < count; b++)
        if (strcmp(base[b][0], name) != 0) {
            snprintf(vars[n], LINE_BYTES, "%s=%s", base[b][0], base[b][1]);
            env[n] = vars[n];
            n++;
        }
    snprintf(vars[n], LINE_BYTES, "%s=%s", name, value);
    env[n] = vars[n];
    env[n + 1] = NULL;
}

// Checks that r refused bad (its value value) with exactly "SCRIPT: NAME must be ..., got
// 'VALUE'", exit status 2, printed nothing on stdout and left no marker.
static void expect_refusal(Proc* r, const char* script, const BadValue* bad, const char* value,
                           const char* marker) {
    char want[LINE_BYTES];
    snprintf(want, sizeof want, "%s: %s must be %s, got '%s'\n", script, bad->name, bad->must_be,
             value);
    cr_expect_eq(r->status, 2, "%s=%s: status %d\nstderr:\n%s", bad->name, value, r->status,
                 r->err.text);
    cr_expect_str_eq(r->err.text, want, "%s=%s: stderr:\n%s\nexpected:\n%s", bad->name, value,
                     r->err.text, want);
    cr_expect_str_empty(r->out.text, "%s=%s: it ran something:\n%s", bad->name, value, r->out.text);
    cr_expect_neq(access(marker, F_OK), 0, "%s=%s: the command in the value ran", bad->name, value);
}

// The command start_multi_node.sh must print: "+ REPO/build/multi_node " (or DDP_BUILD's) then
// rest.
static void expected_command(char* line, size_t len, const char* rest) {
    snprintf(line, len, "+ %s/%s %s", repo, build_program("multi_node"), rest);
}

// Runs `start_multi_node.sh ROLE --help` with env: the command it would run, not a job.
static void print_command(Proc* r, const char* role, const char* const env[]) {
    const char* argv[] = {"./start_multi_node.sh", role, "--help", NULL};
    run_script(r, role, env, argv);
    cr_assert_eq(r->status, 0, "start_multi_node.sh %s --help: status %d\nstderr:\n%s", role,
                 r->status, r->err.text);
    cr_assert_not_null(strstr(r->out.text, "usage: multi_node"), "the program did not run:\n%s",
                       r->out.text);
}

// ----------------------------------------------------------------------------
// start_multi_node.sh

#define TRAIN_FLAGS "--epochs", "2", "--data-size", "400", "--device", "cpu"
#define TRAIN_FLAGS_TEXT "--epochs 2 --data-size 400 --device cpu"

// Starts the master and a worker (NODE_RANK=1) of a two-node job with the same env
// (then NODE_RANK) and flags, TRAIN_FLAGS then extra (or NULL), and waits for both.
static void run_two_nodes(Proc* master, Proc* worker, const char** env, int env_count,
                          const char* extra) {
    const char* master_argv[] = {"./start_multi_node.sh", "master", TRAIN_FLAGS, extra, NULL};
    const char* worker_argv[] = {"./start_multi_node.sh", "worker", TRAIN_FLAGS, extra, NULL};
    run_start(master, "master", env, master_argv);
    env[env_count] = "NODE_RANK=1";
    run_start(worker, "worker", env, worker_argv);
    env[env_count] = NULL;
    proc_finish(worker, worker->started_at + PROC_DEADLINE_S);
    proc_finish(master, master->started_at + PROC_DEADLINE_S);
}

Test(start_multi_node, two_nodes_from_a_hosts_file_train_together_and_agree) {
    test_port = port_for_test(101);
    char* hosts = tmp_path("hosts");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts),
                         port_var(test_port),
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")),
                         "DDP_TOKEN=0123456789abcdef",
                         NULL,
                         NULL};
    Proc master, worker;
    run_two_nodes(&master, &worker, env, 4, NULL);

    cr_assert_eq(master.status, 0, "master: status %d\nstdout:\n%s\nstderr:\n%s", master.status,
                 master.out.text, master.err.text);
    cr_assert_eq(worker.status, 0, "worker: status %d\nstdout:\n%s\nstderr:\n%s", worker.status,
                 worker.out.text, worker.err.text);
    char got[LINE_BYTES], want[LINE_BYTES];
    for (int rank = 0; rank < 2; rank++) {
        Proc* node = rank == 0 ? &master : &worker;
        char rest[256];
        snprintf(rest, sizeof rest,
                 "--nnodes 2 --node-rank %d --master-addr 127.0.0.1 --master-port %d "
                 "--nproc-per-node 1 " TRAIN_FLAGS_TEXT,
                 rank, test_port);
        expected_command(want, sizeof want, rest);
        first_line(got, sizeof got, node->out.text);
        cr_assert_str_eq(got, want, "node %d's first line:\n  %s\nexpected:\n  %s", rank, got,
                         want);
    }
    cr_assert_not_null(strstr(master.out.text, "Replicas agree: yes (2 ranks"),
                       "the master's output:\n%s", master.out.text);
    cr_assert_eq(agents_left(test_port, now_seconds(), GONE_WITHIN_S), 0,
                 "agents of port %d still run after the job ended", test_port);
    proc_free(&master);
    proc_free(&worker);
}

Test(start_multi_node, nodes_that_share_a_token_file_train_together) {
    test_port = port_for_test(109);
    char *hosts = tmp_path("hosts"), *token = tmp_path("token");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    write_file(token, "0123456789abcdef\n", 0600);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", token), NULL, NULL};
    Proc master, worker;
    run_two_nodes(&master, &worker, env, 3, NULL);

    cr_assert_eq(master.status, 0, "master: status %d\nstderr:\n%s", master.status,
                 master.err.text);
    cr_assert_eq(worker.status, 0, "worker: status %d\nstderr:\n%s", worker.status,
                 worker.err.text);
    char want[PATH_MAX + 32];
    snprintf(want, sizeof want, "--token-file %s ", token);
    cr_assert_not_null(strstr(worker.out.text, want), "the worker's command lacks '%s':\n%s", want,
                       worker.out.text);
    cr_assert_not_null(strstr(master.out.text, "Replicas agree: yes (2 ranks"),
                       "the master's output:\n%s", master.out.text);
    proc_free(&master);
    proc_free(&worker);
}

Test(start_multi_node, comments_and_blank_lines_in_the_hosts_file_are_ignored) {
    test_port = port_for_test(102);
    char* hosts = tmp_path("hosts");
    // Were the comments read as hosts, node-c.invalid would be the master with 7 slots.
    write_file(hosts,
               "# node-c.invalid slots=7\n"
               "\n"
               "   \t \n"
               "127.0.0.1 slots=1   # the master\n"
               "  # node-d.invalid slots=5\n"
               "127.0.0.1 slots=3\n"
               "\n",
               0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL, NULL};
    char got[LINE_BYTES], want[LINE_BYTES], rest[256];
    Proc r;
    print_command(&r, "master", env);
    snprintf(rest, sizeof rest,
             "--nnodes 2 --node-rank 0 --master-addr 127.0.0.1 --master-port %d "
             "--nproc-per-node 1 --help",
             test_port);
    expected_command(want, sizeof want, rest);
    first_line(got, sizeof got, r.out.text);
    cr_assert_str_eq(got, want, "the master's first line:\n  %s\nexpected:\n  %s", got, want);
    proc_free(&r);

    env[3] = "NODE_RANK=1";
    print_command(&r, "worker", env);
    snprintf(rest, sizeof rest,
             "--nnodes 2 --node-rank 1 --master-addr 127.0.0.1 --master-port %d "
             "--nproc-per-node 3 --help",
             test_port);
    expected_command(want, sizeof want, rest);
    first_line(got, sizeof got, r.out.text);
    cr_assert_str_eq(got, want, "the worker's first line:\n  %s\nexpected:\n  %s", got, want);
    proc_free(&r);
}

Test(start_multi_node, gpus_per_node_overrides_the_slots_of_the_hosts_file) {
    test_port = port_for_test(103);
    char* hosts = tmp_path("hosts");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), "GPUS_PER_NODE=4",
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    Proc r;
    print_command(&r, "master", env);
    char line[LINE_BYTES];
    first_line(line, sizeof line, r.out.text);
    cr_assert_not_null(strstr(line, " --nproc-per-node 4 "), "the command: %s", line);
    cr_assert_null(strstr(line, " --nproc-per-node 1 "), "the command: %s", line);
    proc_free(&r);
}

Test(start_multi_node, master_addr_overrides_the_first_host) {
    test_port = port_for_test(104);
    char* hosts = tmp_path("hosts");
    write_file(hosts, "node-a.invalid slots=1\nnode-b.invalid slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), "MASTER_ADDR=127.0.0.1",
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    Proc r;
    print_command(&r, "master", env);
    char line[LINE_BYTES];
    first_line(line, sizeof line, r.out.text);
    cr_assert_not_null(strstr(line, " --master-addr 127.0.0.1 "), "the command: %s", line);
    cr_assert_null(strstr(line, "node-a.invalid"), "the command: %s", line);
    proc_free(&r);
}

Test(start_multi_node, an_unknown_role_exits_2_with_a_usage_line) {
    const char* env[] = {NULL};
    const char* argv[] = {"./start_multi_node.sh", "boss", NULL};
    Proc r;
    run_script(&r, "boss", env, argv);
    cr_assert_eq(r.status, 2, "status %d, stderr:\n%s", r.status, r.err.text);
    cr_assert_not_null(strstr(r.err.text, "usage:"), "stderr:\n%s", r.err.text);
    cr_assert_not_null(strstr(r.err.text, "master|worker"), "stderr:\n%s", r.err.text);
    cr_assert_str_empty(r.out.text, "it ran something:\n%s", r.out.text);
    proc_free(&r);
}

Test(start_multi_node, a_worker_missing_from_the_hosts_file_without_node_rank_exits_2) {
    test_port = port_for_test(106);
    char* hosts = tmp_path("hosts");
    // Names that cannot be this machine's (RFC 2606): not even a TEST-NET address is safe.
    write_file(hosts, "node-a.invalid slots=1\nnode-b.invalid slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), NULL};
    const char* argv[] = {"./start_multi_node.sh", "worker", TRAIN_FLAGS, NULL};
    Proc r;
    run_script(&r, "worker", env, argv);
    cr_assert_eq(r.status, 2, "status %d, stderr:\n%s", r.status, r.err.text);
    cr_assert_not_null(strstr(r.err.text, hosts), "stderr does not name %s:\n%s", hosts,
                       r.err.text);
    cr_assert_str_empty(r.out.text, "it ran something:\n%s", r.out.text);
    proc_free(&r);
}

Test(start_multi_node, a_bad_line_in_the_hosts_file_exits_2_naming_the_file_and_the_line) {
    test_port = port_for_test(105);
    char* hosts = tmp_path("hosts");
    write_file(hosts, "127.0.0.1 slots=1\nnode_2 slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), "NODE_RANK=1", NULL};
    const char* argv[] = {"./start_multi_node.sh", "worker", TRAIN_FLAGS, NULL};
    Proc r;
    run_script(&r, "worker", env, argv);
    cr_assert_eq(r.status, 2, "status %d, stderr:\n%s", r.status, r.err.text);
    char want[PATH_MAX + 128];
    snprintf(want, sizeof want, "start_multi_node.sh: %s: line 2: host 'node_2' has a character",
             hosts);
    cr_assert_eq(strncmp(r.err.text, want, strlen(want)), 0, "stderr:\n%s\nwant:\n%s...",
                 r.err.text, want);
    cr_assert_str_empty(r.out.text, "it ran something:\n%s", r.out.text);
    proc_free(&r);
}

Test(start_multi_node, a_token_file_is_passed_to_the_program) {
    test_port = port_for_test(107);
    char *hosts = tmp_path("hosts"), *token = tmp_path("token");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    write_file(token, "0123456789abcdef\n", 0600);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", token), NULL};
    Proc r;
    print_command(&r, "master", env);
    char line[LINE_BYTES], want[PATH_MAX + 32];
    first_line(line, sizeof line, r.out.text);
    snprintf(want, sizeof want, " --token-file %s ", token);
    cr_assert_not_null(strstr(line, want), "the command lacks '%s': %s", want, line);
    proc_free(&r);
}

Test(start_multi_node, ddp_token_in_the_environment_replaces_the_token_file) {
    test_port = port_for_test(108);
    char *hosts = tmp_path("hosts"), *token = tmp_path("token");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    write_file(token, "0123456789abcdef\n", 0600);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", token), "DDP_TOKEN=fedcba9876543210", NULL};
    Proc r;
    print_command(&r, "master", env);
    char line[LINE_BYTES];
    first_line(line, sizeof line, r.out.text);
    cr_assert_null(strstr(line, "--token-file"), "the command: %s", line);
    proc_free(&r);
}

Test(start_multi_node, a_job_of_two_nodes_without_a_token_is_refused_and_says_why) {
    test_port = port_for_test(123);
    char* hosts = tmp_path("hosts");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    const char* argv[] = {"./start_multi_node.sh", "master", TRAIN_FLAGS, NULL};
    Proc r;
    run_script(&r, "master", env, argv);
    cr_assert_eq(r.status, 2, "status %d\nstderr:\n%s", r.status, r.err.text);
    cr_assert_not_null(strstr(r.err.text, "error: a job of 2 nodes needs a token, or anyone who "
                                          "can reach 127.0.0.1:"),
                       "the program's refusal is not in stderr:\n%s", r.err.text);
    cr_assert_not_null(strstr(r.err.text, "or --insecure to run without"), "stderr:\n%s",
                       r.err.text);
    cr_assert_null(strstr(r.out.text, "--token-file"), "stdout:\n%s", r.out.text);
    proc_free(&r);
}

Test(start_multi_node, insecure_passes_through_and_two_nodes_without_a_token_train) {
    test_port = port_for_test(124);
    char* hosts = tmp_path("hosts");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL, NULL};
    Proc master, worker;
    run_two_nodes(&master, &worker, env, 3, "--insecure");

    cr_assert_eq(master.status, 0, "master: status %d\nstderr:\n%s", master.status,
                 master.err.text);
    cr_assert_eq(worker.status, 0, "worker: status %d\nstderr:\n%s", worker.status,
                 worker.err.text);
    char line[LINE_BYTES];
    first_line(line, sizeof line, worker.out.text);
    cr_assert_not_null(strstr(line, " --insecure"), "the worker's command: %s", line);
    cr_assert_not_null(strstr(master.err.text, "warning: --insecure: no token"),
                       "the master's stderr:\n%s", master.err.text);
    cr_assert_not_null(strstr(master.out.text, "Replicas agree: yes (2 ranks"),
                       "the master's output:\n%s", master.out.text);
    proc_free(&master);
    proc_free(&worker);
}

Test(start_multi_node, a_hosts_file_that_is_a_fifo_exits_2_at_once_naming_it) {
    test_port = port_for_test(125);
    char* fifo = fifo_path("hosts");
    const char* env[] = {env_var("HOSTS_FILE", fifo), port_var(test_port), "NODE_RANK=1",
                         env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    const char* argv[] = {"./start_multi_node.sh", "worker", TRAIN_FLAGS, NULL};
    Proc r;
    run_start(&r, "worker", env, argv);
    finish_at_once(&r);
    char want[LINE_BYTES];
    snprintf(want, sizeof want,
             "start_multi_node.sh: %s: not a regular file (a FIFO, a device or a directory)\n",
             fifo);
    cr_assert_eq(r.status, 2, "status %d\nstderr:\n%s", r.status, r.err.text);
    cr_assert_str_eq(r.err.text, want, "stderr:\n%s\nexpected:\n%s", r.err.text, want);
    cr_assert_str_empty(r.out.text, "it ran something:\n%s", r.out.text);
    proc_free(&r);
}

Test(start_multi_node, a_token_file_that_is_a_fifo_exits_2_at_once_naming_it) {
    test_port = port_for_test(126);
    char *hosts = tmp_path("hosts"), *fifo = fifo_path("token");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    const char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                         env_var("DDP_TOKEN_FILE", fifo), NULL};
    const char* argv[] = {"./start_multi_node.sh", "master", TRAIN_FLAGS, NULL};
    Proc r;
    run_start(&r, "master", env, argv);
    finish_at_once(&r);
    char want[LINE_BYTES];
    snprintf(want, sizeof want, "--token-file %s: not a regular file", fifo);
    cr_assert_eq(r.status, 2, "status %d\nstderr:\n%s", r.status, r.err.text);
    cr_assert_not_null(strstr(r.err.text, want), "no '%s' in stderr:\n%s", want, r.err.text);
    proc_free(&r);
}

Test(start_multi_node, a_bad_variable_exits_2_naming_it_and_its_range_and_runs_nothing) {
    test_port = port_for_test(127);
    char master_port[16];
    snprintf(master_port, sizeof master_port, "%d", test_port);
    static const struct {
        const char* role;
        BadValue bad;
    } cases[] = {
        {"worker", {"NODE_RANK", "PATH[$(touch %s)]", "an integer in [1, 63] for a worker"}},
        {"worker", {"NODE_RANK", "$(touch %s)1", "an integer in [1, 63] for a worker"}},
        {"worker", {"NODE_RANK", "64", "an integer in [1, 63] for a worker"}},
        {"master", {"NODE_RANK", "1", "0 (or unset) for the master"}},
        {"master", {"NNODES", "PATH[$(touch %s)]", "an integer in [1, 64]"}},
        {"master", {"NNODES", "65", "an integer in [1, 64]"}},
        {"master", {"NNODES", "-2", "an integer in [1, 64]"}},
        {"master", {"MASTER_PORT", "PATH[$(touch %s)]", "an integer in [1, 65535]"}},
        {"master", {"MASTER_PORT", "65536", "an integer in [1, 65535]"}},
        {"master", {"MASTER_PORT", "99999999999999999999", "an integer in [1, 65535]"}},
        {"master", {"GPUS_PER_NODE", "PATH[$(touch %s)]", "an integer in [1, 64]"}},
        {"master", {"GPUS_PER_NODE", "0", "an integer in [1, 64]"}},
        {"master", {"GPUS_PER_NODE", "2 --insecure", "an integer in [1, 64]"}},
        {"master", {"MASTER_ADDR", "$(touch %s)", "a host name or an IPv4 address"}},
        {"master", {"MASTER_ADDR", "-oProxyCommand=touch", "a host name or an IPv4 address"}},
        {"master", {"MASTER_ADDR", "node_2", "a host name or an IPv4 address"}},
        {"master", {"MASTER_ADDR", "127.0.0.1 slots=2", "a host name or an IPv4 address"}},
        {"master",
         {"HOSTS_FILE", "-", "a path (not starting with '-', without control characters)"}},
        {"master",
         {"HOSTS_FILE", "--help", "a path (not starting with '-', without control characters)"}},
        {"master",
         {"DDP_TOKEN_FILE", "--insecure",
          "a path (not starting with '-', without control characters)"}},
        {"master", {"DDP_BUILD", "no-such-build", "a build directory (such as build/asan)"}},
        {"master",
         {"DDP_BUILD", "-$(touch %s)",
          "a path (not starting with '-', without control characters)"}},
    };
    char* hosts = tmp_path("hosts");
    write_file(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    const char* const base[][2] = {{"HOSTS_FILE", hosts},
                                   {"MASTER_PORT", master_port},
                                   {"DDP_TOKEN_FILE", tmp_path("no_token")},
                                   {"DDP_TOKEN", "0123456789abcdef"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const BadValue* bad = &cases[c].bad;
        char marker[128], value[256], vars[5][LINE_BYTES];
        snprintf(marker, sizeof marker, "%s/marker%zu", temp_dir, c);
        bad_value_text(value, sizeof value, bad, marker);
        const char* env[6];
        env_with(env, vars, base, 4, bad->name, value);
        // Were a value not refused, the program would run, and wait for no longer than this.
        const char* argv[] = {"./start_multi_node.sh", cases[c].role, TRAIN_FLAGS,
                              "--rdzv-timeout",        "2",           NULL};
        Proc r;
        run_script(&r, cases[c].role, env, argv);
        expect_refusal(&r, "start_multi_node.sh", bad, value, marker);
        proc_free(&r);
    }
}

// ----------------------------------------------------------------------------
// launch.sh

// Starts `launch.sh --mode multi-node` with master 127.0.0.1, the given workers, one
// worker process per node, port and extra flags (NULL-terminated); token: DDP_TOKEN, or
// NULL for none.
static void launch_start(Proc* r, const char* rsh, const char* workers, int port,
                         const char* const flags[], const char* token) {
    static char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    const char* argv[32] = {"./launch.sh", "--mode",         "multi-node", "--master-node",
                            "127.0.0.1",   "--worker-nodes", workers,      "--gpus-per-node",
                            "1",           "--port",         port_text};
    int argc = 11;
    for (int i = 0; flags[i] != NULL && argc < 31; i++)
        argv[argc++] = flags[i];
    const char* env[] = {env_var("DDP_RSH", rsh), env_var("DDP_TOKEN_FILE", tmp_path("no_token")),
                         token != NULL ? env_var("DDP_TOKEN", token) : NULL, NULL};
    run_start(r, "launch", env, argv);
}

Test(launch, multi_node_on_two_local_nodes_prefixes_every_line_and_agrees) {
    test_port = port_for_test(110);
    const char* flags[] = {TRAIN_FLAGS, NULL};
    Proc r;
    launch_start(&r, "tools/local_rsh.sh", "127.0.0.1", test_port, flags, NULL);
    proc_finish(&r, r.started_at + PROC_DEADLINE_S);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    // both nodes are 127.0.0.1, so launch.sh names them 127.0.0.1#0 and 127.0.0.1#1
    const char* bad = line_without_prefix(r.out.text, "[127.0.0.1#");
    cr_assert_null(bad, "a line of stdout without its node's name: %.*s", (int)strcspn(bad, "\n"),
                   bad);
    bad = line_without_prefix(r.err.text, "[127.0.0.1#");
    cr_assert_null(bad, "a line of stderr without its node's name: %.*s", (int)strcspn(bad, "\n"),
                   bad);
    cr_assert_not_null(strstr(r.out.text, "Replicas agree: yes (2 ranks"), "stdout:\n%s",
                       r.out.text);
    for (int rank = 0; rank < 2; rank++) {
        char want[PATH_MAX + 128];
        snprintf(want, sizeof want, "[127.0.0.1#%d] + %s/%s --nnodes 2 --node-rank %d ", rank, repo,
                 build_program("multi_node"), rank);
        cr_assert_not_null(strstr(r.out.text, want), "no '%s' in stdout:\n%s", want, r.out.text);
    }
    cr_assert_eq(agents_left(test_port, now_seconds(), GONE_WITHIN_S), 0,
                 "agents of port %d still run after the job ended", test_port);
    proc_free(&r);
}

// Whether pid's command line holds the text at arg.
static int command_line_holds(pid_t pid, const void* text) {
    char buf[4096];
    int len = read_pid_file(pid, "cmdline", buf, sizeof buf);
    for (int i = 0; i < len; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    return len > 0 && strstr(buf, text) != NULL;
}

#define SSH_LIKE_RSH "tests/support/ssh_like_rsh.sh"

Test(launch, ddp_token_reaches_every_node_without_showing_on_a_command_line) {
    test_port = port_for_test(111);
    const char* token = "launch-token-5e1f";
    const char* flags[] = {"--epochs", "400", "--data-size", "400", "--device", "cpu", NULL};
    // Like ssh, this remote shell keeps its command line for as long as the node runs.
    Proc r;
    launch_start(&r, SSH_LIKE_RSH, "127.0.0.1", test_port, flags, token);
    // Both nodes train only if both had the token; meanwhile no process shows it.
    cr_assert(proc_wait_for(&r, PROC_STDOUT, "Epoch [", 1, r.started_at + PROC_DEADLINE_S),
              "the job did not train\nstdout:\n%s\nstderr:\n%s", r.out.text, r.err.text);
    pid_t shown[4];
    int count = pids_where(command_line_holds, token, shown, 4);
    cr_assert_eq(count, 0, "the token shows on the command line of pid %d", (int)shown[0]);
    // Not for want of command lines to look at: the remote shells still run, showing theirs.
    char job[32];
    snprintf(job, sizeof job, "MASTER_PORT=%d ", test_port);
    cr_assert_geq(pids_where(command_line_holds, job, shown, 4), 2,
                  "the remote shells of the job were not running");
    proc_finish(&r, r.started_at + PROC_DEADLINE_S);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    cr_assert_null(strstr(r.out.text, "wrong token"), "stdout:\n%s", r.out.text);
    proc_free(&r);
}

Test(launch, a_job_through_an_ssh_like_remote_shell_authenticates_with_the_token_launch_made) {
    test_port = port_for_test(115);
    const char* flags[] = {TRAIN_FLAGS, NULL};
    Proc r;
    launch_start(&r, SSH_LIKE_RSH, "127.0.0.1", test_port, flags, NULL);
    proc_finish(&r, r.started_at + PROC_DEADLINE_S);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    cr_assert_not_null(strstr(r.out.text, "Replicas agree: yes (2 ranks"), "stdout:\n%s",
                       r.out.text);
    // The clean environment passes no token; had stdin not brought it, a node would use a
    // token file (--token-file on its command line) or none.
    for (int rank = 0; rank < 2; rank++) {
        char want[PATH_MAX + 128];
        snprintf(want, sizeof want, "[127.0.0.1#%d] + %s/%s --nnodes 2 --node-rank %d ", rank, repo,
                 build_program("multi_node"), rank);
        const char* line = strstr(r.out.text, want);
        cr_assert_not_null(line, "no '%s' in stdout:\n%s", want, r.out.text);
        cr_assert_null(strstr(line, "--token-file"), "node %d had no token on stdin: %.*s", rank,
                       (int)strcspn(line, "\n"), line);
    }
    const char* outputs[] = {r.out.text, r.err.text};
    for (int i = 0; i < 2; i++) {
        cr_assert_null(strstr(outputs[i], "wrong token"), "%s", outputs[i]);
        cr_assert_null(strstr(outputs[i], "needs a token"), "%s", outputs[i]);
    }
    proc_free(&r);
}

Test(launch, flags_with_blanks_quotes_dollars_backslashes_and_newlines_reach_the_program_intact) {
    test_port = port_for_test(116);
    // Every character that a shell reads as more than itself. --out takes neither ' nor a
    // newline (gnuplot's script quotes it); --checkpoint-dir takes both.
    char* out = tmp_path("out \"dq\" $HOME ${x:-y} `id` $(id) \\ \\n * ? [a] ; & | < > ~ #");
    char* checkpoints = tmp_path("ck 'sq' '\\'' \"\n$(id)\n\t`id` \\");
    const char* flags[] = {TRAIN_FLAGS, "--out", out, "--checkpoint-dir", checkpoints, NULL};
    Proc r;
    launch_start(&r, SSH_LIKE_RSH, "127.0.0.1", test_port, flags, NULL);
    proc_finish(&r, r.started_at + PROC_DEADLINE_S);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    char want[LINE_BYTES];
    snprintf(want, sizeof want, " --out %s --checkpoint-dir ", out);
    cr_assert_not_null(strstr(r.out.text, want), "no '%s' in stdout:\n%s", want, r.out.text);
    char path[LINE_BYTES];
    snprintf(path, sizeof path, "%s/losses.csv", out);
    cr_assert_eq(access(path, F_OK), 0, "no %s: %s\nstdout:\n%s", path, strerror(errno),
                 r.out.text);
    snprintf(path, sizeof path, "%s/checkpoint.bin", checkpoints);
    cr_assert_eq(access(path, F_OK), 0, "no %s: %s\nstdout:\n%s", path, strerror(errno),
                 r.out.text);
    proc_free(&r);
}

Test(launch, single_node_runs_every_gpu_worker_on_this_machine) {
    const char* argv[] = {"./launch.sh", "--mode", "single-node", "--gpus", "2", TRAIN_FLAGS, NULL};
    const char* env[] = {NULL};
    Proc r;
    run_script(&r, "launch", env, argv);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    cr_assert_not_null(strstr(r.out.text, "Replicas agree: yes (2 ranks"), "stdout:\n%s",
                       r.out.text);
    proc_free(&r);
}

Test(launch, a_node_that_fails_is_named_and_every_other_node_is_stopped) {
    test_port = port_for_test(112);
    // A remote shell that cannot start node 1: as if ssh to it failed.
    char* rsh = tmp_path("failing_rsh.sh");
    write_file(rsh,
               "#!/bin/sh\n"
               "shift\n"
               "case \"$*\" in *NODE_RANK=1*) exit 3 ;; esac\n"
               "exec sh -c \"$*\"\n",
               0755);
    const char* flags[] = {"--epochs", "100000", "--data-size", "200", "--device", "cpu", NULL};
    Proc r;
    launch_start(&r, rsh, "localhost", test_port, flags, NULL);
    proc_finish(&r, r.started_at + PROC_DEADLINE_S);
    cr_assert(r.status != 0 && r.status != -1, "status %d\nstderr:\n%s", r.status, r.err.text);
    cr_assert_not_null(strstr(r.err.text, "node localhost failed with status 3"), "stderr:\n%s",
                       r.err.text);
    int left = agents_left(test_port, r.exited_at, STOP_WITHIN_S);
    cr_assert_eq(left, 0,
                 "%d multi_node process(es) of port %d still run %.0f s after launch.sh "
                 "exited; stderr:\n%s",
                 left, test_port, STOP_WITHIN_S, r.err.text);
    proc_free(&r);
}

Test(launch, a_bad_training_flag_fails_the_nodes_and_launch_exits_with_their_status) {
    test_port = port_for_test(113);
    const char* flags[] = {"--epochs", "0", "--device", "cpu", NULL};
    Proc r;
    launch_start(&r, "tools/local_rsh.sh", "localhost", test_port, flags, NULL);
    proc_finish(&r, r.started_at + PROC_DEADLINE_S);
    cr_assert_not_null(strstr(r.out.text, "--epochs must be"), "stdout:\n%s", r.out.text);
    cr_assert_not_null(strstr(r.err.text, "failed with status 2"), "stderr:\n%s", r.err.text);
    cr_assert(strstr(r.err.text, "node 127.0.0.1 failed") ||
                  strstr(r.err.text, "node localhost failed"),
              "no node named, stderr:\n%s", r.err.text);
    cr_assert_null(strstr(r.err.text, "./launch.sh: line "), "bash errors in stderr:\n%s",
                   r.err.text);
    cr_assert_eq(r.status, 2, "launch.sh exited %d, not its nodes' 2; stderr:\n%s", r.status,
                 r.err.text);
    cr_assert_eq(agents_left(test_port, now_seconds(), GONE_WITHIN_S), 0,
                 "agents of port %d still run", test_port);
    proc_free(&r);
}

Test(launch, ctrl_c_stops_every_node_and_exits_non_zero) {
    test_port = port_for_test(114);
    const char* flags[] = {"--epochs", "100000", "--data-size", "200", "--device", "cpu", NULL};
    Proc r;
    launch_start(&r, "tools/local_rsh.sh", "127.0.0.1", test_port, flags, NULL);
    // Step 1) wait until both nodes train: an epoch line and both ranks initialized.
    double until = now_seconds() + 30;
    proc_wait_for(&r, PROC_STDOUT, "Epoch [", 1, until);
    proc_wait_for(&r, PROC_STDOUT, "[Rank 1] ", 1, until);
    cr_assert_not_null(strstr(r.out.text, "Epoch ["), "the job did not start training:\n%s",
                       r.out.text);
    // Step 2) Ctrl-C: SIGINT to launch.sh alone, as a remote node would never see it.
    double interrupted = now_seconds();
    cr_assert_eq(kill(r.pid, SIGINT), 0, "kill: %s", strerror(errno));
    proc_finish(&r, interrupted + STOP_WITHIN_S);
    cr_assert_neq(r.status, -1, "launch.sh still ran %.0f s after SIGINT", STOP_WITHIN_S);
    cr_assert_neq(r.status, 0, "launch.sh exited 0 after SIGINT");
    cr_assert_not_null(strstr(r.err.text, "interrupted"), "stderr:\n%s", r.err.text);
    int left = agents_left(test_port, interrupted, STOP_WITHIN_S);
    cr_assert_eq(left, 0,
                 "%d multi_node process(es) of port %d still run %.0f s after SIGINT "
                 "(launch.sh exited %d %.1f s after it)",
                 left, test_port, STOP_WITHIN_S, r.status, r.exited_at - interrupted);
    proc_free(&r);
}

// Runs launch.sh with argv[1...] and expects status 2 and a message with words.
static void expect_usage_error(const char* const argv[], const char* words) {
    const char* env[] = {"DDP_RSH=/bin/false", NULL};
    Proc r;
    run_script(&r, "launch", env, argv);
    cr_assert_eq(r.status, 2, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    cr_assert_not_null(strstr(r.err.text, words), "no '%s' in stderr:\n%s", words, r.err.text);
    proc_free(&r);
}

Test(launch, an_unknown_mode_exits_2) {
    const char* argv[] = {"./launch.sh", "--mode", "foo", NULL};
    expect_usage_error(argv, "--mode must be");
}

Test(launch, multi_node_without_worker_nodes_exits_2) {
    const char* argv[] = {"./launch.sh",   "--mode",    "multi-node",
                          "--master-node", "127.0.0.1", NULL};
    expect_usage_error(argv, "--worker-nodes");
}

Test(launch, a_worker_that_is_not_a_host_name_exits_2_before_any_node_starts) {
    const char* argv[] = {"./launch.sh",
                          "--mode",
                          "multi-node",
                          "--master-node",
                          "127.0.0.1",
                          "--worker-nodes",
                          "node2,-oProxyCommand=x",
                          NULL};
    expect_usage_error(argv, "--worker-nodes: host '-oProxyCommand=x' has a character");
}

Test(launch, a_node_given_twice_exits_2) {
    const char* argv[] = {"./launch.sh", "--mode",         "multi-node",  "--master-node",
                          "node1",       "--worker-nodes", "node2,NODE1", NULL};
    expect_usage_error(argv, "--worker-nodes: host 'NODE1' is listed twice");
}

Test(launch, an_empty_worker_name_exits_2) {
    const char* argv[] = {"./launch.sh", "--mode",         "multi-node",   "--master-node",
                          "127.0.0.1",   "--worker-nodes", "node2,,node3", NULL};
    expect_usage_error(argv, "take host names");
}

Test(launch, a_port_above_65535_exits_2) {
    const char* argv[] = {"./launch.sh",    "--mode",    "multi-node", "--master-node", "127.0.0.1",
                          "--worker-nodes", "127.0.0.1", "--port",     "70000",         NULL};
    expect_usage_error(argv, "--port must be");
}

Test(launch, a_bad_flag_or_variable_exits_2_naming_it_and_its_range_before_any_node_starts) {
    // A flag (--NAME) or a variable; a value of --gpus goes to --mode single-node.
    static const BadValue cases[] = {
        {"--gpus-per-node", "PATH[$(touch %s)]", "an integer in [1, 64]"},
        {"--gpus-per-node", "0", "an integer in [1, 64]"},
        {"--gpus-per-node", "1 --insecure", "an integer in [1, 64]"},
        {"--gpus", "PATH[$(touch %s)]", "an integer in [1, 64]"},
        {"--gpus", "65", "an integer in [1, 64]"},
        {"--port", "PATH[$(touch %s)]", "in [1, 65535]"},
        {"--port", "99999999999999999999", "in [1, 65535]"},
        {"DDP_BUILD", "no-such-build", "a build directory (such as build/asan)"},
        {"DDP_BUILD", "-$(touch %s)", "a path (not starting with '-', without control characters)"},
    };
    // Were a check missing, this remote shell would fail every node with status 1.
    const char* const base[][2] = {{"DDP_RSH", "/bin/false"},
                                   {"DDP_TOKEN_FILE", tmp_path("no_token")}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const BadValue* bad = &cases[c];
        char marker[128], value[256], vars[3][LINE_BYTES];
        snprintf(marker, sizeof marker, "%s/marker%zu", temp_dir, c);
        bad_value_text(value, sizeof value, bad, marker);
        const char* env[4];
        int is_flag = strncmp(bad->name, "--", 2) == 0;
        env_with(env, vars, base, 2, is_flag ? "DDP_TOKEN" : bad->name,
                 is_flag ? "0123456789abcdef" : value);
        const char* argv[16] = {"./launch.sh", "--mode",         "multi-node", "--master-node",
                                "127.0.0.1",   "--worker-nodes", "127.0.0.1"};
        int argc = 7;
        if (strcmp(bad->name, "--gpus") == 0) {
            argv[2] = "single-node";
            argc = 3;
        }
        if (is_flag) {
            argv[argc++] = bad->name;
            argv[argc++] = value;
        }
        const char* flags[] = {TRAIN_FLAGS, NULL};
        for (int i = 0; flags[i] != NULL; i++)
            argv[argc++] = flags[i];
        argv[argc] = NULL;
        Proc r;
        run_script(&r, "launch", env, argv);
        expect_refusal(&r, "launch.sh", bad, value, marker);
        proc_free(&r);
    }
}

Test(launch, gpus_in_a_multi_node_job_exits_2_naming_gpus_per_node) {
    const char* argv[] = {"./launch.sh", "--mode",
                          "multi-node",  "--master-node",
                          "127.0.0.1",   "--worker-nodes",
                          "127.0.0.1",   "--gpus",
                          "2",           NULL};
    expect_usage_error(argv, "--gpus is for --mode single-node; a multi-node job takes "
                             "--gpus-per-node");
}

Test(launch, a_token_of_two_lines_exits_2_before_any_node_starts_and_is_not_shown) {
    const char* env[] = {"DDP_RSH=/bin/false", "DDP_TOKEN=first-line\nsecond-line", NULL};
    const char* argv[] = {"./launch.sh", "--mode",         "multi-node", "--master-node",
                          "127.0.0.1",   "--worker-nodes", "127.0.0.1",  NULL};
    Proc r;
    run_script(&r, "launch", env, argv);
    cr_assert_eq(r.status, 2, "status %d\nstderr:\n%s", r.status, r.err.text);
    cr_assert_str_eq(r.err.text,
                     "launch.sh: DDP_TOKEN must be one line of at most 64 characters\n");
    cr_assert_str_empty(r.out.text, "stdout:\n%s", r.out.text);
    proc_free(&r);
}

// ----------------------------------------------------------------------------
// setup.sh --multi-node

#define SETUP_HOSTS "# the master\n127.0.0.1 slots=1\n"

// Runs setup.sh --multi-node on a hosts file of hosts_text, token at token, port port.
static void run_setup(Proc* r, const char* name, const char* hosts_text, const char* rsh,
                      const char* token, int port) {
    char* hosts = tmp_path("hosts");
    write_file(hosts, hosts_text, 0644);
    const char* env[] = {env_var("DDP_RSH", rsh), env_var("HOSTS_FILE", hosts),
                         env_var("DDP_TOKEN_FILE", token), port_var(port), NULL};
    const char* argv[] = {"./setup.sh", "--multi-node", NULL};
    run_script(r, name, env, argv);
    if (strstr(r->out.text, "packages: missing") != NULL)
        cr_skip_test("setup.sh stops at missing packages before --multi-node:\n%s", r->out.text);
}

Test(setup, multi_node_creates_a_private_token_and_finds_the_host_reachable) {
    test_port = port_for_test(118);
    char* token = tmp_path("token");
    Proc r;
    run_setup(&r, "setup", SETUP_HOSTS, "tools/local_rsh.sh", token, test_port);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out.text,
                 r.err.text);
    struct stat st;
    cr_assert_eq(stat(token, &st), 0, "no token at %s: %s", token, strerror(errno));
    cr_assert_eq(st.st_mode & 0777, 0600, "token mode %o, expected 600", st.st_mode & 0777);
    char* text = read_file(token, NULL);
    cr_assert_eq(strlen(text), 48, "token '%s': expected 48 hex digits", text);
    cr_assert_eq(strspn(text, "0123456789abcdef"), 48, "token '%s': expected hex digits", text);
    cr_assert_not_null(strstr(r.out.text, "token: created"), "stdout:\n%s", r.out.text);
    cr_assert_not_null(strstr(r.out.text, "127.0.0.1: reachable"), "stdout:\n%s", r.out.text);
    proc_free(&r);
    free(text);
}

Test(setup, multi_node_run_again_keeps_the_token) {
    test_port = port_for_test(119);
    char* token = tmp_path("token");
    Proc first, again;
    run_setup(&first, "first", SETUP_HOSTS, "tools/local_rsh.sh", token, test_port);
    cr_assert_eq(first.status, 0, "first run: status %d\nstdout:\n%s", first.status,
                 first.out.text);
    char* before = read_file(token, NULL);
    run_setup(&again, "again", SETUP_HOSTS, "tools/local_rsh.sh", token, test_port);
    cr_assert_eq(again.status, 0, "second run: status %d\nstdout:\n%s", again.status,
                 again.out.text);
    char want[PATH_MAX + 32];
    snprintf(want, sizeof want, "token: %s exists", token);
    cr_assert_not_null(strstr(again.out.text, want), "no '%s' in stdout:\n%s", want,
                       again.out.text);
    char* after = read_file(token, NULL);
    cr_assert_str_eq(after, before, "the token changed");
    proc_free(&first);
    proc_free(&again);
    free(before);
    free(after);
}

Test(setup, multi_node_reports_a_port_in_use_and_fails) {
    test_port = port_for_test(120);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)test_port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr*)&addr, sizeof addr), 0, "bind port %d: %s", test_port,
                 strerror(errno));
    cr_assert_eq(listen(fd, 1), 0, "listen: %s", strerror(errno));
    Proc r;
    run_setup(&r, "setup", SETUP_HOSTS, "tools/local_rsh.sh", tmp_path("token"), test_port);
    close(fd);
    char want[64];
    snprintf(want, sizeof want, "port: %d is in use", test_port);
    cr_assert_not_null(strstr(r.out.text, want), "no '%s' in stdout:\n%s", want, r.out.text);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with port %d in use", test_port);
    proc_free(&r);
}

Test(setup, multi_node_reports_a_host_it_cannot_reach_and_fails) {
    test_port = port_for_test(121);
    Proc r;
    run_setup(&r, "setup", SETUP_HOSTS, "/bin/false", tmp_path("token"), test_port);
    cr_assert_not_null(strstr(r.out.text, "127.0.0.1: cannot run commands there"), "stdout:\n%s",
                       r.out.text);
    cr_assert_null(strstr(r.out.text, "multi-node: ready"), "stdout:\n%s", r.out.text);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with a host it cannot reach");
    proc_free(&r);
}

Test(setup, multi_node_reports_a_bad_hosts_file_and_fails) {
    test_port = port_for_test(122);
    Proc r;
    run_setup(&r, "setup", "127.0.0.1 slots=100\n", "tools/local_rsh.sh", tmp_path("token"),
              test_port);
    cr_assert_not_null(strstr(r.out.text, ": line 1: slots must be an integer in [1, 64]"),
                       "stdout:\n%s", r.out.text);
    cr_assert_null(strstr(r.out.text, "multi-node: ready"), "stdout:\n%s", r.out.text);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with a bad hosts file");
    proc_free(&r);
}

Test(setup, multi_node_refuses_a_token_path_that_is_a_fifo_at_once) {
    test_port = port_for_test(128);
    char* fifo = fifo_path("token");
    char* hosts = tmp_path("hosts");
    write_file(hosts, SETUP_HOSTS, 0644);
    const char* env[] = {"DDP_RSH=tools/local_rsh.sh", env_var("HOSTS_FILE", hosts),
                         env_var("DDP_TOKEN_FILE", fifo), port_var(test_port), NULL};
    const char* argv[] = {"./setup.sh", "--multi-node", NULL};
    Proc r;
    run_start(&r, "setup", env, argv);
    finish_at_once(&r);
    if (strstr(r.out.text, "packages: missing") != NULL)
        cr_skip_test("setup.sh stops at missing packages before --multi-node:\n%s", r.out.text);
    char want[LINE_BYTES];
    snprintf(want, sizeof want, "token: %s is not a regular file", fifo);
    cr_assert_not_null(strstr(r.out.text, want), "no '%s' in stdout:\n%s", want, r.out.text);
    cr_assert_null(strstr(r.out.text, "multi-node: ready"), "stdout:\n%s", r.out.text);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with a FIFO for a token file");
    proc_free(&r);
}

Test(setup, multi_node_refuses_a_hosts_file_that_is_a_fifo_at_once) {
    test_port = port_for_test(129);
    char* fifo = fifo_path("hosts");
    const char* env[] = {"DDP_RSH=tools/local_rsh.sh", env_var("HOSTS_FILE", fifo),
                         env_var("DDP_TOKEN_FILE", tmp_path("token")), port_var(test_port), NULL};
    const char* argv[] = {"./setup.sh", "--multi-node", NULL};
    Proc r;
    run_start(&r, "setup", env, argv);
    finish_at_once(&r);
    if (strstr(r.out.text, "packages: missing") != NULL)
        cr_skip_test("setup.sh stops at missing packages before --multi-node:\n%s", r.out.text);
    char want[LINE_BYTES];
    snprintf(want, sizeof want, "hosts: %s: not a regular file (a FIFO, a device or a directory)",
             fifo);
    cr_assert_not_null(strstr(r.out.text, want), "no '%s' in stdout:\n%s", want, r.out.text);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with a FIFO for a hosts file");
    proc_free(&r);
}

Test(setup, multi_node_refuses_a_bad_variable_before_anything_runs) {
    test_port = port_for_test(130);
    char master_port[16];
    snprintf(master_port, sizeof master_port, "%d", test_port);
    static const BadValue cases[] = {
        {"MASTER_PORT", "PATH[$(touch %s)]", "an integer in [1, 65535]"},
        {"MASTER_PORT", "0", "an integer in [1, 65535]"},
        {"MASTER_PORT", "29500 -o x", "an integer in [1, 65535]"},
        {"HOSTS_FILE", "-", "a path (not starting with '-', without control characters)"},
        {"DDP_TOKEN_FILE", "-$(touch %s)",
         "a path (not starting with '-', without control characters)"},
        {"DDP_BUILD", "no-such-build", "a build directory (such as build/asan)"},
    };
    char* hosts = tmp_path("hosts");
    write_file(hosts, SETUP_HOSTS, 0644);
    const char* const base[][2] = {{"DDP_RSH", "tools/local_rsh.sh"},
                                   {"HOSTS_FILE", hosts},
                                   {"DDP_TOKEN_FILE", tmp_path("token")},
                                   {"MASTER_PORT", master_port}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char marker[128], value[256], vars[5][LINE_BYTES];
        snprintf(marker, sizeof marker, "%s/marker%zu", temp_dir, c);
        bad_value_text(value, sizeof value, &cases[c], marker);
        const char* env[6];
        env_with(env, vars, base, 4, cases[c].name, value);
        const char* argv[] = {"./setup.sh", "--multi-node", NULL};
        Proc r;
        run_script(&r, "setup", env, argv);
        expect_refusal(&r, "setup.sh", &cases[c], value, marker);
        proc_free(&r);
    }
}
