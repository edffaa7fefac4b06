/*
 * workers.h - one process per rank: fork them, watch them, end them together.
 *
 * The parent forks before it touches CUDA (a forked child cannot use a CUDA
 * context made by its parent); each worker then picks its own device. The
 * parent only supervises: when a worker exits non-zero or is killed, it says
 * which rank failed and how (with the last line that worker logged), ends the
 * others (SIGTERM, then SIGKILL after a grace period) and reports failure.
 * SIGINT or SIGTERM to the parent ends every worker, and a worker whose parent
 * dies is killed by the kernel. A worker starts with the default signal
 * dispositions, whatever the parent had set (a restart's parent catches SIGTERM).
 *
 * Workers may also be bound, each to a CPU of its own (--bind), as Open MPI binds its
 * ranks by default: two ranks left to the scheduler can end up taking turns on one core
 * while another idles. It is a choice, not the default: two jobs on one shared machine
 * would both bind to its first CPUs.
 *
 * APIs: WorkerMain, Workers, WorkersPoll, workers_start, workers_wait, workers_stop,
 *       workers_check_bind, workers_cpu_count, workers_bind_cpu.
 */
#ifndef WORKERS_H
#define WORKERS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WORKERS_MAX 64
#define WORKERS_GRACE_SECONDS 2.0
// A worker's exit status for a failure that a restart cannot cure (rank_log_for_good).
#define WORKERS_EXIT_FOR_GOOD 3
#define WORKERS_LAST_LINE_BYTES 512

// A worker's whole life; its return value becomes the process's exit status.
typedef int (*WorkerMain)(int local_rank, void* arg);

typedef struct {
    int count;
    int first_rank;          // global rank of local worker 0 (lesson 03: several nodes)
    pid_t pids[WORKERS_MAX]; // 0 once reaped
    // the first failure: "[Rank 3] killed by signal 9 (Killed)", or "[Rank 0] exited with
    // status 1: " and the last line that worker logged
    char failure[WORKERS_LAST_LINE_BYTES + 128];
    bool failure_is_signal;   // it was killed, rather than exiting with an error
    bool failure_is_for_good; // it exited with WORKERS_EXIT_FOR_GOOD: no restart can help
    // (count) what each worker logged last, in memory the workers share with the parent
    char (*last_line)[WORKERS_LAST_LINE_BYTES];
} Workers;

// Forks count workers, each running main(local_rank, arg); with bind, each first pins
// itself to a CPU of its own (workers_bind_cpu) and logs "--bind: CPU n". Returns 0, or -1
// (after ending those already started) if a fork fails.
int workers_start(Workers* w, int count, int first_rank, bool bind, WorkerMain main, void* arg);

// Called about every 10 ms while waiting; a non-zero return ends every worker.
typedef int (*WorkersPoll)(void* arg);

// Waits for every worker. Returns 0 if all exited with status 0; otherwise
// ends the rest and returns 1 (a worker failed or poll asked to stop) or
// 128 + signal (the parent was interrupted). poll may be NULL.
int workers_wait(Workers* w, WorkersPoll poll, void* poll_arg);

// Ends every worker still running: SIGTERM, and SIGKILL after the grace period.
void workers_stop(Workers* w);

// --bind's checks, before the fork: count workers need a CPU each, and workers that compute
// on GPUs are not bound in rank order (the CPUs near each GPU are the machine's to tell:
// numactl, the batch system). Returns 0, or -1 with why filled.
int workers_check_bind(int count, bool on_gpus, char* why, size_t why_len);
// What a program started by mpirun says to --bind: mpirun binds its ranks itself.
#define WORKERS_BIND_UNDER_MPIRUN "--bind: under mpirun, mpirun binds the ranks (--bind-to)"
// The CPUs this process may run on (its affinity mask, which taskset or a batch system may
// have narrowed), or -1 with errno.
int workers_cpu_count(void);
// Pins the calling process to the local_rank-th of those CPUs (in their numbering's
// order), so that workers 0 .. N-1 get N different CPUs when N <= workers_cpu_count().
// Returns the CPU's number, or -1 with errno (ERANGE: not that many CPUs).
int workers_bind_cpu(int local_rank);

#ifdef __cplusplus
}
#endif

#endif
