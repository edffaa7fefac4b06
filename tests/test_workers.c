/*
 * test_workers.c - forking the rank processes and supervising them.
 *
 * Each test forks workers with workers_start from its own Criterion process
 * and waits for them with workers_wait, whose report on stderr is captured (fd
 * 2 points at a temporary file during the wait). Workers that should be ended
 * sleep for far longer than any test may take, so a test only passes if the
 * supervisor really ends them; the .fini kills whatever a failed test left. Binding a
 * worker to a CPU is tested in a child whose mask the test narrows first, and through
 * workers_start, whose bound workers check their own masks.
 */
#define _GNU_SOURCE // sched_getaffinity, sched_setaffinity, CPU_COUNT
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/bound.h"
#include "timer.h"
#include "workers.h"

// A worker that must be ended sleeps this long: a broken supervisor fails, never hangs.
#define LONG_SLEEP_S 15
#define ENDED_WITHIN_S 2.0 // fast paths: no grace period needed

// ----------------------------------------------------------------------------
// helpers

typedef struct {
    pid_t pid[WORKERS_MAX]; // what each worker saw as its own pid
    int calls;              // poll calls so far
    int stop_at_call;       // poll asks to stop (or raises SIGTERM) at this call
} Seen;

static Seen* seen;          // shared with the workers
static Workers* started;    // for end_leftovers after a failed assertion
static char err_text[8192]; // what workers_wait wrote on stderr

static void make_shared(void) {
    seen = mmap(NULL, sizeof *seen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(seen, MAP_FAILED, "mmap: %s", strerror(errno));
    memset(seen, 0, sizeof *seen);
}

// .fini: kills and reaps every worker a failed test left running.
static void end_leftovers(void) {
    if (started == NULL)
        return;
    for (int i = 0; i < started->count; i++)
        if (started->pids[i] > 0) {
            kill(started->pids[i], SIGKILL);
            waitpid(started->pids[i], NULL, 0);
        }
    started = NULL;
}

// Starts count workers and waits for them, stderr captured in err_text; returns what
// workers_wait returned and, in *seconds, how long it took.
static int start_and_wait(Workers* w, int count, int first_rank, bool bind, WorkerMain main,
                          WorkersPoll poll, double* seconds) {
    FILE* capture = tmpfile();
    cr_assert_not_null(capture, "tmpfile: %s", strerror(errno));
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fileno(capture), STDERR_FILENO);
    double start = timer_seconds();
    int rc = workers_start(w, count, first_rank, bind, main, NULL);
    started = w;
    if (rc == 0)
        rc = workers_wait(w, poll, NULL);
    *seconds = timer_seconds() - start;
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    size_t n = (size_t)pread(fileno(capture), err_text, sizeof err_text - 1, 0);
    err_text[n < sizeof err_text ? n : 0] = '\0';
    fclose(capture);
    return rc;
}

// Every worker was reaped: its slot is 0 and its pid is gone (no zombie left).
static void expect_all_reaped(const Workers* w) {
    for (int i = 0; i < w->count; i++) {
        cr_assert_eq(w->pids[i], 0, "worker %d (pid %d) was not reaped", i, w->pids[i]);
        pid_t pid = seen->pid[i];
        if (pid > 0)
            cr_assert(kill(pid, 0) == -1 && errno == ESRCH, "worker %d (pid %d) is still there", i,
                      pid);
    }
    started = NULL;
}

// ----------------------------------------------------------------------------
// worker bodies

static int exits_0(int local_rank, void* arg) {
    (void)arg;
    seen->pid[local_rank] = getpid();
    return 0;
}

static int sleeps_long(int local_rank) {
    seen->pid[local_rank] = getpid();
    sleep(LONG_SLEEP_S);
    return 0;
}

static int rank_2_exits_3(int local_rank, void* arg) {
    (void)arg;
    if (local_rank == 2) {
        seen->pid[local_rank] = getpid();
        usleep(100000); // the others are asleep by now
        return 3;
    }
    return sleeps_long(local_rank);
}

static int rank_1_is_killed(int local_rank, void* arg) {
    (void)arg;
    if (local_rank == 1) {
        seen->pid[local_rank] = getpid();
        usleep(100000);
        raise(SIGKILL);
    }
    return sleeps_long(local_rank);
}

