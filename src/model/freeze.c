/*
 * freeze.c - which parameters train.  PyTorch's requires_grad, at the three
 * granularities people use: the whole model, one layer, and every parameter
 * whose name matches a pattern.  A pattern that matches nothing is an error,
 * so a typo never silently trains the wrong thing.  A residual block's name
 * stands for every layer in it, as a torchvision module's does.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <fnmatch.h>
#include <string.h>

static int apply_pattern(fr_model *model, const char *pattern, bool requires_grad,
                         fr_error *err);
static bool has_glob_chars(const char *pattern) { return strpbrk(pattern, "*?[") != NULL; }

/* Layer `layer` uses parameter p (its own or a tied one), or a layer inside
 * it does when it is a residual block (its join: the block's name, then a
 * dot). */
static bool param_in_layer(const fr_model *model, const fr_param *p, int layer) {
    const fr_layer *l = &model->layers[layer];
    int index = (int)(p - model->params);
    for (int i = l->ops->join ? 0 : layer; i <= layer; i++) {
        const fr_layer *user = &model->layers[i];
        size_t len = strlen(l->name);
        if (l->ops->join && (strncmp(user->name, l->name, len) != 0 || user->name[len] != '.'))
            continue;
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
            if (user->params[k] == index)
                return true;
    }
    return false;
}

/* Parameter p's name matches the glob, or one of the names a tied layer
 * would give it does ("lm_head.weight" for the wte.weight it uses); a bare
 * block name ("h.0") matches every name inside it. */
static bool param_matches(const fr_model *model, const fr_param *p, const char *pattern) {
    size_t len = strlen(pattern);
    if (fnmatch(pattern, p->name, 0) == 0 ||
        (!has_glob_chars(pattern) && strncmp(p->name, pattern, len) == 0 && p->name[len] == '.'))
        return true;
    int index = (int)(p - model->params);
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            if (l->params[k] != index || p->layer == i)
                continue;
            char alias[FR_NAME_MAX * 2];
            snprintf(alias, sizeof alias, "%s.%s", l->name, l->ops->params[k].suffix);
            if (fnmatch(pattern, alias, 0) == 0)
                return true;
        }
    }
    return false;
}

bool fr_param_requires_grad(const fr_param *param) { return param->requires_grad; }

/* The trainer notices changed flags itself at the next step (train.c). */
void fr_param_set_requires_grad(fr_param *param, bool requires_grad) {
    param->requires_grad = requires_grad;
}

static void set_all(fr_model *model, bool requires_grad) {
    for (int i = 0; i < model->param_count; i++)
        model->params[i].requires_grad = requires_grad;
}

void fr_model_freeze_all(fr_model *model) { set_all(model, false); }
void fr_model_unfreeze_all(fr_model *model) { set_all(model, true); }

int fr_model_freeze_layer(fr_model *model, const char *layer, fr_error *err) {
    int index = fr_model_find_layer(model, layer);
    char shown[FR_ERROR_LEN / 2];
    if (index < 0)
        return fr_fail(err, FR_ENOMATCH, "no layer named '%s'",
                       fr_printable(layer, shown, sizeof shown));
    const fr_layer *l = &model->layers[index];
    if (l->ops->join)
        return apply_pattern(model, layer, false, err);
    bool any = false;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        if (l->params[k] >= 0) {
            model->params[l->params[k]].requires_grad = false;
            any = true;
        }
    if (!any)
        return fr_fail(err, FR_ENOMATCH, "layer '%s' (%s) has no parameters to freeze", layer,
                       l->ops->kind);
    return FR_OK;
}

/* A pattern matched nothing (`layer`: the layer it names, -1 for a glob). */
static int no_match(const fr_model *model, const char *pattern, int layer, fr_error *err) {
    char shown[FR_ERROR_LEN / 2];
    pattern = fr_printable(pattern, shown, sizeof shown);
    if (layer >= 0)
        return fr_fail(err, FR_ENOMATCH, "pattern '%s' names layer '%s' (%s), which has no parameters",
                       pattern, pattern, model->layers[layer].ops->kind);
    return fr_fail(err, FR_ENOMATCH, "pattern '%s' matches no parameter (names look like '%s')",
                   pattern, model->param_count ? model->params[0].name : "fc1.weight");
}

static int apply_pattern(fr_model *model, const char *pattern, bool requires_grad,
                         fr_error *err) {
    if (!pattern || !*pattern)
        return fr_fail(err, FR_EINVAL, "empty freeze pattern");
    /* A bare layer name means all of that layer's parameters. */
    int layer = has_glob_chars(pattern) ? -1 : fr_model_find_layer(model, pattern);
    int matched = 0;
    for (int i = 0; i < model->param_count; i++) {
        fr_param *p = &model->params[i];
        bool hit = layer >= 0 ? param_in_layer(model, p, layer) : param_matches(model, p, pattern);
        if (hit) {
            p->requires_grad = requires_grad;
            matched++;
        }
    }
    return matched ? FR_OK : no_match(model, pattern, layer, err);
}

int fr_model_match(const fr_model *model, const char *pattern, bool *hits, fr_error *err) {
    if (!pattern || !*pattern)
        return fr_fail(err, FR_EINVAL, "empty pattern");
    int layer = has_glob_chars(pattern) ? -1 : fr_model_find_layer(model, pattern);
    int matched = 0;
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        hits[i] = layer >= 0 ? param_in_layer(model, p, layer) : param_matches(model, p, pattern);
        matched += hits[i];
    }
    return matched ? FR_OK : no_match(model, pattern, layer, err);
}

int fr_model_freeze(fr_model *model, const char *pattern, fr_error *err) {
    return apply_pattern(model, pattern, false, err);
}

int fr_model_unfreeze(fr_model *model, const char *pattern, fr_error *err) {
    return apply_pattern(model, pattern, true, err);
}

static uint64_t checksum(const fr_model *model, bool frozen_only) {
    if (!frozen_only)
        fr_model_settle(model); /* frozen parameters have no update in flight */
    uint64_t hash = FR_HASH_INIT;
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        if (frozen_only && p->requires_grad)
            continue;
        hash = fr_hash_bytes(hash, p->name, strlen(p->name));
        if (p->bf16)
            hash = fr_hash_bytes(hash, p->bf16, p->numel * sizeof *p->bf16);
        else if (p->data)
            hash = fr_hash_bytes(hash, p->data, p->numel * sizeof(float));
    }
    for (int i = 0; i < model->buffer_count; i++) {
        const fr_buffer *b = &model->buffers[i];
        if (frozen_only && !fr_model_layer_frozen(model, b->layer))
            continue;
        hash = fr_hash_bytes(hash, b->name, strlen(b->name));
        hash = fr_hash_bytes(hash, b->data, b->numel * (b->i64 ? sizeof(int64_t) : sizeof(float)));
    }
    return hash;
}

uint64_t fr_model_frozen_checksum(const fr_model *model) { return checksum(model, true); }
uint64_t fr_model_checksum(const fr_model *model) { return checksum(model, false); }

uint64_t fr_param_checksum(const fr_param *param) {
    if (param->bf16)
        return fr_hash_bytes(FR_HASH_INIT, param->bf16, param->numel * sizeof *param->bf16);
    return param->data ? fr_hash_bytes(FR_HASH_INIT, param->data, param->numel * sizeof(float))
                       : FR_HASH_INIT;
}
