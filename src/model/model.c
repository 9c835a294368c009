/*
 * model.c - a model is a graph of layers and the parameter arena.
 *
 * Layers are appended one at a time; each is shape-checked against the one
 * it reads as it is added, so a bad model is refused at the line that breaks
 * it.  The graph is a list in topological order: a layer reads the layer
 * added before it, except where a residual block forks.  A block
 * (fr_model_begin_residual) feeds its input to its body's first layer and, if
 * it has one, its shortcut's (fr_model_begin_shortcut); closing it
 * (fr_model_end_residual) checks that both branches give one shape and adds
 * the join, which sums them.  Names inside a block get the block's name and a
 * dot in front, as torchvision's nested modules do.  Parameters are listed in declaration order (PyTorch's named_parameters)
 * and all live in one allocation, the arena: a parameter is an offset into it.
 *
 * Every layer is added through fr_model_add_layer, whatever its kind: the
 * kind's ops table (src/layers/) checks its arguments and gives its shape and
 * parameters; the public fr_model_add_linear and its siblings only put their
 * arguments in the kind's order.
 */
#include "internal.h"
#include "layers/bf16.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

fr_model *fr_model_new(int channels, int height, int width) {
    return fr_model_new_shape(FR_F32, 3, (const int[]){channels, height, width});
}

fr_model *fr_model_new_shape(fr_dtype dtype, int ndim, const int *dims) {
    if (ndim < 1 || ndim > FR_MAX_DIMS || (dtype != FR_F32 && dtype != FR_I32))
        return NULL;
    fr_shape input = {.ndim = ndim};
    for (int i = 0; i < ndim; i++) {
        if (dims[i] <= 0)
            return NULL;
        input.d[i] = dims[i];
    }
    fr_model *model = calloc(1, sizeof *model);
    if (!model)
        return NULL;
    model->input = input;
    model->input_dtype = dtype;
    model->tail = -1;
    return model;
}

void fr_model_free(fr_model *model) {
    if (!model)
        return;
    fr_free(model->arena);
    for (int i = 0; i < model->param_count; i++) {
        fr_free(model->params[i].bf16);
        if (model->params[i].own_data)
            fr_free(model->params[i].data);
    }
    for (int i = 0; i < model->buffer_count; i++)
        fr_free(model->buffers[i].data);
    free(model->buffers);
    free(model->layers);
    free(model->params);
    free(model);
}

/* The shape of layer `layer`'s output; -1: the model input. */
static fr_shape shape_of(const fr_model *model, int layer) {
    return layer >= 0 ? model->layers[layer].out : model->input;
}

static fr_shape output_shape(const fr_model *model) {
    return shape_of(model, model->layer_count - 1);
}

static void shape_string(fr_shape s, char *buf, size_t len) { fr_shape_format(s, buf, len); }

int fr_model_find_layer(const fr_model *model, const char *name) {
    for (int i = 0; i < model->layer_count; i++)
        if (strcmp(model->layers[i].name, name) == 0)
            return i;
    return -1;
}

/* Letters, digits, '_', '-' and '.' (not first, last or twice in a row: the
 * dots join torchvision's module path), at most FR_LAYER_NAME_MAX of them with
 * the blocks' names in front (spec.c checks the characters before it gets
 * here, with the line to point at). */