// Rank 0 fails; rank 1 ignores SIGTERM, so only SIGKILL after the grace period ends it.
static int rank_1_ignores_sigterm(int local_rank, void* arg) {
    (void)arg;
    if (local_rank == 0) {
        seen->pid[local_rank] = getpid();
        usleep(200000);
        return 1;
    }
    signal(SIGTERM, SIG_IGN);
    return sleeps_long(local_rank);
}

static int sleeps_long_main(int local_rank, void* arg) {
    (void)arg;
    return sleeps_long(local_rank);
}

static int poll_stops(void* arg) {
    (void)arg;
    return ++seen->calls >= seen->stop_at_call;
}

static int poll_raises_sigterm(void* arg) {
    (void)arg;
    if (++seen->calls == seen->stop_at_call)
        raise(SIGTERM); // as if someone sent it to the parent
    return 0;
}

// ----------------------------------------------------------------------------
// tests

Test(workers, wait_returns_0_when_every_worker_exits_0, .init = make_shared,
     .fini = end_leftovers) {
    Workers w;
    double seconds;
    int rc = start_and_wait(&w, 4, 0, false, exits_0, NULL, &seconds);
    cr_assert_eq(rc, 0, "workers_wait returned %d; stderr:\n%s", rc, err_text);
    cr_assert_str_empty(err_text, "stderr is not empty:\n%s", err_text);
    cr_assert_eq(w.count, 4);
    expect_all_reaped(&w);
}

Test(workers, each_worker_runs_with_its_own_local_rank_in_its_own_process, .init = make_shared,
     .fini = end_leftovers) {
    Workers w;
    double seconds;
    int rc = start_and_wait(&w, 5, 10, false, exits_0, NULL, &seconds);
    cr_assert_eq(rc, 0, "workers_wait returned %d; stderr:\n%s", rc, err_text);
    cr_assert_eq(w.first_rank, 10);
    for (int i = 0; i < 5; i++) {
        cr_assert_gt(seen->pid[i], 0, "local rank %d never ran", i);
        cr_assert_neq(seen->pid[i], getpid(), "local rank %d ran in the parent", i);
        for (int j = 0; j < i; j++)
            cr_assert_neq(seen->pid[i], seen->pid[j], "local ranks %d and %d share a process", j,
                          i);
    }
    expect_all_reaped(&w);
}

Test(workers, a_worker_that_fails_is_named_and_the_others_are_ended, .init = make_shared,
     .fini = end_leftovers) {
    Workers w;
    double seconds;
    int rc = start_and_wait(&w, 4, 8, false, rank_2_exits_3, NULL, &seconds);
    cr_assert_eq(rc, 1, "workers_wait returned %d, want 1; stderr:\n%s", rc, err_text);
    cr_assert_lt(seconds, ENDED_WITHIN_S, "the others were ended only after %.2f s", seconds);
    // global rank = first_rank + local rank
    cr_assert_not_null(strstr(err_text, "[Rank 10] exited with status 3"),
                       "stderr does not name rank 10 and its status:\n%s", err_text);
    cr_assert_eq(strstr(err_text, "[Rank 8]"), NULL, "a stopped worker is reported:\n%s", err_text);
    expect_all_reaped(&w);
}

Test(workers, a_killed_worker_is_named_with_its_signal, .init = make_shared,
     .fini = end_leftovers) {
    Workers w;
    double seconds;
    int rc = start_and_wait(&w, 3, 0, false, rank_1_is_killed, NULL, &seconds);
    cr_assert_eq(rc, 1, "workers_wait returned %d, want 1; stderr:\n%s", rc, err_text);
    cr_assert_lt(seconds, ENDED_WITHIN_S, "the others were ended only after %.2f s", seconds);
    cr_assert_not_null(strstr(err_text, "[Rank 1] killed by signal 9"),
                       "stderr does not say that rank 1 was killed by signal 9:\n%s", err_text);
    expect_all_reaped(&w);
}

Test(workers, a_worker_that_ignores_sigterm_is_killed_after_the_grace_period, .init = make_shared,
     .fini = end_leftovers) {
    Workers w;
    double seconds;
    int rc = start_and_wait(&w, 2, 0, false, rank_1_ignores_sigterm, NULL, &seconds);
    cr_assert_eq(rc, 1, "workers_wait returned %d, want 1; stderr:\n%s", rc, err_text);
    cr_assert(seconds >= WORKERS_GRACE_SECONDS && seconds < WORKERS_GRACE_SECONDS + 3.0,
              "took %.2f s; want the grace period (%.1f s) and then an end", seconds,
              WORKERS_GRACE_SECONDS);
    expect_all_reaped(&w);
}

