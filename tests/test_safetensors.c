/*
 * test_safetensors.c - the safetensors reader and writer (src/formats/safetensors.c).
 *
 * Weights and checkpoints are safetensors files that users bring from
 * elsewhere, so besides the round trip this test feeds the reader one corrupt
 * file per way a file can be wrong and checks each is refused with the right
 * status and a message naming the file, without leaking.  Files are made byte
 * by byte in a private directory under /tmp that is removed at the end.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "tap.h"
#include "test_files.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static void write_bytes(const char *path, const void *bytes, size_t count) {
    FILE *stream = fopen(path, "wb");
    if (!stream || fwrite(bytes, 1, count, stream) != count || fclose(stream) != 0) {
        printf("Bail out! cannot write %s\n", path);
        exit(1);
    }
}

/* A file with the given length field, header text and `data_bytes` bytes of data. */
static void write_file_with_length(const char *path, uint64_t header_length, const char *header,
                                   size_t data_bytes) {
    size_t header_bytes = strlen(header);
    size_t total = 8 + header_bytes + data_bytes;
    unsigned char *bytes = calloc(1, total);
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)(header_length >> (8 * i));
    memcpy(bytes + 8, header, header_bytes);
    for (size_t i = 0; i < data_bytes; i++)
        bytes[8 + header_bytes + i] = (unsigned char)i;
    write_bytes(path, bytes, total);
    free(bytes);
}

static void write_file(const char *path, const char *header, size_t data_bytes) {
    write_file_with_length(path, strlen(header), header, data_bytes);
}

static const char *status_name(int status) {
    return status == FR_EFORMAT ? "FR_EFORMAT" : status == FR_EIO ? "FR_EIO" : "another status";
}

/*
 * The reader refuses `path` with `status`, a message naming the file and
 * containing `problem`, no file object, and nothing left allocated.
 */
static void expect_refused(const char *path, int status, const char *problem,
                           const char *behaviour) {
    fr_st_file *file = NULL;
    fr_error err = {0};
    size_t allocated_before = fr_allocated_bytes();
    int got = fr_st_read(path, &file, &err);
    tap_ok(got == status && err.status == status && file == NULL && strstr(err.msg, path) &&
               strstr(err.msg, problem) && !strchr(err.msg, '\n') &&
               fr_allocated_bytes() == allocated_before,
           "%s is refused with %s and a message naming the file and '%s'", behaviour,
           status_name(status), problem);
    tap_diag("%s", err.msg);
    if (file)
        fr_st_free(file);
}

static void expect_header_refused(const char *name, const char *header, size_t data_bytes,
                                  const char *problem, const char *behaviour) {
    const char *path = in_test_dir(name);
    write_file(path, header, data_bytes);
    expect_refused(path, FR_EFORMAT, problem, behaviour);
}

static int count_temporary_files(void) {
    int count = 0;
    DIR *dir = opendir(test_dir);
    struct dirent *entry;
    while (dir && (entry = readdir(dir)) != NULL)
        count += strstr(entry->d_name, ".tmp.") != NULL;
    if (dir)
        closedir(dir);
    return count;
}


static float float_from_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static bool same_shape(const fr_st_tensor *read, const fr_st_out *written) {
    if (read->ndim != written->ndim)
        return false;
    for (int d = 0; d < written->ndim; d++)
        if (read->shape[d] != written->shape[d])
            return false;
    return true;
}

/* ------------------------------------------------------------ round trip */

