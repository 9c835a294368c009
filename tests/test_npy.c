/*
 * test_npy.c - NumPy datasets (src/formats/npy.c, src/formats/data.c) as a specification:
 * the .npy header as numpy.save writes it (versions 1.0, 2.0, 3.0) and the
 * variants a Python dict literal allows, images of every accepted dtype and
 * layout, labels of every integer dtype, the same data as IDX giving the same
 * dataset, the directory layout, --normalize's arithmetic, and the refusal,
 * with one line naming the file and the problem, of every kind of bad input.
 *
 * The files are written here, by a small C writer, so no numpy is needed.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "tap.h"
#include "test_files.h"

#include <math.h>
#include <zlib.h>

/* ------------------------------------------------------------ file makers */

static void write_bytes(const char *path, const void *bytes, size_t size) {
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(bytes, 1, size, file) != size || fclose(file) != 0) {
        printf("Bail out! cannot write %s\n", path);
        exit(2);
    }
}

static void write_gzip(const char *path, const void *bytes, size_t size) {
    gzFile file = gzopen(path, "wb");
    if (!file || gzwrite(file, bytes, (unsigned)size) != (int)size || gzclose(file) != Z_OK) {
        printf("Bail out! cannot write %s\n", path);
        exit(2);
    }
}

/* A .npy file image around a header dict text, as numpy.save lays it out:
 * magic, version, length, the dict padded with spaces to a multiple of 64
 * bytes and a newline, then the body.  *size gets its length; free it. */
static unsigned char *npy_image(int version, const char *dict, const void *body,
                                size_t body_bytes, size_t *size) {
    size_t length_bytes = version == 1 ? 2 : 4, prefix = 8 + length_bytes;
    size_t text = strlen(dict) + 1;
    size_t padding = (64 - (prefix + text) % 64) % 64;
    size_t header = text + padding;
    *size = prefix + header + body_bytes;
    unsigned char *bytes = malloc(*size);
    memcpy(bytes, "\x93NUMPY", 6);
    bytes[6] = (unsigned char)version;
    bytes[7] = 0;
    for (size_t i = 0; i < length_bytes; i++)
        bytes[8 + i] = (unsigned char)(header >> (8 * i));
    memcpy(bytes + prefix, dict, strlen(dict));
    memset(bytes + prefix + strlen(dict), ' ', padding);
    bytes[prefix + header - 1] = '\n';
    if (body_bytes)
        memcpy(bytes + prefix + header, body, body_bytes);
    return bytes;
}

/* NAME in the test directory holding a .npy of this dtype and shape text;
 * the path returned is in_test_dir's, valid for its next 7 calls. */
static const char *write_npy(const char *name, int version, const char *descr, const char *shape,
                             const void *body, size_t body_bytes) {
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr,
             shape);
    size_t size;
    unsigned char *bytes = npy_image(version, dict, body, body_bytes, &size);
    const char *path = in_test_dir(name);
    write_bytes(path, bytes, size);
    free(bytes);
    return path;
}

static void put_be32(unsigned char *at, uint32_t value) {
    at[0] = (unsigned char)(value >> 24);
    at[1] = (unsigned char)(value >> 16);
    at[2] = (unsigned char)(value >> 8);
    at[3] = (unsigned char)value;
}

/* ------------------------------------------------------------ the data */

/* 4 samples, 3 channels of 2 x 3 pixels (NCHW), and their labels. */
enum { N = 4, C = 3, H = 2, W = 3, NUMEL = C * H * W };
static unsigned char pixels_nchw[N * NUMEL], pixels_nhwc[N * NUMEL];
static const uint8_t labels[N] = {7, 0, 255, 3};

