/*
 * file.h - reading a file that a user names, without blocking and without trusting it.
 *
 * A path from a flag (--token-file, --resume's checkpoint, a hosts file) may name
 * anything: a FIFO that nobody writes, a device, a directory, a file far too large.
 * Reading any of the first three could block for ever, so they are refused before a
 * byte is read: the file is opened without blocking and must be a regular file.
 *
 * A directory that a run will write into is tried at its start (file_dir_writable), so
 * that a read-only --out fails before any work, not after hours of training.
 *
 * APIs: file_read_all, file_dir_writable.
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

// Whether files can be made in dir: one is created and removed. Returns 0, or -1 with
// "cannot write in DIR: reason" in why.
int file_dir_writable(const char* dir, char* why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
