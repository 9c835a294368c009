/*
 * test_idx.c - the dataset loader (src/formats/data.c) as a specification: IDX files
 * raw and gzip'd, the dataset directory layout, the --classes filter, and the
 * refusal, with a message naming the file, of every kind of broken input.
 *
 * The test writes its own small IDX files into a fresh directory under /tmp;
 * only the last part reads the real Fashion-MNIST, and skips when it is absent.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "command.h"
#include "tap.h"
#include "test_files.h"

#include <dirent.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

static char temp_dir[64];

/* ------------------------------------------------------------ file makers */

static void put_be32(unsigned char *at, uint32_t value) {
    at[0] = (unsigned char)(value >> 24);
    at[1] = (unsigned char)(value >> 16);
    at[2] = (unsigned char)(value >> 8);
    at[3] = (unsigned char)value;
}

/* Paths live in a ring of buffers: enough for the arguments of one call. */
static const char *temp_path(const char *name) {
    static char paths[8][320];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, sizeof paths[0], "%s/%s", temp_dir, name);
    return path;
}

static void write_bytes(const char *path, const void *bytes, size_t size) {
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(bytes, 1, size, file) != size || fclose(file) != 0) {
        fprintf(stderr, "test_idx: cannot write %s\n", path);
        exit(2);
    }
}

/* mode "wb" starts a file, "ab" appends another gzip member to it. */
static void write_gzip(const char *path, const char *mode, const void *bytes, size_t size) {
    gzFile file = gzopen(path, mode);
    if (!file || gzwrite(file, bytes, (unsigned)size) != (int)size || gzclose(file) != Z_OK) {
        fprintf(stderr, "test_idx: cannot write %s\n", path);
        exit(2);
    }
}

static unsigned char *read_bytes(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    if (!file)
        exit(2);
    fseek(file, 0, SEEK_END);
    *size = (size_t)ftell(file);
    rewind(file);
    unsigned char *bytes = malloc(*size);
    if (!bytes || fread(bytes, 1, *size, file) != *size)
        exit(2);
    fclose(file);
    return bytes;
}

/* An IDX image file image: header (magic, n, rows, cols) and n*rows*cols pixels. */
static unsigned char *idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                                 const unsigned char *pixels, size_t *size) {
    size_t pixel_bytes = (size_t)n * rows * cols;
    *size = 16 + pixel_bytes;
    unsigned char *bytes = calloc(1, *size);
    put_be32(bytes, magic);
    put_be32(bytes + 4, n);
    put_be32(bytes + 8, rows);
    put_be32(bytes + 12, cols);
    if (pixels)
        memcpy(bytes + 16, pixels, pixel_bytes);
    return bytes;
}

static unsigned char *idx_labels(uint32_t n, const unsigned char *labels, size_t *size) {
    *size = 8 + n;
    unsigned char *bytes = calloc(1, *size);
    put_be32(bytes, 0x00000801);
    put_be32(bytes + 4, n);
    memcpy(bytes + 8, labels, n);
    return bytes;
}

/* Pixels with every interesting value: 0, 1, 128, 254, 255 and a spread. */
static void fill_pixels(unsigned char *pixels, size_t count, uint32_t seed) {
    static const unsigned char edges[] = {0, 1, 128, 254, 255};
    for (size_t i = 0; i < count; i++) {
        seed = seed * 1664525u + 1013904223u;
        pixels[i] = i < sizeof edges ? edges[i] : (unsigned char)(seed >> 24);
    }
}

/* ---------------------------------------------------------------- checks */

static bool pixels_match(const fr_dataset *data, const unsigned char *pixels, size_t count) {
    const float *x = fr_dataset_images(data);
    for (size_t i = 0; i < count; i++)
        if (x[i] != (float)pixels[i] / 255.0f)
            return false;
    return true;
}

static bool in_unit_interval(const fr_dataset *data) {
    const float *x = fr_dataset_images(data);
    size_t count = (size_t)fr_dataset_size(data) * (size_t)fr_dataset_sample_numel(data);
    for (size_t i = 0; i < count; i++)
        if (!(x[i] >= 0.0f && x[i] <= 1.0f))
            return false;
    return true;
}

