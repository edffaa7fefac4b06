/*
 * fuzz_rendezvous.c - libFuzzer target: the rendezvous decoder on arbitrary bytes.
 *
 * Every byte the master port receives goes through rdzv_decode_message's code, from
 * anyone who can connect. Here libFuzzer feeds it whatever it likes, as one message
 * (header and payload); it must never crash, read or write out of bounds, leak or trip
 * UndefinedBehaviorSanitizer. A message it accepts must hold what the protocol
 * promises: the checks below abort, which libFuzzer reports as a crash.
 *
 * `make fuzz` builds it with clang -fsanitize=fuzzer,address,undefined against the C
 * files of common/ (CPU only) and -lsodium -lm; its seed corpus, valid and nearly
 * valid messages of every type, is tests/fuzz/corpus/rendezvous/. A longer run keeps
 * what it finds in a scratch directory, reading the seeds as well:
 *     fuzz_rendezvous -max_total_time=600 /tmp/found tests/fuzz/corpus/rendezvous
 *
 * APIs: LLVMFuzzerTestOneInput.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rendezvous.h"

// Whether text holds a NUL within its n bytes: every string the decoder hands out must.
static int terminated(const char* text, size_t n) {
    return memchr(text, '\0', n) != NULL;
}

static int hello_is_sound(const RdzvMessage* m, size_t len) {
    const RdzvHello* h = &m->hello;
    int ok = h->nproc >= 1 && h->nproc <= WORKERS_MAX &&
             m->signed_len + RDZV_PROOF_BYTES + RDZV_HEADER_BYTES == len &&
             terminated(h->build_id, sizeof h->build_id) &&
             terminated(h->nccl_version, sizeof h->nccl_version) &&
             terminated(h->settings, sizeof h->settings) &&
             terminated(h->ring_addr, sizeof h->ring_addr);
    for (int i = 0; ok && i < h->nproc; i++)
        ok = h->ring_ports[i] >= 1 && h->ring_ports[i] <= 65535;
    return ok;
}

static int world_is_sound(const RdzvWorld* w) {
    int ok = w->nnodes >= 1 && w->nnodes <= RDZV_MAX_NODES && w->world_size >= 1 &&
             w->world_size <= RDZV_MAX_RANKS;
    int ranks = 0;
    for (int n = 0; ok && n < w->nnodes; n++) {
        ok = w->nproc[n] >= 1 && w->nproc[n] <= WORKERS_MAX && w->rank_offset[n] == ranks;
        ranks += w->nproc[n];
    }
    for (int r = 0; ok && r < w->world_size; r++)
        ok = terminated(w->ring_addr[r], RDZV_ADDR_BYTES) && w->ring_port[r] >= 1 &&
             w->ring_port[r] <= 65535;
    return ok && ranks == w->world_size;
}

// What an accepted message of each type promises; len is the whole message's size.
static int message_is_sound(const RdzvMessage* m, size_t len) {
    switch (m->type) {
    case RDZV_HELLO:
        return hello_is_sound(m, len);
    case RDZV_WORLD:
        return world_is_sound(&m->world);
    case RDZV_REFUSE:
    case RDZV_ABORT:
    case RDZV_STOP:
        return terminated(m->text, sizeof m->text);
    case RDZV_DONE:
        return len == RDZV_HEADER_BYTES;
    case RDZV_CHALLENGE:
        return len == RDZV_HEADER_BYTES + RDZV_CHALLENGE_BYTES;
    }
    return 0; // no other type may come out of the decoder
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static RdzvMessage m; // 8 KB: static rather than on the stack
    char why[256];
    memset(why, 0, sizeof why);
    if (rdzv_decode_message(&m, data, size, why, sizeof why) == 0) {
        if (!message_is_sound(&m, size))
            abort();
    } else if (why[0] == '\0' || !terminated(why, sizeof why)) {
        abort(); // a refusal always says why
    }
    return 0;
}
