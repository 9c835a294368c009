/*
 * spec.c - the text form of a model (DESIGN.md, "Model files").
 *
 *   input 1 28 28                  optional; before the first layer, at most once:
 *                                  input C H W (an image), input T C ([T, C] floats),
 *                                  input F (a vector), input T tokens (T int32 token ids)
 *   conv1 = conv2d(1, 32, 3)       NAME = KIND(ARGS)
 *   relu                           unnamed: named by its index ("1"), as nn.Sequential does
 *   maxpool2d(2)
 *   residual layer1.0 {            output = body(x) + shortcut(x)
 *       conv1 = conv2d(32, 32, 3, padding=1)     the body: layer1.0.conv1, ...
 *       shortcut {                 optional, last; the identity without it
 *           downsample.0 = conv2d(32, 32, 1)
 *       }
 *   }
 *   block h.0 {                    a block that only names its layers (no sum, no
 *       residual {                 shortcut directly in it); a residual block without
 *           ln_1 = layernorm(768)  a name is anonymous: h.0.ln_1, its sum "h.0.<index>"
 *       }
 *   }
 *   tie lm_head.weight wte.weight  fr_model_tie, by full parameter names, at the top
 *                                  level, once the layers before it are added
 *
 * Braces may stand anywhere between layers (`residual b { relu }` on one
 * line, or `;` between every piece of it); blocks nest, and the names inside
 * one get the block's name and a dot in front (model.c).  A name may hold
 * inner dots, as torchvision's module paths do.
 * Layers are separated by newlines or ';' (both may be mixed), '#' starts a
 * comment that runs to the end of the line (past any ';'), blank pieces are
 * ignored.  The kinds are the registry's (src/layers/registry.c) and each
 * kind's arguments those of its ops table: PyTorch's names, order and
 * defaults, as in
 *   conv2d(in_channels, out_channels, kernel_size[, stride=1[, padding=0]])
 *   relu, flatten                  with or without "()" when there are none
 * Arguments are integers (at most 1,000,000), True/False (any case), reals in
 * [0, 1] (eps=1e-5, p=0.0), or a word of the kind's choices, quoted as Python
 * writes a string or bare (approximate='tanh', approximate=tanh), and are bound as
 * Python binds a call: by position, or by keyword (`stride=2`; a kind may
 * accept an alias, `kernel=` for `kernel_size=`), the schema saying which are
 * required, their defaults and their minimums.  Kind names are
 * case-insensitive, so PyTorch's spellings (Conv2d, ReLU) work too.
 *
 * Where errors point.  Every message is one line, "SOURCE:N: problem", where N
 * counts lines and every ';' (outside a comment) starts a new line too.  For
 * a model file without ';' N is the line number an editor shows; for an inline
 * spec "input 1 28 28; conv1 = conv2d(1, 32, 3); relu" it is the position of
 * the piece in the list (here: 1, 2, 3), and SOURCE is "model text" when
 * fr_model_load was given the text itself (the frost command puts its flag in
 * front: "--model: model text:2: ...").  Messages that concern the whole text
 * have no number ("model.txt: no layers").
 *
 * The whole text is parsed into a list before anything is built, because
 * without an input line the input shape comes from the first layer and
 * fr_model_new needs it first.  The list is then built only through
 * fr_model_add_layer (model.c), whose shape and name errors get the piece's
 * location prefixed.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest value of any argument or input size. */
#define MAX_SIZE FR_ARG_LIMIT
/* More layers than this is a mistake, and model.c's name checks are quadratic. */
#define MAX_LAYERS 4096
#define MAX_MODEL_FILE_BYTES (1024 * 1024)
/* What messages about an inline model call it; the frost command adds its flag. */
#define INLINE_SOURCE "model text"
#define MAX_ARGS FR_LAYER_ARGS_MAX

/* ---------------------------------------------------------- parsed model */

/* What an entry of the parsed list is: a layer, or a block's bounds as
 * fr_model_begin_residual, fr_model_begin_shortcut and fr_model_end_residual
 * take them. */
typedef enum spec_op {
    SPEC_LAYER,
    SPEC_RESIDUAL,  /* fr_model_begin_residual; unnamed: anonymous (NULL) */
    SPEC_SHORTCUT,  /* fr_model_begin_shortcut */
    SPEC_END,       /* fr_model_end_residual */
    SPEC_BLOCK,     /* fr_model_begin_block: a block that only names its layers */
    SPEC_BLOCK_END, /* fr_model_end_block */
    SPEC_TIE,       /* fr_model_tie(name, to) */
} spec_op;

