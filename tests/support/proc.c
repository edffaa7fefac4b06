/*
 * proc.c - running programs as child processes for the tests; see proc.h.
 *
 * Every run a test starts is remembered: while it runs, so that each read serves all of
 * them (pump), and after, so that proc_end_leftovers can kill its group. A Proc may be
 * gone with its test's stack by then: the .fini uses only the pids it remembered.
 *
 * APIs: see proc.h.
 */
#include "proc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "timer.h"

#define MAX_STARTED 64    // runs one test starts
#define MAX_FORKED 64     // children of fork_child not reaped yet
#define DRAIN_S 1.0       // how long output held open by a leftover child is read
#define PUMP_SLICE_S 0.02 // the longest a read waits: runs are reaped at least this often

char temp_dir[64];

static struct {
    pid_t pid;     // and process group
    Proc* running; // NULL once finished
} started[MAX_STARTED];
static int started_count;
static pid_t forked[MAX_FORKED]; // fork_child's children not reaped yet (0: a free slot)

static void remove_temp_dir(void);

// ----------------------------------------------------------------------------
// starting a program

double now_seconds(void) {
    return timer_seconds();
}

// Makes room for at least 4096 more bytes and a NUL after the text.
static void buffer_reserve(Buffer* b) {
    if (b->cap - b->len < 4097) {
        b->cap = 2 * b->cap + 8192;
        b->text = realloc(b->text, b->cap);
        cr_assert_not_null(b->text, "out of memory for a program's output");
        b->text[b->len] = '\0';
    }
}

// The child: a group of its own, the test's death is its own, the signals a shell would
// give it (one ignored at exec stays ignored, and bash cannot trap it again), and the
// environment options asks for.
static void exec_child(const int fds[2], char** argv, const ProcOptions* o) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL); // kept across exec
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; o->unset_env != NULL && o->unset_env[i] != NULL; i++)
        unsetenv(o->unset_env[i]);
    for (int i = 0; o->env != NULL && o->env[i] != NULL; i++)
        putenv((char*)o->env[i]);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(fds[0], STDOUT_FILENO) < 0 ||
        dup2(fds[1], STDERR_FILENO) < 0)
        _exit(126);
    execv(argv[0], argv);
    dprintf(STDERR_FILENO, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

// The child's ends of its stdout and stderr into child_fds, the test's into p->fds.
static void open_outputs(Proc* p, int child_fds[2]) {
    for (int s = 0; s < 2; s++) {
        int ends[2];
        if (p->to_files) {
            char path[sizeof temp_dir + 64];
            snprintf(path, sizeof path, "%s/%s.%s", temp_dir, p->name, s == 0 ? "out" : "err");
            ends[1] = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            ends[0] = open(path, O_RDONLY);
            cr_assert(ends[0] >= 0 && ends[1] >= 0, "create %s: %s", path, strerror(errno));
        } else
            cr_assert(pipe(ends) == 0, "pipe: %s", strerror(errno));
        fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK);
        // Neither end goes on to a program: its stdout and stderr are dup2's copies.
        fcntl(ends[0], F_SETFD, FD_CLOEXEC), fcntl(ends[1], F_SETFD, FD_CLOEXEC);
        p->fds[s] = ends[0], child_fds[s] = ends[1];
    }
}

static void remember(Proc* p) {
    cr_assert_lt(started_count, MAX_STARTED, "more than %d runs in one test", MAX_STARTED);
    started[started_count].pid = p->pid;
    started[started_count].running = p;
    started_count++;
}

