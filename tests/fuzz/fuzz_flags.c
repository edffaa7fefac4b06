/*
 * fuzz_flags.c - libFuzzer target: the training flags of common/config.c (make fuzz).
 *
 * The input, split at NUL bytes, is a command line: argv[1], argv[2], ... It is read as a
 * lesson's parse_args reads it: config_parse_flags against the training flags' table,
 * then, if every flag was good, config_check for several world sizes. What the flags
 * accepted must be in their ranges; a value out of range aborts, which libFuzzer reports
 * as a crash, and so does a refusal without a reason.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"

#define MAX_ARGS 64

static void expect(int ok, const char* what) {
    if (!ok) {
        fprintf(stdout, "fuzz_flags: broken promise: %s\n", what);
        abort();
    }
}

// Splits text (len bytes and a NUL after them) at its NULs into argv after "fuzz_flags".
static int split_args(char* text, size_t len, char** argv) {
    int argc = 0;
    argv[argc++] = "fuzz_flags";
    for (size_t i = 0; i <= len && argc < MAX_ARGS; i += strlen(text + i) + 1)
        argv[argc++] = text + i;
    return argc;
}

// The flags as parse_args reads them; 1 if every one was good.
static int parse_flags(TrainConfig* c, int argc, char** argv) {
    config_defaults(c);
    const Flag flags[] = {CONFIG_TRAINING_FLAGS(c)};
    char why[ERROR_TEXT_BYTES] = "";
    int parsed =
        config_parse_flags(flags, sizeof flags / sizeof *flags, argc, argv, why, sizeof why);
    expect(parsed >= 0 || why[0] != '\0', "a refusal without a reason");
    return parsed == CONFIG_PARSED;
}

static void check_ranges(const TrainConfig* c) {
    expect(c->epochs >= 1 && c->epochs <= 1000000, "--epochs out of range");
    expect(c->batch_size >= 1 && c->batch_size <= 10000000, "--batch-size out of range");
    expect(isfinite(c->learning_rate) && c->learning_rate > 0.0f && c->learning_rate <= 10.0f,
           "--learning-rate out of range");
    expect(c->data_size >= 10 && c->data_size <= 100000000, "--data-size out of range");
    expect(c->hidden_size >= 1 && c->hidden_size <= 4096, "--hidden-size out of range");
    expect(c->optimizer == OPTIMIZER_ADAM || c->optimizer == OPTIMIZER_SGD, "a bad optimizer");
    expect(strcmp(c->device, "auto") == 0 || strcmp(c->device, "cpu") == 0 ||
               strcmp(c->device, "cuda") == 0,
           "a bad device");
    expect(c->out_dir == NULL || c->out_dir[0] != '\0', "an empty --out");
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char* text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char* argv[MAX_ARGS + 1];
    int argc = split_args(text, size, argv);
    argv[argc] = NULL;
    TrainConfig c;
    char why[ERROR_TEXT_BYTES];
    if (parse_flags(&c, argc, argv)) {
        check_ranges(&c);
        const int world_sizes[] = {1, 2, 3, 64, 256};
        for (size_t w = 0; w < sizeof world_sizes / sizeof world_sizes[0]; w++)
            if (config_check(&c, world_sizes[w], why, sizeof why) == 0)
                expect((long long)c.batch_size * c.hidden_size <= INT_MAX &&
                           c.batch_size <= c.data_size,
                       "config_check passed a batch that does not fit");
    }
    free(text);
    return 0;
}