/* The kinds of open block. */
typedef enum block_kind { BLOCK_RESIDUAL, BLOCK_SHORTCUT, BLOCK_NAMES } block_kind;

typedef struct spec_layer {
    spec_op op;
    long line;                 /* for SPEC_END, the line its block starts on */
    const fr_layer_ops *kind;
    bool named;                /* otherwise model.c names it by its index */
    char name[FR_NAME_MAX];
    char to[FR_NAME_MAX];      /* SPEC_TIE: the parameter `name` is tied to */
    int args[MAX_ARGS];
} spec_layer;

typedef struct spec {
    const char *source;
    /* The kinds a layer may be (the registry's, or a test's). */
    const fr_layer_ops *const *kinds;
    int kind_count;
    bool has_input;
    long input_line;
    fr_dtype input_dtype;   /* FR_I32 for "input T tokens" */
    int input_ndim;         /* 1 to 3 */
    int input[3];           /* [F], [T], [T, C] or [C, H, W] */
    spec_layer *layers;     /* layers, block bounds and ties, in order */
    int layer_count, layer_cap;
    /* The blocks open while parsing, innermost last. */
    struct open_block {
        block_kind kind;
        long line;
        char name[FR_NAME_MAX];  /* its own name; a shortcut's is its residual's */
        /* How messages call it: "residual block 'b'", "block 'h.0'", "the
         * unnamed residual block of line 3" (a shortcut: its residual's). */
        char title[FR_NAME_MAX + 48];
        bool has_layers;    /* its body (a residual) has a layer or block */
        bool has_shortcut;  /* a residual's shortcut began */
    } open[FR_BLOCK_DEPTH_MAX];
    int depth;
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
           c == '_' || c == '-' || c == '.';
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

/* "input F" (a vector of floats), "input T C" ([T, C] floats), "input C H W"
 * (an image) or "input T tokens" (T int32 token ids); commas between the
 * sizes are tolerated. */
static int parse_input(spec *s, long line, cursor *c, fr_error *err) {
    static const char *const size_names[4][3] = {
        {"T"}, {"F"}, {"T", "C"}, {"C", "H", "W"}};
    static const char forms[] = "input F, input T C, input C H W or input T tokens";
    if (s->layer_count > 0)
        return syntax_error(s, line, err, "'input' must come before the first layer");
    if (s->has_input)
        return syntax_error(s, line, err, "'input' given twice (first on line %ld)",
                            s->input_line);
    const char *words[4];
    size_t lengths[4];
    int count = 0;
    for (;;) {
        while (!at_end(c) && (is_blank(*c->pos) || *c->pos == ','))
            c->pos++;
        if (at_end(c))
            break;
        size_t len = 0;
        while (c->pos + len < c->end && !is_blank(c->pos[len]) && c->pos[len] != ',')
            len++;
        if (count == 4)
            return syntax_error(s, line, err, "'input' takes 1 to 3 sizes (%s), got more", forms);
        words[count] = c->pos;
        lengths[count++] = len;
        c->pos += len;
    }
    bool tokens = count > 0 && word_is(words[count - 1], lengths[count - 1], "tokens");
    int sizes = count - (tokens ? 1 : 0);
    if (tokens && sizes != 1)
        return syntax_error(s, line, err, "'input T tokens' takes one size (the sequence "
                            "length), got %d", sizes);
    if (sizes < 1 || sizes > 3)
        return syntax_error(s, line, err, "'input' takes 1 to 3 sizes (%s), got %d", forms,
                            sizes);
    size_t numel = 1;
    for (int i = 0; i < sizes; i++) {
        char what[32];
        snprintf(what, sizeof what, "input %s", size_names[tokens ? 0 : sizes][i]);
        int rc = check_size(s, line, what, words[i], lengths[i], 1, &s->input[i], err);
        if (rc != FR_OK)
            return rc;
        numel *= (size_t)s->input[i];
    }
    if (numel > (size_t)MAX_SIZE * 100) {
        char shape[64] = "";
        for (int i = 0; i < sizes; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%d",
                     i ? " x " : "", s->input[i]);
        return syntax_error(s, line, err, "input %s is too large (at most %d values)", shape,
                            MAX_SIZE * 100);
    }
    s->has_input = true;
    s->input_line = line;
    s->input_ndim = sizes;
    s->input_dtype = tokens ? FR_I32 : FR_F32;
    return FR_OK;
}

/* ------------------------------------------------------------ layer lines */

/* The registry's kinds, or only those that imply the model input, joined by
 * ", " and `last` before the final one. */
static void kind_names(const spec *s, char *buf, size_t len, bool implying, const char *last) {
    const fr_layer_ops *listed[64];
    int count = 0;
    for (int i = 0; i < s->kind_count && count < 64; i++)
        if (!implying || s->kinds[i]->implies_input != FR_IMPLIES_NOTHING)
            listed[count++] = s->kinds[i];
    buf[0] = '\0';
    for (int i = 0; i < count; i++) {
        strncat(buf, i == 0 ? "" : i + 1 < count ? ", " : last, len - strlen(buf) - 1);
        strncat(buf, listed[i]->kind, len - strlen(buf) - 1);
    }
}

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

static int keyword_slot(const fr_layer_ops *kind, int arg_count, const raw_arg *arg) {
    for (int slot = 0; slot < arg_count; slot++) {
        const fr_layer_arg *schema = &kind->args[slot];
        if (word_is(arg->key, arg->key_len, schema->name) ||
            (schema->alias && word_is(arg->key, arg->key_len, schema->alias)))
            return slot;
    }
    return -1;
}

/* A real in [0, 1] (eps=1e-5, p=0.5), held in units of FR_REAL_UNIT; a
 * positive `minimum` excludes 0. */
static int check_real(const spec *s, long line, const char *what, const char *text, size_t len,
                      int minimum, int *value, fr_error *err) {
    char got[48], copy[48];
    shown(text, len, got, sizeof got);
    double real = -1.0;
    char *end = NULL;
    if (len < sizeof copy) {
        memcpy(copy, text, len);
        copy[len] = '\0';
        real = strtod(copy, &end);
    }
    if (!end || end == copy || *end != '\0' || !(real >= 0.0 && real <= 1.0) ||
        (minimum > 0 && real == 0.0))
        return syntax_error(s, line, err, "%s must be a number in %s1, got '%s'", what,
                            minimum > 0 ? "(0, " : "[0, ", got);
    double units = real / FR_REAL_UNIT;
    *value = (int)(units + 0.5);
    if (*value < minimum || fabs(*value - units) > 1e-3 * units)
        return syntax_error(s, line, err, "%s: '%s' is not a multiple of %g", what, got,
                            FR_REAL_UNIT);
    return FR_OK;
}

/* A word of the schema's choices, written as Python writes a string
 * ('tanh', "tanh") or bare (tanh), exactly; held as its index. */
static int check_choice(const spec *s, long line, const char *what, const fr_layer_arg *schema,
                        const char *text, size_t len, int *value, fr_error *err) {
    if (len >= 2 && (text[0] == '\'' || text[0] == '"') && text[len - 1] == text[0]) {
        text++;
        len -= 2;
    }
    for (int i = 0; schema->choices[i]; i++)
        if (strlen(schema->choices[i]) == len && memcmp(schema->choices[i], text, len) == 0) {
            *value = i;
            return FR_OK;
        }
    char got[48], names[160] = "";
    shown(text, len, got, sizeof got);
    for (int i = 0; schema->choices[i]; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s'%s'", i ? ", " : "",
                 schema->choices[i]);
    return syntax_error(s, line, err, "%s must be one of %s, got '%s'", what, names, got);
}

/* One argument's value, as its schema says: True or False, a real, a
 * choice, or a size. */
static int bind_value(const spec *s, long line, const fr_layer_ops *kind, int slot,
                      const raw_arg *arg, int *value, fr_error *err) {
    const fr_layer_arg *schema = &kind->args[slot];
    char what[64];
    snprintf(what, sizeof what, "%s: %s", kind->kind, schema->name);
    if (schema->choices)
        return check_choice(s, line, what, schema, arg->value, arg->value_len, value, err);
    if (schema->real)
        return check_real(s, line, what, arg->value, arg->value_len, schema->minimum, value, err);
    if (!schema->boolean)
        return check_size(s, line, what, arg->value, arg->value_len, schema->minimum, value, err);
    if (word_is(arg->value, arg->value_len, "true") || word_is(arg->value, arg->value_len, "false")) {
        *value = word_is(arg->value, arg->value_len, "true");
        return FR_OK;
    }
    char got[48];
    shown(arg->value, arg->value_len, got, sizeof got);
    return syntax_error(s, line, err, "%s must be True or False, got '%s'", what, got);
}

/* Match the written arguments to the kind's schema, as Python binds a call:
 * the required arguments come first, keyword-only ones (bias=) last. */
static int bind_arguments(const spec *s, long line, const fr_layer_ops *kind,
                          const raw_arg *args, int count, spec_layer *layer, fr_error *err) {
    int arg_count = fr_layer_arg_count(kind), required = 0, positional = 0;
    while (required < arg_count && !kind->args[required].optional)
        required++;
    while (positional < arg_count && !kind->args[positional].keyword_only)
        positional++;
    int by_position = 0;
    while (count <= arg_count && by_position < count && !args[by_position].key)
        by_position++;
    if (count < required || count > arg_count || by_position > positional) {
        if (positional == 0)
            return syntax_error(s, line, err, "%s takes no arguments, got %d", kind->kind, count);
        if (required == positional)
            return syntax_error(s, line, err, "%s takes %d arguments, got %d", kind->kind,
                                required, count);
        return syntax_error(s, line, err, "%s takes %d to %d arguments, got %d", kind->kind,
                            required, positional, count);
    }
    bool given[MAX_ARGS] = {false};
    bool keyword_seen = false;
    for (int i = 0; i < count; i++) {
        int slot = i;
        if (args[i].key) {
            slot = keyword_slot(kind, arg_count, &args[i]);
            if (slot < 0) {
                char key[48], names[128] = "";
                shown(args[i].key, args[i].key_len, key, sizeof key);
                for (int j = 0; j < arg_count; j++) {
                    strncat(names, j ? ", " : "", sizeof names - strlen(names) - 1);
                    strncat(names, kind->args[j].name, sizeof names - strlen(names) - 1);
                }
                return syntax_error(s, line, err, "%s has no argument '%s' (expected %s)",
                                    kind->kind, key, names);
            }
            keyword_seen = true;
        } else if (keyword_seen) {
            return syntax_error(s, line, err, "%s: positional argument after a keyword argument",
                                kind->kind);
        }
        if (given[slot])
            return syntax_error(s, line, err, "%s: '%s' is given twice", kind->kind,
                                kind->args[slot].name);
        given[slot] = true;
        int rc = bind_value(s, line, kind, slot, &args[i], &layer->args[slot], err);
        if (rc != FR_OK)
            return rc;
    }
    for (int slot = 0; slot < arg_count; slot++) {
        if (given[slot])
            continue;
        if (!kind->args[slot].optional)
            return syntax_error(s, line, err, "%s: missing argument '%s'", kind->kind,
                                kind->args[slot].name);
        layer->args[slot] = kind->args[slot].default_value;
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
                            "invalid layer name '%s' (letters, digits, '_', '-' and '.' only)",
                            name);
    if (len > FR_LAYER_NAME_MAX)
        return syntax_error(s, line, err, "layer name '%s' is too long (at most %d characters)",
                            name, FR_LAYER_NAME_MAX);
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
    for (int i = 0; i < s->kind_count && !layer.kind; i++)
        if (word_is(c->pos, kind_len, s->kinds[i]->kind))
            layer.kind = s->kinds[i];
    if (!layer.kind) {
        char got[48], expected[256];
        shown(c->pos, kind_len, got, sizeof got);
        kind_names(s, expected, sizeof expected, false, ", ");
        return syntax_error(s, line, err, "unknown layer kind '%s' (expected %s)", got, expected);
    }
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
                            parenthesised ? ")" : layer.kind->kind);
    }
    int rc = bind_arguments(s, line, layer.kind, args, count, &layer, err);
    if (rc != FR_OK)
        return rc;
    return append_layer(s, &layer, err);
}