static int check_layer_name(const char *name, fr_error *err) {
    char shown[40];
    bool ok = *name != '\0' && *name != '.';
    for (const char *p = name; *p && ok; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             *p == '_' || *p == '-' || (*p == '.' && p[1] != '.' && p[1] != '\0');
    if (!ok)
        return fr_fail(err, FR_EINVAL,
                       "invalid layer name '%s' (letters, digits, '_', '-' and inner '.' only)",
                       fr_printable(name, shown, 33));
    if (strlen(name) > FR_LAYER_NAME_MAX)
        return fr_fail(err, FR_EINVAL, "layer name '%s...' is too long (at most %d characters)",
                       fr_printable(name, shown, 33), FR_LAYER_NAME_MAX);
    return FR_OK;
}

static int add_param(fr_model *model, int layer, const char *suffix, int ndim,
                     const int *shape, fr_error *err) {
    if (strlen(model->layers[layer].name) + 1 + strlen(suffix) >= FR_NAME_MAX)
        return fr_fail(err, FR_EINVAL, "layer name '%s' is too long for its parameter '%s' (at "
                       "most %d characters in all)", model->layers[layer].name, suffix,
                       FR_NAME_MAX - 1);
    if (model->param_count == model->param_cap) {
        int cap = model->param_cap ? model->param_cap * 2 : 8;
        fr_param *grown = realloc(model->params, (size_t)cap * sizeof *grown);
        if (!grown)
            return fr_fail(err, FR_ENOMEM, "out of memory adding a parameter");
        model->params = grown;
        model->param_cap = cap;
    }
    fr_param *p = &model->params[model->param_count];
    memset(p, 0, sizeof *p);
    if (snprintf(p->name, sizeof p->name, "%s.%s", model->layers[layer].name, suffix) < 0)
        return fr_fail(err, FR_EINVAL, "cannot name a parameter of layer '%s'",
                       model->layers[layer].name);
    p->ndim = ndim;
    p->numel = 1;
    for (int d = 0; d < ndim; d++) {
        p->shape[d] = shape[d];
        if (!fr_mul_size(p->numel, (size_t)shape[d], &p->numel) || p->numel > ((size_t)1 << 31))
            return fr_fail(err, FR_ESHAPE, "%s: parameter too large", p->name);
    }
    p->arena_offset = model->arena_floats;
    p->requires_grad = true;
    p->layer = layer;
    /* Keep every parameter 64-byte aligned inside the arena. */
    model->arena_floats += (p->numel + 15) / 16 * 16;
    model->param_count++;
    return FR_OK;
}

/* The buffer a layer's kind declares as `kind`, allocated and set to its
 * initial value at once (buffers are few and small). */
static int add_buffer(fr_model *model, int layer, const fr_buffer_kind *kind, fr_error *err) {
    if (model->buffer_count == model->buffer_cap) {
        int cap = model->buffer_cap ? model->buffer_cap * 2 : 8;
        fr_buffer *grown = realloc(model->buffers, (size_t)cap * sizeof *grown);
        if (!grown)
            return fr_fail(err, FR_ENOMEM, "out of memory adding a buffer");
        model->buffers = grown;
        model->buffer_cap = cap;
    }
    const char *layer_name = model->layers[layer].name;
    if (strlen(layer_name) + 1 + strlen(kind->suffix) >= FR_NAME_MAX)
        return fr_fail(err, FR_EINVAL, "layer name '%s' is too long for its buffer '%s' (at most %d "
                       "characters in all)", layer_name, kind->suffix, FR_NAME_MAX - 1);
    fr_buffer *b = &model->buffers[model->buffer_count];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s.%s", layer_name, kind->suffix);
    b->i64 = kind->i64;
    b->ndim = kind->scalar ? 0 : 1;
    b->shape[0] = model->layers[layer].out.d[0];
    b->numel = kind->scalar ? 1 : (size_t)b->shape[0];
    b->layer = layer;
    b->data = fr_alloc(b->numel * 8);
    if (!b->data)
        return fr_fail(err, FR_ENOMEM, "out of memory adding buffer '%s'", b->name);
    model->buffer_count++;
    return FR_OK;
}

/* Buffer i set to its kind's initial value. */
static void reset_buffer(fr_model *model, int i) {
    fr_buffer *b = &model->buffers[i];
    const fr_layer *l = &model->layers[b->layer];
    float initial = l->ops->buffers[i - l->first_buffer].initial;
    for (size_t j = 0; j < b->numel; j++) {
        if (b->i64)
            ((int64_t *)b->data)[j] = (int64_t)initial;
        else
            ((float *)b->data)[j] = initial;
    }
}

void fr_model_reset_buffers(fr_model *model) {
    for (int i = 0; i < model->buffer_count; i++)
        reset_buffer(model, i);
}

void fr_model_next_layer_name(const fr_model *model, const char *name, char *buf, size_t len) {
    char index_name[16];
    if (!name) {
        /* nn.Sequential names children by their index. */
        snprintf(index_name, sizeof index_name, "%d", model->layer_count);
        name = index_name;
    }
    if (model->block_depth == 0 || !model->blocks[model->block_depth - 1].name[0])
        snprintf(buf, len, "%s", name);
    else
        snprintf(buf, len, "%s.%s", model->blocks[model->block_depth - 1].name, name);
}

/* Append a layer: check its arguments, name it, check its shape against the
 * layer it reads, and give it its parameters. */
int fr_model_add_layer(fr_model *model, const fr_layer_ops *ops, const char *local_name,
                       const int *args, fr_error *err) {
    int arg_count = fr_layer_arg_count(ops);
    for (int i = 0; i < arg_count; i++) {
        int rc = fr_layer_check_arg(ops, i, args[i], err);
        if (rc != FR_OK)
            return rc;
    }
    /* One byte more than a name may have, so a long one is seen as too long. */
    char name[FR_NAME_MAX * 2];
    fr_model_next_layer_name(model, local_name, name, sizeof name);
    int rc = check_layer_name(name, err);
    if (rc != FR_OK)
        return rc;
    if (fr_model_find_layer(model, name) >= 0)
        return fr_fail(err, FR_EINVAL, "layer name '%s' is used twice", name);
    if (model->layer_count == model->layer_cap) {
        int cap = model->layer_cap ? model->layer_cap * 2 : 8;
        fr_layer *grown = realloc(model->layers, (size_t)cap * sizeof *grown);
        if (!grown)
            return fr_fail(err, FR_ENOMEM, "out of memory adding layer '%s'", name);
        model->layers = grown;
        model->layer_cap = cap;
    }
    fr_layer *l = &model->layers[model->layer_count];
    memset(l, 0, sizeof *l);
    l->ops = ops;
    snprintf(l->name, sizeof l->name, "%.*s", FR_LAYER_NAME_MAX, name);
    if (arg_count > 0)
        memcpy(l->args, args, (size_t)arg_count * sizeof *args);
    l->input = model->tail;
    l->shortcut = -1;
    l->in = shape_of(model, l->input);
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        l->params[k] = -1;
    fr_dtype reads = l->input < 0 ? model->input_dtype : FR_F32;
    if (reads != ops->input_dtype) {
        if (ops->input_dtype == FR_I32)
            return fr_fail(err, FR_ESHAPE, "%s reads token ids, which only the model input holds "
                           "(put it first, with an input line of token ids: input T tokens)",
                           ops->kind);
        return fr_fail(err, FR_ESHAPE, "%s cannot read the model input, which is token ids "
                       "(an embedding comes first)", ops->kind);
    }
    fr_error shape_err = {0};
    int shape_status = ops->infer_shape(l, &shape_err);
    if (shape_status != FR_OK) {
        /* Only a shape that does not fit (FR_ESHAPE) is about what comes in;
         * arguments wrong on their own (too many weights) are the layer's alone. */
        if (shape_status != FR_ESHAPE)
            return fr_fail(err, shape_status, "%s", shape_err.msg);
        char in[48];
        shape_string(l->in, in, sizeof in);
        if (l->input < 0)
            return fr_fail(err, FR_ESHAPE, "%s (the model input is %s)", shape_err.msg, in);
        const fr_layer *prev = &model->layers[l->input];
        return fr_fail(err, FR_ESHAPE, "%s, but layer '%s' (%s) before it gives %s", shape_err.msg,
                       prev->name, prev->ops->kind, in);
    }
    int index = model->layer_count++;
    int first_param = model->param_count;
    size_t arena_before = model->arena_floats;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX && ops->params[k].suffix; k++) {
        if (l->param_ndim[k] == 0)
            continue;
        int rc = add_param(model, index, ops->params[k].suffix, l->param_ndim[k],
                           l->param_shape[k], err);
        if (rc != FR_OK) {
            model->param_count = first_param;
            model->arena_floats = arena_before;
            model->layer_count--;
            return rc;
        }
        l->params[k] = model->param_count - 1;
    }
    fr_layer *added = &model->layers[index];
    added->first_buffer = ops->buffers[0].suffix ? model->buffer_count : -1;
    for (int k = 0; k < FR_LAYER_BUFFERS_MAX && ops->buffers[k].suffix; k++) {
        int rc = add_buffer(model, index, &ops->buffers[k], err);
        if (rc != FR_OK) {
            while (model->buffer_count > added->first_buffer)
                fr_free(model->buffers[--model->buffer_count].data);
            model->param_count = first_param;
            model->arena_floats = arena_before;
            model->layer_count--;
            return rc;
        }
        added->buffer_data[k] = model->buffers[model->buffer_count - 1].data;
    }
    for (int k = added->first_buffer; k >= 0 && k < model->buffer_count; k++)
        reset_buffer(model, k);
    model->tail = index;
    return FR_OK;
}

