/*
 * config.h - the flags of every program, from one table each, and the training flags they share.
 *
 * Flags follow the original app: --epochs --batch-size --learning-rate
 * --data-size --hidden-size --seed --optimizer --device --out (and --kernels, how a GPU
 * runs a batch), and its "next step", checkpoints: --checkpoint-dir --checkpoint-every
 * --resume; and the instruments, --trace FILE and --phases (trace.h). Written as
 * "--flag value" or "--flag=value"; a switch (--resume, --debug) takes no value.
 *
 * Each program describes its flags in one table of Flag entries: name, alias,
 * kind, limits, where the value goes, the environment variable that may give
 * its default (torchrun's MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK), and its
 * help. config_parse_flags reads the environment and then argv against that
 * table, and config_print_help prints --help from it, so the usage text and the
 * limits cannot disagree. A bad value fills `why` with one line naming the flag
 * and the accepted range (check.h's convention); the program prints it with
 * usage_error and exits with status 2.
 *
 * APIs: TrainConfig, Flag, FlagKind, FlagParse, CONFIG_TRAINING_FLAGS, EXIT_USAGE,
 *       config_defaults, config_parse_flags, config_print_help, config_parse_or_explain,
 *       config_check,
 *       config_print_banner, config_choose_kernels, config_settings, usage_error, PlotKind.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EXIT_USAGE 2
#define CONFIG_MAX_EPOCHS 1000000
#define CONFIG_MAX_HIDDEN 4096
#define CONFIG_MAX_BATCH 10000000
#define CONFIG_MAX_DATA 100000000
#define CONFIG_MAX_TIMEOUT_S 86400
#define CONFIG_MAX_RESTARTS 1000

// What --plot draws at the end of a run (see report.h). PLOT_DUMB is PLOT_TERMINAL by
// gnuplot's name for its text terminal.
typedef enum { PLOT_PNG, PLOT_TERMINAL, PLOT_DUMB, PLOT_NONE } PlotKind;

typedef struct {
    int epochs;
    int batch_size; // per rank
    float learning_rate;
    int data_size; // samples in all, train and eval
    int hidden_size;
    uint64_t seed;
    OptimizerKind optimizer;
    const char* device;         // "auto", "cpu" or "cuda"
    MlpKernels kernels;         // --kernels: how a GPU runs a batch (mlp.h)
    const char* out_dir;        // NULL: write no files
    PlotKind plot;              // the pictures of the run
    const char* checkpoint_dir; // NULL: no checkpoints
    int checkpoint_every;       // epochs between two checkpoints
    bool resume;                // --resume: go on from the checkpoint, which must be there
    bool resume_if_present;     // a restart after a failure: from the checkpoint if one exists
    const char* trace_path;     // --trace FILE: every rank's timeline (trace.h); NULL: none
    bool phases;                // --phases: where the time goes, printed at the end
} TrainConfig;

typedef enum {
    FLAG_INT,    // int in [min, max]
    FLAG_SEED,   // uint64_t, digits only
    FLAG_FLOAT,  // float in (min, max]
    FLAG_CHOICE, // const char*: one of choices, "a|b|c"
    FLAG_ENUM,   // an enum: the position of the value in choices
    FLAG_DIR,    // const char*: a directory, not empty
    FLAG_TEXT,   // const char*: any value but the empty one
    FLAG_SWITCH, // bool: true when given; takes no value
    FLAG_CUSTOM, // parse() reads it
} FlagKind;

// A reader for FLAG_CUSTOM: stores value into destination, or returns -1 with why filled.
typedef int (*FlagParse)(const char* flag, const char* value, void* destination, char* why,
                         size_t why_len);

typedef struct {
    const char* name;  // "--epochs"
    const char* alias; // another name for it, or NULL
    FlagKind kind;
    long min, max;          // FLAG_INT: [min, max]; FLAG_FLOAT: (min, max]
    const char* choices;    // FLAG_CHOICE, FLAG_ENUM
    void* destination;      // int*, uint64_t*, float*, const char**, an enum, bool*: by kind
    const char* value_name; // "N" in "--epochs N"; NULL for a switch
    const char* help;       // what it does, and its default
    const char* env;        // the environment variable that gives its default, or NULL
    FlagParse parse;        // FLAG_CUSTOM
} Flag;

// The training flags, as the first entries of a program's table; c is a TrainConfig*.
// (A table reads best as one: clang-format would give every field a line of its own.)
// clang-format off
#define CONFIG_TRAINING_FLAGS(c)                                                               \
    {.name = "--epochs", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_EPOCHS,                 \
     .destination = &(c)->epochs, .value_name = "N",                                          \
     .help = "passes over the training data (default 50)"},                                    \
    {.name = "--batch-size", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_BATCH,              \
     .destination = &(c)->batch_size, .value_name = "N",                                      \
     .help = "samples per step and rank (default 32)"},                                        \
    {.name = "--learning-rate", .kind = FLAG_FLOAT, .min = 0, .max = 10,                       \
     .destination = &(c)->learning_rate, .value_name = "X",                                   \
     .help = "optimizer step size (default 0.01)"},                                            \
    {.name = "--data-size", .kind = FLAG_INT, .min = 10, .max = CONFIG_MAX_DATA,               \
     .destination = &(c)->data_size, .value_name = "N",                                       \
     .help = "samples in all, 80% train and 20% eval (default 2000)"},                         \
    {.name = "--hidden-size", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_HIDDEN,            \
     .destination = &(c)->hidden_size, .value_name = "N",                                     \
     .help = "width of the hidden layers (default 64)"},                                       \
    {.name = "--seed", .kind = FLAG_SEED, .destination = &(c)->seed, .value_name = "N",        \
     .help = "decides the data, the initial weights and the shuffle (default 42)"},            \
    {.name = "--optimizer", .kind = FLAG_ENUM, .choices = "adam|sgd",                          \
     .destination = &(c)->optimizer, .value_name = "NAME",                                    \
     .help = "adam or sgd (SGD with momentum 0.9) (default adam)"},                            \
    {.name = "--device", .kind = FLAG_CHOICE, .choices = "auto|cpu|cuda",                      \
     .destination = &(c)->device, .value_name = "NAME",                                       \
     .help = "auto, cpu or cuda (default auto: a GPU if there is one)"},                       \
    {.name = "--kernels", .kind = FLAG_ENUM, .choices = "auto|unfused|graph|fused",            \
     .destination = &(c)->kernels, .value_name = "NAME",                                      \
     .help = "how a GPU runs a batch: unfused (a launch per kernel), graph (a CUDA graph "      \
             "replayed) or fused (one kernel) (default auto: fused where the model fits, "      \
             "else graph; the CPU has its own)"},                                              \
    {.name = "--out", .kind = FLAG_DIR, .destination = &(c)->out_dir, .value_name = "DIR",     \
     .help = "write DIR/losses.csv, DIR/fit.csv and DIR/samples.csv (and see --plot)"},        \
    {.name = "--plot", .kind = FLAG_ENUM, .choices = "png|terminal|dumb|none",                 \
     .destination = &(c)->plot, .value_name = "KIND",                                         \
     .help = "png: DIR/loss.png and DIR/fit.png with --out; terminal (or dumb): the loss "     \
             "curve as text at the end; none (default png)"},                                  \
    {.name = "--checkpoint-dir", .kind = FLAG_DIR, .destination = &(c)->checkpoint_dir,        \
     .value_name = "DIR", .help = "save the model and optimizer to DIR/checkpoint.bin"},       \
    {.name = "--checkpoint-every", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_EPOCHS,       \
     .destination = &(c)->checkpoint_every, .value_name = "N",                                \
     .help = "epochs between two checkpoints (default 1; the last one always)"},               \
    {.name = "--resume", .kind = FLAG_SWITCH, .destination = &(c)->resume,                     \
     .help = "continue from DIR/checkpoint.bin"},                                              \
    {.name = "--trace", .kind = FLAG_TEXT, .destination = &(c)->trace_path, .value_name = "FILE",\
     .help = "write every rank's timeline to FILE (Chrome trace JSON: Perfetto, "              \
             "chrome://tracing)"},                                                             \
    {.name = "--phases", .kind = FLAG_SWITCH, .destination = &(c)->phases,                     \
     .help = "print where the time of a step goes, per phase, at the end"}
// clang-format on

void config_defaults(TrainConfig* c);

// What config_parse_flags found.
enum { CONFIG_PARSED = 0, CONFIG_HELP = 1 };

// Reads the environment variables of the table's flags, then argv (a flag on the command
// line wins over its variable), storing each value where its entry says; --help or -h
// stops there. Returns CONFIG_PARSED, CONFIG_HELP, or -1 with why filled (an unknown flag,
// a stray argument, a bad value). A rejected value leaves its destination as it was.
int config_parse_flags(const Flag* flags, size_t count, int argc, char** argv, char* why,
                       size_t why_len);

// Prints "usage: PROGRAM [flags]", the description, and one entry per flag of the table
// (with its alias, its range and its environment variable), then --help.
void config_print_help(const char* program, const char* description, const Flag* flags,
                       size_t count);

// What a program's parse_args does with its table: config_parse_flags, then --help
// printed or the refusal said. Returns true to go on; false with the status the program
// is to exit with (0 after --help, EXIT_USAGE after a bad flag) in *exit_status.
bool config_parse_or_explain(const char* program, const char* description, const Flag* flags,
                             size_t count, int argc, char** argv, int* exit_status);

// Checks what no single flag can: the batch must fit the training set (world_size
// ranks share it), checkpoint flags need --checkpoint-dir. Returns 0, or -1 with why filled.
int config_check(const TrainConfig* c, int world_size, char* why, size_t why_len);

void config_print_banner(const TrainConfig* c);

// The kernels that c->kernels asks for, on a GPU (on_gpu: the current one) or the CPU
// (mlp_kernels_choose), and in description what a banner says of them. Returns 0, or -1
// with why filled.
int config_choose_kernels(const TrainConfig* c, bool on_gpu, MlpKernels* chosen, char* description,
                          size_t description_len, char* why, size_t why_len);

// The settings that decide a training's path besides the seed and the model's shape, as
// "key=value ..." (the same text on every machine): what a checkpoint must have been
// written with, and what every node of a job must agree on.
void config_settings(const TrainConfig* c, char* out, size_t out_len);

// Prints "error: WHY" on stderr and returns EXIT_USAGE, for `return usage_error(why);`
// and `exit(usage_error(why));` in the programs.
int usage_error(const char* why);

#ifdef __cplusplus
}
#endif

#endif
