/*
 * check.c - the reporting half of check.h.
 */
#include "check.h"

#include <stdarg.h>
#include <stdio.h>

static int check_rank = -1;

void check_set_rank(int rank) {
    check_rank = rank;
}

void check_report(const char* file, int line, const char* expr, const char* reason) {
    if (check_rank >= 0)
        fprintf(stderr, "[Rank %d] %s:%d: %s: %s\n", check_rank, file, line, expr, reason);
    else
        fprintf(stderr, "%s:%d: %s: %s\n", file, line, expr, reason);
}

void check_message(const char* format, ...) {
    char line[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    // one write, so that lines of several ranks do not interleave
    if (check_rank >= 0)
        fprintf(stderr, "[Rank %d] %s\n", check_rank, line);
    else
        fprintf(stderr, "%s\n", line);
}
