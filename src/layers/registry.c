/*
 * registry.c - every layer kind frost knows, one line each, and what the
 * kinds' argument lists (fr_layer_ops.args) mean to everyone who reads them.
 *
 * A kind is its file in src/layers/ (PyTorch's module: its arguments, shape
 * rule, forward and backward, in one fr_layer_ops named fr_KIND_ops) and its
 * line in LAYER_KINDS below; Makefile.am lists the file.  The parser (spec.c)
 * looks kinds up here and binds arguments by their schema, the model
 * (model.c) checks and describes them through the functions below, and the
 * trainer reads the flags of the ops table.  Nothing switches on a kind.
 */
#include "../internal.h"

#include <string.h>

/* In the order messages list them ("expected linear, conv2d, ..."). */
#define LAYER_KINDS(KIND) \
    KIND(linear)          \
    KIND(conv2d)          \
    KIND(relu)            \
    KIND(maxpool2d)       \
    KIND(flatten)         \
    KIND(avgpool2d)       \
    KIND(adaptive_avgpool2d) \
    KIND(batchnorm2d)        \
    KIND(dropout)            \
    KIND(embedding)          \
    KIND(position_embedding) \
    KIND(layernorm)          \
    KIND(gelu)               \
    KIND(attention)          \
    KIND(conv1d)             \
    KIND(pool_sequence)

#define DECLARE_OPS(kind) extern const fr_layer_ops fr_##kind##_ops;
#define OPS_ADDRESS(kind) &fr_##kind##_ops,

LAYER_KINDS(DECLARE_OPS)

const fr_layer_ops *const fr_layer_kinds[] = {LAYER_KINDS(OPS_ADDRESS)};
const int fr_layer_kind_count = (int)(sizeof fr_layer_kinds / sizeof fr_layer_kinds[0]);

const fr_layer_ops *fr_layer_kind_find(const char *name) {
    for (int i = 0; i < fr_layer_kind_count; i++)
        if (strcmp(fr_layer_kinds[i]->kind, name) == 0)
            return fr_layer_kinds[i];
    return NULL;
}

int fr_layer_arg_count(const fr_layer_ops *ops) {
    int count = 0;
    while (count < FR_LAYER_ARGS_MAX && ops->args[count].name)
        count++;
    return count;
}

int fr_layer_check_arg(const fr_layer_ops *ops, int index, int value, fr_error *err) {
    const fr_layer_arg *arg = &ops->args[index];
    if (value == FR_ARG_NONE && arg->optional && arg->default_value == FR_ARG_NONE)
        return FR_OK;
    if (arg->choices) {
        int count = 0;
        while (arg->choices[count])
            count++;
        if (value < 0 || value >= count) {
            char names[160] = "";
            for (int i = 0; i < count; i++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s'%s'",
                         i ? ", " : "", arg->choices[i]);
            return fr_fail(err, FR_EINVAL, "%s: %s must be one of %s (an index below %d), got %d",
                           ops->kind, arg->name, names, count, value);
        }
        return FR_OK;
    }
    if (arg->boolean) {
        if (value != 0 && value != 1)
            return fr_fail(err, FR_EINVAL, "%s: %s must be True or False, got %d", ops->kind,
                           arg->name, value);
        return FR_OK;
    }
    if (arg->real) {
        if (value < arg->minimum || value > FR_REAL_MAX)
            return fr_fail(err, FR_EINVAL, "%s: %s must be in %s1, got %g", ops->kind, arg->name,
                           arg->minimum > 0 ? "(0, " : "[0, ", fr_arg_real(value));
        return FR_OK;
    }
    if (value < arg->minimum)
        return fr_fail(err, FR_EINVAL, "%s: %s must be %s, got %d", ops->kind, arg->name,
                       arg->minimum > 0 ? "positive" : "0 or more", value);
    if (value > FR_ARG_LIMIT)
        return fr_fail(err, FR_EINVAL, "%s: %s is too large: %d (at most %d)", ops->kind,
                       arg->name, value, FR_ARG_LIMIT);
    return FR_OK;
}

static size_t append(char *buf, size_t len, size_t used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* snprintf at buf + used; returns the new length, which stops at len - 1. */
static size_t append(char *buf, size_t len, size_t used, const char *fmt, ...) {
    if (used + 1 >= len)
        return used;
    va_list ap;
    va_start(ap, fmt);
    int wrote = vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
    if (wrote < 0)
        return used;
    return used + (size_t)wrote < len ? used + (size_t)wrote : len - 1;
}

static size_t append_value(char *buf, size_t len, size_t used, const fr_layer_arg *arg,
                           int value, bool keyword) {
    if (keyword)
        used = append(buf, len, used, "%s=", arg->name);
    if (arg->boolean)
        return append(buf, len, used, "%s", value ? "True" : "False");
    if (arg->real)
        return append(buf, len, used, "%g", fr_arg_real(value));
    if (arg->choices)  /* a string, quoted as Python's repr quotes it */
        return append(buf, len, used, "'%s'", arg->choices[value]);
    return append(buf, len, used, "%d", value);
}

/* Positional arguments run up to the last one not at its default; one left at
 * None inside that run turns the rest into keywords (maxpool2d(2, padding=1)). */
void fr_layer_format(const fr_layer *l, char *buf, size_t len) {
    if (len == 0)
        return;
    buf[0] = '\0';
    const fr_layer_ops *ops = l->ops;
    int count = fr_layer_arg_count(ops);
    size_t used = append(buf, len, 0, "%s", ops->kind);
    if (count == 0)
        return;
    int last = -1;
    for (int i = 0; i < count; i++) {
        const fr_layer_arg *arg = &ops->args[i];
        if (!arg->keyword_only && (!arg->optional || l->args[i] != arg->default_value))
            last = i;
    }
    used = append(buf, len, used, "(");
    bool keywords = false, first = true;
    for (int i = 0; i < count; i++) {
        const fr_layer_arg *arg = &ops->args[i];
        bool shown = arg->keyword_only ? l->args[i] != arg->default_value
                                       : i <= last && l->args[i] != FR_ARG_NONE;
        if (!arg->keyword_only && i <= last && l->args[i] == FR_ARG_NONE)
            keywords = true;
        if (!shown)
            continue;
        if (!first)
            used = append(buf, len, used, ", ");
        used = append_value(buf, len, used, arg, l->args[i], keywords || arg->keyword_only);
        first = false;
    }
    append(buf, len, used, ")");
}