void proc_start(Proc* p, const char* program, const char* const* args, const ProcOptions* options) {
    const ProcOptions o = options != NULL ? *options : (ProcOptions){0};
    cr_assert(access(program, X_OK) == 0,
              "%s is missing: build it and run from the repository root (make test)", program);
    cr_assert(!o.output_to_files || (temp_dir[0] != '\0' && o.name != NULL),
              "output_to_files needs temp_dir_make and a name for the files");
    *p = (Proc){.fds = {-1, -1}, .to_files = o.output_to_files};
    snprintf(p->name, sizeof p->name, "%s", o.name != NULL ? o.name : program);
    char* argv[PROC_MAX_ARGS + 2] = {(char*)program};
    for (int i = 0; args[i] != NULL; i++) {
        cr_assert_lt(i, PROC_MAX_ARGS, "too many arguments");
        argv[i + 1] = (char*)args[i];
    }
    int child_fds[2];
    open_outputs(p, child_fds);
    buffer_reserve(&p->out), buffer_reserve(&p->err); // both texts exist, even if empty
    fflush(NULL);
    p->started_at = now_seconds();
    p->pid = fork();
    cr_assert_neq(p->pid, -1, "fork: %s", strerror(errno));
    if (p->pid == 0)
        exec_child(child_fds, argv, &o);
    setpgid(p->pid, p->pid); // here too: whichever runs first, the group exists
    remember(p);
    close(child_fds[0]), close(child_fds[1]);
}

// ----------------------------------------------------------------------------
// reading what runs write, reaping them

static void mark_reaped(Proc* p, int wstatus) {
    p->reaped = 1;
    p->wstatus = wstatus;
    p->exited_at = now_seconds();
    p->status = p->timed_out           ? -1
                : WIFEXITED(wstatus)   ? WEXITSTATUS(wstatus)
                : WIFSIGNALED(wstatus) ? 128 + WTERMSIG(wstatus)
                                       : -1;
}

static void try_reap(Proc* p) {
    int wstatus;
    if (!p->reaped && waitpid(p->pid, &wstatus, WNOHANG) == p->pid)
        mark_reaped(p, wstatus);
}

// Reads what stream s of p holds now; a pipe is closed at its end, a file read to its
// current end.
static void read_stream(Proc* p, int s) {
    Buffer* b = s == PROC_STDOUT ? &p->out : &p->err;
    for (;;) {
        buffer_reserve(b);
        ssize_t n = read(p->fds[s], b->text + b->len, b->cap - b->len - 1);
        if (n > 0) {
            b->len += (size_t)n;
            b->text[b->len] = '\0';
            continue;
        }
        if (n == 0 && p->to_files)
            return;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        close(p->fds[s]);
        p->fds[s] = -1;
        return;
    }
}

// Reads what every running program has written, waiting at most until `until` (and
// PUMP_SLICE_S), and reaps those that exited: reaped first, so that a file holds all of it.
static void pump(double until) {
    struct pollfd fds[2 * MAX_STARTED];
    Proc* owner[2 * MAX_STARTED];
    int stream[2 * MAX_STARTED], n = 0;
    for (int i = 0; i < started_count; i++)
        for (int s = 0; started[i].running != NULL && s < 2; s++)
            if (!started[i].running->to_files && started[i].running->fds[s] >= 0) {
                fds[n] = (struct pollfd){.fd = started[i].running->fds[s], .events = POLLIN};
                owner[n] = started[i].running, stream[n] = s, n++;
            }
    double left = until - now_seconds();
    int ms = left > 0 ? (int)(fmin(left, PUMP_SLICE_S) * 1000) + 1 : 0;
    if (poll(fds, (nfds_t)n, ms) < 0 && errno != EINTR)
        cr_assert_fail("poll: %s", strerror(errno));
    for (int i = 0; i < started_count; i++)
        if (started[i].running != NULL)
            try_reap(started[i].running);
    for (int k = 0; k < n; k++)
        if (fds[k].revents != 0)
            read_stream(owner[k], stream[k]);
    for (int i = 0; i < started_count; i++)
        for (int s = 0; started[i].running != NULL && started[i].running->to_files && s < 2; s++)
            read_stream(started[i].running, s);
}

static int count_of(const char* text, const char* what) {
    int n = 0;
    for (const char* at = strstr(text, what); at != NULL; at = strstr(at + 1, what))
        n++;
    return n;
}

