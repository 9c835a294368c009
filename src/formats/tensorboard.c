/*
 * tensorboard.c - TensorBoard event files, written without TensorFlow.
 *
 * An event file is a TFRecord file: records of
 *     uint64 length (LE), uint32 masked CRC-32C of those 8 bytes,
 *     `length` bytes of data, uint32 masked CRC-32C of the data,
 * each holding one serialized tensorflow.Event protobuf (event.proto,
 * summary.proto).  frost writes three kinds of Event, encoded here by hand:
 *     the first record   wall_time (1, double), step (2, int64),
 *                        file_version (3, string) "brain.Event:2"
 *     a log point        wall_time, step, summary (5): Summary { repeated
 *                        value (1): Value { tag (1, string),
 *                        simple_value (2, float) } }
 *     a run's start      wall_time, step, session_log (7): SessionLog
 *                        { status (1, enum) START = 1 }
 * Unlike every other file frost writes, an event file is a log that a live
 * TensorBoard reads while it grows: it is appended to, a record at a time,
 * and flushed after each, never written atomically.  A run that starts again
 * (a resumed one) starts a new file in the same directory, as TensorFlow does,
 * and its start event tells TensorBoard to drop what the stopped run logged
 * after the checkpoint (TensorBoard's event_accumulator: the first START of
 * a run is its beginning, each later one a restart that purges every point
 * at its step or later).
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* --------------------------------------------------------------- CRC-32C */

/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), four bits at a
 * time: entry i is the CRC register after shifting the nibble i through it,
 * and two look-ups per byte are plenty for a few hundred bytes per log point.
 */
static const uint32_t crc32c_nibble[16] = {
    0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
    0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
    0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
};

uint32_t fr_crc32c(uint32_t crc, const void *data, size_t len) {
    const unsigned char *bytes = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= bytes[i];
        crc = (crc >> 4) ^ crc32c_nibble[crc & 15];
        crc = (crc >> 4) ^ crc32c_nibble[crc & 15];
    }
    return ~crc;
}

/* TFRecord stores CRCs masked (record_writer.cc): a CRC of data that itself
 * holds CRCs would otherwise be weak. */
uint32_t fr_crc32c_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* ------------------------------------------------------------- protobuf */

size_t fr_varint_encode(uint64_t value, unsigned char *out) {
    size_t n = 0;
    while (value >= 0x80) {
        out[n++] = (unsigned char)(value | 0x80);
        value >>= 7;
    }
    out[n++] = (unsigned char)value;
    return n;
}

/* A growing byte string; `failed` sticks once an allocation fails. */
typedef struct byte_buffer {
    unsigned char *data;
    size_t length, capacity;
    bool failed;
} byte_buffer;

static void put_bytes(byte_buffer *b, const void *bytes, size_t count) {
    if (b->failed)
        return;
    if (b->length + count > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 256;
        while (capacity < b->length + count)
            capacity *= 2;
        unsigned char *grown = realloc(b->data, capacity);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->length, bytes, count);
    b->length += count;
}

static void put_varint(byte_buffer *b, uint64_t value) {
    unsigned char bytes[10];
    put_bytes(b, bytes, fr_varint_encode(value, bytes));
}

/* Fixed-width values are little-endian whatever the machine. */
static void put_le(byte_buffer *b, uint64_t value, int count) {
    unsigned char bytes[8];
    for (int i = 0; i < count; i++)
        bytes[i] = (unsigned char)(value >> (8 * i));
    put_bytes(b, bytes, (size_t)count);
}