static void test_round_trip(void) {
    const char *path = in_test_dir("round-trip.safetensors");
    float weight[6], scalar = float_from_bits(0x3f800001u), conv[8];
    /* Bits a float conversion could lose: a NaN payload, -0, inf, a denormal. */
    uint32_t special_bits[6] = {0x7fc00123u, 0x80000000u, 0x7f800000u, 0x00000001u,
                                0xff800000u, 0x12345678u};
    for (int i = 0; i < 6; i++)
        weight[i] = float_from_bits(special_bits[i]);
    for (int i = 0; i < 8; i++)
        conv[i] = (float)i * 0.25f - 1.0f;
    const char *escaped_name = "odd \"name\" \\ with\nnewline, tab\t and caf\xc3\xa9";
    fr_st_out tensors[] = {
        {.name = "fc1.weight", .ndim = 2, .shape = {2, 3}, .data = weight},
        {.name = escaped_name, .ndim = 4, .shape = {2, 1, 2, 2}, .data = conv},
        {.name = "step", .ndim = 0, .data = &scalar},
        {.name = "empty", .ndim = 2, .shape = {0, 3}, .data = NULL},
    };
    char key0[] = "format", value0[] = "pt", key1[] = "quote\"d \\ key", value1[] = "line\none";
    fr_st_meta meta[] = {{key0, value0}, {key1, value1}};
    size_t allocated_before = fr_allocated_bytes();
    fr_error err = {0};

    int status = fr_st_write(path, tensors, 4, meta, 2, &err);
    tap_ok(status == FR_OK, "fr_st_write writes four tensors and two metadata entries");
    if (status)
        tap_diag("%s", err.msg);
    tap_ok(count_temporary_files() == 0, "a successful write leaves no temporary file");

    unsigned char start[24] = {0};
    FILE *stream = fopen(path, "rb");
    size_t got = stream ? fread(start, 1, sizeof start, stream) : 0;
    if (stream)
        fclose(stream);
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; i--)
        header_length = header_length << 8 | start[i];
    tap_ok(got == sizeof start && header_length % 8 == 0,
           "the header length (%llu) is a multiple of 8, as the reference writer pads it",
           (unsigned long long)header_length);
    tap_ok(memcmp(start + 8, "{\"__metadata__\":", 16) == 0, "__metadata__ comes first");

    fr_st_file *file = NULL;
    status = fr_st_read(path, &file, &err);
    tap_ok(status == FR_OK && file, "the written file reads back (%s)", status ? err.msg : "ok");
    if (!file)
        return;
    tap_ok(file->tensor_count == 4, "it holds four tensors");
    tap_ok(file->tensor_count == 4 && strcmp(file->tensors[0].name, "fc1.weight") == 0 &&
               strcmp(file->tensors[1].name, escaped_name) == 0 &&
               strcmp(file->tensors[2].name, "step") == 0 &&
               strcmp(file->tensors[3].name, "empty") == 0,
           "tensors keep their order and names, including one that needs JSON escaping");
    bool shapes_equal = true, bits_equal = true, aligned = true;
    for (int i = 0; i < 4 && i < file->tensor_count; i++) {
        const fr_st_tensor *tensor = fr_st_find(file, tensors[i].name);
        size_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++)
            numel *= (size_t)tensors[i].shape[d];
        shapes_equal &= tensor && same_shape(tensor, &tensors[i]) && tensor->numel == numel;
        bits_equal &= tensor && (numel == 0 || memcmp(tensor->data, tensors[i].data, numel * 4) == 0);
        aligned &= tensor && (uintptr_t)tensor->data % sizeof(float) == 0;
    }
    tap_ok(shapes_equal, "shapes and element counts come back as written (a scalar and an empty one too)");
    tap_ok(bits_equal, "data comes back bitwise equal (NaN payload, -0, inf, denormal)");
    tap_ok(aligned, "tensor data is float-aligned");
    tap_ok(fr_st_find(file, "missing") == NULL, "fr_st_find returns NULL for a name not in the file");
    const char *format = fr_st_meta_get(file, "format");
    const char *quoted = fr_st_meta_get(file, key1);
    tap_ok(format && strcmp(format, "pt") == 0 && quoted && strcmp(quoted, "line\none") == 0 &&
               file->meta_count == 2,
           "metadata comes back, escaped keys and values included");
    tap_ok(fr_st_meta_get(file, "absent") == NULL, "fr_st_meta_get returns NULL for a missing key");
    tap_ok(strcmp(file->path, path) == 0, "the file remembers its path");
    fr_st_free(file);
    tap_ok(fr_allocated_bytes() == allocated_before, "fr_st_free releases everything read");

    /* Replacing works: the second write is what the file then holds. */
    float replacement[6] = {1, 2, 3, 4, 5, 6};
    fr_st_out one = {.name = "fc1.weight", .ndim = 2, .shape = {3, 2}, .data = replacement};
    status = fr_st_write(path, &one, 1, NULL, 0, &err);
    file = NULL;
    if (status == FR_OK)
        status = fr_st_read(path, &file, &err);
    tap_ok(status == FR_OK && file->tensor_count == 1 && file->meta_count == 0 &&
               file->tensors[0].shape[0] == 3 && file->tensors[0].data[5] == 6.0f,
           "writing over an existing file replaces it");
    fr_st_free(file);
}

/* A file written by another program: a header whose length is not a multiple
 * of 8 and tensors listed in another order than their offsets. */
