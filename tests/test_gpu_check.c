/*
 * test_gpu_check.c - the first contact with a bare GPU machine, rehearsed on this one.
 *
 * A bare GPU image has CUDA and python3 with PyTorch, NCCL only as the pip wheel
 * (site-packages/nvidia/nccl), and no Criterion or libsodium. Each test copies the tree
 * (what git tracks or would track, as the GPU machine receives it), makes a fake wheel
 * from this machine's NCCL (nccl.h and libnccl.so.2 only, found through PYTHONPATH) and
 * a bundle with tools/gpu_bundle.sh, then works in tests/support/bare_machine.sh, a
 * mount namespace where the system's Criterion, libsodium and NCCL are absent. There:
 * the Makefile finds NCCL in the wheel and leaves out only lesson 03 and its tests
 * without libsodium, and tools/gpu_check.sh builds from the bundle and the wheel, runs a
 * test suite with the bundle's Criterion, and reports every GPU step as skipped, no GPU.
 *
 * Skips, saying why, without root or permission for a mount namespace, without the
 * Debian packages that the bundle is made of, or without NCCL in the CUDA toolkit.
 * Meant for a machine without a GPU (on one with a GPU the GPU steps would run).
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "support/proc.h"

#define GPU_CHECK_DEADLINE_S 240.0 // the bare machine's whole check: a CUDA build from scratch
#define SETUP_DEADLINE_S 120.0     // the tree's copy, the wheel, the bundle

// The files of one test (the tree's copy, the fake wheel, the bundle), and the
// environment that names them to the scripts: TREE, SITE, BUNDLE.
typedef struct {
    char tree[PATH_MAX], site[PATH_MAX], bundle[PATH_MAX];
    char env_text[3][PATH_MAX + 8];
    const char* env[4];
} Bare;

// Not passed on to the scripts. Criterion marks the processes of its sandbox with BXFI_MAP
// and GMON_OUT_PREFIX: a Criterion binary that inherits them (gpu_check.sh runs one) takes
// itself for a sandboxed test and aborts. Make's would turn the scripts' builds into
// `make test`'s own (NO_CUDA=1 and all), and DDP_BUILD would point their tests elsewhere.
static const char* const INHERITED_VARS[] = {"BXFI_MAP",  "GMON_OUT_PREFIX", "MAKEFLAGS", "MFLAGS",
                                             "MAKELEVEL", "MAKEOVERRIDES",   "NO_CUDA",   "NO_MPI",
                                             "CUDA_ARCH", "DDP_BUILD",       "NCCL_HOME", NULL};

// Runs a bash script in the repository root with "KEY=value" env, to its end or deadline_s.
static Proc run_bash(const char* script, const char* const* env, double deadline_s) {
    Proc p;
    proc_start(&p, "/bin/bash", (const char*[]){"-c", script, NULL},
               &(ProcOptions){.name = "bash", .env = env, .unset_env = INHERITED_VARS});
    proc_finish(&p, p.started_at + deadline_s);
    cr_assert_neq(p.status, -1, "ran past %.0f s: %s\nstdout:\n%s\nstderr:\n%s", deadline_s, script,
                  p.out.text, p.err.text);
    return p;
}

// Runs a script, skipping the test with its stderr when it exits 77, failing on any other error.
static Proc run_step(const char* what, const char* script, const char* const* env,
                     double deadline_s) {
    Proc p = run_bash(script, env, deadline_s);
    if (p.status == 77)
        cr_skip_test("%s: %s", what, p.err.text);
    cr_assert_eq(p.status, 0, "%s: exit status %d\nstdout:\n%s\nstderr:\n%s", what, p.status,
                 p.out.text, p.err.text);
    return p;
}

// The tree as the GPU machine receives it, and NCCL laid out as the pip wheel ships it.
static const char COPY_TREE_AND_WHEEL[] =
    "set -e; cuda=${CUDA_HOME:-/usr/local/cuda}\n"
    "git rev-parse --is-inside-work-tree >/dev/null 2>&1 ||\n"
    "  { echo 'not a git checkout: no list of the files a GPU machine receives' >&2; exit 77; }\n"
    "command -v nvcc >/dev/null || [ -x \"$cuda/bin/nvcc\" ] ||\n"
    "  { echo \"no nvcc (PATH, $cuda/bin): no CUDA build to rehearse\" >&2; exit 77; }\n"
    "[ -f \"$cuda/include/nccl.h\" ] && [ -e \"$cuda/lib64/libnccl.so.2\" ] ||\n"
    "  { echo \"no NCCL in $cuda to make a wheel of\" >&2; exit 77; }\n"
    "mkdir -p \"$TREE\" \"$SITE/nvidia/nccl/include\" \"$SITE/nvidia/nccl/lib\"\n"
    "git ls-files -z -c -o --exclude-standard | tar --null -T - --ignore-failed-read -cf - "
    "2>/dev/null | tar -xf - -C \"$TREE\"\n"
    "cp \"$cuda/include/nccl.h\" \"$SITE/nvidia/nccl/include/\"\n"
    "lib=$(readlink -f \"$cuda/lib64/libnccl.so.2\")\n"
    "ln \"$lib\" \"$SITE/nvidia/nccl/lib/libnccl.so.2\" 2>/dev/null ||\n"
    "  cp \"$lib\" \"$SITE/nvidia/nccl/lib/libnccl.so.2\"\n";

// tools/gpu_bundle.sh; a machine without the packages it gathers skips.
static const char MAKE_BUNDLE[] = "out=$(tools/gpu_bundle.sh \"$BUNDLE\" 2>&1) && exit 0\n"
                                  "case $out in *'not installed'* | *'dpkg-query not found'*) echo "
                                  "\"$out\" >&2; exit 77 ;; esac\n"
                                  "echo \"$out\" >&2; exit 1\n";

// Sets up b in temp_dir (the tree, the wheel, the bundle); skips where it cannot be done.
static void bare_setup(Bare* b) {
    snprintf(b->tree, sizeof b->tree, "%s/tree", temp_dir);
    snprintf(b->site, sizeof b->site, "%s/site", temp_dir);
    snprintf(b->bundle, sizeof b->bundle, "%s/bundle", temp_dir);
    snprintf(b->env_text[0], sizeof b->env_text[0], "TREE=%s", b->tree);
    snprintf(b->env_text[1], sizeof b->env_text[1], "SITE=%s", b->site);
    snprintf(b->env_text[2], sizeof b->env_text[2], "BUNDLE=%s", b->bundle);
    for (int i = 0; i < 3; i++)
        b->env[i] = b->env_text[i];
    b->env[3] = NULL;
    if (access("/dev/nvidia0", F_OK) == 0 || access("/proc/driver/nvidia/gpus", F_OK) == 0)
        cr_skip_test("a GPU is here: run tools/gpu_check.sh itself, not its rehearsal");
    Proc ns = run_bash("tests/support/bare_machine.sh true", NULL, 30);
    if (ns.status == 77)
        cr_skip_test("%s", ns.err.text);
    cr_assert_eq(ns.status, 0, "bare_machine.sh true: exit status %d\n%s", ns.status, ns.err.text);
    Proc t = run_step("the tree and the wheel", COPY_TREE_AND_WHEEL, b->env, SETUP_DEADLINE_S);
    Proc g = run_step("tools/gpu_bundle.sh", MAKE_BUNDLE, b->env, SETUP_DEADLINE_S);
    proc_free(&ns);
    proc_free(&t);
    proc_free(&g);
}

// Asserts that text has a line that starts with prefix and contains also (NULL: anything).
static void expect_line(const char* text, const char* prefix, const char* also) {
    for (const char* line = text; line != NULL && *line != '\0';) {
        const char* end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        char buf[2048];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), line);
        if (strncmp(buf, prefix, strlen(prefix)) == 0 && (also == NULL || strstr(buf, also)))
            return;
        line = end != NULL ? end + 1 : NULL;
    }
    cr_assert_fail("no line that starts with '%s'%s%s in:\n%s", prefix, also ? " and has " : "",
                   also ? also : "", text);
}

TestSuite(gpu_check, .init = temp_dir_make, .fini = proc_end_leftovers, .timeout = 400);

Test(gpu_check, without_libsodium_only_lesson_03_and_its_tests_leave_the_build) {
    Bare b;
    bare_setup(&b);
    // The bundle without libsodium: Criterion only.
    Proc p = run_step(
        "make found and make -n on the bare machine",
        "set -e; rm -rf \"$BUNDLE\"/include/sodium* \"$BUNDLE\"/lib/libsodium*; cd \"$TREE\"\n"
        "tests/support/bare_machine.sh env PYTHONPATH=\"$SITE\" make found BUNDLE=\"$BUNDLE\"\n"
        "tests/support/bare_machine.sh env PYTHONPATH=\"$SITE\" make -n all tests "
        "BUNDLE=\"$BUNDLE\" CUDA_ARCH=-arch=sm_90 | grep -o ' -o build/[^ ]*' | sort -u\n",
        b.env, SETUP_DEADLINE_S);
    expect_line(p.out.text, "NCCL: found in the pip wheel (", b.site);
    expect_line(p.out.text, "libsodium: not found: lesson 03 and its tests left out", NULL);
    expect_line(p.out.text, "Criterion: found", NULL);
    const char* built[] = {"hello_gpu",
                           "multi_gpu",
                           "ddp_overlap",
                           "allreduce_bench",
                           "tests/test_config",
                           "tests/test_multi_gpu",
                           "tests/gpu/test_kernels"};
    char want[128];
    for (size_t i = 0; i < sizeof built / sizeof *built; i++) {
        snprintf(want, sizeof want, "\n -o build/%s\n", built[i]);
        cr_expect_not_null(strstr(p.out.text, want), "make -n does not build %s:\n%s", built[i],
                           p.out.text);
    }
    const char* left_out[] = {"multi_node", "tests/test_rendezvous", "tests/test_multi_node"};
    for (size_t i = 0; i < sizeof left_out / sizeof *left_out; i++) {
        snprintf(want, sizeof want, "\n -o build/%s\n", left_out[i]);
        cr_expect_null(strstr(p.out.text, want), "make -n builds %s without libsodium:\n%s",
                       left_out[i], p.out.text);
    }
    proc_free(&p);
}

Test(gpu_check, builds_from_the_bundle_and_the_wheel_and_skips_the_gpu_steps_saying_no_gpu) {
    Bare b;
    bare_setup(&b);
    Proc p = run_bash("cd \"$TREE\" && tests/support/bare_machine.sh bash -c '"
                      "RUNS=1 PYTHONPATH=\"$SITE\" tools/gpu_check.sh; s=$?; "
                      "echo \"== ldd\"; ldd build/hello_gpu; exit $s'",
                      b.env, GPU_CHECK_DEADLINE_S);
    cr_assert_eq(p.status, 0, "gpu_check.sh: exit status %d\nstdout:\n%s\nstderr:\n%s", p.status,
                 p.out.text, p.err.text);
    cr_expect_null(strstr(p.out.text, "FAILED"), "a step failed:\n%s", p.out.text);
    expect_line(p.out.text, "---- ok: bundle", NULL);
    expect_line(p.out.text, "---- ok: build", NULL);
    expect_line(p.out.text, "---- ok: a CPU test suite runs here", NULL);
    expect_line(p.out.text, "NCCL: found in the pip wheel (", b.site);
    char from_bundle[PATH_MAX + 64];
    snprintf(from_bundle, sizeof from_bundle, "=> %s/lib/libcriterion.so.3", b.bundle);
    expect_line(p.out.text, "\tlibcriterion.so.3 ", from_bundle);
    char from_wheel[PATH_MAX + 64];
    snprintf(from_wheel, sizeof from_wheel, "=> %s/nvidia/nccl/lib/libnccl.so.2", b.site);
    expect_line(p.out.text, "\tlibnccl.so.2 ", from_wheel);
    const char* gpu_steps[] = {
        "GPU tests: CUDA kernels",    "lesson 02's GPU tests", "lesson 01 under compute-sanitizer",
        "lesson 01: GPU and CPU",     "lesson 02 on the GPU",  "all-reduce benchmark on NCCL",
        "timing lesson 01 on the GPU"};
    char prefix[128];
    for (size_t i = 0; i < sizeof gpu_steps / sizeof *gpu_steps; i++) {
        snprintf(prefix, sizeof prefix, "---- skipped: %s", gpu_steps[i]);
        expect_line(p.out.text, prefix, ": no GPU");
    }
    expect_line(p.out.text, "| lesson 01 (C), cpu | 0.", NULL);
    expect_line(p.out.text, "| lesson 01 (C), cuda", "| skipped: no GPU");
    proc_free(&p);
}

// BUDGET_S: once it is spent, every step left is skipped, and the summary and the table still
// come back (the call's limit would otherwise cut them off).
Test(gpu_check, past_its_time_budget_every_step_left_is_skipped_and_the_summary_still_comes) {
    Proc p = run_bash("BUDGET_S=0 tools/gpu_check.sh", NULL, 60);
    cr_assert_eq(p.status, 0, "gpu_check.sh: exit status %d\nstdout:\n%s\nstderr:\n%s", p.status,
                 p.out.text, p.err.text);
    expect_line(p.out.text, "---- skipped: build", "past the time budget (BUDGET_S=0 s)");
    expect_line(p.out.text, "---- skipped: timing PyTorch on the GPU", "past the time budget");
    expect_line(p.out.text, "---- skipped: the benchmark matrix", "past the time budget");
    cr_expect_null(strstr(p.out.text, "---- ok:"), "a step ran past the budget:\n%s", p.out.text);
    expect_line(p.out.text, "==== summary ====", NULL);
    expect_line(p.out.text, "no step failed", NULL);
    expect_line(p.out.text, "| lesson 01 at defaults |", NULL);
    proc_free(&p);
}
