/*
 * npy_data.c - NumPy .npy arrays (npy.c parses them; raw or gzip'd) as
 * datasets: images x of uint8 (p / 255), float32 or float64, NCHW or NHWC,
 * (N, H, W) or (N, F), with integer labels y; and token rows of int32, int64
 * or uint16 ids, with labels (classification) or without (language
 * modelling: inputs the first T tokens, targets the last T).  Every value is
 * checked (finite floats, ids and labels 0 or more); every failure is a
 * one-line message naming the file.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A .npy file may be big: float32 images of a larger dataset. */
#define NPY_READ_LIMIT ((size_t)1 << 36)

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
        fr_byte_pixel_values(pixel_value);
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
        status = fr_dataset_alloc(rows, fr_shape_vector(seq), FR_I32, y_path ? 1 : seq, x_path,
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
        status = fr_dataset_alloc((int)images.shape[0], shape, FR_F32, 1, x_path, &data, err);
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

/* ---------------------------------------------------- what a file holds */

/* Whether the .npy file at `path` holds token ids (its header says). */
bool fr_npy_holds_tokens(const char *path) {
    unsigned char *bytes = NULL;
    size_t size = 0;
    fr_npy x;
    bool tokens = fr_read_file_gunzip(path, NPY_READ_LIMIT, &bytes, &size, NULL) == FR_OK &&
                  fr_npy_parse(path, bytes, size, &x, NULL) == FR_OK && npy_is_tokens(&x);
    fr_free(bytes);
    return tokens;
}