/* Loading must fail with `status` and a message containing every given piece. */
static void expect_load_failure(const char *what, const char *images, const char *labels,
                                int status, const char *piece1, const char *piece2) {
    fr_error err = {0};
    fr_dataset *data = (fr_dataset *)&err; /* must be reset to NULL on failure */
    int got = fr_dataset_load_idx(images, labels, &data, &err);
    bool ok = got == status && data == NULL && strchr(err.msg, '\n') == NULL &&
              strstr(err.msg, piece1) && (!piece2 || strstr(err.msg, piece2));
    tap_ok(ok, "%s is refused naming the file (status %d: %s)", what, got, err.msg);
    if (got == FR_OK)
        fr_dataset_free(data);
}

static void expect_classes_failure(fr_dataset *data, const char *spec, const char *piece) {
    fr_error err = {0};
    int n_before = fr_dataset_size(data);
    int got = fr_dataset_keep_classes(data, spec, &err);
    char quoted[64];
    snprintf(quoted, sizeof quoted, "'%s'", spec);
    tap_ok(got == FR_EINVAL && strstr(err.msg, quoted) && strstr(err.msg, piece) &&
               fr_dataset_size(data) == n_before,
           "--classes %s is refused, the dataset untouched (%s)", quoted, err.msg);
}

/* ------------------------------------------------------------------ tests */

enum { SMALL_N = 5, SMALL_ROWS = 3, SMALL_COLS = 4 };

static unsigned char small_pixels[SMALL_N * SMALL_ROWS * SMALL_COLS];
static const unsigned char small_labels[SMALL_N] = {3, 0, 9, 3, 7};

static void write_small_pair(const char *images_name, const char *labels_name, bool gzip) {
    size_t image_size, label_size;
    unsigned char *images =
        idx_images(0x00000803, SMALL_N, SMALL_ROWS, SMALL_COLS, small_pixels, &image_size);
    unsigned char *labels = idx_labels(SMALL_N, small_labels, &label_size);
    if (gzip) {
        write_gzip(temp_path(images_name), "wb", images, image_size);
        write_gzip(temp_path(labels_name), "wb", labels, label_size);
    } else {
        write_bytes(temp_path(images_name), images, image_size);
        write_bytes(temp_path(labels_name), labels, label_size);
    }
    free(images);
    free(labels);
}

static void check_small_dataset(const fr_dataset *data, const char *how) {
    tap_ok(data && fr_dataset_size(data) == SMALL_N, "%s: %d samples", how, SMALL_N);
    if (!data)
        return;
    tap_ok(data->shape.d[0] == 1 && data->shape.d[1] == SMALL_ROWS && data->shape.d[2] == SMALL_COLS &&
               fr_dataset_sample_numel(data) == SMALL_ROWS * SMALL_COLS,
           "%s: each sample is 1 x %d x %d", how, SMALL_ROWS, SMALL_COLS);
    tap_ok(pixels_match(data, small_pixels, sizeof small_pixels),
           "%s: every pixel p becomes exactly p / 255", how);
    tap_ok(fr_dataset_images(data)[0] == 0.0f && fr_dataset_images(data)[4] == 1.0f,
           "%s: 0 maps to 0.0 and 255 to 1.0", how);
    tap_ok(labels_equal(fr_dataset_labels(data), small_labels, SMALL_N),
           "%s: labels are read in order", how);
    tap_ok(fr_dataset_class_count(data) == 10, "%s: class count is the largest label + 1",
           how);
}

static void test_loading(void) {
    fr_error err = {0};
    fr_dataset *data = NULL;

    write_small_pair("raw-images", "raw-labels", false);
    int status = fr_dataset_load_idx(temp_path("raw-images"), temp_path("raw-labels"), &data,
                                     &err);
    tap_ok(status == FR_OK, "raw IDX files load (%s)", status ? err.msg : "ok");
    check_small_dataset(data, "raw IDX");
    fr_dataset_free(data);

    write_small_pair("gz-images.gz", "gz-labels.gz", true);
    data = NULL;
    status = fr_dataset_load_idx(temp_path("gz-images.gz"), temp_path("gz-labels.gz"), &data,
                                 &err);
    tap_ok(status == FR_OK, "gzip'd IDX files load (%s)", status ? err.msg : "ok");
    check_small_dataset(data, "gzip'd IDX");
    fr_dataset_free(data);

    /* `cat a.gz b.gz` is a valid gzip file, and its trailer only knows the last member. */
    size_t image_size;
    unsigned char *images =
        idx_images(0x00000803, SMALL_N, SMALL_ROWS, SMALL_COLS, small_pixels, &image_size);
    write_gzip(temp_path("two-members.gz"), "wb", images, 10);
    write_gzip(temp_path("two-members.gz"), "ab", images + 10, image_size - 10);
    free(images);
    data = NULL;
    status = fr_dataset_load_idx(temp_path("two-members.gz"), temp_path("raw-labels"), &data,
                                 &err);
    tap_ok(status == FR_OK && pixels_match(data, small_pixels, sizeof small_pixels),
           "a gzip file of two concatenated members loads whole (%s)",
           status ? err.msg : "ok");
    fr_dataset_free(data);
}