static void make_pixels(void) {
    static const unsigned char edges[] = {0, 1, 128, 254, 255};
    uint32_t seed = 12345;
    for (size_t i = 0; i < sizeof pixels_nchw; i++) {
        seed = seed * 1664525u + 1013904223u;
        pixels_nchw[i] = i < sizeof edges ? edges[i] : (unsigned char)(seed >> 24);
    }
    for (int s = 0; s < N; s++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    pixels_nhwc[((s * H + y) * W + x) * C + c] =
                        pixels_nchw[((s * C + c) * H + y) * W + x];
}

/* The labels as an integer array of `bytes` bytes each. */
static size_t labels_as(int bytes, unsigned char *out) {
    for (int i = 0; i < N; i++) {
        uint64_t v = labels[i];
        for (int b = 0; b < bytes; b++)
            out[i * bytes + b] = (unsigned char)(v >> (8 * b));
    }
    return (size_t)N * bytes;
}

static const char *good_labels(void) {
    unsigned char body[N * 8];
    size_t bytes = labels_as(8, body);
    return write_npy("y-i8.npy", 1, "<i8", "(4,)", body, bytes);
}

/* ---------------------------------------------------------------- checks */

static bool pixels_match(const fr_dataset *data, const unsigned char *pixels, size_t count) {
    const float *x = fr_dataset_images(data);
    for (size_t i = 0; i < count; i++)
        if (x[i] != (float)pixels[i] / 255.0f)
            return false;
    return true;
}

static bool has_shape(const fr_dataset *data, int n, int c, int h, int w) {
    int dc, dh, dw;
    fr_dataset_sample_shape(data, &dc, &dh, &dw);
    return fr_dataset_size(data) == n && dc == c && dh == h && dw == w;
}

/* The message names `path` and holds `piece`, on one line. */
static bool names(const fr_error *err, const char *path, const char *piece) {
    return strchr(err->msg, '\n') == NULL && (!path || strstr(err->msg, path)) &&
           strstr(err->msg, piece);
}

/* fr_npy_parse must refuse the bytes with a message naming the file and the problem. */
static void expect_parse_failure(const char *what, const unsigned char *bytes, size_t size,
                                 const char *piece) {
    fr_npy array;
    fr_error err = {0};
    int status = fr_npy_parse("bad.npy", bytes, size, &array, &err);
    tap_ok(status == FR_EFORMAT && err.status == FR_EFORMAT && names(&err, "bad.npy: ", piece),
           "%s is refused (%s)", what, err.msg);
}

static void expect_header_failure(const char *what, int version, const char *dict,
                                  const char *piece) {
    size_t size;
    unsigned char *bytes = npy_image(version, dict, "\0\0\0\0\0\0\0\0", 8, &size);
    expect_parse_failure(what, bytes, size, piece);
    free(bytes);
}

/* Loading must fail with `status`, *out NULL, and a message naming `file` and `piece`. */
static void expect_load_failure(const char *what, const char *x_path, const char *y_path,
                                fr_layout layout, int status, const char *file,
                                const char *piece) {
    fr_error err = {0};
    fr_dataset *data = (fr_dataset *)&err; /* must be reset to NULL */
    int got = fr_dataset_load_npy(x_path, y_path, layout, &data, &err);
    tap_ok(got == status && data == NULL && names(&err, file, piece), "%s is refused (%s)",
           what, err.msg);
    if (got == FR_OK)
        fr_dataset_free(data);
}

/* ------------------------------------------------------------------ parser */

static void test_header_versions(void) {
    static const float body[6] = {1, 2, 3, 4, 5, 6};
    for (int version = 1; version <= 3; version++) {
        size_t size;
        unsigned char *bytes = npy_image(
            version, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", body,
            sizeof body, &size);
        fr_npy array;
        fr_error err = {0};
        int status = fr_npy_parse("v.npy", bytes, size, &array, &err);
        size_t header_end = size - sizeof body;
        tap_ok(status == FR_OK && array.kind == 'f' && array.item_bytes == 4 &&
                   array.ndim == 2 && array.shape[0] == 2 && array.shape[1] == 3 &&
                   array.count == 6 && array.data == bytes + header_end &&
                   (header_end % 64) == 0,
               "format %d.0 (%zu-byte header length) parses: <f4, shape (2, 3), data after a "
               "64-byte aligned header (%s)",
               version, version == 1 ? (size_t)2 : (size_t)4, status ? err.msg : "ok");
        free(bytes);
    }

    /* What a Python dict literal allows, and numpy's own readers accept. */
    static const struct {
        const char *what, *dict;
        int ndim;
        uint64_t first;
        size_t count;
    } variants[] = {
        {"double quotes, keys in another order, no trailing comma",
         "{\"shape\": (8,), \"fortran_order\": False, \"descr\": \"|u1\"}", 1, 8, 8},
        {"blanks and line breaks between the tokens",
         "{ 'descr' :'|u1' ,\n 'fortran_order':False,'shape':( 2 , 4 , ) }", 2, 2, 8},
        {"Python 2's long suffix on dimensions", "{'descr': '|u1', 'fortran_order': False, "
                                                 "'shape': (2L, 4L), }",
         2, 2, 8},
        {"a 0-d array, shape ()", "{'descr': '<i8', 'fortran_order': False, 'shape': (), }", 0,
         0, 1},
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        size_t size;
        unsigned char *bytes = npy_image(1, variants[i].dict, "\0\0\0\0\0\0\0\0", 8, &size);
        fr_npy array;
        fr_error err = {0};
        int status = fr_npy_parse("variant.npy", bytes, size, &array, &err);
        tap_ok(status == FR_OK && array.ndim == variants[i].ndim &&
                   (array.ndim == 0 || array.shape[0] == variants[i].first) &&
                   array.count == variants[i].count,
               "header with %s parses (%s)", variants[i].what, status ? err.msg : "ok");
        free(bytes);
    }

    fr_npy array;
    char text[64];
    fr_error err = {0};
    size_t size;
    unsigned char *bytes = npy_image(
        1, "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1, 2, 1), }", "ab", 2, &size);
    fr_npy_parse("s.npy", bytes, size, &array, &err);
    fr_npy_shape_string(&array, text, sizeof text);
    tap_ok(strcmp(text, "(1, 1, 2, 1)") == 0, "shapes print as numpy prints them: %s", text);
    free(bytes);
    bytes = npy_image(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", "ab", 2,
                      &size);
    fr_npy_parse("s.npy", bytes, size, &array, &err);
    fr_npy_shape_string(&array, text, sizeof text);
    tap_ok(strcmp(text, "(2,)") == 0, "a 1-D shape prints with its comma: %s", text);
    free(bytes);
}

static void test_header_rejections(void) {
    size_t size;
    unsigned char *good = npy_image(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                                    "\0\0\0\0\0\0\0\0", 8, &size);
    unsigned char copy[512];

    expect_parse_failure("an empty file", good, 0, "empty file");
    expect_parse_failure("a file without the magic", (const unsigned char *)"PK\3\4 zip", 9,
                         "not a NumPy .npy file");
    expect_parse_failure("a file cut inside the magic", good, 4, "not a NumPy .npy file");
    expect_parse_failure("a file cut after the version", good, 9, "truncated header");
    memcpy(copy, good, size);
    copy[6] = 4;
    expect_parse_failure("format version 4.0", copy, size, "version 4.0, expected 1.0, 2.0 or 3.0");
    copy[6] = 1;
    copy[7] = 1;
    expect_parse_failure("format version 1.1", copy, size, "version 1.1");
    memcpy(copy, good, size);
    copy[8] = 0xff;
    copy[9] = 0x7f;
    expect_parse_failure("a header length past the end of the file", copy, size,
                         "truncated header");
    expect_parse_failure("a body 3 bytes short", good, size - 3,
                         "truncated: expected 8 bytes of array data, found 5");
    memcpy(copy, good, size);
    memcpy(copy + size, "xyz", 3);
    expect_parse_failure("a body with 3 trailing bytes", copy, size + 3,
                         "3 trailing bytes after the 8 bytes of array data");
    free(good);

    expect_header_failure("fortran_order True", 1,
                          "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }",
                          "fortran_order is True");
    expect_header_failure("a big-endian float32", 1,
                          "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                          "dtype '>f4' is big-endian");
    expect_header_failure("a big-endian int64", 2,
                          "{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }",
                          "dtype '>i8' is big-endian");
    expect_header_failure("float16", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }",
                          "dtype '<f2' is not supported");
    expect_header_failure("complex64", 1,
                          "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
                          "dtype '<c8' is not supported");
    expect_header_failure("an object array (a pickle)", 1,
                          "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                          "dtype '|O' is not supported");
    expect_header_failure("a structured dtype", 1,
                          "{'descr': [('x', '<f4'), ('y', '<f4')], 'fortran_order': False, "
                          "'shape': (1,), }",
                          "structured dtype");
    expect_header_failure("a header without 'shape'", 1,
                          "{'descr': '<f4', 'fortran_order': False, }", "has no 'shape'");
    expect_header_failure("a header without 'descr'", 3,
                          "{'fortran_order': False, 'shape': (2,), }", "has no 'descr'");
    expect_header_failure("an unknown key", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
                          "header key 'extra' is not one of");
    expect_header_failure("a key given twice", 1,
                          "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
                          "header key 'descr' appears twice");
    expect_header_failure("a shape that is a number, (2)", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }",
                          "is not a tuple");
    expect_header_failure("a shape that is a list", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': [2], }",
                          "expected a tuple");
    expect_header_failure("a negative dimension", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
                          "expected a dimension");
    expect_header_failure("a shape whose element count overflows", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': "
                          "(4611686018427387904, 4611686018427387904), }",
                          "overflows");
    expect_header_failure("a dimension beyond 2^62", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': "
                          "(99999999999999999999,), }",
                          "larger than 2^62");
    expect_header_failure("33 dimensions", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,"
                          "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,2), }",
                          "more than 32 dimensions");
    expect_header_failure("fortran_order that is not True or False", 1,
                          "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }",
                          "expected True or False");
    expect_header_failure("a header that is not a dict", 1, "('<f4', False, (2,))",
                          "expected '{'");
    expect_header_failure("a string with an escape", 1,
                          "{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2,), }",
                          "without escapes");
    expect_header_failure("a missing comma between entries", 1,
                          "{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }",
                          "expected ',' or '}'");
    expect_header_failure("text after the dict", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } # hi",
                          "only blanks after the header's '}'");
    expect_header_failure("a dict never closed", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ",
                          "a quoted key or '}'");

    /* The message never carries raw header bytes (a newline would break the one line). */
    expect_header_failure("an unknown key with a newline in it", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'a\nb': 1}",
                          "without escapes or line breaks");
    expect_header_failure("an unknown key with control bytes", 1,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'a\tb\rc': 1}",
                          "header key 'a?b?c' is not one of");
}

