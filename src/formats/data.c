/*
 * data.c - datasets: IDX image/label files (MNIST, Fashion-MNIST) and NumPy
 * .npy arrays (npy.c parses them), raw or gzip'd, turned into typed tensors
 * (DESIGN.md, "The sample contract"): inputs of n samples of one shape,
 * float32 images or int32 token ids, and int32 targets, one class id per
 * sample or one per position (language modelling: the tokens shifted by
 * one); the class filter behind `--classes` and the per-channel
 * normalisation behind `--normalize`.  Byte pixels become p / 255 in [0, 1]
 * whichever file they come from.
 *
 * Everything read from disk is treated as hostile: every size in a header is
 * checked against the bytes actually present before anything is allocated
 * from it, and every failure is a one-line message naming the file.
 *
 * Files are read whole by fileio.c's reader; fr_read_file_gunzip adds the
 * gunzipping.  Its buffer comes from fr_alloc and is released with fr_free.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "command.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* An IDX file is at most this big once decompressed (60000 28x28 images are 47 MB). */
#define IDX_READ_LIMIT ((size_t)1 << 30)
#define IDX_MAX_SIDE 4096u
#define IDX_MAX_COUNT 100000000u

/* A .npy file may be far bigger: float32 images of a larger dataset. */
#define NPY_READ_LIMIT ((size_t)1 << 36)

#define IDX_IMAGES_MAGIC 0x00000803u /* u8 data, 3 dimensions */
#define IDX_LABELS_MAGIC 0x00000801u /* u8 data, 1 dimension */
#define IDX_IMAGES_HEADER_BYTES 16u
#define IDX_LABELS_HEADER_BYTES 8u

/* ------------------------------------------------------------ gzip */

