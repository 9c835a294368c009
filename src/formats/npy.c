/*
 * npy.c - NumPy .npy files (what numpy.save writes), parsed in memory.
 *
 * A file is the magic "\x93NUMPY", a version byte pair (1.0, 2.0 or 3.0), a
 * little-endian header length (2 bytes in 1.0, 4 in 2.0 and 3.0), the header
 * (a Python dict literal with exactly the keys 'descr', 'fortran_order' and
 * 'shape', padded with spaces and a newline), then the array's bytes.  Only
 * what a dataset needs is accepted: a simple little-endian integer or float
 * dtype in C order, and a body of exactly the size the header announces.
 *
 * The header is read by a small parser of the literal subset numpy writes
 * (strings, True/False, tuples of integers), never evaluated; like every file
 * reader in frost it treats the bytes as hostile and fails with one line
 * naming the file.  data.c turns parsed arrays into datasets.
 */
#include "internal.h"

#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy data is read as little-endian in place"
#endif

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
#define NPY_PREAMBLE_BYTES 8u /* magic and version */
/* Larger than any shape a file of FR_NPY limits can hold, small enough that
 * products of two stay far from overflow in the checked multiplication. */
#define NPY_DIM_MAX ((uint64_t)1 << 62)

/* The header as it is parsed: its bytes, where we are, and the file for messages. */
typedef struct header_cursor {
    const char *path;
    const unsigned char *text;
    size_t length, pos;
    size_t file_offset; /* of text[0], so messages give positions in the file */
} header_cursor;

static int header_error(header_cursor *c, fr_error *err, const char *expected) {
    if (c->pos >= c->length)
        return fr_fail(err, FR_EFORMAT, "%s: malformed .npy header: it ends where %s should be",
                       c->path, expected);
    return fr_fail(err, FR_EFORMAT, "%s: malformed .npy header at byte %zu: expected %s",
                   c->path, c->file_offset + c->pos, expected);
}

/* Python's whitespace inside brackets (line joining makes newlines blanks too). */
static void skip_blanks(header_cursor *c) {
    while (c->pos < c->length && (c->text[c->pos] == ' ' || c->text[c->pos] == '\t' ||
                                  c->text[c->pos] == '\n' || c->text[c->pos] == '\r' ||
                                  c->text[c->pos] == '\f'))
        c->pos++;
}

static bool accept(header_cursor *c, char ch) {
    skip_blanks(c);
    if (c->pos < c->length && c->text[c->pos] == (unsigned char)ch) {
        c->pos++;
        return true;
    }
    return false;
}

/* A quoted string without escapes (numpy's keys and dtypes need none): its
 * bytes, not terminated, in *start and *len. */
static int parse_string(header_cursor *c, const unsigned char **start, size_t *len,
                        const char *what, fr_error *err) {
    skip_blanks(c);
    if (c->pos >= c->length || (c->text[c->pos] != '\'' && c->text[c->pos] != '"'))
        return header_error(c, err, what);
    unsigned char quote = c->text[c->pos++];
    size_t begin = c->pos;
    while (c->pos < c->length && c->text[c->pos] != quote) {
        if (c->text[c->pos] == '\\' || c->text[c->pos] == '\n')
            return header_error(c, err, "a string without escapes or line breaks");
        c->pos++;
    }
    if (c->pos >= c->length)
        return header_error(c, err, "the end of a string");
    *start = c->text + begin;
    *len = c->pos - begin;
    c->pos++;
    return FR_OK;
}

static bool token_is(const unsigned char *start, size_t len, const char *word) {
    return len == strlen(word) && memcmp(start, word, len) == 0;
}

/* Up to 40 bytes of a token for a message, anything unprintable as '?'. */
static void printable(const unsigned char *start, size_t len, char *out, size_t out_len) {
    size_t n = len < out_len - 1 ? len : out_len - 1;
    if (n > 40)
        n = 40;
    for (size_t i = 0; i < n; i++)
        out[i] = start[i] >= 0x20 && start[i] < 0x7f && start[i] != '\'' ? (char)start[i] : '?';
    out[n] = '\0';
    if (n < len && n >= 3)
        memcpy(out + n - 3, "...", 3);
}

/*
 * A dtype string as numpy writes it: byte order ('<' little, '|' not
 * applicable, '>' big), kind letter, item size.  frost reads unsigned and
 * signed integers of 1, 2, 4 and 8 bytes and floats of 4 and 8 bytes, stored
 * little-endian.
 */
