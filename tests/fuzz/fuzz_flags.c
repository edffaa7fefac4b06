/*
 * fuzz_flags.c - libFuzzer target: the training flags of common/config.c (make fuzz).
 *
 * The input, split at NUL bytes, is a command line: argv[1], argv[2], ... It is read as a
 * lesson's parse_args reads it: config_split_flag, then config_parse_training_flag for each
 * flag, stopping at --help or the first bad flag (the lesson would exit there), then
 * config_check for several world sizes. What the flags accepted must be in their ranges;
 * a value out of range aborts, which libFuzzer reports as a crash. The parsers' messages
 * go to /dev/null: stderr is pointed there (glibc lets a program assign it), while the
 * sanitizers and libFuzzer write to file descriptor 2 or their own copy of stderr.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define MAX_ARGS 64

static void expect(int ok, const char* what) {
    if (!ok) {
        fprintf(stdout, "fuzz_flags: broken promise: %s\n", what);
        abort();
    }
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc;
    (void)argv;
    FILE* null = fopen("/dev/null", "w");
    if (null != NULL)
        stderr = null;
    return 0;
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
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char* value;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 0;
        if (config_split_flag(argc, argv, &i, flag, sizeof flag, &value) != 0)
            return 0;
        if (config_parse_training_flag(c, flag, value) != 1)
            return 0;
    }
    return 1;
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
    if (parse_flags(&c, argc, argv)) {
        check_ranges(&c);
        const int world_sizes[] = {1, 2, 3, 64, 256};
        for (size_t w = 0; w < sizeof world_sizes / sizeof world_sizes[0]; w++)
            if (config_check(&c, world_sizes[w]) == 0)
                expect((long long)c.batch_size * c.hidden_size <= INT_MAX &&
                           c.batch_size <= c.data_size,
                       "config_check passed a batch that does not fit");
    }
    free(text);
    return 0;
}
