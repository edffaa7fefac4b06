/*
 * hostfile.c - checks a hosts file and prints its hosts, for the launcher scripts.
 *
 *   build/hostfile hosts.txt      (or - for standard input)
 *
 * Prints "HOST SLOTS" per host, in the file's order, SLOTS 0 where the line gives none;
 * a file without hosts prints nothing. A bad file prints one line on stderr,
 * "error: FILE: line N: reason", and nothing on stdout; exit status 2.
 * start_multi_node.sh, launch.sh and setup.sh read their hosts through this program, so
 * that every one of them reads a hosts file as common/hostfile.c does. A FILE must be a
 * regular file (common/file.h): a FIFO, a device or a directory is refused before a byte is
 * read, as reading one could block for ever.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "file.h"
#include "hostfile.h"

// The whole of standard input, up to one byte more than a hosts file may have, into *text
// (malloc); its length, or -1 with errno.
static long read_stdin(char** text) {
    size_t cap = HOSTFILE_MAX_BYTES + 1, len = 0, n;
    *text = malloc(cap);
    if (*text == NULL)
        return -1;
    while (len < cap && (n = fread(*text + len, 1, cap - len, stdin)) > 0)
        len += n;
    if (ferror(stdin)) {
        free(*text);
        return -1;
    }
    return (long)len;
}

// The hosts file at path ("-": standard input) into *text (malloc); its length, or -1 with
// "PATH: reason" in why. A path must name a regular file, which cannot block the read.
static long read_hosts(const char* path, char** text, char* why, size_t why_len) {
    if (strcmp(path, "-") != 0) {
        size_t len;
        *text = file_read_all(path, HOSTFILE_MAX_BYTES, &len, NULL, why, why_len);
        return *text != NULL ? (long)len : -1;
    }
    long len = read_stdin(text);
    if (len < 0)
        snprintf(why, why_len, "%s: %s", path, strerror(errno));
    return len;
}

static int fail(const char* path, const char* why) {
    fprintf(stderr, "error: %s: %s\n", path, why);
    return EXIT_USAGE;
}

int main(int argc, char** argv) {
    if (argc != 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fprintf(argc == 2 ? stdout : stderr,
                "usage: hostfile FILE   (FILE - reads standard input)\n"
                "Checks a hosts file (lines 'HOST [slots=N]', '#' comments) and prints\n"
                "'HOST SLOTS' per host, SLOTS 0 where none is given.\n");
        return argc == 2 ? 0 : EXIT_USAGE;
    }
    const char* path = argv[1];
    char *text, why[512];
    long len = read_hosts(path, &text, why, sizeof why);
    if (len < 0) {
        fprintf(stderr, "error: %s\n", why);
        return EXIT_USAGE;
    }

    HostList* list = malloc(sizeof *list);
    if (list == NULL) {
        free(text);
        return fail(path, strerror(ENOMEM));
    }
    int parsed = hostfile_parse(list, text, (size_t)len, why, sizeof why);
    free(text);
    for (int i = 0; parsed == 0 && i < list->count; i++)
        printf("%s %d\n", list->hosts[i].name, list->hosts[i].slots);
    free(list);
    return parsed == 0 ? 0 : fail(path, why);
}