/* The innermost open block, NULL at the top level. */
static struct open_block *innermost(spec *s) { return s->depth ? &s->open[s->depth - 1] : NULL; }

/* A layer or a nested block is about to be added to the innermost block. */
static int enter_body(spec *s, long line, fr_error *err) {
    struct open_block *block = innermost(s);
    if (!block)
        return FR_OK;
    if (block->kind == BLOCK_RESIDUAL && block->has_shortcut)
        return syntax_error(s, line, err,
                            "a layer after the shortcut of %s (the shortcut comes last)",
                            block->title);
    block->has_layers = true;
    return FR_OK;
}

/* A parameter name of "tie NAME TO": a run of name characters. */
static int tie_name(const spec *s, long line, cursor *c, const char *which, char *name,
                    fr_error *err) {
    skip_blanks(c);
    size_t len = name_run(c->pos, c->end);
    if (len == 0) {
        if (at_end(c))
            return syntax_error(s, line, err, "'tie' takes two parameter names (tie NAME TO), "
                                "%s is missing", which);
        char expected[64];
        snprintf(expected, sizeof expected, "a parameter name (%s) after 'tie'", which);
        return unexpected(s, line, c, expected, err);
    }
    char got[48];
    shown(c->pos, len, got, sizeof got);
    if (len >= FR_NAME_MAX)
        return syntax_error(s, line, err, "parameter name '%s' is too long (at most %d "
                            "characters)", got, FR_NAME_MAX - 1);
    memcpy(name, c->pos, len);
    name[len] = '\0';
    c->pos += len;
    return FR_OK;
}

