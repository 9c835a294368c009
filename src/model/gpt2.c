/*
 * gpt2.c - GPT-2 from a Hugging Face config.json (model_type "gpt2"), built
 * from the layer kinds with Hugging Face's parameter names, so that its
 * model.safetensors loads as it is (weights.c accepts the "transformer."
 * prefix and passes over the attention mask buffers):
 *
 *   input T tokens
 *   wte = embedding(vocab_size, n_embd); wpe = position_embedding(n_positions, n_embd)
 *   drop = dropout(embd_pdrop)                      (left out at 0)
 *   block h.N {                                     for N < n_layer
 *     residual { ln_1 = layernorm(n_embd, eps); attn.c_attn = conv1d(3 n_embd, n_embd)
 *                attention(n_head); attn.c_proj = conv1d(n_embd, n_embd); dropout(resid_pdrop) }
 *     residual { ln_2 = layernorm(n_embd, eps); mlp.c_fc = conv1d(n_inner, n_embd)
 *                gelu(approximate); mlp.c_proj = conv1d(n_embd, n_inner); dropout(resid_pdrop) }
 *   }
 *   ln_f = layernorm(n_embd, eps)
 *   lm_head = linear(n_embd, vocab_size, bias=False), tied to wte.weight
 *
 * Initialised as Hugging Face initialises GPT-2 (N(0, 0.02), c_proj weights
 * N(0, 0.02 / sqrt(2 n_layer)), biases 0, layer norms 1 and 0).
 * examples/gpt2.txt is the same network as model text (with PyTorch's
 * default initialisation of each module instead).
 */
#include "core/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct gpt2_config {
    int n_layer, n_embd, n_head, n_positions, vocab_size, n_inner;
    double eps, resid_pdrop, embd_pdrop, attn_pdrop;
    bool tanh_gelu, tied, is_gpt2;
} gpt2_config;

/* An integer field: positive, at most FR_ARG_LIMIT (a layer argument). */
static int json_count(fr_json_reader *r, const char *key, int *out, fr_error *err) {
    double value;
    int rc = fr_json_number(r, &value);
    if (rc != FR_OK)
        return rc;
    if (value != floor(value) || value < 1 || value > FR_ARG_LIMIT)
        return fr_fail(err, FR_EFORMAT, "%s: %s is %g; it must be a whole number from 1 to %d",
                       r->source, key, value, FR_ARG_LIMIT);
    *out = (int)value;
    return FR_OK;
}

static int read_member(fr_json_reader *r, const char *key, gpt2_config *c, fr_error *err) {
    struct {
        const char *name;
        int *count;
        double *real;
    } fields[] = {
        {"n_layer", &c->n_layer, NULL},         {"n_embd", &c->n_embd, NULL},
        {"n_head", &c->n_head, NULL},           {"n_positions", &c->n_positions, NULL},
        {"vocab_size", &c->vocab_size, NULL},   {"layer_norm_epsilon", NULL, &c->eps},
        {"resid_pdrop", NULL, &c->resid_pdrop}, {"embd_pdrop", NULL, &c->embd_pdrop},
        {"attn_pdrop", NULL, &c->attn_pdrop},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (strcmp(key, fields[i].name) != 0)
            continue;
        if (fields[i].count)
            return json_count(r, key, fields[i].count, err);
        return fr_json_number(r, fields[i].real);
    }
    if (strcmp(key, "n_inner") == 0) {
        if (fr_json_peek(r) == 'n')
            return fr_json_literal(r, "null");
        return json_count(r, key, &c->n_inner, err);
    }
    if (strcmp(key, "tie_word_embeddings") == 0)
        return fr_json_bool(r, &c->tied);
    if (strcmp(key, "model_type") == 0 || strcmp(key, "activation_function") == 0) {
        char *text = NULL;
        size_t len;
        int rc = fr_json_string(r, &text, &len);
        if (rc != FR_OK)
            return rc;
        if (key[0] == 'm')
            c->is_gpt2 = strcmp(text, "gpt2") == 0;
        else if (strcmp(text, "gelu_new") == 0 || strcmp(text, "gelu_pytorch_tanh") == 0)
            c->tanh_gelu = true;
        else if (strcmp(text, "gelu") == 0)
            c->tanh_gelu = false;
        else
            rc = fr_fail(err, FR_EFORMAT, "%s: activation_function '%s' is not one frost has "
                         "(gelu_new, gelu_pytorch_tanh, gelu)", r->source, text);
        fr_free(text);
        return rc;
    }
    return fr_json_skip_value(r, 1);
}

