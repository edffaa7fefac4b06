/*
 * test_config.c - reading and checking the training flags.
 *
 * Good values are stored; bad ones return -1 after exactly one line on stderr
 * that names the flag. Each check captures stderr into a temporary file.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

// ----------------------------------------------------------------------------
// helpers

typedef struct {
    int saved_fd; // the real stderr, restored afterwards
    FILE* file;   // where stderr goes meanwhile
} StderrCapture;

static void capture_stderr(StderrCapture* c) {
    fflush(stderr);
    c->file = tmpfile();
    cr_assert_not_null(c->file, "tmpfile failed");
    c->saved_fd = dup(STDERR_FILENO);
    cr_assert(c->saved_fd >= 0 && dup2(fileno(c->file), STDERR_FILENO) >= 0, "dup2 failed");
}

// Restores stderr and returns what was written to it meanwhile (at most len - 1 bytes).
static const char* release_stderr(StderrCapture* c, char* text, size_t len) {
    fflush(stderr);
    dup2(c->saved_fd, STDERR_FILENO);
    close(c->saved_fd);
    rewind(c->file);
    size_t n = fread(text, 1, len - 1, c->file);
    text[n] = '\0';
    fclose(c->file);
    return text;
}

static int count_lines(const char* text) {
    int lines = 0;
    for (const char* p = text; *p; p++)
        lines += *p == '\n';
    return lines;
}

// config_parse_training_flag(c, flag, value) must fail with one line naming the flag.
static void expect_rejected(TrainConfig* c, const char* flag, const char* value) {
    StderrCapture cap;
    char text[1024];
    capture_stderr(&cap);
    int rc = config_parse_training_flag(c, flag, value);
    release_stderr(&cap, text, sizeof text);
    cr_assert_eq(rc, -1, "%s '%s' was accepted (returned %d)", flag, value ? value : "(NULL)", rc);
    cr_assert_eq(count_lines(text), 1, "%s '%s': want one line on stderr, got:\n%s", flag,
                 value ? value : "(NULL)", text);
    cr_assert_not_null(strstr(text, flag), "%s '%s': the message does not name the flag: %s", flag,
                       value ? value : "(NULL)", text);
}

// config_parse_training_flag(c, flag, value) must return 1 and write nothing on stderr.
static void expect_accepted(TrainConfig* c, const char* flag, const char* value) {
    StderrCapture cap;
    char text[1024];
    capture_stderr(&cap);
    int rc = config_parse_training_flag(c, flag, value);
    release_stderr(&cap, text, sizeof text);
    cr_assert_eq(rc, 1, "%s '%s' was not accepted (returned %d): %s", flag, value, rc, text);
    cr_assert_str_empty(text, "%s '%s' printed: %s", flag, value, text);
}

// ----------------------------------------------------------------------------
// config_split_flag

Test(config, split_flag_reads_flag_equals_value_and_flag_space_value) {
    char* argv[] = {"prog", "--epochs=7", "--seed", "9", "--device", NULL};
    int argc = 5, i = 1;
    char flag[64];
    const char* value;

    cr_assert_eq(config_split_flag(argc, argv, &i, flag, sizeof flag, &value), 0);
    cr_assert_str_eq(flag, "--epochs");
    cr_assert_str_eq(value, "7");
    cr_assert_eq(i, 1, "--flag=value takes one argument");

    i = 2;
    cr_assert_eq(config_split_flag(argc, argv, &i, flag, sizeof flag, &value), 0);
    cr_assert_str_eq(flag, "--seed");
    cr_assert_str_eq(value, "9");
    cr_assert_eq(i, 3, "--flag value takes two arguments");

    i = 4; // the last argument: no value follows
    cr_assert_eq(config_split_flag(argc, argv, &i, flag, sizeof flag, &value), 0);
    cr_assert_str_eq(flag, "--device");
    cr_assert_null(value, "a flag at the end has no value");
    cr_assert_eq(i, 4);
}

Test(config, split_flag_keeps_an_empty_value_after_equals) {
    char* argv[] = {"prog", "--out=", NULL};
    int i = 1;
    char flag[64];
    const char* value;
    cr_assert_eq(config_split_flag(2, argv, &i, flag, sizeof flag, &value), 0);
    cr_assert_str_eq(flag, "--out");
    cr_assert_str_eq(value, "", "'--out=' has the empty value, which the flag then rejects");
}

Test(config, split_flag_rejects_a_positional_argument) {
    char* argv[] = {"prog", "stray", NULL};
    int i = 1;
    char flag[64];
    const char* value;
    StderrCapture cap;
    char text[1024];
    capture_stderr(&cap);
    int rc = config_split_flag(2, argv, &i, flag, sizeof flag, &value);
    release_stderr(&cap, text, sizeof text);
    cr_assert_eq(rc, -1);
    cr_assert_eq(count_lines(text), 1, "want one line, got:\n%s", text);
    cr_assert_not_null(strstr(text, "stray"), "the message does not name the argument: %s", text);
}

// ----------------------------------------------------------------------------
// config_parse_int

Test(config, parse_int_accepts_the_range_and_rejects_everything_else) {
    int out = -7;
    cr_assert_eq(config_parse_int("--n", "1", 1, 10, &out), 0);
    cr_assert_eq(out, 1);
    cr_assert_eq(config_parse_int("--n", "10", 1, 10, &out), 0);
    cr_assert_eq(out, 10);

    const char* bad[] = {"0", "11", "-1", "abc", "5x", "", "2.5", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        StderrCapture cap;
        char text[1024];
        out = -7;
        capture_stderr(&cap);
        int rc = config_parse_int("--n", bad[i], 1, 10, &out);
        release_stderr(&cap, text, sizeof text);
        cr_assert_eq(rc, -1, "'%s' was accepted as %d", bad[i], out);
        cr_assert_eq(out, -7, "'%s' changed the output on failure", bad[i]);
        cr_assert_eq(count_lines(text), 1, "'%s': want one line, got:\n%s", bad[i], text);
        // the flag and the accepted range, as the guide asks
        cr_assert_not_null(strstr(text, "--n"), "'%s': flag not named: %s", bad[i], text);
        cr_assert_not_null(strstr(text, "[1, 10]"), "'%s': range not given: %s", bad[i], text);
    }
    StderrCapture cap;
    char text[1024];
    capture_stderr(&cap);
    int rc = config_parse_int("--n", NULL, 1, 10, &out);
    release_stderr(&cap, text, sizeof text);
    cr_assert_eq(rc, -1, "a missing value was accepted");
    cr_assert_not_null(strstr(text, "--n"), "flag not named: %s", text);
}

// ----------------------------------------------------------------------------
// config_parse_training_flag

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
    cr_assert_null(c.out_dir);
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
    expect_accepted(&c, "--out", "some/dir");
    cr_assert_str_eq(c.out_dir, "some/dir");
}

Test(config, a_flag_that_is_not_a_training_flag_is_left_to_the_caller) {
    TrainConfig c;
    config_defaults(&c);
    cr_assert_eq(config_parse_training_flag(&c, "--gpus", "2"), 0);
    cr_assert_eq(config_parse_training_flag(&c, "--bogus", NULL), 0);
    cr_assert_eq(config_parse_training_flag(&c, "--epoch", "3"), 0, "prefixes are not flags");
    cr_assert_eq(c.epochs, 50, "an unknown flag changed the configuration");
}

Test(config, bad_values_are_rejected_with_one_line_naming_the_flag) {
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
        {"--out", ""},
        {"--out", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        TrainConfig c;
        config_defaults(&c);
        expect_rejected(&c, bad[i].flag, bad[i].value);
    }
}

Test(config, a_rejected_value_leaves_the_numbers_unchanged) {
    TrainConfig c;
    config_defaults(&c);
    StderrCapture cap;
    char text[1024];
    capture_stderr(&cap);
    config_parse_training_flag(&c, "--epochs", "0");
    config_parse_training_flag(&c, "--learning-rate", "-1");
    config_parse_training_flag(&c, "--seed", "x");
    config_parse_training_flag(&c, "--optimizer", "rmsprop");
    release_stderr(&cap, text, sizeof text);
    cr_assert_eq(count_lines(text), 4, "want four lines, got:\n%s", text);
    cr_assert_eq(c.epochs, 50);
    cr_assert_float_eq(c.learning_rate, 0.01f, 0.0f);
    cr_assert_eq(c.seed, 42);
    cr_assert_eq(c.optimizer, OPTIMIZER_ADAM);
}

// ----------------------------------------------------------------------------
// config_check

// config_check(c, world) must fail with one line containing want.
static void expect_check_fails(const TrainConfig* c, int world, const char* want) {
    StderrCapture cap;
    char text[1024];
    capture_stderr(&cap);
    int rc = config_check(c, world);
    release_stderr(&cap, text, sizeof text);
    cr_assert_eq(rc, -1, "batch %d of data %d on %d ranks passed the check; want '%s'",
                 c->batch_size, c->data_size, world, want);
    cr_assert_eq(count_lines(text), 1, "want one line, got:\n%s", text);
    cr_assert_not_null(strstr(text, want), "want '%s', got: %s", want, text);
}

Test(config, check_accepts_a_batch_up_to_the_training_set_of_a_rank) {
    TrainConfig c;
    config_defaults(&c);
    cr_assert_eq(config_check(&c, 1), 0, "the defaults fail the check");
    c.batch_size = 1600; // the whole training set: int(0.8 * 2000)
    cr_assert_eq(config_check(&c, 1), 0);
    c.batch_size = 800; // 1600 shared by two ranks
    cr_assert_eq(config_check(&c, 2), 0);
    c.batch_size = 534; // ceil(1600 / 3): the padded share of each of three ranks
    cr_assert_eq(config_check(&c, 3), 0);
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
    char* argv[] = {"prog", "--resume", "--epochs", "5", NULL};
    int argc = 4, i = 1;
    char flag[64];
    const char* value = "untouched";
    cr_assert_eq(config_split_flag(argc, argv, &i, flag, sizeof flag, &value), 0);
    cr_assert_str_eq(flag, "--resume");
    cr_assert_null(value, "--resume took '%s' as its value", value);
    cr_assert_eq(i, 1, "--resume moved past the next argument");
    TrainConfig c;
    config_defaults(&c);
    expect_accepted(&c, "--resume", NULL);
    cr_assert_eq(c.resume, RESUME_REQUIRED);
    expect_rejected(&c, "--resume", "yes");
}

Test(config, checkpoint_flags_are_stored_and_bad_ones_rejected) {
    TrainConfig c;
    config_defaults(&c);
    cr_assert(c.checkpoint_dir == NULL && c.checkpoint_every == 1 && c.resume == RESUME_NO,
              "checkpoints are not off by default");
    expect_accepted(&c, "--checkpoint-dir", "ckpt");
    expect_accepted(&c, "--checkpoint-every", "5");
    cr_assert_str_eq(c.checkpoint_dir, "ckpt");
    cr_assert_eq(c.checkpoint_every, 5);
    expect_rejected(&c, "--checkpoint-dir", "");
    expect_rejected(&c, "--checkpoint-dir", NULL);
    expect_rejected(&c, "--checkpoint-every", "0");
    expect_rejected(&c, "--checkpoint-every", "1000001");
}

Test(config, check_wants_checkpoint_dir_for_resume_and_checkpoint_every) {
    TrainConfig c;
    config_defaults(&c);
    c.resume = RESUME_REQUIRED;
    expect_check_fails(&c, 1, "--resume needs --checkpoint-dir");
    config_defaults(&c);
    c.checkpoint_every = 3;
    expect_check_fails(&c, 1, "--checkpoint-every needs --checkpoint-dir");
    c.checkpoint_dir = "ckpt";
    cr_assert_eq(config_check(&c, 1), 0);
}