static void test_load_dir(void) {
    fr_error err = {0};
    fr_dataset *train = NULL, *test = NULL;

    /* Raw train pair, gzip'd test pair: each name is found in either form. */
    write_small_pair("train-images-idx3-ubyte", "train-labels-idx1-ubyte", false);
    write_small_pair("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", true);

    int status = fr_dataset_load_dir(temp_dir, true, &train, &err);
    tap_ok(status == FR_OK, "load_dir finds the raw train-*-ubyte pair (%s)",
           status ? err.msg : "ok");
    check_small_dataset(train, "load_dir train (raw)");
    status = fr_dataset_load_dir(temp_dir, false, &test, &err);
    tap_ok(status == FR_OK, "load_dir finds the gzip'd t10k-*-ubyte.gz pair (%s)",
           status ? err.msg : "ok");
    check_small_dataset(test, "load_dir test (gzip)");
    fr_dataset_free(train);
    fr_dataset_free(test);

    char with_slash[80];
    snprintf(with_slash, sizeof with_slash, "%s/", temp_dir);
    train = NULL;
    status = fr_dataset_load_dir(with_slash, true, &train, &err);
    tap_ok(status == FR_OK, "load_dir accepts a directory given with a trailing slash");
    fr_dataset_free(train);

    char empty_dir[128];
    snprintf(empty_dir, sizeof empty_dir, "%s/empty", temp_dir);
    mkdir(empty_dir, 0700);
    train = (fr_dataset *)&err;
    status = fr_dataset_load_dir(empty_dir, true, &train, &err);
    char expected[256];
    snprintf(expected, sizeof expected, "%s/train-images-idx3-ubyte[.gz]: no such file",
             empty_dir);
    tap_ok(status == FR_EIO && train == NULL && strstr(err.msg, expected),
           "load_dir on a directory without the files names the missing one (%s)", err.msg);
    rmdir(empty_dir);

    status = fr_dataset_load_dir("/nonexistent/frost-data", true, &train, &err);
    tap_ok(status == FR_EIO && strstr(err.msg, "/nonexistent/frost-data: no such directory"),
           "load_dir on a missing directory says so (%s)", err.msg);
}