int fr_model_add_layer_params(fr_model *model, int layer, fr_error *err) {
    fr_layer *l = &model->layers[layer];
    fr_error shape_err = {0};
    int rc = l->ops->infer_shape(l, &shape_err);
    if (rc != FR_OK)
        return fr_fail(err, rc, "%s", shape_err.msg);
    int first_param = model->param_count;
    size_t arena_before = model->arena_floats;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX && l->ops->params[k].suffix; k++) {
        if (l->param_ndim[k] == 0 || l->params[k] >= 0)
            continue;
        rc = add_param(model, layer, l->ops->params[k].suffix, l->param_ndim[k],
                       l->param_shape[k], err);
        if (rc != FR_OK) {
            for (int j = 0; j < FR_LAYER_PARAMS_MAX; j++)
                if (l->params[j] >= first_param)
                    l->params[j] = -1;
            model->param_count = first_param;
            model->arena_floats = arena_before;
            return rc;
        }
        l->params[k] = model->param_count - 1;
    }
    return fr_model_ensure_arena(model, err);
}

/* ------------------------------------------------------- tied parameters */

/* Layer and slot whose parameter would be called `name` ("lm_head.weight"). */
static bool find_slot(const fr_model *model, const char *name, int *layer, int *slot) {
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        size_t len = strlen(l->name);
        if (strncmp(name, l->name, len) != 0 || name[len] != '.')
            continue;
        for (int k = 0; k < FR_LAYER_PARAMS_MAX && l->ops->params[k].suffix; k++)
            if (l->params[k] >= 0 && strcmp(name + len + 1, l->ops->params[k].suffix) == 0) {
                *layer = i;
                *slot = k;
                return true;
            }
    }
    return false;
}