enum wire_type { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static void put_key(byte_buffer *b, int field, enum wire_type type) {
    put_varint(b, (uint64_t)field << 3 | type);
}

static void put_double_field(byte_buffer *b, int field, double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_key(b, field, WIRE_FIXED64);
    put_le(b, bits, 8);
}

static void put_float_field(byte_buffer *b, int field, float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_key(b, field, WIRE_FIXED32);
    put_le(b, bits, 4);
}

static void put_bytes_field(byte_buffer *b, int field, const void *bytes, size_t count) {
    put_key(b, field, WIRE_BYTES);
    put_varint(b, count);
    put_bytes(b, bytes, count);
}

/* Field numbers of event.proto and summary.proto. */
enum {
    EVENT_WALL_TIME = 1,
    EVENT_STEP = 2,
    EVENT_FILE_VERSION = 3,
    EVENT_SUMMARY = 5,
    EVENT_SESSION_LOG = 7,
    SUMMARY_VALUE = 1,
    VALUE_TAG = 1,
    VALUE_SIMPLE_VALUE = 2,
    SESSION_LOG_STATUS = 1,
    SESSION_LOG_START = 1
};

/* ----------------------------------------------------------- the writer */

struct fr_tensorboard {
    char *path;
    FILE *stream;
    byte_buffer summary; /* Summary.value entries gathered for the next event */
    byte_buffer event;   /* the event being framed, reused */
    fr_error failure;    /* the first failure; nothing is written after it */
};

static double wall_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Frame the event in tb->event as one TFRecord and flush it to the file. */
static int write_record(fr_tensorboard *tb, fr_error *err) {
    if (tb->failure.status != FR_OK)
        goto failed;
    if (tb->event.failed || tb->summary.failed) {
        fr_fail(&tb->failure, FR_ENOMEM, "%s: out of memory for an event", tb->path);
        goto failed;
    }
    unsigned char header[12], footer[4];
    uint64_t length = tb->event.length;
    for (int i = 0; i < 8; i++)
        header[i] = (unsigned char)(length >> (8 * i));
    uint32_t length_crc = fr_crc32c_mask(fr_crc32c(0, header, 8));
    uint32_t data_crc = fr_crc32c_mask(fr_crc32c(0, tb->event.data, tb->event.length));
    for (int i = 0; i < 4; i++) {
        header[8 + i] = (unsigned char)(length_crc >> (8 * i));
        footer[i] = (unsigned char)(data_crc >> (8 * i));
    }
    errno = 0;
    if (fwrite(header, 1, sizeof header, tb->stream) != sizeof header ||
        fwrite(tb->event.data, 1, tb->event.length, tb->stream) != tb->event.length ||
        fwrite(footer, 1, sizeof footer, tb->stream) != sizeof footer ||
        fflush(tb->stream) != 0) {
        fr_fail(&tb->failure, FR_EIO, "%s: cannot write: %s", tb->path,
                errno ? strerror(errno) : "write error");
        goto failed;
    }
    return FR_OK;
failed:
    if (err)
        *err = tb->failure;
    return tb->failure.status;
}

/* Start tb->event as an Event at `step`, now. */
static void begin_event(fr_tensorboard *tb, long step) {
    tb->event.length = 0;
    put_double_field(&tb->event, EVENT_WALL_TIME, wall_time_now());
    put_key(&tb->event, EVENT_STEP, WIRE_VARINT);
    put_varint(&tb->event, (uint64_t)(int64_t)step);
}

static void release(fr_tensorboard *tb) {
    free(tb->path);
    free(tb->summary.data);
    free(tb->event.data);
    free(tb);
}

/* DIR itself may be made, not its parents (as mkdir does). */
static int make_directory(const char *dir, fr_error *err) {
    struct stat st;
    if (mkdir(dir, 0777) == 0)
        return FR_OK;
    if (errno != EEXIST)
        return fr_fail(err, FR_EIO, "%s: cannot create the directory: %s", dir, strerror(errno));
    if (stat(dir, &st) != 0)
        return fr_fail(err, FR_EIO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fr_fail(err, FR_EIO, "%s: exists and is not a directory", dir);
    return FR_OK;
}

/*
 * DIR/events.out.tfevents.<unix time>.<hostname>, TensorFlow's name (the
 * time as %010lld): TensorBoard takes every file whose name holds "tfevents"
 * and reads them in the order of their names.  A file of that name already
 * there (two runs started in the same second) is never overwritten: the new
 * one gets .1, .2, ... after it, which sorts after it.
 */
static int create_event_file(fr_tensorboard *tb, const char *dir, fr_error *err) {
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        snprintf(host, sizeof host, "localhost");
    for (char *c = host; *c; c++)
        if (*c == '/')
            *c = '_';
    long long now = (long long)time(NULL);
    size_t size = strlen(dir) + strlen(host) + 64;
    if (!(tb->path = malloc(size)))
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", dir);
    for (int attempt = 0; attempt < 100; attempt++) {
        int used = snprintf(tb->path, size, "%s/events.out.tfevents.%010lld.%s", dir, now, host);
        if (attempt)
            snprintf(tb->path + used, size - (size_t)used, ".%d", attempt);
        tb->stream = fopen(tb->path, "wbx"); /* C11: fails if it exists */
        if (tb->stream)
            return FR_OK;
        if (errno != EEXIST)
            return fr_fail(err, FR_EIO, "%s: cannot create: %s", tb->path, strerror(errno));
    }
    return fr_fail(err, FR_EIO, "%s: cannot create an event file: 100 of the same name exist",
                   dir);
}

int fr_tb_open(const char *dir, fr_tensorboard **out, fr_error *err) {
    *out = NULL;
    if (!dir || !*dir)
        return fr_fail(err, FR_EINVAL, "event file directory: empty name");
    fr_tensorboard *tb = calloc(1, sizeof *tb);
    if (!tb)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", dir);
    int rc = make_directory(dir, err);
    if (rc == FR_OK)
        rc = create_event_file(tb, dir, err);
    if (rc == FR_OK) {
        static const char version[] = "brain.Event:2";
        begin_event(tb, 0);
        put_bytes_field(&tb->event, EVENT_FILE_VERSION, version, strlen(version));
        rc = write_record(tb, err);
        if (rc != FR_OK) {
            fclose(tb->stream);
            remove(tb->path); /* not a TensorBoard file without its first record */
        }
    }
    if (rc != FR_OK) {
        release(tb);
        return rc;
    }
    *out = tb;
    return FR_OK;
}

const char *fr_tb_path(const fr_tensorboard *tb) { return tb ? tb->path : NULL; }

void fr_tb_scalar(fr_tensorboard *tb, const char *tag, double value) {
    if (!tb || tb->failure.status != FR_OK)
        return;
    if (!tag || !*tag) {
        fr_fail(&tb->failure, FR_EINVAL, "%s: a scalar without a tag", tb->path);
        return;
    }
    /* The Value's length comes first: tag key, length and bytes, then the
     * float's key and 4 bytes. */
    size_t tag_length = strlen(tag);
    unsigned char scratch[10];
    size_t value_length = 1 + fr_varint_encode(tag_length, scratch) + tag_length + 1 + 4;
    put_key(&tb->summary, SUMMARY_VALUE, WIRE_BYTES);
    put_varint(&tb->summary, value_length);
    put_bytes_field(&tb->summary, VALUE_TAG, tag, tag_length);
    put_float_field(&tb->summary, VALUE_SIMPLE_VALUE, (float)value);
}

int fr_tb_write(fr_tensorboard *tb, long step, fr_error *err) {
    if (!tb)
        return FR_OK;
    if (tb->failure.status == FR_OK && tb->summary.length == 0 && !tb->summary.failed)
        return FR_OK;
    begin_event(tb, step);
    put_bytes_field(&tb->event, EVENT_SUMMARY, tb->summary.data, tb->summary.length);
    int rc = write_record(tb, err);
    tb->summary.length = 0;
    return rc;
}

int fr_tb_start(fr_tensorboard *tb, long step, fr_error *err) {
    if (!tb)
        return FR_OK;
    begin_event(tb, step);
    unsigned char session_log[] = {SESSION_LOG_STATUS << 3 | WIRE_VARINT, SESSION_LOG_START};
    put_bytes_field(&tb->event, EVENT_SESSION_LOG, session_log, sizeof session_log);
    return write_record(tb, err);
}

int fr_tb_close(fr_tensorboard *tb, fr_error *err) {
    if (!tb)
        return FR_OK;
    if (fclose(tb->stream) != 0 && tb->failure.status == FR_OK)
        fr_fail(&tb->failure, FR_EIO, "%s: cannot write: %s", tb->path, strerror(errno));
    int rc = tb->failure.status;
    if (rc != FR_OK && err)
        *err = tb->failure;
    release(tb);
    return rc;
}
