/*
 * checkpoint_file.c - the checkpoint file: encoding, atomic writes, checked reads (see
 * checkpoint_file.h).
 */
#include "checkpoint_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

#define MAGIC "DDPCKPT" // with its NUL: 8 bytes
#define HEADER_BYTES 48
#define HISTORY_ROW_BYTES 16 // f32 train_loss, f32 eval_loss, f64 seconds
#define CRC_BYTES 4

// ----------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, as zlib and PNG use), to tell a damaged file from a good one

static uint32_t crc32_of(const unsigned char* bytes, size_t len) {
    static uint32_t table[256];
    if (table[1] == 0)
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int bit = 0; bit < 8; bit++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

uint32_t checkpoint_settings_hash(const TrainConfig* c) {
    char text[256];
    config_settings(c, text, sizeof text);
    return crc32_of((const unsigned char*)text, strlen(text));
}

// ----------------------------------------------------------------------------
// encoding: little-endian, whatever the machine

static unsigned char* put_u32(unsigned char* p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static unsigned char* put_u64(unsigned char* p, uint64_t v) {
    return put_u32(put_u32(p, (uint32_t)v), (uint32_t)(v >> 32));
}

static unsigned char* put_floats(unsigned char* p, const float* v, size_t count) {
    for (size_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        p = put_u32(p, bits);
    }
    return p;
}

static uint32_t get_u32(const unsigned char* p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char* p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static const unsigned char* get_floats(float* v, const unsigned char* p, size_t count) {
    for (size_t i = 0; i < count; i++, p += 4) {
        uint32_t bits = get_u32(p);
        memcpy(&v[i], &bits, 4);
    }
    return p;
}

static size_t file_bytes(int num_params, int epochs_done) {
    return HEADER_BYTES + 3 * 4 * (size_t)num_params + HISTORY_ROW_BYTES * (size_t)epochs_done +
           CRC_BYTES;
}

unsigned char* checkpoint_encode(const Checkpoint* ck, size_t* len) {
    size_t P = (size_t)ck->num_params;
    *len = file_bytes(ck->num_params, ck->epochs_done);
    unsigned char* bytes = malloc(*len);
    if (bytes == NULL)
        return NULL;
    memcpy(bytes, MAGIC, 8);
    unsigned char* p = put_u32(bytes + 8, CHECKPOINT_VERSION);
    p = put_u32(p, (uint32_t)ck->hidden);
    p = put_u32(p, (uint32_t)ck->num_params);
    p = put_u32(p, (uint32_t)ck->world_size);
    p = put_u64(p, ck->seed);
    p = put_u32(p, ck->settings_hash);
    p = put_u32(p, (uint32_t)ck->epochs_done);
    p = put_u64(p, (uint64_t)ck->optimizer_step);
    p = put_floats(put_floats(put_floats(p, ck->params, P), ck->opt_m, P), ck->opt_v, P);
    for (int e = 0; e < ck->epochs_done; e++) {
        uint64_t seconds;
        memcpy(&seconds, &ck->history[e].seconds, 8);
        p = put_floats(p, &ck->history[e].train_loss, 1);
        p = put_floats(p, &ck->history[e].eval_loss, 1);
        p = put_u64(p, seconds);
    }
    put_u32(p, crc32_of(bytes, *len - CRC_BYTES));
    return bytes;
}

// ----------------------------------------------------------------------------
// decoding: every field checked before any is used

// Checks the header of a file of len bytes (at least HEADER_BYTES) and fills ck's sizes.
static int decode_header(Checkpoint* ck, const unsigned char* h, size_t len, char* why,
                         size_t why_len) {
    uint32_t version = get_u32(h + 8), hidden = get_u32(h + 12), num_params = get_u32(h + 16);
    uint32_t world_size = get_u32(h + 20), epochs_done = get_u32(h + 36);
    uint64_t step = get_u64(h + 40);
    if (memcmp(h, MAGIC, 8) != 0)
        snprintf(why, why_len, "not a checkpoint (no DDPCKPT magic at its start)");
    else if (version != CHECKPOINT_VERSION)
        snprintf(why, why_len, "format version %" PRIu32 ", this build reads version %d", version,
                 CHECKPOINT_VERSION);
    else if (hidden < 1 || hidden > CONFIG_MAX_HIDDEN ||
             num_params != (uint32_t)mlp_num_params((int)hidden))
        snprintf(why, why_len,
                 "corrupted: a model of hidden size %" PRIu32 " with %" PRIu32
                 " parameters is impossible",
                 hidden, num_params);
    else if (world_size < 1 || world_size > INT_MAX || epochs_done > CONFIG_MAX_EPOCHS ||
             step > INT_MAX)
        snprintf(why, why_len,
                 "corrupted: world size %" PRIu32 ", %" PRIu32
                 " epochs done, optimizer step %" PRIu64 " are out of range",
                 world_size, epochs_done, step);
    else if (len != file_bytes((int)num_params, (int)epochs_done))
        snprintf(why, why_len, "%s: %zu bytes, its header promises %zu",
                 len < file_bytes((int)num_params, (int)epochs_done) ? "truncated" : "corrupted",
                 len, file_bytes((int)num_params, (int)epochs_done));
    else {
        *ck = (Checkpoint){.hidden = (int)hidden,
                           .num_params = (int)num_params,
                           .world_size = (int)world_size,
                           .seed = get_u64(h + 24),
                           .settings_hash = get_u32(h + 32),
                           .epochs_done = (int)epochs_done,
                           .optimizer_step = (int)step};
        return 0;
    }
    return -1;
}

int checkpoint_decode(Checkpoint* ck, const unsigned char* bytes, size_t len, char* why,
                      size_t why_len) {
    memset(ck, 0, sizeof *ck);
    if (len < HEADER_BYTES + CRC_BYTES) {
        snprintf(why, why_len, "truncated: %zu bytes, less than a header", len);
        return -1;
    }
    if (decode_header(ck, bytes, len, why, why_len) != 0)
        return -1;
    ck->crc = get_u32(bytes + len - CRC_BYTES);
    if (crc32_of(bytes, len - CRC_BYTES) != ck->crc) {
        snprintf(why, why_len, "corrupted: its CRC-32 does not match its contents");
        return -1;
    }
    size_t P = (size_t)ck->num_params;
    ck->params = malloc(P * sizeof(float));
    ck->opt_m = malloc(P * sizeof(float));
    ck->opt_v = malloc(P * sizeof(float));
    ck->history = malloc_nonzero((size_t)ck->epochs_done * sizeof(EpochStats));
    if (ck->params == NULL || ck->opt_m == NULL || ck->opt_v == NULL || ck->history == NULL) {
        checkpoint_free(ck);
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    const unsigned char* p = get_floats(ck->params, bytes + HEADER_BYTES, P);
    p = get_floats(ck->opt_v, get_floats(ck->opt_m, p, P), P);
    for (int e = 0; e < ck->epochs_done; e++, p += HISTORY_ROW_BYTES) {
        uint64_t seconds = get_u64(p + 8);
        get_floats(&ck->history[e].train_loss, p, 1);
        get_floats(&ck->history[e].eval_loss, p + 4, 1);
        memcpy(&ck->history[e].seconds, &seconds, 8);
    }
    return 0;
}

void checkpoint_free(Checkpoint* ck) {
    free(ck->params);
    free(ck->opt_m);
    free(ck->opt_v);
    free(ck->history);
    ck->params = ck->opt_m = ck->opt_v = NULL;
    ck->history = NULL;
}

// ----------------------------------------------------------------------------
// the file

static int write_all(int fd, const unsigned char* bytes, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, bytes, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        bytes += n;
        len -= (size_t)n;
    }
    return 0;
}

// The new file whole on disk under a temporary name, then renamed over the old one:
// rename is atomic, so a reader (or a crash) sees the old file or the new, never half.
static int write_atomically(const char* dir, const char* path, const unsigned char* bytes,
                            size_t len, char* why, size_t why_len) {
    char tmp[PATH_MAX + 4];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ok = fd >= 0 && write_all(fd, bytes, len) == 0 && fsync(fd) == 0;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int err = errno;
        snprintf(why, why_len, "writing %s: %s", ok ? path : tmp, strerror(err));
        unlink(tmp); // a failed write leaves nothing half-written behind
        errno = err;
        return -1;
    }
    // The rename itself is only durable once the directory is.
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        fsync(dir_fd);
        close(dir_fd);
    }
    return 0;
}

int checkpoint_path(char* path, size_t len, const char* dir, char* why, size_t why_len) {
    size_t dir_len = strlen(dir);
    while (dir_len > 1 && dir[dir_len - 1] == '/')
        dir_len--;
    if (snprintf(path, len, "%.*s/%s", (int)dir_len, dir, CHECKPOINT_FILE) >= (int)len) {
        snprintf(why, why_len, "the directory's path is too long");
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

int checkpoint_write(const char* dir, const Checkpoint* ck, char* why, size_t why_len) {
    char path[PATH_MAX];
    size_t len;
    RETURN_IF_FAILED(checkpoint_path(path, sizeof path, dir, why, why_len));
    unsigned char* bytes = checkpoint_encode(ck, &len);
    if (bytes == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    int err = write_atomically(dir, path, bytes, len, why, why_len);
    free(bytes);
    return err;
}

// The largest file a checkpoint can be: anything longer is refused before it is read.
static size_t max_file_bytes(void) {
    return file_bytes(mlp_num_params(CONFIG_MAX_HIDDEN), CONFIG_MAX_EPOCHS);
}

int checkpoint_read(const char* dir, Checkpoint* ck, char* why, size_t why_len) {
    char path[PATH_MAX];
    struct stat st;
    memset(ck, 0, sizeof *ck);
    RETURN_IF_FAILED(checkpoint_path(path, sizeof path, dir, why, why_len));
    FILE* f = fopen(path, "rb");
    if (f == NULL || fstat(fileno(f), &st) != 0) {
        int err = errno;
        snprintf(why, why_len, "%s: %s", path, strerror(err));
        if (f != NULL)
            fclose(f);
        errno = err;
        return -1;
    }
    size_t len = (size_t)st.st_size;
    unsigned char* bytes = len <= max_file_bytes() ? malloc_nonzero(len) : NULL;
    int err = -1;
    if (len > max_file_bytes())
        snprintf(why, why_len, "%s: %zu bytes, too large to be a checkpoint", path, len);
    else if (bytes == NULL)
        snprintf(why, why_len, "%s: out of memory", path);
    else if (fread(bytes, 1, len, f) != len)
        snprintf(why, why_len, "%s: truncated while being read", path);
    else if (checkpoint_decode(ck, bytes, len, why, why_len) != 0) {
        char problem[256];
        snprintf(problem, sizeof problem, "%s", why);
        snprintf(why, why_len, "%s: %s", path, problem);
    } else
        err = 0;
    free(bytes);
    fclose(f);
    errno = 0; // only a missing file reports ENOENT
    return err;
}