int fr_model_tie(fr_model *model, const char *name, const char *to, fr_error *err) {
    int layer, slot;
    if (!find_slot(model, name, &layer, &slot))
        return fr_fail(err, FR_ENOMATCH, "tie: no layer has a parameter called '%s'", name);
    int target = -1;
    for (int i = 0; i < model->param_count && target < 0; i++)
        if (strcmp(model->params[i].name, to) == 0)
            target = i;
    if (target < 0)
        return fr_fail(err, FR_ENOMATCH, "tie: there is no parameter '%s'", to);
    fr_layer *l = &model->layers[layer];
    int old = l->params[slot];
    fr_param *a = &model->params[old], *b = &model->params[target];
    if (old == target)
        return fr_fail(err, FR_EINVAL, "tie: '%s' is '%s' already", name, to);
    if (a->layer != layer)
        return fr_fail(err, FR_EINVAL, "tie: '%s' is tied to '%s' already", name, a->name);
    if (model->arena)
        return fr_fail(err, FR_EINVAL, "tie: '%s' to '%s' after the parameters have values "
                       "(tie them before fr_model_init or loading weights)", name, to);
    if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof(int) * (size_t)a->ndim) != 0) {
        char sa[64], sb[64];
        fr_param_shape_string(a, sa, sizeof sa);
        fr_param_shape_string(b, sb, sizeof sb);
        return fr_fail(err, FR_ESHAPE, "tie: '%s' is %s but '%s' is %s", name, sa, to, sb);
    }
    if (!l->ops->accumulates || !model->layers[b->layer].ops->accumulates)
        return fr_fail(err, FR_EINVAL, "tie: %s layers cannot share a parameter",
                       l->ops->accumulates ? model->layers[b->layer].ops->kind : l->ops->kind);
    /* Drop parameter `old` from the list and the arena's plan; every index
     * above it moves down one. */
    memmove(&model->params[old], &model->params[old + 1],
            (size_t)(model->param_count - old - 1) * sizeof *model->params);
    model->param_count--;
    model->arena_floats = 0;
    for (int i = 0; i < model->param_count; i++) {
        model->params[i].arena_offset = model->arena_floats;
        model->arena_floats += (model->params[i].numel + 15) / 16 * 16;
    }
    if (target > old)
        target--;
    for (int i = 0; i < model->layer_count; i++)
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            int *p = &model->layers[i].params[k];
            if (i == layer && k == slot)
                *p = target;
            else if (*p > old)
                (*p)--;
        }
    return FR_OK;
}

int fr_model_tied_names(const fr_model *model, size_t param, char *buf, size_t len) {
    int count = 0;
    size_t used = 0;
    if (len)
        buf[0] = '\0';
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            if (l->params[k] != (int)param || model->params[param].layer == i)
                continue;
            if (used < len)
                used += (size_t)snprintf(buf + used, len - used, "%s%s.%s", count ? ", " : "",
                                         l->name, l->ops->params[k].suffix);
            count++;
        }
    }
    return count;
}

int fr_param_users(const fr_model *model, int param, int *layers, int most) {
    int count = 0;
    for (int i = 0; i < model->layer_count; i++)
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
            if (model->layers[i].params[k] == param) {
                if (count < most)
                    layers[count] = i;
                count++;
            }
    return count;
}

/* ------------------------------------------------------- residual blocks */

/* Open a block: named (its name the prefix of its layers'), or anonymous
 * (its layers named as the enclosing block's). */
static int open_block(fr_model *model, const char *name, bool names_only, fr_error *err) {
    if (model->block_depth == FR_BLOCK_DEPTH_MAX)
        return fr_fail(err, FR_EINVAL, "blocks nest more than %d deep", FR_BLOCK_DEPTH_MAX);
    if (!name) {
        fr_open_block *block = &model->blocks[model->block_depth];
        memset(block, 0, sizeof *block);
        if (model->block_depth > 0)
            memcpy(block->name, model->blocks[model->block_depth - 1].name, sizeof block->name);
        block->input = model->tail;
        block->body_end = -1;
        block->anonymous = true;
        model->block_depth++;
        return FR_OK;
    }
    char full[FR_NAME_MAX * 2];
    fr_model_next_layer_name(model, name, full, sizeof full);
    int rc = check_layer_name(full, err);
    if (rc != FR_OK)
        return rc;
    if (fr_model_find_layer(model, full) >= 0)
        return fr_fail(err, FR_EINVAL, "layer name '%s' is used twice", full);
    for (int b = 0; b < model->block_depth; b++)
        if (strcmp(model->blocks[b].name, full) == 0)
            return fr_fail(err, FR_EINVAL, "layer name '%s' is used twice", full);
    fr_open_block *block = &model->blocks[model->block_depth++];
    memset(block, 0, sizeof *block);
    snprintf(block->name, sizeof block->name, "%.*s", FR_LAYER_NAME_MAX, full);
    block->input = model->tail;
    block->body_end = -1;
    block->names_only = names_only;
    return FR_OK;
}

int fr_model_begin_residual(fr_model *model, const char *name, fr_error *err) {
    return open_block(model, name, false, err);
}

