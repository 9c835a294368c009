/*
 * tokenize.c - `frost tokenize`: text files to the token .npy files frost
 * trains on (DESIGN.md, "Sequences, GPT-2 and adapters").
 *
 *   frost tokenize --out DIR [--tokenizer byte|DIR] [--seq-len T]
 *       [--test-fraction F] [--dtype int32|uint16|int64] [--label-per-file]
 *       [--seed N] FILE...
 *
 * Language modelling (the default): the files' tokens, in the order given
 * (GPT-2 puts <|endoftext|> between two files, bytes nothing), are cut into
 * windows of T+1 tokens, the last partial one dropped: DIR/train_x.npy
 * (N, T+1), and the last round(F*N) windows as DIR/test_x.npy.
 * --label-per-file: each file is a class (its position in the list); its
 * records (paragraphs between lines holding only '%', as fortune files
 * write them, or else between blank lines) become rows of T tokens, cut or
 * padded at the end (0 for bytes, <|endoftext|> for GPT-2), shuffled with
 * --seed: train_x.npy (N, T), train_y.npy (N,) int64, the last round(F*N)
 * rows as test_x/test_y, and classes.txt (the files' names, one a line).
 *
 * Everything is computed before anything is written, so bad input leaves no
 * file.  Each file is written atomically; if one cannot be written, those
 * already written by this run are removed.  Files of frost's data names that
 * this run does not write (a train_y.npy from an earlier classification run
 * would turn language modelling into classification) are removed last.
 * The flags have their own small parser here: they take positional files,
 * which options.c's table (flags -> frost_options) does not.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokenize.h"

#include "formats/tokenizer.h"
#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SEQ_LEN 128
#define MAX_SEQ_LEN (1L << 20)
/* A text file bigger than this is not read whole (its tokens are 4 bytes each). */
#define TEXT_FILE_LIMIT ((size_t)2 << 30)
#define UINT16_LARGEST 65535

typedef enum token_dtype { DTYPE_INT32, DTYPE_UINT16, DTYPE_INT64 } token_dtype;

static const struct {
    const char *name, *descr;
    size_t bytes;
} dtypes[] = {{"int32", "<i4", 4}, {"uint16", "<u2", 2}, {"int64", "<i8", 8}};

typedef struct tokenize_options {
    const char *out;
    const char *tokenizer; /* "byte" or a directory */
    long seq_len;
    double test_fraction;
    const char *test_fraction_text; /* as given, for messages */
    token_dtype dtype;
    bool label_per_file;
    long seed;
    char **files;
    int file_count;
    bool help;
} tokenize_options;

/* ------------------------------------------------------------- flags */

/* For the help (and man/frost-tokenize.1, which tests/docs.sh compares with
 * it) and "did you mean"; set_option and parse_tokenize_options read them. */
static const struct {
    const char *name, *value, *help;
} tokenize_flags[] = {
    {"--out", "DIR", "where the .npy files go, made if missing; required"},
    {"--tokenizer", "byte|DIR", "bytes (ids 0-255), or GPT-2's BPE from DIR/encoder.json and "
                                "DIR/vocab.bpe (default byte)"},
    {"--seq-len", "T", "tokens per row; language modelling writes rows of T+1 (default 128)"},
    {"--test-fraction", "F", "the last round(F x N) rows go to test_x.npy (default 0)"},
    {"--dtype", "int32|uint16|int64", "of the token ids (default int32)"},
    {"--label-per-file", NULL, "classification: each FILE a class, each record a row "
                               "(default: language modelling)"},
    {"--seed", "N", "shuffles --label-per-file's rows (default 0)"},
    {"--help", NULL, "this list"},
};

static int parse_whole(const char *flag, const char *text, long min, long max, long *out,
                       fr_error *err) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end || errno == ERANGE)
        return fr_fail(err, FR_EINVAL, "%s '%s': expected a whole number", flag, text);
    if (value < min || value > max)
        return fr_fail(err, FR_EINVAL, "%s %s: must be between %ld and %ld", flag, text, min, max);
    *out = value;
    return FR_OK;
}