/* ----------------------------------------------------------------- datasets */

static void test_images(void) {
    fr_error err = {0};
    fr_dataset *data = NULL;
    char y[256];
    snprintf(y, sizeof y, "%s", good_labels());

    /* uint8, (N, H, W): one channel, p / 255 as for IDX. */
    const char *x = write_npy("x-u8-nhw.npy", 1, "|u1", "(4, 6, 3)", pixels_nchw, sizeof pixels_nchw);
    int status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &data, &err);
    tap_ok(status == FR_OK && has_shape(data, N, 1, 6, 3) &&
               pixels_match(data, pixels_nchw, sizeof pixels_nchw) &&
               fr_dataset_images(data)[0] == 0.0f && fr_dataset_images(data)[4] == 1.0f,
           "uint8 (N, H, W) loads as N x 1 x H x W, each pixel exactly p / 255 (%s)",
           status ? err.msg : "ok");
    tap_ok(status == FR_OK && labels_equal(fr_dataset_labels(data), labels, N) &&
               strcmp(fr_dataset_images_path(data), x) == 0 &&
               strcmp(fr_dataset_labels_path(data), y) == 0,
           "the labels come in order, and the dataset names its two files");
    fr_dataset_free(data);
    data = NULL;
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NHWC, &data, &err);
    tap_ok(status == FR_OK && has_shape(data, N, 1, 6, 3) &&
               pixels_match(data, pixels_nchw, sizeof pixels_nchw),
           "the layout does not touch a 3-D (N, H, W) array");
    fr_dataset_free(data);

    /* 4-D: NCHW taken as it is, NHWC of the same pixels transposed to it. */
    x = write_npy("x-u8-nchw.npy", 2, "|u1", "(4, 3, 2, 3)", pixels_nchw, sizeof pixels_nchw);
    fr_dataset *nchw = NULL, *nhwc = NULL;
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &nchw, &err);
    tap_ok(status == FR_OK && has_shape(nchw, N, C, H, W) &&
               pixels_match(nchw, pixels_nchw, sizeof pixels_nchw),
           "uint8 (N, C, H, W) loads as it is (%s)", status ? err.msg : "ok");
    x = write_npy("x-u8-nhwc.npy", 3, "|u1", "(4, 2, 3, 3)", pixels_nhwc, sizeof pixels_nhwc);
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NHWC, &nhwc, &err);
    tap_ok(status == FR_OK && has_shape(nhwc, N, C, H, W) && nchw &&
               memcmp(fr_dataset_images(nhwc), fr_dataset_images(nchw),
                      sizeof(float) * N * NUMEL) == 0,
           "the same pixels as (N, H, W, C) with the NHWC layout give the NCHW dataset bit for "
           "bit (%s)",
           status ? err.msg : "ok");
    /* By hand: sample 1, channel 2, row 1, column 0 is NHWC element ((1*2+1)*3+0)*3+2. */
    tap_ok(nhwc && fr_dataset_images(nhwc)[1 * NUMEL + 2 * H * W + 1 * W + 0] ==
                       (float)pixels_nhwc[((1 * 2 + 1) * 3 + 0) * 3 + 2] / 255.0f,
           "NHWC element (n=1, h=1, w=0, c=2) lands at NCHW (1, 2, 1, 0)");
    fr_dataset_free(nhwc);
    nhwc = NULL;
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &nhwc, &err);
    tap_ok(status == FR_OK && has_shape(nhwc, N, 2, 3, 3),
           "the NHWC file read as NCHW is 2 x 3 x 3 (the model's shape check catches it)");
    fr_dataset_free(nhwc);

    /* float32 and float64: taken as they are, whatever their range. */
    float f32[N * NUMEL];
    double f64[N * NUMEL];
    for (int i = 0; i < N * NUMEL; i++) {
        f32[i] = (float)(i - 30) * 0.37f;
        f64[i] = (double)f32[i];
    }
    x = write_npy("x-f4.npy", 1, "<f4", "(4, 3, 2, 3)", f32, sizeof f32);
    fr_dataset *loaded = NULL;
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &loaded, &err);
    tap_ok(status == FR_OK && has_shape(loaded, N, C, H, W) &&
               memcmp(fr_dataset_images(loaded), f32, sizeof f32) == 0,
           "float32 values are taken as they are, negative and beyond 1 included (%s)",
           status ? err.msg : "ok");
    fr_dataset_free(loaded);
    loaded = NULL;
    x = write_npy("x-f8.npy", 1, "<f8", "(4, 3, 2, 3)", f64, sizeof f64);
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &loaded, &err);
    tap_ok(status == FR_OK && memcmp(fr_dataset_images(loaded), f32, sizeof f32) == 0,
           "float64 values become the nearest float32 (%s)", status ? err.msg : "ok");
    fr_dataset_free(loaded);
    loaded = NULL;

    /* float32 NHWC transposes as uint8 does. */
    float f32_nhwc[N * NUMEL];
    for (int s = 0; s < N; s++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < H * W; p++)
                f32_nhwc[(s * H * W + p) * C + c] = f32[(s * C + c) * H * W + p];
    x = write_npy("x-f4-nhwc.npy", 1, "<f4", "(4, 2, 3, 3)", f32_nhwc, sizeof f32_nhwc);
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NHWC, &loaded, &err);
    tap_ok(status == FR_OK && memcmp(fr_dataset_images(loaded), f32, sizeof f32) == 0,
           "float32 NHWC gives the NCHW values bit for bit (%s)", status ? err.msg : "ok");
    fr_dataset_free(loaded);
    loaded = NULL;

    /* (N, features): a sample of F x 1 x 1, what a linear first layer takes. */
    x = write_npy("x-features.npy", 1, "<f4", "(4, 18)", f32, sizeof f32);
    status = fr_dataset_load_npy(x, y, FR_LAYOUT_NHWC, &loaded, &err);
    tap_ok(status == FR_OK && has_shape(loaded, N, 18, 1, 1) &&
               memcmp(fr_dataset_images(loaded), f32, sizeof f32) == 0,
           "a 2-D (N, features) array gives samples of 18 x 1 x 1 (%s)", status ? err.msg : "ok");
    fr_dataset_free(loaded);
    fr_dataset_free(nchw);
}