static bool starts_with_gzip_magic(const unsigned char *bytes, size_t size) {
    return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

/*
 * The gzip trailer ends with the uncompressed size mod 2^32: a good first
 * guess for the output buffer.  It is only a hint (it can lie, and covers only
 * the last member), so it is capped by deflate's best possible ratio (~1032:1)
 * and by the limit.
 */
static size_t gzip_size_hint(const unsigned char *compressed, size_t compressed_bytes,
                             size_t limit) {
    size_t hint = 0;
    if (compressed_bytes >= 18) {
        const unsigned char *trailer = compressed + compressed_bytes - 4;
        hint = (size_t)trailer[0] | (size_t)trailer[1] << 8 | (size_t)trailer[2] << 16 |
               (size_t)trailer[3] << 24;
    }
    size_t ratio_cap;
    if (!fr_mul_size(compressed_bytes, 1032, &ratio_cap))
        ratio_cap = SIZE_MAX;
    if (hint > ratio_cap)
        hint = ratio_cap;
    if (hint > limit)
        hint = limit;
    return hint < 4096 ? 4096 : hint;
}

/* Replace *buffer by one of new_capacity bytes holding its first `used` bytes. */
static bool grow_buffer(unsigned char **buffer, size_t used, size_t new_capacity) {
    unsigned char *bigger = fr_alloc(new_capacity);
    if (!bigger)
        return false;
    memcpy(bigger, *buffer, used);
    fr_free(*buffer);
    *buffer = bigger;
    return true;
}

/*
 * Inflate a whole gzip file held in memory.  The output buffer may hold one
 * byte more than `limit`: producing that byte is how an oversized stream is
 * recognised without a second pass.  Concatenated gzip members (what `cat a.gz
 * b.gz` makes) are decoded one after the other, as gzip(1) does.
 */
static int gunzip_buffer(const char *path, const unsigned char *compressed,
                         size_t compressed_bytes, size_t limit, unsigned char **out,
                         size_t *size, fr_error *err) {
    if (limit > SIZE_MAX / 2)
        limit = SIZE_MAX / 2;
    size_t capacity = gzip_size_hint(compressed, compressed_bytes, limit);
    if (capacity > limit)
        capacity = limit;
    capacity += 1;
    unsigned char *output = fr_alloc(capacity);
    if (!output)
        return fr_fail(err, FR_ENOMEM, "%s: cannot allocate %zu bytes to decompress it", path,
                       capacity);

    z_stream stream;
    memset(&stream, 0, sizeof stream);
    /* 15 + 32: the largest window, and accept (only) gzip or zlib headers. */
    if (inflateInit2(&stream, 15 + 32) != Z_OK) {
        fr_free(output);
        return fr_fail(err, FR_ENOMEM, "%s: cannot start zlib", path);
    }

    size_t consumed = 0, produced = 0;
    int status = FR_OK;
    for (;;) {
        /* zlib counts in uInt, so huge buffers are handed over in pieces. */
        if (stream.avail_in == 0 && consumed < compressed_bytes) {
            size_t piece = compressed_bytes - consumed;
            stream.next_in = (unsigned char *)compressed + consumed;
            stream.avail_in = piece > UINT_MAX ? UINT_MAX : (uInt)piece;
        }
        if (produced == capacity) {
            size_t new_capacity = capacity > (limit + 1) / 2 ? limit + 1 : capacity * 2;
            if (!grow_buffer(&output, produced, new_capacity)) {
                status = fr_fail(err, FR_ENOMEM,
                                 "%s: cannot allocate %zu bytes to decompress it", path,
                                 new_capacity);
                break;
            }
            capacity = new_capacity;
        }
        size_t room = capacity - produced;
        stream.next_out = output + produced;
        stream.avail_out = room > UINT_MAX ? UINT_MAX : (uInt)room;
        uInt offered_in = stream.avail_in, offered_out = stream.avail_out;

        int ret = inflate(&stream, Z_NO_FLUSH);
        consumed += offered_in - stream.avail_in;
        produced += offered_out - stream.avail_out;

        if (produced > limit) {
            status = fr_fail(err, FR_EFORMAT,
                             "%s: decompresses to more than the limit of %zu bytes", path,
                             limit);
            break;
        }
        bool input_exhausted = stream.avail_in == 0 && consumed == compressed_bytes;
        if (ret == Z_STREAM_END) {
            if (consumed == compressed_bytes)
                break;
            size_t left = compressed_bytes - consumed;
            if (starts_with_gzip_magic(compressed + consumed, left)) {
                inflateReset(&stream);
                continue;
            }
            status = fr_fail(err, FR_EFORMAT,
                             "%s: corrupt gzip data: %zu stray bytes after the compressed stream",
                             path, left);
            break;
        }
        if (ret == Z_OK) {
            /* inflate stopped with room left and nothing more to read: it needed more input. */
            if (input_exhausted && stream.avail_out > 0) {
                status = fr_fail(err, FR_EFORMAT, "%s: truncated gzip data", path);
                break;
            }
            continue;
        }
        if (ret == Z_BUF_ERROR && input_exhausted) {
            status = fr_fail(err, FR_EFORMAT, "%s: truncated gzip data", path);
        } else if (ret == Z_MEM_ERROR) {
            status = fr_fail(err, FR_ENOMEM, "%s: out of memory while decompressing", path);
        } else if (ret == Z_NEED_DICT) {
            status = fr_fail(err, FR_EFORMAT,
                             "%s: corrupt gzip data: stream needs a preset dictionary", path);
        } else {
            status = fr_fail(err, FR_EFORMAT, "%s: corrupt gzip data: %s", path,
                             stream.msg ? stream.msg : zError(ret));
        }
        break;
    }
    inflateEnd(&stream);
    if (status != FR_OK) {
        fr_free(output);
        return status;
    }
    *out = output;
    *size = produced;
    return FR_OK;
}

int fr_read_file_gunzip(const char *path, size_t limit, unsigned char **out, size_t *size,
                        fr_error *err) {
    unsigned char *bytes = NULL;
    size_t byte_count = 0;
    if (limit > SIZE_MAX / 2)
        limit = SIZE_MAX / 2;
    /* The limit bounds the content; gzip's framing may add a little on top of it. */
    size_t gzip_slack = limit / 64 + 65536;
    int status = fr_read_file(path, limit + gzip_slack, 0, &bytes, &byte_count, err);
    if (status != FR_OK)
        return status;
    if (!starts_with_gzip_magic(bytes, byte_count)) {
        if (byte_count > limit) {
            fr_free(bytes);
            return fr_fail(err, FR_EFORMAT, "%s: file is %zu bytes, more than the limit of %zu",
                           path, byte_count, limit);
        }
        *out = bytes;
        *size = byte_count;
        return FR_OK;
    }
    status = gunzip_buffer(path, bytes, byte_count, limit, out, size, err);
    fr_free(bytes);
    return status;
}

/* --------------------------------------------------------------- IDX files */

static uint32_t read_be32(const unsigned char *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           (uint32_t)bytes[3];
}

/* What a wrong magic number most likely means, for the error message. */
static const char *describe_idx_magic(uint32_t magic) {
    switch (magic) {
    case IDX_IMAGES_MAGIC:
        return "an IDX image file";
    case IDX_LABELS_MAGIC:
        return "an IDX label file";
    default:
        if ((magic >> 16) == 0)
            return "an IDX file of another type or rank";
        return "not an IDX file";
    }
}

/*
 * The byte counts after the header must match the header exactly: a short
 * file is a broken download, a long one is most likely the wrong file.
 */
static int check_payload_bytes(const char *path, size_t header_bytes, size_t file_bytes,
                               uint64_t expected_bytes, const char *what, fr_error *err) {
    uint64_t found = (uint64_t)(file_bytes - header_bytes);
    if (found < expected_bytes)
        return fr_fail(err, FR_EFORMAT,
                       "%s: truncated: expected %llu bytes of %s, found %llu", path,
                       (unsigned long long)expected_bytes, what, (unsigned long long)found);
    if (found > expected_bytes)
        return fr_fail(err, FR_EFORMAT,
                       "%s: %llu trailing bytes after the %llu bytes of %s the header announces",
                       path, (unsigned long long)(found - expected_bytes),
                       (unsigned long long)expected_bytes, what);
    return FR_OK;
}

/* Header checks shared by both kinds: non-empty, long enough, the right magic. */
static int check_idx_header(const char *path, const unsigned char *bytes, size_t size,
                            size_t header_bytes, uint32_t expected_magic,
                            const char *expected_what, fr_error *err) {
    if (size == 0)
        return fr_fail(err, FR_EFORMAT, "%s: empty file, expected %s", path, expected_what);
    if (size < 4)
        return fr_fail(err, FR_EFORMAT, "%s: %zu bytes is too short for %s", path, size,
                       expected_what);
    uint32_t magic = read_be32(bytes);
    if (magic != expected_magic)
        return fr_fail(err, FR_EFORMAT,
                       "%s: magic number 0x%08x (%s), expected 0x%08x (%s)", path,
                       (unsigned)magic, describe_idx_magic(magic), (unsigned)expected_magic,
                       expected_what);
    if (size < header_bytes)
        return fr_fail(err, FR_EFORMAT, "%s: truncated header: %zu of %zu bytes", path, size,
                       header_bytes);
    return FR_OK;
}

/* The image file's geometry, validated against its actual length. */
typedef struct idx_images {
    uint32_t count, rows, cols;
    const unsigned char *pixels;
} idx_images;

static int parse_idx_images(const char *path, const unsigned char *bytes, size_t size,
                            idx_images *images, fr_error *err) {
    int status = check_idx_header(path, bytes, size, IDX_IMAGES_HEADER_BYTES, IDX_IMAGES_MAGIC,
                                  "an IDX image file", err);
    if (status != FR_OK)
        return status;
    uint32_t count = read_be32(bytes + 4), rows = read_be32(bytes + 8),
             cols = read_be32(bytes + 12);
    if (count == 0 || rows == 0 || cols == 0)
        return fr_fail(err, FR_EFORMAT,
                       "%s: header has a zero dimension: %u images of %u x %u pixels", path,
                       (unsigned)count, (unsigned)rows, (unsigned)cols);
    if (rows > IDX_MAX_SIDE || cols > IDX_MAX_SIDE)
        return fr_fail(err, FR_EFORMAT, "%s: images of %u x %u pixels, more than %u per side",
                       path, (unsigned)rows, (unsigned)cols, IDX_MAX_SIDE);
    if (count > IDX_MAX_COUNT)
        return fr_fail(err, FR_EFORMAT, "%s: header claims %u images, more than %u", path,
                       (unsigned)count, IDX_MAX_COUNT);
    /* At most 1e8 * 4096 * 4096: fits 64 bits with room to spare. */
    uint64_t pixel_bytes = (uint64_t)count * rows * cols;
    status = check_payload_bytes(path, IDX_IMAGES_HEADER_BYTES, size, pixel_bytes,
                                 "pixel data", err);
    if (status != FR_OK)
        return status;
    images->count = count;
    images->rows = rows;
    images->cols = cols;
    images->pixels = bytes + IDX_IMAGES_HEADER_BYTES;
    return FR_OK;
}

static int parse_idx_labels(const char *path, const unsigned char *bytes, size_t size,
                            uint32_t *count, fr_error *err) {
    int status = check_idx_header(path, bytes, size, IDX_LABELS_HEADER_BYTES, IDX_LABELS_MAGIC,
                                  "an IDX label file", err);
    if (status != FR_OK)
        return status;
    uint32_t label_count = read_be32(bytes + 4);
    if (label_count == 0)
        return fr_fail(err, FR_EFORMAT, "%s: header has a zero dimension: 0 labels", path);
    if (label_count > IDX_MAX_COUNT)
        return fr_fail(err, FR_EFORMAT, "%s: header claims %u labels, more than %u", path,
                       (unsigned)label_count, IDX_MAX_COUNT);
    status = check_payload_bytes(path, IDX_LABELS_HEADER_BYTES, size, label_count, "labels",
                                 err);
    if (status != FR_OK)
        return status;
    *count = label_count;
    return FR_OK;
}

/* An empty dataset of n samples shaped c x h x w, arrays allocated (zeroed). */
static int dataset_alloc(int n, fr_shape shape, fr_dtype x_dtype, int target_numel,
                         const char *what, fr_dataset **out, fr_error *err) {
    size_t x_values, x_bytes, target_bytes;
    if (!fr_mul_size((size_t)n, fr_shape_numel(shape), &x_values) ||
        !fr_mul_size(x_values, fr_dtype_size(x_dtype), &x_bytes) ||
        !fr_mul_size((size_t)n * sizeof(int32_t), (size_t)target_numel, &target_bytes)) {
        char text[64];
        fr_shape_format(shape, text, sizeof text);
        return fr_fail(err, FR_ENOMEM, "%s: %d samples of %s values overflow memory", what, n,
                       text);
    }
    fr_dataset *data = fr_alloc(sizeof *data);
    if (!data)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", what);
    data->x = fr_alloc(x_bytes);
    data->labels = fr_alloc(target_bytes);
    if (!data->x || !data->labels) {
        fr_free(data->x);
        fr_free(data->labels);
        fr_free(data);
        return fr_fail(err, FR_ENOMEM, "%s: cannot allocate %zu bytes for %d samples", what,
                       x_bytes + target_bytes, n);
    }
    data->n = n;
    data->shape = shape;
    data->x_dtype = x_dtype;
    data->target_numel = target_numel;
    *out = data;
    return FR_OK;
}

/* A sample's bytes of input, and of targets. */
static size_t sample_bytes(const fr_dataset *data) {
    return fr_shape_numel(data->shape) * fr_dtype_size(data->x_dtype);
}
static size_t target_bytes(const fr_dataset *data) {
    return (size_t)data->target_numel * sizeof(int32_t);
}

/* What a byte pixel p becomes, for every p: one table lookup per pixel
 * instead of a division, the same values as p / 255.0f. */
static void fill_pixel_values(float pixel_value[256]) {
    for (int p = 0; p < 256; p++)
        pixel_value[p] = (float)p / 255.0f;
}

int fr_dataset_load_idx(const char *images_path, const char *labels_path, fr_dataset **out,
                        fr_error *err) {
    if (!images_path || !labels_path || !out)
        return fr_fail(err, FR_EINVAL, "fr_dataset_load_idx: NULL argument");
    *out = NULL;

    /* Labels first: they are small, so a mismatched pair fails before the big read. */
    unsigned char *label_bytes = NULL, *image_bytes = NULL;
    size_t label_size = 0, image_size = 0;
    uint32_t label_count = 0;
    idx_images images = {0, 0, 0, NULL};
    int status = fr_read_file_gunzip(labels_path, IDX_READ_LIMIT, &label_bytes, &label_size, err);
    if (status == FR_OK)
        status = parse_idx_labels(labels_path, label_bytes, label_size, &label_count, err);
    if (status == FR_OK)
        status = fr_read_file_gunzip(images_path, IDX_READ_LIMIT, &image_bytes, &image_size, err);
    if (status == FR_OK)
        status = parse_idx_images(images_path, image_bytes, image_size, &images, err);
    if (status == FR_OK && images.count != label_count)
        status = fr_fail(err, FR_EFORMAT, "%s has %u images but %s has %u labels", images_path,
                         (unsigned)images.count, labels_path, (unsigned)label_count);

    fr_dataset *data = NULL;
    if (status == FR_OK) {
        fr_shape shape = fr_shape_chw(1, (int)images.rows, (int)images.cols);
        status = dataset_alloc((int)images.count, shape, FR_F32, 1, images_path, &data, err);
    }
    if (status == FR_OK) {
        float pixel_value[256];
        fill_pixel_values(pixel_value);
        size_t pixel_count = (size_t)images.count * images.rows * images.cols;
        float *x = data->x;
        for (size_t i = 0; i < pixel_count; i++)
            x[i] = pixel_value[images.pixels[i]];
        for (uint32_t i = 0; i < label_count; i++)
            data->labels[i] = label_bytes[IDX_LABELS_HEADER_BYTES + i];
        snprintf(data->images_path, sizeof data->images_path, "%s", images_path);
        snprintf(data->labels_path, sizeof data->labels_path, "%s", labels_path);
        *out = data;
    }
    fr_free(label_bytes);
    fr_free(image_bytes);
    return status;
}

/* ------------------------------------------------------------ NumPy files */

/* Labels: a 1-D array of integers, as many as fit an int. */
static int check_npy_labels(const char *path, const fr_npy *labels, fr_error *err) {
    char shape[160];
    fr_npy_shape_string(labels, shape, sizeof shape);
    if (labels->kind == 'f')
        return fr_fail(err, FR_EFORMAT,
                       "%s: labels of dtype '%s'; labels must be integers (y.astype('int64'))",
                       path, labels->descr);
    if (labels->ndim != 1)
        return fr_fail(err, FR_EFORMAT, "%s: labels of shape %s; labels must be 1-D, shape (N,)",
                       path, shape);
    if (labels->count == 0)
        return fr_fail(err, FR_EFORMAT, "%s: shape %s holds no labels", path, shape);
    if (labels->count > INT_MAX)
        return fr_fail(err, FR_EFORMAT, "%s: %zu labels, more than %d", path, labels->count,
                       INT_MAX);
    return FR_OK;
}

/* Element i of an integer array; uint64 values beyond int64 saturate (they
 * are out of any label range anyway: the message reads them again). */
static long long npy_integer_at(const fr_npy *array, size_t i) {
    const unsigned char *at = array->data + i * (size_t)array->item_bytes;
    bool is_signed = array->kind == 'i';
    switch (array->item_bytes) {
    case 1:
        return is_signed ? (long long)(int8_t)at[0] : (long long)at[0];
    case 2: {
        int16_t s;
        uint16_t u;
        memcpy(&s, at, 2);
        memcpy(&u, at, 2);
        return is_signed ? (long long)s : (long long)u;
    }
    case 4: {
        int32_t s;
        uint32_t u;
        memcpy(&s, at, 4);
        memcpy(&u, at, 4);
        return is_signed ? (long long)s : (long long)u;
    }
    default: {
        int64_t s;
        uint64_t u;
        memcpy(&s, at, 8);
        memcpy(&u, at, 8);
        return is_signed ? (long long)s : u > INT64_MAX ? (long long)INT64_MAX : (long long)u;
    }
    }
}

/* Class ids: any integer in [0, 2^31); the model's output count bounds them
 * later (the CLI, with the labels file named). */
static int decode_npy_labels(const char *path, const fr_npy *labels, int32_t *out,
                             fr_error *err) {
    for (size_t i = 0; i < labels->count; i++) {
        long long label = npy_integer_at(labels, i);
        if (label >= 0 && label <= INT32_MAX) {
            out[i] = (int32_t)label;
            continue;
        }
        char value[32];
        if (labels->kind == 'u' && labels->item_bytes == 8) {
            uint64_t raw;
            memcpy(&raw, labels->data + i * sizeof raw, sizeof raw);
            snprintf(value, sizeof value, "%llu", (unsigned long long)raw);
        } else {
            snprintf(value, sizeof value, "%lld", label);
        }
        return fr_fail(err, FR_EFORMAT, "%s: label %s (sample %zu) is out of range 0-%d", path,
                       value, i, INT32_MAX);
    }
    return FR_OK;
}

/*
 * Images: uint8, float32 or float64, of 2, 3 or 4 dimensions; *shape is one
 * sample's C x H x W once the layout is applied.
 */
static int check_npy_images(const char *path, const fr_npy *images, fr_layout layout,
                            fr_shape *shape, fr_error *err) {
    char text[160];
    fr_npy_shape_string(images, text, sizeof text);
    bool bytes = images->kind == 'u' && images->item_bytes == 1;
    if (!bytes && images->kind != 'f')
        return fr_fail(err, FR_EFORMAT,
                       "%s: images of dtype '%s'; frost reads uint8 (scaled to [0, 1]), float32 "
                       "and float64",
                       path, images->descr);
    if (images->ndim < 2 || images->ndim > 4)
        return fr_fail(err, FR_EFORMAT,
                       "%s: images of shape %s; expected (N, C, H, W) or (N, H, W, C), "
                       "(N, H, W) or (N, features)",
                       path, text);
    for (int d = 0; d < images->ndim; d++)
        if (images->shape[d] == 0)
            return fr_fail(err, FR_EFORMAT, "%s: images of shape %s have a zero dimension", path,
                           text);
    const uint64_t *dims = images->shape;
    uint64_t chw[3] = {1, 1, 1};
    if (images->ndim == 2)
        chw[0] = dims[1];
    else if (images->ndim == 3)
        chw[1] = dims[1], chw[2] = dims[2];
    else if (layout == FR_LAYOUT_NHWC)
        chw[0] = dims[3], chw[1] = dims[1], chw[2] = dims[2];
    else
        chw[0] = dims[1], chw[1] = dims[2], chw[2] = dims[3];
    /* The file's size bounds the product, so this cannot overflow. */
    uint64_t numel = chw[0] * chw[1] * chw[2];
    if (dims[0] > INT_MAX)
        return fr_fail(err, FR_EFORMAT, "%s: %llu images, more than %d", path,
                       (unsigned long long)dims[0], INT_MAX);
    if (numel > INT_MAX)
        return fr_fail(err, FR_EFORMAT, "%s: images of shape %s have more than %d values each",
                       path, text, INT_MAX);
    *shape = images->ndim == 2 ? fr_shape_vector((int)numel)
                               : fr_shape_chw((int)chw[0], (int)chw[1], (int)chw[2]);
    return FR_OK;
}

/* Every value as a float in the file's order: bytes as p / 255, floats as
 * they are, refusing what is not finite in float32. */
static int convert_npy_values(const char *path, const fr_npy *images, size_t sample_numel,
                              float *x, fr_error *err) {
    size_t count = images->count;
    if (images->item_bytes == 1) {
        float pixel_value[256];
        fill_pixel_values(pixel_value);
        for (size_t i = 0; i < count; i++)
            x[i] = pixel_value[images->data[i]];
        return FR_OK;
    }
    size_t bad = count;
    double bad_value = 0;
    if (images->item_bytes == 4) {
        memcpy(x, images->data, count * sizeof(float));
        for (size_t i = 0; i < count && bad == count; i++)
            if (!isfinite(x[i]))
                bad = i, bad_value = x[i];
    } else {
        for (size_t i = 0; i < count; i++) {
            double value;
            memcpy(&value, images->data + i * sizeof value, sizeof value);
            /* Beyond FLT_MAX the conversion itself would be undefined. */
            if (!(fabs(value) <= FLT_MAX)) {
                bad = i, bad_value = value;
                break;
            }
            x[i] = (float)value;
        }
    }
    if (bad == count)
        return FR_OK;
    return fr_fail(err, FR_EFORMAT, "%s: sample %zu holds %g; images must be finite float32 values",
                   path, bad / sample_numel, bad_value);
}

/* N,H,W,C samples to C,H,W, one sample at a time through `scratch`. */
static void nhwc_to_nchw(float *x, int n, fr_shape shape, float *scratch) {
    int channels = shape.d[0];
    size_t plane = (size_t)shape.d[1] * shape.d[2], numel = plane * channels;
    for (int s = 0; s < n; s++) {
        float *sample = x + (size_t)s * numel;
        memcpy(scratch, sample, numel * sizeof(float));
        for (size_t pixel = 0; pixel < plane; pixel++)
            for (int c = 0; c < channels; c++)
                sample[(size_t)c * plane + pixel] = scratch[pixel * channels + c];
    }
}

/* ------------------------------------------------------------ token files */

/* Token ids: a 2-D array of int32, int64 or uint16, every id in [0, 2^31). */
static bool npy_is_tokens(const fr_npy *x) {
    return x->ndim == 2 && ((x->kind == 'i' && (x->item_bytes == 4 || x->item_bytes == 8)) ||
                            (x->kind == 'u' && x->item_bytes == 2));
}

static int check_npy_tokens(const char *path, const fr_npy *x, int min_columns, fr_error *err) {
    char text[160];
    fr_npy_shape_string(x, text, sizeof text);
    if (!npy_is_tokens(x))
        return fr_fail(err, FR_EFORMAT,
                       "%s: tokens of dtype '%s' and shape %s; token data is 2-D int32, int64 or "
                       "uint16, shape (N, T)",
                       path, x->descr, text);
    if (x->shape[0] == 0 || x->shape[0] > INT_MAX || x->shape[1] < (uint64_t)min_columns ||
        x->shape[1] > FR_ARG_LIMIT)
        return fr_fail(err, FR_EFORMAT, "%s: tokens of shape %s; expected (N, T) with N >= 1 and "
                       "%d <= T <= %d", path, text, min_columns, FR_ARG_LIMIT);
    for (size_t i = 0; i < x->count; i++) {
        long long id = npy_integer_at(x, i);
        if (id < 0 || id > INT32_MAX)
            return fr_fail(err, FR_EFORMAT, "%s: token %lld (row %zu, column %zu) is not a "
                           "token id (0 or more)", path, id, i / x->shape[1], i % x->shape[1]);
    }
    return FR_OK;
}

/*
 * Token data: with labels y, classification of (N, T) token rows; without,
 * language modelling of (N, T+1) rows, inputs the first T tokens and targets
 * the last T (each position predicts the next token).
 */
static int load_npy_tokens(const char *x_path, const unsigned char *bytes, size_t size,
                           const char *y_path, fr_dataset **out, fr_error *err) {
    fr_npy x, y;
    unsigned char *label_bytes = NULL;
    size_t label_size = 0;
    int status = fr_npy_parse(x_path, bytes, size, &x, err);
    if (status == FR_OK)
        status = check_npy_tokens(x_path, &x, y_path ? 1 : 2, err);
    if (status == FR_OK && y_path) {
        status = fr_read_file_gunzip(y_path, NPY_READ_LIMIT, &label_bytes, &label_size, err);
        if (status == FR_OK)
            status = fr_npy_parse(y_path, label_bytes, label_size, &y, err);
        if (status == FR_OK)
            status = check_npy_labels(y_path, &y, err);
        if (status == FR_OK && y.count != x.shape[0])
            status = fr_fail(err, FR_EFORMAT, "%s has %llu token rows but %s has %zu labels",
                             x_path, (unsigned long long)x.shape[0], y_path, y.count);
    }
    fr_dataset *data = NULL;
    int rows = (int)x.shape[0], width = (int)x.shape[1], seq = y_path ? width : width - 1;
    if (status == FR_OK)
        status = dataset_alloc(rows, fr_shape_vector(seq), FR_I32, y_path ? 1 : seq, x_path,
                               &data, err);
    if (status == FR_OK && y_path)
        status = decode_npy_labels(y_path, &y, data->labels, err);
    if (status == FR_OK) {
        int32_t *tokens = data->x;
        for (int r = 0; r < rows; r++)
            for (int t = 0; t < seq; t++) {
                size_t at = (size_t)r * width + t;
                tokens[(size_t)r * seq + t] = (int32_t)npy_integer_at(&x, at);
                if (!y_path)
                    data->labels[(size_t)r * seq + t] = (int32_t)npy_integer_at(&x, at + 1);
            }
        snprintf(data->images_path, sizeof data->images_path, "%s", x_path);
        snprintf(data->labels_path, sizeof data->labels_path, "%s", y_path ? y_path : x_path);
        *out = data;
    } else {
        fr_dataset_free(data);
    }
    fr_free(label_bytes);
    return status;
}

int fr_dataset_load_npy(const char *x_path, const char *y_path, fr_layout layout,
                        fr_dataset **out, fr_error *err) {
    if (x_path && !y_path && out) {
        /* Language modelling: token rows alone. */
        unsigned char *bytes = NULL;
        size_t size = 0;
        int status = fr_read_file_gunzip(x_path, NPY_READ_LIMIT, &bytes, &size, err);
        if (status == FR_OK)
            status = load_npy_tokens(x_path, bytes, size, NULL, out, err);
        fr_free(bytes);
        return status;
    }
    if (!x_path || !y_path || !out)
        return fr_fail(err, FR_EINVAL, "fr_dataset_load_npy: NULL argument");
    *out = NULL;
    if (layout != FR_LAYOUT_NCHW && layout != FR_LAYOUT_NHWC)
        return fr_fail(err, FR_EINVAL, "fr_dataset_load_npy: unknown layout %d", (int)layout);

    unsigned char *label_bytes = NULL, *image_bytes = NULL;
    size_t label_size = 0, image_size = 0;
    fr_npy labels, images;
    fr_shape shape = {0};
    /* Token ids (int32, int64, uint16 rows) are read as tokens with labels. */
    int status = fr_read_file_gunzip(x_path, NPY_READ_LIMIT, &image_bytes, &image_size, err);
    if (status == FR_OK && fr_npy_parse(x_path, image_bytes, image_size, &images, NULL) == FR_OK &&
        npy_is_tokens(&images)) {
        status = load_npy_tokens(x_path, image_bytes, image_size, y_path, out, err);
        fr_free(image_bytes);
        return status;
    }
    if (status == FR_OK)
        status = fr_read_file_gunzip(y_path, NPY_READ_LIMIT, &label_bytes, &label_size, err);
    if (status == FR_OK)
        status = fr_npy_parse(y_path, label_bytes, label_size, &labels, err);
    if (status == FR_OK)
        status = check_npy_labels(y_path, &labels, err);
    if (status == FR_OK)
        status = fr_npy_parse(x_path, image_bytes, image_size, &images, err);
    if (status == FR_OK)
        status = check_npy_images(x_path, &images, layout, &shape, err);
    if (status == FR_OK && images.shape[0] != labels.count)
        status = fr_fail(err, FR_EFORMAT, "%s has %llu images but %s has %zu labels", x_path,
                         (unsigned long long)images.shape[0], y_path, labels.count);

    fr_dataset *data = NULL;
    float *scratch = NULL;
    if (status == FR_OK)
        status = dataset_alloc((int)images.shape[0], shape, FR_F32, 1, x_path, &data, err);
    if (status == FR_OK)
        status = decode_npy_labels(y_path, &labels, data->labels, err);
    if (status == FR_OK)
        status = convert_npy_values(x_path, &images, fr_shape_numel(shape), data->x, err);
    if (status == FR_OK && images.ndim == 4 && layout == FR_LAYOUT_NHWC && shape.d[0] > 1) {
        scratch = fr_alloc(fr_shape_numel(shape) * sizeof(float));
        if (scratch)
            nhwc_to_nchw(data->x, data->n, shape, scratch);
        else
            status = fr_fail(err, FR_ENOMEM, "%s: out of memory for one sample", x_path);
    }
    if (status == FR_OK) {
        snprintf(data->images_path, sizeof data->images_path, "%s", x_path);
        snprintf(data->labels_path, sizeof data->labels_path, "%s", y_path);
        *out = data;
    } else {
        fr_dataset_free(data);
    }
    fr_free(scratch);
    fr_free(label_bytes);
    fr_free(image_bytes);
    return status;
}

/* ------------------------------------------------------- dataset directories */

/* Whether the .npy file at `path` holds token ids (its header says). */
static bool npy_holds_tokens(const char *path) {
    unsigned char *bytes = NULL;
    size_t size = 0;
    fr_npy x;
    bool tokens = fr_read_file_gunzip(path, NPY_READ_LIMIT, &bytes, &size, NULL) == FR_OK &&
                  fr_npy_parse(path, bytes, size, &x, NULL) == FR_OK && npy_is_tokens(&x);
    fr_free(bytes);
    return tokens;
}

static bool path_exists(const char *path) {
    struct stat info;
    return stat(path, &info) == 0;
}

/* DIR/NAME, or DIR/NAME.gz when only that exists, in `path`; *found says
 * whether either exists (if not, `path` holds DIR/NAME). */
static int locate_file(const char *dir, const char *name, char *path, size_t path_len,
                       bool *found, fr_error *err) {
    const char *separator = dir[strlen(dir) - 1] == '/' ? "" : "/";
    int written = snprintf(path, path_len, "%s%s%s", dir, separator, name);
    if (written < 0 || (size_t)written + 3 >= path_len)
        return fr_fail(err, FR_EINVAL, "%s: path too long", dir);
    *found = true;
    if (path_exists(path))
        return FR_OK;
    strcat(path, ".gz");
    if (path_exists(path))
        return FR_OK;
    path[written] = '\0';
    *found = false;
    return FR_OK;
}

/* DIR/NAME or DIR/NAME.gz, or an error naming both; `hint` ends the message. */
static int find_data_file(const char *dir, const char *name, const char *hint, char *path,
                          size_t path_len, fr_error *err) {
    bool found;
    int status = locate_file(dir, name, path, path_len, &found, err);
    if (status == FR_OK && !found)
        status = fr_fail(err, FR_EIO, "%s[.gz]: no such file%s", path, hint);
    return status;
}

int fr_dataset_load_dir(const char *dir, bool train, fr_dataset **out, fr_error *err) {
    return fr_dataset_load_dir_as(dir, train, FR_LAYOUT_NCHW, out, err);
}

int fr_dataset_load_dir_as(const char *dir, bool train, fr_layout layout, fr_dataset **out,
                           fr_error *err) {
    if (!dir || !out)
        return fr_fail(err, FR_EINVAL, "fr_dataset_load_dir: NULL argument");
    *out = NULL;
    if (dir[0] == '\0')
        return fr_fail(err, FR_EINVAL, "data directory: empty path");
    struct stat info;
    if (stat(dir, &info) != 0) {
        if (errno == ENOENT)
            return fr_fail(err, FR_EIO, "%s: no such directory", dir);
        return fr_fail(err, FR_EIO, "%s: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(info.st_mode))
        return fr_fail(err, FR_EIO, "%s: not a directory", dir);

    /* A directory with either NumPy image file holds NumPy data: a missing
     * split is then named as the .npy file it lacks. */
    const char *split = train ? "train" : "test";
    char images_name[64], labels_name[64], images_path[4096], labels_path[4096];
    bool train_npy = false, test_npy = false;
    int status = locate_file(dir, "train_x.npy", images_path, sizeof images_path, &train_npy, err);
    if (status == FR_OK)
        status = locate_file(dir, "test_x.npy", images_path, sizeof images_path, &test_npy, err);
    if (status != FR_OK)
        return status;
    if (train_npy || test_npy) {
        snprintf(images_name, sizeof images_name, "%s_x.npy", split);
        snprintf(labels_name, sizeof labels_name, "%s_y.npy", split);
        bool labelled;
        status = find_data_file(dir, images_name, "", images_path, sizeof images_path, err);
        if (status == FR_OK)
            status = locate_file(dir, labels_name, labels_path, sizeof labels_path, &labelled, err);
        if (status != FR_OK)
            return status;
        /* Without labels the tokens are their own targets (language modelling). */
        if (!labelled && !npy_holds_tokens(images_path))
            return fr_fail(err, FR_EIO, "%s[.gz]: no such file (only token data, for language "
                           "modelling, comes without labels)", labels_path);
        return fr_dataset_load_npy(images_path, labelled ? labels_path : NULL, layout, out, err);
    }

    const char *prefix = train ? "train" : "t10k";
    snprintf(images_name, sizeof images_name, "%s-images-idx3-ubyte", prefix);
    snprintf(labels_name, sizeof labels_name, "%s-labels-idx1-ubyte", prefix);
    char hint[64];
    snprintf(hint, sizeof hint, ", nor %s_x.npy for NumPy data", split);
    status = find_data_file(dir, images_name, hint, images_path, sizeof images_path, err);
    if (status == FR_OK)
        status = find_data_file(dir, labels_name, "", labels_path, sizeof labels_path, err);
    if (status != FR_OK)
        return status;
    return fr_dataset_load_idx(images_path, labels_path, out, err);
}

/* ----------------------------------------------------------- other sources */

int fr_dataset_from_arrays(const float *x, const int32_t *labels, int n, int channels,
                           int height, int width, fr_dataset **out, fr_error *err) {
    if (!x || !labels || !out)
        return fr_fail(err, FR_EINVAL, "fr_dataset_from_arrays: NULL argument");
    *out = NULL;
    if (n <= 0 || channels <= 0 || height <= 0 || width <= 0)
        return fr_fail(err, FR_EINVAL,
                       "fr_dataset_from_arrays: %d samples of %d x %d x %d: every count must "
                       "be positive",
                       n, channels, height, width);
    fr_shape shape = fr_shape_chw(channels, height, width);
    if (fr_shape_numel(shape) > INT_MAX)
        return fr_fail(err, FR_EINVAL,
                       "fr_dataset_from_arrays: samples of %d x %d x %d are too large", channels,
                       height, width);
    fr_dataset *data;
    for (int i = 0; i < n; i++)
        if (labels[i] < 0)
            return fr_fail(err, FR_EINVAL, "fr_dataset_from_arrays: label %d of sample %d is "
                           "negative", (int)labels[i], i);
    int status = dataset_alloc(n, shape, FR_F32, 1, "fr_dataset_from_arrays", &data, err);
    if (status != FR_OK)
        return status;
    memcpy(data->x, x, (size_t)n * fr_shape_numel(shape) * sizeof(float));
    memcpy(data->labels, labels, (size_t)n * sizeof *labels);
    *out = data;
    return FR_OK;
}

int fr_dataset_from_tokens(const int32_t *tokens, const int32_t *targets, int n, int seq,
                           int targets_per_sample, fr_dataset **out, fr_error *err) {
    if (!tokens || !targets || !out)
        return fr_fail(err, FR_EINVAL, "fr_dataset_from_tokens: NULL argument");
    *out = NULL;
    if (n <= 0 || seq <= 0 || (targets_per_sample != 1 && targets_per_sample != seq))
        return fr_fail(err, FR_EINVAL, "fr_dataset_from_tokens: %d rows of %d tokens with %d "
                       "targets each: counts must be positive, targets 1 or one per token",
                       n, seq, targets_per_sample);
    for (size_t i = 0; i < (size_t)n * seq; i++)
        if (tokens[i] < 0)
            return fr_fail(err, FR_EINVAL, "fr_dataset_from_tokens: token %d is negative",
                           (int)tokens[i]);
    fr_dataset *data;
    int status = dataset_alloc(n, fr_shape_vector(seq), FR_I32, targets_per_sample,
                               "fr_dataset_from_tokens", &data, err);
    if (status != FR_OK)
        return status;
    memcpy(data->x, tokens, (size_t)n * seq * sizeof *tokens);
    memcpy(data->labels, targets, (size_t)n * targets_per_sample * sizeof *targets);
    *out = data;
    return FR_OK;
}

void fr_dataset_free(fr_dataset *data) {
    if (!data)
        return;
    fr_free(data->x);
    fr_free(data->labels);
    fr_free(data);
}

int fr_dataset_size(const fr_dataset *data) { return data ? data->n : 0; }

size_t fr_dataset_bytes(const fr_dataset *data) {
    return data ? fr_alloc_size(data) + fr_alloc_size(data->x) + fr_alloc_size(data->labels) : 0;
}

int fr_dataset_sample_numel(const fr_dataset *data) {
    return data ? (int)fr_shape_numel(data->shape) : 0;
}

void fr_dataset_sample_shape(const fr_dataset *data, int *channels, int *height, int *width) {
    fr_shape shape = data ? data->shape : (fr_shape){0};
    *channels = shape.ndim == 3 ? shape.d[0] : (int)fr_shape_numel(shape);
    *height = shape.ndim == 3 ? shape.d[1] : 1;
    *width = shape.ndim == 3 ? shape.d[2] : 1;
}

int fr_dataset_sample_dims(const fr_dataset *data, int *dims) {
    for (int i = 0; i < data->shape.ndim; i++)
        dims[i] = data->shape.d[i];
    return data->shape.ndim;
}

fr_dtype fr_dataset_dtype(const fr_dataset *data) { return data->x_dtype; }

const float *fr_dataset_images(const fr_dataset *data) {
    return data && data->x_dtype == FR_F32 ? data->x : NULL;
}

const int32_t *fr_dataset_tokens(const fr_dataset *data) {
    return data && data->x_dtype == FR_I32 ? data->x : NULL;
}

const int32_t *fr_dataset_labels(const fr_dataset *data) { return data ? data->labels : NULL; }

int fr_dataset_targets_per_sample(const fr_dataset *data) { return data->target_numel; }

int fr_dataset_class_count(const fr_dataset *data) {
    if (!data || data->n == 0)
        return 0;
    int largest = -1;
    for (size_t i = 0; i < (size_t)data->n * data->target_numel; i++)
        if (data->labels[i] > largest)
            largest = data->labels[i];
    /* Label 2^31 - 1 would make 2^31 classes: INT_MAX says "more than any model has". */
    return largest < INT_MAX ? largest + 1 : INT_MAX;
}

int fr_dataset_largest_token(const fr_dataset *data) {
    int largest = -1;
    const int32_t *tokens = fr_dataset_tokens(data);
    for (size_t i = 0; tokens && i < (size_t)data->n * fr_shape_numel(data->shape); i++)
        if (tokens[i] > largest)
            largest = tokens[i];
    return largest;
}

/* ----------------------------------------------------------- normalisation */

int fr_dataset_normalize(fr_dataset *data, const float *mean, const float *std, int count,
                         fr_error *err) {
    if (!data || !mean || !std)
        return fr_fail(err, FR_EINVAL, "fr_dataset_normalize: NULL argument");
    if (data->x_dtype != FR_F32)
        return fr_fail(err, FR_EINVAL, "%s holds token ids, not values to normalise",
                       data->images_path);
    int channels = data->shape.ndim == 3 ? data->shape.d[0] : 1;
    if (count != 1 && count != channels)
        return fr_fail(err, FR_EINVAL,
                       "%d mean,std pairs for images of %d channel%s: give one pair, or one per "
                       "channel",
                       count, channels, channels == 1 ? "" : "s");
    /* Every pair checked before any value changes: a refusal leaves the data as it was. */
    for (int c = 0; c < count; c++) {
        if (!isfinite(mean[c]))
            return fr_fail(err, FR_EINVAL, "mean %g (pair %d) is not finite", mean[c], c + 1);
        if (!(std[c] > 0.0f) || !isfinite(std[c]))
            return fr_fail(err, FR_EINVAL, "std %g (pair %d) must be positive and finite",
                           std[c], c + 1);
    }
    size_t plane = fr_shape_numel(data->shape) / (size_t)channels;
    for (int s = 0; s < data->n; s++)
        for (int c = 0; c < channels; c++) {
            float m = mean[count == 1 ? 0 : c], sd = std[count == 1 ? 0 : c];
            float *values = (float *)data->x + ((size_t)s * channels + c) * plane;
            /* torchvision's order: subtract, then divide (not a multiply by 1/std). */
            for (size_t i = 0; i < plane; i++)
                values[i] = (values[i] - m) / sd;
        }
    return FR_OK;
}

/* ----------------------------------------------------------- class filter */

#define CLASS_LIMIT 65536

static void skip_spaces(const char **cursor) {
    while (**cursor == ' ' || **cursor == '\t')
        (*cursor)++;
}

/* One class number 0..CLASS_LIMIT-1 at *cursor; `what` says where it was expected. */
static int parse_class_number(const char *spec, const char **cursor, int *value,
                              const char *what, fr_error *err) {
    skip_spaces(cursor);
    const char *start = *cursor;
    if (*start < '0' || *start > '9') {
        if (*start == '\0')
            return fr_fail(err, FR_EINVAL, "class list '%s': missing %s at the end", spec, what);
        return fr_fail(err, FR_EINVAL, "class list '%s': expected %s at '%s'", spec, what,
                       start);
    }
    long number = 0;
    while (**cursor >= '0' && **cursor <= '9') {
        number = number * 10 + (**cursor - '0');
        (*cursor)++;
        if (number >= CLASS_LIMIT) {
            while (**cursor >= '0' && **cursor <= '9')
                (*cursor)++;
            return fr_fail(err, FR_EINVAL, "class list '%s': class %.*s is out of range 0-%d",
                           spec, (int)(*cursor - start), start, CLASS_LIMIT - 1);
        }
    }
    skip_spaces(cursor);
    *value = (int)number;
    return FR_OK;
}

/* "0-2,7" -> wanted[0..2] = wanted[7] = true.  Grammar: item (',' item)*, item: N | N-M. */
static int parse_class_spec(const char *spec, bool wanted[CLASS_LIMIT], fr_error *err) {
    const char *cursor = spec;
    skip_spaces(&cursor);
    if (*cursor == '\0')
        return fr_fail(err, FR_EINVAL,
                       "class list '%s': empty; give classes like 0-4 or 5,6,7 or 0-2,7", spec);
    for (;;) {
        int first, last;
        int status = parse_class_number(spec, &cursor, &first, "a class number", err);
        if (status != FR_OK)
            return status;
        last = first;
        if (*cursor == '-') {
            cursor++;
            status = parse_class_number(spec, &cursor, &last, "a class number after '-'", err);
            if (status != FR_OK)
                return status;
            if (last < first)
                return fr_fail(err, FR_EINVAL,
                               "class list '%s': empty range %d-%d (write it low-high)", spec,
                               first, last);
        }
        for (int c = first; c <= last; c++)
            wanted[c] = true;
        if (*cursor == '\0')
            return FR_OK;
        if (*cursor != ',')
            return fr_fail(err, FR_EINVAL, "class list '%s': expected ',' or '-' at '%s'", spec,
                           cursor);
        cursor++;
    }
}

static int filter_classes(fr_dataset *data, const char *spec, bool *wanted, fr_error *err);

int fr_dataset_keep_classes(fr_dataset *data, const char *spec, fr_error *err) {
    if (!data || !spec)
        return fr_fail(err, FR_EINVAL, "fr_dataset_keep_classes: NULL argument");
    if (data->target_numel != 1)
        return fr_fail(err, FR_EINVAL, "class list '%s': %s has a target per position, not one "
                       "class per sample", spec, data->labels_path);
    bool *wanted = calloc(CLASS_LIMIT, sizeof *wanted);
    if (!wanted)
        return fr_fail(err, FR_ENOMEM, "class list '%s': out of memory", spec);
    int status = filter_classes(data, spec, wanted, err);
    free(wanted);
    return status;
}

/* Whether sample i's class is wanted (classes past the list's range never are). */
static bool class_wanted(const bool *wanted, int32_t label) {
    return label >= 0 && label < CLASS_LIMIT && wanted[label];
}

static int filter_classes(fr_dataset *data, const char *spec, bool *wanted, fr_error *err) {
    int status = parse_class_spec(spec, wanted, err);
    if (status != FR_OK)
        return status;

    /* Count first, so that a filter that keeps nothing leaves the dataset untouched. */
    int kept_count = 0, smallest_label = INT32_MAX, largest_label = -1;
    for (int i = 0; i < data->n; i++) {
        int label = data->labels[i];
        kept_count += class_wanted(wanted, label);
        if (label < smallest_label)
            smallest_label = label;
        if (label > largest_label)
            largest_label = label;
    }
    if (kept_count == 0) {
        if (data->n == 0)
            return fr_fail(err, FR_EINVAL, "class list '%s': the dataset is empty", spec);
        return fr_fail(err, FR_EINVAL,
                       "class list '%s': no sample has one of these classes (labels here are "
                       "%d-%d)",
                       spec, smallest_label, largest_label);
    }

    /* Stable compaction: kept samples slide down, so their order is unchanged. */
    size_t bytes = sample_bytes(data);
    int kept = 0;
    for (int i = 0; i < data->n; i++) {
        if (!class_wanted(wanted, data->labels[i]))
            continue;
        if (kept != i) {
            memcpy((char *)data->x + (size_t)kept * bytes, (char *)data->x + (size_t)i * bytes,
                   bytes);
            data->labels[kept] = data->labels[i];
        }
        kept++;
    }
    data->n = kept;
    return FR_OK;
}

/* ------------------------------------------------------------ held-out split */

/* The tail becomes a dataset of its own (a validation set held out of the
 * training set): samples keep their order, so the split is the same on every
 * rank and in every resumed run. */
int fr_dataset_split(fr_dataset *data, int keep, fr_dataset **rest, fr_error *err) {
    if (!data || !rest)
        return fr_fail(err, FR_EINVAL, "fr_dataset_split: NULL argument");
    *rest = NULL;
    if (keep <= 0 || keep >= data->n)
        return fr_fail(err, FR_EINVAL,
                       "%s: splitting %d samples after the first %d leaves one part empty",
                       data->images_path, data->n, keep);
    fr_dataset *tail;
    int status = dataset_alloc(data->n - keep, data->shape, data->x_dtype, data->target_numel,
                               data->images_path, &tail, err);
    if (status != FR_OK)
        return status;
    memcpy(tail->x, (char *)data->x + (size_t)keep * sample_bytes(data),
           (size_t)tail->n * sample_bytes(data));
    memcpy(tail->labels, (char *)data->labels + (size_t)keep * target_bytes(data),
           (size_t)tail->n * target_bytes(data));
    memcpy(tail->images_path, data->images_path, sizeof tail->images_path);
    memcpy(tail->labels_path, data->labels_path, sizeof tail->labels_path);
    data->n = keep;
    *rest = tail;
    return FR_OK;
}

const char *fr_dataset_images_path(const fr_dataset *data) { return data->images_path; }
const char *fr_dataset_labels_path(const fr_dataset *data) { return data->labels_path; }