/* read_member for fr_json_read_object_file, noting model_type. */
typedef struct config_reading {
    gpt2_config *c;
    bool has_type;
    fr_error *err;
} config_reading;

static int config_member(fr_json_reader *r, const char *key, void *context) {
    config_reading *reading = context;
    reading->has_type = reading->has_type || strcmp(key, "model_type") == 0;
    return read_member(r, key, reading->c, reading->err);
}

static int read_config(const char *path, gpt2_config *c, fr_error *err) {
    *c = (gpt2_config){.n_inner = 0, .eps = 1e-5, .tanh_gelu = true, .tied = true,
                       .resid_pdrop = 0.1, .embd_pdrop = 0.1, .attn_pdrop = 0.1};
    config_reading reading = {c, false, err};
    int rc = fr_json_read_object_file(path, "config.json", config_member, &reading, err);
    bool has_type = reading.has_type;
    if (rc != FR_OK)
        return rc;
    if (!has_type || !c->is_gpt2)
        return fr_fail(err, FR_EFORMAT, "%s: not a GPT-2 config (model_type must be \"gpt2\")",
                       path);
    const char *missing = !c->n_layer ? "n_layer" : !c->n_embd ? "n_embd" : !c->n_head ? "n_head"
                          : !c->n_positions ? "n_positions" : !c->vocab_size ? "vocab_size" : NULL;
    if (missing)
        return fr_fail(err, FR_EFORMAT, "%s: no %s", path, missing);
    if (c->n_embd % c->n_head)
        return fr_fail(err, FR_EFORMAT, "%s: n_embd %d is not a multiple of n_head %d", path,
                       c->n_embd, c->n_head);
    if (!(c->eps > 0 && c->eps <= 1))
        return fr_fail(err, FR_EFORMAT, "%s: layer_norm_epsilon %g must be in (0, 1]", path,
                       c->eps);
    double pdrops[] = {c->resid_pdrop, c->embd_pdrop, c->attn_pdrop};
    for (int i = 0; i < 3; i++)
        if (!(pdrops[i] >= 0 && pdrops[i] < 1))
            return fr_fail(err, FR_EFORMAT, "%s: a dropout probability of %g is not in [0, 1)",
                           path, pdrops[i]);
    if (c->attn_pdrop > 0)
        return fr_fail(err, FR_EFORMAT, "%s: attn_pdrop %g: dropout of the attention weights is "
                       "not implemented; set attn_pdrop to 0 (usual for fine-tuning)", path,
                       c->attn_pdrop);
    if (!c->n_inner)
        c->n_inner = 4 * c->n_embd;
    return FR_OK;
}

static int real_arg(double value) { return (int)lround(value / FR_REAL_UNIT); }

/* Add a layer; `init_std` > 0 draws its normal parameters with that deviation. */
static int add_drawn(fr_model *model, const char *kind, const char *name, const int *args,
                     float init_std, fr_error *err) {
    int rc = fr_model_add_layer(model, fr_layer_kind_find(kind), name, args, err);
    if (rc == FR_OK)
        model->layers[model->layer_count - 1].init_std = init_std;
    return rc;
}

static int add(fr_model *model, const char *kind, const char *name, const int *args,
               fr_error *err) {
    return add_drawn(model, kind, name, args, 0.0f, err);
}

