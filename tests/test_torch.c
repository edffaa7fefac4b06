/*
 * test_torch.c - the C programs against PyTorch: same data and weights, same numbers.
 *
 * Principle 6 proved: each test runs a lesson (build/hello_gpu, build/multi_gpu on the
 * CPU) and tools/torch_reference.py --same-init, which re-derives the lesson's data,
 * initial weights and shuffle from their specification in Python and trains them with
 * PyTorch's own modules, autograd and optimizers (DistributedDataParallel over gloo for
 * several ranks). Nothing here is a stored number: both sides are computed at test time.
 *
 * Covered: lesson 01 with Adam and SGD at hidden sizes 64 and 32, lesson 02 with 2 and 3
 * ranks, lesson 04 accumulating micro-batches (against DDP's no_sync()), each for
 * LOSS_EPOCHS epochs, train and eval loss within LOSS_RTOL per epoch; the parameters
 * after exactly one optimizer step (the checkpoint that lesson 01 writes against the
 * script's --dump-params), within PARAM_ATOL; and lesson 04's buckets against
 * torch.distributed's _compute_bucket_assignment_by_size, bucket for bucket.
 *
 * The tests need a python that imports torch and numpy: $DDP_PYTHON if set, else
 * python3 on the PATH or /usr/bin/python3 (as tools/bench.sh looks). Without one they
 * skip, naming what is missing.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buckets.h"
#include "mlp.h"
#include "support/losses.h"
#include "support/proc.h"

#define HELLO_GPU build_program("hello_gpu")
#define MULTI_GPU build_program("multi_gpu")
#define DDP_OVERLAP build_program("ddp_overlap")
#define TORCH_REFERENCE "tools/torch_reference.py"

// Agreement seen on x86-64 with PyTorch 1.13: at most 2e-6 relative (float32 sums in
// another order, over 250 steps), also for C built with -O0 or without -march=native. A
// wrong constant, shuffle or layer moves the losses by 1e-3 or (far) more: 1e-4 keeps
// well over an order of magnitude on either side. Five epochs, as later ones would not
// do: Adam's division by tiny second moments amplifies rounding, so at these settings
// any two correct implementations (two C builds, too) part after about 15 epochs.
#define LOSS_RTOL 1e-4
#define LOSS_EPOCHS 5
// One step moves a parameter by up to the learning rate (1e-2); the two sides agree to
// about 1e-8. Absolute, as the parameters are at most 1 and many start near 0, where a
// relative difference means nothing.
#define PARAM_ATOL 1e-5

// ----------------------------------------------------------------------------
// finding a python with torch

// Whether python imports torch and numpy (find_spec: without importing them, fast).
static int python_has_torch(const char* python) {
    if (access(python, X_OK) != 0)
        return 0;
    const char* probe = "import importlib.util as u, sys; "
                        "sys.exit(0 if u.find_spec('torch') and u.find_spec('numpy') else 1)";
    Proc p = proc_run(python, (const char*[]){"-c", probe, NULL}, NULL);
    int ok = p.status == 0;
    proc_free(&p);
    return ok;
}

// The path of python3 in the directories of $PATH, into path; 0 if there is none.
static int python3_on_path(char* path, size_t len) {
    const char* env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", env != NULL ? env : "");
    for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir != NULL;
         dir = strtok_r(NULL, ":", &save)) {
        snprintf(path, len, "%s/python3", dir);
        if (access(path, X_OK) == 0)
            return 1;
    }
    return 0;
}

// A python with torch, or a skipped test that says what is missing.
static const char* torch_python_or_skip(void) {
    static char found[4096];
    const char* chosen = getenv("DDP_PYTHON");
    if (chosen != NULL) {
        if (!python_has_torch(chosen))
            cr_skip_test("DDP_PYTHON=%s does not import torch and numpy", chosen);
        return chosen;
    }
    if (python3_on_path(found, sizeof found) && python_has_torch(found))
        return found;
    if (python_has_torch("/usr/bin/python3"))
        return "/usr/bin/python3";
    cr_skip_test("no python with torch and numpy (tried python3 on PATH and /usr/bin/python3; "
                 "apt-get install python3-torch, or set DDP_PYTHON)");
    return NULL;
}

// ----------------------------------------------------------------------------
// running both sides

// Runs program with args (NULL-terminated) to its end and asserts exit status 0.
static void run_ok(const char* program, const char* const* args) {
    Proc p = proc_run(program, args, NULL);
    cr_assert_eq(p.status, 0, "%s: exit status %d; stdout:\n%s\nstderr:\n%s", program, p.status,
                 p.out.text, p.err.text);
    proc_free(&p);
}

// tools/torch_reference.py --same-init with the flags of a C run (NULL-terminated).
static void run_torch(const char* python, const char* const* flags) {
    const char* args[PROC_MAX_ARGS] = {TORCH_REFERENCE, "--same-init"};
    int n = 2;
    for (int i = 0; flags[i] != NULL; i++) {
        cr_assert_lt(n, PROC_MAX_ARGS - 1, "too many flags");
        args[n++] = flags[i];
    }
    args[n] = NULL;
    run_ok(python, args);
}

// Every epoch's train and eval loss of the C run (dir_c) within LOSS_RTOL of PyTorch's
// (dir_torch); logs the worst epoch and the largest relative difference either way.
static void expect_losses_match_torch(const char* what, const char* dir_c, const char* dir_torch) {
    double c[LOSS_EPOCHS + 1][2], t[LOSS_EPOCHS + 1][2];
    cr_assert_eq(losses_read(dir_c, c, LOSS_EPOCHS + 1), LOSS_EPOCHS, "%s: C epoch count", what);
    cr_assert_eq(losses_read(dir_torch, t, LOSS_EPOCHS + 1), LOSS_EPOCHS, "%s: torch epoch count",
                 what);
    double worst = 0.0;
    int worst_epoch = 0, worst_kind = 0;
    for (int e = 0; e < LOSS_EPOCHS; e++)
        for (int k = 0; k < 2; k++) {
            double rel = fabs(c[e][k] - t[e][k]) / fabs(t[e][k]);
            if (!(rel <= worst)) // a NaN is the worst of all
                worst = rel, worst_epoch = e, worst_kind = k;
        }
    const char* kind = worst_kind == 0 ? "train" : "eval";
    cr_log_info("%s: worst at epoch %d, %s loss %.9g (C) against %.9g (torch): max relative "
                "difference %.3g",
                what, worst_epoch + 1, kind, c[worst_epoch][worst_kind], t[worst_epoch][worst_kind],
                worst);
    cr_assert(worst <= LOSS_RTOL,
              "%s: worst at epoch %d, %s loss %.9g (C) against %.9g (torch): relative "
              "difference %.3g > %.0e",
              what, worst_epoch + 1, kind, c[worst_epoch][worst_kind], t[worst_epoch][worst_kind],
              worst, LOSS_RTOL);
}

// ----------------------------------------------------------------------------
// a) the losses, epoch by epoch

// Lesson 01 (ranks 1) or lesson 02 (ranks > 1) and PyTorch, LOSS_EPOCHS epochs at the
// default data, batch and learning rate.
static void expect_lesson_matches_torch(int ranks, const char* optimizer, const char* hidden) {
    const char* python = torch_python_or_skip();
    char dir_c[128], dir_torch[128], gpus[16], epochs[16], what[128];
    snprintf(dir_c, sizeof dir_c, "%s/c", temp_dir);
    snprintf(dir_torch, sizeof dir_torch, "%s/torch", temp_dir);
    snprintf(gpus, sizeof gpus, "%d", ranks);
    snprintf(epochs, sizeof epochs, "%d", LOSS_EPOCHS);
#define TRAINING_FLAGS "--epochs", epochs, "--optimizer", optimizer, "--hidden-size", hidden
    if (ranks == 1)
        run_ok(HELLO_GPU, (const char*[]){"--device", "cpu", TRAINING_FLAGS, "--out", dir_c, NULL});
    else
        run_ok(MULTI_GPU, (const char*[]){"--device", "cpu", "--backend", "ring", "--gpus", gpus,
                                          TRAINING_FLAGS, "--out", dir_c, NULL});
    run_torch(python, (const char*[]){"--ranks", gpus, TRAINING_FLAGS, "--out", dir_torch, NULL});
#undef TRAINING_FLAGS
    snprintf(what, sizeof what, "%s, %d rank%s, %s, hidden %s",
             ranks == 1 ? "lesson 01" : "lesson 02", ranks, ranks == 1 ? "" : "s", optimizer,
             hidden);
    expect_losses_match_torch(what, dir_c, dir_torch);
}

Test(torch, lesson_01_with_adam_and_hidden_64_has_pytorchs_losses, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_lesson_matches_torch(1, "adam", "64");
}

Test(torch, lesson_01_with_sgd_and_hidden_64_has_pytorchs_losses, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_lesson_matches_torch(1, "sgd", "64");
}

Test(torch, lesson_01_with_adam_and_hidden_32_has_pytorchs_losses, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_lesson_matches_torch(1, "adam", "32");
}

Test(torch, lesson_01_with_sgd_and_hidden_32_has_pytorchs_losses, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_lesson_matches_torch(1, "sgd", "32");
}

Test(torch, lesson_02_with_2_ranks_has_the_losses_of_pytorch_ddp, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_lesson_matches_torch(2, "adam", "64");
}

Test(torch, lesson_02_with_3_ranks_has_the_losses_of_pytorch_ddp, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_lesson_matches_torch(3, "adam", "64");
}

// Lesson 04 with --accumulate and its buckets against DDP with no_sync() and the same
// bucket_cap_mb.
static void expect_lesson_04_matches_torch(const char* ranks, const char* batch,
                                           const char* accumulate) {
    const char* python = torch_python_or_skip();
    char dir_c[128], dir_torch[128], epochs[16], what[128];
    snprintf(dir_c, sizeof dir_c, "%s/c", temp_dir);
    snprintf(dir_torch, sizeof dir_torch, "%s/torch", temp_dir);
    snprintf(epochs, sizeof epochs, "%d", LOSS_EPOCHS);
#define LESSON_04_FLAGS                                                                            \
    "--epochs", epochs, "--batch-size", batch, "--accumulate", accumulate, "--bucket-cap-kb", "1"
    run_ok(DDP_OVERLAP, (const char*[]){"--device", "cpu", "--gpus", ranks, LESSON_04_FLAGS,
                                        "--out", dir_c, NULL});
    run_torch(python, (const char*[]){"--ranks", ranks, LESSON_04_FLAGS, "--out", dir_torch, NULL});
#undef LESSON_04_FLAGS
    snprintf(what, sizeof what, "lesson 04, %s ranks, batch %s, accumulate %s", ranks, batch,
             accumulate);
    expect_losses_match_torch(what, dir_c, dir_torch);
}

Test(torch, lesson_04_accumulating_4_micro_batches_has_the_losses_of_ddp_with_no_sync,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    expect_lesson_04_matches_torch("2", "8", "4");
}

Test(torch, lesson_04_with_3_ranks_and_a_short_last_step_has_the_losses_of_ddp_with_no_sync,
     .init = temp_dir_make, .fini = proc_end_leftovers) {
    // 534 samples per rank: 67 micro-batches of 8 (the last of 6), so the last step has 1.
    expect_lesson_04_matches_torch("3", "8", "3");
}

// ----------------------------------------------------------------------------
// b) the parameters after one optimizer step

#define CHECKPOINT_HEADER_BYTES 48 // common/checkpoint.h: magic to optimizer_step

static uint64_t le_u64(const unsigned char* p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

// The names of the C layout's tensors, for messages: which one parameter i is in.
static const char* tensor_of(int i, int H) {
    int ends[] = {H,
                  2 * H,
                  2 * H + H * H,
                  3 * H + H * H,
                  4 * H + H * H,
                  5 * H + H * H,
                  6 * H + H * H,
                  6 * H + H * H + 1};
    const char* names[] = {"w1", "b1", "w2", "b2", "ln_gamma", "ln_beta", "w3", "b3"};
    for (int t = 0; t < 8; t++)
        if (i < ends[t])
            return names[t];
    return "?";
}

// 40 samples: 32 train, exactly one batch of 32, so one epoch is one step.
static void expect_one_step_matches_torch(const char* optimizer) {
    const char* python = torch_python_or_skip();
    const int H = 64, P = 6 * H + H * H + 1;
    char ck_dir[128], ck_path[160], dump[128];
    snprintf(ck_dir, sizeof ck_dir, "%s/ck", temp_dir);
    snprintf(ck_path, sizeof ck_path, "%s/checkpoint.bin", ck_dir);
    snprintf(dump, sizeof dump, "%s/torch_params.bin", temp_dir);
#define ONE_STEP                                                                                   \
    "--data-size", "40", "--batch-size", "32", "--epochs", "1", "--optimizer", optimizer
    run_ok(HELLO_GPU,
           (const char*[]){"--device", "cpu", ONE_STEP, "--checkpoint-dir", ck_dir, NULL});
    run_torch(python, (const char*[]){ONE_STEP, "--dump-params", dump, NULL});
#undef ONE_STEP

    size_t ck_len, dump_len;
    unsigned char* ck = (unsigned char*)read_file(ck_path, &ck_len);
    float* torch_params = (float*)read_file(dump, &dump_len);
    cr_assert_geq(ck_len, CHECKPOINT_HEADER_BYTES + 4 * (size_t)P, "%s: too short", ck_path);
    cr_assert_eq(memcmp(ck, "DDPCKPT\0", 8), 0, "%s: not a checkpoint", ck_path);
    cr_assert_eq(le_u64(ck + 16, 4), (uint64_t)P, "%s: num_params", ck_path);
    cr_assert_eq(le_u64(ck + 40, 8), 1, "%s: optimizer_step is not 1", ck_path);
    cr_assert_eq(dump_len, 4 * (size_t)P, "%s: %zu bytes, want %d floats", dump, dump_len, P);
    double worst = 0.0;
    int at = 0;
    for (int i = 0; i < P; i++) {
        float c;
        memcpy(&c, ck + CHECKPOINT_HEADER_BYTES + 4 * (size_t)i, sizeof c); // little-endian
        double diff = fabs((double)c - (double)torch_params[i]);
        if (!(diff <= worst))
            worst = diff, at = i;
    }
    float c_at;
    memcpy(&c_at, ck + CHECKPOINT_HEADER_BYTES + 4 * (size_t)at, sizeof c_at);
    cr_log_info("one %s step: worst parameter %d (%s) %.9g (C) against %.9g (torch): max "
                "absolute difference %.3g",
                optimizer, at, tensor_of(at, H), c_at, torch_params[at], worst);
    cr_assert(worst <= PARAM_ATOL,
              "one %s step: parameter %d (%s) is %.9g in C, %.9g in torch: absolute difference "
              "%.3g > %.0e",
              optimizer, at, tensor_of(at, H), c_at, torch_params[at], worst, PARAM_ATOL);
    free(ck);
    free(torch_params);
}

Test(torch, one_adam_step_gives_pytorchs_parameters, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_one_step_matches_torch("adam");
}

Test(torch, one_sgd_step_gives_pytorchs_parameters, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_one_step_matches_torch("sgd");
}

// ----------------------------------------------------------------------------
// c) lesson 04's buckets against torch.distributed's own assignment

// The buckets of common/buckets.c for hidden size H at cap, written as PyTorch writes
// its assignment: the tensors' indices in the order DDP is handed them (reversed
// parameters(): b3 is 0), one list per bucket, e.g. "[[0, 1, 2, 3, 4], [5], [6, 7]]".
static void format_buckets(int H, size_t cap, char* out, size_t len) {
    int sizes[MLP_TENSORS];
    mlp_tensor_sizes(H, sizes);
    Buckets b;
    buckets_assign(&b, sizes, MLP_TENSORS, cap);
    size_t used = (size_t)snprintf(out, len, "[");
    for (int i = 0, tensor = 0; i < b.count; i++) {
        used += (size_t)snprintf(out + used, len - used, "%s[", i > 0 ? ", " : "");
        for (int t = 0; t < b.b[i].tensors; t++, tensor++)
            used += (size_t)snprintf(out + used, len - used, "%s%d", t > 0 ? ", " : "", tensor);
        used += (size_t)snprintf(out + used, len - used, "]");
    }
    snprintf(out + used, len - used, "]");
}

Test(torch, lesson_04s_buckets_are_ddps_at_every_cap, .fini = proc_end_leftovers) {
    const char* python = torch_python_or_skip();
    const char* script = "import sys, torch, torch.distributed as d\n"
                         "H = int(sys.argv[1])\n"
                         "sizes = [H, H, H * H, H, H, H, H, 1]\n"
                         "for cap in map(int, sys.argv[2:]):\n"
                         "    tensors = [torch.zeros(n) for n in reversed(sizes)]\n"
                         "    print(d._compute_bucket_assignment_by_size(tensors, [cap])[0])\n";
    const char* caps[] = {"4",     "256",   "300",     "1024",    "4096",
                          "16384", "20000", "1048576", "26214400"};
    const char* hidden[] = {"64", "7", "512"};
    for (size_t h = 0; h < sizeof hidden / sizeof *hidden; h++) {
        const char* args[PROC_MAX_ARGS] = {"-c", script, hidden[h]};
        int n = 3;
        for (size_t c = 0; c < sizeof caps / sizeof *caps; c++)
            args[n++] = caps[c];
        args[n] = NULL;
        Proc p = proc_run(python, args, NULL);
        cr_assert_eq(p.status, 0, "torch's bucket assignment: exit status %d; stderr:\n%s",
                     p.status, p.err.text);
        const char* line = p.out.text;
        for (size_t c = 0; c < sizeof caps / sizeof *caps; c++) {
            char ours[256];
            format_buckets(atoi(hidden[h]), (size_t)atol(caps[c]), ours, sizeof ours);
            size_t len = strcspn(line, "\n");
            cr_assert(strlen(ours) == len && strncmp(line, ours, len) == 0,
                      "hidden %s, cap %s bytes: torch makes %.*s, buckets_assign %s", hidden[h],
                      caps[c], (int)len, line, ours);
            line += len + (line[len] == '\n');
        }
        proc_free(&p);
    }
}