Test(workers, poll_asking_to_stop_ends_every_worker, .init = make_shared, .fini = end_leftovers) {
    Workers w;
    double seconds;
    seen->stop_at_call = 5;
    int rc = start_and_wait(&w, 3, 0, false, sleeps_long_main, poll_stops, &seconds);
    cr_assert_eq(rc, 1, "workers_wait returned %d, want 1; stderr:\n%s", rc, err_text);
    cr_assert_lt(seconds, ENDED_WITHIN_S, "the workers were ended only after %.2f s", seconds);
    expect_all_reaped(&w);
}

Test(workers, sigterm_to_the_parent_ends_every_worker_and_returns_128_plus_15, .init = make_shared,
     .fini = end_leftovers) {
    Workers w;
    double seconds;
    seen->stop_at_call = 5;
    int rc = start_and_wait(&w, 3, 0, false, sleeps_long_main, poll_raises_sigterm, &seconds);
    cr_assert_eq(rc, 128 + SIGTERM, "workers_wait returned %d; stderr:\n%s", rc, err_text);
    cr_assert_lt(seconds, ENDED_WITHIN_S, "the workers were ended only after %.2f s", seconds);
    cr_assert_not_null(strstr(err_text, "signal 15"), "stderr does not name the signal:\n%s",
                       err_text);
    expect_all_reaped(&w);
}

// In a child allowed only the last CPU this test may use: 1 CPU counted, local rank 0
// pinned to it, local rank 1 refused with ERANGE. Exits 0, or the number of the check
// that failed.
static int bind_in_one_cpu(void) {
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return 1;
    int last = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &allowed))
            last = cpu;
    CPU_ZERO(&one);
    CPU_SET(last, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0)
        return 1;
    if (workers_cpu_count() != 1)
        return 2;
    errno = 0;
    if (workers_bind_cpu(1) != -1 || errno != ERANGE)
        return 3;
    if (workers_bind_cpu(0) != last || sched_getaffinity(0, sizeof allowed, &allowed) != 0 ||
        CPU_COUNT(&allowed) != 1 || !CPU_ISSET(last, &allowed))
        return 4;
    return 0;
}

Test(workers, bind_cpu_pins_the_local_rank_th_allowed_cpu_and_refuses_past_the_last) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0)
        _exit(bind_in_one_cpu());
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    static const char* const check[] = {"", "the test could not narrow its mask",
                                        "workers_cpu_count is not 1 under a 1-CPU mask",
                                        "local rank 1 of 1 CPU was not refused with ERANGE",
                                        "local rank 0 was not pinned to the one CPU"};
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    cr_assert_eq(code, 0, "%s", code > 0 && code <= 4 ? check[code] : "the child died");
}

// A bound worker: exits 0 when it may run on exactly one CPU, the one it is running on.
static int runs_on_one_cpu(int local_rank, void* arg) {
    (void)arg;
    seen->pid[local_rank] = getpid();
    cpu_set_t allowed;
    return sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) == 1 &&
                   CPU_ISSET(sched_getcpu(), &allowed)
               ? 0
               : 1;
}

Test(workers, start_with_bind_puts_every_worker_on_a_cpu_of_its_own, .init = make_shared,
     .fini = end_leftovers) {
    int count = workers_cpu_count() < 4 ? workers_cpu_count() : 4;
    if (count < 2)
        cr_skip_test("one CPU here: two workers cannot have one each");
    Workers w;
    double seconds;
    int rc = start_and_wait(&w, count, 0, true, runs_on_one_cpu, NULL, &seconds);
    cr_assert_eq(rc, 0, "a bound worker could run on more than its one CPU:\n%s", err_text);
    expect_bound_to_distinct_cpus("workers_start", err_text, 0, count);
    expect_all_reaped(&w);
}

Test(workers, check_bind_refuses_more_workers_than_cpus_and_workers_on_gpus) {
    char why[256] = "";
    int cpus = workers_cpu_count();
    cr_assert_eq(workers_check_bind(cpus, false, why, sizeof why), 0, "%s", why);
    cr_assert_eq(workers_check_bind(cpus + 1, false, why, sizeof why), -1);
    cr_assert(strstr(why, "workers need a CPU each") != NULL, "%s", why);
    cr_assert_eq(workers_check_bind(1, true, why, sizeof why), -1);
    cr_assert(strstr(why, "GPUs") != NULL, "%s", why);
}
