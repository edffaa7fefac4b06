/*
 * file.c - reading a file that a user names (see file.h).
 */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// Reads len bytes of fd into buf; 0, or -1 with errno (0 when the file ended early).
static int read_exactly(int fd, char* buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            errno = n == 0 ? 0 : errno;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

char* file_read_all(const char* path, size_t max_bytes, size_t* len, mode_t* mode, char* why,
                    size_t why_len) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    char* text = NULL;
    int err = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        err = errno;
        snprintf(why, why_len, "%s: %s", path, strerror(err));
    } else if (!S_ISREG(st.st_mode))
        snprintf(why, why_len, "%s: not a regular file (a FIFO, a device or a directory)", path);
    else if ((size_t)st.st_size > max_bytes)
        snprintf(why, why_len, "%s: %lld bytes, more than the %zu this file may have", path,
                 (long long)st.st_size, max_bytes);
    else if ((text = malloc((size_t)st.st_size + 1)) == NULL)
        snprintf(why, why_len, "%s: out of memory", path);
    else if (read_exactly(fd, text, (size_t)st.st_size) != 0) {
        snprintf(why, why_len, "%s: %s", path,
                 errno != 0 ? strerror(errno) : "it shrank while being read");
        free(text);
        text = NULL;
    } else {
        text[st.st_size] = '\0';
        *len = (size_t)st.st_size;
        if (mode != NULL)
            *mode = st.st_mode & 07777;
    }
    if (fd >= 0)
        close(fd);
    errno = err;
    return text;
}

int file_dir_writable(const char* dir, char* why, size_t why_len) {
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/.write-test-%d", dir, (int)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(why, why_len, "cannot write in %s: %s", dir, strerror(errno));
        return -1;
    }
    close(fd);
    unlink(probe);
    return 0;
}
