/*
 * safetensors.c - reading and writing safetensors files, the format of frost's
 * weights and checkpoints (DESIGN.md, "Names and formats").
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON, then the
 * raw tensor data:
 *   {"__metadata__":{"format":"pt"},
 *    "fc1.weight":{"dtype":"F32","shape":[128,9216],"data_offsets":[0,4718592]}, ...}
 * data_offsets are [begin, end) byte offsets into the data section.
 *
 * Files come from users and from other programs, so the reader trusts nothing.
 * What is a valid file is what the reference reader (huggingface/safetensors,
 * SafeTensors::deserialize) accepts: the header length checked against the
 * file size and the 100 MB limit before anything is allocated; the header
 * UTF-8 JSON, whitespace allowed before and after the object; tensors listed
 * in any order, keys of a tensor entry other than dtype, shape and
 * data_offsets ignored, "__metadata__" an object of strings or null; each
 * tensor's bytes equal to its element count x 4; and the tensors, in offset
 * order, tiling the data section exactly (no overlap, no hole, nothing after
 * the last).  frost is stricter in four ways, each refused with its reason: a
 * name or key given twice (the reference keeps the last; two readers could see
 * two different files), dtypes other than F32, more than FR_MAX_DIMS
 * dimensions or names over 127 bytes, and NUL characters in strings.
 * Every failure is one line naming the file and the problem.
 *
 * The whole file is read into one buffer, placed so that the data section
 * starts FR_ALIGN-aligned; the tensors then point straight into it (tiling
 * from 0 with 4-byte elements keeps each of them float-aligned).
 *
 * The writer produces what the reference implementation produces: the header
 * padded with spaces to a multiple of 8 bytes, "__metadata__" first, tensors in
 * the given order, written to PATH.tmp.PID, fsync'd and renamed over PATH.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and frost uses it in place"
#endif

#define LENGTH_FIELD_BYTES 8
/* The reference implementation refuses larger headers; so do we, before allocating. */
#define HEADER_LIMIT_BYTES 100000000u
#define TENSOR_NAME_LIMIT (FR_NAME_MAX * 2 - 1)
#define FLOAT_BYTES 4
#define SHAPE_TEXT_LEN 128

/*
 * What fr_st_read allocates.  Callers see only `file`, which must stay the first
 * member so that fr_st_free can get back from it to the rest.
 */
typedef struct st_file_storage {
    fr_st_file file;
    unsigned char *allocation; /* file.bytes lies a few bytes into it */
    int tensor_capacity, meta_capacity;
} st_file_storage;

/* A tensor's place in the data section, kept beside fr_st_file.tensors. */
typedef struct tensor_extent {
    uint64_t begin, end;
    int tensor;
} tensor_extent;

/* ------------------------------------------------------------ helpers */

/* Grows an fr_alloc'd array so it can take one more item; NULL if out of memory
 * (the old array is then still valid). */
static void *grow_for_one_more(void *items, int count, int *capacity, size_t item_bytes) {
    if (count < *capacity)
        return items;
    if (*capacity > INT_MAX / 2)
        return NULL;
    int new_capacity = *capacity ? *capacity * 2 : 16;
    size_t bytes;
    if (!fr_mul_size((size_t)new_capacity, item_bytes, &bytes))
        return NULL;
    void *grown = fr_alloc(bytes);
    if (!grown)
        return NULL;
    if (count)
        memcpy(grown, items, (size_t)count * item_bytes);
    fr_free(items);
    *capacity = new_capacity;
    return grown;
}

static char *copy_string(const char *text) {
    size_t length = strlen(text);
    char *copy = fr_alloc(length + 1);
    if (copy)
        memcpy(copy, text, length + 1);
    return copy;
}