static int set_option(tokenize_options *opts, const char *flag, const char *value,
                      fr_error *err) {
    if (strcmp(flag, "--out") == 0 || strcmp(flag, "--tokenizer") == 0) {
        if (!*value)
            return fr_fail(err, FR_EINVAL, "%s: empty value", flag);
        *(flag[2] == 'o' ? &opts->out : &opts->tokenizer) = value;
        return FR_OK;
    }
    if (strcmp(flag, "--seq-len") == 0)
        return parse_whole(flag, value, 1, MAX_SEQ_LEN, &opts->seq_len, err);
    if (strcmp(flag, "--seed") == 0)
        return parse_whole(flag, value, 0, 9000000000000000L, &opts->seed, err);
    if (strcmp(flag, "--test-fraction") == 0) {
        char *end;
        errno = 0;
        double fraction = strtod(value, &end);
        if (end == value || *end || errno == ERANGE || !(fraction >= 0.0 && fraction < 1.0))
            return fr_fail(err, FR_EINVAL,
                           "--test-fraction '%s': expected the fraction of rows to hold out, "
                           "at least 0 and below 1",
                           value);
        opts->test_fraction = fraction;
        opts->test_fraction_text = value;
        return FR_OK;
    }
    if (strcmp(flag, "--dtype") == 0) {
        for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
            if (strcmp(value, dtypes[i].name) == 0) {
                opts->dtype = (token_dtype)i;
                return FR_OK;
            }
        return fr_fail(err, FR_EINVAL, "--dtype '%s': expected int32, uint16 or int64", value);
    }
    const char *names[sizeof tokenize_flags / sizeof tokenize_flags[0]];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        names[i] = tokenize_flags[i].name;
    const char *closest = frost_closest(flag, names, sizeof names / sizeof names[0]);
    return fr_fail(err, FR_EINVAL, "unknown option '%s' for 'frost tokenize'%s%s%s (see frost help tokenize)",
                   flag, closest ? " (did you mean " : "", closest ? closest : "",
                   closest ? "?)" : "");
}

/* Flags anywhere among the files; "--" ends them.  Both "--seq-len 64" and
 * "--seq-len=64". */
