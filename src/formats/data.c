/*
 * data.c - datasets as typed tensors (DESIGN.md, "The sample contract"):
 * inputs of n samples of one shape, float32 images or int32 token ids, and
 * int32 targets, one class id per sample or one per position.  Here: making
 * one (fr_dataset_alloc, from caller arrays), finding a directory's files
 * (NumPy, else IDX), the accessors, the class filter behind `--classes`, the
 * per-channel normalisation behind `--normalize` and the held-out split.  The
 * formats themselves are idx.c and npy_data.c, the gunzipping gzip.c.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "command.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------ making one */

int fr_dataset_alloc(int n, fr_shape shape, fr_dtype x_dtype, int target_numel,
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
size_t fr_dataset_sample_bytes(const fr_dataset *data) {
    return fr_shape_numel(data->shape) * fr_dtype_size(data->x_dtype);
}
size_t fr_dataset_target_bytes(const fr_dataset *data) {
    return (size_t)data->target_numel * sizeof(int32_t);
}

/* What a byte pixel p becomes, for every p: one table lookup per pixel
 * instead of a division, the same values as p / 255.0f. */
void fr_byte_pixel_values(float pixel_value[256]) {
    for (int p = 0; p < 256; p++)
        pixel_value[p] = (float)p / 255.0f;
}

/* ------------------------------------------------------- dataset directories */

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
        if (!labelled && !fr_npy_holds_tokens(images_path))
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
    int status = fr_dataset_alloc(n, shape, FR_F32, 1, "fr_dataset_from_arrays", &data, err);
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
    int status = fr_dataset_alloc(n, fr_shape_vector(seq), FR_I32, targets_per_sample,
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
    size_t bytes = fr_dataset_sample_bytes(data);
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
    int status = fr_dataset_alloc(data->n - keep, data->shape, data->x_dtype, data->target_numel,
                               data->images_path, &tail, err);
    if (status != FR_OK)
        return status;
    memcpy(tail->x, (char *)data->x + (size_t)keep * fr_dataset_sample_bytes(data),
           (size_t)tail->n * fr_dataset_sample_bytes(data));
    memcpy(tail->labels, (char *)data->labels + (size_t)keep * fr_dataset_target_bytes(data),
           (size_t)tail->n * fr_dataset_target_bytes(data));
    memcpy(tail->images_path, data->images_path, sizeof tail->images_path);
    memcpy(tail->labels_path, data->labels_path, sizeof tail->labels_path);
    data->n = keep;
    *rest = tail;
    return FR_OK;
}

const char *fr_dataset_images_path(const fr_dataset *data) { return data->images_path; }
const char *fr_dataset_labels_path(const fr_dataset *data) { return data->labels_path; }