/* "tie NAME TO": parameter NAME becomes parameter TO (fr_model_tie), both by
 * their full names, once the layers before it are added. */
static int parse_tie(spec *s, long line, cursor *c, fr_error *err) {
    if (s->depth > 0)
        return syntax_error(s, line, err, "'tie' inside %s (tie parameters at the top level, "
                            "by their full names)", innermost(s)->title);
    spec_layer entry = {.op = SPEC_TIE, .line = line};
    int rc = tie_name(s, line, c, "NAME", entry.name, err);
    if (rc == FR_OK)
        rc = tie_name(s, line, c, "TO", entry.to, err);
    if (rc != FR_OK)
        return rc;
    skip_blanks(c);
    if (!at_end(c)) {
        char junk[48];
        shown(c->pos, token_length(c->pos, c->end), junk, sizeof junk);
        return syntax_error(s, line, err, "unexpected '%s' after 'tie %s %s' (tie takes two "
                            "parameter names)", junk, entry.name, entry.to);
    }
    return append_layer(s, &entry, err);
}

/* Text between separators and braces: blank, the input line, a tie, or a layer. */
static int parse_simple(spec *s, long line, const char *start, const char *end, fr_error *err) {
    cursor c = {start, end};
    skip_blanks(&c);
    while (c.end > c.pos && is_blank(c.end[-1]))
        c.end--;
    if (at_end(&c))
        return FR_OK;
    size_t word = name_run(c.pos, c.end);
    cursor after_word = {c.pos + word, c.end};
    skip_blanks(&after_word);
    bool assigned = !at_end(&after_word) && *after_word.pos == '=';
    /* "input = linear(...)" is a layer called input, "tie = ..." one called tie. */
    if (word == 5 && memcmp(c.pos, "input", 5) == 0 && !assigned)
        return parse_input(s, line, &after_word, err);
    if (word == 3 && memcmp(c.pos, "tie", 3) == 0 && !assigned)
        return parse_tie(s, line, &after_word, err);
    if (!assigned && (word_is(c.pos, word, "residual") || word_is(c.pos, word, "shortcut") ||
                      word_is(c.pos, word, "block")))
        return syntax_error(s, line, err, "expected '{' after '%s%s'",
                            word_is(c.pos, word, "residual") ? "residual"
                            : word_is(c.pos, word, "block")  ? "block"
                                                             : "shortcut",
                            at_end(&after_word) || word_is(c.pos, word, "shortcut") ? ""
                                                                                    : " NAME");
    int rc = enter_body(s, line, err);
    return rc == FR_OK ? parse_layer(s, line, &c, err) : rc;
}

