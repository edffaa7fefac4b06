/*
 * config.h - the training flags every lesson shares, and how to read them.
 *
 * Flags follow the original app: --epochs --batch-size --learning-rate
 * --data-size --hidden-size --seed --optimizer --device --out, and its "next
 * step", checkpoints: --checkpoint-dir --checkpoint-every --resume. Written as
 * "--flag value" or "--flag=value"; the switch --resume takes no value.
 * A bad value is one line on stderr naming the flag and the accepted range; the
 * program then exits with status 2.
 *
 * APIs: TrainConfig, config_defaults, config_split_flag, config_parse_int, config_parse_choice,
 *       config_parse_training_flag, config_check, config_print_banner, CONFIG_TRAINING_HELP.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stdint.h>

#include "mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EXIT_USAGE 2
#define CONFIG_MAX_EPOCHS 1000000
#define CONFIG_MAX_HIDDEN 4096

// Whether a run continues from the checkpoint in --checkpoint-dir.
typedef enum {
    RESUME_NO,         // a fresh run: an existing checkpoint is an error (it would be overwritten)
    RESUME_REQUIRED,   // --resume: the checkpoint must be there
    RESUME_IF_PRESENT, // a restart after a failure: from the checkpoint if one was written
} ResumeMode;

typedef struct {
    int epochs;
    int batch_size; // per rank
    float learning_rate;
    int data_size; // samples in all, train and eval
    int hidden_size;
    uint64_t seed;
    OptimizerKind optimizer;
    const char* device;         // "auto", "cpu" or "cuda"
    const char* out_dir;        // NULL: write no files
    const char* checkpoint_dir; // NULL: no checkpoints
    int checkpoint_every;       // epochs between two checkpoints
    ResumeMode resume;
} TrainConfig;

#define CONFIG_TRAINING_HELP                                                                       \
    "  --epochs N            passes over the training data (default 50)\n"                         \
    "  --batch-size N        samples per step and rank (default 32)\n"                             \
    "  --learning-rate X     optimizer step size (default 0.01)\n"                                 \
    "  --data-size N         samples in all, 80% train and 20% eval (default 2000)\n"              \
    "  --hidden-size N       width of the hidden layers (default 64)\n"                            \
    "  --seed N              decides the data, the initial weights and the shuffle (default 42)\n" \
    "  --optimizer NAME      adam or sgd (SGD with momentum 0.9) (default adam)\n"                 \
    "  --device NAME         auto, cpu or cuda (default auto: a GPU if there is one)\n"            \
    "  --out DIR             write DIR/losses.csv and DIR/loss.png\n"                              \
    "  --checkpoint-dir DIR  save the model and optimizer to DIR/checkpoint.bin\n"                 \
    "  --checkpoint-every N  epochs between two checkpoints (default 1; the last one always)\n"    \
    "  --resume              continue from DIR/checkpoint.bin\n"

void config_defaults(TrainConfig* c);

// Splits argv[*i] into a flag and its value ("--flag=value" or "--flag value",
// advancing *i). The switch --resume, or a flag at the end, gets value NULL.
// Returns 0, or -1 with a message when argv[*i] is not a flag at all.
int config_split_flag(int argc, char** argv, int* i, char* flag, int flag_len, const char** value);

// Reads an integer in [min, max] for flag; -1 with a message on stderr otherwise.
int config_parse_int(const char* flag, const char* value, long min, long max, int* out);

// Accepts value if it is one of the names in choices ("a|b|c") and points *out at
// it; -1 with a message on stderr otherwise.
int config_parse_choice(const char* flag, const char* value, const char* choices, const char** out);

// Returns 1 if flag is a training flag (and stores its value), 0 if it is not
// one, -1 (after a message on stderr) if its value is bad.
int config_parse_training_flag(TrainConfig* c, const char* flag, const char* value);

// Checks what no single flag can: the batch must fit the training set (world_size
// ranks share it), checkpoint flags need --checkpoint-dir. Returns 0, or -1 with a
// message on stderr.
int config_check(const TrainConfig* c, int world_size);

void config_print_banner(const TrainConfig* c);

#ifdef __cplusplus
}
#endif

#endif