int proc_wait_for(Proc* p, int stream, const char* text, int count, double deadline) {
    for (;;) {
        if (count_of(stream == PROC_STDOUT ? p->out.text : p->err.text, text) >= count)
            return 1;
        int ended = p->reaped && (p->to_files || p->fds[stream] < 0);
        if (now_seconds() > deadline || ended)
            return 0;
        pump(fmin(deadline, now_seconds() + 0.05));
    }
}

// ----------------------------------------------------------------------------
// ending a run

static void kill_and_reap(Proc* p) {
    if (p->reaped)
        return;
    kill(-p->pid, SIGKILL);
    int wstatus;
    while (waitpid(p->pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    mark_reaped(p, wstatus);
}

static void forget(const Proc* p) {
    for (int i = 0; i < started_count; i++)
        if (started[i].running == p)
            started[i].running = NULL;
}

void proc_finish(Proc* p, double deadline) {
    double drain_until = 0.0;
    while (!p->reaped || (!p->to_files && (p->fds[0] >= 0 || p->fds[1] >= 0))) {
        if (now_seconds() > deadline && !p->reaped) {
            p->timed_out = 1;
            kill_and_reap(p);
        }
        if (p->reaped && drain_until == 0.0)
            drain_until = now_seconds() + DRAIN_S;
        if (p->reaped && now_seconds() > drain_until)
            break;
        pump(fmin(p->reaped ? drain_until : deadline, now_seconds() + PUMP_SLICE_S));
    }
    for (int s = 0; s < 2; s++)
        if (p->fds[s] >= 0) {
            if (p->to_files)
                read_stream(p, s); // what it wrote between the last read and its end
            close(p->fds[s]), p->fds[s] = -1;
        }
    forget(p);
}

void proc_kill(Proc* p) {
    kill_and_reap(p);
    proc_finish(p, now_seconds());
}

void proc_free(Proc* p) {
    free(p->out.text);
    free(p->err.text);
    p->out.text = p->err.text = NULL;
}

void proc_expect_ended(const Proc* p) {
    cr_assert(!p->timed_out, "%s was still running after its deadline: killed; stderr:\n%s",
              p->name, p->err.text);
    cr_assert(WIFEXITED(p->wstatus) && WEXITSTATUS(p->wstatus) != 127,
              "%s could not be executed or died (wait status 0x%x); stderr:\n%s", p->name,
              p->wstatus, p->err.text);
}

Proc proc_run(const char* program, const char* const* args, const ProcOptions* options) {
    Proc p;
    proc_start(&p, program, args, options);
    proc_finish(&p, p.started_at + PROC_DEADLINE_S);
    proc_expect_ended(&p);
    return p;
}

void proc_end_leftovers(void) {
    for (int i = 0; i < started_count; i++) {
        kill(-started[i].pid, SIGKILL);
        if (started[i].running != NULL) // not finished; perhaps reaped already (ECHILD)
            waitpid(started[i].pid, NULL, 0);
    }
    started_count = 0;
    for (int i = 0; i < MAX_FORKED; i++)
        if (forked[i] > 0) {
            kill(-forked[i], SIGKILL);
            waitpid(forked[i], NULL, 0);
            forked[i] = 0;
        }
    remove_temp_dir();
}

// ----------------------------------------------------------------------------
// forking a function of the test

pid_t fork_child(void) {
    int slot = 0;
    while (slot < MAX_FORKED && forked[slot] != 0)
        slot++;
    cr_assert_lt(slot, MAX_FORKED, "more than %d children not reaped", MAX_FORKED);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setpgid(0, 0);
        return 0;
    }
    setpgid(pid, pid); // here too: whichever runs first, the group exists
    forked[slot] = pid;
    return pid;
}

int reap_child(pid_t pid, double seconds) {
    double deadline = now_seconds() + seconds;
    int wstatus = -1;
    while (waitpid(pid, &wstatus, WNOHANG) != pid) {
        if (now_seconds() > deadline) {
            kill(-pid, SIGKILL);
            waitpid(pid, NULL, 0);
            wstatus = -1;
            break;
        }
        usleep(2000);
    }
    for (int i = 0; i < MAX_FORKED; i++)
        if (forked[i] == pid)
            forked[i] = 0;
    return wstatus;
}

// ----------------------------------------------------------------------------
// the processes of a run, from /proc

typedef struct {
    char state; // 'R', 'S', 'Z'...
    int parent, group;
} PidStat;

int read_pid_file(pid_t pid, const char* name, char* text, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    FILE* f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t len = fread(text, 1, size - 1, f);
    fclose(f);
    text[len] = '\0';
    return (int)len;
}

// What /proc/PID/stat says of pid; 0 if it is gone.
static int pid_stat(pid_t pid, PidStat* st) {
    char text[512];
    if (read_pid_file(pid, "stat", text, sizeof text) < 0)
        return 0;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
    const char* close_paren = strrchr(text, ')');
    return close_paren != NULL &&
           sscanf(close_paren + 1, " %c %d %d", &st->state, &st->parent, &st->group) == 3;
}

int pids_where(int (*keep)(pid_t pid, const void* arg), const void* arg, pid_t* pids, int max) {
    DIR* d = opendir("/proc");
    cr_assert_not_null(d, "opendir /proc: %s", strerror(errno));
    int n = 0;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        if (!keep(pid, arg))
            continue;
        if (n < max)
            pids[n] = pid;
        n++;
    }
    closedir(d);
    return n;
}