/* The NAME of "residual NAME {" or "block NAME {" into entry. */
static int block_name(const spec *s, long line, cursor *name, spec_layer *entry, fr_error *err) {
    skip_blanks(name);
    size_t len = name_run(name->pos, name->end);
    char shown_name[48];
    shown(name->pos, (size_t)(name->end - name->pos), shown_name, sizeof shown_name);
    if (len == 0 || name->pos + len != name->end)
        return syntax_error(s, line, err, "invalid block name '%s' (letters, digits, '_', '-' "
                            "and '.' only)", shown_name);
    if (len > FR_LAYER_NAME_MAX)
        return syntax_error(s, line, err, "block name '%s' is too long (at most %d characters)",
                            shown_name, FR_LAYER_NAME_MAX);
    entry->named = true;
    memcpy(entry->name, name->pos, len);
    entry->name[len] = '\0';
    return FR_OK;
}

/* "residual [NAME]", "block NAME" or "shortcut" before a '{'. */
static int open_block(spec *s, long line, const char *start, const char *end, fr_error *err) {
    cursor c = {start, end};
    skip_blanks(&c);
    while (c.end > c.pos && is_blank(c.end[-1]))
        c.end--;
    size_t word = name_run(c.pos, c.end);
    cursor rest = {c.pos + word, c.end};
    spec_layer entry = {.line = line};
    struct open_block *outer = innermost(s);
    block_kind kind;
    if (word_is(c.pos, word, "shortcut") && at_end(&rest)) {
        if (outer && outer->kind == BLOCK_NAMES)
            return syntax_error(s, line, err, "'shortcut {' directly inside %s (a shortcut "
                                "belongs to a residual block)", outer->title);
        if (!outer || outer->kind != BLOCK_RESIDUAL)
            return syntax_error(s, line, err, "'shortcut {' outside a residual block");
        if (outer->has_shortcut)
            return syntax_error(s, line, err, "%s has a second shortcut", outer->title);
        if (!outer->has_layers)
            return syntax_error(s, line, err, "%s has no layers before its shortcut",
                                outer->title);
        outer->has_shortcut = true;
        entry.op = SPEC_SHORTCUT;
        kind = BLOCK_SHORTCUT;
    } else if (word_is(c.pos, word, "residual") || word_is(c.pos, word, "block")) {
        bool names_only = word_is(c.pos, word, "block");
        if (names_only && at_end(&rest))
            return syntax_error(s, line, err, "'block' needs a name (block NAME { ... })");
        if (!at_end(&rest)) {
            int rc = block_name(s, line, &rest, &entry, err);
            if (rc != FR_OK)
                return rc;
        }
        if (s->depth == FR_BLOCK_DEPTH_MAX)
            return syntax_error(s, line, err, "blocks nest more than %d deep", FR_BLOCK_DEPTH_MAX);
        int rc = enter_body(s, line, err);
        if (rc != FR_OK)
            return rc;
        entry.op = names_only ? SPEC_BLOCK : SPEC_RESIDUAL;
        kind = names_only ? BLOCK_NAMES : BLOCK_RESIDUAL;
    } else {
        char got[48];
        shown(c.pos, (size_t)(c.end - c.pos), got, sizeof got);
        if (at_end(&c))
            return syntax_error(s, line, err, "expected 'residual [NAME]', 'block NAME' or "
                                "'shortcut' before '{'");
        return syntax_error(s, line, err, "expected 'residual [NAME]', 'block NAME' or "
                            "'shortcut' before '{', got '%s'", got);
    }
    struct open_block *block = &s->open[s->depth++];
    memset(block, 0, sizeof *block);
    block->kind = kind;
    block->line = line;
    if (kind == BLOCK_SHORTCUT) {
        memcpy(block->name, outer->name, sizeof block->name);
        memcpy(block->title, outer->title, sizeof block->title);
    } else {
        memcpy(block->name, entry.name, sizeof block->name);
        if (kind == BLOCK_NAMES)
            snprintf(block->title, sizeof block->title, "block '%s'", entry.name);
        else if (entry.named)
            snprintf(block->title, sizeof block->title, "residual block '%s'", entry.name);
        else
            snprintf(block->title, sizeof block->title, "the unnamed residual block of line %ld",
                     line);
    }
    return append_layer(s, &entry, err);
}