int fr_model_begin_block(fr_model *model, const char *name, fr_error *err) {
    if (!name)
        return fr_fail(err, FR_EINVAL, "a block needs a name");
    return open_block(model, name, true, err);
}

int fr_model_end_block(fr_model *model, fr_error *err) {
    if (model->block_depth == 0 || !model->blocks[model->block_depth - 1].names_only)
        return fr_fail(err, FR_EINVAL, "no block to end%s",
                       model->block_depth ? " (a residual block is open)" : "");
    model->block_depth--;
    return FR_OK;
}

int fr_model_begin_shortcut(fr_model *model, fr_error *err) {
    if (model->block_depth == 0 || model->blocks[model->block_depth - 1].names_only)
        return fr_fail(err, FR_EINVAL, "a shortcut outside a residual block");
    fr_open_block *block = &model->blocks[model->block_depth - 1];
    if (block->in_shortcut)
        return fr_fail(err, FR_EINVAL, "residual block '%s' has a second shortcut", block->name);
    if (model->tail == block->input)
        return fr_fail(err, FR_EINVAL, "residual block '%s' has no layers before its shortcut",
                       block->name);
    block->body_end = model->tail;
    block->in_shortcut = true;
    /* The shortcut's first layer reads the block's input. */
    model->tail = block->input;
    return FR_OK;
}

int fr_model_end_residual(fr_model *model, fr_error *err) {
    if (model->block_depth == 0 || model->blocks[model->block_depth - 1].names_only)
        return fr_fail(err, FR_EINVAL, "no residual block to end");
    fr_open_block *block = &model->blocks[model->block_depth - 1];
    int body = block->in_shortcut ? block->body_end : model->tail;
    int shortcut = block->in_shortcut ? model->tail : block->input;
    if (body == block->input)
        return fr_fail(err, FR_EINVAL, "residual block '%s' has no layers", block->name);
    fr_shape body_shape = shape_of(model, body), shortcut_shape = shape_of(model, shortcut);
    if (!fr_shape_equal(body_shape, shortcut_shape)) {
        char a[48], b[48];
        shape_string(body_shape, a, sizeof a);
        shape_string(shortcut_shape, b, sizeof b);
        return fr_fail(err, FR_ESHAPE,
                       "residual block '%s': its body gives %s but its shortcut gives %s%s",
                       block->name, a, b, block->in_shortcut ? "" : " (the block's input)");
    }
    /* The join reads the body and is named as the block; that name already
     * has the enclosing blocks' in front, so it is added as from outside all
     * of them. */
    char name[FR_NAME_MAX];
    snprintf(name, sizeof name, "%s", block->name);
    int depth = model->block_depth, tail = model->tail;
    model->block_depth = 0;
    model->tail = body;
    if (block->anonymous) {
        /* Named by its index in the enclosing block, as an unnamed layer. */
        model->block_depth = depth - 1;
        fr_model_next_layer_name(model, NULL, name, sizeof name);
        model->block_depth = 0;
    }
    int rc = fr_model_add_layer(model, &fr_residual_ops, name, NULL, err);
    model->block_depth = depth;
    if (rc != FR_OK) {
        model->tail = tail;
        return rc;
    }
    model->block_depth--;
    model->layers[model->layer_count - 1].shortcut = shortcut;
    return FR_OK;
}

int fr_model_add_linear(fr_model *model, const char *name, int in_features,
                        int out_features, fr_error *err) {
    return fr_model_add_layer(model, &fr_linear_ops, name,
                              (const int[]){in_features, out_features, 1}, err);
}

int fr_model_add_conv2d(fr_model *model, const char *name, int in_channels,
                        int out_channels, int kernel, int stride, int padding,
                        fr_error *err) {
    return fr_model_add_layer(model, &fr_conv2d_ops, name,
                              (const int[]){in_channels, out_channels, kernel, stride, padding, 1},
                              err);
}

int fr_model_add_relu(fr_model *model, const char *name, fr_error *err) {
    return fr_model_add_layer(model, &fr_relu_ops, name, NULL, err);
}

/* A stride of 0 is PyTorch's None: the kernel size. */
int fr_model_add_maxpool2d(fr_model *model, const char *name, int kernel, int stride,
                           fr_error *err) {
    return fr_model_add_layer(model, &fr_maxpool2d_ops, name,
                              (const int[]){kernel, stride == 0 ? FR_ARG_NONE : stride, 0}, err);
}

int fr_model_add_flatten(fr_model *model, const char *name, fr_error *err) {
    return fr_model_add_layer(model, &fr_flatten_ops, name, NULL, err);
}

void fr_model_settle(const fr_model *model) {
    if (model->in_flight && model->sync_in_flight)
        model->sync_in_flight(model->in_flight, NULL); /* a failure stays with the engine */
}

/* Whether the arena holds parameter p (not one kept in bf16 or with storage
 * of its own). */
static bool in_arena(const fr_param *p) { return !p->bf16 && !p->own_data; }