/* The network of the header comment, layer by layer. */
static int build(const gpt2_config *c, int seq, fr_model *model, fr_error *err) {
    int C = c->n_embd, eps = real_arg(c->eps), resid = real_arg(c->resid_pdrop);
    /* Hugging Face's initialisation: N(0, 0.02), the projections into the
     * residual stream scaled down by sqrt(2 n_layer). */
    float proj_std = 0.02f / sqrtf(2.0f * (float)c->n_layer);
    int rc = add_drawn(model, "embedding", "wte", (const int[]){c->vocab_size, C}, 0.02f, err);
    if (rc == FR_OK)
        rc = add_drawn(model, "position_embedding", "wpe", (const int[]){c->n_positions, C},
                       0.02f, err);
    if (rc == FR_OK && c->embd_pdrop > 0)
        rc = add(model, "dropout", "drop", (const int[]){real_arg(c->embd_pdrop)}, err);
    for (int i = 0; i < c->n_layer && rc == FR_OK; i++) {
        char block[32];
        snprintf(block, sizeof block, "h.%d", i);
        rc = fr_model_begin_block(model, block, err);
        if (rc == FR_OK)
            rc = fr_model_begin_residual(model, NULL, err);
        if (rc == FR_OK)
            rc = add(model, "layernorm", "ln_1", (const int[]){C, eps, 1}, err);
        if (rc == FR_OK)
            rc = add(model, "conv1d", "attn.c_attn", (const int[]){3 * C, C}, err);
        if (rc == FR_OK)
            rc = add(model, "attention", NULL, (const int[]){c->n_head, 1}, err);
        if (rc == FR_OK)
            rc = add_drawn(model, "conv1d", "attn.c_proj", (const int[]){C, C}, proj_std, err);
        if (rc == FR_OK && resid > 0)
            rc = add(model, "dropout", NULL, (const int[]){resid}, err);
        if (rc == FR_OK)
            rc = fr_model_end_residual(model, err);
        if (rc == FR_OK)
            rc = fr_model_begin_residual(model, NULL, err);
        if (rc == FR_OK)
            rc = add(model, "layernorm", "ln_2", (const int[]){C, eps, 1}, err);
        if (rc == FR_OK)
            rc = add(model, "conv1d", "mlp.c_fc", (const int[]){c->n_inner, C}, err);
        if (rc == FR_OK)
            rc = add(model, "gelu", NULL, (const int[]){c->tanh_gelu ? 1 : 0}, err);
        if (rc == FR_OK)
            rc = add_drawn(model, "conv1d", "mlp.c_proj", (const int[]){C, c->n_inner}, proj_std,
                           err);
        if (rc == FR_OK && resid > 0)
            rc = add(model, "dropout", NULL, (const int[]){resid}, err);
        if (rc == FR_OK)
            rc = fr_model_end_residual(model, err);
        if (rc == FR_OK)
            rc = fr_model_end_block(model, err);
    }
    if (rc == FR_OK)
        rc = add(model, "layernorm", "ln_f", (const int[]){C, eps, 1}, err);
    if (rc == FR_OK)
        rc = add(model, "linear", "lm_head", (const int[]){C, c->vocab_size, 0}, err);
    if (rc == FR_OK && c->tied)
        rc = fr_model_tie(model, "lm_head.weight", "wte.weight", err);
    (void)seq;
    return rc;
}

int fr_model_load_gpt2(const char *path, int seq_len, fr_model **out, fr_error *err) {
    *out = NULL;
    gpt2_config c;
    int rc = read_config(path, &c, err);
    if (rc != FR_OK)
        return rc;
    int seq = seq_len > 0 ? seq_len : c.n_positions;
    if (seq > c.n_positions)
        return fr_fail(err, FR_ESHAPE, "%s: sequences of %d tokens, more than n_positions %d",
                       path, seq, c.n_positions);
    fr_model *model = fr_model_new_shape(FR_I32, 1, &seq);
    if (!model)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    rc = build(&c, seq, model, err);
    if (rc != FR_OK) {
        fr_error_prefix(err, "%s: ", path);
        fr_model_free(model);
        return rc;
    }
    /* GPT2LMHeadModel keeps these modules under "transformer." (its head
     * is not): adapter files name them so, as PEFT does. */
    snprintf(model->module_prefix, sizeof model->module_prefix, "transformer.");
    *out = model;
    return FR_OK;
}
