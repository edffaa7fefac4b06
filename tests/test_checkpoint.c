/*
 * test_checkpoint.c - the checkpoint file (common/checkpoint.h): what it keeps, what it refuses.
 *
 * Covered: a round trip keeps every bit; every truncation and every flipped bit of a
 * file is refused with a reason; wrong magic, version and model shape are named; what
 * a run finds in --checkpoint-dir for each resume mode; and a writer killed at many
 * moments of its writes leaves a checkpoint that loads, whole, every time.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "mlp.h"
#include "support/proc.h"

// ----------------------------------------------------------------------------
// a checkpoint to play with

// A checkpoint of a model of hidden size H after epochs_done epochs; every float is
// different and derived from tag, so that two checkpoints of another tag differ everywhere.
static Checkpoint make_checkpoint(int H, int epochs_done, int tag) {
    Checkpoint ck = {.hidden = H,
                     .num_params = mlp_num_params(H),
                     .world_size = 2,
                     .seed = 42,
                     .settings_hash = 0x12345678u,
                     .epochs_done = epochs_done,
                     .optimizer_step = 50 * epochs_done};
    size_t P = (size_t)ck.num_params;
    ck.params = malloc(P * sizeof(float));
    ck.opt_m = malloc(P * sizeof(float));
    ck.opt_v = malloc(P * sizeof(float));
    ck.history = malloc((size_t)epochs_done * sizeof(EpochStats) + 1);
    cr_assert(ck.params && ck.opt_m && ck.opt_v && ck.history);
    for (size_t i = 0; i < P; i++) {
        ck.params[i] = (float)tag + (float)i * 0.25f - 3.0f;
        ck.opt_m[i] = (float)tag * 1e-3f - (float)i;
        ck.opt_v[i] = (float)tag + (float)i * 1e-6f;
    }
    for (int e = 0; e < epochs_done; e++)
        ck.history[e] = (EpochStats){.train_loss = 1.0f / (float)(e + tag),
                                     .eval_loss = 2.0f / (float)(e + tag),
                                     .seconds = 0.001 * (e + 1)};
    return ck;
}

// Every field and every element of a equals b's, bit for bit; what names the comparison.
static void expect_same_checkpoint(const Checkpoint* a, const Checkpoint* b, const char* what) {
    cr_assert(a->hidden == b->hidden && a->num_params == b->num_params &&
                  a->world_size == b->world_size && a->seed == b->seed &&
                  a->settings_hash == b->settings_hash && a->epochs_done == b->epochs_done &&
                  a->optimizer_step == b->optimizer_step,
              "%s: the header differs", what);
    size_t bytes = (size_t)a->num_params * sizeof(float);
    cr_assert(memcmp(a->params, b->params, bytes) == 0, "%s: params differ", what);
    cr_assert(memcmp(a->opt_m, b->opt_m, bytes) == 0, "%s: opt_m differs", what);
    cr_assert(memcmp(a->opt_v, b->opt_v, bytes) == 0, "%s: opt_v differs", what);
    for (int e = 0; e < a->epochs_done; e++)
        cr_assert(a->history[e].train_loss == b->history[e].train_loss &&
                      a->history[e].eval_loss == b->history[e].eval_loss &&
                      a->history[e].seconds == b->history[e].seconds,
                  "%s: the history differs at epoch %d", what, e + 1);
}

// ----------------------------------------------------------------------------
// a) the encoding

Test(checkpoint, a_round_trip_keeps_every_bit) {
    Checkpoint ck = make_checkpoint(64, 7, 1), back;
    size_t len;
    char why[512];
    unsigned char* bytes = checkpoint_encode(&ck, &len);
    cr_assert_not_null(bytes);
    cr_assert_eq(len, 48 + 12 * (size_t)ck.num_params + 16 * 7 + 4, "file length %zu", len);
    cr_assert_eq(checkpoint_decode(&back, bytes, len, why, sizeof why), 0, "decode: %s", why);
    expect_same_checkpoint(&ck, &back, "after a round trip");
    free(bytes);
    checkpoint_free(&ck);
    checkpoint_free(&back);
}

Test(checkpoint, every_truncation_is_refused_as_truncated) {
    Checkpoint ck = make_checkpoint(2, 3, 1), back;
    size_t len;
    char why[512];
    unsigned char* bytes = checkpoint_encode(&ck, &len);
    for (size_t cut = 0; cut < len; cut++) {
        why[0] = '\0';
        cr_assert_eq(checkpoint_decode(&back, bytes, cut, why, sizeof why), -1,
                     "%zu of %zu bytes were accepted", cut, len);
        cr_assert_not_null(strstr(why, "truncated"), "%zu of %zu bytes: '%s'", cut, len, why);
    }
    free(bytes);
    checkpoint_free(&ck);
}

Test(checkpoint, every_flipped_bit_is_refused_with_a_reason) {
    Checkpoint ck = make_checkpoint(2, 3, 1), back;
    size_t len;
    char why[512];
    unsigned char* bytes = checkpoint_encode(&ck, &len);
    for (size_t i = 0; i < len; i++)
        for (int bit = 0; bit < 8; bit++) {
            bytes[i] ^= (unsigned char)(1 << bit);
            why[0] = '\0';
            cr_assert_eq(checkpoint_decode(&back, bytes, len, why, sizeof why), -1,
                         "bit %d of byte %zu flipped was accepted", bit, i);
            cr_assert_neq(why[0], '\0', "bit %d of byte %zu: no reason given", bit, i);
            bytes[i] ^= (unsigned char)(1 << bit);
        }
    free(bytes);
    checkpoint_free(&ck);
}

// Decodes bytes after change(bytes) and expects a refusal whose reason contains want.
static void expect_refused(void (*change)(unsigned char*), const char* want) {
    Checkpoint ck = make_checkpoint(4, 2, 1), back;
    size_t len;
    char why[512] = "";
    unsigned char* bytes = checkpoint_encode(&ck, &len);
    change(bytes);
    cr_assert_eq(checkpoint_decode(&back, bytes, len, why, sizeof why), -1, "accepted (%s)", want);
    cr_assert_not_null(strstr(why, want), "want '%s' in the reason: '%s'", want, why);
    free(bytes);
    checkpoint_free(&ck);
}

static void break_magic(unsigned char* b) {
    b[0] = 'X';
}
static void next_version(unsigned char* b) {
    b[8]++;
}
static void another_shape(unsigned char* b) {
    b[12] = 5; // hidden 5 with the parameters of hidden 4
}

Test(checkpoint, a_wrong_magic_version_or_shape_is_named) {
    expect_refused(break_magic, "not a checkpoint");
    expect_refused(next_version, "format version 3, this build reads version 2");
    expect_refused(another_shape, "hidden size 5");
}

// ----------------------------------------------------------------------------
// b) what a run finds in --checkpoint-dir

// How a run asks for the checkpoint: a fresh run, --resume, or a restart after a failure.
typedef enum { FRESH, RESUME, RESTART } Asking;

static TrainConfig config_for(const char* dir, Asking asking) {
    TrainConfig c;
    config_defaults(&c);
    c.hidden_size = 4;
    c.checkpoint_dir = dir;
    c.resume = asking == RESUME;
    c.resume_if_present = asking == RESTART;
    return c;
}

// Writes a checkpoint that fits config_for(dir, ...) after epochs_done epochs.
static void write_fitting_checkpoint(const char* dir, int epochs_done) {
    TrainConfig c = config_for(dir, FRESH);
    Checkpoint ck = make_checkpoint(c.hidden_size, epochs_done, 1);
    char why[512];
    ck.settings_hash = checkpoint_settings_hash(&c);
    mkdir(dir, 0755);
    cr_assert_eq(checkpoint_write(dir, &ck, why, sizeof why), 0, "write: %s", why);
    checkpoint_free(&ck);
}

// checkpoint_find for c returns want, and on -1 a reason containing reason.
static void expect_find(const TrainConfig* c, int want, const char* reason) {
    Checkpoint ck;
    char why[512] = "";
    int got = checkpoint_find(c, &ck, why, sizeof why);
    cr_assert_eq(got, want, "checkpoint_find returned %d, want %d (%s)", got, want, why);
    if (want < 0)
        cr_assert_not_null(strstr(why, reason), "want '%s' in the reason: '%s'", reason, why);
    checkpoint_free(&ck);
}

Test(checkpoint, a_run_finds_what_its_resume_mode_asks_for, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char dir[128];
    snprintf(dir, sizeof dir, "%s/ck", temp_dir);
    TrainConfig fresh = config_for(dir, FRESH), resume = config_for(dir, RESUME),
                restart = config_for(dir, RESTART);
    expect_find(&fresh, 0, NULL); // and it makes the directory
    expect_find(&resume, -1, "No such file");
    expect_find(&restart, 0, NULL);
    write_fitting_checkpoint(dir, 3);
    expect_find(&fresh, -1, "exists: add --resume");
    expect_find(&resume, 1, NULL);
    expect_find(&restart, 1, NULL);
    TrainConfig other = resume;
    other.hidden_size = 8;
    expect_find(&other, -1, "its model has hidden size 4, this run --hidden-size 8");
    other = resume, other.seed = 7;
    expect_find(&other, -1, "--seed 42");
    other = resume, other.learning_rate = 0.02f;
    expect_find(&other, -1, "other settings");
    other = resume, other.epochs = 2;
    expect_find(&other, -1, "3 epochs done, more than --epochs 2");
}

// ----------------------------------------------------------------------------
// c) a writer killed at any moment leaves a whole checkpoint

#define KILLS 150
#define KILL_H 96 // 9.7 k parameters: a file of 115 KB, written in a blink but not at once

// The child: says on ready that it starts, then writes checkpoints of tags 1 and 2 in turn
// until it is killed.
static void write_forever(const char* dir, int ready) {
    Checkpoint ck[2] = {make_checkpoint(KILL_H, 5, 1), make_checkpoint(KILL_H, 5, 2)};
    char why[512];
    if (write(ready, "w", 1) != 1)
        _exit(3);
    for (int i = 0;; i = 1 - i)
        if (checkpoint_write(dir, &ck[i], why, sizeof why) != 0)
            _exit(3);
}

Test(checkpoint, a_writer_killed_at_any_moment_leaves_a_whole_checkpoint, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    char dir[128], tmp[192];
    snprintf(dir, sizeof dir, "%s/ck", temp_dir);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, CHECKPOINT_FILE);
    mkdir(dir, 0755);
    Checkpoint tags[2] = {make_checkpoint(KILL_H, 5, 1), make_checkpoint(KILL_H, 5, 2)};
    char why[512];
    cr_assert_eq(checkpoint_write(dir, &tags[0], why, sizeof why), 0, "%s", why);
    int mid_write = 0;
    srand(1);
    for (int k = 0; k < KILLS; k++) {
        unlink(tmp);
        int ready[2];
        cr_assert_eq(pipe(ready), 0);
        pid_t pid = fork_child();
        if (pid == 0)
            write_forever(dir, ready[1]);
        // From the child's first write on (a fork is slow under a sanitizer and a load),
        // somewhere in the first few writes.
        char started;
        struct pollfd child_starts = {.fd = ready[0], .events = POLLIN};
        cr_assert(poll(&child_starts, 1, 10000) == 1 && read(ready[0], &started, 1) == 1,
                  "kill %d: the writer did not start within 10 s", k);
        close(ready[0]);
        close(ready[1]);
        usleep((useconds_t)(rand() % 3000));
        kill(pid, SIGKILL);
        int status = reap_child(pid, 10.0);
        cr_assert(status != -1 && WIFSIGNALED(status),
                  "kill %d: the writer ended by itself (status 0x%x)", k, status);
        mid_write += access(tmp, F_OK) == 0; // it died between open and rename
        Checkpoint back;
        cr_assert_eq(checkpoint_read(dir, &back, why, sizeof why), 0,
                     "kill %d: the checkpoint does not load: %s", k, why);
        int tag = back.params[0] == tags[0].params[0] ? 0 : 1;
        expect_same_checkpoint(&back, &tags[tag], "after a kill");
        checkpoint_free(&back);
    }
    // The test means something only if many kills came in the middle of a write.
    cr_assert_geq(mid_write, KILLS / 4, "only %d of %d kills came during a write", mid_write,
                  KILLS);
    checkpoint_free(&tags[0]);
    checkpoint_free(&tags[1]);
}