/* A parameter kept in bf16 that trains again: float32 storage of its own. */
static int thaw(fr_param *p, fr_error *err) {
    float *data = fr_alloc(p->numel * sizeof(float) + 1);
    if (!data)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory unfreezing it", p->name);
    fr_bf16_to_f32(data, p->bf16, p->numel);
    fr_free(p->bf16);
    p->bf16 = NULL;
    p->data = data;
    p->own_data = true;
    return FR_OK;
}

int fr_model_ensure_arena(fr_model *model, fr_error *err) {
    fr_model_settle(model);
    if (!model->arena || model->arena_capacity != model->arena_floats) {
        /* Layers added after the arena existed grow it; values already there stay. */
        size_t floats = model->arena_floats ? model->arena_floats : 16;
        float *arena = fr_alloc(floats * sizeof(float));
        if (!arena)
            return fr_fail(err, FR_ENOMEM, "out of memory allocating %zu parameters", floats);
        if (model->arena)
            memcpy(arena, model->arena, model->arena_capacity * sizeof(float));
        fr_free(model->arena);
        model->arena = arena;
        model->arena_capacity = model->arena_floats;
        for (int i = 0; i < model->param_count; i++)
            if (in_arena(&model->params[i]))
                model->params[i].data = arena + model->params[i].arena_offset;
    }
    for (int i = 0; i < model->param_count; i++) {
        fr_param *p = &model->params[i];
        int rc = p->bf16 && p->requires_grad ? thaw(p, err) : FR_OK;
        if (rc != FR_OK)
            return rc;
    }
    for (int i = 0; i < model->layer_count; i++) {
        fr_layer *l = &model->layers[i];
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            const fr_param *p = l->params[k] >= 0 ? &model->params[l->params[k]] : NULL;
            l->param_data[k] = p ? p->data : NULL;
            l->param_bf16[k] = p ? p->bf16 : NULL;
        }
    }
    return FR_OK;
}

void fr_param_get_f32(const fr_param *p, float *dst) {
    if (p->bf16)
        fr_bf16_to_f32(dst, p->bf16, p->numel);
    else if (p->numel)
        memcpy(dst, p->data, p->numel * sizeof(float));
}

void fr_param_set_f32(fr_param *p, const float *src) {
    if (p->bf16)
        fr_bf16_from_f32(p->bf16, src, p->numel);
    else if (p->numel)
        memcpy(p->data, src, p->numel * sizeof(float));
}

bool fr_bf16_supported(void) { return fr_bf16_native(); }

size_t fr_model_bf16_numel(const fr_model *model) {
    size_t total = 0;
    for (int i = 0; i < model->param_count; i++)
        total += model->params[i].bf16 ? model->params[i].numel : 0;
    return total;
}

float *fr_model_widened_bf16(const fr_model *model) {
    size_t total = fr_model_bf16_numel(model), at = 0;
    float *values = total ? fr_alloc(total * sizeof *values) : NULL;
    for (int i = 0; values && i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        if (!p->bf16)
            continue;
        fr_param_get_f32(p, values + at);
        at += p->numel;
    }
    return values;
}

/* Whether every layer using parameter i reads it as its FR_WEIGHT from bf16. */
static bool bf16_readers_only(const fr_model *model, int i) {
    bool any = false;
    for (int j = 0; j < model->layer_count; j++) {
        const fr_layer *l = &model->layers[j];
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            if (l->params[k] != i)
                continue;
            if (k != FR_WEIGHT || !l->ops->bf16_weight)
                return false;
            any = true;
        }
    }
    return any;
}

int fr_model_store_frozen_bf16(fr_model *model, int *converted, fr_error *err) {
    int rc = fr_model_ensure_arena(model, err);
    if (rc != FR_OK)
        return rc;
    int count = 0;
    for (int i = 0; i < model->param_count; i++) {
        fr_param *p = &model->params[i];
        if (p->requires_grad || p->bf16 || p->adapter || !bf16_readers_only(model, i))
            continue;
        fr_bf16 *bits = fr_alloc(p->numel * sizeof *bits + 1);
        if (!bits)
            return fr_fail(err, FR_ENOMEM, "%s: out of memory keeping it in bf16", p->name);
        fr_bf16_from_f32(bits, p->data, p->numel);
        if (p->own_data)
            fr_free(p->data);
        p->bf16 = bits;
        p->data = NULL;
        p->own_data = false;
        count++;
    }
    if (converted)
        *converted = count;
    if (count == 0)
        return FR_OK;
    /* The arena again, without them: their float32 copies given back. */
    size_t floats = 0;
    for (int i = 0; i < model->param_count; i++) {
        fr_param *p = &model->params[i];
        if (!in_arena(p))
            continue;
        p->arena_offset = floats;
        floats += (p->numel + 15) / 16 * 16;
    }
    float *arena = fr_alloc((floats ? floats : 16) * sizeof(float));
    if (!arena)
        return fr_fail(err, FR_ENOMEM, "out of memory allocating %zu parameters", floats);
    for (int i = 0; i < model->param_count; i++) {
        fr_param *p = &model->params[i];
        if (!in_arena(p))
            continue;
        memcpy(arena + p->arena_offset, p->data, p->numel * sizeof(float));
        p->data = arena + p->arena_offset;
    }
    fr_free(model->arena);
    model->arena = arena;
    model->arena_floats = model->arena_capacity = floats;
    return fr_model_ensure_arena(model, err);
}