static void format_shape(const int64_t *shape, int ndim, char *text, size_t len) {
    size_t used = (size_t)snprintf(text, len, "[");
    for (int d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(text + used, len - used, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (used < len)
        snprintf(text + used, len - used, "]");
}

/* Length of the valid UTF-8 sequence starting at `s` (at most `available`
 * bytes long), or 0 if it is not valid UTF-8. */
static size_t utf8_sequence_length(const unsigned char *s, size_t available) {
    unsigned char lead = s[0];
    size_t length;
    uint32_t code_point;
    if (lead < 0x80)
        return 1;
    if (lead >= 0xc2 && lead <= 0xdf) {
        length = 2;
        code_point = lead & 0x1f;
    } else if ((lead & 0xf0) == 0xe0) {
        length = 3;
        code_point = lead & 0x0f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        length = 4;
        code_point = lead & 0x07;
    } else {
        return 0;
    }
    if (length > available)
        return 0;
    for (size_t i = 1; i < length; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        code_point = code_point << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, UTF-16 surrogates and values past Unicode are invalid. */
    if (length == 3 && (code_point < 0x800 || (code_point >= 0xd800 && code_point <= 0xdfff)))
        return 0;
    if (length == 4 && (code_point < 0x10000 || code_point > 0x10ffff))
        return 0;
    return length;
}

static bool is_valid_utf8(const char *text) {
    size_t remaining = strlen(text);
    const unsigned char *s = (const unsigned char *)text;
    while (remaining) {
        size_t length = utf8_sequence_length(s, remaining);
        if (!length)
            return false;
        s += length;
        remaining -= length;
    }
    return true;
}

static size_t utf8_encode(uint32_t code_point, char *out) {
    if (code_point < 0x80) {
        out[0] = (char)code_point;
        return 1;
    }
    if (code_point < 0x800) {
        out[0] = (char)(0xc0 | code_point >> 6);
        out[1] = (char)(0x80 | (code_point & 0x3f));
        return 2;
    }
    if (code_point < 0x10000) {
        out[0] = (char)(0xe0 | code_point >> 12);
        out[1] = (char)(0x80 | (code_point >> 6 & 0x3f));
        out[2] = (char)(0x80 | (code_point & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | code_point >> 18);
    out[1] = (char)(0x80 | (code_point >> 12 & 0x3f));
    out[2] = (char)(0x80 | (code_point >> 6 & 0x3f));
    out[3] = (char)(0x80 | (code_point & 0x3f));
    return 4;
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * The first string that occurs twice in `strings` (sorted in place), or NULL.
 * Sorting keeps this O(n log n): a hostile header may hold millions of names.
 */
static const char *find_repeated(const char **strings, int count) {
    qsort(strings, (size_t)count, sizeof *strings, compare_strings);
    for (int i = 1; i < count; i++)
        if (strcmp(strings[i - 1], strings[i]) == 0)
            return strings[i];
    return NULL;
}

/* numel and byte size of a shape; false if either overflows size_t. */
static bool shape_bytes(const int64_t *shape, int ndim, size_t *numel, size_t *bytes) {
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (uint64_t)shape[d] > SIZE_MAX ||
            !fr_mul_size(count, (size_t)shape[d], &count))
            return false;
    }
    *numel = count;
    return fr_mul_size(count, FLOAT_BYTES, bytes);
}

/* ------------------------------------------------------- JSON header */

typedef struct header_parser {
    const char *path;           /* for messages */
    const unsigned char *text;  /* the JSON header; not NUL-terminated */
    size_t length;
    size_t pos;
    size_t data_bytes;          /* size of the data section */
    st_file_storage *storage;
    tensor_extent *extents;     /* one per tensor, same order */
    int extent_capacity;
    char tensor_shown[FR_NAME_MAX * 2]; /* the tensor being parsed, for messages */
    fr_error *err;
} header_parser;

static int syntax_error(header_parser *p, const char *problem) {
    return fr_fail(p->err, FR_EFORMAT, "%s: invalid JSON in the header at byte %zu: %s",
                   p->path, p->pos, problem);
}

static int out_of_memory(header_parser *p) {
    return fr_fail(p->err, FR_ENOMEM, "%s: out of memory reading the header", p->path);
}

static int peek(const header_parser *p) { return p->pos < p->length ? p->text[p->pos] : -1; }

static void skip_whitespace(header_parser *p) {
    int c;
    while ((c = peek(p)) == ' ' || c == '\t' || c == '\n' || c == '\r')
        p->pos++;
}

static int parse_hex4(header_parser *p, size_t end, uint32_t *value) {
    *value = 0;
    if (end - p->pos < 4)
        return syntax_error(p, "\\u needs four hex digits");
    for (int i = 0; i < 4; i++) {
        int c = p->text[p->pos + (size_t)i], digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if (c >= 'a' && c <= 'f')
            digit = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            digit = c - 'A' + 10;
        else
            return syntax_error(p, "\\u needs four hex digits");
        *value = *value << 4 | (uint32_t)digit;
    }
    p->pos += 4;
    return FR_OK;
}

/* One escape sequence after its backslash, appended to `out`. */
static int decode_escape(header_parser *p, size_t end, char *out, size_t *out_length) {
    char simple = 0;
    switch (p->text[p->pos++]) {
    case '"': simple = '"'; break;
    case '\\': simple = '\\'; break;
    case '/': simple = '/'; break;
    case 'b': simple = '\b'; break;
    case 'f': simple = '\f'; break;
    case 'n': simple = '\n'; break;
    case 'r': simple = '\r'; break;
    case 't': simple = '\t'; break;
    case 'u': break;
    default:
        p->pos--;
        return syntax_error(p, "invalid escape sequence");
    }
    if (simple) {
        out[(*out_length)++] = simple;
        return FR_OK;
    }
    uint32_t code_point;
    int status = parse_hex4(p, end, &code_point);
    if (status)
        return status;
    if (code_point >= 0xdc00 && code_point <= 0xdfff)
        return syntax_error(p, "unpaired UTF-16 surrogate in \\u escape");
    if (code_point >= 0xd800 && code_point <= 0xdbff) {
        /* Characters beyond the BMP arrive as a \uD8xx\uDCxx pair. */
        uint32_t low;
        if (end - p->pos < 2 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u')
            return syntax_error(p, "unpaired UTF-16 surrogate in \\u escape");
        p->pos += 2;
        if ((status = parse_hex4(p, end, &low)) != FR_OK)
            return status;
        if (low < 0xdc00 || low > 0xdfff)
            return syntax_error(p, "unpaired UTF-16 surrogate in \\u escape");
        code_point = 0x10000 + ((code_point - 0xd800) << 10) + (low - 0xdc00);
    }
    /* Names and values are C strings here. */
    if (code_point == 0)
        return syntax_error(p, "NUL character in a string");
    *out_length += utf8_encode(code_point, out + *out_length);
    return FR_OK;
}

/* A JSON string, decoded into a fresh NUL-terminated fr_alloc'd copy. */
static int parse_string(header_parser *p, char **out, size_t *out_length) {
    *out = NULL;
    if (peek(p) != '"')
        return syntax_error(p, "expected a string");
    /* Find the closing quote first: the decoded string is never longer than
     * its JSON form, so it can be allocated once. */
    size_t end = p->pos + 1;
    while (end < p->length && p->text[end] != '"')
        end += p->text[end] == '\\' ? 2 : 1;
    if (end >= p->length)
        return syntax_error(p, "unterminated string");
    p->pos++;
    char *decoded = fr_alloc(end - p->pos + 1);
    if (!decoded)
        return out_of_memory(p);
    size_t length = 0;
    int status = FR_OK;
    while (p->pos < end && status == FR_OK) {
        unsigned char c = p->text[p->pos];
        if (c < 0x20) {
            status = syntax_error(p, "control character in a string");
        } else if (c == '\\') {
            p->pos++;
            status = decode_escape(p, end, decoded, &length);
        } else {
            size_t sequence = utf8_sequence_length(p->text + p->pos, end - p->pos);
            if (!sequence) {
                status = syntax_error(p, "invalid UTF-8 in a string");
            } else {
                memcpy(decoded + length, p->text + p->pos, sequence);
                length += sequence;
                p->pos += sequence;
            }
        }
    }
    if (status) {
        fr_free(decoded);
        return status;
    }
    p->pos = end + 1;
    decoded[length] = '\0';
    *out = decoded;
    *out_length = length;
    return FR_OK;
}

/*
 * A JSON number that must be a non-negative integer fitting int64: shapes and
 * offsets are unsigned in the format.  `*negative` tells a leading '-' (even
 * "-0", which the reference reads as a float and refuses) so the caller can
 * say which value was negative.
 */
static int parse_integer(header_parser *p, int64_t *value, bool *negative) {
    *negative = peek(p) == '-';
    if (*negative)
        p->pos++;
    int c = peek(p);
    if (c < '0' || c > '9')
        return syntax_error(p, "expected an integer");
    uint64_t magnitude = 0;
    if (c == '0') {
        p->pos++;
    } else {
        while ((c = peek(p)) >= '0' && c <= '9') {
            unsigned digit = (unsigned)(c - '0');
            if (magnitude > ((uint64_t)INT64_MAX - digit) / 10)
                return fr_fail(p->err, FR_EFORMAT,
                               "%s: the integer at byte %zu of the header is too large "
                               "(over 2^63 - 1)", p->path, p->pos);
            magnitude = magnitude * 10 + digit;
            p->pos++;
        }
    }
    c = peek(p);
    if (c == '.' || c == 'e' || c == 'E')
        return syntax_error(p, "expected an integer, not a fraction or exponent");
    if (c >= '0' && c <= '9')
        return syntax_error(p, "leading zeros are not allowed");
    *value = *negative ? -(int64_t)magnitude : (int64_t)magnitude;
    return FR_OK;
}

/*
 * Steps through an object whose '{' is consumed: parses the next key and its
 * ':', or consumes the closing '}' and sets *done.  `*first` is true before the
 * first member.
 */
static int next_object_key(header_parser *p, bool *first, char **key, size_t *key_length,
                           bool *done) {
    *key = NULL;
    *done = false;
    skip_whitespace(p);
    if (peek(p) == '}') {
        /* "{"a":1,}" is caught below: after ',' a key must follow. */
        p->pos++;
        *done = true;
        return FR_OK;
    }
    if (!*first) {
        if (peek(p) != ',')
            return syntax_error(p, "expected ',' or '}'");
        p->pos++;
        skip_whitespace(p);
    }
    *first = false;
    int status = parse_string(p, key, key_length);
    if (status)
        return status;
    skip_whitespace(p);
    if (peek(p) != ':') {
        fr_free(*key);
        *key = NULL;
        return syntax_error(p, "expected ':'");
    }
    p->pos++;
    skip_whitespace(p);
    return FR_OK;
}

/* The same for an array whose '[' is consumed: stops before the next element. */
static int next_array_element(header_parser *p, bool *first, bool *done) {
    *done = false;
    skip_whitespace(p);
    if (peek(p) == ']') {
        p->pos++;
        *done = true;
        return FR_OK;
    }
    if (!*first) {
        if (peek(p) != ',')
            return syntax_error(p, "expected ',' or ']'");
        p->pos++;
        skip_whitespace(p);
        if (peek(p) == ']')
            return syntax_error(p, "trailing ',' in an array");
    }
    *first = false;
    return FR_OK;
}

/* Consumes `word` (true, false or null) or fails. */
static int parse_literal(header_parser *p, const char *word) {
    size_t length = strlen(word);
    if (p->length - p->pos < length || memcmp(p->text + p->pos, word, length) != 0)
        return syntax_error(p, "expected a value");
    p->pos += length;
    return FR_OK;
}

static void skip_digits(header_parser *p) {
    int c;
    while ((c = peek(p)) >= '0' && c <= '9')
        p->pos++;
}

/* Any JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int skip_number(header_parser *p) {
    if (peek(p) == '-')
        p->pos++;
    int c = peek(p);
    if (c < '0' || c > '9')
        return syntax_error(p, "expected a value");
    p->pos++;
    if (c != '0')
        skip_digits(p);
    else if ((c = peek(p)) >= '0' && c <= '9')
        return syntax_error(p, "leading zeros are not allowed");
    if (peek(p) == '.') {
        p->pos++;
        if ((c = peek(p)) < '0' || c > '9')
            return syntax_error(p, "expected a digit after '.'");
        skip_digits(p);
    }
    if ((c = peek(p)) == 'e' || c == 'E') {
        p->pos++;
        if ((c = peek(p)) == '+' || c == '-')
            p->pos++;
        if ((c = peek(p)) < '0' || c > '9')
            return syntax_error(p, "expected a digit in the exponent");
        skip_digits(p);
    }
    return FR_OK;
}

/* serde_json, the reference's parser, refuses deeper nesting; so do we,
 * which also bounds the recursion below. */
#define JSON_DEPTH_LIMIT 128

/*
 * Checks and passes over one JSON value of any kind.  The reference ignores
 * keys it does not know inside a tensor entry, so a file may carry anything
 * there, but it must still be valid JSON.
 */
static int skip_value(header_parser *p, int depth) {
    if (depth > JSON_DEPTH_LIMIT)
        return syntax_error(p, "values nested too deeply");
    skip_whitespace(p);
    int c = peek(p), status = FR_OK;
    bool first = true, done = false;
    if (c == '{') {
        p->pos++;
        while (status == FR_OK) {
            char *key;
            size_t key_length;
            if ((status = next_object_key(p, &first, &key, &key_length, &done)) != FR_OK || done)
                break;
            fr_free(key);
            status = skip_value(p, depth + 1);
        }
        return status;
    }
    if (c == '[') {
        p->pos++;
        while ((status = next_array_element(p, &first, &done)) == FR_OK && !done)
            if ((status = skip_value(p, depth + 1)) != FR_OK)
                break;
        return status;
    }
    if (c == '"') {
        char *text;
        size_t text_length;
        if ((status = parse_string(p, &text, &text_length)) == FR_OK)
            fr_free(text);
        return status;
    }
    if (c == 't')
        return parse_literal(p, "true");
    if (c == 'f')
        return parse_literal(p, "false");
    if (c == 'n')
        return parse_literal(p, "null");
    return skip_number(p);
}

static int tensor_error(header_parser *p, const char *problem) {
    return fr_fail(p->err, FR_EFORMAT, "%s: tensor '%s': %s", p->path, p->tensor_shown, problem);
}

static int parse_shape(header_parser *p, fr_st_tensor *tensor) {
    skip_whitespace(p);
    if (peek(p) != '[')
        return tensor_error(p, "shape must be an array of integers");
    p->pos++;
    bool first = true, done = false;
    for (;;) {
        int status = next_array_element(p, &first, &done);
        if (status || done)
            return status;
        if (tensor->ndim == FR_MAX_DIMS)
            return fr_fail(p->err, FR_EFORMAT,
                           "%s: tensor '%s' has more than %d dimensions, the most frost supports",
                           p->path, p->tensor_shown, FR_MAX_DIMS);
        int64_t dim;
        bool negative;
        if ((status = parse_integer(p, &dim, &negative)) != FR_OK)
            return status;
        if (negative)
            return fr_fail(p->err, FR_EFORMAT,
                           "%s: tensor '%s' has a negative dimension (-%" PRId64 ") in its shape",
                           p->path, p->tensor_shown, -dim);
        tensor->shape[tensor->ndim++] = dim;
    }
}

static int parse_offsets(header_parser *p, int64_t offsets[2]) {
    static const char *const wrong = "data_offsets must be two non-negative integers [begin, end]";
    skip_whitespace(p);
    if (peek(p) != '[')
        return tensor_error(p, wrong);
    p->pos++;
    bool first = true, done = false;
    int count = 0;
    for (;;) {
        int status = next_array_element(p, &first, &done);
        if (status)
            return status;
        if (done)
            return count == 2 ? FR_OK : tensor_error(p, wrong);
        int64_t offset;
        bool negative;
        if ((status = parse_integer(p, &offset, &negative)) != FR_OK)
            return status;
        if (negative || count == 2)
            return tensor_error(p, wrong);
        offsets[count++] = offset;
    }
}

/* The tensor's offsets against its shape and the data section. */
static int check_tensor_extent(header_parser *p, fr_st_tensor *tensor, const int64_t offsets[2]) {
    char shape[SHAPE_TEXT_LEN];
    size_t bytes;
    format_shape(tensor->shape, tensor->ndim, shape, sizeof shape);
    if (!shape_bytes(tensor->shape, tensor->ndim, &tensor->numel, &bytes))
        return fr_fail(p->err, FR_EFORMAT, "%s: tensor '%s': shape %s is too large", p->path,
                       p->tensor_shown, shape);
    uint64_t begin = (uint64_t)offsets[0], end = (uint64_t)offsets[1];
    if (begin > end)
        return fr_fail(p->err, FR_EFORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                       p->path, p->tensor_shown, begin, end);
    if (end > p->data_bytes)
        return fr_fail(p->err, FR_EFORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of "
                       "the data section (%zu bytes; is the file truncated?)",
                       p->path, p->tensor_shown, begin, end, p->data_bytes);
    if (end - begin != bytes)
        return fr_fail(p->err, FR_EFORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] do not match shape "
                       "%s (%zu bytes)",
                       p->path, p->tensor_shown, begin, end, shape, bytes);
    return FR_OK;
}

/* The value of one tensor entry: {"dtype":"F32","shape":[...],"data_offsets":[b,e]}. */
static int parse_tensor(header_parser *p, const char *name, size_t name_length) {
    st_file_storage *storage = p->storage;
    fr_st_file *file = &storage->file;
    if (name_length > TENSOR_NAME_LIMIT)
        return fr_fail(p->err, FR_EFORMAT, "%s: tensor name '%.40s...' is longer than %d bytes",
                       p->path, fr_printable(name, p->tensor_shown, sizeof p->tensor_shown),
                       TENSOR_NAME_LIMIT);
    fr_printable(name, p->tensor_shown, sizeof p->tensor_shown);

    fr_st_tensor *tensors = grow_for_one_more(file->tensors, file->tensor_count,
                                              &storage->tensor_capacity, sizeof *tensors);
    if (!tensors)
        return out_of_memory(p);
    file->tensors = tensors;
    tensor_extent *extents = grow_for_one_more(p->extents, file->tensor_count,
                                               &p->extent_capacity, sizeof *extents);
    if (!extents)
        return out_of_memory(p);
    p->extents = extents;

    fr_st_tensor *tensor = &file->tensors[file->tensor_count];
    memset(tensor, 0, sizeof *tensor);
    memcpy(tensor->name, name, name_length + 1);

    skip_whitespace(p);
    if (peek(p) != '{')
        return tensor_error(p, "expected an object with dtype, shape and data_offsets");
    p->pos++;
    bool seen_dtype = false, seen_shape = false, seen_offsets = false;
    bool first = true, done = false;
    int64_t offsets[2] = {0, 0};
    int status = FR_OK;
    while (status == FR_OK) {
        char *key;
        size_t key_length;
        if ((status = next_object_key(p, &first, &key, &key_length, &done)) != FR_OK || done)
            break;
        if (strcmp(key, "dtype") == 0 && !seen_dtype) {
            char *dtype;
            size_t dtype_length;
            seen_dtype = true;
            status = parse_string(p, &dtype, &dtype_length);
            if (status == FR_OK && strcmp(dtype, "F32") != 0) {
                char shown[32];
                status = fr_fail(p->err, FR_EFORMAT,
                                 "%s: tensor '%s' has dtype %s; only F32 is supported", p->path,
                                 p->tensor_shown, fr_printable(dtype, shown, sizeof shown));
            }
            fr_free(dtype);
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            seen_shape = true;
            status = parse_shape(p, tensor);
        } else if (strcmp(key, "data_offsets") == 0 && !seen_offsets) {
            seen_offsets = true;
            status = parse_offsets(p, offsets);
        } else if (!strcmp(key, "dtype") || !strcmp(key, "shape") ||
                   !strcmp(key, "data_offsets")) {
            status = fr_fail(p->err, FR_EFORMAT, "%s: tensor '%s': repeated key '%s'", p->path,
                             p->tensor_shown, key);
        } else {
            /* As the reference: other keys are ignored (their values must still be JSON). */
            status = skip_value(p, 1);
        }
        fr_free(key);
    }
    if (status)
        return status;
    if (!seen_dtype || !seen_shape || !seen_offsets)
        return fr_fail(p->err, FR_EFORMAT, "%s: tensor '%s' has no %s", p->path, p->tensor_shown,
                       !seen_dtype ? "dtype" : !seen_shape ? "shape" : "data_offsets");
    if ((status = check_tensor_extent(p, tensor, offsets)) != FR_OK)
        return status;
    p->extents[file->tensor_count] = (tensor_extent){
        .begin = (uint64_t)offsets[0], .end = (uint64_t)offsets[1], .tensor = file->tensor_count};
    file->tensor_count++;
    return FR_OK;
}

/* "__metadata__": an object mapping strings to strings. */
static int parse_metadata(header_parser *p) {
    st_file_storage *storage = p->storage;
    fr_st_file *file = &storage->file;
    skip_whitespace(p);
    if (peek(p) != '{')
        return fr_fail(p->err, FR_EFORMAT, "%s: __metadata__ must be an object of strings (or null)",
                       p->path);
    p->pos++;
    bool first = true, done = false;
    for (;;) {
        char *key, *value;
        size_t key_length, value_length;
        int status = next_object_key(p, &first, &key, &key_length, &done);
        if (status || done)
            return status;
        if (peek(p) != '"') {
            char shown[FR_NAME_MAX];
            status = fr_fail(p->err, FR_EFORMAT, "%s: __metadata__ value of '%s' is not a string",
                             p->path, fr_printable(key, shown, sizeof shown));
            fr_free(key);
            return status;
        }
        if ((status = parse_string(p, &value, &value_length)) != FR_OK) {
            fr_free(key);
            return status;
        }
        fr_st_meta *meta = grow_for_one_more(file->meta, file->meta_count,
                                             &storage->meta_capacity, sizeof *meta);
        if (!meta) {
            fr_free(key);
            fr_free(value);
            return out_of_memory(p);
        }
        file->meta = meta;
        file->meta[file->meta_count++] = (fr_st_meta){.key = key, .value = value};
    }
}

static int parse_header(header_parser *p) {
    skip_whitespace(p);
    if (peek(p) != '{')
        return syntax_error(p, "the header must be a JSON object");
    p->pos++;
    bool first = true, done = false, seen_metadata = false;
    for (;;) {
        char *key;
        size_t key_length;
        int status = next_object_key(p, &first, &key, &key_length, &done);
        if (status)
            return status;
        if (done)
            break;
        if (strcmp(key, "__metadata__") == 0) {
            /* null is the reference's "no metadata". */
            status = seen_metadata ? fr_fail(p->err, FR_EFORMAT,
                                             "%s: __metadata__ appears twice in the header", p->path)
                     : peek(p) == 'n' ? parse_literal(p, "null")
                                      : parse_metadata(p);
            seen_metadata = true;
        } else {
            status = parse_tensor(p, key, key_length);
        }
        fr_free(key);
        if (status)
            return status;
    }
    /* The reference writer pads the header with spaces; anything else is wrong. */
    skip_whitespace(p);
    if (p->pos != p->length)
        return syntax_error(p, "unexpected text after the header object");
    return FR_OK;
}

/* ------------------------------------------------------------ checks */

static int check_unique_names(header_parser *p) {
    fr_st_file *file = &p->storage->file;
    int count = file->tensor_count > file->meta_count ? file->tensor_count : file->meta_count;
    if (count < 2)
        return FR_OK;
    const char **names = fr_alloc((size_t)count * sizeof *names);
    if (!names)
        return out_of_memory(p);
    char shown[FR_NAME_MAX * 2];
    int status = FR_OK;
    for (int i = 0; i < file->tensor_count; i++)
        names[i] = file->tensors[i].name;
    const char *repeated = find_repeated(names, file->tensor_count);
    if (repeated) {
        status = fr_fail(p->err, FR_EFORMAT, "%s: tensor '%s' appears twice in the header",
                         p->path, fr_printable(repeated, shown, sizeof shown));
    } else {
        for (int i = 0; i < file->meta_count; i++)
            names[i] = file->meta[i].key;
        if ((repeated = find_repeated(names, file->meta_count)) != NULL)
            status = fr_fail(p->err, FR_EFORMAT, "%s: __metadata__ key '%s' appears twice",
                             p->path, fr_printable(repeated, shown, sizeof shown));
    }
    fr_free(names);
    return status;
}

static int compare_extents(const void *a, const void *b) {
    const tensor_extent *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/*
 * The reference reader's rule: taken in order of their offsets, the tensors
 * tile the data section exactly, the first at 0, each where the one before
 * ends, the last at its end.  No overlap, no hole, nothing after: bytes no
 * tensor owns could hide another file (a polyglot) that other readers see.
 * Empty tensors take no bytes and may sit at any boundary.
 */
static int check_tiling(header_parser *p) {
    fr_st_file *file = &p->storage->file;
    if (file->tensor_count > 0) /* qsort must not see the NULL of an empty list */
        qsort(p->extents, (size_t)file->tensor_count, sizeof *p->extents, compare_extents);
    const tensor_extent *previous = NULL; /* the last tensor that took bytes */
    uint64_t covered = 0;                 /* bytes [0, covered) are owned */
    char first[FR_NAME_MAX * 2], second[FR_NAME_MAX * 2];
    for (int i = 0; i < file->tensor_count; i++) {
        const tensor_extent *extent = &p->extents[i];
        const char *name = fr_printable(file->tensors[extent->tensor].name, second, sizeof second);
        if (extent->begin > covered)
            return fr_fail(p->err, FR_EFORMAT,
                           "%s: tensor '%s' [%" PRIu64 ", %" PRIu64 "] leaves bytes [%" PRIu64
                           ", %" PRIu64 ") of the data section to no tensor",
                           p->path, name, extent->begin, extent->end, covered, extent->begin);
        if (extent->begin < covered)
            return fr_fail(p->err, FR_EFORMAT,
                           "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 "] and '%s' [%" PRIu64
                           ", %" PRIu64 "] overlap",
                           p->path,
                           fr_printable(file->tensors[previous->tensor].name, first, sizeof first),
                           previous->begin, previous->end, name, extent->begin, extent->end);
        if (extent->end > extent->begin) {
            previous = extent;
            covered = extent->end;
        }
    }
    if (covered != p->data_bytes)
        return fr_fail(p->err, FR_EFORMAT,
                       "%s: %" PRIu64 " byte%s after the last tensor's data belong%s to no "
                       "tensor (data section %zu bytes, tensors end at %" PRIu64 ")",
                       p->path, (uint64_t)p->data_bytes - covered,
                       p->data_bytes - covered == 1 ? "" : "s",
                       p->data_bytes - covered == 1 ? "s" : "", p->data_bytes, covered);
    return FR_OK;
}

/*
 * Points each tensor at its data.  The data section starts FR_ALIGN-aligned and
 * the tensors tile it from 0 in 4-byte elements, so every tensor is
 * float-aligned where it lies and is used in place.
 */
static void place_tensor_data(header_parser *p, const unsigned char *data_section) {
    fr_st_file *file = &p->storage->file;
    for (int i = 0; i < file->tensor_count; i++) {
        const tensor_extent *extent = &p->extents[i];
        file->tensors[extent->tensor].data =
            (const float *)(const void *)(data_section + extent->begin);
    }
}

/* --------------------------------------------------------------- read */

/*
 * Reads the whole file into storage->allocation, shifted so that the data
 * section (which starts at 8 + header length, any alignment) lands on an
 * FR_ALIGN boundary.  The header length is checked against the file size and
 * the limit before anything is allocated.
 */
static int read_stream(st_file_storage *storage, FILE *stream, const char *path,
                       uint64_t *header_bytes, fr_error *err) {
    struct stat info;
    if (fstat(fileno(stream), &info) != 0)
        return fr_fail(err, FR_EIO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(info.st_mode))
        return fr_fail(err, FR_EIO, "%s: not a regular file", path);
    if (info.st_size == 0)
        return fr_fail(err, FR_EFORMAT, "%s: file is empty, not a safetensors file", path);
    if (info.st_size < LENGTH_FIELD_BYTES)
        return fr_fail(err, FR_EFORMAT,
                       "%s: file is only %lld bytes, too short for a safetensors header", path,
                       (long long)info.st_size);
    if ((uintmax_t)info.st_size > SIZE_MAX - FR_ALIGN * 2)
        return fr_fail(err, FR_ENOMEM, "%s: file too large to read", path);
    size_t file_bytes = (size_t)info.st_size;

    unsigned char length_field[LENGTH_FIELD_BYTES];
    if (fread(length_field, 1, sizeof length_field, stream) != sizeof length_field)
        return fr_fail(err, FR_EIO, "%s: cannot read: %s", path,
                       ferror(stream) ? strerror(errno) : "file shrank while being read");
    uint64_t length = 0;
    for (int i = LENGTH_FIELD_BYTES - 1; i >= 0; i--)
        length = length << 8 | length_field[i];
    if (length < 2)
        return fr_fail(err, FR_EFORMAT,
                       "%s: header length %" PRIu64 " is too small for a JSON object", path, length);
    if (length > HEADER_LIMIT_BYTES)
        return fr_fail(err, FR_EFORMAT,
                       "%s: header length %" PRIu64 " exceeds the limit of %u bytes (corrupt file?)",
                       path, length, HEADER_LIMIT_BYTES);
    if (length > file_bytes - LENGTH_FIELD_BYTES)
        return fr_fail(err, FR_EFORMAT,
                       "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                       path, length, file_bytes);

    size_t data_start = LENGTH_FIELD_BYTES + (size_t)length;
    size_t lead = (FR_ALIGN - data_start % FR_ALIGN) % FR_ALIGN;
    storage->allocation = fr_alloc(lead + file_bytes);
    if (!storage->allocation)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory reading %zu bytes", path, file_bytes);
    unsigned char *bytes = storage->allocation + lead;
    memcpy(bytes, length_field, sizeof length_field);
    size_t rest = file_bytes - LENGTH_FIELD_BYTES;
    if (fread(bytes + LENGTH_FIELD_BYTES, 1, rest, stream) != rest)
        return fr_fail(err, FR_EIO, "%s: cannot read: %s", path,
                       ferror(stream) ? strerror(errno) : "file shrank while being read");
    storage->file.bytes = bytes;
    storage->file.size = file_bytes;
    *header_bytes = length;
    return FR_OK;
}

static int parse_and_check(st_file_storage *storage, const char *path, uint64_t header_bytes,
                           fr_error *err) {
    const unsigned char *bytes = storage->file.bytes;
    size_t data_start = LENGTH_FIELD_BYTES + (size_t)header_bytes;
    header_parser parser = {
        .path = path,
        .text = bytes + LENGTH_FIELD_BYTES,
        .length = (size_t)header_bytes,
        .data_bytes = storage->file.size - data_start,
        .storage = storage,
        .err = err,
    };
    int status = parse_header(&parser);
    if (status == FR_OK)
        status = check_unique_names(&parser);
    if (status == FR_OK)
        status = check_tiling(&parser);
    if (status == FR_OK)
        place_tensor_data(&parser, bytes + data_start);
    fr_free(parser.extents);
    return status;
}

int fr_st_read(const char *path, fr_st_file **out, fr_error *err) {
    *out = NULL;
    st_file_storage *storage = fr_alloc(sizeof *storage);
    if (!storage || !(storage->file.path = copy_string(path))) {
        fr_free(storage);
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    }
    uint64_t header_bytes = 0;
    int status;
    FILE *stream = fopen(path, "rb");
    if (!stream) {
        status = fr_fail(err, FR_EIO, "%s: cannot open: %s", path, strerror(errno));
    } else {
        status = read_stream(storage, stream, path, &header_bytes, err);
        fclose(stream);
    }
    if (status == FR_OK)
        status = parse_and_check(storage, path, header_bytes, err);
    if (status) {
        fr_st_free(&storage->file);
        return status;
    }
    *out = &storage->file;
    return FR_OK;
}

void fr_st_free(fr_st_file *file) {
    if (!file)
        return;
    st_file_storage *storage = (st_file_storage *)file; /* file is its first member */
    for (int i = 0; i < file->meta_count; i++) {
        fr_free(file->meta[i].key);
        fr_free(file->meta[i].value);
    }
    fr_free(file->meta);
    fr_free(file->tensors);
    fr_free(file->path);
    fr_free(storage->allocation);
    fr_free(storage);
}

const fr_st_tensor *fr_st_find(const fr_st_file *file, const char *name) {
    for (int i = 0; i < file->tensor_count; i++)
        if (strcmp(file->tensors[i].name, name) == 0)
            return &file->tensors[i];
    return NULL;
}

const char *fr_st_meta_get(const fr_st_file *file, const char *key) {
    for (int i = 0; i < file->meta_count; i++)
        if (strcmp(file->meta[i].key, key) == 0)
            return file->meta[i].value;
    return NULL;
}

/* -------------------------------------------------------------- write */

/* A growing string for the JSON header; `failed` records running out of memory. */
typedef struct header_text {
    char *text;
    size_t length, capacity;
    bool failed;
} header_text;

static void append_bytes(header_text *h, const char *bytes, size_t count) {
    if (h->failed)
        return;
    if (count > h->capacity - h->length) {
        size_t capacity = h->capacity ? h->capacity : 256;
        while (capacity - h->length < count) {
            if (capacity > SIZE_MAX / 2) {
                h->failed = true;
                return;
            }
            capacity *= 2;
        }
        char *grown = fr_alloc(capacity);
        if (!grown) {
            h->failed = true;
            return;
        }
        if (h->length)
            memcpy(grown, h->text, h->length);
        fr_free(h->text);
        h->text = grown;
        h->capacity = capacity;
    }
    memcpy(h->text + h->length, bytes, count);
    h->length += count;
}

static void append_text(header_text *h, const char *text) { append_bytes(h, text, strlen(text)); }

static void append_integer(header_text *h, uint64_t value) {
    char digits[24];
    snprintf(digits, sizeof digits, "%" PRIu64, value);
    append_text(h, digits);
}

static void append_json_string(header_text *h, const char *text) {
    append_bytes(h, "\"", 1);
    for (const char *c = text; *c; c++) {
        unsigned char byte = (unsigned char)*c;
        char escaped[8];
        if (byte == '"' || byte == '\\') {
            escaped[0] = '\\';
            escaped[1] = (char)byte;
            append_bytes(h, escaped, 2);
        } else if (byte < 0x20) {
            snprintf(escaped, sizeof escaped, "\\u%04x", (unsigned)byte);
            append_text(h, escaped);
        } else {
            append_bytes(h, c, 1);
        }
    }
    append_bytes(h, "\"", 1);
}

/* Any UTF-8 name the reader accepts, the empty one too (the reference
 * reader takes it). */
static bool is_writable_name(const char *name) {
    return name && strlen(name) <= TENSOR_NAME_LIMIT && is_valid_utf8(name);
}

/* Refuses, before anything is written, what fr_st_read would refuse. */
static int check_what_to_write(const char *path, const fr_st_out *tensors, int tensor_count,
                               const fr_st_meta *meta, int meta_count, fr_error *err) {
    if (tensor_count < 0 || meta_count < 0 || (tensor_count && !tensors) || (meta_count && !meta))
        return fr_fail(err, FR_EINVAL, "%s: invalid tensor or metadata list", path);
    size_t total_bytes = 0;
    for (int i = 0; i < tensor_count; i++) {
        const fr_st_out *tensor = &tensors[i];
        size_t numel, bytes;
        if (!is_writable_name(tensor->name))
            return fr_fail(err, FR_EINVAL,
                           "%s: tensor %d needs a UTF-8 name of at most %d bytes", path,
                           i, TENSOR_NAME_LIMIT);
        if (tensor->ndim < 0 || tensor->ndim > FR_MAX_DIMS)
            return fr_fail(err, FR_EINVAL, "%s: tensor '%s' has %d dimensions (at most %d)", path,
                           tensor->name, tensor->ndim, FR_MAX_DIMS);
        if (!shape_bytes(tensor->shape, tensor->ndim, &numel, &bytes) ||
            bytes > SIZE_MAX - total_bytes)
            return fr_fail(err, FR_EINVAL, "%s: tensor '%s' has an invalid or too large shape",
                           path, tensor->name);
        if (numel && !tensor->data)
            return fr_fail(err, FR_EINVAL, "%s: tensor '%s' has no data", path, tensor->name);
        total_bytes += bytes;
    }
    for (int i = 0; i < meta_count; i++)
        if (!meta[i].key || !meta[i].value || !is_valid_utf8(meta[i].key) ||
            !is_valid_utf8(meta[i].value))
            return fr_fail(err, FR_EINVAL, "%s: metadata entry %d is not a pair of UTF-8 strings",
                           path, i);

    int count = tensor_count > meta_count ? tensor_count : meta_count;
    if (count < 2)
        return FR_OK;
    const char **names = fr_alloc((size_t)count * sizeof *names);
    if (!names)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    int status = FR_OK;
    for (int i = 0; i < tensor_count; i++)
        names[i] = tensors[i].name;
    const char *repeated = find_repeated(names, tensor_count);
    if (repeated) {
        status = fr_fail(err, FR_EINVAL, "%s: tensor '%s' is given twice", path, repeated);
    } else {
        for (int i = 0; i < meta_count; i++)
            names[i] = meta[i].key;
        if ((repeated = find_repeated(names, meta_count)) != NULL)
            status = fr_fail(err, FR_EINVAL, "%s: metadata key '%s' is given twice", path, repeated);
    }
    fr_free(names);
    return status;
}

/* The 8-byte length field followed by the JSON header, padded with spaces so
 * the data section starts at a multiple of 8 as the reference writer does. */
static int build_header(header_text *h, const char *path, const fr_st_out *tensors,
                        int tensor_count, const fr_st_meta *meta, int meta_count, fr_error *err) {
    append_bytes(h, "\0\0\0\0\0\0\0\0", LENGTH_FIELD_BYTES);
    append_text(h, "{");
    if (meta_count) {
        append_text(h, "\"__metadata__\":{");
        for (int i = 0; i < meta_count; i++) {
            if (i)
                append_text(h, ",");
            append_json_string(h, meta[i].key);
            append_text(h, ":");
            append_json_string(h, meta[i].value);
        }
        append_text(h, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < tensor_count; i++) {
        const fr_st_out *tensor = &tensors[i];
        size_t numel, bytes;
        shape_bytes(tensor->shape, tensor->ndim, &numel, &bytes); /* checked already */
        if (i || meta_count)
            append_text(h, ",");
        append_json_string(h, tensor->name);
        append_text(h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < tensor->ndim; d++) {
            if (d)
                append_text(h, ",");
            append_integer(h, (uint64_t)tensor->shape[d]);
        }
        append_text(h, "],\"data_offsets\":[");
        append_integer(h, offset);
        append_text(h, ",");
        append_integer(h, offset + bytes);
        append_text(h, "]}");
        offset += bytes;
    }
    append_text(h, "}");
    while ((h->length - LENGTH_FIELD_BYTES) % 8 != 0)
        append_text(h, " ");
    if (h->failed)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory building the header", path);
    uint64_t header_bytes = h->length - LENGTH_FIELD_BYTES;
    if (header_bytes > HEADER_LIMIT_BYTES)
        return fr_fail(err, FR_EINVAL, "%s: header of %" PRIu64 " bytes exceeds the limit of %u",
                       path, header_bytes, HEADER_LIMIT_BYTES);
    for (int i = 0; i < LENGTH_FIELD_BYTES; i++)
        h->text[i] = (char)(header_bytes >> (8 * i) & 0xff);
    return FR_OK;
}

typedef struct st_contents {
    const header_text *header;
    const fr_st_out *tensors;
    int tensor_count;
} st_contents;

static bool write_contents(FILE *stream, void *context) {
    const st_contents *c = context;
    if (fwrite(c->header->text, 1, c->header->length, stream) != c->header->length)
        return false;
    for (int i = 0; i < c->tensor_count; i++) {
        size_t numel, bytes;
        shape_bytes(c->tensors[i].shape, c->tensors[i].ndim, &numel, &bytes);
        if (numel && fwrite(c->tensors[i].data, FLOAT_BYTES, numel, stream) != numel)
            return false;
    }
    return true;
}

int fr_st_write(const char *path, const fr_st_out *tensors, int tensor_count,
                const fr_st_meta *meta, int meta_count, fr_error *err) {
    if (!path || !path[0])
        return fr_fail(err, FR_EINVAL, "safetensors: no path to write to");
    int status = check_what_to_write(path, tensors, tensor_count, meta, meta_count, err);
    if (status)
        return status;
    header_text header = {0};
    status = build_header(&header, path, tensors, tensor_count, meta, meta_count, err);
    st_contents contents = {&header, tensors, tensor_count};
    if (status == FR_OK)
        status = fr_write_atomic(path, write_contents, &contents, err);
    fr_free(header.text);
    return status;
}
