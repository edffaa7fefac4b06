/*
 * test_lessons.c - the code that lessons repeat on purpose stays identical.
 *
 * Every lesson is a standalone program that reads top to bottom, so a later lesson
 * repeats some of an earlier one's code (the data, the training loop, a rank's life).
 * Each repeated region is fenced in every lesson that has it:
 *
 *     // >>> shared "NAME": the same in every lesson that has it (tests/test_lessons.c)
 *     ...
 *     // <<< shared "NAME"
 *
 * These tests read each lesson's program (lessons/NN_NAME/NAME.c), check that the fences
 * pair up, and that every copy of a region equals the one of the lowest-numbered lesson,
 * naming the first line that differs. So `make diff-03` shows only what is new, by construction.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/proc.h"

#define MAX_FILES 32
#define MAX_REGIONS 64
#define BEGIN_FENCE "// >>> shared \""
#define END_FENCE "// <<< shared \""

typedef struct {
    char name[64];
    const char* file;
    int first_line; // the line after the opening fence, from 1
    const char* start;
    size_t len; // bytes of the region, fences excluded
} Region;

typedef struct {
    Region regions[MAX_REGIONS];
    int count;
} Regions;

// ----------------------------------------------------------------------------
// reading the fences

// The quoted name after a fence at line (NUL on a malformed fence).
static void fence_name(const char* line, const char* fence, char* name, size_t size) {
    const char* p = line + strlen(fence);
    size_t n = strcspn(p, "\"\n");
    snprintf(name, size, "%.*s", p[n] == '"' ? (int)n : 0, p);
}

// Adds text's regions to out. Returns NULL, or a description of the first bad fence.
static const char* read_regions(Regions* out, const char* file, const char* text, char* why,
                                size_t why_len) {
    Region* open = NULL;
    int line_no = 1;
    for (const char* line = text; *line != '\0'; line_no++) {
        const char* next = strchr(line, '\n');
        next = next != NULL ? next + 1 : line + strlen(line);
        const char* code = line + strspn(line, " ");
        char name[64];
        if (strncmp(code, BEGIN_FENCE, strlen(BEGIN_FENCE)) == 0) {
            fence_name(code, BEGIN_FENCE, name, sizeof name);
            if (open != NULL || name[0] == '\0' || out->count == MAX_REGIONS) {
                snprintf(why, why_len, "%s:%d: a fence opens inside \"%s\", or has no name", file,
                         line_no, open != NULL ? open->name : "");
                return why;
            }
            open = &out->regions[out->count++];
            *open = (Region){.file = file, .first_line = line_no + 1, .start = next};
            snprintf(open->name, sizeof open->name, "%s", name);
        } else if (strncmp(code, END_FENCE, strlen(END_FENCE)) == 0) {
            fence_name(code, END_FENCE, name, sizeof name);
            if (open == NULL || strcmp(name, open->name) != 0) {
                snprintf(why, why_len, "%s:%d: closes \"%s\", which is not open", file, line_no,
                         name);
                return why;
            }
            open->len = (size_t)(line - open->start);
            open = NULL;
        }
        line = next;
    }
    if (open != NULL) {
        snprintf(why, why_len, "%s:%d: \"%s\" is never closed", file, open->first_line - 1,
                 open->name);
        return why;
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// comparing copies

// NULL if copy's text equals origin's, else a description of the first line that differs.
static const char* first_difference(const Region* origin, const Region* copy, char* why,
                                    size_t why_len) {
    const char *a = origin->start, *b = copy->start;
    const char *a_end = a + origin->len, *b_end = b + copy->len;
    for (int line = 0; a < a_end || b < b_end; line++) {
        size_t a_n = a < a_end ? strcspn(a, "\n") : 0, b_n = b < b_end ? strcspn(b, "\n") : 0;
        if (a >= a_end || b >= b_end || a_n != b_n || memcmp(a, b, a_n) != 0) {
            const char* ended = "(the region ends)";
            snprintf(why, why_len,
                     "%s:%d: shared \"%s\" differs from %s:%d:\n  here:   %.*s\n  origin: %.*s",
                     copy->file, copy->first_line + line, copy->name, origin->file,
                     origin->first_line + line, (int)(b < b_end ? b_n : strlen(ended)),
                     b < b_end ? b : ended, (int)(a < a_end ? a_n : strlen(ended)),
                     a < a_end ? a : ended);
            return why;
        }
        a += a_n + 1;
        b += b_n + 1;
    }
    return NULL;
}

// Compares every region with the first one of its name (regions are in lesson order).
// Returns NULL, or the first difference; *shared counts names found in two files or more.
static const char* check_copies(const Regions* r, int* shared, char* why, size_t why_len) {
    *shared = 0;
    for (int i = 0; i < r->count; i++) {
        int origin = 0;
        while (strcmp(r->regions[origin].name, r->regions[i].name) != 0)
            origin++;
        if (origin == i)
            continue;
        if (strcmp(r->regions[origin].file, r->regions[i].file) == 0) {
            snprintf(why, why_len, "%s: \"%s\" is fenced twice", r->regions[i].file,
                     r->regions[i].name);
            return why;
        }
        if (first_difference(&r->regions[origin], &r->regions[i], why, why_len) != NULL)
            return why;
        *shared += 1;
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// the lessons

static int by_name(const void* a, const void* b) {
    return strcmp(*(char* const*)a, *(char* const*)b);
}

// The main .c file of every lesson directory lessons/NN_*, in lesson order (paths malloc'd).
static int lesson_files(char** files) {
    DIR* d = opendir("lessons");
    cr_assert_not_null(d, "no lessons/ directory: run the tests from the repository root");
    int n = 0;
    for (struct dirent* e; (e = readdir(d)) != NULL && n < MAX_FILES;) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        const char* program = strchr(e->d_name, '_') + 1; // 02_multi_gpu -> multi_gpu.c
        files[n] = malloc(strlen(e->d_name) * 2 + 16);
        sprintf(files[n++], "lessons/%s/%s.c", e->d_name, program);
    }
    closedir(d);
    qsort(files, (size_t)n, sizeof *files, by_name);
    return n;
}

Test(lessons, every_shared_region_is_identical_in_every_lesson_that_has_it) {
    char* files[MAX_FILES];
    char* texts[MAX_FILES];
    int n = lesson_files(files);
    cr_assert_geq(n, 3, "found %d lessons", n);
    Regions* r = calloc(1, sizeof *r);
    char why[2048];
    for (int i = 0; i < n; i++) {
        texts[i] = read_file(files[i], NULL);
        cr_assert_not_null(texts[i], "cannot read %s", files[i]);
        cr_assert_null(read_regions(r, files[i], texts[i], why, sizeof why), "%s", why);
    }
    int shared;
    cr_assert_null(check_copies(r, &shared, why, sizeof why), "%s", why);
    // Lessons 02 and 03 share their training code: if the fences vanish, so does the check.
    cr_assert_geq(shared, 8, "only %d copies of shared regions were found", shared);
    for (int i = 0; i < n; i++)
        free(files[i]), free(texts[i]);
    free(r);
}

Test(lessons, the_check_names_the_first_line_where_a_copy_drifted) {
    const char* origin = "int a;\n// >>> shared \"x\": ...\nint b;\nint c;\n// <<< shared \"x\"\n";
    const char* copy = "// >>> shared \"x\": ...\nint b;\nint C;\n// <<< shared \"x\"\n";
    Regions* r = calloc(1, sizeof *r);
    char why[1024];
    int shared;
    cr_assert_null(read_regions(r, "one.c", origin, why, sizeof why));
    cr_assert_null(read_regions(r, "two.c", copy, why, sizeof why));
    cr_assert_not_null(check_copies(r, &shared, why, sizeof why), "a drifted copy passed");
    cr_assert_not_null(strstr(why, "two.c:3: shared \"x\" differs from one.c:4"), "%s", why);
    cr_assert_not_null(strstr(why, "int C;"), "%s", why);
    free(r);
}

Test(lessons, a_copy_that_is_longer_or_shorter_is_caught) {
    const char* origin = "// >>> shared \"x\"\nint b;\n// <<< shared \"x\"\n";
    const char* copy = "// >>> shared \"x\"\nint b;\nint extra;\n// <<< shared \"x\"\n";
    Regions* r = calloc(1, sizeof *r);
    char why[1024];
    int shared;
    read_regions(r, "one.c", origin, why, sizeof why);
    read_regions(r, "two.c", copy, why, sizeof why);
    cr_assert_not_null(check_copies(r, &shared, why, sizeof why), "a longer copy passed");
    cr_assert_not_null(strstr(why, "(the region ends)"), "%s", why);
    free(r);
}

Test(lessons, fences_that_do_not_pair_up_are_refused) {
    const char* unclosed = "// >>> shared \"x\"\nint b;\n";
    const char* stray = "int b;\n// <<< shared \"x\"\n";
    const char* nested = "// >>> shared \"x\"\n// >>> shared \"y\"\n";
    const char* bad[] = {unclosed, stray, nested};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        Regions* r = calloc(1, sizeof *r);
        char why[1024];
        cr_assert_not_null(read_regions(r, "bad.c", bad[i], why, sizeof why), "case %zu passed", i);
        free(r);
    }
}