static int parse_tokenize_options(int argc, char **argv, tokenize_options *opts, fr_error *err) {
    memset(opts, 0, sizeof *opts);
    opts->tokenizer = "byte";
    opts->seq_len = DEFAULT_SEQ_LEN;
    opts->dtype = DTYPE_INT32;
    opts->files = argv + 2; /* the files are gathered at the front of argv + 2 */
    bool options_ended = false;
    for (int i = 2; i < argc; i++) {
        char *arg = argv[i];
        if (options_ended || strncmp(arg, "--", 2) != 0) {
            opts->files[opts->file_count++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_ended = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0) {
            opts->help = true;
            return FR_OK;
        }
        if (strcmp(arg, "--label-per-file") == 0) {
            opts->label_per_file = true;
            continue;
        }
        if (strncmp(arg, "--label-per-file=", 17) == 0)
            return fr_fail(err, FR_EINVAL, "--label-per-file takes no value");
        char flag[32];
        const char *eq = strchr(arg, '='), *value;
        size_t flag_length = eq ? (size_t)(eq - arg) : strlen(arg);
        snprintf(flag, sizeof flag, "%.*s", (int)flag_length, arg);
        if (eq)
            value = eq + 1;
        else if (i + 1 < argc)
            value = argv[++i];
        else if (strcmp(flag, "--out") == 0 || strcmp(flag, "--tokenizer") == 0 ||
                 strcmp(flag, "--seq-len") == 0 || strcmp(flag, "--seed") == 0 ||
                 strcmp(flag, "--test-fraction") == 0 || strcmp(flag, "--dtype") == 0)
            return fr_fail(err, FR_EINVAL, "%s needs a value", flag);
        else
            value = "";
        int status = set_option(opts, flag, value, err);
        if (status != FR_OK)
            return status;
    }
    if (!opts->out)
        return fr_fail(err, FR_EINVAL, "'frost tokenize' needs --out DIR (where the .npy files go)");
    if (opts->file_count == 0)
        return fr_fail(err, FR_EINVAL, "'frost tokenize' needs at least one text FILE");
    return FR_OK;
}

void frost_tokenize_usage(void) {
    printf("usage: frost tokenize --out DIR [options] FILE...\n"
           "Text files to token data for frost train --data: NumPy files in DIR.\n"
           "Language modelling (default): the files' tokens in order (GPT-2 puts <|endoftext|>\n"
           "between two files), cut into windows of T+1 tokens: train_x.npy (N, T+1).\n"
           "--label-per-file: each FILE a class; its records (paragraphs between lines\n"
           "holding only %%, else between blank lines) become rows of T tokens, cut or\n"
           "padded: train_x.npy (N, T), train_y.npy (N,) int64 and classes.txt.\n\n"
           "options (default in parentheses):\n");
    for (size_t i = 0; i < sizeof tokenize_flags / sizeof tokenize_flags[0]; i++)
        frost_print_flag(tokenize_flags[i].name, tokenize_flags[i].value, tokenize_flags[i].help);
    printf("\nThe full reference: man frost-tokenize.\n");
}

/* ------------------------------------------------------------ inputs */

static int read_text(const char *path, unsigned char **text, size_t *length, fr_error *err) {
    int status = fr_read_file(path, TEXT_FILE_LIMIT, 0, text, length, err);
    if (status == FR_OK && *length == 0) {
        fr_free(*text);
        *text = NULL;
        return fr_fail(err, FR_EINVAL, "%s: the file is empty", path);
    }
    return status;
}

static bool is_directory(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

static bool join_path(char *out, size_t size, const char *dir, const char *name) {
    size_t length = strlen(dir);
    const char *separator = length > 0 && dir[length - 1] == '/' ? "" : "/";
    int written = snprintf(out, size, "%s%s%s", dir, separator, name);
    return written >= 0 && (size_t)written < size;
}

int frost_load_tokenizer(const char *name, fr_tokenizer **tokenizer, fr_error *err) {
    if (strcmp(name, "byte") == 0)
        return fr_tokenizer_bytes(tokenizer, err);
    if (!is_directory(name))
        return fr_fail(err, FR_EINVAL,
                       "--tokenizer %s: neither 'byte' nor a directory holding GPT-2's "
                       "encoder.json and vocab.bpe",
                       name);
    char encoder[4096], merges[4096];
    if (!join_path(encoder, sizeof encoder, name, "encoder.json") ||
        !join_path(merges, sizeof merges, name, "vocab.bpe"))
        return fr_fail(err, FR_EINVAL, "--tokenizer %s: path too long", name);
    const char *paths[2] = {encoder, merges};
    for (int i = 0; i < 2; i++)
        if (access(paths[i], F_OK) != 0)
            return fr_fail(err, FR_EIO,
                           "%s: no such file (--tokenizer DIR must hold GPT-2's encoder.json "
                           "and vocab.bpe)",
                           paths[i]);
    return fr_tokenizer_load_gpt2(encoder, merges, tokenizer, err);
}

/* ------------------------------------------------------------ the rows */

/* What the files became: rows x width ids (train rows first, then test),
 * labels for classification, and counts for the summary. */
typedef struct token_rows {
    fr_token_list ids; /* rows * width */
    int64_t *labels;   /* rows, or NULL */
    size_t rows, width, test_rows;
    size_t tokens;    /* the files' tokens, separators included */
    size_t dropped;   /* tokens that are in no row */
    size_t records, truncated, padded;
} token_rows;

/* round(F*N) rows, half away from zero; every row may not go. */
static int split_test_rows(const tokenize_options *opts, token_rows *rows, const char *what,
                           fr_error *err) {
    rows->test_rows = (size_t)llround(opts->test_fraction * (double)rows->rows);
    if (rows->test_rows >= rows->rows && opts->test_fraction > 0)
        return fr_fail(err, FR_EINVAL,
                       "--test-fraction %s of %zu %s leaves no training rows; lower it or give "
                       "more text",
                       opts->test_fraction_text, rows->rows, what);
    return FR_OK;
}

/* Language modelling: the files' tokens back to back, in windows of T+1. */
static int make_windows(const tokenize_options *opts, const fr_tokenizer *tokenizer,
                        token_rows *rows, fr_error *err) {
    int32_t separator = fr_tokenizer_end_of_text(tokenizer);
    for (int i = 0; i < opts->file_count; i++) {
        unsigned char *text;
        size_t length;
        int status = read_text(opts->files[i], &text, &length, err);
        if (status != FR_OK)
            return status;
        if (i > 0 && separator >= 0 && !fr_token_list_append(&rows->ids, separator))
            status = fr_fail(err, FR_ENOMEM, "%s: out of memory for its tokens", opts->files[i]);
        if (status == FR_OK)
            status = fr_tokenizer_encode(tokenizer, text, length, &rows->ids, opts->files[i], err);
        fr_free(text);
        if (status != FR_OK)
            return status;
    }
    rows->width = (size_t)opts->seq_len + 1;
    rows->tokens = rows->ids.count;
    rows->rows = rows->tokens / rows->width;
    rows->dropped = rows->tokens - rows->rows * rows->width;
    if (rows->rows == 0)
        return fr_fail(err, FR_EINVAL,
                       "%s%s: %zu tokens, fewer than one window of %zu (--seq-len %ld and the "
                       "next token as its target)",
                       opts->files[0], opts->file_count > 1 ? " and the other files" : "",
                       rows->tokens, rows->width, opts->seq_len);
    rows->ids.count = rows->rows * rows->width;
    return split_test_rows(opts, rows, "windows", err);
}

/* A line of a record file: [start, end), end before its '\n' and any '\r'. */
static bool line_is_percent(const unsigned char *text, size_t start, size_t end) {
    return end - start == 1 && text[start] == '%';
}

static bool only_blanks(const unsigned char *text, size_t start, size_t end) {
    for (size_t i = start; i < end; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n' &&
            text[i] != '\f' && text[i] != '\v')
            return false;
    return true;
}

/* Each record of one file as a row of T tokens labelled `label`. */
static int add_records(const tokenize_options *opts, const fr_tokenizer *tokenizer,
                       const char *path, const unsigned char *text, size_t length, int64_t label,
                       token_rows *rows, size_t *label_capacity, fr_error *err) {
    /* '%' lines separate records when the file has any, else blank lines do. */
    bool by_percent = false;
    for (size_t start = 0, next; start < length && !by_percent; start = next) {
        const unsigned char *newline = memchr(text + start, '\n', length - start);
        size_t end = newline ? (size_t)(newline - text) : length;
        next = end + 1;
        if (end > start && text[end - 1] == '\r')
            end--;
        by_percent = line_is_percent(text, start, end);
    }
    size_t width = (size_t)opts->seq_len, records_before = rows->records;
    int32_t pad = fr_tokenizer_pad(tokenizer);
    fr_token_list record = {0};
    size_t record_start = 0;
    int status = FR_OK;
    for (size_t start = 0, next; start <= length && status == FR_OK; start = next) {
        const unsigned char *newline =
            start < length ? memchr(text + start, '\n', length - start) : NULL;
        size_t end = newline ? (size_t)(newline - text) : length, line_end = end;
        next = end + 1;
        if (end > start && text[end - 1] == '\r')
            line_end--;
        bool separator = start < length && (by_percent ? line_is_percent(text, start, line_end)
                                                       : only_blanks(text, start, line_end));
        bool last = end == length;
        if (!separator && !last)
            continue;
        /* The record runs up to this separator line, or to the end. */
        size_t record_end = separator ? start : length;
        if (record_end > record_start && !only_blanks(text, record_start, record_end)) {
            record.count = 0;
            status = fr_tokenizer_encode(tokenizer, text + record_start, record_end - record_start,
                                         &record, path, err);
            if (status != FR_OK)
                break;
            size_t kept = record.count < width ? record.count : width;
            rows->tokens += record.count;
            rows->dropped += record.count - kept;
            rows->truncated += record.count > width;
            rows->padded += record.count < width;
            for (size_t k = 0; k < width && status == FR_OK; k++)
                if (!fr_token_list_append(&rows->ids, k < kept ? record.ids[k] : pad))
                    status = fr_fail(err, FR_ENOMEM, "%s: out of memory for its rows", path);
            if (status == FR_OK && rows->rows == *label_capacity) {
                size_t capacity = *label_capacity ? *label_capacity * 2 : 256;
                int64_t *grown = realloc(rows->labels, capacity * sizeof *grown);
                if (!grown)
                    status = fr_fail(err, FR_ENOMEM, "%s: out of memory for its labels", path);
                else {
                    rows->labels = grown;
                    *label_capacity = capacity;
                }
            }
            if (status == FR_OK) {
                rows->labels[rows->rows++] = label;
                rows->records++;
            }
        }
        record_start = next;
        if (last)
            break;
    }
    fr_token_list_release(&record);
    if (status == FR_OK && rows->records == records_before)
        status = fr_fail(err, FR_EINVAL,
                         "%s: no records (paragraphs between lines holding only '%%', or between "
                         "blank lines)",
                         path);
    return status;
}

/* Classification: every file's records, shuffled so that classes mix. */
static int make_records(const tokenize_options *opts, const fr_tokenizer *tokenizer,
                        token_rows *rows, fr_error *err) {
    rows->width = (size_t)opts->seq_len;
    size_t label_capacity = 0;
    for (int i = 0; i < opts->file_count; i++) {
        unsigned char *text;
        size_t length;
        int status = read_text(opts->files[i], &text, &length, err);
        if (status != FR_OK)
            return status;
        status = add_records(opts, tokenizer, opts->files[i], text, length, i, rows,
                             &label_capacity, err);
        fr_free(text);
        if (status != FR_OK)
            return status;
    }
    if (rows->rows > (size_t)INT32_MAX)
        return fr_fail(err, FR_EINVAL, "%zu records, more than %d", rows->rows, (int)INT32_MAX);
    int n = (int)rows->rows;
    int *order = malloc((size_t)n * sizeof *order);
    int32_t *ids = malloc(rows->ids.count * sizeof *ids);
    int64_t *labels = malloc((size_t)n * sizeof *labels);
    if (!order || !ids || !labels) {
        free(order);
        free(ids);
        free(labels);
        return fr_fail(err, FR_ENOMEM, "out of memory to shuffle %d records", n);
    }
    fr_epoch_order(order, n, (uint64_t)opts->seed, 0, true);
    for (int r = 0; r < n; r++) {
        memcpy(ids + (size_t)r * rows->width, rows->ids.ids + (size_t)order[r] * rows->width,
               rows->width * sizeof *ids);
        labels[r] = rows->labels[order[r]];
    }
    free(order);
    free(rows->ids.ids);
    free(rows->labels);
    rows->ids.ids = ids;
    rows->ids.capacity = rows->ids.count;
    rows->labels = labels;
    return split_test_rows(opts, rows, "records", err);
}

/* ------------------------------------------------------------ output */

/* The ids as the --dtype asks, in a fresh buffer (NULL: out of memory). */
static void *ids_as_dtype(const int32_t *ids, size_t count, token_dtype dtype) {
    void *data = malloc(count ? count * dtypes[dtype].bytes : 1);
    if (!data)
        return NULL;
    for (size_t i = 0; i < count; i++) {
        if (dtype == DTYPE_INT32)
            ((int32_t *)data)[i] = ids[i];
        else if (dtype == DTYPE_UINT16)
            ((uint16_t *)data)[i] = (uint16_t)ids[i];
        else
            ((int64_t *)data)[i] = ids[i];
    }
    return data;
}

/* One file to write: an array, or text (classes.txt). */
typedef struct output_file {
    const char *name;
    const char *descr;
    int ndim;
    uint64_t shape[2];
    const void *data;
    const char *text;
    char path[4096];
    bool written;
} output_file;

/* The names frost reads data from (and classes.txt): whichever of them this
 * run does not write is an earlier run's, and goes. */
static const char *const data_names[] = {"train_x.npy", "train_y.npy", "test_x.npy",
                                         "test_y.npy", "classes.txt"};

static int write_outputs(const char *dir, output_file *files, int count, fr_error *err) {
    bool made_dir = false;
    if (!is_directory(dir)) {
        if (mkdir(dir, 0777) != 0)
            return fr_fail(err, FR_EIO, "--out %s: cannot create the directory: %s", dir,
                           strerror(errno));
        made_dir = true;
    }
    int status = FR_OK;
    for (int i = 0; i < count && status == FR_OK; i++) {
        output_file *f = &files[i];
        if (f->text)
            status = fr_write_file_atomic(f->path, f->text, strlen(f->text), err);
        else
            status = fr_npy_write(f->path, f->descr, f->ndim, f->shape, f->data, err);
        f->written = status == FR_OK;
    }
    if (status != FR_OK) {
        for (int i = 0; i < count; i++)
            if (files[i].written)
                remove(files[i].path);
        if (made_dir)
            rmdir(dir);
        return status;
    }
    for (size_t k = 0; k < sizeof data_names / sizeof data_names[0]; k++) {
        bool ours = false;
        for (int i = 0; i < count; i++)
            ours = ours || strcmp(files[i].name, data_names[k]) == 0;
        char path[4200];
        if (ours || !join_path(path, sizeof path - 3, dir, data_names[k]))
            continue;
        remove(path);
        /* frost reads NAME.npy.gz where there is no NAME.npy. */
        strcat(path, ".gz");
        remove(path);
    }
    return FR_OK;
}

/* "classes.txt": each file's name without its directories, one a line. */
static char *class_names(const tokenize_options *opts) {
    size_t length = 1;
    for (int i = 0; i < opts->file_count; i++)
        length += strlen(opts->files[i]) + 1;
    char *text = malloc(length), *end = text;
    if (!text)
        return NULL;
    for (int i = 0; i < opts->file_count; i++) {
        const char *slash = strrchr(opts->files[i], '/');
        const char *name = slash ? slash + 1 : opts->files[i];
        for (; *name; name++)
            *end++ = *name == '\n' || *name == '\r' ? '?' : *name;
        *end++ = '\n';
    }
    *end = '\0';
    return text;
}

static int write_rows(const tokenize_options *opts, const token_rows *rows, fr_error *err) {
    const char *dtype_descr = dtypes[opts->dtype].descr;
    size_t train_rows = rows->rows - rows->test_rows;
    if (opts->dtype == DTYPE_UINT16)
        for (size_t i = 0; i < rows->ids.count; i++)
            if (rows->ids.ids[i] > UINT16_LARGEST)
                return fr_fail(err, FR_EINVAL,
                               "--dtype uint16: token id %d does not fit (uint16 holds 0 to "
                               "%d); use int32",
                               (int)rows->ids.ids[i], UINT16_LARGEST);
    void *data = ids_as_dtype(rows->ids.ids, rows->ids.count, opts->dtype);
    char *classes = opts->label_per_file ? class_names(opts) : NULL;
    if (!data || (opts->label_per_file && !classes)) {
        free(data);
        free(classes);
        return fr_fail(err, FR_ENOMEM, "out of memory for %zu ids as %s", rows->ids.count,
                       dtypes[opts->dtype].name);
    }
    const unsigned char *test_data =
        (const unsigned char *)data + train_rows * rows->width * dtypes[opts->dtype].bytes;
    output_file files[5];
    int count = 0;
    files[count++] = (output_file){.name = "train_x.npy", .descr = dtype_descr, .ndim = 2,
                                   .shape = {train_rows, rows->width}, .data = data};
    if (rows->labels)
        files[count++] = (output_file){.name = "train_y.npy", .descr = "<i8", .ndim = 1,
                                       .shape = {train_rows}, .data = rows->labels};
    if (rows->test_rows > 0) {
        files[count++] = (output_file){.name = "test_x.npy", .descr = dtype_descr, .ndim = 2,
                                       .shape = {rows->test_rows, rows->width},
                                       .data = test_data};
        if (rows->labels)
            files[count++] = (output_file){.name = "test_y.npy", .descr = "<i8", .ndim = 1,
                                           .shape = {rows->test_rows},
                                           .data = rows->labels + train_rows};
    }
    if (classes)
        files[count++] = (output_file){.name = "classes.txt", .text = classes};
    int status = FR_OK;
    for (int i = 0; i < count && status == FR_OK; i++)
        if (!join_path(files[i].path, sizeof files[i].path, opts->out, files[i].name))
            status = fr_fail(err, FR_EINVAL, "--out %s: path too long", opts->out);
    if (status == FR_OK)
        status = write_outputs(opts->out, files, count, err);
    free(data);
    free(classes);
    return status;
}

/* ------------------------------------------------------------ command */

static void print_summary(const tokenize_options *opts, const fr_tokenizer *tokenizer,
                          const token_rows *rows) {
    const char *dtype = dtypes[opts->dtype].name;
    size_t train_rows = rows->rows - rows->test_rows;
    int32_t separator = fr_tokenizer_end_of_text(tokenizer);
    printf("frost tokenize: %d file%s, %zu tokens (%s", opts->file_count,
           opts->file_count == 1 ? "" : "s", rows->tokens, fr_tokenizer_name(tokenizer));
    if (!opts->label_per_file) {
        if (separator >= 0 && opts->file_count > 1)
            printf(", %d between files", (int)separator);
        printf("), %zu windows of %zu (train %zu, test %zu) %s in %s; %zu tokens dropped "
               "(the last, partial window)\n",
               rows->rows, rows->width, train_rows, rows->test_rows, dtype, opts->out,
               rows->dropped);
        return;
    }
    printf("), %d classes, %zu records, %zu rows of %zu (train %zu, test %zu) %s and int64 "
           "labels in %s; %zu truncated (%zu tokens dropped), %zu padded with %d\n",
           opts->file_count, rows->records, rows->rows, rows->width, train_rows,
           rows->test_rows, dtype, opts->out, rows->truncated, rows->dropped, rows->padded,
           (int)fr_tokenizer_pad(tokenizer));
}

int frost_tokenize(int argc, char **argv, fr_error *err) {
    tokenize_options opts;
    int status = parse_tokenize_options(argc, argv, &opts, err);
    if (status != FR_OK)
        return status;
    if (opts.help) {
        frost_tokenize_usage();
        return FR_OK;
    }
    struct stat info;
    if (stat(opts.out, &info) == 0 && !S_ISDIR(info.st_mode))
        return fr_fail(err, FR_EINVAL, "--out %s: exists and is not a directory", opts.out);
    fr_tokenizer *tokenizer;
    if ((status = frost_load_tokenizer(opts.tokenizer, &tokenizer, err)) != FR_OK)
        return status;
    token_rows rows = {0};
    status = opts.label_per_file ? make_records(&opts, tokenizer, &rows, err)
                                 : make_windows(&opts, tokenizer, &rows, err);
    if (status == FR_OK)
        status = write_rows(&opts, &rows, err);
    if (status == FR_OK)
        print_summary(&opts, tokenizer, &rows);
    fr_token_list_release(&rows.ids);
    free(rows.labels);
    fr_tokenizer_free(tokenizer);
    return status;
}
