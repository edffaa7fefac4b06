/*
 * config.c - one parser for every program's flag table, and the training flags' checks
 * (see config.h).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
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
        .kernels = MLP_KERNELS_AUTO,
        .out_dir = NULL,
        .plot = PLOT_PNG,
        .checkpoint_dir = NULL,
        .checkpoint_every = 1,
    };
}

// ----------------------------------------------------------------------------
// values, one reader per kind

// What a message shows for a missing value.
static const char* shown(const char* value) {
    return value != NULL ? value : "(nothing)";
}

// Whether text is a decimal integer as a person writes one: digits, perhaps after a '-'
// (strtol alone would also take leading spaces and a '+').
static bool is_decimal(const char* text) {
    text += *text == '-';
    return isdigit((unsigned char)*text);
}

static int parse_int(const char* flag, const char* value, long min, long max, int* out, char* why,
                     size_t why_len) {
    char* end = NULL;
    errno = 0;
    long v = value != NULL ? strtol(value, &end, 10) : 0;
    if (value == NULL || !is_decimal(value) || *end != '\0' || errno != 0 || v < min || v > max) {
        snprintf(why, why_len, "%s must be an integer in [%ld, %ld], got '%s'", flag, min, max,
                 shown(value));
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_seed(const char* flag, const char* value, uint64_t* out, char* why,
                      size_t why_len) {
    char* end = NULL;
    errno = 0;
    unsigned long long v = value != NULL ? strtoull(value, &end, 10) : 0;
    // strtoull would skip spaces and wrap "-1" around: only digits are a seed.
    if (value == NULL || !isdigit((unsigned char)*value) || *end != '\0' || errno != 0) {
        snprintf(why, why_len, "%s must be an integer in [0, %" PRIu64 "], got '%s'", flag,
                 UINT64_MAX, shown(value));
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int parse_float(const char* flag, const char* value, long min, long max, float* out,
                       char* why, size_t why_len) {
    char* end = NULL;
    float v = value != NULL ? strtof(value, &end) : 0.0f;
    if (value == NULL || *value == '\0' || *end != '\0' || !isfinite(v) || v <= (float)min ||
        v > (float)max) {
        snprintf(why, why_len, "%s must be a number in (%ld, %ld], got '%s'", flag, min, max,
                 shown(value));
        return -1;
    }
    *out = v;
    return 0;
}

// The position of value among choices ("a|b|c"), or -1 with why filled.
static int parse_choice(const char* flag, const char* value, const char* choices, char* why,
                        size_t why_len) {
    int position = 0;
    for (const char* c = choices; value != NULL && *value != '\0'; c++, position++) {
        size_t len = strcspn(c, "|");
        if (len == strlen(value) && strncmp(c, value, len) == 0)
            return position;
        c += len;
        if (*c == '\0')
            break;
    }
    snprintf(why, why_len, "%s must be one of %s, got '%s'", flag, choices, shown(value));
    return -1;
}

// Reads value for flag f (named as written: an alias, or an environment variable).
static int parse_value(const Flag* f, const char* name, const char* value, char* why,
                       size_t why_len) {
    int position;
    switch (f->kind) {
    case FLAG_INT:
        return parse_int(name, value, f->min, f->max, f->destination, why, why_len);
    case FLAG_SEED:
        return parse_seed(name, value, f->destination, why, why_len);
    case FLAG_FLOAT:
        return parse_float(name, value, f->min, f->max, f->destination, why, why_len);
    case FLAG_CHOICE:
    case FLAG_ENUM:
        position = parse_choice(name, value, f->choices, why, why_len);
        if (position < 0)
            return -1;
        if (f->kind == FLAG_CHOICE)
            *(const char**)f->destination = value;
        else // an enum of small non-negative values has the size of an int (checked below)
            *(int*)f->destination = position;
        return 0;
    case FLAG_DIR:
    case FLAG_TEXT:
        if (value == NULL || *value == '\0') {
            snprintf(why, why_len, "%s needs %s", name,
                     f->kind == FLAG_DIR ? "a directory" : "a value");
            return -1;
        }
        *(const char**)f->destination = value;
        return 0;
    case FLAG_SWITCH: // "--resume=yes" is a mistake, not a yes
        if (value != NULL) {
            snprintf(why, why_len, "%s takes no value, got '%s'", name, value);
            return -1;
        }
        *(bool*)f->destination = true;
        return 0;
    case FLAG_CUSTOM:
        return f->parse(name, value, f->destination, why, why_len);
    }
    return -1;
}

_Static_assert(sizeof(OptimizerKind) == sizeof(int), "FLAG_ENUM stores an enum as an int");
_Static_assert(sizeof(MlpKernels) == sizeof(int), "FLAG_ENUM stores an enum as an int");
_Static_assert(sizeof(PlotKind) == sizeof(int), "FLAG_ENUM stores an enum as an int");

// ----------------------------------------------------------------------------
// the command line

static const Flag* find_flag(const Flag* flags, size_t count, const char* name) {
    for (size_t i = 0; i < count; i++)
        if (strcmp(flags[i].name, name) == 0 ||
            (flags[i].alias != NULL && strcmp(flags[i].alias, name) == 0))
            return &flags[i];
    return NULL;
}

// torchrun's variables (and the like) are the defaults of their flags. An empty one is
// as good as unset; any other value is checked as strictly as the flag.
static int parse_environment(const Flag* flags, size_t count, char* why, size_t why_len) {
    for (size_t i = 0; i < count; i++) {
        const char* value = flags[i].env != NULL ? getenv(flags[i].env) : NULL;
        if (value != NULL && *value != '\0' &&
            parse_value(&flags[i], flags[i].env, value, why, why_len) != 0)
            return -1;
    }
    return 0;
}

int config_parse_flags(const Flag* flags, size_t count, int argc, char** argv, char* why,
                       size_t why_len) {
    RETURN_IF_FAILED(parse_environment(flags, count, why, why_len));
    for (int i = 1; i < argc; i++) {
        const char* arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return CONFIG_HELP;
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(why, why_len, "unexpected argument '%s' (flags start with --; see --help)",
                     arg);
            return -1;
        }
        // "--flag=value", or "--flag value" (a switch takes nothing from the next argument)
        char name[64];
        const char* equals = strchr(arg, '=');
        snprintf(name, sizeof name, "%.*s", equals != NULL ? (int)(equals - arg) : 63, arg);
        const Flag* f = find_flag(flags, count, name);
        if (f == NULL) {
            snprintf(why, why_len, "unknown flag %s (see --help)", name);
            return -1;
        }
        const char* value = equals != NULL ? equals + 1 : NULL;
        if (equals == NULL && f->kind != FLAG_SWITCH && i + 1 < argc)
            value = argv[++i];
        RETURN_IF_FAILED(parse_value(f, name, value, why, why_len));
    }
    return CONFIG_PARSED;
}

// ----------------------------------------------------------------------------
// --help

#define HELP_INDENT 24
#define HELP_WIDTH 80

// Prints text from column *column on, breaking lines between words at HELP_WIDTH.
static void print_wrapped(const char* text, int* column) {
    while (*text != '\0') {
        int word = (int)strcspn(text, " ");
        if (*column > HELP_INDENT && *column + 1 + word > HELP_WIDTH) {
            printf("\n%*s", HELP_INDENT, "");
            *column = HELP_INDENT;
        } else if (*column > HELP_INDENT) {
            putchar(' ');
            (*column)++;
        }
        printf("%.*s", word, text);
        *column += word;
        text += word;
        text += strspn(text, " ");
    }
}

static void print_flag_help(const Flag* f) {
    char left[96], range[64] = "", alias[96] = "", env[96] = "";
    int n = snprintf(left, sizeof left, "  %s%s%s", f->name, f->value_name ? " " : "",
                     f->value_name ? f->value_name : "");
    if (f->kind == FLAG_INT)
        snprintf(range, sizeof range, "[%ld, %ld]", f->min, f->max);
    if (f->alias != NULL)
        snprintf(alias, sizeof alias, "(alias %s)", f->alias);
    if (f->env != NULL)
        snprintf(env, sizeof env, "(env %s)", f->env);
    if (n + 2 > HELP_INDENT)
        printf("%s\n%*s", left, HELP_INDENT, "");
    else
        printf("%-*s", HELP_INDENT, left);
    int column = HELP_INDENT;
    const char* pieces[] = {f->help, range, alias, env};
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++)
        print_wrapped(pieces[i], &column);
    putchar('\n');
}

void config_print_help(const char* program, const char* description, const Flag* flags,
                       size_t count) {
    printf("usage: %s [flags]\n\n%s\n\nflags:\n", program, description);
    for (size_t i = 0; i < count; i++)
        print_flag_help(&flags[i]);
    print_flag_help(
        &(Flag){.name = "--help", .kind = FLAG_SWITCH, .help = "print this help and exit"});
}

bool config_parse_or_explain(const char* program, const char* description, const Flag* flags,
                             size_t count, int argc, char** argv, int* exit_status) {
    char why[ERROR_TEXT_BYTES];
    int parsed = config_parse_flags(flags, count, argc, argv, why, sizeof why);
    if (parsed == CONFIG_HELP)
        config_print_help(program, description, flags, count);
    if (parsed == CONFIG_PARSED)
        return true;
    *exit_status = parsed == CONFIG_HELP ? 0 : usage_error(why);
    return false;
}

// ----------------------------------------------------------------------------
// the training flags together

int config_check(const TrainConfig* c, int world_size, char* why, size_t why_len) {
    if (c->checkpoint_dir == NULL && (c->resume || c->checkpoint_every != 1)) {
        snprintf(why, why_len, "%s needs --checkpoint-dir",
                 c->resume ? "--resume" : "--checkpoint-every");
        return -1;
    }
    // Element counts are ints: one batch's activations, B x H, must fit one.
    if ((long long)c->batch_size * c->hidden_size > INT_MAX) {
        snprintf(why, why_len, "--batch-size %d x --hidden-size %d must be at most %d elements",
                 c->batch_size, c->hidden_size, INT_MAX);
        return -1;
    }
    int n_train = (int)(DATA_TRAIN_FRACTION * c->data_size);
    int per_rank = (n_train + world_size - 1) / world_size;
    if (c->batch_size > per_rank) {
        snprintf(why, why_len,
                 "--batch-size must be in [1, %d] (the %d training samples of --data-size %d "
                 "shared by %d rank%s), got %d",
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

int config_choose_kernels(const TrainConfig* c, bool on_gpu, MlpKernels* chosen, char* description,
                          size_t description_len, char* why, size_t why_len) {
    size_t shared = on_gpu ? mlp_gpu_shared_bytes() : 0;
    RETURN_IF_FAILED(mlp_kernels_choose(c->kernels, on_gpu, shared, c->hidden_size, c->batch_size,
                                        chosen, why, why_len));
    mlp_kernels_describe(c->kernels, *chosen, on_gpu, description, description_len);
    return 0;
}

void config_settings(const TrainConfig* c, char* out, size_t out_len) {
    // %.9g prints every float so that it reads back to the same bits.
    snprintf(out, out_len,
             "batch_size=%d learning_rate=%.9g data_size=%d hidden_size=%d seed=%" PRIu64
             " optimizer=%s",
             c->batch_size, c->learning_rate, c->data_size, c->hidden_size, c->seed,
             c->optimizer == OPTIMIZER_SGD ? "sgd" : "adam");
}

int usage_error(const char* why) {
    rank_log("error: %s", why);
    return EXIT_USAGE;
}