/* '}': the innermost block ends, whatever its kind (a residual's end adds its
 * join). */
static int close_block(spec *s, long line, fr_error *err) {
    struct open_block *block = innermost(s);
    if (!block)
        return syntax_error(s, line, err, "unexpected '}' (no block is open)");
    if (block->kind == BLOCK_SHORTCUT) {
        s->depth--;
        return FR_OK;
    }
    if (!block->has_layers)
        return syntax_error(s, line, err, "%s has no layers", block->title);
    spec_layer entry = {.op = block->kind == BLOCK_NAMES ? SPEC_BLOCK_END : SPEC_END,
                        .line = block->line};
    s->depth--;
    return append_layer(s, &entry, err);
}

/* One piece of text between separators: blank, the input line, a tie, a
 * layer, or any of those around the braces of blocks. */
static int parse_piece(spec *s, long line, const char *start, const char *end, fr_error *err) {
    for (;;) {
        const char *brace = start;
        while (brace < end && *brace != '{' && *brace != '}')
            brace++;
        if (brace == end)
            return parse_simple(s, line, start, end, err);
        int rc = *brace == '{' ? open_block(s, line, start, brace, err)
                               : parse_simple(s, line, start, brace, err);
        if (rc == FR_OK && *brace == '}')
            rc = close_block(s, line, err);
        if (rc != FR_OK)
            return rc;
        start = brace + 1;
    }
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
            break;
        p++;
        line++;
    }
    if (s->depth > 0) {
        const struct open_block *block = innermost(s);
        if (block->kind == BLOCK_SHORTCUT)
            return syntax_error(s, block->line, err,
                                "the shortcut of %s is not closed (missing '}')", block->title);
        return syntax_error(s, block->line, err, "%s is not closed (missing '}')", block->title);
    }
    return FR_OK;
}

