/*
 * test_config.c - reading and checking the training flags.
 *
 * Good values are stored; a bad one is refused with one line in `why` that names the flag
 * (as written) and what it accepts, and leaves the configuration as it was.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"

// ----------------------------------------------------------------------------
// helpers

#define MAX_ARGS 16

// Parses the command line "prog ARGS..." (NULL-terminated) against the training flags of c.
static int parse(TrainConfig* c, char* why, size_t why_len, const char* const* args) {
    const Flag flags[] = {CONFIG_TRAINING_FLAGS(c)};
    char* argv[MAX_ARGS + 2] = {"prog"};
    int argc = 1;
    for (; args[argc - 1] != NULL && argc <= MAX_ARGS; argc++)
        argv[argc] = (char*)args[argc - 1];
    why[0] = '\0';
    return config_parse_flags(flags, sizeof flags / sizeof *flags, argc, argv, why, why_len);
}

#define PARSE(c, why, ...) parse(c, why, sizeof why, (const char* const[]){__VA_ARGS__, NULL})

// "flag value" (value NULL: the flag alone) must be refused with a reason naming the flag,
// and leave the configuration as it was.
static void expect_rejected(const char* flag, const char* value) {
    TrainConfig c, before;
    char why[ERROR_TEXT_BYTES];
    config_defaults(&c);
    memcpy(&before, &c, sizeof c); // the padding too, for memcmp
    int rc = value != NULL ? PARSE(&c, why, flag, value) : PARSE(&c, why, flag);
    cr_assert_eq(rc, -1, "%s '%s' was accepted (returned %d)", flag, value ? value : "(NULL)", rc);
    cr_assert(why[0] != '\0' && strchr(why, '\n') == NULL, "%s '%s': want one line, got '%s'", flag,
              value ? value : "(NULL)", why);
    cr_assert_not_null(strstr(why, flag), "%s '%s': the reason does not name the flag: %s", flag,
                       value ? value : "(NULL)", why);
    cr_assert(memcmp(&c, &before, sizeof c) == 0, "%s '%s' changed the configuration", flag,
              value ? value : "(NULL)");
}

// "flag value" must be accepted.
static void expect_accepted(TrainConfig* c, const char* flag, const char* value) {
    char why[ERROR_TEXT_BYTES];
    int rc = value != NULL ? PARSE(c, why, flag, value) : PARSE(c, why, flag);
    cr_assert_eq(rc, CONFIG_PARSED, "%s '%s' was not accepted (returned %d): %s", flag, value, rc,
                 why);
}

// ----------------------------------------------------------------------------
// the command line

Test(config, flags_are_read_as_flag_equals_value_and_as_flag_space_value) {
    TrainConfig c;
    char why[ERROR_TEXT_BYTES];
    config_defaults(&c);
    cr_assert_eq(PARSE(&c, why, "--epochs=7", "--seed", "9", "--device=cpu"), CONFIG_PARSED, "%s",
                 why);
    cr_assert_eq(c.epochs, 7);
    cr_assert_eq(c.seed, 9);
    cr_assert_str_eq(c.device, "cpu");
}

Test(config, an_empty_value_after_equals_is_the_empty_value_which_the_flag_refuses) {
    TrainConfig c;
    char why[ERROR_TEXT_BYTES];
    config_defaults(&c);
    cr_assert_eq(PARSE(&c, why, "--out="), -1);
    cr_assert_str_eq(why, "--out needs a directory");
    cr_assert_eq(PARSE(&c, why, "--epochs=", "3"), -1, "'--epochs=' took the next argument");
    cr_assert_str_eq(why, "--epochs must be an integer in [1, 1000000], got ''");
}

Test(config, a_positional_argument_is_refused_by_name) {
    TrainConfig c;
    char why[ERROR_TEXT_BYTES];
    config_defaults(&c);
    cr_assert_eq(PARSE(&c, why, "--epochs", "3", "stray"), -1);
    cr_assert_not_null(strstr(why, "unexpected argument 'stray'"), "%s", why);
}

Test(config, an_unknown_flag_or_a_prefix_of_one_is_refused_by_name) {
    const char* unknown[] = {"--bogus", "--epoch", "--epochsx", "--gpus"};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        TrainConfig c;
        char why[ERROR_TEXT_BYTES];
        config_defaults(&c);
        cr_assert_eq(PARSE(&c, why, unknown[i], "2"), -1, "%s was accepted", unknown[i]);
        char want[64];
        snprintf(want, sizeof want, "unknown flag %s (see --help)", unknown[i]);
        cr_assert_str_eq(why, want);
    }
}

Test(config, help_stops_the_parse_wherever_it_is) {
    TrainConfig c;
    char why[ERROR_TEXT_BYTES];
    config_defaults(&c);
    cr_assert_eq(PARSE(&c, why, "--epochs", "3", "--help", "--bogus"), CONFIG_HELP);
    cr_assert_eq(PARSE(&c, why, "-h"), CONFIG_HELP);
}

Test(config, ints_take_their_range_and_refuse_everything_else_naming_the_range) {
    TrainConfig c;
    config_defaults(&c);
    expect_accepted(&c, "--epochs", "1");
    cr_assert_eq(c.epochs, 1);
    expect_accepted(&c, "--epochs", "1000000");
    cr_assert_eq(c.epochs, 1000000);
    const char* bad[] = {"0",  "1000001", "-1",  "abc", "5x", "", "2.5", "99999999999999999999",
                         " 3", "+3",      "0x10"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        TrainConfig d;
        char why[ERROR_TEXT_BYTES];
        config_defaults(&d);
        cr_assert_eq(PARSE(&d, why, "--epochs", bad[i]), -1, "'%s' was accepted", bad[i]);
        char want[128];
        snprintf(want, sizeof want, "--epochs must be an integer in [1, 1000000], got '%s'",
                 bad[i]);
        cr_assert_str_eq(why, want);
    }
}

// ----------------------------------------------------------------------------
// the training flags

Test(config, defaults_follow_the_original_app) {
    TrainConfig c;
    config_defaults(&c);
    cr_assert_eq(c.epochs, 50);
    cr_assert_eq(c.batch_size, 32);
    cr_assert_float_eq(c.learning_rate, 0.01f, 0.0f);
    cr_assert_eq(c.data_size, 2000);
    cr_assert_eq(c.hidden_size, 64);
    cr_assert_eq(c.seed, 42);
    cr_assert_eq(c.optimizer, OPTIMIZER_ADAM);
    cr_assert_str_eq(c.device, "auto");
    cr_assert_eq(c.kernels, MLP_KERNELS_AUTO);
    cr_assert_null(c.out_dir);
    cr_assert_eq(c.plot, PLOT_PNG);
}

Test(config, good_values_are_stored) {
    TrainConfig c;
    config_defaults(&c);
    expect_accepted(&c, "--epochs", "3");
    cr_assert_eq(c.epochs, 3);
    expect_accepted(&c, "--batch-size", "64");
    cr_assert_eq(c.batch_size, 64);
    expect_accepted(&c, "--learning-rate", "1e-3");
    cr_assert_float_eq(c.learning_rate, 1e-3f, 0.0f);
    expect_accepted(&c, "--learning-rate", "10");
    cr_assert_float_eq(c.learning_rate, 10.0f, 0.0f);
    expect_accepted(&c, "--data-size", "10");
    cr_assert_eq(c.data_size, 10);
    expect_accepted(&c, "--hidden-size", "4096");
    cr_assert_eq(c.hidden_size, 4096);
    expect_accepted(&c, "--seed", "0");
    cr_assert_eq(c.seed, 0);
    expect_accepted(&c, "--seed", "18446744073709551615");
    cr_assert_eq(c.seed, UINT64_MAX);
    expect_accepted(&c, "--optimizer", "sgd");
    cr_assert_eq(c.optimizer, OPTIMIZER_SGD);
    expect_accepted(&c, "--optimizer", "adam");
    cr_assert_eq(c.optimizer, OPTIMIZER_ADAM);
    const char* devices[] = {"cpu", "cuda", "auto"};
    for (int i = 0; i < 3; i++) {
        expect_accepted(&c, "--device", devices[i]);
        cr_assert_str_eq(c.device, devices[i]);
    }
    MlpKernels kernels[] = {MLP_KERNELS_UNFUSED, MLP_KERNELS_GRAPH, MLP_KERNELS_FUSED,
                            MLP_KERNELS_AUTO};
    for (int i = 0; i < 4; i++) {
        expect_accepted(&c, "--kernels", mlp_kernels_name(kernels[i]));
        cr_assert_eq(c.kernels, kernels[i], "--kernels %s", mlp_kernels_name(kernels[i]));
    }
    expect_accepted(&c, "--out", "some/dir");
    cr_assert_str_eq(c.out_dir, "some/dir");
    const char* plots[] = {"terminal", "dumb", "none", "png"};
    const PlotKind kinds[] = {PLOT_TERMINAL, PLOT_DUMB, PLOT_NONE, PLOT_PNG};
    for (int i = 0; i < 4; i++) {
        expect_accepted(&c, "--plot", plots[i]);
        cr_assert_eq(c.plot, kinds[i], "--plot %s", plots[i]);
    }
}

Test(config, bad_values_are_refused_with_one_line_naming_the_flag) {
    struct {
        const char* flag;
        const char* value;
    } bad[] = {
        {"--epochs", "-1"},
        {"--epochs", "0"},
        {"--epochs", "abc"},
        {"--epochs", "5x"},
        {"--epochs", ""},
        {"--epochs", NULL},
        {"--epochs", "1000001"},
        {"--epochs", "3.5"},
        {"--batch-size", "0"},
        {"--batch-size", "-32"},
        {"--batch-size", "10000001"},
        {"--learning-rate", "0"},
        {"--learning-rate", "-0.01"},
        {"--learning-rate", "10.5"},
        {"--learning-rate", "nan"},
        {"--learning-rate", "inf"},
        {"--learning-rate", "0.01x"},
        {"--learning-rate", NULL},
        {"--data-size", "9"},
        {"--data-size", "100000001"},
        {"--hidden-size", "0"},
        {"--hidden-size", "99999"},
        {"--seed", "-1"},
        {"--seed", "12ab"},
        {"--seed", "18446744073709551616"},
        {"--seed", ""},
        {"--optimizer", "rmsprop"},
        {"--optimizer", "Adam"},
        {"--optimizer", "ada"},
        {"--optimizer", "adamw"},
        {"--optimizer", NULL},
        {"--device", "tpu"},
        {"--device", "cud"},
        {"--device", "cpu2"},
        {"--device", ""},
        {"--device", NULL},
        {"--kernels", "turbo"},
        {"--kernels", "Fused"},
        {"--kernels", ""},
        {"--kernels", NULL},
        {"--out", ""},
        {"--out", NULL},
        {"--plot", "jpg"},
        {"--plot", "PNG"},
        {"--plot", ""},
        {"--plot", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect_rejected(bad[i].flag, bad[i].value);
}

Test(config, messages_stay_word_for_word_as_the_readmes_quote_them) {
    struct {
        const char* flag;
        const char* value;
        const char* want;
    } cases[] = {
        {"--learning-rate", "0", "--learning-rate must be a number in (0, 10], got '0'"},
        {"--optimizer", "rmsprop", "--optimizer must be one of adam|sgd, got 'rmsprop'"},
        {"--seed", "x", "--seed must be an integer in [0, 18446744073709551615], got 'x'"},
        {"--out", "", "--out needs a directory"},
        {"--resume", "yes", "--resume takes no value, got 'yes'"},
        {"--hidden-size", NULL, "--hidden-size must be an integer in [1, 4096], got '(nothing)'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        TrainConfig c;
        char why[ERROR_TEXT_BYTES], arg[64];
        config_defaults(&c);
        snprintf(arg, sizeof arg, "%s=%s", cases[i].flag, cases[i].value ? cases[i].value : "");
        int rc = cases[i].value != NULL ? PARSE(&c, why, arg) : PARSE(&c, why, cases[i].flag);
        cr_assert_eq(rc, -1, "%s was accepted", arg);
        cr_assert_str_eq(why, cases[i].want);
    }
}

// ----------------------------------------------------------------------------
// config_check

// config_check(c, world) must fail with a reason containing want.
static void expect_check_fails(const TrainConfig* c, int world, const char* want) {
    char why[ERROR_TEXT_BYTES] = "";
    int rc = config_check(c, world, why, sizeof why);
    cr_assert_eq(rc, -1, "batch %d of data %d on %d ranks passed the check; want '%s'",
                 c->batch_size, c->data_size, world, want);
    cr_assert_not_null(strstr(why, want), "want '%s', got: %s", want, why);
}

// config_check(c, world) must pass.
static void expect_check_passes(const TrainConfig* c, int world) {
    char why[ERROR_TEXT_BYTES] = "";
    cr_assert_eq(config_check(c, world, why, sizeof why), 0, "batch %d on %d ranks: %s",
                 c->batch_size, world, why);
}

Test(config, check_accepts_a_batch_up_to_the_training_set_of_a_rank) {
    TrainConfig c;
    config_defaults(&c);
    expect_check_passes(&c, 1);
    c.batch_size = 1600; // the whole training set: int(0.8 * 2000)
    expect_check_passes(&c, 1);
    c.batch_size = 800; // 1600 shared by two ranks
    expect_check_passes(&c, 2);
    c.batch_size = 534; // ceil(1600 / 3): the padded share of each of three ranks
    expect_check_passes(&c, 3);
}

Test(config, check_rejects_a_batch_larger_than_the_training_set_of_a_rank) {
    TrainConfig c;
    config_defaults(&c);
    c.batch_size = 5000;
    expect_check_fails(&c, 1, "--batch-size");
    c.batch_size = 1601;
    expect_check_fails(&c, 1, "--batch-size");
    c.batch_size = 801;
    expect_check_fails(&c, 2, "--batch-size");
    c.batch_size = 535;
    expect_check_fails(&c, 3, "--batch-size");
    c.data_size = 10, c.batch_size = 9; // 8 training samples
    expect_check_fails(&c, 1, "--batch-size");
}

// ----------------------------------------------------------------------------
// checkpoint flags

Test(config, resume_is_a_switch_that_takes_nothing_from_the_next_argument) {
    TrainConfig c;
    char why[ERROR_TEXT_BYTES];
    config_defaults(&c);
    cr_assert_eq(PARSE(&c, why, "--resume", "--epochs", "5"), CONFIG_PARSED, "%s", why);
    cr_assert(c.resume, "--resume was not stored");
    cr_assert_eq(c.epochs, 5, "--resume took --epochs as its value");
    cr_assert_eq(PARSE(&c, why, "--resume=yes"), -1);
    cr_assert_str_eq(why, "--resume takes no value, got 'yes'");
}

Test(config, checkpoint_flags_are_stored_and_bad_ones_rejected) {
    TrainConfig c;
    config_defaults(&c);
    cr_assert(c.checkpoint_dir == NULL && c.checkpoint_every == 1 && !c.resume &&
                  !c.resume_if_present,
              "checkpoints are not off by default");
    expect_accepted(&c, "--checkpoint-dir", "ckpt");
    expect_accepted(&c, "--checkpoint-every", "5");
    cr_assert_str_eq(c.checkpoint_dir, "ckpt");
    cr_assert_eq(c.checkpoint_every, 5);
    expect_rejected("--checkpoint-dir", "");
    expect_rejected("--checkpoint-dir", NULL);
    expect_rejected("--checkpoint-every", "0");
    expect_rejected("--checkpoint-every", "1000001");
}

Test(config, check_wants_checkpoint_dir_for_resume_and_checkpoint_every) {
    TrainConfig c;
    config_defaults(&c);
    c.resume = true;
    expect_check_fails(&c, 1, "--resume needs --checkpoint-dir");
    config_defaults(&c);
    c.checkpoint_every = 3;
    expect_check_fails(&c, 1, "--checkpoint-every needs --checkpoint-dir");
    c.checkpoint_dir = "ckpt";
    expect_check_passes(&c, 1);
}

// ----------------------------------------------------------------------------
// a program's own flags, aliases and environment variables

typedef struct {
    int nodes;
    const char* addr;
    bool debug;
} Extra;

// Parses args against a table of two flags with environment variables and a switch.
static int parse_extra(Extra* e, char* why, size_t why_len, const char* const* args) {
    *e = (Extra){.nodes = 1, .addr = "127.0.0.1"};
    const Flag flags[] = {
        {.name = "--nnodes",
         .alias = "--nodes",
         .kind = FLAG_INT,
         .min = 1,
         .max = 64,
         .destination = &e->nodes,
         .value_name = "N",
         .env = "TEST_CONFIG_NNODES",
         .help = "nodes"},
        {.name = "--master-addr",
         .kind = FLAG_TEXT,
         .destination = &e->addr,
         .value_name = "ADDR",
         .env = "TEST_CONFIG_ADDR",
         .help = "where"},
        {.name = "--debug", .kind = FLAG_SWITCH, .destination = &e->debug, .help = "talk"},
    };
    char* argv[MAX_ARGS + 2] = {"prog"};
    int argc = 1;
    for (; args[argc - 1] != NULL && argc <= MAX_ARGS; argc++)
        argv[argc] = (char*)args[argc - 1];
    return config_parse_flags(flags, sizeof flags / sizeof *flags, argc, argv, why, why_len);
}

#define PARSE_EXTRA(e, why, ...)                                                                   \
    parse_extra(e, why, sizeof why, (const char* const[]){__VA_ARGS__, NULL})

Test(config, an_alias_names_the_same_flag) {
    Extra e;
    char why[ERROR_TEXT_BYTES];
    cr_assert_eq(PARSE_EXTRA(&e, why, "--nodes", "3"), CONFIG_PARSED, "%s", why);
    cr_assert_eq(e.nodes, 3);
    cr_assert_eq(PARSE_EXTRA(&e, why, "--nodes=99"), -1);
    cr_assert_str_eq(why, "--nodes must be an integer in [1, 64], got '99'",
                     "the message names the flag as it was written");
}

Test(config, environment_variables_are_defaults_that_a_flag_overrides) {
    Extra e;
    char why[ERROR_TEXT_BYTES];
    setenv("TEST_CONFIG_NNODES", "4", 1);
    setenv("TEST_CONFIG_ADDR", "10.0.0.7", 1);
    cr_assert_eq(PARSE_EXTRA(&e, why, "--debug"), CONFIG_PARSED, "%s", why);
    cr_assert(e.nodes == 4 && strcmp(e.addr, "10.0.0.7") == 0 && e.debug);
    cr_assert_eq(PARSE_EXTRA(&e, why, "--nnodes", "2"), CONFIG_PARSED, "%s", why);
    cr_assert_eq(e.nodes, 2, "the flag did not win over its variable");
    setenv("TEST_CONFIG_ADDR", "", 1);
    cr_assert_eq(PARSE_EXTRA(&e, why, "--debug"), CONFIG_PARSED, "%s", why);
    cr_assert_str_eq(e.addr, "127.0.0.1", "an empty variable is as good as unset");
}

Test(config, a_bad_environment_value_is_refused_as_strictly_as_its_flag) {
    Extra e;
    char why[ERROR_TEXT_BYTES];
    const char* bad[] = {"$(id)0", "0", "65", " 3", "3 ", "1e1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("TEST_CONFIG_NNODES", bad[i], 1);
        cr_assert_eq(PARSE_EXTRA(&e, why, "--nnodes", "2"), -1, "'%s' was accepted", bad[i]);
        char want[128];
        snprintf(want, sizeof want, "TEST_CONFIG_NNODES must be an integer in [1, 64], got '%s'",
                 bad[i]);
        cr_assert_str_eq(why, want);
    }
}

Test(config, a_switch_refuses_a_value) {
    Extra e;
    char why[ERROR_TEXT_BYTES];
    cr_assert_eq(PARSE_EXTRA(&e, why, "--debug=1"), -1);
    cr_assert_str_eq(why, "--debug takes no value, got '1'");
}

// Runs config_print_help on the training flags into a string.
static char* help_text(void) {
    TrainConfig c;
    config_defaults(&c);
    const Flag flags[] = {CONFIG_TRAINING_FLAGS(&c),
                          {.name = "--gpus",
                           .alias = "--nproc-per-node",
                           .kind = FLAG_INT,
                           .min = 1,
                           .max = 64,
                           .destination = &c.epochs,
                           .value_name = "N",
                           .env = "GPUS",
                           .help = "workers"}};
    char* text = NULL;
    size_t len = 0;
    FILE* out = open_memstream(&text, &len);
    cr_assert_not_null(out);
    fflush(stdout);
    FILE* saved = stdout;
    stdout = out;
    config_print_help("prog", "Does things.", flags, sizeof flags / sizeof *flags);
    stdout = saved;
    fclose(out);
    return text;
}

Test(config, help_is_made_from_the_table_with_ranges_aliases_and_variables) {
    char* text = help_text();
    const char* want[] = {
        "usage: prog [flags]",      "Does things.", "--epochs N", "[1, 1000000]",
        "--checkpoint-every N",     "--resume ",    "--gpus N",   "[1, 64]",
        "(alias --nproc-per-node)", "(env GPUS)",   "--help",     "--optimizer NAME",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_not_null(strstr(text, want[i]), "--help lacks '%s':\n%s", want[i], text);
    for (const char* line = text; *line != '\0'; line += strcspn(line, "\n") + 1) {
        size_t len = strcspn(line, "\n");
        cr_assert(len <= 80, "a line of --help is %zu columns: %.*s", len, (int)len, line);
        if (line[len] == '\0')
            break;
    }
    free(text);
}