static void test_label_dtypes(void) {
    static const char *const descrs[] = {"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8"};
    static const int widths[] = {1, 1, 2, 2, 4, 4, 8, 8};
    char x[256];
    snprintf(x, sizeof x, "%s",
             write_npy("x-small.npy", 1, "|u1", "(4, 6, 3)", pixels_nchw, sizeof pixels_nchw));
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
        unsigned char body[N * 8];
        size_t bytes = labels_as(widths[i], body);
        /* 255 does not fit int8: that file holds 127 there. */
        bool int8 = strcmp(descrs[i], "|i1") == 0;
        if (int8)
            body[2] = 127;
        const char *y = write_npy("y.npy", 1, descrs[i], "(4,)", body, bytes);
        fr_dataset *data = NULL;
        fr_error err = {0};
        int status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &data, &err);
        uint8_t want[N];
        memcpy(want, labels, N);
        if (int8)
            want[2] = 127;
        tap_ok(status == FR_OK && labels_equal(fr_dataset_labels(data), want, N),
               "labels of dtype %s load (%s)", descrs[i], status ? err.msg : "ok");
        fr_dataset_free(data);
    }
}

/* The same pixels and labels as an IDX pair and as .npy files: the same dataset. */
static void test_same_as_idx(void) {
    unsigned char images[16 + N * NUMEL], idx_labels[8 + N];
    put_be32(images, 0x00000803);
    put_be32(images + 4, N);
    put_be32(images + 8, 6);
    put_be32(images + 12, 3);
    memcpy(images + 16, pixels_nchw, sizeof pixels_nchw);
    put_be32(idx_labels, 0x00000801);
    put_be32(idx_labels + 4, N);
    memcpy(idx_labels + 8, labels, N);
    write_bytes(in_test_dir("images-idx3-ubyte"), images, sizeof images);
    write_bytes(in_test_dir("labels-idx1-ubyte"), idx_labels, sizeof idx_labels);
    const char *y = good_labels();
    const char *x = write_npy("x-u8-n1hw.npy", 1, "|u1", "(4, 1, 6, 3)", pixels_nchw,
                              sizeof pixels_nchw);
    fr_dataset *idx = NULL, *npy = NULL;
    fr_error err = {0};
    int status = fr_dataset_load_idx(in_test_dir("images-idx3-ubyte"),
                                     in_test_dir("labels-idx1-ubyte"), &idx, &err);
    if (status == FR_OK)
        status = fr_dataset_load_npy(x, y, FR_LAYOUT_NCHW, &npy, &err);
    tap_ok(status == FR_OK && has_shape(npy, N, 1, 6, 3) && has_shape(idx, N, 1, 6, 3) &&
               memcmp(fr_dataset_images(idx), fr_dataset_images(npy),
                      sizeof(float) * N * NUMEL) == 0 &&
               memcmp(fr_dataset_labels(idx), fr_dataset_labels(npy), N * sizeof(int32_t)) == 0,
           "uint8 (N, 1, H, W) with int64 labels is the IDX dataset of the same bytes, bit for "
           "bit (%s)",
           status ? err.msg : "ok");
    fr_dataset_free(idx);
    fr_dataset_free(npy);
}