/* --------------------------------------------------------------- building */

/* The input line's shape, or without one what the first layer expects: a
 * convolution gets Fashion-MNIST-sized images with its channel count, a
 * linear layer a vector of its in_features (fr_layer_ops.implies_input); a
 * layer reading token ids (an embedding) needs the line, which says how many. */
static int input_shape(const spec *s, const spec_layer *first, fr_dtype *dtype, int *ndim,
                       int shape[3], fr_error *err) {
    *dtype = FR_F32;
    *ndim = 3;
    if (s->has_input) {
        *dtype = s->input_dtype;
        *ndim = s->input_ndim;
        memcpy(shape, s->input, sizeof s->input);
        return FR_OK;
    }
    if (first->kind->input_dtype == FR_I32)
        return syntax_error(s, first->line, err,
                            "a model starting with %s needs an 'input T tokens' line "
                            "(it reads a sequence of T token ids)", first->kind->kind);
    switch (first->kind->implies_input) {
    case FR_IMPLIES_IMAGE:
        shape[0] = first->args[0];
        shape[1] = shape[2] = 28;
        return FR_OK;
    case FR_IMPLIES_VECTOR:
        shape[0] = first->args[0];
        shape[1] = shape[2] = 1;
        return FR_OK;
    case FR_IMPLIES_NOTHING:
        break;
    }
    char implying[128];
    kind_names(s, implying, sizeof implying, true, " and ");
    return syntax_error(s, first->line, err,
                        "a model starting with %s needs an 'input C H W' line "
                        "(only %s imply the input size)",
                        first->kind->kind, implying);
}

/* Layers start their messages "NAME: ", model.c quotes names: 'NAME'. */
static bool mentions_layer(const char *msg, const char *name) {
    size_t len = strlen(name);
    if (strncmp(msg, name, len) == 0 && msg[len] == ':')
        return true;
    char quoted[FR_NAME_MAX * 2 + 2];
    snprintf(quoted, sizeof quoted, "'%s'", name);
    return strstr(msg, quoted) != NULL;
}