static void test_rejections(void) {
    size_t size, label_size;
    unsigned char pixels[4 * 2 * 2];
    unsigned char labels[5] = {1, 2, 3, 4, 5};
    fill_pixels(pixels, sizeof pixels, 7);
    char good_labels[320], five_labels[320];
    snprintf(good_labels, sizeof good_labels, "%s", temp_path("good4-labels"));
    snprintf(five_labels, sizeof five_labels, "%s", temp_path("five-labels"));
    unsigned char *bytes = idx_labels(4, labels, &label_size);
    write_bytes(good_labels, bytes, label_size);
    free(bytes);

    bytes = idx_images(0x00000804, 4, 2, 2, pixels, &size);
    write_bytes(temp_path("bad-magic"), bytes, size);
    free(bytes);
    expect_load_failure("an image file with magic 0x00000804", temp_path("bad-magic"),
                        good_labels, FR_EFORMAT, temp_path("bad-magic"), "0x00000804");

    expect_load_failure("a label file given as the image file", good_labels, good_labels,
                        FR_EFORMAT, "good4-labels: magic number 0x00000801 (an IDX label file)",
                        "expected 0x00000803");

    bytes = idx_images(0x00000803, 4, 2, 2, pixels, &size);
    write_bytes(temp_path("good4-images"), bytes, size);
    expect_load_failure("an image file given as the label file", temp_path("good4-images"),
                        temp_path("good4-images"), FR_EFORMAT,
                        "good4-images: magic number 0x00000803 (an IDX image file)",
                        "expected 0x00000801");

    write_bytes(temp_path("short-pixels"), bytes, size - 3);
    expect_load_failure("an image file missing its last 3 pixels", temp_path("short-pixels"),
                        good_labels, FR_EFORMAT,
                        "short-pixels: truncated: expected 16 bytes of pixel data, found 13",
                        NULL);
    write_bytes(temp_path("short-header"), bytes, 10);
    expect_load_failure("an image file cut inside its header", temp_path("short-header"),
                        good_labels, FR_EFORMAT, "short-header: truncated header", NULL);
    free(bytes);

    bytes = idx_images(0x00000803, 4, 2, 2, pixels, &size);
    unsigned char *longer = calloc(1, size + 5);
    memcpy(longer, bytes, size);
    write_bytes(temp_path("long-pixels"), longer, size + 5);
    free(longer);
    free(bytes);
    expect_load_failure("an image file with 5 bytes too many", temp_path("long-pixels"),
                        good_labels, FR_EFORMAT, "long-pixels: 5 trailing bytes", NULL);

    bytes = idx_images(0x00000803, 4, 0, 2, NULL, &size);
    write_bytes(temp_path("zero-rows"), bytes, size);
    free(bytes);
    expect_load_failure("an image file of 0-row images", temp_path("zero-rows"), good_labels,
                        FR_EFORMAT, "zero-rows: header has a zero dimension", NULL);
    bytes = idx_images(0x00000803, 0, 2, 2, NULL, &size);
    write_bytes(temp_path("zero-count"), bytes, size);
    free(bytes);
    expect_load_failure("an image file of 0 images", temp_path("zero-count"), good_labels,
                        FR_EFORMAT, "zero-count: header has a zero dimension", NULL);

    /* A lying header must be caught by the size check, not by a huge allocation. */
    bytes = idx_images(0x00000803, 4, 2, 2, pixels, &size);
    put_be32(bytes + 4, 100000000);
    put_be32(bytes + 8, 4096);
    put_be32(bytes + 12, 4096);
    write_bytes(temp_path("lying-header"), bytes, size);
    put_be32(bytes + 8, 5000);
    write_bytes(temp_path("huge-side"), bytes, size);
    free(bytes);
    expect_load_failure("a header claiming 1.6 PB of pixels", temp_path("lying-header"),
                        good_labels, FR_EFORMAT, "lying-header: truncated: expected", NULL);
    expect_load_failure("images of 5000 rows", temp_path("huge-side"), good_labels, FR_EFORMAT,
                        "huge-side: images of 5000 x 4096", NULL);

    bytes = idx_labels(5, labels, &label_size);
    write_bytes(five_labels, bytes, label_size);
    free(bytes);
    char both_counts[1024];
    snprintf(both_counts, sizeof both_counts, "%s has 4 images but %s has 5 labels",
             temp_path("good4-images"), five_labels);
    expect_load_failure("4 images with 5 labels", temp_path("good4-images"), five_labels,
                        FR_EFORMAT, both_counts, NULL);

    expect_load_failure("a missing image file", temp_path("no-such-images"), good_labels,
                        FR_EIO, "no-such-images: no such file", NULL);
    expect_load_failure("a missing label file", temp_path("good4-images"),
                        temp_path("no-such-labels"), FR_EIO, "no-such-labels: no such file",
                        NULL);
    write_bytes(temp_path("empty-file"), "", 0);
    expect_load_failure("an empty image file", temp_path("empty-file"), good_labels,
                        FR_EFORMAT, "empty-file: empty file", NULL);
    expect_load_failure("an empty label file", temp_path("good4-images"),
                        temp_path("empty-file"), FR_EFORMAT, "empty-file: empty file", NULL);
    expect_load_failure("a directory given as the image file", temp_dir, good_labels, FR_EIO,
                        "is a directory", NULL);
}