static int parse_descr(header_cursor *c, fr_npy *array, fr_error *err) {
    skip_blanks(c);
    if (c->pos < c->length && c->text[c->pos] == '[')
        return fr_fail(err, FR_EFORMAT,
                       "%s: a structured dtype (a list of fields) is not supported; save a plain "
                       "numeric array",
                       c->path);
    const unsigned char *text;
    size_t len;
    int rc = parse_string(c, &text, &len, "the dtype string after 'descr':", err);
    if (rc != FR_OK)
        return rc;
    char descr[48];
    printable(text, len, descr, sizeof descr);
    size_t i = 0;
    char order = '=';
    if (len > 0 && (text[0] == '<' || text[0] == '>' || text[0] == '|' || text[0] == '='))
        order = (char)text[i++];
    char kind = i < len ? (char)text[i++] : '\0';
    int item_bytes = 0;
    while (i < len && text[i] >= '0' && text[i] <= '9' && item_bytes < 100)
        item_bytes = item_bytes * 10 + (text[i++] - '0');
    bool integer = (kind == 'u' || kind == 'i') &&
                   (item_bytes == 1 || item_bytes == 2 || item_bytes == 4 || item_bytes == 8);
    bool floating = kind == 'f' && (item_bytes == 4 || item_bytes == 8);
    if (i != len || !(integer || floating))
        return fr_fail(err, FR_EFORMAT,
                       "%s: dtype '%s' is not supported (frost reads uint8..uint64, int8..int64, "
                       "float32 and float64)",
                       c->path, descr);
    if (order == '>' && item_bytes > 1)
        return fr_fail(err, FR_EFORMAT,
                       "%s: dtype '%s' is big-endian; save the array little-endian "
                       "(a.astype('<%c%d'))",
                       c->path, descr, kind, item_bytes);
    array->kind = kind;
    array->item_bytes = item_bytes;
    snprintf(array->descr, sizeof array->descr, "%s", descr);
    return FR_OK;
}

static int parse_bool(header_cursor *c, bool *value, fr_error *err) {
    skip_blanks(c);
    size_t begin = c->pos;
    while (c->pos < c->length && c->text[c->pos] >= 'A' && c->text[c->pos] <= 'z')
        c->pos++;
    if (token_is(c->text + begin, c->pos - begin, "True"))
        *value = true;
    else if (token_is(c->text + begin, c->pos - begin, "False"))
        *value = false;
    else {
        c->pos = begin;
        return header_error(c, err, "True or False after 'fortran_order':");
    }
    return FR_OK;
}

/* A non-negative integer; an old 'L' suffix (Python 2's long) is allowed. */
static int parse_dim(header_cursor *c, uint64_t *value, fr_error *err) {
    skip_blanks(c);
    if (c->pos >= c->length || c->text[c->pos] < '0' || c->text[c->pos] > '9')
        return header_error(c, err, "a dimension (a non-negative whole number)");
    uint64_t number = 0;
    while (c->pos < c->length && c->text[c->pos] >= '0' && c->text[c->pos] <= '9') {
        number = number * 10 + (uint64_t)(c->text[c->pos++] - '0');
        if (number > NPY_DIM_MAX)
            return fr_fail(err, FR_EFORMAT, "%s: a dimension of the shape is larger than 2^62",
                           c->path);
    }
    if (c->pos < c->length && c->text[c->pos] == 'L')
        c->pos++;
    *value = number;
    return FR_OK;
}

/* A Python tuple of dimensions: (), (5,), (5, 28, 28), with a trailing comma allowed. */
static int parse_shape(header_cursor *c, fr_npy *array, fr_error *err) {
    if (!accept(c, '('))
        return header_error(c, err, "a tuple such as (60000, 28, 28) after 'shape':");
    int ndim = 0;
    bool comma = false;
    while (!accept(c, ')')) {
        if (ndim > 0 && !comma)
            return header_error(c, err, "',' or ')' in the shape");
        if (ndim == FR_NPY_MAX_DIMS)
            return fr_fail(err, FR_EFORMAT, "%s: the shape has more than %d dimensions", c->path,
                           FR_NPY_MAX_DIMS);
        int rc = parse_dim(c, &array->shape[ndim], err);
        if (rc != FR_OK)
            return rc;
        ndim++;
        comma = accept(c, ',');
    }
    /* Python's (5) is the number 5, not a tuple. */
    if (ndim == 1 && !comma)
        return fr_fail(err, FR_EFORMAT, "%s: the shape (%llu) is not a tuple (a 1-D shape is "
                                        "written (%llu,))",
                       c->path, (unsigned long long)array->shape[0],
                       (unsigned long long)array->shape[0]);
    array->ndim = ndim;
    return FR_OK;
}

