/*
 * test_nccl.cu - NCCL with one rank on one GPU (common/collective.c): what one GPU can check.
 *
 * With one rank an all-reduce adds nothing, so these tests check no reduction (that needs
 * two GPUs): they check NCCL's non-blocking init within its deadline, that its stream
 * waits for the compute queued before a collective (stream order), and that a
 * communicator ends cleanly by finalize and at once by abort.
 *
 * Without a GPU, or in a build without NCCL, every test skips. The tests share one
 * device: run with --jobs 1.
 */
#include <criterion/criterion.h>
#include <cuda_runtime.h>
#include <string.h>
#include <sys/socket.h>

#include "collective.h"
#include "device.h"
#include "kernels.h"

#define TIMEOUT_S 30.0
// The compute that an all-reduce must wait for: a kernel that runs this long (about).
#define SLOW_KERNEL_CYCLES (50LL * 1000 * 1000)
#define COUNT 4096

static void skip_without_nccl_and_gpu(void) {
    if (device_gpu_count() == 0)
        cr_skip_test("no GPU: NCCL cannot run here");
    if (strcmp(comm_nccl_version(), "none") == 0)
        cr_skip_test("no NCCL in this build");
}

// A one-rank communicator on GPU 0, its unique id passed on the ring's way (to no one).
static Communicator* one_rank_nccl(void) {
    int fds[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0, "socketpair");
    cr_assert_eq(cudaSetDevice(0), cudaSuccess);
    CommSettings s;
    memset(&s, 0, sizeof s); // (C++ has no designated initializers with the rest zeroed)
    s.world_size = 1;
    s.timeout_s = TIMEOUT_S;
    s.k = &kernels_cuda;
    NcclIdRoute route;
    memset(&route, 0, sizeof route);
    route.transport = NCCL_ID_BY_RING;
    route.send_fd = fds[0];
    route.recv_fd = fds[1];
    Communicator* c = NULL;
    cr_assert_eq(comm_init_nccl(&c, s, &route), 0, "comm_init_nccl with one rank failed");
    cr_assert_not_null(c);
    return c;
}

// Spins for about cycles, then writes value into buf (n floats): compute still running
// when the collective after it is queued.
__global__ void slow_fill_kernel(float* buf, int n, float value, long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles)
        ;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        buf[i] = value;
}

Test(nccl_one_rank, init_and_finalize_end_within_the_deadline) {
    skip_without_nccl_and_gpu();
    Communicator* c = one_rank_nccl();
    cr_assert_eq(comm_backend(c), BACKEND_NCCL);
    cr_assert_eq(comm_barrier(c), 0, "a barrier of one rank failed");
    comm_destroy(c);
}

Test(nccl_one_rank, an_allreduce_waits_for_the_compute_queued_before_it) {
    skip_without_nccl_and_gpu();
    Communicator* c = one_rank_nccl();
    float* buf = (float*)kernels_cuda.alloc(COUNT * sizeof(float));
    cr_assert_not_null(buf);
    // On the legacy default stream, which the model's stream (a blocking one) waits for.
    slow_fill_kernel<<<1, 256>>>(buf, COUNT, 3.0f, SLOW_KERNEL_CYCLES);
    cr_assert_eq(cudaGetLastError(), cudaSuccess);
    cr_assert_eq(comm_allreduce_sum(c, buf, COUNT, COMM_ONCE("stream order")), 0);
    // The all-reduce has ended; if NCCL's stream had not waited, the kernel would still run.
    cr_assert_eq(cudaStreamQuery(cudaStreamLegacy), cudaSuccess,
                 "the all-reduce ended before the compute it follows");
    static float host[COUNT];
    cr_assert_eq(kernels_cuda.download(host, buf, sizeof host), 0);
    for (int i = 0; i < COUNT; i++)
        cr_assert_eq(host[i], 3.0f, "element %d: %g after a one-rank sum of 3", i, host[i]);
    kernels_cuda.release(buf);
    comm_destroy(c);
}

Test(nccl_one_rank, abort_ends_a_communicator_and_leaves_the_gpu_to_a_new_one) {
    skip_without_nccl_and_gpu();
    Communicator* c = one_rank_nccl();
    float* buf = (float*)kernels_cuda.alloc(COUNT * sizeof(float));
    cr_assert_not_null(buf);
    cr_assert_eq(comm_allreduce_sum(c, buf, COUNT, COMM_ONCE("before the abort")), 0);
    comm_abort(c); // what a rank does when another one failed: no finalize, no waiting
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "the GPU is unusable after the abort");
    Communicator* again = one_rank_nccl();
    cr_assert_eq(comm_allreduce_sum(again, buf, COUNT, COMM_ONCE("after the abort")), 0);
    comm_destroy(again);
    kernels_cuda.release(buf);
}
