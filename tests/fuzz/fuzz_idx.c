/*
 * fuzz_idx.c - libFuzzer target for the IDX dataset reader (data.c):
 * fr_dataset_load_idx on an image file and a label file, each raw or gzip'd,
 * then the class filter behind --classes.
 *
 * Input: a 2-byte little-endian length L, then L bytes of the label file
 * (fewer if the input ends first), then the image file.  The two files are
 * written to a private temporary directory (fuzz_common.h says where).
 *
 *   make fuzz && tests/fuzz/fuzz_idx CORPUS_DIR $(srcdir)/tests/fuzz/corpus/idx
 */
#include "fuzz_common.h"
#include "command.h"

#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_name_pair("images-idx3-ubyte", "labels-idx1-ubyte");
    return 0;
}

/* What an accepted pair must give: n samples of 1 x rows x cols floats in
 * [0, 1], the labels as they are in the file. */
static void check_dataset(const fr_dataset *data) {
    int n = fr_dataset_size(data), numel = fr_dataset_sample_numel(data);
    if (n <= 0 || numel <= 0)
        fuzz_die("fr_dataset_load_idx", "accepted an empty dataset");
    const float *x = fr_dataset_images(data);
    const int32_t *labels = fr_dataset_labels(data);
    int largest = 0;
    for (size_t i = 0; i < (size_t)n * (size_t)numel; i++)
        if (!(x[i] >= 0.0f && x[i] <= 1.0f))
            fuzz_die("fr_dataset_load_idx", "a pixel outside [0, 1]");
    for (int i = 0; i < n; i++)
        if (labels[i] > largest)
            largest = labels[i];
    if (fr_dataset_class_count(data) != largest + 1)
        fuzz_die("fr_dataset_class_count", "is not the largest label + 1");
}

/* A filter that keeps nothing must fail and leave the dataset as it was;
 * one that succeeds keeps exactly the samples with those labels, in order. */
static void check_keep_classes(fr_dataset *data, const char *spec, int low, int high) {
    int n = fr_dataset_size(data), numel = fr_dataset_sample_numel(data);
    int expected = 0;
    for (int i = 0; i < n; i++)
        expected += fr_dataset_labels(data)[i] >= low && fr_dataset_labels(data)[i] <= high;
    fr_error err = {0};
    int status = fr_dataset_keep_classes(data, spec, &err);
    fuzz_check_status(status, &err, "fr_dataset_keep_classes");
    if (status != FR_OK) {
        if (expected != 0 || fr_dataset_size(data) != n)
            fuzz_die("fr_dataset_keep_classes", "refused a filter that keeps samples, or changed the dataset");
        return;
    }
    if (fr_dataset_size(data) != expected || fr_dataset_sample_numel(data) != numel)
        fuzz_die("fr_dataset_keep_classes", "kept the wrong number of samples");
    for (int i = 0; i < expected; i++)
        if (fr_dataset_labels(data)[i] < low || fr_dataset_labels(data)[i] > high)
            fuzz_die("fr_dataset_keep_classes", "kept a sample of another class");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *labels, *images;
    size_t label_bytes, image_bytes;
    if (!fuzz_write_pair(data, size, &labels, &label_bytes, &images, &image_bytes))
        return 0;

    fr_dataset *dataset = (fr_dataset *)fuzz_labels_path; /* must be overwritten */
    fr_error err = {0};
    int status = fr_dataset_load_idx(fuzz_images_path, fuzz_labels_path, &dataset, &err);
    fuzz_check_status(status, &err, "fr_dataset_load_idx");
    if (status != FR_OK) {
        if (dataset != NULL)
            fuzz_die("fr_dataset_load_idx", "failed but left a dataset in *out");
        return 0;
    }
    if (!dataset)
        fuzz_die("fr_dataset_load_idx", "succeeded without a dataset");
    check_dataset(dataset);
    check_keep_classes(dataset, "250-255", 250, 255);
    check_keep_classes(dataset, "0-4", 0, 4);
    check_keep_classes(dataset, "2", 2, 2);
    check_dataset(dataset);
    fr_dataset_free(dataset);
    return 0;
}