enum { KEY_DESCR, KEY_FORTRAN_ORDER, KEY_SHAPE, KEY_COUNT };
static const char *const key_names[KEY_COUNT] = {"descr", "fortran_order", "shape"};

/* The dict literal: each of the three keys exactly once, in any order. */
static int parse_header_dict(header_cursor *c, fr_npy *array, fr_error *err) {
    bool seen[KEY_COUNT] = {false, false, false};
    bool fortran_order = false;
    if (!accept(c, '{'))
        return header_error(c, err, "'{' (the header is a Python dict)");
    bool comma = true;
    while (!accept(c, '}')) {
        if (!comma)
            return header_error(c, err, "',' or '}' after a value");
        const unsigned char *key;
        size_t key_len;
        int rc = parse_string(c, &key, &key_len, "a quoted key or '}'", err);
        if (rc != FR_OK)
            return rc;
        int which = 0;
        while (which < KEY_COUNT && !token_is(key, key_len, key_names[which]))
            which++;
        if (which == KEY_COUNT) {
            char name[48];
            printable(key, key_len, name, sizeof name);
            return fr_fail(err, FR_EFORMAT,
                           "%s: header key '%s' is not one of 'descr', 'fortran_order', 'shape'",
                           c->path, name);
        }
        if (seen[which])
            return fr_fail(err, FR_EFORMAT, "%s: header key '%s' appears twice", c->path,
                           key_names[which]);
        seen[which] = true;
        if (!accept(c, ':'))
            return header_error(c, err, "':' after a key");
        if (which == KEY_DESCR)
            rc = parse_descr(c, array, err);
        else if (which == KEY_FORTRAN_ORDER)
            rc = parse_bool(c, &fortran_order, err);
        else
            rc = parse_shape(c, array, err);
        if (rc != FR_OK)
            return rc;
        comma = accept(c, ',');
    }
    for (int k = 0; k < KEY_COUNT; k++)
        if (!seen[k])
            return fr_fail(err, FR_EFORMAT, "%s: the .npy header has no '%s'", c->path,
                           key_names[k]);
    skip_blanks(c);
    if (c->pos != c->length)
        return header_error(c, err, "only blanks after the header's '}'");
    /* Checked last, so that it is only reported for an otherwise good header. */
    if (fortran_order)
        return fr_fail(err, FR_EFORMAT,
                       "%s: fortran_order is True (column-major); save a C-ordered array "
                       "(numpy.ascontiguousarray)",
                       c->path);
    return FR_OK;
}

int fr_npy_parse(const char *path, const unsigned char *bytes, size_t size, fr_npy *array,
                 fr_error *err) {
    memset(array, 0, sizeof *array);
    if (size == 0)
        return fr_fail(err, FR_EFORMAT, "%s: empty file, expected a NumPy .npy file", path);
    if (size < sizeof npy_magic || memcmp(bytes, npy_magic, sizeof npy_magic) != 0)
        return fr_fail(err, FR_EFORMAT,
                       "%s: not a NumPy .npy file (it does not start with \\x93NUMPY)", path);
    if (size < NPY_PREAMBLE_BYTES)
        return fr_fail(err, FR_EFORMAT, "%s: truncated header: %zu bytes", path, size);
    int major = bytes[6], minor = bytes[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0)
        return fr_fail(err, FR_EFORMAT, "%s: .npy format version %d.%d, expected 1.0, 2.0 or 3.0",
                       path, major, minor);
    size_t length_bytes = major == 1 ? 2 : 4;
    size_t text_start = NPY_PREAMBLE_BYTES + length_bytes;
    if (size < text_start)
        return fr_fail(err, FR_EFORMAT, "%s: truncated header: %zu of at least %zu bytes", path,
                       size, text_start);
    size_t header_length = (size_t)bytes[8] | (size_t)bytes[9] << 8;
    if (length_bytes == 4)
        header_length |= (size_t)bytes[10] << 16 | (size_t)bytes[11] << 24;
    if (header_length > size - text_start)
        return fr_fail(err, FR_EFORMAT, "%s: truncated header: %zu of %zu bytes", path,
                       size - text_start, header_length);

    header_cursor cursor = {path, bytes + text_start, header_length, 0, text_start};
    int rc = parse_header_dict(&cursor, array, err);
    if (rc != FR_OK)
        return rc;

    /* Every dimension is at most 2^62, so each partial product either fits
     * or fr_mul_size says it does not. */
    size_t count = 1, data_bytes;
    for (int d = 0; d < array->ndim; d++)
        if (!fr_mul_size(count, (size_t)array->shape[d], &count))
            return fr_fail(err, FR_EFORMAT, "%s: the shape's element count overflows", path);
    if (!fr_mul_size(count, (size_t)array->item_bytes, &data_bytes))
        return fr_fail(err, FR_EFORMAT, "%s: the shape's byte count overflows", path);
    size_t found = size - text_start - header_length;
    if (found < data_bytes)
        return fr_fail(err, FR_EFORMAT, "%s: truncated: expected %zu bytes of array data, found %zu",
                       path, data_bytes, found);
    if (found > data_bytes)
        return fr_fail(err, FR_EFORMAT,
                       "%s: %zu trailing bytes after the %zu bytes of array data the header "
                       "announces",
                       path, found - data_bytes, data_bytes);
    array->count = count;
    array->data = bytes + text_start + header_length;
    return FR_OK;
}

