/*
 * test_tensorboard.c - TensorBoard event files (src/formats/tensorboard.c).
 *
 * The encoding piece by piece against known values: CRC-32C's published
 * check value and RFC 3720's vectors, TFRecord's mask, protobuf varints;
 * then files written through the public API, read back byte by byte: the
 * TFRecord framing and both CRCs of every record, the file-version event,
 * a summary event's tags, step and float values, the start marker; the
 * directory made when missing, names never reused, and the failures (a path
 * that is a file, a missing parent, a write refused) each one message naming
 * the file.  (tests/tensorboard.sh reads the frost command's files with an
 * independent reader in Python.)
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "tap.h"
#include "test_files.h"

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t read_le(const unsigned char *bytes, int count) {
    uint64_t value = 0;
    for (int i = count - 1; i >= 0; i--)
        value = value << 8 | bytes[i];
    return value;
}

static void check_crc32c(void) {
    const char *check = "123456789";
    tap_ok(fr_crc32c(0, check, 9) == 0xE3069283u, "crc32c(\"123456789\") is 0xE3069283 (got 0x%08X)",
           fr_crc32c(0, check, 9));
    tap_ok(fr_crc32c(0, "", 0) == 0, "crc32c of no bytes is 0");
    unsigned char zeros[32] = {0}, ones[32], up[32], down[32];
    for (int i = 0; i < 32; i++) {
        ones[i] = 0xff;
        up[i] = (unsigned char)i;
        down[i] = (unsigned char)(31 - i);
    }
    tap_ok(fr_crc32c(0, zeros, 32) == 0x8A9136AAu && fr_crc32c(0, ones, 32) == 0x62A8AB43u &&
               fr_crc32c(0, up, 32) == 0x46DD794Eu && fr_crc32c(0, down, 32) == 0x113FDB5Cu,
           "crc32c gives RFC 3720's values for 32 bytes of 00, of ff, counting up and down");
    tap_ok(fr_crc32c(fr_crc32c(0, check, 4), check + 4, 5) == 0xE3069283u,
           "crc32c continued over two pieces equals crc32c of the whole");
    tap_ok(fr_crc32c_mask(0) == 0xa282ead8u && fr_crc32c_mask(0xE3069283u) == 0xc78ab0e5u,
           "the TFRecord mask is ((crc >> 15) | (crc << 17)) + 0xa282ead8");
}

static bool varint_is(uint64_t value, const unsigned char *want, size_t want_length) {
    unsigned char got[10];
    size_t length = fr_varint_encode(value, got);
    return length == want_length && memcmp(got, want, length) == 0;
}

static void check_varints(void) {
    static const unsigned char max[10] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    bool all = varint_is(0, (const unsigned char *)"\x00", 1) &&
               varint_is(1, (const unsigned char *)"\x01", 1) &&
               varint_is(127, (const unsigned char *)"\x7f", 1) &&
               varint_is(128, (const unsigned char *)"\x80\x01", 2) &&
               varint_is(300, (const unsigned char *)"\xac\x02", 2) &&
               varint_is(1ull << 32, (const unsigned char *)"\x80\x80\x80\x80\x10", 5) &&
               varint_is(UINT64_MAX, max, 10);
    tap_ok(all, "varints: 0, 1, 127, 128, 300, 2^32 and 2^64-1 encode as protobuf's");
}

/* A whole event file, its records' data found through the framing. */
typedef struct event_file {
    unsigned char *bytes;
    size_t size;
    int count;
    const unsigned char *data[8];
    size_t length[8];
    bool crcs_good;
} event_file;

static bool read_events(const char *path, event_file *file) {
    memset(file, 0, sizeof *file);
    fr_error err = {0};
    if (fr_read_file(path, 1 << 20, 0, &file->bytes, &file->size, &err) != FR_OK) {
        tap_diag("%s", err.msg);
        return false;
    }
    file->crcs_good = true;
    size_t at = 0;
    while (at < file->size && file->count < 8) {
        if (file->size - at < 16)
            return false;
        uint64_t length = read_le(file->bytes + at, 8);
        if (length > file->size - at - 16)
            return false;
        file->crcs_good &= read_le(file->bytes + at + 8, 4) ==
                           fr_crc32c_mask(fr_crc32c(0, file->bytes + at, 8));
        file->data[file->count] = file->bytes + at + 12;
        file->length[file->count] = (size_t)length;
        file->crcs_good &= read_le(file->bytes + at + 12 + length, 4) ==
                           fr_crc32c_mask(fr_crc32c(0, file->bytes + at + 12, (size_t)length));
        file->count++;
        at += 16 + (size_t)length;
    }
    return at == file->size;
}

