/*
 * test_scripts.c - the scripts that start jobs: start_multi_node.sh, launch.sh and
 * setup.sh --multi-node.
 *
 * Each test runs a script as a child process in a process group of its own, from the
 * repository root (where `make test` runs the suite), its stdout and stderr going to
 * files in the test's temporary directory, under a hard deadline after which the
 * whole group is killed. The nodes of a job are agents on this machine that meet at
 * 127.0.0.1, with tools/local_rsh.sh standing in for ssh. Criterion runs the tests in
 * parallel, so each owns a port in 29800-29899 and finds what it left behind in /proc
 * by that port: a build/multi_node whose command line has `--master-port PORT`. The
 * .fini kills whatever a failed test left. Needs `make NO_CUDA=1` (or `make`) first.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_S 60.0    // a script still running after this is killed with its group
#define STOP_WITHIN_S 15.0 // launch.sh stops every node within this after a failure or Ctrl-C
#define GONE_WITHIN_S 5.0  // agents of a job that ended are gone within this
#define MAX_GROUPS 8       // process groups one test starts
#define LINE_BYTES (PATH_MAX + 1024) // a line of output that names a path

// ----------------------------------------------------------------------------
// helpers: child processes

typedef struct {
    pid_t pid;               // leader of its own process group
    double started;          // monotonic seconds
    int status;              // exit status, 128 + signal, or -1 when killed at the deadline
    double seconds;          // how long it ran
    char out_path[PATH_MAX]; // where its stdout goes
    char err_path[PATH_MAX]; // where its stderr goes
    char* out;               // its stdout once it ended, NUL-terminated (malloc)
    char* err;               // its stderr
} Run;

static char tmp_dir[] = "/tmp/test_scripts.XXXXXX";
static char repo[PATH_MAX];      // the repository root: the current directory
static pid_t groups[MAX_GROUPS]; // for end_leftovers
static int group_count;
static int test_port; // this test's port, for end_leftovers

// The variables the scripts read; a child starts without them, then gets the test's.
static const char* const SCRIPT_VARS[] = {
    "HOSTS_FILE",    "MASTER_ADDR", "MASTER_PORT",    "NNODES",  "NODE_RANK",
    "GPUS_PER_NODE", "DDP_TOKEN",   "DDP_TOKEN_FILE", "DDP_RSH", NULL};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static char* read_text(const char* path) {
    FILE* f = fopen(path, "r");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char* text = malloc((size_t)size + 1);
    cr_assert_not_null(text);
    size_t n = fread(text, 1, (size_t)size, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static void write_text(const char* path, const char* text, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert_geq(fd, 0, "create %s: %s", path, strerror(errno));
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len, "write %s: %s", path, strerror(errno));
    close(fd);
}

// The child's side of run_start: its own group, default signals, the test's variables.
static void exec_child(int out_fd, int err_fd, char* const env[], char* const argv[]) {
    setpgid(0, 0);
    int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    // A signal ignored at exec stays ignored, and bash cannot trap it again.
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; SCRIPT_VARS[i] != NULL; i++)
        unsetenv(SCRIPT_VARS[i]);
    for (int i = 0; env != NULL && env[i] != NULL; i++)
        putenv(env[i]);
    execv(argv[0], argv);
    dprintf(err_fd, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

// Starts argv[0] (a path) in its own process group; name names its output files.
static void run_start(Run* r, const char* name, char* const env[], char* const argv[]) {
    memset(r, 0, sizeof *r);
    snprintf(r->out_path, sizeof r->out_path, "%s/%s.out", tmp_dir, name);
    snprintf(r->err_path, sizeof r->err_path, "%s/%s.err", tmp_dir, name);
    int out_fd = open(r->out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err_fd = open(r->err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(out_fd >= 0 && err_fd >= 0, "create %s: %s", r->out_path, strerror(errno));
    cr_assert_lt(group_count, MAX_GROUPS);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0)
        exec_child(out_fd, err_fd, env, argv);
    setpgid(pid, pid); // here too, so that the group exists before anyone signals it
    groups[group_count++] = pid;
    close(out_fd);
    close(err_fd);
    r->pid = pid;
    r->started = now_s();
}

// Waits for the child until deadline_s after its start, then kills its whole group.
static void run_wait(Run* r, double deadline_s) {
    int st = 0;
    for (;;) {
        pid_t p = waitpid(r->pid, &st, WNOHANG);
        if (p == r->pid) {
            r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            break;
        }
        if (now_s() - r->started > deadline_s) {
            killpg(r->pid, SIGKILL);
            waitpid(r->pid, &st, 0);
            r->status = -1;
            break;
        }
        usleep(10000);
    }
    r->seconds = now_s() - r->started;
    r->out = read_text(r->out_path);
    r->err = read_text(r->err_path);
}

static void run_script(Run* r, const char* name, char* const env[], char* const argv[]) {
    run_start(r, name, env, argv);
    run_wait(r, DEADLINE_S);
    cr_assert_neq(r->status, -1, "%s ran past the %.0f s deadline; stdout:\n%s\nstderr:\n%s",
                  argv[0], DEADLINE_S, r->out, r->err);
}

// ----------------------------------------------------------------------------
// helpers: what a job left behind, found in /proc

// Whether pid is a build/multi_node, not a zombie, whose command line has --master-port port.
static bool is_agent_of_port(pid_t pid, int port) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE* f = fopen(path, "r");
    if (f == NULL)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char* paren = strrchr(buf, ')');
    if (paren == NULL || paren[1] == '\0' || paren[2] == 'Z' || paren[2] == 'X')
        return false;
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return false;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char* base = strrchr(buf, '/');
    if (strcmp(base != NULL ? base + 1 : buf, "multi_node") != 0)
        return false;
    char want[16];
    snprintf(want, sizeof want, "%d", port);
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (strcmp(buf + i, "--master-port") == 0 && i + 14 < n && strcmp(buf + i + 14, want) == 0)
            return true;
    return false;
}

// Counts the agents of port now running; their pids go to pids (up to max).
static int agents_of_port(int port, pid_t* pids, int max) {
    DIR* d = opendir("/proc");
    cr_assert_not_null(d, "opendir /proc: %s", strerror(errno));
    int count = 0;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid > 0 && is_agent_of_port(pid, port)) {
            if (count < max)
                pids[count] = pid;
            count++;
        }
    }
    closedir(d);
    return count;
}

// Polls until no agent of port runs or until seconds after since; returns how many run.
static int agents_left(int port, double since, double seconds) {
    pid_t pids[1];
    int count;
    while ((count = agents_of_port(port, pids, 1)) > 0 && now_s() - since < seconds)
        usleep(100000);
    return count;
}

// ----------------------------------------------------------------------------
// helpers: setup and teardown, text

// .init; the checks come first, as no .fini follows a failed .init.
static void make_tmp_dir(void) {
    cr_assert_not_null(getcwd(repo, sizeof repo));
    cr_assert(access("start_multi_node.sh", X_OK) == 0 && access("build/multi_node", X_OK) == 0 &&
                  access("build/multi_gpu", X_OK) == 0,
              "run from the repository root after `make NO_CUDA=1` (cwd: %s)", repo);
    cr_assert_not_null(mkdtemp(tmp_dir), "mkdtemp: %s", strerror(errno));
}

// .fini: kills every group the test started and any agent of its port, then removes tmp_dir.
static void end_leftovers(void) {
    for (int i = 0; i < group_count; i++) {
        killpg(groups[i], SIGKILL);
        waitpid(groups[i], NULL, WNOHANG);
    }
    pid_t pids[64];
    int count = test_port > 0 ? agents_of_port(test_port, pids, 64) : 0;
    for (int i = 0; i < count && i < 64; i++)
        kill(pids[i], SIGKILL);
    DIR* d = opendir(tmp_dir);
    struct dirent* e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", tmp_dir, e->d_name);
        if (e->d_name[0] != '.')
            unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(tmp_dir);
}

TestSuite(start_multi_node, .init = make_tmp_dir, .fini = end_leftovers, .timeout = 120);
TestSuite(launch, .init = make_tmp_dir, .fini = end_leftovers, .timeout = 120);
TestSuite(setup, .init = make_tmp_dir, .fini = end_leftovers, .timeout = 120);

// A path in the test's temporary directory (malloc; the test process ends soon).
static char* tmp_path(const char* name) {
    char* path = malloc(PATH_MAX);
    cr_assert_not_null(path);
    snprintf(path, PATH_MAX, "%s/%s", tmp_dir, name);
    return path;
}

// "NAME=VALUE" (malloc), for a child's environment.
static char* env_var(const char* name, const char* value) {
    char* s = malloc(strlen(name) + strlen(value) + 2);
    cr_assert_not_null(s);
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

// The command start_multi_node.sh must print: "+ REPO/build/multi_node " then rest.
static void expected_command(char* line, size_t len, const char* rest) {
    snprintf(line, len, "+ %s/build/multi_node %s", repo, rest);
}

// Runs `start_multi_node.sh ROLE --help` with env: the command it would run, not a job.
static void print_command(Run* r, const char* role, char* const env[]) {
    char* argv[] = {"./start_multi_node.sh", (char*)role, "--help", NULL};
    run_script(r, role, env, argv);
    cr_assert_eq(r->status, 0, "start_multi_node.sh %s --help: status %d\nstderr:\n%s", role,
                 r->status, r->err);
    cr_assert_not_null(strstr(r->out, "usage: multi_node"), "the program did not run:\n%s", r->out);
}

// ----------------------------------------------------------------------------
// start_multi_node.sh

#define TRAIN_FLAGS "--epochs", "2", "--data-size", "400", "--device", "cpu"
#define TRAIN_FLAGS_TEXT "--epochs 2 --data-size 400 --device cpu"

// Starts the master and a worker (NODE_RANK=1) of a two-node job with the same env
// (then NODE_RANK), and waits for both.
static void run_two_nodes(Run* master, Run* worker, char** env, int env_count) {
    char* master_argv[] = {"./start_multi_node.sh", "master", TRAIN_FLAGS, NULL};
    char* worker_argv[] = {"./start_multi_node.sh", "worker", TRAIN_FLAGS, NULL};
    run_start(master, "master", env, master_argv);
    env[env_count] = "NODE_RANK=1";
    run_start(worker, "worker", env, worker_argv);
    env[env_count] = NULL;
    run_wait(worker, DEADLINE_S);
    run_wait(master, DEADLINE_S);
}

Test(start_multi_node, two_nodes_from_a_hosts_file_train_together_and_agree) {
    test_port = 29801;
    char* hosts = tmp_path("hosts");
    write_text(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                   env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL, NULL};
    Run master, worker;
    run_two_nodes(&master, &worker, env, 3);

    cr_assert_eq(master.status, 0, "master: status %d\nstdout:\n%s\nstderr:\n%s", master.status,
                 master.out, master.err);
    cr_assert_eq(worker.status, 0, "worker: status %d\nstdout:\n%s\nstderr:\n%s", worker.status,
                 worker.out, worker.err);
    char got[LINE_BYTES], want[LINE_BYTES];
    for (int rank = 0; rank < 2; rank++) {
        Run* node = rank == 0 ? &master : &worker;
        char rest[256];
        snprintf(rest, sizeof rest,
                 "--nnodes 2 --node-rank %d --master-addr 127.0.0.1 --master-port %d "
                 "--nproc-per-node 1 " TRAIN_FLAGS_TEXT,
                 rank, test_port);
        expected_command(want, sizeof want, rest);
        first_line(got, sizeof got, node->out);
        cr_assert_str_eq(got, want, "node %d's first line:\n  %s\nexpected:\n  %s", rank, got,
                         want);
    }
    cr_assert_not_null(strstr(master.out, "Replicas agree: yes (2 ranks"),
                       "the master's output:\n%s", master.out);
    cr_assert_eq(agents_left(test_port, now_s(), GONE_WITHIN_S), 0,
                 "agents of port %d still run after the job ended", test_port);
}

Test(start_multi_node, nodes_that_share_a_token_file_train_together) {
    test_port = 29809;
    char *hosts = tmp_path("hosts"), *token = tmp_path("token");
    write_text(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    write_text(token, "0123456789abcdef\n", 0600);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                   env_var("DDP_TOKEN_FILE", token), NULL, NULL};
    Run master, worker;
    run_two_nodes(&master, &worker, env, 3);

    cr_assert_eq(master.status, 0, "master: status %d\nstderr:\n%s", master.status, master.err);
    cr_assert_eq(worker.status, 0, "worker: status %d\nstderr:\n%s", worker.status, worker.err);
    char want[PATH_MAX + 32];
    snprintf(want, sizeof want, "--token-file %s ", token);
    cr_assert_not_null(strstr(worker.out, want), "the worker's command lacks '%s':\n%s", want,
                       worker.out);
    cr_assert_not_null(strstr(master.out, "Replicas agree: yes (2 ranks"),
                       "the master's output:\n%s", master.out);
}

Test(start_multi_node, comments_and_blank_lines_in_the_hosts_file_are_ignored) {
    test_port = 29802;
    char* hosts = tmp_path("hosts");
    // Were the comments read as hosts, node-c.invalid would be the master with 7 slots.
    write_text(hosts,
               "# node-c.invalid slots=7\n"
               "\n"
               "   \t \n"
               "127.0.0.1 slots=1   # the master\n"
               "  # node-d.invalid slots=5\n"
               "127.0.0.1 slots=3\n"
               "\n",
               0644);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                   env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL, NULL};
    char got[LINE_BYTES], want[LINE_BYTES], rest[256];
    Run r;
    print_command(&r, "master", env);
    snprintf(rest, sizeof rest,
             "--nnodes 2 --node-rank 0 --master-addr 127.0.0.1 --master-port %d "
             "--nproc-per-node 1 --help",
             test_port);
    expected_command(want, sizeof want, rest);
    first_line(got, sizeof got, r.out);
    cr_assert_str_eq(got, want, "the master's first line:\n  %s\nexpected:\n  %s", got, want);

    env[3] = "NODE_RANK=1";
    print_command(&r, "worker", env);
    snprintf(rest, sizeof rest,
             "--nnodes 2 --node-rank 1 --master-addr 127.0.0.1 --master-port %d "
             "--nproc-per-node 3 --help",
             test_port);
    expected_command(want, sizeof want, rest);
    first_line(got, sizeof got, r.out);
    cr_assert_str_eq(got, want, "the worker's first line:\n  %s\nexpected:\n  %s", got, want);
}

Test(start_multi_node, gpus_per_node_overrides_the_slots_of_the_hosts_file) {
    test_port = 29803;
    char* hosts = tmp_path("hosts");
    write_text(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), "GPUS_PER_NODE=4",
                   env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    Run r;
    print_command(&r, "master", env);
    char line[LINE_BYTES];
    first_line(line, sizeof line, r.out);
    cr_assert_not_null(strstr(line, " --nproc-per-node 4 "), "the command: %s", line);
    cr_assert_null(strstr(line, " --nproc-per-node 1 "), "the command: %s", line);
}

Test(start_multi_node, master_addr_overrides_the_first_host) {
    test_port = 29804;
    char* hosts = tmp_path("hosts");
    write_text(hosts, "node-a.invalid slots=1\nnode-b.invalid slots=1\n", 0644);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), "MASTER_ADDR=127.0.0.1",
                   env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    Run r;
    print_command(&r, "master", env);
    char line[LINE_BYTES];
    first_line(line, sizeof line, r.out);
    cr_assert_not_null(strstr(line, " --master-addr 127.0.0.1 "), "the command: %s", line);
    cr_assert_null(strstr(line, "node-a.invalid"), "the command: %s", line);
}

Test(start_multi_node, an_unknown_role_exits_2_with_a_usage_line) {
    char* env[] = {NULL};
    char* argv[] = {"./start_multi_node.sh", "boss", NULL};
    Run r;
    run_script(&r, "boss", env, argv);
    cr_assert_eq(r.status, 2, "status %d, stderr:\n%s", r.status, r.err);
    cr_assert_not_null(strstr(r.err, "usage:"), "stderr:\n%s", r.err);
    cr_assert_not_null(strstr(r.err, "master|worker"), "stderr:\n%s", r.err);
    cr_assert_str_empty(r.out, "it ran something:\n%s", r.out);
}

Test(start_multi_node, a_worker_missing_from_the_hosts_file_without_node_rank_exits_2) {
    test_port = 29806;
    char* hosts = tmp_path("hosts");
    // Names that cannot be this machine's (RFC 2606): not even a TEST-NET address is safe.
    write_text(hosts, "node-a.invalid slots=1\nnode-b.invalid slots=1\n", 0644);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port), NULL};
    char* argv[] = {"./start_multi_node.sh", "worker", TRAIN_FLAGS, NULL};
    Run r;
    run_script(&r, "worker", env, argv);
    cr_assert_eq(r.status, 2, "status %d, stderr:\n%s", r.status, r.err);
    cr_assert_not_null(strstr(r.err, hosts), "stderr does not name %s:\n%s", hosts, r.err);
    cr_assert_str_empty(r.out, "it ran something:\n%s", r.out);
}

Test(start_multi_node, a_token_file_is_passed_to_the_program) {
    test_port = 29807;
    char *hosts = tmp_path("hosts"), *token = tmp_path("token");
    write_text(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    write_text(token, "0123456789abcdef\n", 0600);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                   env_var("DDP_TOKEN_FILE", token), NULL};
    Run r;
    print_command(&r, "master", env);
    char line[LINE_BYTES], want[PATH_MAX + 32];
    first_line(line, sizeof line, r.out);
    snprintf(want, sizeof want, " --token-file %s ", token);
    cr_assert_not_null(strstr(line, want), "the command lacks '%s': %s", want, line);
}

Test(start_multi_node, ddp_token_in_the_environment_replaces_the_token_file) {
    test_port = 29808;
    char *hosts = tmp_path("hosts"), *token = tmp_path("token");
    write_text(hosts, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", 0644);
    write_text(token, "0123456789abcdef\n", 0600);
    char* env[] = {env_var("HOSTS_FILE", hosts), port_var(test_port),
                   env_var("DDP_TOKEN_FILE", token), "DDP_TOKEN=fedcba9876543210", NULL};
    Run r;
    print_command(&r, "master", env);
    char line[LINE_BYTES];
    first_line(line, sizeof line, r.out);
    cr_assert_null(strstr(line, "--token-file"), "the command: %s", line);
}

// ----------------------------------------------------------------------------
// launch.sh

// Starts `launch.sh --mode multi-node` with master 127.0.0.1, the given workers, one
// worker process per node, port and extra flags (NULL-terminated).
static void launch_start(Run* r, char* rsh, const char* workers, int port, char* const flags[]) {
    static char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    char* argv[32] = {"./launch.sh", "--mode",         "multi-node",   "--master-node",
                      "127.0.0.1",   "--worker-nodes", (char*)workers, "--gpus-per-node",
                      "1",           "--port",         port_text};
    int argc = 11;
    for (int i = 0; flags[i] != NULL && argc < 31; i++)
        argv[argc++] = flags[i];
    char* env[] = {env_var("DDP_RSH", rsh), env_var("DDP_TOKEN_FILE", tmp_path("no_token")), NULL};
    run_start(r, "launch", env, argv);
}

Test(launch, multi_node_on_two_local_nodes_prefixes_every_line_and_agrees) {
    test_port = 29810;
    char* flags[] = {TRAIN_FLAGS, NULL};
    Run r;
    launch_start(&r, "tools/local_rsh.sh", "127.0.0.1", test_port, flags);
    run_wait(&r, DEADLINE_S);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    // both nodes are 127.0.0.1, so launch.sh names them 127.0.0.1#0 and 127.0.0.1#1
    const char* bad = line_without_prefix(r.out, "[127.0.0.1#");
    cr_assert_null(bad, "a line of stdout without its node's name: %.*s", (int)strcspn(bad, "\n"),
                   bad);
    bad = line_without_prefix(r.err, "[127.0.0.1#");
    cr_assert_null(bad, "a line of stderr without its node's name: %.*s", (int)strcspn(bad, "\n"),
                   bad);
    cr_assert_not_null(strstr(r.out, "Replicas agree: yes (2 ranks"), "stdout:\n%s", r.out);
    for (int rank = 0; rank < 2; rank++) {
        char want[PATH_MAX + 64];
        snprintf(want, sizeof want,
                 "[127.0.0.1#%d] + %s/build/multi_node --nnodes 2 --node-rank %d ", rank, repo,
                 rank);
        cr_assert_not_null(strstr(r.out, want), "no '%s' in stdout:\n%s", want, r.out);
    }
    cr_assert_eq(agents_left(test_port, now_s(), GONE_WITHIN_S), 0,
                 "agents of port %d still run after the job ended", test_port);
}

Test(launch, single_node_runs_every_gpu_worker_on_this_machine) {
    char* argv[] = {"./launch.sh", "--mode", "single-node", "--gpus", "2", TRAIN_FLAGS, NULL};
    char* env[] = {NULL};
    Run r;
    run_script(&r, "launch", env, argv);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    cr_assert_not_null(strstr(r.out, "Replicas agree: yes (2 ranks"), "stdout:\n%s", r.out);
}

Test(launch, a_node_that_fails_is_named_and_every_other_node_is_stopped) {
    test_port = 29812;
    // A remote shell that cannot start node 1: as if ssh to it failed.
    char* rsh = tmp_path("failing_rsh.sh");
    write_text(rsh,
               "#!/usr/bin/env bash\n"
               "shift\n"
               "case \"$*\" in *NODE_RANK=1*) exit 3 ;; esac\n"
               "exec \"$@\"\n",
               0755);
    char* flags[] = {"--epochs", "100000", "--data-size", "200", "--device", "cpu", NULL};
    Run r;
    launch_start(&r, rsh, "localhost", test_port, flags);
    run_wait(&r, DEADLINE_S);
    cr_assert(r.status != 0 && r.status != -1, "status %d\nstderr:\n%s", r.status, r.err);
    cr_assert_not_null(strstr(r.err, "node localhost failed with status 3"), "stderr:\n%s", r.err);
    int left = agents_left(test_port, r.started + r.seconds, STOP_WITHIN_S);
    cr_assert_eq(left, 0,
                 "%d multi_node process(es) of port %d still run %.0f s after launch.sh "
                 "exited; stderr:\n%s",
                 left, test_port, STOP_WITHIN_S, r.err);
}

Test(launch, a_bad_training_flag_fails_the_nodes_and_launch_exits_with_their_status) {
    test_port = 29813;
    char* flags[] = {"--epochs", "0", "--device", "cpu", NULL};
    Run r;
    launch_start(&r, "tools/local_rsh.sh", "localhost", test_port, flags);
    run_wait(&r, DEADLINE_S);
    cr_assert_not_null(strstr(r.out, "--epochs must be"), "stdout:\n%s", r.out);
    cr_assert_not_null(strstr(r.err, "failed with status 2"), "stderr:\n%s", r.err);
    cr_assert(strstr(r.err, "node 127.0.0.1 failed") || strstr(r.err, "node localhost failed"),
              "no node named, stderr:\n%s", r.err);
    cr_assert_null(strstr(r.err, "./launch.sh: line "), "bash errors in stderr:\n%s", r.err);
    cr_assert_eq(r.status, 2, "launch.sh exited %d, not its nodes' 2; stderr:\n%s", r.status,
                 r.err);
    cr_assert_eq(agents_left(test_port, now_s(), GONE_WITHIN_S), 0, "agents of port %d still run",
                 test_port);
}

Test(launch, ctrl_c_stops_every_node_and_exits_non_zero) {
    test_port = 29814;
    char* flags[] = {"--epochs", "100000", "--data-size", "200", "--device", "cpu", NULL};
    Run r;
    launch_start(&r, "tools/local_rsh.sh", "127.0.0.1", test_port, flags);
    // Step 1) wait until both nodes train: an epoch line and both ranks initialized.
    char* out = NULL;
    for (double t0 = now_s(); now_s() - t0 < 30;) {
        free(out);
        out = read_text(r.out_path);
        if (strstr(out, "Epoch [") != NULL && strstr(out, "[Rank 1] ") != NULL)
            break;
        usleep(50000);
    }
    cr_assert_not_null(strstr(out, "Epoch ["), "the job did not start training:\n%s", out);
    // Step 2) Ctrl-C: SIGINT to launch.sh alone, as a remote node would never see it.
    double interrupted = now_s();
    cr_assert_eq(kill(r.pid, SIGINT), 0, "kill: %s", strerror(errno));
    run_wait(&r, interrupted - r.started + STOP_WITHIN_S);
    cr_assert_neq(r.status, -1, "launch.sh still ran %.0f s after SIGINT", STOP_WITHIN_S);
    cr_assert_neq(r.status, 0, "launch.sh exited 0 after SIGINT");
    cr_assert_not_null(strstr(r.err, "interrupted"), "stderr:\n%s", r.err);
    int left = agents_left(test_port, interrupted, STOP_WITHIN_S);
    cr_assert_eq(left, 0,
                 "%d multi_node process(es) of port %d still run %.0f s after SIGINT "
                 "(launch.sh exited %d %.1f s after it)",
                 left, test_port, STOP_WITHIN_S, r.status, r.started + r.seconds - interrupted);
}

// Runs launch.sh with argv[1...] and expects status 2 and a message with words.
static void expect_usage_error(char* const argv[], const char* words) {
    char* env[] = {"DDP_RSH=/bin/false", NULL};
    Run r;
    run_script(&r, "launch", env, argv);
    cr_assert_eq(r.status, 2, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    cr_assert_not_null(strstr(r.err, words), "no '%s' in stderr:\n%s", words, r.err);
}

Test(launch, an_unknown_mode_exits_2) {
    char* argv[] = {"./launch.sh", "--mode", "foo", NULL};
    expect_usage_error(argv, "--mode must be");
}

Test(launch, multi_node_without_worker_nodes_exits_2) {
    char* argv[] = {"./launch.sh", "--mode", "multi-node", "--master-node", "127.0.0.1", NULL};
    expect_usage_error(argv, "--worker-nodes");
}

Test(launch, a_port_above_65535_exits_2) {
    char* argv[] = {"./launch.sh",    "--mode",    "multi-node", "--master-node", "127.0.0.1",
                    "--worker-nodes", "127.0.0.1", "--port",     "70000",         NULL};
    expect_usage_error(argv, "--port must be");
}

// ----------------------------------------------------------------------------
// setup.sh --multi-node

// Runs setup.sh --multi-node on a hosts file of 127.0.0.1, token at token, port port.
static void run_setup(Run* r, const char* name, const char* rsh, const char* token, int port) {
    char* hosts = tmp_path("hosts");
    write_text(hosts, "# the master\n127.0.0.1 slots=1\n", 0644);
    char* env[] = {env_var("DDP_RSH", rsh), env_var("HOSTS_FILE", hosts),
                   env_var("DDP_TOKEN_FILE", token), port_var(port), NULL};
    char* argv[] = {"./setup.sh", "--multi-node", NULL};
    run_script(r, name, env, argv);
    if (strstr(r->out, "packages: missing") != NULL)
        cr_skip_test("setup.sh stops at missing packages before --multi-node:\n%s", r->out);
}

Test(setup, multi_node_creates_a_private_token_and_finds_the_host_reachable) {
    test_port = 29818;
    char* token = tmp_path("token");
    Run r;
    run_setup(&r, "setup", "tools/local_rsh.sh", token, test_port);
    cr_assert_eq(r.status, 0, "status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    struct stat st;
    cr_assert_eq(stat(token, &st), 0, "no token at %s: %s", token, strerror(errno));
    cr_assert_eq(st.st_mode & 0777, 0600, "token mode %o, expected 600", st.st_mode & 0777);
    char* text = read_text(token);
    cr_assert_eq(strlen(text), 48, "token '%s': expected 48 hex digits", text);
    cr_assert_eq(strspn(text, "0123456789abcdef"), 48, "token '%s': expected hex digits", text);
    cr_assert_not_null(strstr(r.out, "token: created"), "stdout:\n%s", r.out);
    cr_assert_not_null(strstr(r.out, "127.0.0.1: reachable"), "stdout:\n%s", r.out);
}

Test(setup, multi_node_run_again_keeps_the_token) {
    test_port = 29819;
    char* token = tmp_path("token");
    Run first, again;
    run_setup(&first, "first", "tools/local_rsh.sh", token, test_port);
    cr_assert_eq(first.status, 0, "first run: status %d\nstdout:\n%s", first.status, first.out);
    char* before = read_text(token);
    run_setup(&again, "again", "tools/local_rsh.sh", token, test_port);
    cr_assert_eq(again.status, 0, "second run: status %d\nstdout:\n%s", again.status, again.out);
    char want[PATH_MAX + 32];
    snprintf(want, sizeof want, "token: %s exists", token);
    cr_assert_not_null(strstr(again.out, want), "no '%s' in stdout:\n%s", want, again.out);
    char* after = read_text(token);
    cr_assert_str_eq(after, before, "the token changed");
}

Test(setup, multi_node_reports_a_port_in_use_and_fails) {
    test_port = 29820;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)test_port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr*)&addr, sizeof addr), 0, "bind port %d: %s", test_port,
                 strerror(errno));
    cr_assert_eq(listen(fd, 1), 0, "listen: %s", strerror(errno));
    Run r;
    run_setup(&r, "setup", "tools/local_rsh.sh", tmp_path("token"), test_port);
    close(fd);
    char want[64];
    snprintf(want, sizeof want, "port: %d is in use", test_port);
    cr_assert_not_null(strstr(r.out, want), "no '%s' in stdout:\n%s", want, r.out);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with port %d in use", test_port);
}

Test(setup, multi_node_reports_a_host_it_cannot_reach_and_fails) {
    test_port = 29821;
    Run r;
    run_setup(&r, "setup", "/bin/false", tmp_path("token"), test_port);
    cr_assert_not_null(strstr(r.out, "127.0.0.1: cannot run commands there"), "stdout:\n%s", r.out);
    cr_assert_null(strstr(r.out, "multi-node: ready"), "stdout:\n%s", r.out);
    cr_assert_neq(r.status, 0, "setup.sh exited 0 with a host it cannot reach");
}