/* A standard normal value (Box-Muller on two uniforms of the stream). */
static float normal_value(fr_rng *rng) {
    double u1 = ((double)(fr_rng_next(rng) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(fr_rng_next(rng) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int fr_model_init(fr_model *model, uint64_t seed, fr_error *err) {
    int rc = fr_model_ensure_arena(model, err);
    if (rc != FR_OK)
        return rc;
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    fr_model_reset_buffers(model);
    /* Each parameter once, by its owner's schema, in declaration order; the
     * random ones draw from one stream.  nn.Linear / nn.Conv2d
     * reset_parameters: kaiming_uniform_(a=sqrt(5)) for the weight reduces to
     * U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias uses the same bound. */
    for (int i = 0; i < model->param_count; i++) {
        fr_param *p = &model->params[i];
        const fr_layer *l = &model->layers[p->layer];
        /* Adapters were initialised when added (fr_model_add_lora) or read
         * from their file; the base's draws are the same with them or not. */
        if (p->adapter)
            continue;
        if (!p->data) /* kept in bf16: draws go to float32, then rounded */
            return fr_fail(err, FR_EINVAL, "%s: initialise a model before keeping its frozen "
                           "weights in bf16", p->name);
        int slot = 0;
        while (slot < FR_LAYER_PARAMS_MAX - 1 && l->params[slot] != i)
            slot++;
        float bound = l->fan_in > 0 ? 1.0f / sqrtf((float)l->fan_in) : 0.0f;
        switch (l->ops->params[slot].init) {
        case FR_INIT_FAN_IN_UNIFORM:
            for (size_t j = 0; j < p->numel; j++)
                p->data[j] = (2.0f * fr_rng_uniform(&rng) - 1.0f) * bound;
            break;
        case FR_INIT_ONES:
        case FR_INIT_ZEROS:
            for (size_t j = 0; j < p->numel; j++)
                p->data[j] = l->ops->params[slot].init == FR_INIT_ONES ? 1.0f : 0.0f;
            break;
        case FR_INIT_NORMAL:
        case FR_INIT_NORMAL_SMALL: {
            float std = l->init_std > 0.0f                                 ? l->init_std
                        : l->ops->params[slot].init == FR_INIT_NORMAL ? 1.0f
                                                                      : 0.02f;
            for (size_t j = 0; j < p->numel; j++)
                p->data[j] = std * normal_value(&rng);
            break;
        }
        }
    }
    return FR_OK;
}

int fr_model_input_numel(const fr_model *model) { return (int)fr_shape_numel(model->input); }

void fr_model_input_shape(const fr_model *model, int *channels, int *height, int *width) {
    fr_shape s = model->input;
    *channels = s.ndim == 3 ? s.d[0] : (int)fr_shape_numel(s);
    *height = s.ndim == 3 ? s.d[1] : 1;
    *width = s.ndim == 3 ? s.d[2] : 1;
}

int fr_model_input_dims(const fr_model *model, int *dims) {
    for (int i = 0; i < model->input.ndim; i++)
        dims[i] = model->input.d[i];
    return model->input.ndim;
}

int fr_model_output_dims(const fr_model *model, int *dims) {
    fr_shape s = output_shape(model);
    for (int i = 0; i < s.ndim; i++)
        dims[i] = s.d[i];
    return s.ndim;
}

fr_dtype fr_model_input_dtype(const fr_model *model) { return model->input_dtype; }

int fr_model_vocab_size(const fr_model *model) {
    if (model->input_dtype != FR_I32 || model->layer_count == 0)
        return 0;
    return model->layers[0].args[0];
}

int fr_model_targets_per_sample(const fr_model *model, fr_loss_kind loss) {
    return fr_loss_kind_ops(loss)->targets_per_sample(output_shape(model));
}

int fr_model_class_count(const fr_model *model) {
    fr_shape out = output_shape(model);
    return out.ndim == 2 ? out.d[1] : (int)fr_shape_numel(out);
}
int fr_model_output_numel(const fr_model *model) { return (int)fr_shape_numel(output_shape(model)); }
int fr_model_layer_count(const fr_model *model) { return model->layer_count; }

const char *fr_model_layer_name(const fr_model *model, int layer) {
    return layer >= 0 && layer < model->layer_count ? model->layers[layer].name : NULL;
}

const char *fr_model_layer_kind(const fr_model *model, int layer) {
    return layer >= 0 && layer < model->layer_count ? model->layers[layer].ops->kind : NULL;
}

void fr_model_layer_describe(const fr_model *model, int layer, char *buf, size_t len) {
    if (layer < 0 || layer >= model->layer_count) {
        snprintf(buf, len, "?");
        return;
    }
    const fr_layer *l = &model->layers[layer];
    char call[128], out[48];
    fr_layer_format(l, call, sizeof call);
    shape_string(l->out, out, sizeof out);
    snprintf(buf, len, "%s %s -> %s", l->name, call, out);
}

size_t fr_model_param_count(const fr_model *model) { return (size_t)model->param_count; }

fr_param *fr_model_param(fr_model *model, size_t index) {
    if (index >= (size_t)model->param_count || fr_model_ensure_arena(model, NULL) != FR_OK)
        return NULL;
    return &model->params[index];
}

fr_param *fr_model_find_param(fr_model *model, const char *name) {
    for (int i = 0; i < model->param_count; i++)
        if (strcmp(model->params[i].name, name) == 0)
            return fr_model_param(model, (size_t)i);
    return NULL;
}

size_t fr_model_weight_bytes(const fr_model *model) {
    size_t bytes = fr_alloc_size(model->arena);
    for (int i = 0; i < model->param_count; i++)
        bytes += fr_alloc_size(model->params[i].bf16) +
                 (model->params[i].own_data ? fr_alloc_size(model->params[i].data) : 0);
    for (int i = 0; i < model->buffer_count; i++)
        bytes += fr_alloc_size(model->buffers[i].data);
    return bytes;
}

size_t fr_model_numel(const fr_model *model) {
    size_t total = 0;
    for (int i = 0; i < model->param_count; i++)
        total += model->params[i].numel;
    return total;
}

size_t fr_model_trainable_numel(const fr_model *model) {
    size_t total = 0;
    for (int i = 0; i < model->param_count; i++)
        if (model->params[i].requires_grad)
            total += model->params[i].numel;
    return total;
}

bool fr_model_layer_frozen(const fr_model *model, int i) {
    const fr_layer *l = &model->layers[i];
    bool any = false;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
        if (l->params[k] < 0)
            continue;
        if (model->params[l->params[k]].requires_grad)
            return false;
        any = true;
    }
    return any || i < fr_model_first_trainable_layer(model);
}

bool fr_layer_trains(const fr_model *model, const fr_layer *l) {
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        if (l->params[k] >= 0 && model->params[l->params[k]].requires_grad)
            return true;
    return false;
}

size_t fr_model_buffer_count(const fr_model *model) { return (size_t)model->buffer_count; }
const char *fr_model_buffer_name(const fr_model *model, size_t index) {
    return index < (size_t)model->buffer_count ? model->buffers[index].name : NULL;
}
static fr_buffer *find_buffer(fr_model *model, const char *name) {
    fr_model_settle(model);
    for (int i = 0; i < model->buffer_count; i++)
        if (strcmp(model->buffers[i].name, name) == 0)
            return &model->buffers[i];
    return NULL;
}
float *fr_model_buffer_floats(fr_model *model, const char *name) {
    fr_buffer *b = find_buffer(model, name);
    return b && !b->i64 ? b->data : NULL;
}
int64_t *fr_model_buffer_i64(fr_model *model, const char *name) {
    fr_buffer *b = find_buffer(model, name);
    return b && b->i64 ? b->data : NULL;
}
size_t fr_model_buffer_numel(const fr_model *model, size_t index) {
    return index < (size_t)model->buffer_count ? model->buffers[index].numel : 0;
}
void fr_model_buffer_shape_string(const fr_model *model, size_t index, char *buf, size_t len) {
    if (index >= (size_t)model->buffer_count)
        snprintf(buf, len, "?");
    else if (model->buffers[index].ndim == 0)
        snprintf(buf, len, "[]");
    else
        snprintf(buf, len, "[%d]", model->buffers[index].shape[0]);
}

int fr_model_first_trainable_layer(const fr_model *model) {
    for (int i = 0; i < model->layer_count; i++)
        if (fr_layer_trains(model, &model->layers[i]))
            return i;
    return model->layer_count;
}

const char *fr_param_name(const fr_param *param) { return param->name; }
int fr_param_ndim(const fr_param *param) { return param->ndim; }
int fr_param_dim(const fr_param *param, int axis) {
    return axis >= 0 && axis < param->ndim ? param->shape[axis] : 0;
}
size_t fr_param_numel(const fr_param *param) { return param->numel; }
float *fr_param_data(fr_param *param) { return param->data; }

void fr_param_shape_string(const fr_param *param, char *buf, size_t len) {
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < param->ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, d ? ", %d" : "%d", param->shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

int fr_model_check_finite(const fr_model *model, fr_error *err) {
    fr_model_settle(model);
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        for (size_t j = 0; p->data && j < p->numel; j++)
            if (!isfinite(p->data[j]))
                return fr_fail(err, FR_ENONFINITE, "parameter '%s' holds %g at index %zu", p->name,
                               p->data[j], j);
    }
    return FR_OK;
}