/* An event's data is 0x09, its wall time (8 bytes), then `rest`. */
static bool event_is(const event_file *file, int record, double after, double before,
                     const void *rest, size_t rest_length) {
    const unsigned char *data = file->data[record];
    if (record >= file->count || file->length[record] != 9 + rest_length || data[0] != 0x09)
        return false;
    uint64_t bits = read_le(data + 1, 8);
    double wall_time;
    memcpy(&wall_time, &bits, sizeof wall_time);
    return wall_time >= after && wall_time <= before && memcmp(data + 9, rest, rest_length) == 0;
}

static void check_file(void) {
    const char *dir = in_test_dir("runs");
    fr_error err = {0};
    fr_tensorboard *tb = NULL;
    double before = now();
    int rc = fr_tb_open(dir, &tb, &err);
    struct stat st;
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s/events.out.tfevents.", dir);
    bool named = rc == FR_OK && strncmp(fr_tb_path(tb), prefix, strlen(prefix)) == 0 &&
                 strlen(fr_tb_path(tb)) > strlen(prefix) + 11 &&
                 fr_tb_path(tb)[strlen(prefix) + 10] == '.';
    tap_ok(rc == FR_OK && stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && named,
           "fr_tb_open makes the missing directory and a file events.out.tfevents.<10-digit time>.<host> in it (%s)",
           rc == FR_OK ? fr_tb_path(tb) : err.msg);
    if (rc != FR_OK)
        return;
    char path[300];
    snprintf(path, sizeof path, "%s", fr_tb_path(tb));

    int start_rc = fr_tb_start(tb, 7, &err);
    fr_tb_scalar(tb, "loss", 0.25);
    fr_tb_scalar(tb, "acc", -2.0);
    rc = fr_tb_write(tb, 300, &err);
    int empty_rc = fr_tb_write(tb, 301, &err); /* nothing gathered: no event */
    /* Flushed at each write: what is in the file now is what a live
     * TensorBoard would read. */
    event_file live;
    bool live_read = read_events(path, &live);
    int close_rc = fr_tb_close(tb, &err);
    double after = now();
    tap_ok(rc == FR_OK && empty_rc == FR_OK && start_rc == FR_OK && close_rc == FR_OK,
           "a start, scalars, a write, an empty write and close succeed");
    tap_ok(live_read && live.count == 3 && live.crcs_good,
           "every record is flushed as it is written: 3 records before close, framed, both CRCs good");

    event_file file;
    bool framed = read_events(path, &file);
    tap_ok(framed && file.count == 3 && file.crcs_good,
           "the file is TFRecords: 3 records (version, start, summary), every length and data CRC right");
    static const unsigned char version[] = "\x10\x00\x1a\x0d" "brain.Event:2";
    tap_ok(framed && event_is(&file, 0, before, after, version, sizeof version - 1),
           "record 1: wall_time (field 1, double, now), step 0 (field 2), file_version \"brain.Event:2\" (field 3)");
    static const unsigned char start[] = {0x10, 0x07, 0x3a, 0x02, 0x08, 0x01};
    tap_ok(framed && event_is(&file, 1, before, after, start, sizeof start),
           "record 2: the start at step 7 is a session_log (field 7) with status START (1)");
    static const unsigned char summary[] = {
        0x10, 0xac, 0x02,                                     /* step 300 */
        0x2a, 0x19,                                           /* summary, 25 bytes */
        0x0a, 0x0b,                                           /* value, 11 bytes */
        0x0a, 0x04, 'l', 'o', 's', 's', 0x15, 0x00, 0x00, 0x80, 0x3e, /* tag, 0.25f */
        0x0a, 0x0a,                                           /* value, 10 bytes */
        0x0a, 0x03, 'a', 'c', 'c', 0x15, 0x00, 0x00, 0x00, 0xc0};   /* tag, -2.0f */
    tap_ok(framed && event_is(&file, 2, before, after, summary, sizeof summary),
           "record 3: step 300 as a varint, a summary (field 5) of two values, each tag (field 1) and simple_value (field 2, little-endian float)");
    fr_free(live.bytes);
    fr_free(file.bytes);

    /* Two files opened in the same second get different names. */
    fr_tensorboard *first = NULL, *second = NULL;
    rc = fr_tb_open(dir, &first, &err);
    if (rc == FR_OK)
        rc = fr_tb_open(dir, &second, &err);
    bool distinct = rc == FR_OK && strcmp(fr_tb_path(first), fr_tb_path(second)) != 0 &&
                    strcmp(fr_tb_path(first), path) != 0 && strcmp(fr_tb_path(second), path) != 0;
    tap_ok(distinct, "a new file never reuses an existing name (%s, %s)",
           first ? fr_tb_path(first) : err.msg, second ? fr_tb_path(second) : "");
    if (first)
        remove(fr_tb_path(first));
    if (second)
        remove(fr_tb_path(second));
    fr_tb_close(first, NULL);
    fr_tb_close(second, NULL);
    remove(path);
    rmdir(dir);
}

