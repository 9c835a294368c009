/*
 * fuzz_npy.c - libFuzzer target for the NumPy reader (npy.c, data.c):
 * fr_npy_parse on each file, fr_dataset_load_npy on an image file and a label
 * file (each raw or gzip'd) in both layouts, then fr_dataset_normalize.
 *
 * Input: a 2-byte little-endian length L, then L bytes of the label file
 * (fewer if the input ends first), then the image file.  The two files are
 * written to a private temporary directory (fuzz_common.h says where).
 *
 *   make fuzz && tests/fuzz/fuzz_npy CORPUS_DIR $(srcdir)/tests/fuzz/corpus/npy
 */
#include "fuzz_common.h"

#include <math.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_name_pair("x.npy", "y.npy");
    return 0;
}

/* What fr_npy_parse accepts: a known dtype, and exactly the body its shape needs. */
static void check_parse(const uint8_t *bytes, size_t size) {
    fr_npy array;
    fr_error err = {0};
    int status = fr_npy_parse("f.npy", bytes, size, &array, &err);
    fuzz_check_status(status, &err, "fr_npy_parse");
    if (status != FR_OK)
        return;
    size_t count = 1;
    for (int d = 0; d < array.ndim; d++)
        count *= (size_t)array.shape[d];
    bool known = ((array.kind == 'u' || array.kind == 'i') &&
                  (array.item_bytes == 1 || array.item_bytes == 2 || array.item_bytes == 4 ||
                   array.item_bytes == 8)) ||
                 (array.kind == 'f' && (array.item_bytes == 4 || array.item_bytes == 8));
    if (!known || array.ndim < 0 || array.ndim > FR_NPY_MAX_DIMS)
        fuzz_die("fr_npy_parse", "accepted an unknown dtype or rank");
    if (count != array.count || array.data < bytes ||
        (size_t)(array.data - bytes) + count * (size_t)array.item_bytes != size)
        fuzz_die("fr_npy_parse", "the body is not exactly count x item size at the end");
    char shape[64];
    fr_npy_shape_string(&array, shape, sizeof shape);
    if (shape[0] != '(' || strlen(shape) >= sizeof shape)
        fuzz_die("fr_npy_shape_string", "no tuple");
}

/* What an accepted pair must give: token rows of ids 0 or more with one class
 * id each, or samples of finite floats (uint8 pixels in [0, 1]); class ids 0
 * or more. */
static void check_dataset(const fr_dataset *data, bool byte_pixels) {
    int n = fr_dataset_size(data), numel = fr_dataset_sample_numel(data);
    int c, h, w;
    fr_dataset_sample_shape(data, &c, &h, &w);
    if (n <= 0 || numel <= 0 || (long long)c * h * w != numel)
        fuzz_die("fr_dataset_load_npy", "accepted an empty dataset or a shape not its numel");
    if (fr_dataset_class_count(data) < 1)
        fuzz_die("fr_dataset_class_count", "below 1");
    if (fr_dataset_dtype(data) == FR_I32) {
        const int32_t *tokens = fr_dataset_tokens(data);
        if (!tokens || fr_dataset_images(data) || fr_dataset_targets_per_sample(data) != 1)
            fuzz_die("fr_dataset_load_npy", "token rows with labels: not tokens and one class each");
        for (size_t i = 0; i < (size_t)n * (size_t)numel; i++)
            if (tokens[i] < 0)
                fuzz_die("fr_dataset_load_npy", "a negative token id");
        if (fr_dataset_largest_token(data) < 0)
            fuzz_die("fr_dataset_largest_token", "below 0");
        return;
    }
    const float *x = fr_dataset_images(data);
    for (size_t i = 0; i < (size_t)n * (size_t)numel; i++) {
        if (!isfinite(x[i]))
            fuzz_die("fr_dataset_load_npy", "a value that is not finite");
        if (byte_pixels && !(x[i] >= 0.0f && x[i] <= 1.0f))
            fuzz_die("fr_dataset_load_npy", "a uint8 pixel outside [0, 1]");
    }
}

/* NHWC's sample (c, y, x) is the file's element ((y * W + x) * C + c), which
 * the NCHW reading holds at that flat position. */
