/*
 * check.h - one error convention for common/, and the checks that follow it.
 *
 * The rule, for every module of common/:
 *   1. A function that checks what a user handed the program - a flag, an
 *      environment value, a file, a directory, an address - fills `why` (a
 *      char[ERROR_TEXT_BYTES] of the caller's) with one line and returns -1. It
 *      prints nothing: the program decides how to say it (usage_error in
 *      config.h prints "error: WHY" and gives exit status 2).
 *   2. Everything else - memory, devices, the network during a run, a save
 *      mid-training - reports through rank_log, one line on stderr prefixed
 *      "[Rank r] " once a program has called rank_log_set_rank, and returns -1.
 *      Callers pass the -1 on (RETURN_IF_FAILED) without printing again.
 *   A failure that a restart cannot cure (a full disk, a run whose loss diverged) is
 *   reported with rank_log_for_good instead: a worker that saw one exits with
 *   WORKERS_EXIT_FOR_GOOD (workers.h), and the job ends instead of restarting.
 *   3. The socket layer (net.h) is the one exception: like the system calls it
 *      wraps it returns a status (NetStatus, or -1 with errno), because only its
 *      caller knows what the bytes were for and can put the failure into words.
 * No other code of common/ writes to stderr, and none of it calls exit().
 *
 * A failing call is reported the same way everywhere:
 *     [Rank r] common/mlp.c:42: cudaMalloc(&p, n): out of memory
 *
 * Headers of common/ declare C functions, also when nvcc compiles a .cu file as C++.
 * APIs: ERROR_TEXT_BYTES, CUDA_CHECK, NCCL_CHECK, SYS_CHECK, RETURN_IF_FAILED, check_report,
 *       rank_log, rank_log_set_rank, rank_log_for_good, rank_failed_for_good,
 *       rank_log_keep_last_line, malloc_nonzero.
 */
#ifndef CHECK_H
#define CHECK_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

// The size of a `why` buffer: one line of explanation.
#define ERROR_TEXT_BYTES 512

// Sets the rank printed in front of every line of rank_log (-1: no prefix).
void rank_log_set_rank(int rank);
// Prints "[Rank r] " and the formatted message, as one line on stderr (one write, so that
// the lines of several ranks do not interleave).
void rank_log(const char* format, ...) __attribute__((format(printf, 1, 2)));
// Prints "[Rank r] file:line: expr: reason" through rank_log.
void check_report(const char* file, int line, const char* expr, const char* reason);
// rank_log for a failure that a restart cannot cure; rank_failed_for_good() is then true.
void rank_log_for_good(const char* format, ...) __attribute__((format(printf, 1, 2)));
bool rank_failed_for_good(void);
// From now on every line of rank_log (its message, without the prefix) is copied into
// buffer (len bytes): a worker's supervisor can then name what the worker said last.
void rank_log_keep_last_line(char* buffer, size_t len);

// malloc that never asks for 0 bytes, where malloc(0) may return NULL and a count of 0
// (an empty shard, no epochs yet) would look like a failure.
static inline void* malloc_nonzero(size_t bytes) {
    return malloc(bytes > 0 ? bytes : 1);
}

// A POSIX call that returns -1 and sets errno on failure.
#define SYS_CHECK(expr)                                                                            \
    do {                                                                                           \
        if ((expr) == -1) {                                                                        \
            check_report(__FILE__, __LINE__, #expr, strerror(errno));                              \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

// A call into common/ that returns 0 on success; it has already reported its failure.
#define RETURN_IF_FAILED(expr)                                                                     \
    do {                                                                                           \
        if ((expr) != 0)                                                                           \
            return -1;                                                                             \
    } while (0)

#if defined(__CUDACC__) || defined(CUDA_ON_CPU)
#define CUDA_CHECK(expr)                                                                           \
    do {                                                                                           \
        cudaError_t check_err_ = (expr);                                                           \
        if (check_err_ != cudaSuccess) {                                                           \
            check_report(__FILE__, __LINE__, #expr, cudaGetErrorString(check_err_));               \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)
#endif

#ifdef NCCL_H_
#define NCCL_CHECK(expr)                                                                           \
    do {                                                                                           \
        ncclResult_t check_res_ = (expr);                                                          \
        if (check_res_ != ncclSuccess) {                                                           \
            check_report(__FILE__, __LINE__, #expr, ncclGetErrorString(check_res_));               \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)
#endif

#ifdef __cplusplus
}
#endif

#endif