int pid_runs(pid_t pid) {
    PidStat st;
    return pid_stat(pid, &st) && st.state != 'Z' && st.state != 'X';
}

static int has_parent(pid_t pid, const void* parent) {
    PidStat st;
    return pid_stat(pid, &st) && st.parent == *(const pid_t*)parent;
}

static int is_in_group(pid_t pid, const void* group) {
    PidStat st;
    return pid_stat(pid, &st) && st.group == *(const pid_t*)group;
}

// Sorts pids (n) in the order they were forked. Pids rise in fork order but wrap at
// pid_max: order by distance from the lowest, unless the gap is so wide that the numbers
// wrapped in between.
static void sort_in_fork_order(pid_t* pids, int n) {
    int pid_max = 32768;
    FILE* f = fopen("/proc/sys/kernel/pid_max", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &pid_max) != 1)
            pid_max = 32768;
        fclose(f);
    }
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            int later = pids[j] < pids[i];
            if (abs(pids[j] - pids[i]) > pid_max / 2)
                later = !later;
            if (later) {
                pid_t t = pids[i];
                pids[i] = pids[j], pids[j] = t;
            }
        }
}

void proc_wait_for_children(const Proc* p, pid_t* pids, int want) {
    double deadline = now_seconds() + 10.0;
    int n = 0;
    while ((n = pids_where(has_parent, &p->pid, pids, want)) != want && now_seconds() < deadline)
        usleep(10000);
    cr_assert_eq(n, want, "%s (pid %d) has %d children, want %d workers", p->name, p->pid, n, want);
    sort_in_fork_order(pids, n);
}

void expect_pids_gone(const pid_t* pids, int n, double seconds, const char* when) {
    double deadline = now_seconds() + seconds;
    for (int i = 0; i < n; i++) {
        while (kill(pids[i], 0) == 0 && now_seconds() < deadline)
            usleep(10000);
        int alive = kill(pids[i], 0) == 0 || errno != ESRCH;
        if (alive)
            kill(pids[i], SIGKILL); // not ours to reap, but it will not run on
        cr_assert(!alive, "%s: worker %d (pid %d) is still there", when, i, pids[i]);
    }
}

void proc_expect_group_gone(const Proc* p, double seconds) {
    cr_assert(p->reaped, "%s has not exited", p->name);
    double deadline = now_seconds() + seconds;
    while (kill(-p->pid, 0) == 0 && now_seconds() < deadline)
        usleep(10000); // an orphaned zombie is reaped by init in a moment
    if (kill(-p->pid, 0) == 0 || errno != ESRCH) {
        pid_t left[16];
        int n = pids_where(is_in_group, &p->pid, left, 16);
        kill(-p->pid, SIGKILL);
        cr_assert_fail("%s exited but %d process%s of its group %d %s still there (first: pid %d)",
                       p->name, n, n == 1 ? "" : "es", p->pid, n == 1 ? "is" : "are",
                       n > 0 ? left[0] : 0);
    }
}