static int build_model(const spec *s, fr_model **out, fr_error *err) {
    const spec_layer *first = NULL;
    for (int i = 0; i < s->layer_count && !first; i++)
        if (s->layers[i].op == SPEC_LAYER)
            first = &s->layers[i];
    if (!first)
        return fr_fail(err, FR_EFORMAT, "%s: no layers", s->source);
    int shape[3] = {0, 0, 0}, ndim = 3;
    fr_dtype dtype = FR_F32;
    int rc = input_shape(s, first, &dtype, &ndim, shape, err);
    if (rc != FR_OK)
        return rc;
    fr_model *model = fr_model_new_shape(dtype, ndim, shape);
    if (!model)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory creating the model", s->source);
    for (int i = 0; i < s->layer_count; i++) {
        const spec_layer *layer = &s->layers[i];
        fr_error add_err = {0};
        /* The name model.c gives it, with its blocks' names in front. */
        char name[FR_NAME_MAX * 2];
        fr_model_next_layer_name(model, layer->named ? layer->name : NULL, name, sizeof name);
        switch (layer->op) {
        case SPEC_LAYER:
            rc = fr_model_add_layer(model, layer->kind, layer->named ? layer->name : NULL,
                                    layer->args, &add_err);
            break;
        case SPEC_RESIDUAL:
            rc = fr_model_begin_residual(model, layer->named ? layer->name : NULL, &add_err);
            break;
        case SPEC_BLOCK:
            rc = fr_model_begin_block(model, layer->name, &add_err);
            break;
        case SPEC_BLOCK_END:
            rc = fr_model_end_block(model, &add_err);
            break;
        case SPEC_TIE:
            rc = fr_model_tie(model, layer->name, layer->to, &add_err);
            break;
        case SPEC_SHORTCUT:
            rc = fr_model_begin_shortcut(model, &add_err);
            break;
        case SPEC_END:
            rc = fr_model_end_residual(model, &add_err);
            break;
        }
        if (rc == FR_OK)
            continue;
        fr_model_free(model);
        /* A shape mismatch must name both layers; the layer's own message may
         * name only the one before it.  A block's messages name the block. */
        if (layer->op != SPEC_LAYER || mentions_layer(add_err.msg, name))
            return fr_fail(err, rc, "%s:%ld: %s", s->source, layer->line, add_err.msg);
        return fr_fail(err, rc, "%s:%ld: layer '%s': %s", s->source, layer->line, name,
                       add_err.msg);
    }
    *out = model;
    return FR_OK;
}

/* ------------------------------------------------------------ public API */

int fr_model_parse_with_kinds(const char *text, const char *source,
                              const fr_layer_ops *const *kinds, int kind_count, fr_model **out,
                              fr_error *err) {
    if (out)
        *out = NULL;
    if (!source)
        source = "model";
    if (!text || !out)
        return fr_fail(err, FR_EINVAL, "%s: no model text given", source);
    if (!kinds || kind_count < 0)
        return fr_fail(err, FR_EINVAL, "%s: no layer kinds given", source);
    spec s = {.source = source, .kinds = kinds, .kind_count = kind_count};
    int rc = parse_text(&s, text, err);
    if (rc == FR_OK)
        rc = build_model(&s, out, err);
    free(s.layers);
    return rc;
}

int fr_model_parse(const char *text, const char *source, fr_model **out, fr_error *err) {
    return fr_model_parse_with_kinds(text, source, fr_layer_kinds, fr_layer_kind_count, out, err);
}

/* A model file: a regular file of at most 1 MiB of text, read by the
 * library's one reader with one spare zero byte to end the string. */
static int load_file(const char *path, fr_model **out, fr_error *err) {
    unsigned char *bytes = NULL;
    size_t size = 0;
    int rc = fr_read_file(path, MAX_MODEL_FILE_BYTES, 1, &bytes, &size, err);
    if (rc != FR_OK)
        return rc;
    const char *text = (const char *)bytes;
    if (memchr(text, '\0', size))
        rc = fr_fail(err, FR_EFORMAT, "%s: contains a NUL byte (a model file is text)", path);
    else
        rc = fr_model_parse(text, path, out, err);
    fr_free(bytes);
    return rc;
}

int fr_model_load(const char *arg, fr_model **out, fr_error *err) {
    if (out)
        *out = NULL;
    if (!arg || !out)
        return fr_fail(err, FR_EINVAL, "no model given");
    struct stat st;
    bool exists = stat(arg, &st) == 0;
    size_t len = strlen(arg);
    if (exists && S_ISREG(st.st_mode) && len > 5 && strcmp(arg + len - 5, ".json") == 0)
        return fr_model_load_gpt2(arg, 0, out, err);
    if (exists && S_ISREG(st.st_mode))
        return load_file(arg, out, err);
    /* Inline specs need one of these; a plain word is a mistyped file name. */
    if (strpbrk(arg, ";=({\n"))
        return fr_model_parse(arg, INLINE_SOURCE, out, err);
    if (exists)
        return fr_fail(err, FR_EIO, "%s: not a regular file", arg);
    return fr_fail(err, FR_EIO, "%s: no such model file", arg);
}
