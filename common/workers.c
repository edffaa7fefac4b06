/*
 * workers.c - forking and supervising the rank processes (see workers.h).
 */
#include "workers.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "timer.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int sig) {
    stop_signal = sig;
}

int workers_start(Workers* w, int count, int first_rank, WorkerMain main, void* arg) {
    memset(w, 0, sizeof *w);
    w->first_rank = first_rank;
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
            int status = main(i, arg);
            fflush(NULL);
            _exit(status);
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

// "exited with status 3" or "killed by signal 9 (Killed)".
static void describe_status(int status, char* out, size_t out_len) {
    if (WIFSIGNALED(status))
        snprintf(out, out_len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(out, out_len, "exited with status %d", WEXITSTATUS(status));
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
            char how[128];
            describe_status(status[i], how, sizeof how);
            rank_log("[Rank %d] %s", w->first_rank + i, how);
            if (w->failure[0] == '\0') {
                snprintf(w->failure, sizeof w->failure, "[Rank %d] %s", w->first_rank + i, how);
                w->failure_is_signal = WIFSIGNALED(status[i]);
            }
        }
    return failed;
}

static int running(const Workers* w) {
    int n = 0;
    for (int i = 0; i < w->count; i++)
        n += w->pids[i] != 0;
    return n;
}

void workers_stop(Workers* w) {
    for (int i = 0; i < w->count; i++)
        if (w->pids[i] != 0)
            kill(w->pids[i], SIGTERM);
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
    return 0;
}