// ----------------------------------------------------------------------------
// files of a test

static void remove_temp_dir(void) {
    if (temp_dir[0] != '\0')
        remove_tree(temp_dir);
    temp_dir[0] = '\0';
}

// Named after the test binary (argv[0] is Criterion's worker's).
void temp_dir_make(void) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    const char* name = strrchr(exe, '/') != NULL ? strrchr(exe, '/') + 1 : "test";
    int len = snprintf(temp_dir, sizeof temp_dir, "/tmp/%s.XXXXXX", name);
    cr_assert_lt(len, (int)sizeof temp_dir, "the name of %s is too long", temp_dir);
    cr_assert_not_null(mkdtemp(temp_dir), "mkdtemp %s: %s", temp_dir, strerror(errno));
    atexit(remove_temp_dir); // also after a skipped test, whose .fini does not run
}

void remove_tree(const char* path) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    DIR* d = opendir(path);
    struct dirent* e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char child[4096];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        remove_tree(child);
    }
    if (d != NULL)
        closedir(d);
    rmdir(path);
}

char* read_file(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
    Buffer b = {0};
    size_t n;
    do {
        buffer_reserve(&b);
        n = fread(b.text + b.len, 1, b.cap - b.len - 1, f);
        b.len += n;
        b.text[b.len] = '\0';
    } while (n > 0);
    fclose(f);
    if (len != NULL)
        *len = b.len;
    return b.text;
}

void write_file(const char* path, const char* text, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert_geq(fd, 0, "create %s: %s", path, strerror(errno));
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len, "write %s: %s", path, strerror(errno));
    cr_assert_eq(close(fd), 0, "write %s: %s", path, strerror(errno));
}

// ----------------------------------------------------------------------------
// the build under test

const char* build_program(const char* name) {
    // A few programs per suite, each asked for many times: the paths are kept.
    static char paths[8][PATH_MAX];
    static int count;
    const char* dir = getenv("DDP_BUILD") != NULL ? getenv("DDP_BUILD") : "build";
    char path[PATH_MAX];
    int len = snprintf(path, sizeof path, "%s/%s", dir, name);
    cr_assert_lt(len, (int)sizeof path, "DDP_BUILD is too long: %s", dir);
    for (int i = 0; i < count; i++)
        if (strcmp(paths[i], path) == 0)
            return paths[i];
    cr_assert_lt(count, 8, "more than 8 programs asked for");
    memcpy(paths[count], path, (size_t)len + 1);
    return paths[count++];
}

// ----------------------------------------------------------------------------
// ports

#define PORT_BASE_DEFAULT 29700
#define PORT_TRIES 20
#define PORT_STRIDE 1000

// Whether nothing listens on (or holds) 127.0.0.1:port just now.
static int port_is_free(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int free_now = fd >= 0 && bind(fd, (struct sockaddr*)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return free_now;
}

int port_for_test(int offset) {
    const char* text = getenv("DDP_PORT_BASE");
    char* end = NULL;
    long base = text != NULL && *text != '\0' ? strtol(text, &end, 10) : PORT_BASE_DEFAULT;
    cr_assert(text == NULL || *text == '\0' || (*end == '\0' && base >= 1024 && base <= 40000),
              "DDP_PORT_BASE must be an integer in [1024, 40000], got '%s'", text);
    for (int i = 0; i < PORT_TRIES; i++) {
        int port = (int)base + offset + i * PORT_STRIDE;
        if (port <= 65535 && port_is_free(port))
            return port;
    }
    cr_assert_fail("no free port at DDP_PORT_BASE %ld + %d (+ n x %d)", base, offset, PORT_STRIDE);
    return -1;
}

int split_lines(char* text, char** lines, int max) {
    int n = 0;
    for (char* p = text; *p != '\0' && n < max;) {
        lines[n++] = p;
        char* nl = strchr(p, '\n');
        if (nl == NULL)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    return n;
}
