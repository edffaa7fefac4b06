/*
 * config.c - reading and checking the training flags (see config.h).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

void config_defaults(TrainConfig* c) {
    *c = (TrainConfig){
        .epochs = 50,
        .batch_size = 32,
        .learning_rate = 0.01f,
        .data_size = 2000,
        .hidden_size = 64,
        .seed = 42,
        .optimizer = OPTIMIZER_ADAM,
        .device = "auto",
        .out_dir = NULL,
        .checkpoint_dir = NULL,
        .checkpoint_every = 1,
        .resume = RESUME_NO,
    };
}

// The training flag that takes no value: "--resume --epochs 5" must not swallow "--epochs".
static bool is_switch(const char* arg) {
    return strcmp(arg, "--resume") == 0;
}

int config_split_flag(int argc, char** argv, int* i, char* flag, int flag_len, const char** value) {
    const char* arg = argv[*i];
    if (strncmp(arg, "--", 2) != 0) {
        fprintf(stderr, "error: unexpected argument '%s' (flags start with --; see --help)\n", arg);
        return -1;
    }
    const char* equals = strchr(arg, '=');
    if (equals != NULL) {
        snprintf(flag, (size_t)flag_len, "%.*s", (int)(equals - arg), arg);
        *value = equals + 1;
    } else {
        snprintf(flag, (size_t)flag_len, "%s", arg);
        *value = !is_switch(arg) && *i + 1 < argc ? argv[++*i] : NULL;
    }
    return 0;
}

int config_parse_int(const char* flag, const char* value, long min, long max, int* out) {
    char* end = NULL;
    errno = 0;
    long v = value != NULL ? strtol(value, &end, 10) : 0;
    if (value == NULL || *value == '\0' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "error: %s must be an integer in [%ld, %ld], got '%s'\n", flag, min, max,
                value != NULL ? value : "(nothing)");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_seed(const char* value, uint64_t* out) {
    char* end = NULL;
    errno = 0;
    unsigned long long v = value != NULL ? strtoull(value, &end, 10) : 0;
    // strtoull would skip spaces and wrap "-1" around: only digits are a seed.
    if (value == NULL || !isdigit((unsigned char)*value) || *end != '\0' || errno != 0) {
        fprintf(stderr, "error: --seed must be an integer in [0, %" PRIu64 "], got '%s'\n",
                UINT64_MAX, value != NULL ? value : "(nothing)");
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int parse_learning_rate(const char* value, float* out) {
    char* end = NULL;
    float v = value != NULL ? strtof(value, &end) : 0.0f;
    if (value == NULL || *value == '\0' || *end != '\0' || !isfinite(v) || v <= 0.0f || v > 10.0f) {
        fprintf(stderr, "error: --learning-rate must be a number in (0, 10], got '%s'\n",
                value != NULL ? value : "(nothing)");
        return -1;
    }
    *out = v;
    return 0;
}

int config_parse_choice(const char* flag, const char* value, const char* choices,
                        const char** out) {
    *out = value;
    for (const char* c = choices; value != NULL && *value != '\0'; c++) {
        size_t len = strcspn(c, "|");
        if (len == strlen(value) && strncmp(c, value, len) == 0)
            return 0;
        c += len;
        if (*c == '\0')
            break;
    }
    fprintf(stderr, "error: %s must be one of %s, got '%s'\n", flag, choices,
            value != NULL ? value : "(nothing)");
    return -1;
}

// A directory flag's value: anything but nothing.
static int parse_dir(const char* flag, const char* value, const char** out) {
    if (value == NULL || *value == '\0') {
        fprintf(stderr, "error: %s needs a directory\n", flag);
        return -1;
    }
    *out = value;
    return 0;
}

// A switch's value: none, or it is a mistake like --resume=yes.
static int parse_switch(const char* flag, const char* value) {
    if (value != NULL) {
        fprintf(stderr, "error: %s takes no value, got '%s'\n", flag, value);
        return -1;
    }
    return 0;
}

int config_parse_training_flag(TrainConfig* c, const char* flag, const char* value) {
    int err = 0;
    if (strcmp(flag, "--epochs") == 0)
        err = config_parse_int(flag, value, 1, CONFIG_MAX_EPOCHS, &c->epochs);
    else if (strcmp(flag, "--batch-size") == 0)
        err = config_parse_int(flag, value, 1, 10000000, &c->batch_size);
    else if (strcmp(flag, "--learning-rate") == 0)
        err = parse_learning_rate(value, &c->learning_rate);
    else if (strcmp(flag, "--data-size") == 0)
        err = config_parse_int(flag, value, 10, 100000000, &c->data_size);
    else if (strcmp(flag, "--hidden-size") == 0)
        err = config_parse_int(flag, value, 1, CONFIG_MAX_HIDDEN, &c->hidden_size);
    else if (strcmp(flag, "--seed") == 0)
        err = parse_seed(value, &c->seed);
    else if (strcmp(flag, "--optimizer") == 0) {
        const char* name;
        err = config_parse_choice(flag, value, "adam|sgd", &name);
        if (err == 0)
            c->optimizer = strcmp(name, "sgd") == 0 ? OPTIMIZER_SGD : OPTIMIZER_ADAM;
    } else if (strcmp(flag, "--device") == 0) {
        err = config_parse_choice(flag, value, "auto|cpu|cuda", &c->device);
    } else if (strcmp(flag, "--out") == 0)
        err = parse_dir(flag, value, &c->out_dir);
    else if (strcmp(flag, "--checkpoint-dir") == 0)
        err = parse_dir(flag, value, &c->checkpoint_dir);
    else if (strcmp(flag, "--checkpoint-every") == 0)
        err = config_parse_int(flag, value, 1, CONFIG_MAX_EPOCHS, &c->checkpoint_every);
    else if (strcmp(flag, "--resume") == 0) {
        err = parse_switch(flag, value);
        c->resume = RESUME_REQUIRED;
    } else
        return 0;
    return err == 0 ? 1 : -1;
}

int config_check(const TrainConfig* c, int world_size) {
    if (c->checkpoint_dir == NULL && (c->resume != RESUME_NO || c->checkpoint_every != 1)) {
        fprintf(stderr, "error: %s needs --checkpoint-dir\n",
                c->resume != RESUME_NO ? "--resume" : "--checkpoint-every");
        return -1;
    }
    // Element counts are ints: one batch's activations, B x H, must fit one.
    if ((long long)c->batch_size * c->hidden_size > INT_MAX) {
        fprintf(stderr, "error: --batch-size %d x --hidden-size %d must be at most %d elements\n",
                c->batch_size, c->hidden_size, INT_MAX);
        return -1;
    }
    int n_train = (int)(DATA_TRAIN_FRACTION * c->data_size);
    int per_rank = (n_train + world_size - 1) / world_size;
    if (c->batch_size > per_rank) {
        fprintf(stderr,
                "error: --batch-size must be in [1, %d] (the %d training samples of --data-size "
                "%d shared by %d rank%s), got %d\n",
                per_rank, n_train, c->data_size, world_size, world_size > 1 ? "s" : "",
                c->batch_size);
        return -1;
    }
    return 0;
}

void config_print_banner(const TrainConfig* c) {
    printf("Training parameters:\n");
    printf("  Epochs: %d\n", c->epochs);
    printf("  Batch size: %d\n", c->batch_size);
    printf("  Learning rate: %g\n", c->learning_rate);
    printf("  Data size: %d\n", c->data_size);
    printf("  Hidden size: %d\n", c->hidden_size);
    printf("  Seed: %" PRIu64 "\n", c->seed);
    printf("  Optimizer: %s\n", c->optimizer == OPTIMIZER_SGD ? "sgd (momentum 0.9)" : "adam");
}
