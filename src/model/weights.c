/*
 * weights.c - a model's parameters to and from a safetensors weights file.
 *
 * The file holds each parameter under its PyTorch name ("fc1.weight") as F32
 * with the PyTorch layout, so weights move between frost and PyTorch as they
 * are.  A checkpoint is a weights file with more in it: optimizer state named
 * "<parameter>.<suffix>" ("fc2.weight.momentum") and resume metadata, so
 * loading weights from a checkpoint works too; any other extra tensor means
 * the file belongs to another model and is refused.
 *
 * Buffers (batchnorm2d's running statistics) are saved and loaded beside the
 * parameters under their PyTorch names, num_batches_tracked as I64.
 *
 * LoRA adapters' parameters (fr_param.adapter) are not base weights: saving
 * leaves them out, and loading takes them only from a file that has them
 * (a checkpoint); adapter files are adapter.c's.
 *
 * Loading checks every tensor before it copies any, so a refused file leaves
 * the model as it was.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define SHAPE_TEXT_LEN 128

static void format_file_shape(const fr_st_tensor *tensor, char *text, size_t len) {
    size_t used = (size_t)snprintf(text, len, "[");
    for (int d = 0; d < tensor->ndim && used < len; d++)
        used += (size_t)snprintf(text + used, len - used, "%s%" PRId64, d ? ", " : "",
                                 tensor->shape[d]);
    if (used < len)
        snprintf(text + used, len - used, "]");
}

static bool same_shape(const fr_st_tensor *tensor, const fr_param *param) {
    if (tensor->ndim != param->ndim)
        return false;
    for (int d = 0; d < param->ndim; d++)
        if (tensor->shape[d] != param->shape[d])
            return false;
    return true;
}

/* True if `name` is "<parameter name>.<something>": state belonging to a
 * parameter, as a checkpoint stores it. */
static bool names_parameter_state(const fr_model *model, const char *name) {
    for (int i = 0; i < model->param_count; i++) {
        size_t length = strlen(model->params[i].name);
        if (strncmp(name, model->params[i].name, length) == 0 && name[length] == '.' &&
            name[length + 1] != '\0')
            return true;
    }
    return false;
}

/* Buffer b against the file's tensor of its name. */
static int check_buffer(const fr_buffer *b, const fr_st_file *file, const char *path,
                        fr_error *err) {
    const fr_st_tensor *tensor = fr_st_find(file, b->name);
    const char *dtype = b->i64 ? "I64" : "F32";
    if (!tensor)
        return fr_fail(err, FR_EFORMAT, "%s: no tensor '%s' for the model (a %s buffer)", path,
                       b->name, dtype);
    if (tensor->i64 != b->i64)
        return fr_fail(err, FR_EFORMAT, "%s: tensor '%s' has dtype %s, the model needs %s", path,
                       b->name, tensor->i64 ? "I64" : "F32", dtype);
    if (tensor->ndim != b->ndim || (b->ndim == 1 && tensor->shape[0] != b->shape[0])) {
        char file_shape[SHAPE_TEXT_LEN];
        format_file_shape(tensor, file_shape, sizeof file_shape);
        return fr_fail(err, FR_ESHAPE, "%s: tensor '%s' has shape %s, the model needs %s", path,
                       b->name, file_shape, b->ndim ? "one value per channel" : "[]");
    }
    return FR_OK;
}

/* The file's tensor for model name `name`: under that name, or with
 * Hugging Face's "transformer." in front (GPT2LMHeadModel's files). */
static const fr_st_tensor *find_tensor(const fr_st_file *file, const char *name) {
    const fr_st_tensor *tensor = fr_st_find(file, name);
    if (!tensor) {
        char prefixed[FR_NAME_MAX * 2];
        snprintf(prefixed, sizeof prefixed, "transformer.%s", name);
        tensor = fr_st_find(file, prefixed);
    }
    return tensor;
}

/* A tensor of the file frost may pass over: GPT-2's attention mask buffers
 * (h.N.attn.bias, h.N.attn.masked_bias, constants, not parameters), or the
 * name a tied parameter has in the layer that shares it ("lm_head.weight"). */