static void test_gzip_damage(void) {
    /* Enough varied pixels that the deflate stream is long and its middle is real data. */
    enum { N = 20, SIDE = 28 };
    static unsigned char pixels[N * SIDE * SIDE];
    unsigned char labels[N] = {0};
    for (size_t i = 0; i < sizeof pixels; i++)
        pixels[i] = (unsigned char)((i * 7 + i / 97) % 200);
    size_t size, label_size;
    unsigned char *images = idx_images(0x00000803, N, SIDE, SIDE, pixels, &size);
    unsigned char *label_bytes = idx_labels(N, labels, &label_size);
    write_gzip(temp_path("damage-images.gz"), "wb", images, size);
    write_gzip(temp_path("damage-labels.gz"), "wb", label_bytes, label_size);
    free(images);
    free(label_bytes);

    fr_error err = {0};
    fr_dataset *data = NULL;
    int status = fr_dataset_load_idx(temp_path("damage-images.gz"),
                                     temp_path("damage-labels.gz"), &data, &err);
    tap_ok(status == FR_OK && pixels_match(data, pixels, sizeof pixels),
           "the undamaged gzip'd pair loads (%s)", status ? err.msg : "ok");
    fr_dataset_free(data);

    size_t gz_size;
    unsigned char *gz = read_bytes(temp_path("damage-images.gz"), &gz_size);
    write_bytes(temp_path("half.gz"), gz, gz_size / 2);
    expect_load_failure("a gzip file cut in half", temp_path("half.gz"),
                        temp_path("damage-labels.gz"), FR_EFORMAT,
                        "half.gz: truncated gzip data", NULL);
    write_bytes(temp_path("no-trailer.gz"), gz, gz_size - 4);
    expect_load_failure("a gzip file missing its last 4 bytes", temp_path("no-trailer.gz"),
                        temp_path("damage-labels.gz"), FR_EFORMAT,
                        "no-trailer.gz: truncated gzip data", NULL);

    unsigned char *flipped = malloc(gz_size);
    memcpy(flipped, gz, gz_size);
    for (size_t i = gz_size / 2 - 4; i < gz_size / 2 + 4; i++)
        flipped[i] ^= 0xa5;
    write_bytes(temp_path("flipped.gz"), flipped, gz_size);
    expect_load_failure("a gzip file with bytes flipped in the deflate stream",
                        temp_path("flipped.gz"), temp_path("damage-labels.gz"), FR_EFORMAT,
                        "flipped.gz: corrupt gzip data: ", NULL);

    /* Keep the deflate stream intact but break the CRC in the trailer. */
    memcpy(flipped, gz, gz_size);
    flipped[gz_size - 8] ^= 0x01;
    write_bytes(temp_path("bad-crc.gz"), flipped, gz_size);
    expect_load_failure("a gzip file whose CRC does not match", temp_path("bad-crc.gz"),
                        temp_path("damage-labels.gz"), FR_EFORMAT,
                        "bad-crc.gz: corrupt gzip data: incorrect data check", NULL);

    /* Stray bytes after the last member are not silently ignored. */
    unsigned char *padded = malloc(gz_size + 3);
    memcpy(padded, gz, gz_size);
    memcpy(padded + gz_size, "xyz", 3);
    write_bytes(temp_path("stray.gz"), padded, gz_size + 3);
    expect_load_failure("a gzip file followed by stray bytes", temp_path("stray.gz"),
                        temp_path("damage-labels.gz"), FR_EFORMAT,
                        "stray.gz: corrupt gzip data: 3 stray bytes", NULL);
    free(padded);
    free(flipped);
    free(gz);

    /* Only the magic: a gzip "file" with no stream at all. */
    write_bytes(temp_path("magic-only.gz"), "\x1f\x8b", 2);
    expect_load_failure("a file holding only the gzip magic", temp_path("magic-only.gz"),
                        temp_path("damage-labels.gz"), FR_EFORMAT,
                        "magic-only.gz: truncated gzip data", NULL);
}

static void test_read_limit(void) {
    static unsigned char zeros[100000];
    write_gzip(temp_path("zeros.gz"), "wb", zeros, sizeof zeros);
    write_bytes(temp_path("zeros-raw"), zeros, sizeof zeros);
    unsigned char *bytes = NULL;
    size_t size = 0;
    fr_error err = {0};

    int status = fr_read_file_gunzip(temp_path("zeros.gz"), sizeof zeros, &bytes, &size, &err);
    tap_ok(status == FR_OK && size == sizeof zeros,
           "fr_read_file_gunzip inflates a gzip file of exactly the limit");
    fr_free(bytes);
    status = fr_read_file_gunzip(temp_path("zeros.gz"), sizeof zeros - 1, &bytes, &size, &err);
    tap_ok(status == FR_EFORMAT && strstr(err.msg, "zeros.gz: decompresses to more than") &&
               strstr(err.msg, "99999"),
           "fr_read_file_gunzip refuses a gzip file inflating past the limit (%s)", err.msg);
    status = fr_read_file_gunzip(temp_path("zeros-raw"), 1000, &bytes, &size, &err);
    tap_ok(status == FR_EFORMAT && strstr(err.msg, "zeros-raw: file is 100000 bytes"),
           "fr_read_file_gunzip refuses a raw file over the limit (%s)", err.msg);
    status = fr_read_file_gunzip(temp_path("empty-file"), 1000, &bytes, &size, &err);
    tap_ok(status == FR_OK && size == 0, "fr_read_file_gunzip reads an empty file as 0 bytes");
    fr_free(bytes);
}