static void test_dataset_rejections(void) {
    const char *y = good_labels();
    char y_path[256], x_path[256];
    snprintf(y_path, sizeof y_path, "%s", y);
    const char *x = write_npy("x-good.npy", 1, "|u1", "(4, 3, 2, 3)", pixels_nchw,
                              sizeof pixels_nchw);
    snprintf(x_path, sizeof x_path, "%s", x);
    unsigned char body[4096] = {0};
    const char *bad;

    /* 2-D int32/int64/uint16 arrays are token rows; as images they are refused. */
    bad = write_npy("x-i8.npy", 1, "<i8", "(4, 3, 2, 3)", body, 4 * 18 * 8);
    expect_load_failure("images of dtype int64", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "images of dtype '<i8'; frost reads uint8 (scaled to [0, 1]), float32");
    bad = write_npy("x-u2.npy", 1, "<u2", "(4, 3, 6)", body, 4 * 18 * 2);
    expect_load_failure("images of dtype uint16", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "images of dtype '<u2'");
    bad = write_npy("x-i2.npy", 1, "<i2", "(4, 18)", body, 4 * 18 * 2);
    expect_load_failure("token rows of dtype int16", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "images of dtype '<i2'");
    bad = write_npy("x-1d.npy", 1, "|u1", "(4,)", body, 4);
    expect_load_failure("1-D images", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "images of shape (4,); expected (N, C, H, W)");
    bad = write_npy("x-5d.npy", 1, "|u1", "(4, 1, 3, 2, 3)", body, 72);
    expect_load_failure("5-D images", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "images of shape (4, 1, 3, 2, 3); expected");
    bad = write_npy("x-zero.npy", 1, "|u1", "(4, 0, 3)", body, 0);
    expect_load_failure("images with a zero dimension", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT,
                        bad, "images of shape (4, 0, 3) have a zero dimension");
    bad = write_npy("x-five.npy", 1, "|u1", "(5, 3, 2, 3)", body, 5 * NUMEL);
    char both[600];
    snprintf(both, sizeof both, "%s has 5 images but %s has 4 labels", bad, y_path);
    expect_load_failure("5 images with 4 labels", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, NULL,
                        both);
    bad = write_npy("x-short.npy", 1, "|u1", "(4, 3, 2, 3)", pixels_nchw, sizeof pixels_nchw - 1);
    expect_load_failure("images one byte short", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "truncated: expected 72 bytes of array data, found 71");
    bad = write_npy("x-long.npy", 1, "|u1", "(4, 3, 2, 3)", body, sizeof pixels_nchw + 2);
    expect_load_failure("images with 2 trailing bytes", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT,
                        bad, "2 trailing bytes after the 72 bytes of array data");
    bad = write_npy("x-be.npy", 1, ">f4", "(4, 18)", body, 4 * 18 * 4);
    expect_load_failure("big-endian float32 images", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "dtype '>f4' is big-endian");

    float f32[N * NUMEL] = {0};
    f32[NUMEL * 2 + 5] = NAN;
    bad = write_npy("x-nan.npy", 1, "<f4", "(4, 18)", f32, sizeof f32);
    expect_load_failure("float32 images holding NaN", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT,
                        bad, "sample 2 holds nan; images must be finite");
    double f64[N * NUMEL] = {0};
    f64[NUMEL * 3] = -INFINITY;
    bad = write_npy("x-inf.npy", 1, "<f8", "(4, 18)", f64, sizeof f64);
    expect_load_failure("float64 images holding -inf", bad, y_path, FR_LAYOUT_NCHW, FR_EFORMAT,
                        bad, "sample 3 holds -inf");
    f64[NUMEL * 3] = 1e300;
    bad = write_npy("x-huge.npy", 1, "<f8", "(4, 18)", f64, sizeof f64);
    expect_load_failure("float64 images beyond float32's range", bad, y_path, FR_LAYOUT_NCHW,
                        FR_EFORMAT, bad, "sample 3 holds 1e+300; images must be finite float32");

    bad = write_npy("y-f4.npy", 1, "<f4", "(4,)", body, 16);
    expect_load_failure("float labels", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "labels of dtype '<f4'; labels must be integers");
    bad = write_npy("y-2d.npy", 1, "<i8", "(4, 1)", body, 32);
    expect_load_failure("labels of shape (N, 1)", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "labels of shape (4, 1); labels must be 1-D, shape (N,)");
    bad = write_npy("y-empty.npy", 1, "<i8", "(0,)", body, 0);
    expect_load_failure("no labels at all", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "shape (0,) holds no labels");
    int64_t wide[N] = {1, 2, -1, 3};
    bad = write_npy("y-neg.npy", 1, "<i8", "(4,)", wide, sizeof wide);
    expect_load_failure("a negative label", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "label -1 (sample 2) is out of range 0-2147483647");
    wide[2] = 2147483648LL;
    bad = write_npy("y-2g.npy", 1, "<i8", "(4,)", wide, sizeof wide);
    expect_load_failure("label 2^31", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT, bad,
                        "label 2147483648 (sample 2) is out of range 0-2147483647");
    wide[2] = 999;
    const char *wide_path = write_npy("y-999.npy", 1, "<i8", "(4,)", wide, sizeof wide);
    fr_dataset *thousand = NULL;
    fr_error wide_err = {0};
    int wide_status = fr_dataset_load_npy(x_path, wide_path, FR_LAYOUT_NCHW, &thousand, &wide_err);
    tap_ok(wide_status == FR_OK && fr_dataset_labels(thousand)[2] == 999 &&
               fr_dataset_class_count(thousand) == 1000,
           "a class id above 255 (999: ImageNet's 1000 classes) loads as it is (%s)",
           wide_status ? wide_err.msg : "ok");
    fr_dataset_free(thousand);
    uint64_t huge[N] = {0, 0, 0, UINT64_MAX};
    bad = write_npy("y-u8max.npy", 1, "<u8", "(4,)", huge, sizeof huge);
    expect_load_failure("a uint64 label beyond int64", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT,
                        bad, "label 18446744073709551615 (sample 3) is out of range 0-2147483647");
    int64_t wide_and_more[N + 1] = {1, 2, 3, 4, 5};
    bad = write_npy("y-trail.npy", 1, "<i8", "(4,)", wide_and_more, sizeof wide_and_more);
    expect_load_failure("labels with 8 trailing bytes", x_path, bad, FR_LAYOUT_NCHW, FR_EFORMAT,
                        bad, "8 trailing bytes");
    size_t size;
    unsigned char *fortran = npy_image(
        1, "{'descr': '<i8', 'fortran_order': True, 'shape': (4,), }", wide, sizeof wide, &size);
    write_bytes(in_test_dir("y-fortran.npy"), fortran, size);
    free(fortran);
    expect_load_failure("labels in Fortran order", x_path, in_test_dir("y-fortran.npy"),
                        FR_LAYOUT_NCHW, FR_EFORMAT, "y-fortran.npy", "fortran_order is True");
    expect_load_failure("a missing image file", in_test_dir("none.npy"), y_path, FR_LAYOUT_NCHW,
                        FR_EIO, "none.npy", "no such file");
    write_bytes(in_test_dir("empty.npy"), "", 0);
    expect_load_failure("an empty label file", x_path, in_test_dir("empty.npy"), FR_LAYOUT_NCHW,
                        FR_EFORMAT, "empty.npy", "empty file, expected a NumPy .npy file");
    expect_load_failure("an IDX file given as images", in_test_dir("images-idx3-ubyte"), y_path,
                        FR_LAYOUT_NCHW, FR_EFORMAT, "images-idx3-ubyte",
                        "not a NumPy .npy file");
    fr_error err = {0};
    fr_dataset *data = NULL;
    int status = fr_dataset_load_npy(x_path, y_path, (fr_layout)7, &data, &err);
    tap_ok(status == FR_EINVAL && data == NULL && strstr(err.msg, "unknown layout 7"),
           "an unknown layout is refused (%s)", err.msg);
}