static bool skippable(const fr_model *model, const char *name) {
    if (strncmp(name, "transformer.", 12) == 0)
        name += 12;
    size_t len = strlen(name);
    if ((len > 10 && strcmp(name + len - 10, ".attn.bias") == 0) ||
        (len > 17 && strcmp(name + len - 17, ".attn.masked_bias") == 0))
        return true;
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        size_t n = strlen(l->name);
        if (strncmp(name, l->name, n) != 0 || name[n] != '.')
            continue;
        for (int k = 0; k < FR_LAYER_PARAMS_MAX && l->ops->params[k].suffix; k++)
            if (l->params[k] >= 0 && model->params[l->params[k]].layer != i &&
                strcmp(name + n + 1, l->ops->params[k].suffix) == 0)
                return true;
    }
    return false;
}

static bool is_buffer(const fr_model *model, const char *name) {
    for (int i = 0; i < model->buffer_count; i++)
        if (strcmp(name, model->buffers[i].name) == 0)
            return true;
    return false;
}

/* Whether buffer b belongs to a layer whose parameters all start fresh. */
static bool fresh_buffer(const fr_model *model, const fr_buffer *b, const bool *fresh) {
    const fr_layer *l = &model->layers[b->layer];
    bool any = false;
    for (int k = 0; fresh && k < FR_LAYER_PARAMS_MAX; k++) {
        if (l->params[k] < 0)
            continue;
        if (!fresh[l->params[k]])
            return false;
        any = true;
    }
    return any;
}

/* The file must hold every parameter and buffer of the model but the fresh
 * ones (`fresh`, per parameter; NULL: none), and nothing else. */
static int check_file_fits_model(const fr_model *model, const fr_st_file *file,
                                 const char *path, const bool *fresh, fr_error *err) {
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *param = &model->params[i];
        const fr_st_tensor *tensor = find_tensor(file, param->name);
        if ((fresh && fresh[i]) || (param->adapter && !tensor))
            continue;
        if (!tensor)
            return fr_fail(err, FR_EFORMAT, "%s: no tensor '%s' for the model", path, param->name);
        if (tensor->i64)
            return fr_fail(err, FR_EFORMAT, "%s: tensor '%s' has dtype I64, the model needs F32",
                           path, param->name);
        if (!same_shape(tensor, param)) {
            char file_shape[SHAPE_TEXT_LEN], model_shape[SHAPE_TEXT_LEN];
            format_file_shape(tensor, file_shape, sizeof file_shape);
            fr_param_shape_string(param, model_shape, sizeof model_shape);
            return fr_fail(err, FR_ESHAPE, "%s: tensor '%s' has shape %s, the model needs %s",
                           path, param->name, file_shape, model_shape);
        }
    }
    for (int i = 0; i < model->buffer_count; i++) {
        if (fresh_buffer(model, &model->buffers[i], fresh))
            continue;
        int rc = check_buffer(&model->buffers[i], file, path, err);
        if (rc != FR_OK)
            return rc;
    }
    for (int i = 0; i < file->tensor_count; i++) {
        const char *name = file->tensors[i].name;
        bool is_parameter = is_buffer(model, name) || skippable(model, name);
        for (int j = 0; j < model->param_count && !is_parameter; j++)
            is_parameter = find_tensor(file, model->params[j].name) == &file->tensors[i];
        if (!is_parameter && !names_parameter_state(model, name))
            return fr_fail(err, FR_EFORMAT,
                           "%s: unexpected tensor '%s': it is not a parameter of the model", path,
                           name);
    }
    return FR_OK;
}

/* Copy what the file holds for the model, but the fresh parameters and their
 * layers' buffers, once everything has been checked. */