static void check_layouts(const fr_dataset *nchw, const fr_dataset *nhwc) {
    int n = fr_dataset_size(nchw), numel = fr_dataset_sample_numel(nchw);
    if (fr_dataset_size(nhwc) != n || fr_dataset_sample_numel(nhwc) != numel ||
        memcmp(fr_dataset_labels(nchw), fr_dataset_labels(nhwc), (size_t)n * sizeof(int32_t)) != 0)
        fuzz_die("fr_dataset_load_npy", "the layouts disagree on counts or labels");
    int c, h, w;
    fr_dataset_sample_shape(nhwc, &c, &h, &w);
    const float *file = fr_dataset_images(nchw), *moved = fr_dataset_images(nhwc);
    for (int s = 0; s < n; s++)
        for (int k = 0; k < c; k++)
            for (int p = 0; p < h * w; p++) {
                float a = moved[((size_t)s * c + k) * h * w + p];
                float b = file[(size_t)s * numel + (size_t)p * c + k];
                if (memcmp(&a, &b, sizeof a) != 0)
                    fuzz_die("fr_dataset_load_npy", "NHWC is not the transpose of the file");
            }
}

/* A refused normalisation changes nothing; an accepted one (x - 0.5) / 0.25. */
static void check_normalize(fr_dataset *data) {
    int n = fr_dataset_size(data), numel = fr_dataset_sample_numel(data), c, h, w;
    fr_dataset_sample_shape(data, &c, &h, &w);
    size_t count = (size_t)n * (size_t)numel;
    float *before = malloc(count * sizeof(float));
    float means[3] = {0.5f, 0.5f, 0.5f}, stds[3] = {0.25f, 0.25f, 0.25f};
    if (!before)
        abort();
    memcpy(before, fr_dataset_images(data), count * sizeof(float));
    fr_error err = {0};
    int status = fr_dataset_normalize(data, means, stds, c == 2 ? 3 : 2, &err);
    fuzz_check_status(status, &err, "fr_dataset_normalize");
    if (status == FR_OK || memcmp(before, fr_dataset_images(data), count * sizeof(float)) != 0)
        fuzz_die("fr_dataset_normalize", "accepted a wrong pair count, or changed the data");
    status = fr_dataset_normalize(data, means, stds, 1, &err);
    fuzz_check_status(status, &err, "fr_dataset_normalize");
    for (size_t i = 0; status == FR_OK && i < count; i++) {
        float want = (before[i] - 0.5f) / 0.25f;
        if (memcmp(&want, &fr_dataset_images(data)[i], sizeof want) != 0)
            fuzz_die("fr_dataset_normalize", "a value is not (x - mean) / std");
    }
    if (status != FR_OK)
        fuzz_die("fr_dataset_normalize", "refused one good pair");
    free(before);
}

static bool gzipped(const uint8_t *bytes, size_t size) {
    return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *labels, *images;
    size_t label_bytes, image_bytes;
    if (!fuzz_write_pair(data, size, &labels, &label_bytes, &images, &image_bytes))
        return 0;
    check_parse(labels, label_bytes);
    check_parse(images, image_bytes);

    fr_dataset *loaded[2] = {NULL, NULL};
    int status[2];
    for (int layout = 0; layout < 2; layout++) {
        fr_error err = {0};
        fr_dataset *dataset = (fr_dataset *)fuzz_labels_path; /* must be overwritten */
        status[layout] = fr_dataset_load_npy(fuzz_images_path, fuzz_labels_path, (fr_layout)layout,
                                             &dataset, &err);
        fuzz_check_status(status[layout], &err, "fr_dataset_load_npy");
        if (status[layout] != FR_OK && dataset != NULL)
            fuzz_die("fr_dataset_load_npy", "failed but left a dataset in *out");
        if (status[layout] == FR_OK && !dataset)
            fuzz_die("fr_dataset_load_npy", "succeeded without a dataset");
        loaded[layout] = dataset;
    }
    if (status[0] != status[1])
        fuzz_die("fr_dataset_load_npy", "the layout decided whether the files load");
    if (status[0] == FR_OK) {
        /* The image file's dtype, when it is raw: uint8 pixels must be in [0, 1]. */
        fr_npy array;
        fr_error err = {0};
        bool byte_pixels = !gzipped(images, image_bytes) &&
                           fr_npy_parse("x.npy", images, image_bytes, &array, &err) == FR_OK &&
                           array.item_bytes == 1;
        check_dataset(loaded[0], byte_pixels);
        check_dataset(loaded[1], byte_pixels);
        if (fr_dataset_dtype(loaded[0]) == FR_F32) {
            check_layouts(loaded[0], loaded[1]);
            check_normalize(loaded[1]);
        }
    }
    fr_dataset_free(loaded[0]);
    fr_dataset_free(loaded[1]);
    return 0;
}