/* ------------------------------------------------------------- directories */

static void make_dir(const char *name) {
    if (mkdir(in_test_dir(name), 0700) != 0 && errno != EEXIST) {
        printf("Bail out! mkdir %s: %s\n", name, strerror(errno));
        exit(2);
    }
}

static void clear_dir(const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s", in_test_dir(name));
    DIR *handle = opendir(dir);
    struct dirent *entry;
    char path[600];
    while (handle && (entry = readdir(handle)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        remove(path);
    }
    if (handle)
        closedir(handle);
    rmdir(dir);
}

static void test_directories(void) {
    unsigned char label_body[N * 8];
    size_t label_bytes = labels_as(8, label_body);
    fr_error err = {0};
    fr_dataset *train = NULL, *test = NULL;

    /* A directory of NumPy files; the test split gzip'd. */
    make_dir("npy");
    write_npy("npy/train_x.npy", 1, "|u1", "(4, 2, 3, 3)", pixels_nhwc, sizeof pixels_nhwc);
    write_npy("npy/train_y.npy", 1, "<i8", "(4,)", label_body, label_bytes);
    size_t size;
    unsigned char *bytes = npy_image(
        1, "{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 3, 3), }", pixels_nhwc,
        sizeof pixels_nhwc, &size);
    write_gzip(in_test_dir("npy/test_x.npy.gz"), bytes, size);
    free(bytes);
    bytes = npy_image(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", label_body,
                      label_bytes, &size);
    write_gzip(in_test_dir("npy/test_y.npy.gz"), bytes, size);
    free(bytes);
    int status = fr_dataset_load_dir_as(in_test_dir("npy"), true, FR_LAYOUT_NHWC, &train, &err);
    tap_ok(status == FR_OK && has_shape(train, N, C, H, W) &&
               pixels_match(train, pixels_nchw, sizeof pixels_nchw) &&
               strstr(fr_dataset_images_path(train), "npy/train_x.npy"),
           "load_dir_as reads train_x.npy/train_y.npy, in the layout asked for (%s)",
           status ? err.msg : "ok");
    status = fr_dataset_load_dir_as(in_test_dir("npy"), false, FR_LAYOUT_NHWC, &test, &err);
    tap_ok(status == FR_OK && has_shape(test, N, C, H, W) &&
               pixels_match(test, pixels_nchw, sizeof pixels_nchw) &&
               strstr(fr_dataset_labels_path(test), "npy/test_y.npy.gz"),
           "the test split is test_x.npy.gz/test_y.npy.gz, gzip'd files found and inflated (%s)",
           status ? err.msg : "ok");
    fr_dataset_free(train);
    fr_dataset_free(test);
    train = NULL;
    status = fr_dataset_load_dir(in_test_dir("npy"), true, &train, &err);
    tap_ok(status == FR_OK && has_shape(train, N, 2, 3, 3),
           "load_dir reads the same files as NCHW");
    fr_dataset_free(train);

    /* IDX files beside the .npy ones: NumPy wins. */
    unsigned char images[16 + 4 * 4];
    put_be32(images, 0x00000803);
    put_be32(images + 4, 4);
    put_be32(images + 8, 2);
    put_be32(images + 12, 2);
    memset(images + 16, 9, 16);
    write_bytes(in_test_dir("npy/train-images-idx3-ubyte"), images, sizeof images);
    train = NULL;
    status = fr_dataset_load_dir(in_test_dir("npy"), true, &train, &err);
    tap_ok(status == FR_OK && strstr(fr_dataset_images_path(train), "train_x.npy"),
           "a directory holding both IDX and NumPy files is read as NumPy");
    fr_dataset_free(train);

    /* NumPy data without its test labels: the missing file is named. */
    remove(in_test_dir("npy/test_y.npy.gz"));
    test = (fr_dataset *)&err;
    status = fr_dataset_load_dir(in_test_dir("npy"), false, &test, &err);
    char expected[300];
    snprintf(expected, sizeof expected, "%s[.gz]: no such file", in_test_dir("npy/test_y.npy"));
    tap_ok(status == FR_EIO && test == NULL && strstr(err.msg, expected),
           "a NumPy directory without test_y.npy names it (%s)", err.msg);

    /* Only test files (a directory for frost eval) is NumPy data too. */
    remove(in_test_dir("npy/train_x.npy"));
    write_npy("npy/test_y.npy", 1, "<i8", "(4,)", label_body, label_bytes);
    test = NULL;
    status = fr_dataset_load_dir(in_test_dir("npy"), false, &test, &err);
    tap_ok(status == FR_OK && fr_dataset_size(test) == N,
           "a directory with only test_x.npy and test_y.npy gives the test split (%s)",
           status ? err.msg : "ok");
    fr_dataset_free(test);
    clear_dir("npy");

    /* Neither kind: the IDX file is named, and the NumPy alternative. */
    make_dir("neither");
    train = (fr_dataset *)&err;
    status = fr_dataset_load_dir(in_test_dir("neither"), true, &train, &err);
    tap_ok(status == FR_EIO && train == NULL &&
               strstr(err.msg, "train-images-idx3-ubyte[.gz]: no such file, nor train_x.npy"),
           "a directory with neither names both kinds (%s)", err.msg);
    clear_dir("neither");
}

/* -------------------------------------------------------------- normalise */

static fr_dataset *from_floats(const float *x, int n, int c, int h, int w) {
    int32_t zero_labels[8] = {0};
    fr_dataset *data = NULL;
    fr_error err;
    if (fr_dataset_from_arrays(x, zero_labels, n, c, h, w, &data, &err) != FR_OK)
        exit(2);
    return data;
}

static void test_normalize(void) {
    fr_error err = {0};
    /* One channel, values whose results are exact: (x - 0.5) / 0.25. */
    static const float gray[4] = {0.0f, 0.25f, 0.75f, 1.0f};
    fr_dataset *data = from_floats(gray, 2, 1, 1, 2);
    float mean = 0.5f, std = 0.25f;
    int status = fr_dataset_normalize(data, &mean, &std, 1, &err);
    const float *x = fr_dataset_images(data);
    tap_ok(status == FR_OK && x[0] == -2.0f && x[1] == -1.0f && x[2] == 1.0f && x[3] == 2.0f,
           "one channel: 0, 0.25, 0.75, 1 become -2, -1, 1, 2 with mean 0.5, std 0.25");
    fr_dataset_free(data);

    /* Three channels of 2 pixels, two samples: each channel its own pair. */
    static const float rgb[12] = {1, 2, 10, 20, 100, 200, /* sample 0: c0, c1, c2 */
                                  3, 5, 30, 50, 300, 500};
    data = from_floats(rgb, 2, 3, 1, 2);
    float means[3] = {1, 10, 100}, stds[3] = {0.5f, 2, 50};
    status = fr_dataset_normalize(data, means, stds, 3, &err);
    x = fr_dataset_images(data);
    static const float want[12] = {0, 2, 0, 5, 0, 2, 4, 8, 10, 20, 4, 8};
    tap_ok(status == FR_OK && memcmp(x, want, sizeof want) == 0,
           "three channels, three pairs: (x - mean[c]) / std[c] per channel, every sample (%g %g "
           "%g %g %g %g | %g %g %g %g %g %g)",
           x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11]);
    fr_dataset_free(data);

    data = from_floats(rgb, 2, 3, 1, 2);
    status = fr_dataset_normalize(data, &means[1], &stds[1], 1, &err);
    x = fr_dataset_images(data);
    tap_ok(status == FR_OK && x[0] == -4.5f && x[2] == 0.0f && x[4] == 45.0f && x[11] == 245.0f,
           "one pair applies to every channel");
    fr_dataset_free(data);

    /* torchvision's float32 order: subtract, then divide, not multiply by 1 / std. */
    static const float odd[1] = {0.7f};
    data = from_floats(odd, 1, 1, 1, 1);
    mean = 0.1f;
    std = 0.3f;
    volatile float expected = (0.7f - 0.1f) / 0.3f;
    status = fr_dataset_normalize(data, &mean, &std, 1, &err);
    tap_ok(status == FR_OK && fr_dataset_images(data)[0] == expected,
           "the value is the float32 (x - mean) / std, as torch computes it (%.9g)",
           (double)fr_dataset_images(data)[0]);
    fr_dataset_free(data);

    /* Refusals leave the data untouched. */
    data = from_floats(rgb, 2, 3, 1, 2);
    status = fr_dataset_normalize(data, means, stds, 2, &err);
    tap_ok(status == FR_EINVAL && strstr(err.msg, "2 mean,std pairs for images of 3 channels:") &&
               memcmp(fr_dataset_images(data), rgb, sizeof rgb) == 0,
           "2 pairs for 3 channels are refused, the data untouched (%s)", err.msg);
    float zero_std[3] = {1, 0, 1}, negative_std[3] = {1, 1, -2}, nan_mean[3] = {1, NAN, 1};
    status = fr_dataset_normalize(data, means, zero_std, 3, &err);
    tap_ok(status == FR_EINVAL && strstr(err.msg, "std 0 (pair 2) must be positive") &&
               memcmp(fr_dataset_images(data), rgb, sizeof rgb) == 0,
           "a zero std is refused before any value changes (%s)", err.msg);
    status = fr_dataset_normalize(data, means, negative_std, 3, &err);
    tap_ok(status == FR_EINVAL && strstr(err.msg, "std -2 (pair 3) must be positive"),
           "a negative std is refused (%s)", err.msg);
    status = fr_dataset_normalize(data, nan_mean, stds, 3, &err);
    tap_ok(status == FR_EINVAL && strstr(err.msg, "mean nan (pair 2) is not finite") &&
               memcmp(fr_dataset_images(data), rgb, sizeof rgb) == 0,
           "a NaN mean is refused (%s)", err.msg);
    fr_dataset_free(data);
}

int main(void) {
    tap_plan(105); /* every check below, counted: fewer or more fails the test */
    if (!make_test_dir("npy"))
        return 2;
    make_pixels();
    size_t baseline = fr_allocated_bytes();

    test_header_versions();
    test_header_rejections();
    test_images();
    test_label_dtypes();
    test_same_as_idx();
    test_dataset_rejections();
    test_directories();
    test_normalize();

    tap_ok(fr_allocated_bytes() == baseline,
           "every dataset and buffer was given back, failures included (%zu bytes held)",
           fr_allocated_bytes() - baseline);
    remove_test_dir();
    return tap_done();
}