static void test_from_arrays(void) {
    float x[6] = {0.5f, 1, 2, 3, 4, 5};
    int32_t labels[3] = {2, 0, 1};
    fr_dataset *data = NULL;
    fr_error err = {0};
    int status = fr_dataset_from_arrays(x, labels, 3, 2, 1, 1, &data, &err);
    x[0] = -1;
    labels[0] = 9;
    tap_ok(status == FR_OK && fr_dataset_size(data) == 3 && fr_dataset_sample_numel(data) == 2 &&
               fr_dataset_images(data)[0] == 0.5f && fr_dataset_labels(data)[0] == 2,
           "from_arrays copies its inputs (later changes to them do not show)");
    tap_ok(fr_dataset_class_count(data) == 3, "from_arrays: class count is 3");
    fr_dataset_free(data);

    status = fr_dataset_from_arrays(x, labels, 0, 1, 1, 1, &data, &err);
    tap_ok(status == FR_EINVAL && data == NULL, "from_arrays refuses 0 samples (%s)", err.msg);
    status = fr_dataset_from_arrays(x, labels, 3, 1, -1, 1, &data, &err);
    tap_ok(status == FR_EINVAL, "from_arrays refuses a negative dimension");
}

/* 20 samples labelled 0..9 twice; sample i's floats are {i, i + 0.5}. */
static fr_dataset *two_of_each_class(void) {
    float x[40];
    int32_t labels[20];
    for (int i = 0; i < 20; i++) {
        x[2 * i] = (float)i;
        x[2 * i + 1] = (float)i + 0.5f;
        labels[i] = i % 10;
    }
    fr_dataset *data = NULL;
    fr_error err;
    if (fr_dataset_from_arrays(x, labels, 20, 2, 1, 1, &data, &err) != FR_OK)
        exit(2);
    return data;
}

/* The dataset holds exactly the samples of `classes` (a 10-entry mask), in order, rows intact. */
static bool holds_exactly(const fr_dataset *data, const bool classes[10]) {
    int expected = 0;
    for (int i = 0; i < 20; i++) {
        if (!classes[i % 10])
            continue;
        if (expected >= fr_dataset_size(data))
            return false;
        const float *row = fr_dataset_images(data) + 2 * expected;
        if (fr_dataset_labels(data)[expected] != i % 10 || row[0] != (float)i ||
            row[1] != (float)i + 0.5f)
            return false;
        expected++;
    }
    return expected == fr_dataset_size(data);
}