static void check_failures(void) {
    fr_error err = {0};
    fr_tensorboard *tb = NULL;
    const char *file = in_test_dir("plain");
    FILE *stream = fopen(file, "w");
    if (stream)
        fclose(stream);
    int rc = fr_tb_open(file, &tb, &err);
    tap_ok(rc == FR_EIO && !tb && strstr(err.msg, file) && strstr(err.msg, "not a directory"),
           "a directory that is a file is refused, naming it (%s)", err.msg);
    remove(file);

    const char *deep = in_test_dir("missing/runs");
    rc = fr_tb_open(deep, &tb, &err);
    tap_ok(rc == FR_EIO && !tb && strstr(err.msg, deep) && strstr(err.msg, "cannot create the directory"),
           "only the last level is made: a missing parent is an error naming the directory (%s)", err.msg);

    tap_ok(fr_tb_close(NULL, &err) == FR_OK, "fr_tb_close(NULL) does nothing");

    /* A write refused (here by a file-size limit) is one failure naming the
     * file; it sticks, and nothing is written after it. */
    const char *dir = in_test_dir("limited");
    rc = fr_tb_open(dir, &tb, &err);
    if (rc != FR_OK) {
        tap_ok(false, "fr_tb_open %s: %s", dir, err.msg);
        tap_skip("no event file");
        return;
    }
    char path[300];
    snprintf(path, sizeof path, "%s", fr_tb_path(tb));
    struct rlimit saved, limited;
    getrlimit(RLIMIT_FSIZE, &saved);
    limited = saved;
    limited.rlim_cur = 300;
    void (*saved_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &limited);
    int writes = 0;
    rc = FR_OK;
    while (rc == FR_OK && writes < 100) {
        fr_tb_scalar(tb, "train/loss", writes);
        rc = fr_tb_write(tb, ++writes, &err);
    }
    fr_error again = {0}, closed = {0};
    fr_tb_scalar(tb, "train/loss", 0);
    int again_rc = fr_tb_write(tb, 1000, &again);
    int close_rc = fr_tb_close(tb, &closed);
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, saved_handler);
    tap_ok(rc == FR_EIO && writes > 1 && strstr(err.msg, path) && strstr(err.msg, "cannot write"),
           "a refused write fails with FR_EIO and a message naming the file (after %d writes: %s)",
           writes, err.msg);
    tap_ok(again_rc == FR_EIO && close_rc == FR_EIO && strcmp(again.msg, err.msg) == 0 &&
               strcmp(closed.msg, err.msg) == 0,
           "the failure sticks: later writes and close return the same message");
    remove(path);
    rmdir(dir);
}

int main(void) {
    tap_plan(19);
    check_crc32c();
    check_varints();
    if (!make_test_dir("tensorboard"))
        return 1;
    check_file();
    check_failures();
    remove_test_dir();
    return tap_done();
}
