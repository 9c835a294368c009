/*
 * spec.c - the text form of a model (DESIGN.md, "Model files").
 *
 *   input 1 28 28                  optional; before the first layer, at most once
 *   conv1 = conv2d(1, 32, 3)       NAME = KIND(ARGS)
 *   relu                           unnamed: named by its index ("1"), as nn.Sequential does
 *   maxpool2d(2)
 *
 * Layers are separated by newlines or ';' (both may be mixed), '#' starts a
 * comment that runs to the end of the line (past any ';'), blank pieces are
 * ignored.  The kinds and their arguments are PyTorch's:
 *   linear(in_features, out_features)
 *   conv2d(in_channels, out_channels, kernel_size[, stride=1[, padding=0]])
 *   maxpool2d(kernel_size[, stride=kernel_size])
 *   relu, flatten                  with or without "()"
 * Arguments are integers (at most 1,000,000) and may be given by keyword as in
 * Python (`stride=2`; `kernel=` is accepted for `kernel_size=`).  Kind names
 * are case-insensitive, so PyTorch's spellings (Conv2d, ReLU) work too.
 *
 * Where errors point.  Every message is one line, "SOURCE:N: problem", where N
 * counts lines and every ';' (outside a comment) starts a new line too.  For
 * a model file without ';' N is the line number an editor shows; for an inline
 * spec "input 1 28 28; conv1 = conv2d(1, 32, 3); relu" it is the position of
 * the piece in the list (here: 1, 2, 3).  Messages that concern the whole
 * text have no number ("model.txt: no layers").
 *
 * The whole text is parsed into a list before anything is built, because
 * without an input line the input shape comes from the first layer and
 * fr_model_new needs it first.  The list is then built only through the
 * public fr_model_add_* calls (model.c), whose shape and name errors get the
 * piece's location prefixed.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest value of any argument or input size. */
#define MAX_SIZE 1000000
/* More layers than this is a mistake, and model.c's name checks are quadratic. */
#define MAX_LAYERS 4096
#define MAX_MODEL_FILE_BYTES (1024 * 1024)
#define MAX_ARGS FR_ARG_COUNT
/* Layer names leave room for ".weight" in a parameter name (model.c). */
#define MAX_NAME_LEN (FR_NAME_MAX - 9)

/* ------------------------------------------------------------ layer kinds */

enum layer_kind { KIND_LINEAR, KIND_CONV2D, KIND_RELU, KIND_MAXPOOL2D, KIND_FLATTEN, KIND_COUNT };

typedef struct kind_info {
    const char *name;
    int min_args, max_args;
    const char *arg_names[MAX_ARGS];
    int arg_minimum[MAX_ARGS]; /* 1 for sizes, 0 for padding */
    int arg_default[MAX_ARGS]; /* for the optional ones */
} kind_info;

/* Argument slots are positional order; maxpool2d's default stride 0 tells
 * fr_model_add_maxpool2d to use the kernel size, as PyTorch does. */
static const kind_info kinds[KIND_COUNT] = {
    [KIND_LINEAR] = {"linear", 2, 2, {"in_features", "out_features"}, {1, 1}, {0}},
    [KIND_CONV2D] = {"conv2d", 3, 5,
                     {"in_channels", "out_channels", "kernel_size", "stride", "padding"},
                     {1, 1, 1, 1, 0}, {0, 0, 0, 1, 0}},
    [KIND_RELU] = {"relu", 0, 0, {0}, {0}, {0}},
    [KIND_MAXPOOL2D] = {"maxpool2d", 1, 2, {"kernel_size", "stride"}, {1, 1}, {0, 0}},
    [KIND_FLATTEN] = {"flatten", 0, 0, {0}, {0}, {0}},
};

#define KIND_LIST "linear, conv2d, relu, maxpool2d, flatten"

/* ---------------------------------------------------------- parsed model */

typedef struct spec_layer {
    long line;
    enum layer_kind kind;
    bool named;                /* otherwise model.c names it by its index */
    char name[FR_NAME_MAX];
    int args[MAX_ARGS];
} spec_layer;

typedef struct spec {
    const char *source;
    bool has_input;
    long input_line;
    int input[3]; /* C, H, W */
    spec_layer *layers;
    int layer_count, layer_cap;
} spec;

/* The part of the text one layer (or the input line) occupies. */
typedef struct cursor {
    const char *pos, *end;
} cursor;

