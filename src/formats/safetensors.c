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
 * file size and the 100 MB limit before the header is parsed; the header
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
 * The JSON itself is read and written by json.c; this file walks the
 * document the format defines and checks what it says.
 *
 * The whole file is read into one buffer (fileio.c's fr_read_file, so memory
 * follows the file's real size, never a length it claims), moved so that the
 * data section starts FR_ALIGN-aligned; the tensors then point straight into
 * it (tiling from 0 with 4-byte elements keeps each of them float-aligned).
 *
 * The writer produces what the reference implementation produces: the header
 * padded with spaces to a multiple of 8 bytes, "__metadata__" first, tensors in
 * the given order, written to PATH.tmp.PID, fsync'd and renamed over PATH.
 */
#define _POSIX_C_SOURCE 200809L

#include "core/json.h"

#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and frost uses it in place"
#endif

#define LENGTH_FIELD_BYTES 8
/* The reference implementation refuses larger headers; so do we, before parsing. */
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
static bool shape_bytes(const int64_t *shape, int ndim, bool i64, size_t *numel, size_t *bytes) {
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (uint64_t)shape[d] > SIZE_MAX ||
            !fr_mul_size(count, (size_t)shape[d], &count))
            return false;
    }
    *numel = count;
    return fr_mul_size(count, i64 ? sizeof(int64_t) : FLOAT_BYTES, bytes);
}

/* ------------------------------------------------------- JSON header */

typedef struct header_parser {
    fr_json_reader json;        /* over the header; json.source is the path */
    const char *path;           /* for messages */
    size_t data_bytes;          /* size of the data section */
    st_file_storage *storage;
    tensor_extent *extents;     /* one per tensor, same order */
    int extent_capacity;
    char tensor_shown[FR_NAME_MAX * 2]; /* the tensor being parsed, for messages */
    fr_error *err;
} header_parser;

static int tensor_error(header_parser *p, const char *problem) {
    return fr_fail(p->err, FR_EFORMAT, "%s: tensor '%s': %s", p->path, p->tensor_shown, problem);
}

