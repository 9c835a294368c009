/*
 * idx.c - IDX image and label files (MNIST, Fashion-MNIST; raw or gzip'd)
 * as a dataset: n x 1 x H x W floats, byte pixels p / 255 in [0, 1], one
 * class id per image.  Every size in a header is checked against the bytes
 * actually present before anything is allocated from it; every failure is a
 * one-line message naming the file.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* An IDX file is at most this big once decompressed (60000 28x28 images are 47 MB). */
#define IDX_READ_LIMIT ((size_t)1 << 30)
#define IDX_MAX_SIDE 4096u
#define IDX_MAX_COUNT 100000000u

#define IDX_IMAGES_MAGIC 0x00000803u /* u8 data, 3 dimensions */
#define IDX_LABELS_MAGIC 0x00000801u /* u8 data, 1 dimension */
#define IDX_IMAGES_HEADER_BYTES 16u
#define IDX_LABELS_HEADER_BYTES 8u

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
        status = fr_dataset_alloc((int)images.count, shape, FR_F32, 1, images_path, &data, err);
    }
    if (status == FR_OK) {
        float pixel_value[256];
        fr_byte_pixel_values(pixel_value);
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