static void test_any_order_file(void) {
    const char *path = in_test_dir("any-order.safetensors");
    const char *header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t header_bytes = strlen(header);
    unsigned char bytes[512] = {0};
    float b[2] = {1.5f, -2.25f}, a = 42.0f;
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)((uint64_t)header_bytes >> (8 * i));
    memcpy(bytes + 8, header, header_bytes);
    memcpy(bytes + 8 + header_bytes, b, sizeof b);
    memcpy(bytes + 8 + header_bytes + 8, &a, sizeof a);
    write_bytes(path, bytes, 8 + header_bytes + 12);

    fr_st_file *file = NULL;
    fr_error err = {0};
    int status = fr_st_read(path, &file, &err);
    tap_ok(status == FR_OK,
           "a header of odd length listing tensors out of offset order is accepted (%s)",
           status ? err.msg : "ok");
    const fr_st_tensor *tb = file ? fr_st_find(file, "b") : NULL;
    const fr_st_tensor *ta = file ? fr_st_find(file, "a") : NULL;
    tap_ok(tb && ta && (uintptr_t)tb->data % 4 == 0 && (uintptr_t)ta->data % 4 == 0,
           "its tensors are float-aligned even though the header length is odd");
    tap_ok(tb && ta && memcmp(tb->data, b, sizeof b) == 0 && ta->data[0] == 42.0f,
           "and hold the right values");
    fr_st_free(file);
}

static void test_unicode_escapes(void) {
    const char *path = in_test_dir("unicode.safetensors");
    write_file(path,
               "{\"__metadata__\":{\"note\":\"tab\\there \\/ \\\"q\\\" \\u0041\"},"
               " \"caf\\u00e9 \\ud83d\\ude00\" : { \"dtype\" : \"F32\", \"shape\" : [ ] ,"
               " \"data_offsets\" : [ 0 , 4 ] } }   ",
               4);
    fr_st_file *file = NULL;
    fr_error err = {0};
    int status = fr_st_read(path, &file, &err);
    tap_ok(status == FR_OK && file && file->tensor_count == 1 &&
               strcmp(file->tensors[0].name, "caf\xc3\xa9 \xf0\x9f\x98\x80") == 0,
           "\\u escapes, surrogate pairs included, decode to UTF-8 (%s)", status ? err.msg : "ok");
    const char *note = file ? fr_st_meta_get(file, "note") : NULL;
    tap_ok(note && strcmp(note, "tab\there / \"q\" A") == 0,
           "the short escapes decode, and whitespace between tokens is allowed");
    fr_st_free(file);

    path = in_test_dir("empty-object.safetensors");
    write_file(path, "{}      ", 0);
    file = NULL;
    status = fr_st_read(path, &file, &err);
    tap_ok(status == FR_OK && file && file->tensor_count == 0 && file->meta_count == 0,
           "a header that is an empty object padded with spaces is a valid empty file");
    fr_st_free(file);
}

/* ------------------------------------------------------------ rejection */

static void test_refused_lengths(void) {
    const char *path = in_test_dir("empty.safetensors");
    write_bytes(path, "", 0);
    expect_refused(path, FR_EFORMAT, "empty", "an empty file");

    path = in_test_dir("short.safetensors");
    write_bytes(path, "\x02\0\0\0\0", 5);
    expect_refused(path, FR_EFORMAT, "too short", "a file shorter than 8 bytes");

    path = in_test_dir("small-header.safetensors");
    write_file_with_length(path, 1, "{}", 0);
    expect_refused(path, FR_EFORMAT, "too small", "a header length under 2");

    path = in_test_dir("long-header.safetensors");
    write_file_with_length(path, 1000, "{}", 16);
    expect_refused(path, FR_EFORMAT, "past the end of the file",
                   "a header length larger than the file");

    path = in_test_dir("huge-header.safetensors");
    write_file_with_length(path, (uint64_t)1 << 63, "{}", 16);
    expect_refused(path, FR_EFORMAT, "limit", "a header length of 2^63");

    /* A sparse file big enough for a 100 MB + 1 header: the limit must hold
     * even when the file could contain it. */
    path = in_test_dir("over-limit.safetensors");
    write_file_with_length(path, 100000001, "{}", 0);
    if (truncate(path, 100000100) == 0)
        expect_refused(path, FR_EFORMAT, "limit", "a header of 100 MB + 1 byte");
    else
        tap_skip("cannot make a sparse file: %s", strerror(errno));
    remove(path);

    expect_refused(in_test_dir("does-not-exist.safetensors"), FR_EIO, "no such file",
                   "a missing file");
    expect_refused(test_dir, FR_EIO, "is a directory", "a directory");
}

