/*
 * check.c - the reporting half of check.h.
 */
#include "check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int check_rank = -1;

void rank_log_set_rank(int rank) {
    check_rank = rank;
}

void rank_log(const char* format, ...) {
    char line[1100];
    int n = check_rank >= 0 ? snprintf(line, sizeof line, "[Rank %d] ", check_rank) : 0;
    va_list args;
    va_start(args, format);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, format, args);
    va_end(args);
    // one write, so that lines of several ranks do not interleave
    size_t len = strlen(line);
    line[len] = '\n';
    if (write(STDERR_FILENO, line, len + 1) < 0)
        return; // nowhere left to report to
}

void check_report(const char* file, int line, const char* expr, const char* reason) {
    rank_log("%s:%d: %s: %s", file, line, expr, reason);
}
