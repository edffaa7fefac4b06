/*
 * check.h - one place for error checks.
 *
 * Every failing call is reported the same way on stderr:
 *     [Rank r] common/mlp.c:42: cudaMalloc(&p, n): out of memory
 * The rank prefix appears once a program has called check_set_rank().
 *
 * Library code in common/ reports and returns -1; programs decide to exit.
 * Headers of common/ declare C functions, also when nvcc compiles a .cu file as C++.
 * APIs: CUDA_CHECK, NCCL_CHECK, SYS_CHECK, RETURN_IF_FAILED, check_report, check_message,
 *       check_set_rank.
 */
#ifndef CHECK_H
#define CHECK_H

#include <errno.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

// Sets the rank printed in front of every report (-1: no prefix).
void check_set_rank(int rank);
// Prints "[Rank r] file:line: expr: reason" on stderr.
void check_report(const char* file, int line, const char* expr, const char* reason);
// Prints "[Rank r] " and the formatted message, as one line on stderr.
void check_message(const char* format, ...) __attribute__((format(printf, 1, 2)));

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

#ifdef __CUDACC__
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