static int parse_shape(header_parser *p, fr_st_tensor *tensor) {
    fr_json_skip_whitespace(&p->json);
    if (fr_json_peek(&p->json) != '[')
        return tensor_error(p, "shape must be an array of integers");
    p->json.pos++;
    bool first = true, done = false;
    for (;;) {
        int status = fr_json_next_element(&p->json, &first, &done);
        if (status || done)
            return status;
        if (tensor->ndim == FR_MAX_DIMS)
            return fr_fail(p->err, FR_EFORMAT,
                           "%s: tensor '%s' has more than %d dimensions, the most frost supports",
                           p->path, p->tensor_shown, FR_MAX_DIMS);
        int64_t dim;
        bool negative;
        if ((status = fr_json_integer(&p->json, &dim, &negative)) != FR_OK)
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
    fr_json_skip_whitespace(&p->json);
    if (fr_json_peek(&p->json) != '[')
        return tensor_error(p, wrong);
    p->json.pos++;
    bool first = true, done = false;
    int count = 0;
    for (;;) {
        int status = fr_json_next_element(&p->json, &first, &done);
        if (status)
            return status;
        if (done)
            return count == 2 ? FR_OK : tensor_error(p, wrong);
        int64_t offset;
        bool negative;
        if ((status = fr_json_integer(&p->json, &offset, &negative)) != FR_OK)
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
    if (!shape_bytes(tensor->shape, tensor->ndim, tensor->i64, &tensor->numel, &bytes))
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
        return fr_json_out_of_memory(&p->json);
    file->tensors = tensors;
    tensor_extent *extents = grow_for_one_more(p->extents, file->tensor_count,
                                               &p->extent_capacity, sizeof *extents);
    if (!extents)
        return fr_json_out_of_memory(&p->json);
    p->extents = extents;

    fr_st_tensor *tensor = &file->tensors[file->tensor_count];
    memset(tensor, 0, sizeof *tensor);
    memcpy(tensor->name, name, name_length + 1);

    fr_json_skip_whitespace(&p->json);
    if (fr_json_peek(&p->json) != '{')
        return tensor_error(p, "expected an object with dtype, shape and data_offsets");
    p->json.pos++;
    bool seen_dtype = false, seen_shape = false, seen_offsets = false;
    bool first = true, done = false;
    int64_t offsets[2] = {0, 0};
    int status = FR_OK;
    while (status == FR_OK) {
        char *key;
        size_t key_length;
        if ((status = fr_json_next_key(&p->json, &first, &key, &key_length, &done)) != FR_OK || done)
            break;
        if (strcmp(key, "dtype") == 0 && !seen_dtype) {
            char *dtype;
            size_t dtype_length;
            seen_dtype = true;
            status = fr_json_string(&p->json, &dtype, &dtype_length);
            tensor->i64 = status == FR_OK && strcmp(dtype, "I64") == 0;
            if (status == FR_OK && strcmp(dtype, "F32") != 0 && !tensor->i64) {
                char shown[32];
                status = fr_fail(p->err, FR_EFORMAT,
                                 "%s: tensor '%s' has dtype %s; only F32 and I64 are supported",
                                 p->path,
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
            status = fr_json_skip_value(&p->json, 1);
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
    fr_json_skip_whitespace(&p->json);
    if (fr_json_peek(&p->json) != '{')
        return fr_fail(p->err, FR_EFORMAT, "%s: __metadata__ must be an object of strings (or null)",
                       p->path);
    p->json.pos++;
    bool first = true, done = false;
    for (;;) {
        char *key, *value;
        size_t key_length, value_length;
        int status = fr_json_next_key(&p->json, &first, &key, &key_length, &done);
        if (status || done)
            return status;
        if (fr_json_peek(&p->json) != '"') {
            char shown[FR_NAME_MAX];
            status = fr_fail(p->err, FR_EFORMAT, "%s: __metadata__ value of '%s' is not a string",
                             p->path, fr_printable(key, shown, sizeof shown));
            fr_free(key);
            return status;
        }
        if ((status = fr_json_string(&p->json, &value, &value_length)) != FR_OK) {
            fr_free(key);
            return status;
        }
        fr_st_meta *meta = grow_for_one_more(file->meta, file->meta_count,
                                             &storage->meta_capacity, sizeof *meta);
        if (!meta) {
            fr_free(key);
            fr_free(value);
            return fr_json_out_of_memory(&p->json);
        }
        file->meta = meta;
        file->meta[file->meta_count++] = (fr_st_meta){.key = key, .value = value};
    }
}

static int parse_header(header_parser *p) {
    fr_json_skip_whitespace(&p->json);
    if (fr_json_peek(&p->json) != '{')
        return fr_json_syntax_error(&p->json, "the header must be a JSON object");
    p->json.pos++;
    bool first = true, done = false, seen_metadata = false;
    for (;;) {
        char *key;
        size_t key_length;
        int status = fr_json_next_key(&p->json, &first, &key, &key_length, &done);
        if (status)
            return status;
        if (done)
            break;
        if (strcmp(key, "__metadata__") == 0) {
            /* null is the reference's "no metadata". */
            status = seen_metadata ? fr_fail(p->err, FR_EFORMAT,
                                             "%s: __metadata__ appears twice in the header", p->path)
                     : fr_json_peek(&p->json) == 'n' ? fr_json_literal(&p->json, "null")
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
    fr_json_skip_whitespace(&p->json);
    if (p->json.pos != p->json.length)
        return fr_json_syntax_error(&p->json, "unexpected text after the header object");
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
        return fr_json_out_of_memory(&p->json);
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
        fr_st_tensor *tensor = &file->tensors[extent->tensor];
        if (tensor->i64)
            tensor->data_i64 = data_section + extent->begin;
        else
            tensor->data = (const float *)(const void *)(data_section + extent->begin);
    }
}

/* --------------------------------------------------------------- read */

/*
 * Reads the whole file (fileio.c's reader) into storage->allocation, then
 * shifts it so that the data section (which starts at 8 + header length, any
 * alignment) lands on an FR_ALIGN boundary.  The header length is checked
 * against the file's size and the limit before the header is parsed; memory
 * follows the file's real size, never a length it claims.
 */
static int read_file(st_file_storage *storage, const char *path, uint64_t *header_bytes,
                     fr_error *err) {
    unsigned char *allocation;
    size_t file_bytes;
    int status = fr_read_file(path, SIZE_MAX / 2, FR_ALIGN, &allocation, &file_bytes, err);
    if (status != FR_OK)
        return status;
    storage->allocation = allocation;
    if (file_bytes == 0)
        return fr_fail(err, FR_EFORMAT, "%s: file is empty, not a safetensors file", path);
    if (file_bytes < LENGTH_FIELD_BYTES)
        return fr_fail(err, FR_EFORMAT,
                       "%s: file is only %zu bytes, too short for a safetensors header", path,
                       file_bytes);
    uint64_t length = 0;
    for (int i = LENGTH_FIELD_BYTES - 1; i >= 0; i--)
        length = length << 8 | allocation[i];
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

    /* The buffer is FR_ALIGN-aligned with FR_ALIGN spare bytes after the file. */
    size_t data_start = LENGTH_FIELD_BYTES + (size_t)length;
    size_t lead = (FR_ALIGN - data_start % FR_ALIGN) % FR_ALIGN;
    if (lead)
        memmove(allocation + lead, allocation, file_bytes);
    storage->file.bytes = allocation + lead;
    storage->file.size = file_bytes;
    *header_bytes = length;
    return FR_OK;
}

static int parse_and_check(st_file_storage *storage, const char *path, uint64_t header_bytes,
                           fr_error *err) {
    const unsigned char *bytes = storage->file.bytes;
    size_t data_start = LENGTH_FIELD_BYTES + (size_t)header_bytes;
    header_parser parser = {
        .json = {.source = path,
                 .what = "the header",
                 .text = bytes + LENGTH_FIELD_BYTES,
                 .length = (size_t)header_bytes,
                 .err = err},
        .path = path,
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
    int status = read_file(storage, path, &header_bytes, err);
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

/* Any UTF-8 name the reader accepts, the empty one too (the reference
 * reader takes it). */
static bool is_writable_name(const char *name) {
    return name && strlen(name) <= TENSOR_NAME_LIMIT && fr_json_is_utf8(name);
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
        if (!shape_bytes(tensor->shape, tensor->ndim, tensor->i64, &numel, &bytes) ||
            bytes > SIZE_MAX - total_bytes)
            return fr_fail(err, FR_EINVAL, "%s: tensor '%s' has an invalid or too large shape",
                           path, tensor->name);
        if (numel && !tensor->data)
            return fr_fail(err, FR_EINVAL, "%s: tensor '%s' has no data", path, tensor->name);
        total_bytes += bytes;
    }
    for (int i = 0; i < meta_count; i++)
        if (!meta[i].key || !meta[i].value || !fr_json_is_utf8(meta[i].key) ||
            !fr_json_is_utf8(meta[i].value))
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

/* The JSON header, padded with spaces so the data section starts at a
 * multiple of 8 as the reference writer does. */
static int build_header(fr_text *h, const char *path, const fr_st_out *tensors,
                        int tensor_count, const fr_st_meta *meta, int meta_count, fr_error *err) {
    fr_text_printf(h, "{");
    if (meta_count) {
        fr_text_printf(h, "\"__metadata__\":{");
        for (int i = 0; i < meta_count; i++) {
            if (i)
                fr_text_printf(h, ",");
            fr_json_append_string(h, meta[i].key);
            fr_text_printf(h, ":");
            fr_json_append_string(h, meta[i].value);
        }
        fr_text_printf(h, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < tensor_count; i++) {
        const fr_st_out *tensor = &tensors[i];
        size_t numel, bytes;
        shape_bytes(tensor->shape, tensor->ndim, tensor->i64, &numel, &bytes); /* checked already */
        if (i || meta_count)
            fr_text_printf(h, ",");
        fr_json_append_string(h, tensor->name);
        fr_text_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", tensor->i64 ? "I64" : "F32");
        for (int d = 0; d < tensor->ndim; d++)
            fr_text_printf(h, "%s%" PRIu64, d ? "," : "", (uint64_t)tensor->shape[d]);
        fr_text_printf(h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset,
                       offset + bytes);
        offset += bytes;
    }
    fr_text_printf(h, "}");
    while (!h->failed && h->length % 8 != 0)
        fr_text_printf(h, " ");
    if (h->failed)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory building the header", path);
    if (h->length > HEADER_LIMIT_BYTES)
        return fr_fail(err, FR_EINVAL, "%s: header of %zu bytes exceeds the limit of %u",
                       path, h->length, HEADER_LIMIT_BYTES);
    return FR_OK;
}

typedef struct st_contents {
    const fr_text *header;
    const fr_st_out *tensors;
    int tensor_count;
} st_contents;

/* The 8-byte little-endian header length, the header, the tensors' data. */
static bool write_contents(FILE *stream, void *context) {
    const st_contents *c = context;
    unsigned char length_field[LENGTH_FIELD_BYTES];
    for (int i = 0; i < LENGTH_FIELD_BYTES; i++)
        length_field[i] = (unsigned char)((uint64_t)c->header->length >> (8 * i) & 0xff);
    if (fwrite(length_field, 1, sizeof length_field, stream) != sizeof length_field ||
        fwrite(c->header->data, 1, c->header->length, stream) != c->header->length)
        return false;
    for (int i = 0; i < c->tensor_count; i++) {
        size_t numel, bytes;
        shape_bytes(c->tensors[i].shape, c->tensors[i].ndim, c->tensors[i].i64, &numel, &bytes);
        if (numel && fwrite(c->tensors[i].data, bytes / numel, numel, stream) != numel)
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
    fr_text header = {0};
    status = build_header(&header, path, tensors, tensor_count, meta, meta_count, err);
    st_contents contents = {&header, tensors, tensor_count};
    if (status == FR_OK)
        status = fr_write_atomic(path, write_contents, &contents, err);
    free(header.data);
    return status;
}
