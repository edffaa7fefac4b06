/*
 * fuzz_checkpoint.c - libFuzzer target: the checkpoint loader against any bytes.
 *
 * checkpoint_decode is what --resume runs on a file it did not write: whatever the
 * bytes, it must refuse them with a reason or decode them, never read out of bounds,
 * overflow or leak. A decoded file is encoded again and must come back bit for bit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_file.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Checkpoint ck;
    char why[512];
    if (checkpoint_decode(&ck, data, size, why, sizeof why) != 0) {
        if (why[0] == '\0')
            abort(); // a refusal must say why
        return 0;
    }
    size_t len;
    unsigned char* again = checkpoint_encode(&ck, &len);
    if (again == NULL || len != size || memcmp(again, data, size) != 0)
        abort(); // what was accepted must be exactly what it encodes to
    free(again);
    checkpoint_free(&ck);
    return 0;
}