/* An argument as written: `value` or `key = value`. */
typedef struct raw_arg {
    const char *key, *value;
    size_t key_len, value_len;
} raw_arg;

/* ---------------------------------------------------------------- lexing */

static bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
}

static bool at_end(const cursor *c) { return c->pos >= c->end; }

static void skip_blanks(cursor *c) {
    while (!at_end(c) && is_blank(*c->pos))
        c->pos++;
}

static size_t name_run(const char *p, const char *end) {
    size_t len = 0;
    while (p + len < end && is_name_char(p[len]))
        len++;
    return len;
}

/* An argument value runs to the next blank or punctuation. */
static size_t value_run(const char *p, const char *end) {
    size_t len = 0;
    while (p + len < end && !is_blank(p[len]) && !strchr(",()=", p[len]))
        len++;
    return len;
}

/* What to show as "got 'X'": a word, or else the one character there. */
static size_t token_length(const char *p, const char *end) {
    size_t len = name_run(p, end);
    return len ? len : (p < end ? 1 : 0);
}

/* A printable, bounded copy of user text for a one-line message. */
static const char *shown(const char *text, size_t len, char *buf, size_t cap) {
    const size_t limit = 32;
    size_t used = 0;
    for (size_t i = 0; i < len && i < limit && used + 1 < cap; i++) {
        unsigned char ch = (unsigned char)text[i];
        buf[used++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (len > limit && used + 4 < cap) {
        memcpy(buf + used, "...", 3);
        used += 3;
    }
    buf[used] = '\0';
    return buf;
}

/* Case-insensitive match of text[0..len) against a lower-case word. */
static bool word_is(const char *text, size_t len, const char *word) {
    if (strlen(word) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i] >= 'A' && text[i] <= 'Z' ? (char)(text[i] - 'A' + 'a') : text[i];
        if (ch != word[i])
            return false;
    }
    return true;
}

enum int_result { INT_OK, INT_NOT_INTEGER, INT_TOO_LARGE };

/* [+-]digits.  Values beyond MAX_SIZE stop accumulating, so nothing overflows;
 * large negative values come back as -(MAX_SIZE + 1) for the sign check. */
static enum int_result parse_int(const char *text, size_t len, int *value) {
    size_t i = 0;
    bool negative = false;
    if (i < len && (text[i] == '+' || text[i] == '-'))
        negative = text[i++] == '-';
    if (i == len)
        return INT_NOT_INTEGER;
    long magnitude = 0;
    for (; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return INT_NOT_INTEGER;
        if (magnitude <= MAX_SIZE)
            magnitude = magnitude * 10 + (text[i] - '0');
    }
    if (magnitude > MAX_SIZE) {
        if (!negative)
            return INT_TOO_LARGE;
        magnitude = MAX_SIZE + 1;
    }
    *value = (int)(negative ? -magnitude : magnitude);
    return INT_OK;
}

/* ---------------------------------------------------------------- errors */

static int syntax_error(const spec *s, long line, fr_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int syntax_error(const spec *s, long line, fr_error *err, const char *fmt, ...) {
    char problem[FR_ERROR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    return fr_fail(err, FR_EFORMAT, "%s:%ld: %s", s->source, line, problem);
}

/* "got 'X'" for whatever stands at the cursor, "got the end of the line" at the end. */
static int unexpected(const spec *s, long line, const cursor *c, const char *expected,
                      fr_error *err) {
    char got[48];
    if (at_end(c))
        return syntax_error(s, line, err, "expected %s", expected);
    shown(c->pos, token_length(c->pos, c->end), got, sizeof got);
    return syntax_error(s, line, err, "expected %s, got '%s'", expected, got);
}

/* A size, checked for syntax, range and sign; `what` names it ("conv2d: stride"). */
static int check_size(const spec *s, long line, const char *what, const char *text,
                      size_t len, int minimum, int *value, fr_error *err) {
    char got[48];
    shown(text, len, got, sizeof got);
    switch (parse_int(text, len, value)) {
    case INT_NOT_INTEGER:
        return syntax_error(s, line, err, "%s must be an integer, got '%s'", what, got);
    case INT_TOO_LARGE:
        return syntax_error(s, line, err, "%s is too large: %s (at most %d)", what, got, MAX_SIZE);
    case INT_OK:
        break;
    }
    if (*value < minimum)
        return syntax_error(s, line, err, "%s must be %s, got %s", what,
                            minimum > 0 ? "positive" : "0 or more", got);
    return FR_OK;
}

/* ------------------------------------------------------------ input line */

/* "input C H W" (commas between the sizes are tolerated). */
static int parse_input(spec *s, long line, cursor *c, fr_error *err) {
    static const char *const size_names[3] = {"C", "H", "W"};
    if (s->layer_count > 0)
        return syntax_error(s, line, err, "'input' must come before the first layer");
    if (s->has_input)
        return syntax_error(s, line, err, "'input' given twice (first on line %ld)",
                            s->input_line);
    int count = 0;
    for (;;) {
        while (!at_end(c) && (is_blank(*c->pos) || *c->pos == ','))
            c->pos++;
        if (at_end(c))
            break;
        size_t len = 0;
        while (c->pos + len < c->end && !is_blank(c->pos[len]) && c->pos[len] != ',')
            len++;
        if (count == 3)
            return syntax_error(s, line, err, "'input' takes 3 sizes (input C H W), got more");
        char what[32];
        snprintf(what, sizeof what, "input %s", size_names[count]);
        int rc = check_size(s, line, what, c->pos, len, 1, &s->input[count], err);
        if (rc != FR_OK)
            return rc;
        count++;
        c->pos += len;
    }
    if (count != 3)
        return syntax_error(s, line, err, "'input' takes 3 sizes (input C H W), got %d", count);
    size_t numel = (size_t)s->input[0] * (size_t)s->input[1] * (size_t)s->input[2];
    if (numel > (size_t)MAX_SIZE * 100)
        return syntax_error(s, line, err, "input %d x %d x %d is too large (at most %d values)",
                            s->input[0], s->input[1], s->input[2], MAX_SIZE * 100);
    s->has_input = true;
    s->input_line = line;
    return FR_OK;
}

/* ------------------------------------------------------------ layer lines */

/* After '(': arguments up to and including ')'.  Only the first MAX_ARGS are
 * kept; `count` counts them all. */
static int parse_arguments(const spec *s, long line, cursor *c, raw_arg *args, int *count,
                           fr_error *err) {
    *count = 0;
    for (;;) {
        skip_blanks(c);
        if (at_end(c))
            return syntax_error(s, line, err, "expected ')'");
        if (*c->pos == ')')
            break;
        raw_arg arg = {0};
        /* `key = value` or just `value`; a number is a name run too, so look for '='. */
        size_t key_len = name_run(c->pos, c->end);
        cursor after_key = {c->pos + key_len, c->end};
        skip_blanks(&after_key);
        if (key_len > 0 && !at_end(&after_key) && *after_key.pos == '=') {
            arg.key = c->pos;
            arg.key_len = key_len;
            c->pos = after_key.pos + 1;
            skip_blanks(c);
        }
        arg.value = c->pos;
        arg.value_len = value_run(c->pos, c->end);
        if (arg.value_len == 0) {
            if (at_end(c))
                return syntax_error(s, line, err, "expected ')'");
            if (arg.key) {
                char key[48];
                shown(arg.key, arg.key_len, key, sizeof key);
                char expected[80];
                snprintf(expected, sizeof expected, "a value after '%s='", key);
                return unexpected(s, line, c, expected, err);
            }
            return unexpected(s, line, c, "an argument", err);
        }
        c->pos += arg.value_len;
        if (*count < MAX_ARGS)
            args[*count] = arg;
        if (*count < MAX_SIZE)
            (*count)++;
        skip_blanks(c);
        if (at_end(c))
            return syntax_error(s, line, err, "expected ')'");
        if (*c->pos == ')')
            break;
        if (*c->pos != ',')
            return unexpected(s, line, c, "',' or ')'", err);
        c->pos++;
    }
    c->pos++; /* the ')' */
    return FR_OK;
}

static int keyword_slot(const kind_info *kind, const raw_arg *arg) {
    for (int slot = 0; slot < kind->max_args; slot++) {
        const char *name = kind->arg_names[slot];
        if (word_is(arg->key, arg->key_len, name) ||
            (strcmp(name, "kernel_size") == 0 && word_is(arg->key, arg->key_len, "kernel")))
            return slot;
    }
    return -1;
}

/* Match the written arguments to the kind's slots, as Python binds a call. */
static int bind_arguments(const spec *s, long line, const kind_info *kind,
                          const raw_arg *args, int count, spec_layer *layer, fr_error *err) {
    if (count < kind->min_args || count > kind->max_args) {
        if (kind->max_args == 0)
            return syntax_error(s, line, err, "%s takes no arguments, got %d", kind->name, count);
        if (kind->min_args == kind->max_args)
            return syntax_error(s, line, err, "%s takes %d arguments, got %d", kind->name,
                                kind->min_args, count);
        return syntax_error(s, line, err, "%s takes %d to %d arguments, got %d", kind->name,
                            kind->min_args, kind->max_args, count);
    }
    bool given[MAX_ARGS] = {false};
    bool keyword_seen = false;
    for (int i = 0; i < count; i++) {
        int slot = i;
        if (args[i].key) {
            slot = keyword_slot(kind, &args[i]);
            if (slot < 0) {
                char key[48], names[128] = "";
                shown(args[i].key, args[i].key_len, key, sizeof key);
                for (int j = 0; j < kind->max_args; j++) {
                    strncat(names, j ? ", " : "", sizeof names - strlen(names) - 1);
                    strncat(names, kind->arg_names[j], sizeof names - strlen(names) - 1);
                }
                return syntax_error(s, line, err, "%s has no argument '%s' (expected %s)",
                                    kind->name, key, names);
            }
            keyword_seen = true;
        } else if (keyword_seen) {
            return syntax_error(s, line, err, "%s: positional argument after a keyword argument",
                                kind->name);
        }
        if (given[slot])
            return syntax_error(s, line, err, "%s: '%s' is given twice", kind->name,
                                kind->arg_names[slot]);
        given[slot] = true;
        char what[64];
        snprintf(what, sizeof what, "%s: %s", kind->name, kind->arg_names[slot]);
        int rc = check_size(s, line, what, args[i].value, args[i].value_len,
                            kind->arg_minimum[slot], &layer->args[slot], err);
        if (rc != FR_OK)
            return rc;
    }
    for (int slot = 0; slot < kind->max_args; slot++) {
        if (given[slot])
            continue;
        if (slot < kind->min_args)
            return syntax_error(s, line, err, "%s: missing argument '%s'", kind->name,
                                kind->arg_names[slot]);
        layer->args[slot] = kind->arg_default[slot];
    }
    return FR_OK;
}

/* "NAME =" before the kind; the name's characters are those model.c accepts. */
static int parse_layer_name(const spec *s, long line, const char *start, const char *equals,
                            spec_layer *layer, fr_error *err) {
    while (equals > start && is_blank(equals[-1]))
        equals--;
    size_t len = (size_t)(equals - start);
    char name[48];
    shown(start, len, name, sizeof name);
    if (len == 0)
        return syntax_error(s, line, err, "expected a layer name before '='");
    if (name_run(start, equals) != len)
        return syntax_error(s, line, err,
                            "invalid layer name '%s' (letters, digits, '_' and '-' only)", name);
    if (len > MAX_NAME_LEN)
        return syntax_error(s, line, err, "layer name '%s' is too long (at most %d characters)",
                            name, MAX_NAME_LEN);
    memcpy(layer->name, start, len);
    layer->name[len] = '\0';
    layer->named = true;
    return FR_OK;
}

static int append_layer(spec *s, const spec_layer *layer, fr_error *err) {
    if (s->layer_count == MAX_LAYERS)
        return syntax_error(s, layer->line, err, "too many layers (at most %d)", MAX_LAYERS);
    if (s->layer_count == s->layer_cap) {
        int cap = s->layer_cap ? s->layer_cap * 2 : 16;
        spec_layer *grown = realloc(s->layers, (size_t)cap * sizeof *grown);
        if (!grown)
            return fr_fail(err, FR_ENOMEM, "%s: out of memory reading the model", s->source);
        s->layers = grown;
        s->layer_cap = cap;
    }
    s->layers[s->layer_count++] = *layer;
    return FR_OK;
}

/* [NAME =] KIND [ "(" ARGS ")" ] */
static int parse_layer(spec *s, long line, cursor *c, fr_error *err) {
    spec_layer layer = {.line = line};
    /* A '=' before any '(' ends a name; later ones are keyword arguments. */
    const char *equals = NULL;
    for (const char *p = c->pos; p < c->end && *p != '('; p++)
        if (*p == '=') {
            equals = p;
            break;
        }
    if (equals) {
        int rc = parse_layer_name(s, line, c->pos, equals, &layer, err);
        if (rc != FR_OK)
            return rc;
        c->pos = equals + 1;
        skip_blanks(c);
        if (at_end(c))
            return syntax_error(s, line, err, "expected a layer kind after '%s ='", layer.name);
    }
    size_t kind_len = name_run(c->pos, c->end);
    if (kind_len == 0)
        return unexpected(s, line, c, equals ? "a layer kind after '='" : "a layer", err);
    int kind = 0;
    while (kind < KIND_COUNT && !word_is(c->pos, kind_len, kinds[kind].name))
        kind++;
    if (kind == KIND_COUNT) {
        char got[48];
        shown(c->pos, kind_len, got, sizeof got);
        return syntax_error(s, line, err, "unknown layer kind '%s' (expected " KIND_LIST ")", got);
    }
    layer.kind = (enum layer_kind)kind;
    c->pos += kind_len;
    skip_blanks(c);

    raw_arg args[MAX_ARGS];
    int count = 0;
    bool parenthesised = !at_end(c) && *c->pos == '(';
    if (parenthesised) {
        c->pos++;
        int rc = parse_arguments(s, line, c, args, &count, err);
        if (rc != FR_OK)
            return rc;
        skip_blanks(c);
    }
    if (!at_end(c)) {
        char junk[48];
        shown(c->pos, token_length(c->pos, c->end), junk, sizeof junk);
        return syntax_error(s, line, err, "unexpected '%s' after '%s'", junk,
                            parenthesised ? ")" : kinds[kind].name);
    }
    int rc = bind_arguments(s, line, &kinds[kind], args, count, &layer, err);
    if (rc != FR_OK)
        return rc;
    return append_layer(s, &layer, err);
}

/* One piece of text between separators: blank, the input line, or a layer. */
static int parse_piece(spec *s, long line, const char *start, const char *end, fr_error *err) {
    cursor c = {start, end};
    skip_blanks(&c);
    while (c.end > c.pos && is_blank(c.end[-1]))
        c.end--;
    if (at_end(&c))
        return FR_OK;
    size_t word = name_run(c.pos, c.end);
    cursor after_word = {c.pos + word, c.end};
    skip_blanks(&after_word);
    /* "input = linear(...)" is a layer called input. */
    if (word == 5 && memcmp(c.pos, "input", 5) == 0 &&
        (at_end(&after_word) || *after_word.pos != '='))
        return parse_input(s, line, &after_word, err);
    return parse_layer(s, line, &c, err);
}

static int parse_text(spec *s, const char *text, fr_error *err) {
    long line = 1;
    const char *p = text;
    for (;;) {
        const char *start = p;
        while (*p && *p != '\n' && *p != ';' && *p != '#')
            p++;
        const char *end = p;
        if (*p == '#')
            while (*p && *p != '\n')
                p++;
        int rc = parse_piece(s, line, start, end, err);
        if (rc != FR_OK)
            return rc;
        if (!*p)
            return FR_OK;
        p++;
        line++;
    }
}

/* --------------------------------------------------------------- building */

static int add_layer(fr_model *model, const spec_layer *layer, fr_error *err) {
    const char *name = layer->named ? layer->name : NULL;
    const int *a = layer->args;
    switch (layer->kind) {
    case KIND_LINEAR:
        return fr_model_add_linear(model, name, a[0], a[1], err);
    case KIND_CONV2D:
        return fr_model_add_conv2d(model, name, a[0], a[1], a[2], a[3], a[4], err);
    case KIND_RELU:
        return fr_model_add_relu(model, name, err);
    case KIND_MAXPOOL2D:
        return fr_model_add_maxpool2d(model, name, a[0], a[1], err);
    case KIND_FLATTEN:
    case KIND_COUNT:
        break;
    }
    return fr_model_add_flatten(model, name, err);
}

/* Without an input line, the first layer says what it expects: a convolution
 * gets Fashion-MNIST-sized images with its channel count, a linear layer a
 * vector of its in_features. */
static int input_shape(const spec *s, int shape[3], fr_error *err) {
    if (s->has_input) {
        memcpy(shape, s->input, sizeof s->input);
        return FR_OK;
    }
    const spec_layer *first = &s->layers[0];
    if (first->kind == KIND_CONV2D) {
        shape[0] = first->args[0];
        shape[1] = shape[2] = 28;
    } else if (first->kind == KIND_LINEAR) {
        shape[0] = first->args[0];
        shape[1] = shape[2] = 1;
    } else {
        return syntax_error(s, first->line, err,
                            "a model starting with %s needs an 'input C H W' line "
                            "(only conv2d and linear imply the input size)",
                            kinds[first->kind].name);
    }
    return FR_OK;
}

/* Layers start their messages "NAME: ", model.c quotes names: 'NAME'. */
static bool mentions_layer(const char *msg, const char *name) {
    size_t len = strlen(name);
    if (strncmp(msg, name, len) == 0 && msg[len] == ':')
        return true;
    char quoted[FR_NAME_MAX + 2];
    snprintf(quoted, sizeof quoted, "'%s'", name);
    return strstr(msg, quoted) != NULL;
}

static int build_model(const spec *s, fr_model **out, fr_error *err) {
    if (s->layer_count == 0)
        return fr_fail(err, FR_EFORMAT, "%s: no layers", s->source);
    int shape[3] = {0, 0, 0};
    int rc = input_shape(s, shape, err);
    if (rc != FR_OK)
        return rc;
    fr_model *model = fr_model_new(shape[0], shape[1], shape[2]);
    if (!model)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory creating the model", s->source);
    for (int i = 0; i < s->layer_count; i++) {
        const spec_layer *layer = &s->layers[i];
        fr_error add_err = {0};
        rc = add_layer(model, layer, &add_err);
        if (rc == FR_OK)
            continue;
        fr_model_free(model);
        /* A shape mismatch must name both layers; the layer's own message may
         * name only the one before it. */
        char name[FR_NAME_MAX];
        if (layer->named)
            snprintf(name, sizeof name, "%s", layer->name);
        else
            snprintf(name, sizeof name, "%d", i);
        if (mentions_layer(add_err.msg, name))
            return fr_fail(err, rc, "%s:%ld: %s", s->source, layer->line, add_err.msg);
        return fr_fail(err, rc, "%s:%ld: layer '%s': %s", s->source, layer->line, name,
                       add_err.msg);
    }
    *out = model;
    return FR_OK;
}

/* ------------------------------------------------------------ public API */

int fr_model_parse(const char *text, const char *source, fr_model **out, fr_error *err) {
    if (out)
        *out = NULL;
    if (!source)
        source = "model";
    if (!text || !out)
        return fr_fail(err, FR_EINVAL, "%s: no model text given", source);
    spec s = {.source = source};
    int rc = parse_text(&s, text, err);
    if (rc == FR_OK)
        rc = build_model(&s, out, err);
    free(s.layers);
    return rc;
}

/* A model file: a regular file of at most 1 MiB of text. */
static int load_file(const char *path, fr_model **out, fr_error *err) {
    FILE *file = fopen(path, "rb");
    if (!file)
        return fr_fail(err, FR_EIO, "%s: cannot open: %s", path, strerror(errno));
    /* One byte more than allowed tells a file at the limit from one beyond it. */
    char *text = malloc(MAX_MODEL_FILE_BYTES + 2);
    if (!text) {
        fclose(file);
        return fr_fail(err, FR_ENOMEM, "%s: out of memory reading the model file", path);
    }
    size_t size = fread(text, 1, MAX_MODEL_FILE_BYTES + 1, file);
    bool read_failed = ferror(file) != 0;
    fclose(file);
    int rc;
    if (read_failed)
        rc = fr_fail(err, FR_EIO, "%s: cannot read the model file", path);
    else if (size > MAX_MODEL_FILE_BYTES)
        rc = fr_fail(err, FR_EFORMAT, "%s: model file is larger than 1 MiB", path);
    else if (memchr(text, '\0', size))
        rc = fr_fail(err, FR_EFORMAT, "%s: contains a NUL byte (a model file is text)", path);
    else {
        text[size] = '\0';
        rc = fr_model_parse(text, path, out, err);
    }
    free(text);
    return rc;
}

int fr_model_load(const char *arg, fr_model **out, fr_error *err) {
    if (out)
        *out = NULL;
    if (!arg || !out)
        return fr_fail(err, FR_EINVAL, "no model given");
    struct stat st;
    bool exists = stat(arg, &st) == 0;
    if (exists && S_ISREG(st.st_mode))
        return load_file(arg, out, err);
    /* Inline specs need one of these; a plain word is a mistyped file name. */
    if (strpbrk(arg, ";=(\n"))
        return fr_model_parse(arg, "--model", out, err);
    if (exists)
        return fr_fail(err, FR_EIO, "%s: not a regular file", arg);
    return fr_fail(err, FR_EIO, "%s: no such model file", arg);
}