void fr_npy_shape_string(const fr_npy *array, char *text, size_t len) {
    size_t used = 0;
    used += (size_t)snprintf(text, len, "(");
    for (int d = 0; d < array->ndim && used < len; d++)
        used += (size_t)snprintf(text + used, len - used, "%s%llu", d ? ", " : "",
                                 (unsigned long long)array->shape[d]);
    if (used < len)
        snprintf(text + used, len - used, array->ndim == 1 ? ",)" : ")");
}

/* ------------------------------------------------------------ writing */

typedef struct npy_to_write {
    const unsigned char *header;
    size_t header_bytes;
    const void *data;
    size_t data_bytes;
} npy_to_write;

static bool write_npy_contents(FILE *stream, void *context) {
    const npy_to_write *npy = context;
    return fwrite(npy->header, 1, npy->header_bytes, stream) == npy->header_bytes &&
           (npy->data_bytes == 0 || fwrite(npy->data, 1, npy->data_bytes, stream) == npy->data_bytes);
}

int fr_npy_write(const char *path, const char *descr, int ndim, const uint64_t *shape,
                 const void *data, fr_error *err) {
    /* The item size is the descr's number ("<i4": 4). */
    int item_bytes = 0;
    for (const char *c = descr; *c; c++)
        if (*c >= '0' && *c <= '9')
            item_bytes = item_bytes * 10 + (*c - '0');
    size_t count = 1, data_bytes;
    for (int d = 0; d < ndim; d++)
        if (!fr_mul_size(count, (size_t)shape[d], &count))
            return fr_fail(err, FR_EINVAL, "%s: the shape's element count overflows", path);
    if (ndim < 0 || ndim > FR_NPY_MAX_DIMS || item_bytes <= 0 ||
        !fr_mul_size(count, (size_t)item_bytes, &data_bytes))
        return fr_fail(err, FR_EINVAL, "%s: cannot write a %d-D array of dtype '%s'", path, ndim,
                       descr);

    /* numpy.save's dict, then spaces and a newline to a multiple of 64 bytes
     * counting the 10 bytes before it (so the data is aligned). */
    char dict[64 + 24 * FR_NPY_MAX_DIMS];
    size_t used = (size_t)snprintf(dict, sizeof dict,
                                   "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int d = 0; d < ndim && used < sizeof dict; d++)
        used += (size_t)snprintf(dict + used, sizeof dict - used, "%s%llu", d ? ", " : "",
                                 (unsigned long long)shape[d]);
    if (used < sizeof dict)
        used += (size_t)snprintf(dict + used, sizeof dict - used, "%s), }",
                                 ndim == 1 ? "," : "");
    if (used >= sizeof dict)
        return fr_fail(err, FR_EINVAL, "%s: the .npy header is too long", path);
    unsigned char header[sizeof dict + 64 + 10];
    size_t header_bytes = (10 + used + 1 + 63) / 64 * 64;
    size_t text_bytes = header_bytes - 10;
    memcpy(header, npy_magic, sizeof npy_magic);
    header[6] = 1;
    header[7] = 0;
    header[8] = (unsigned char)(text_bytes & 0xff);
    header[9] = (unsigned char)(text_bytes >> 8);
    memcpy(header + 10, dict, used);
    memset(header + 10 + used, ' ', text_bytes - used - 1);
    header[header_bytes - 1] = '\n';
    npy_to_write npy = {header, header_bytes, data, data_bytes};
    return fr_write_atomic(path, write_npy_contents, &npy, err);
}
