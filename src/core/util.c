/*
 * util.c - the small services every part of libfrost uses: error messages,
 * tracked aligned allocation, the seeded random generator and hashing.
 */
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE */
#include "internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int fr_fail(fr_error *err, int status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

void fr_error_prefix(fr_error *err, const char *fmt, ...) {
    if (!err)
        return;
    char prefix[FR_ERROR_LEN], joined[FR_ERROR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t used = strlen(prefix);
    size_t room = sizeof joined - 1;
    if (used > room)
        used = room;
    memcpy(joined, prefix, used);
    size_t rest = strlen(err->msg);
    if (rest > room - used)
        rest = room - used;
    memcpy(joined + used, err->msg, rest);
    joined[used + rest] = '\0';
    memcpy(err->msg, joined, sizeof joined);
}

const char *fr_printable(const char *text, char *shown, size_t len) {
    size_t i = 0;
    for (; text[i] && i + 1 < len; i++) {
        unsigned char c = (unsigned char)text[i];
        shown[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    shown[i] = '\0';
    return shown;
}

/*
 * Every allocation carries a 64-byte header recording its size, so that
 * fr_allocated_bytes can report exactly what the library holds (the tests use
 * it to show frozen parameters cost no gradient or optimizer memory).
 */
static _Atomic size_t allocated_bytes;

/* Large buffers (the dataset, the weights, the slab, the optimizer state)
 * start on a huge-page boundary and ask for huge pages: the steps gather rows
 * from all over the dataset and stream the slab and the state, and with 4 KB
 * pages every few KB costs a TLB miss (dearer still under a hypervisor). */
#define HUGE_PAGE_BYTES ((size_t)2 << 20)

void *fr_alloc(size_t bytes) {
    size_t total;
    if (bytes > SIZE_MAX - HUGE_PAGE_BYTES * 2)
        return NULL;
    total = (bytes + FR_ALIGN - 1) / FR_ALIGN * FR_ALIGN + FR_ALIGN;
    bool huge = total >= 2 * HUGE_PAGE_BYTES;
    if (huge)
        total = (total + HUGE_PAGE_BYTES - 1) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    unsigned char *base = aligned_alloc(huge ? HUGE_PAGE_BYTES : FR_ALIGN, total);
    if (!base)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (huge)
        madvise(base, total, MADV_HUGEPAGE); /* advice: where refused, 4 KB pages serve */
#endif
    memset(base, 0, total);
    memcpy(base, &bytes, sizeof bytes);
    atomic_fetch_add(&allocated_bytes, bytes);
    return base + FR_ALIGN;
}

void fr_free(void *ptr) {
    if (!ptr)
        return;
    unsigned char *base = (unsigned char *)ptr - FR_ALIGN;
    size_t bytes;
    memcpy(&bytes, base, sizeof bytes);
    atomic_fetch_sub(&allocated_bytes, bytes);
    free(base);
}

size_t fr_allocated_bytes(void) { return atomic_load(&allocated_bytes); }

size_t fr_alloc_size(const void *ptr) {
    if (!ptr)
        return 0;
    size_t bytes;
    memcpy(&bytes, (const unsigned char *)ptr - FR_ALIGN, sizeof bytes);
    return bytes;
}

bool fr_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a)
        return false;
    *out = a * b;
    return true;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fr_rng_seed(fr_rng *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t fr_rng_next(fr_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float fr_rng_uniform(fr_rng *rng) {
    return (float)(fr_rng_next(rng) >> 40) * (1.0f / 16777216.0f);
}

uint64_t fr_rng_below(fr_rng *rng, uint64_t bound) {
    /* Lemire's rejection keeps the result unbiased. */
    uint64_t threshold = -bound % bound;
    for (;;) {
        uint64_t r = fr_rng_next(rng);
        if (r >= threshold)
            return r % bound;
    }
}

static uint64_t rotate_left(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* Whole 32-byte blocks go through four independent lanes of 8-byte words
 * (one multiply chain per byte cost ~15 ms on an 11.6 MB model, and ranks
 * compare a checksum of the weights at every logged step); the lanes are
 * folded into the hash, and the rest is FNV-1a byte by byte. */
uint64_t fr_hash_bytes(uint64_t hash, const void *data, size_t len) {
    const unsigned char *p = data;
    if (len >= 32) {
        const uint64_t odd = 0x9e3779b97f4a7c15ULL;
        uint64_t lane[4] = {hash, hash ^ 0xbf58476d1ce4e5b9ULL, hash ^ 0x94d049bb133111ebULL,
                            hash ^ odd};
        size_t blocks = len / 32;
        for (size_t b = 0; b < blocks; b++, p += 32)
            for (int k = 0; k < 4; k++) {
                uint64_t word;
                memcpy(&word, p + 8 * k, sizeof word);
                lane[k] = rotate_left(lane[k] ^ word, 29) * odd;
            }
        for (int k = 0; k < 4; k++)
            hash = (hash ^ lane[k] ^ (lane[k] >> 31)) * 0x100000001b3ULL;
        len -= blocks * 32;
    }
    for (size_t i = 0; i < len; i++) {
        hash ^= p[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

void fr_epoch_order(int *order, int n, uint64_t seed, long epoch, bool shuffle) {
    for (int i = 0; i < n; i++)
        order[i] = i;
    if (!shuffle)
        return;
    fr_rng rng;
    fr_rng_seed(&rng, seed ^ ((uint64_t)epoch * 0x9e3779b97f4a7c15ULL));
    for (int i = n - 1; i > 0; i--) {
        int j = (int)fr_rng_below(&rng, (uint64_t)i + 1);
        int swap = order[i];
        order[i] = order[j];
        order[j] = swap;
    }
}

/* ---------------------------------------------------------------- text */

void fr_text_printf(fr_text *t, const char *format, ...) {
    if (t->failed)
        return;
    for (;;) {
        va_list args;
        va_start(args, format);
        size_t room = t->capacity - t->length;
        int n = vsnprintf(t->data ? t->data + t->length : NULL, room, format, args);
        va_end(args);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < room) {
            t->length += (size_t)n;
            return;
        }
        size_t capacity = t->capacity ? t->capacity * 2 : 256;
        while (capacity - t->length <= (size_t)n)
            capacity *= 2;
        char *grown = realloc(t->data, capacity);
        if (!grown) {
            t->failed = true;
            return;
        }
        t->data = grown;
        t->capacity = capacity;
    }
}

/* ------------------------------------------------------------ shapes */

void fr_shape_format(fr_shape shape, char *buf, size_t len) {
    size_t used = 0;
    if (len == 0)
        return;
    buf[0] = '\0';
    for (int i = 0; i < shape.ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? "x%d" : "%d", shape.d[i]);
    if (shape.ndim == 0)
        snprintf(buf, len, "scalar");
}
