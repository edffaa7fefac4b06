/*
 * workers.c - forking and supervising the rank processes (see workers.h).
 */
#define _GNU_SOURCE // sched_getaffinity, sched_setaffinity, CPU_COUNT
#include "workers.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "timer.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int sig) {
    stop_signal = sig;
}

// In a new worker: the signals as a program starts with them (a restart's parent has its
// own SIGINT and SIGTERM handler, which would make the worker ignore both), and its last
// words kept where the parent can read them.
static void worker_begins(Workers* w, int i) {
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    stop_signal = 0;
    if (w->last_line != NULL)
        rank_log_keep_last_line(w->last_line[i], WORKERS_LAST_LINE_BYTES);
}

// --bind, in worker i: on the i-th CPU this process may run on, which it says.
static int bind_worker(int i) {
    int cpu = workers_bind_cpu(i);
    if (cpu < 0) {
        rank_log("--bind: %s", strerror(errno));
        return -1;
    }
    rank_log("--bind: CPU %d", cpu);
    return 0;
}

int workers_start(Workers* w, int count, int first_rank, bool bind, WorkerMain main, void* arg) {
    memset(w, 0, sizeof *w);
    w->first_rank = first_rank;
    // Shared with the workers; without it (no memory) a failure is named without its words.
    w->last_line = mmap(NULL, WORKERS_MAX * sizeof *w->last_line, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (w->last_line == MAP_FAILED)
        w->last_line = NULL;
    signal(SIGCHLD, SIG_DFL); // an inherited SIG_IGN would let the kernel reap them unseen
    pid_t parent = getpid();
    fflush(NULL); // or the children would print the parent's buffered output again
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            rank_log("fork of worker %d: %s", i, strerror(errno));
            workers_stop(w);
            return -1;
        }
        if (pid == 0) {
            // No worker outlives the parent: the kernel kills us when it dies,
            // and if it died already, getppid() is no longer the parent.
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            rank_log_set_rank(first_rank + i);
            worker_begins(w, i);
            int status = bind && bind_worker(i) != 0 ? 1 : main(i, arg);
            fflush(NULL);
            _exit(status != 0 && rank_failed_for_good() ? WORKERS_EXIT_FOR_GOOD : status);
        }
        w->pids[i] = pid;
        w->count = i + 1;
    }
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return 0;
}

// "killed by signal 9 (Killed)", or "exited with status 1" and what worker i logged last.
static void describe_status(const Workers* w, int i, int status, char* out, size_t out_len) {
    const char* said = w->last_line != NULL ? w->last_line[i] : "";
    if (WIFSIGNALED(status))
        snprintf(out, out_len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(out, out_len, "exited with status %d%s%.*s", WEXITSTATUS(status),
                 said[0] != '\0' ? ": " : "", WORKERS_LAST_LINE_BYTES, said);
}

// Reaps the workers that have exited; returns how many failed. Ranks killed by a
// signal are named first: the others of the same moment usually failed because of
// them (a ring neighbour gone).
static int reap(Workers* w, int quiet) {
    int failed = 0, status[WORKERS_MAX];
    bool ended[WORKERS_MAX] = {false};
    for (int i = 0; i < w->count; i++)
        if (w->pids[i] != 0 && waitpid(w->pids[i], &status[i], WNOHANG) == w->pids[i]) {
            w->pids[i] = 0;
            ended[i] = !(WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0);
            failed += ended[i];
        }
    for (int pass = 0; pass < 2 && !quiet; pass++)
        for (int i = 0; i < w->count; i++) {
            if (!ended[i] || WIFSIGNALED(status[i]) != (pass == 0))
                continue;
            char how[WORKERS_LAST_LINE_BYTES + 64];
            describe_status(w, i, status[i], how, sizeof how);
            rank_log("[Rank %d] %s", w->first_rank + i, how);
            if (w->failure[0] == '\0') {
                snprintf(w->failure, sizeof w->failure, "[Rank %d] %s", w->first_rank + i, how);
                w->failure_is_signal = WIFSIGNALED(status[i]);
                w->failure_is_for_good =
                    WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == WORKERS_EXIT_FOR_GOOD;
            }
        }
    return failed;
}

// Once every worker has ended, their last lines have been read (or never will be).
static void forget_last_lines(Workers* w) {
    if (w->last_line != NULL)
        munmap(w->last_line, WORKERS_MAX * sizeof *w->last_line);
    w->last_line = NULL;
}

static int running(const Workers* w) {
    int n = 0;
    for (int i = 0; i < w->count; i++)
        n += w->pids[i] != 0;
    return n;
}

void workers_stop(Workers* w) {
    for (int i = 0; i < w->count; i++)
        if (w->pids[i] != 0) {
            kill(w->pids[i], SIGTERM);
            kill(w->pids[i], SIGCONT); // a stopped worker (SIGSTOP, ^Z) acts on it only then
        }
    double deadline = timer_seconds() + WORKERS_GRACE_SECONDS;
    while (running(w) > 0 && timer_seconds() < deadline) {
        reap(w, 1);
        usleep(10000);
    }
    for (int i = 0; i < w->count; i++)
        if (w->pids[i] != 0)
            kill(w->pids[i], SIGKILL);
    // A process stuck in the kernel (a GPU driver call) may not die even then: wait a
    // moment, then name it and go on rather than wait for ever.
    deadline = timer_seconds() + WORKERS_GRACE_SECONDS;
    while (running(w) > 0 && timer_seconds() < deadline) {
        reap(w, 1);
        usleep(10000);
    }
    for (int i = 0; i < w->count; i++)
        if (w->pids[i] != 0) {
            rank_log("[Rank %d] did not exit after SIGKILL (pid %d)", w->first_rank + i,
                     (int)w->pids[i]);
            w->pids[i] = 0;
        }
    forget_last_lines(w);
}

int workers_wait(Workers* w, WorkersPoll poll, void* poll_arg) {
    while (running(w) > 0) {
        if (stop_signal != 0) {
            rank_log("interrupted by signal %d (%s): stopping every worker", (int)stop_signal,
                     strsignal(stop_signal));
            workers_stop(w);
            return 128 + stop_signal;
        }
        int failed = reap(w, 0);
        if (failed > 0 || (poll != NULL && poll(poll_arg) != 0)) {
            if (running(w) > 0)
                rank_log("stopping the %d other worker%s", running(w), running(w) > 1 ? "s" : "");
            workers_stop(w);
            return 1;
        }
        usleep(10000);
    }
    forget_last_lines(w);
    return 0;
}

int workers_check_bind(int count, bool on_gpus, char* why, size_t why_len) {
    if (on_gpus) {
        snprintf(why, why_len,
                 "--bind: the workers compute on GPUs, whose nearby CPUs this program does not "
                 "know; bind them with numactl or the batch system instead");
        return -1;
    }
    int cpus = workers_cpu_count();
    if (cpus < count) {
        snprintf(why, why_len, "--bind: %d workers need a CPU each; this process may run on %d",
                 count, cpus < 0 ? 0 : cpus);
        return -1;
    }
    return 0;
}

int workers_cpu_count(void) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return -1;
    return CPU_COUNT(&allowed);
}

int workers_bind_cpu(int local_rank) {
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return -1;
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed) || seen++ != local_rank)
            continue;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return sched_setaffinity(0, sizeof one, &one) == 0 ? cpu : -1;
    }
    errno = ERANGE;
    return -1;
}