static void test_keep_classes(void) {
    static const struct {
        const char *spec;
        bool classes[10];
        int class_count;
    } cases[] = {
        {"0-4", {1, 1, 1, 1, 1, 0, 0, 0, 0, 0}, 5},
        {"5,6,7,8,9", {0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, 10},
        {"0-2,7", {1, 1, 1, 0, 0, 0, 0, 1, 0, 0}, 8},
        {"3", {0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 4},
        {" 1 - 2 , 9 ", {0, 1, 1, 0, 0, 0, 0, 0, 0, 1}, 10},
        {"8-8,2,2", {0, 0, 1, 0, 0, 0, 0, 0, 1, 0}, 9},
        {"0-255", {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 10},
    };
    fr_error err = {0};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fr_dataset *data = two_of_each_class();
        int status = fr_dataset_keep_classes(data, cases[c].spec, &err);
        tap_ok(status == FR_OK && holds_exactly(data, cases[c].classes),
               "--classes '%s' keeps exactly those samples, in order, labels unchanged",
               cases[c].spec);
        tap_ok(fr_dataset_class_count(data) == cases[c].class_count,
               "after --classes '%s' the class count is %d (largest kept label + 1)",
               cases[c].spec, cases[c].class_count);
        fr_dataset_free(data);
    }

    fr_dataset *data = two_of_each_class();
    fr_dataset_keep_classes(data, "5-9", &err);
    int status = fr_dataset_keep_classes(data, "0-6", &err);
    bool kept_5_6[10] = {0, 0, 0, 0, 0, 1, 1, 0, 0, 0};
    tap_ok(status == FR_OK && holds_exactly(data, kept_5_6),
           "filtering twice keeps the intersection");
    fr_dataset_free(data);

    data = two_of_each_class();
    expect_classes_failure(data, "3-x", "a class number after '-'");
    expect_classes_failure(data, "5-3", "empty range 5-3");
    expect_classes_failure(data, "", "empty");
    expect_classes_failure(data, "1,,2", "expected a class number at ',2'");
    expect_classes_failure(data, "1,", "missing a class number");
    expect_classes_failure(data, "1-", "missing a class number after '-'");
    expect_classes_failure(data, "65536", "class 65536 is out of range 0-65535");
    expect_classes_failure(data, "256", "no sample has one of these classes");
    expect_classes_failure(data, "99999999999999999999", "out of range");
    expect_classes_failure(data, "1;2", "expected ',' or '-' at ';2'");
    expect_classes_failure(data, "-1", "expected a class number at '-1'");
    expect_classes_failure(data, "10-20", "no sample has one of these classes");
    tap_ok(holds_exactly(data, (bool[10]){1, 1, 1, 1, 1, 1, 1, 1, 1, 1}),
           "after the refused filters every sample is still there, in order");
    fr_dataset_free(data);
}

static void test_fashion_mnist(void) {
    DIR *dir = opendir(FASHION_MNIST_DIR);
    if (!dir) {
        for (int i = 0; i < 4; i++)
            tap_skip(FASHION_MNIST_DIR " is absent");
        return;
    }
    closedir(dir);

    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    fr_dataset *train = NULL, *test = NULL;
    fr_error err = {0};
    int status = fr_dataset_load_dir(FASHION_MNIST_DIR, true, &train, &err);
    clock_gettime(CLOCK_MONOTONIC, &end);
    tap_diag("Fashion-MNIST train set loaded in %.2f s",
             (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) * 1e-9);
    tap_ok(status == FR_OK && fr_dataset_size(train) == 60000 &&
               train->shape.d[0] == 1 && train->shape.d[1] == 28 && train->shape.d[2] == 28 &&
               fr_dataset_class_count(train) == 10,
           "Fashion-MNIST train: 60000 samples of 1x28x28 in 10 classes (%s)",
           status ? err.msg : "ok");
    tap_ok(status == FR_OK && in_unit_interval(train), "Fashion-MNIST train pixels lie in [0, 1]");
    status = fr_dataset_load_dir(FASHION_MNIST_DIR, false, &test, &err);
    tap_ok(status == FR_OK && fr_dataset_size(test) == 10000 &&
               fr_dataset_sample_numel(test) == 784 && fr_dataset_class_count(test) == 10,
           "Fashion-MNIST test: 10000 samples of 784 pixels in 10 classes (%s)",
           status ? err.msg : "ok");
    status = status == FR_OK ? fr_dataset_keep_classes(test, "0-4", &err) : status;
    tap_ok(status == FR_OK && fr_dataset_size(test) == 5000,
           "Fashion-MNIST test keeps its 5000 samples of classes 0-4");
    fr_dataset_free(train);
    fr_dataset_free(test);
}

static void remove_temp_dir(void) {
    DIR *dir = opendir(temp_dir);
    if (!dir)
        return;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
            unlink(temp_path(entry->d_name));
    }
    closedir(dir);
    rmdir(temp_dir);
}

int main(void) {
    tap_plan(96); /* every check below, counted: fewer or more fails the test */
    snprintf(temp_dir, sizeof temp_dir, "/tmp/frost-test-idx-XXXXXX");
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    fill_pixels(small_pixels, sizeof small_pixels, 42);
    size_t baseline = fr_allocated_bytes();

    test_loading();
    test_load_dir();
    test_rejections();
    test_gzip_damage();
    test_read_limit();
    test_from_arrays();
    test_keep_classes();
    test_fashion_mnist();

    tap_ok(fr_allocated_bytes() == baseline,
           "every dataset and buffer was given back, failures included (%zu bytes held)",
           fr_allocated_bytes() - baseline);
    remove_temp_dir();
    return tap_done();
}