static int copy_weights(fr_model *model, const fr_st_file *file, const bool *fresh,
                        fr_error *err) {
    int status = fr_model_ensure_arena(model, err);
    if (status == FR_OK)
        status = check_file_fits_model(model, file, file->path, fresh, err);
    if (status != FR_OK)
        return status;
    for (int i = 0; i < model->param_count; i++) {
        fr_param *param = &model->params[i];
        const fr_st_tensor *tensor = find_tensor(file, param->name);
        if (param->numel && !(fresh && fresh[i]) && tensor)
            fr_param_set_f32(param, tensor->data);
    }
    for (int i = 0; i < model->buffer_count; i++) {
        fr_buffer *b = &model->buffers[i];
        if (fresh_buffer(model, b, fresh))
            continue;
        const fr_st_tensor *tensor = fr_st_find(file, b->name);
        memcpy(b->data, b->i64 ? tensor->data_i64 : (const void *)tensor->data,
               b->numel * (b->i64 ? sizeof(int64_t) : sizeof(float)));
    }
    return FR_OK;
}

int fr_model_copy_weights(fr_model *model, const fr_st_file *file, fr_error *err) {
    return copy_weights(model, file, NULL, err);
}

int fr_model_buffer_tensors(const fr_model *model, fr_st_out *tensors, int count) {
    for (int i = 0; i < model->buffer_count; i++) {
        const fr_buffer *b = &model->buffers[i];
        tensors[count++] = (fr_st_out){.name = b->name, .ndim = b->ndim,
                                       .shape = {b->shape[0]}, .data = b->data, .i64 = b->i64};
    }
    return count;
}

int fr_model_load_weights(fr_model *model, const char *path, fr_error *err) {
    return fr_model_load_weights_except(model, path, NULL, 0, err);
}

int fr_model_load_weights_except(fr_model *model, const char *path, const char *const *fresh,
                                 int fresh_count, fr_error *err) {
    bool *keep_fresh = NULL, *hits = NULL;
    int status = FR_OK;
    if (fresh_count > 0) {
        keep_fresh = calloc((size_t)model->param_count + 1, sizeof *keep_fresh);
        hits = calloc((size_t)model->param_count + 1, sizeof *hits);
        if (!keep_fresh || !hits)
            status = fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    }
    /* Every pattern must name a parameter, as --freeze's must. */
    for (int k = 0; status == FR_OK && k < fresh_count; k++) {
        status = fr_model_match(model, fresh[k], hits, err);
        for (int i = 0; status == FR_OK && i < model->param_count; i++)
            keep_fresh[i] = keep_fresh[i] || hits[i];
    }
    fr_st_file *file = NULL;
    if (status == FR_OK)
        status = fr_st_read(path, &file, err);
    if (status == FR_OK)
        status = copy_weights(model, file, keep_fresh, err);
    fr_st_free(file);
    free(keep_fresh);
    free(hits);
    return status;
}

int fr_model_save_weights(const fr_model *model, const char *path, fr_error *err) {
    /* The arena is created lazily; creating it changes no parameter value, so
     * doing it for a const model is sound (the model is never a const object). */
    int status = fr_model_ensure_arena((fr_model *)model, err);
    if (status)
        return status;
    fr_st_out *tensors = NULL;
    if (model->param_count + model->buffer_count) {
        tensors = fr_alloc((size_t)(model->param_count + model->buffer_count) * sizeof *tensors);
        if (!tensors)
            return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    }
    /* The base weights only: adapters go to adapter files (--save-adapter).
     * Those kept in bf16 are written as float32 (exactly their values). */
    float *widened = fr_model_widened_bf16(model);
    if (!widened && fr_model_bf16_numel(model)) {
        fr_free(tensors);
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    }
    int base = 0;
    size_t at = 0;
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *param = &model->params[i];
        if (param->adapter)
            continue;
        tensors[base].name = param->name;
        tensors[base].ndim = param->ndim;
        for (int d = 0; d < param->ndim; d++)
            tensors[base].shape[d] = param->shape[d];
        tensors[base++].data = param->bf16 ? widened + at : param->data;
        at += param->bf16 ? param->numel : 0;
    }
    /* PyTorch's safetensors save_file marks its files this way. */
    char format_key[] = "format", format_value[] = "pt";
    fr_st_meta format = {.key = format_key, .value = format_value};
    int count = fr_model_buffer_tensors(model, tensors, base);
    status = fr_st_write(path, tensors, count, &format, 1, err);
    fr_free(tensors);
    fr_free(widened);
    return status;
}
