/*
 * file.h - reading a file that a user names, without blocking and without trusting it.
 *
 * A path from a flag (--token-file, --resume's checkpoint, a hosts file) may name
 * anything: a FIFO that nobody writes, a device, a directory, a file far too large.
 * Reading any of the first three could block for ever, so they are refused before a
 * byte is read: the file is opened without blocking and must be a regular file.
 *
 * APIs: file_read_all.
 */
#ifndef FILE_H
#define FILE_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

// The whole regular file at path, at most max_bytes, in a malloc'd buffer with a NUL
// after its *len bytes; its permission bits into *mode unless mode is NULL. Returns the
// buffer, or NULL with "PATH: reason" in why (errno is ENOENT when the file is missing).
char* file_read_all(const char* path, size_t max_bytes, size_t* len, mode_t* mode, char* why,
                    size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