static void test_refused_json(void) {
    static const struct {
        const char *header, *problem, *behaviour;
    } cases[] = {
        {"[]      ", "must be a JSON object", "a header that is an array"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", "invalid JSON",
         "a trailing comma in an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}", "invalid JSON",
         "a trailing comma in an array"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", "invalid JSON",
         "an unclosed object"},
        {"{\"a\":{\"dtype\":\"F32", "unterminated string", "an unterminated string"},
        {"{\"a\" {}}", "expected ':'", "a missing colon"},
        {"{\"a\":true}", "expected an object", "a tensor entry that is not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "integer",
         "a fractional dimension"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1e2],\"data_offsets\":[0,4]}}", "integer",
         "a dimension with an exponent"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", "leading zeros",
         "a dimension with a leading zero"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}}", "integer",
         "null as a dimension"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}",
         "too large", "a dimension too large for 64 bits"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", "after the header",
         "text after the header object"},
        {"{\"a\\q\":{}}", "invalid escape", "an unknown escape"},
        {"{\"a\\ud800\":{}}", "surrogate", "an unpaired surrogate"},
        {"{\"a\\u0000b\":{}}", "NUL", "a NUL character in a name"},
        {"{\"a\\u12\":{}}", "hex digits", "a short \\u escape"},
        {"{\"a\xff\":{}}", "UTF-8", "a name that is not UTF-8"},
        {"{\"a\xc0\xaf\":{}}", "UTF-8", "an overlong UTF-8 sequence"},
        {"{\"a\tb\":{}}", "control character", "a raw tab inside a string"},
    };
    char name[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "json-%zu.safetensors", i);
        expect_header_refused(name, cases[i].header, 4, cases[i].problem, cases[i].behaviour);
    }
}

