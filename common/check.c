/*
 * check.c - the reporting half of check.h.
 */
#include "check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int check_rank = -1;
static bool failed_for_good = false;
static char* last_line = NULL; // rank_log_keep_last_line's buffer
static size_t last_line_len = 0;

void rank_log_set_rank(int rank) {
    check_rank = rank;
}

void rank_log_keep_last_line(char* buffer, size_t len) {
    last_line = buffer;
    last_line_len = len;
}

static void log_line(const char* format, va_list args) {
    char line[1100];
    int n = check_rank >= 0 ? snprintf(line, sizeof line, "[Rank %d] ", check_rank) : 0;
    vsnprintf(line + n, sizeof line - (size_t)n - 1, format, args);
    if (last_line != NULL)
        snprintf(last_line, last_line_len, "%s", line + n);
    // one write, so that lines of several ranks do not interleave
    size_t len = strlen(line);
    line[len] = '\n';
    if (write(STDERR_FILENO, line, len + 1) < 0)
        return; // nowhere left to report to
}

void rank_log(const char* format, ...) {
    va_list args;
    va_start(args, format);
    log_line(format, args);
    va_end(args);
}

void rank_log_for_good(const char* format, ...) {
    failed_for_good = true;
    va_list args;
    va_start(args, format);
    log_line(format, args);
    va_end(args);
}

bool rank_failed_for_good(void) {
    return failed_for_good;
}

void check_report(const char* file, int line, const char* expr, const char* reason) {
    rank_log("%s:%d: %s: %s", file, line, expr, reason);
}