static void test_refused_tensors(void) {
    expect_header_refused("truncated.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 16,
                          "past the end of the data section", "a truncated data section");
    expect_header_refused("beyond.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[100,108]}}", 16,
                          "past the end of the data section", "data_offsets beyond the data");
    expect_header_refused("reversed.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 16,
                          "end before they begin", "data_offsets that end before they begin");
    expect_header_refused("negative-offset.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 16,
                          "non-negative", "a negative data offset");
    expect_header_refused("three-offsets.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", 16,
                          "two non-negative integers", "three data offsets");
    expect_header_refused("mismatch.safetensors",
                          "{\"fc1.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,12]}}",
                          24, "tensor 'fc1.weight': data_offsets [0, 12] do not match shape [2, 3] (24 bytes)",
                          "data_offsets that do not match the shape");
    expect_header_refused("f16.safetensors",
                          "{\"half\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                          "tensor 'half' has dtype F16", "an F16 tensor");
    expect_header_refused("five-dims.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}",
                          4, "more than 4 dimensions", "a tensor with five dimensions");
    expect_header_refused("negative-dim.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,2],\"data_offsets\":[0,8]}}", 8,
                          "negative dimension", "a negative dimension");
    expect_header_refused("numel-overflow.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
                          "\"data_offsets\":[0,4]}}",
                          4, "too large", "a shape whose element count overflows");
    expect_header_refused("bytes-overflow.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
                          "\"data_offsets\":[0,4]}}",
                          4, "too large", "a shape whose byte count overflows");
    expect_header_refused("duplicate.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                          8, "tensor 'a' appears twice", "a tensor name given twice");
    expect_header_refused("duplicate-field.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
                          "\"data_offsets\":[0,4]}}",
                          4, "repeated key 'dtype'", "a key repeated inside a tensor entry");
    expect_header_refused("duplicate-metadata.safetensors",
                          "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice",
                          "__metadata__ given twice");
    expect_header_refused("duplicate-metadata-key.safetensors",
                          "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
                          "__metadata__ key 'k' appears twice", "a metadata key given twice");
    expect_header_refused("metadata-number.safetensors", "{\"__metadata__\":{\"step\":3}}", 0,
                          "not a string", "a metadata value that is not a string");
    expect_header_refused("overlap.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                          24, "overlap", "overlapping tensors");
    expect_header_refused("missing-offsets.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "has no data_offsets",
                          "a tensor without data_offsets");

    char header[512];
    char long_name[200];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    snprintf(header, sizeof header,
             "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", long_name);
    expect_header_refused("long-name.safetensors", header, 4, "longer than 127 bytes",
                          "a tensor name longer than 127 bytes");

    /* A newline in a name must not break the one-line message. */
    expect_header_refused("newline-name.safetensors",
                          "{\"a\\nb\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
                          "tensor 'a?b'", "a refused tensor whose name holds a newline");
}

/* ------------------------------------------- the reference reader's rules */

/*
 * What huggingface/safetensors' own reader tests (safetensors/src/tensor.rs,
 * named in each message) accept and refuse, with F32 where they use I32 (frost
 * reads F32 only; both take 4 bytes an element).  One TAP line per rule.
 */

/* Reads a file with this header and data; the file, or NULL with `err` set. */
static fr_st_file *read_header(const char *name, const char *header, size_t data_bytes,
                               fr_error *err) {
    const char *path = in_test_dir(name);
    write_file(path, header, data_bytes);
    fr_st_file *file = NULL;
    if (fr_st_read(path, &file, err) != FR_OK)
        tap_diag("%s", err->msg);
    return file;
}

static void test_reference_accepts(void) {
    fr_error err = {0};
    size_t allocated_before = fr_allocated_bytes();

    fr_st_file *file = read_header(
        "ref-deserialization.safetensors",
        "{\"test\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, &err);
    tap_ok(file && file->tensor_count == 1 && file->tensors[0].ndim == 2 &&
               file->tensors[0].shape[0] == 2 && file->tensors[0].shape[1] == 2 &&
               file->tensors[0].numel == 4,
           "test_deserialization: one [2, 2] tensor filling the data section loads");
    fr_st_free(file);

    file = read_header("ref-empty-shape.safetensors",
                       "{\"test\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, &err);
    tap_ok(file && file->tensors[0].ndim == 0 && file->tensors[0].numel == 1,
           "test_empty_shapes_allowed: shape [] is a scalar of one element (4 bytes)");
    fr_st_free(file);

    file = read_header("ref-zero-sized.safetensors",
                       "{\"test\":{\"dtype\":\"F32\",\"shape\":[2,0],\"data_offsets\":[0, 0]}}", 0,
                       &err);
    tap_ok(file && file->tensors[0].ndim == 2 && file->tensors[0].shape[1] == 0 &&
               file->tensors[0].numel == 0,
           "test_zero_sized_tensor: shape [2, 0] with offsets [0, 0] and no data loads");
    fr_st_free(file);

    /* Empty tensors take no bytes: one before, one between and one after the others. */
    file = read_header("ref-zero-sized-between.safetensors",
                       "{\"z2\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                       "\"z1\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"z0\":{\"dtype\":\"F32\",\"shape\":[5,0],\"data_offsets\":[0,0]}}",
                       8, &err);
    tap_ok(file && file->tensor_count == 5,
           "test_roundtrip: empty tensors at the start, between two tensors and at the end load");
    fr_st_free(file);

    file = read_header("ref-whitespace-trailing.safetensors", "{}\r \t\n", 0, &err);
    tap_ok(file && file->tensor_count == 0,
           "test_whitespace_padded_header: CR, space, tab and LF after the object are allowed");
    fr_st_free(file);

    file = read_header("ref-whitespace-leading.safetensors", "\t\n{}\r ", 0, &err);
    tap_ok(file && file->tensor_count == 0,
           "test_whitespace_leading_padded_header: whitespace before the '{' is allowed");
    fr_st_free(file);

    file = read_header("ref-empty-metadata.safetensors",
                       "{\"__metadata__\":{\"framework\":\"pt\"}}     ", 0, &err);
    tap_ok(file && file->tensor_count == 0 && file->meta_count == 1 &&
               strcmp(fr_st_meta_get(file, "framework"), "pt") == 0,
           "test_empty: no tensors and only __metadata__ is a valid file");
    fr_st_free(file);

    file = read_header("ref-null-metadata.safetensors",
                       "{\"__metadata__\":null,"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &err);
    tap_ok(file && file->tensor_count == 1 && file->meta_count == 0,
           "__metadata__ may be null (an Option in the reference's header struct)");
    fr_st_free(file);

    file = read_header("ref-unknown-keys.safetensors",
                       "{\"a\":{\"x\":[1,{\"y\":null},-2.5e+3,\"s\",true,false],\"dtype\":\"F32\","
                       "\"shape\":[1],\"data_offsets\":[0,4],\"z\":{}}}", 4, &err);
    tap_ok(file && file->tensor_count == 1 && file->tensors[0].numel == 1,
           "keys other than dtype, shape and data_offsets in a tensor entry are ignored "
           "(the reference's TensorInfo does not deny unknown fields)");
    fr_st_free(file);

    file = read_header("ref-empty-name.safetensors",
                       "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &err);
    tap_ok(file && file->tensor_count == 1 && fr_st_find(file, "") != NULL,
           "a tensor may be named by the empty string");
    fr_st_free(file);
    tap_ok(fr_allocated_bytes() == allocated_before, "reading those files leaks nothing");
}

static void test_reference_refuses(void) {
    /* test_metadata_incomplete_buffer, first half: a polyglot file. */
    const char *path = in_test_dir("ref-polyglot.safetensors");
    const char *header = "{\"test\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    const char *extra = "extra_bogus_data_for_polyglot_file";
    unsigned char bytes[256] = {0};
    size_t header_bytes = strlen(header);
    bytes[0] = (unsigned char)header_bytes;
    memcpy(bytes + 8, header, header_bytes);
    memcpy(bytes + 8 + header_bytes + 16, extra, strlen(extra));
    write_bytes(path, bytes, 8 + header_bytes + 16 + strlen(extra));
    expect_refused(path, FR_EFORMAT, "34 bytes after the last tensor's data belong to no tensor",
                   "test_metadata_incomplete_buffer: data followed by extra bytes (a polyglot file)");
    expect_header_refused("ref-incomplete-missing.safetensors", header, 14,
                          "past the end of the data section",
                          "test_metadata_incomplete_buffer: a data section 2 bytes short");
    expect_header_refused("ref-no-tensors-extra.safetensors", "{}      ", 1, "to no tensor",
                          "a file without tensors whose data section is not empty");
    expect_header_refused("ref-gap-start.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                          "tensor 'a' [4, 8] leaves bytes [0, 4) of the data section to no tensor",
                          "InvalidOffset: a first tensor that does not start at 0");
    expect_header_refused("ref-gap-middle.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                          12, "tensor 'b' [8, 12] leaves bytes [4, 8)",
                          "InvalidOffset: a hole between two tensors");
    expect_header_refused("ref-empty-inside.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                          8, "overlap", "InvalidOffset: an empty tensor inside another's bytes");

    /* test_json_attack: ten tensors all claiming the same 16 bytes. */
    char attack[1024];
    size_t used = (size_t)snprintf(attack, sizeof attack, "{");
    for (int i = 0; i < 10; i++)
        used += (size_t)snprintf(attack + used, sizeof attack - used,
                                 "%s\"weight_%d\":{\"dtype\":\"F32\",\"shape\":[2,2],"
                                 "\"data_offsets\":[0,16]}",
                                 i ? "," : "", i);
    snprintf(attack + used, sizeof attack - used, "}");
    expect_header_refused("ref-json-attack.safetensors", attack, 16, "overlap",
                          "test_json_attack: ten tensors on the same bytes");

    expect_header_refused("ref-invalid-info.safetensors",
                          "{\"test\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0, 4]}}",
                          4, "do not match shape [2, 2] (16 bytes)",
                          "test_invalid_info: offsets for 4 bytes on a [2, 2] tensor");
    expect_header_refused("ref-overflow-shape.safetensors",
                          "{\"test\":{\"dtype\":\"F32\",\"shape\":[2,18446744073709551614],"
                          "\"data_offsets\":[0,16]}}",
                          16, "too large", "test_validation_overflow: a dimension of 2^64 - 2");
    expect_header_refused("ref-overflow-bytes.safetensors",
                          "{\"test\":{\"dtype\":\"F32\",\"shape\":[2,9223372036854775807],"
                          "\"data_offsets\":[0,16]}}",
                          16, "too large",
                          "test_validation_overflow: a shape whose element count overflows");
    expect_header_refused("ref-minus-zero-dim.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[-0],\"data_offsets\":[0,0]}}", 0,
                          "negative", "-0 as a dimension (the reference reads it as a float)");
    expect_header_refused("ref-minus-zero-offset.safetensors",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-0,0]}}", 0,
                          "non-negative", "-0 as an offset");

    /* test_header_too_large: the reference's length field, 0xffffff000000003c. */
    path = in_test_dir("ref-header-too-large.safetensors");
    memset(bytes, 0, sizeof bytes);
    memcpy(bytes, "<\0\0\0\0\xff\xff\xff", 8);
    memcpy(bytes + 8, header, header_bytes);
    write_bytes(path, bytes, 8 + header_bytes + 16);
    expect_refused(path, FR_EFORMAT, "limit", "test_header_too_large: a length field of 0xffffff00...3c");

    path = in_test_dir("ref-invalid-header-length.safetensors");
    write_bytes(path, "<\0\0\0\0\0\0\0", 8);
    expect_refused(path, FR_EFORMAT, "past the end of the file",
                   "test_invalid_header_length: a length of 60 and nothing after it");
    path = in_test_dir("ref-non-utf8.safetensors");
    write_bytes(path, "\x01\0\0\0\0\0\0\0\xff", 9);
    expect_refused(path, FR_EFORMAT, "too small",
                   "test_invalid_header_non_utf8: a one-byte header 0xff");
    path = in_test_dir("ref-non-utf8-string.safetensors");
    write_file(path, "{\"__metadata__\":{\"k\":\"\xff\"}}", 0);
    expect_refused(path, FR_EFORMAT, "UTF-8", "a header with a byte that is not UTF-8 in a string");
    path = in_test_dir("ref-not-json.safetensors");
    write_bytes(path, "\x01\0\0\0\0\0\0\0{", 9);
    expect_refused(path, FR_EFORMAT, "too small", "test_invalid_header_not_json: the header '{'");
    expect_header_refused("ref-not-json-unclosed.safetensors", "{   ", 0, "invalid JSON",
                          "test_invalid_header_not_json: an unclosed object");

    /* Ignored keys are skipped, but their values must still be JSON. */
    expect_header_refused("ref-unknown-bad-value.safetensors",
                          "{\"a\":{\"x\":[1,],\"dtype\":\"F32\",\"shape\":[1],"
                          "\"data_offsets\":[0,4]}}",
                          4, "invalid JSON", "an ignored key whose value is not JSON");
    expect_header_refused("ref-unknown-bad-number.safetensors",
                          "{\"a\":{\"x\":1.,\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                          4, "invalid JSON", "an ignored key whose value is a malformed number");
    char deep[400];
    memset(deep, 0, sizeof deep);
    strcpy(deep, "{\"a\":{\"x\":");
    size_t depth_start = strlen(deep);
    for (size_t i = 0; i < 200; i++)
        deep[depth_start + i] = '[';
    expect_header_refused("ref-too-deep.safetensors", deep, 0, "nested too deeply",
                          "an ignored value nested 200 deep (serde_json stops at 128)");
}

/* Every prefix of a valid file is a truncated file and must be refused cleanly. */
static void test_every_truncation_refused(void) {
    const char *path = in_test_dir("whole.safetensors");
    float values[6] = {1, 2, 3, 4, 5, 6};
    fr_st_out tensors[] = {{.name = "w", .ndim = 2, .shape = {2, 2}, .data = values},
                           {.name = "b", .ndim = 1, .shape = {2}, .data = values + 4}};
    char key[] = "format", value[] = "pt";
    fr_st_meta meta = {key, value};
    fr_error err = {0};
    if (fr_st_write(path, tensors, 2, &meta, 1, &err) != FR_OK) {
        tap_ok(0, "writing the file to truncate (%s)", err.msg);
        return;
    }
    FILE *stream = fopen(path, "rb");
    unsigned char bytes[1024];
    size_t size = stream ? fread(bytes, 1, sizeof bytes, stream) : 0;
    if (stream)
        fclose(stream);
    const char *cut_path = in_test_dir("cut.safetensors");
    size_t allocated_before = fr_allocated_bytes();
    bool all_refused = size > 8;
    for (size_t length = 0; length < size; length++) {
        write_bytes(cut_path, bytes, length);
        fr_st_file *file = NULL;
        int status = fr_st_read(cut_path, &file, &err);
        all_refused &= status == FR_EFORMAT && file == NULL && strstr(err.msg, cut_path) != NULL;
        fr_st_free(file);
    }
    tap_ok(all_refused && fr_allocated_bytes() == allocated_before,
           "each of the %zu truncations of a valid file is refused with FR_EFORMAT, leaking nothing",
           size);
}

/* ------------------------------------------------------------ writing */

/* The atomic writer as the frost command uses it for its metrics: the file
 * appears whole at commit, never before, and a discarded one leaves nothing. */
static void test_atomic_file(void) {
    char path[512];
    snprintf(path, sizeof path, "%s", in_test_dir("metrics.csv"));
    fr_error err = {0};
    fr_atomic_file *file = NULL;
    struct stat info;
    int status = fr_atomic_open(path, &file, &err);
    if (status == FR_OK)
        fr_atomic_printf(file, "step,loss\n%d,%.1f\n", 1, 0.5);
    tap_ok(status == FR_OK && stat(path, &info) != 0 && count_temporary_files() == 1,
           "fr_atomic_open writes beside the path, which does not exist before the commit");
    status = fr_atomic_commit(file, &err);
    char text[64] = "";
    FILE *stream = fopen(path, "r");
    size_t got = stream ? fread(text, 1, sizeof text - 1, stream) : 0;
    if (stream)
        fclose(stream);
    text[got] = '\0';
    tap_ok(status == FR_OK && strcmp(text, "step,loss\n1,0.5\n") == 0 &&
               count_temporary_files() == 0,
           "fr_atomic_commit puts exactly what was printed at the path, no temporary file left");
    status = fr_atomic_open(path, &file, &err);
    if (status == FR_OK) {
        fr_atomic_printf(file, "replaced\n");
        fr_atomic_discard(file);
    }
    stream = fopen(path, "r");
    got = stream ? fread(text, 1, sizeof text - 1, stream) : 0;
    if (stream)
        fclose(stream);
    text[got] = '\0';
    tap_ok(status == FR_OK && strcmp(text, "step,loss\n1,0.5\n") == 0 &&
               count_temporary_files() == 0,
           "fr_atomic_discard leaves the old file as it was and no temporary file");
    remove(path);
}

static void test_write_failures(void) {
    float value = 1.0f;
    fr_st_out tensor = {.name = "w", .ndim = 1, .shape = {1}, .data = &value};
    fr_error err = {0};
    struct stat info;
    size_t allocated_before = fr_allocated_bytes();

    const char *unwritable = "/nonexistent/dir/x.safetensors";
    int status = fr_st_write(unwritable, &tensor, 1, NULL, 0, &err);
    tap_ok(status == FR_EIO && err.status == FR_EIO && strstr(err.msg, unwritable) &&
               stat(unwritable, &info) != 0,
           "writing into a missing directory fails with FR_EIO naming the path, creating nothing");
    tap_diag("%s", err.msg);

    /* The temporary file can be written but the rename cannot replace a directory. */
    const char *directory = in_test_dir("is-a-directory.safetensors");
    mkdir(directory, 0700);
    status = fr_st_write(directory, &tensor, 1, NULL, 0, &err);
    tap_ok(status == FR_EIO && strstr(err.msg, directory) && count_temporary_files() == 0 &&
               stat(directory, &info) == 0 && S_ISDIR(info.st_mode),
           "a failed rename removes the temporary file and leaves the target alone");
    tap_diag("%s", err.msg);

    const char *refused = in_test_dir("refused.safetensors");
    fr_st_out five_dims = {.name = "w", .ndim = 5, .data = &value};
    status = fr_st_write(refused, &five_dims, 1, NULL, 0, &err);
    tap_ok(status == FR_EINVAL && strstr(err.msg, refused) && stat(refused, &info) != 0,
           "a tensor with five dimensions is refused before anything is written");

    fr_st_out twice[] = {tensor, tensor};
    status = fr_st_write(refused, twice, 2, NULL, 0, &err);
    tap_ok(status == FR_EINVAL && strstr(err.msg, "twice") && stat(refused, &info) != 0,
           "two tensors with one name are refused");

    fr_st_out negative = {.name = "w", .ndim = 1, .shape = {-1}, .data = &value};
    status = fr_st_write(refused, &negative, 1, NULL, 0, &err);
    tap_ok(status == FR_EINVAL && stat(refused, &info) != 0, "a negative dimension is refused");

    fr_st_out bad_name = {.name = "bad\xff", .ndim = 1, .shape = {1}, .data = &value};
    status = fr_st_write(refused, &bad_name, 1, NULL, 0, &err);
    tap_ok(status == FR_EINVAL && stat(refused, &info) != 0, "a name that is not UTF-8 is refused");
    tap_ok(fr_allocated_bytes() == allocated_before, "failed writes leak nothing");
}

int main(void) {
    tap_plan(114); /* every check below, counted: fewer or more fails the test */
    if (!make_test_dir("safetensors"))
        return 1;
    test_round_trip();
    test_any_order_file();
    test_unicode_escapes();
    test_refused_lengths();
    test_refused_json();
    test_refused_tensors();
    test_reference_accepts();
    test_reference_refuses();
    test_every_truncation_refused();
    test_write_failures();
    test_atomic_file();
    remove_test_dir();
    struct stat info;
    tap_ok(stat(test_dir, &info) != 0, "the test directory is removed");
    return tap_done();
}
