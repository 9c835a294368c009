/*
 * adapter.c - LoRA adapters on a model, and PEFT's adapter directories.
 *
 * An adapter is two parameters of the layer it sits beside (slots FR_LORA_A
 * and FR_LORA_B of a kind that takes one, src/layers/lora.c computes with
 * them), marked fr_param.adapter: weights files leave them out, checkpoints
 * keep them like any parameter, and an adapter directory holds only them:
 *
 *   adapter_model.safetensors   base_model.model.<module>.lora_A.weight [r, in]
 *                               base_model.model.<module>.lora_B.weight [out, r]
 *   adapter_config.json         peft_type LORA, r, lora_alpha, lora_dropout,
 *                               target_modules, bias none, fan_in_fan_out,
 *                               use_rslora, task_type, ...
 *
 * <module> is the layer's name as Hugging Face's model has it: a GPT-2 from
 * a config.json keeps its modules under "transformer." (fr_model.module_prefix)
 * and its heads (lm_head, score) at the top.  Reading, the prefix may be
 * there or not.  Everything is checked before the model changes.
 */
#define _POSIX_C_SOURCE 200809L
#include "core/json.h"
#include "layers/kernels.h"

#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PEFT_PREFIX "base_model.model."
#define ADAPTER_FILE "adapter_model.safetensors"
#define CONFIG_FILE "adapter_config.json"
#define PATH_MAX_LEN 4096

bool fr_param_is_adapter(const fr_param *param) { return param->adapter; }

int fr_model_adapter_count(const fr_model *model) {
    int count = 0;
    for (int i = 0; i < model->layer_count; i++)
        count += model->layers[i].lora.rank > 0;
    return count;
}

void fr_model_freeze_base(fr_model *model) {
    for (int i = 0; i < model->param_count; i++)
        if (!model->params[i].adapter)
            model->params[i].requires_grad = false;
}

/* ------------------------------------------------------------ matching */

static bool has_glob_chars(const char *pattern) { return strpbrk(pattern, "*?[") != NULL; }

/* PEFT's target_modules list: the whole name, or its last dot-separated
 * parts; globs allowed; a bare block name stands for the layers inside it. */
static bool layer_matches(const char *name, const char *pattern) {
    if (fnmatch(pattern, name, 0) == 0)
        return true;
    size_t len = strlen(pattern);
    if (!has_glob_chars(pattern) && strncmp(name, pattern, len) == 0 && name[len] == '.')
        return true;
    for (const char *dot = strchr(name, '.'); dot; dot = strchr(dot + 1, '.'))
        if (fnmatch(pattern, dot + 1, 0) == 0)
            return true;
    return false;
}

static bool valid_config(const fr_lora_config *c, fr_error *err) {
    if (c->rank < 1 || c->rank > 65536)
        return fr_fail(err, FR_EINVAL, "LoRA rank %d must be in 1-65536", c->rank), false;
    if (!(c->alpha > 0.0f) || !isfinite(c->alpha))
        return fr_fail(err, FR_EINVAL, "LoRA alpha %g must be positive", c->alpha), false;
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return fr_fail(err, FR_EINVAL, "LoRA dropout %g must be in [0, 1)", c->dropout), false;
    return true;
}

static bool same_config(const fr_lora *a, const fr_lora_config *b) {
    return a->rank == b->rank && a->alpha == b->alpha && a->dropout == b->dropout &&
           a->rslora == b->rslora;
}

/* Adapter on layer i with config c, its parameters added (zeros). */
static int attach(fr_model *model, int i, const fr_lora_config *c, fr_error *err) {
    fr_layer *l = &model->layers[i];
    l->lora = (fr_lora){c->rank, c->alpha, c->dropout, c->rslora,
                        fr_lora_scale(c->rank, c->alpha, c->rslora)};
    int before = model->param_count;
    int rc = fr_model_add_layer_params(model, i, err);
    if (rc != FR_OK) {
        l->lora = (fr_lora){0};
        fr_error ignored = {0};
        l->ops->infer_shape(l, &ignored); /* the shapes without the adapter again */
        return rc;
    }
    for (int p = before; p < model->param_count; p++)
        model->params[p].adapter = true;
    return FR_OK;
}

int fr_model_add_lora(fr_model *model, const char *pattern, const fr_lora_config *config,
                      uint64_t seed, fr_error *err) {
    if (!valid_config(config, err))
        return FR_EINVAL;
    int matched = 0, other = -1;
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        if (!layer_matches(l->name, pattern) || l->ops->join)
            continue;
        if (!l->ops->takes_lora) {
            other = other < 0 ? i : other;
            continue;
        }
        if (l->lora.rank > 0 && !same_config(&l->lora, config))
            return fr_fail(err, FR_EINVAL, "--lora '%s': layer '%s' has an adapter of rank %d "
                           "already", pattern, l->name, l->lora.rank);
        matched++;
    }
    if (matched == 0) {
        char shown[FR_NAME_MAX * 2];
        fr_printable(pattern, shown, sizeof shown);
        if (other >= 0)
            return fr_fail(err, FR_EINVAL, "--lora '%s' matches layer '%s' (%s) but no linear "
                           "or conv1d layer, the kinds that take an adapter", shown,
                           model->layers[other].name, model->layers[other].ops->kind);
        return fr_fail(err, FR_ENOMATCH, "--lora '%s' matches no layer", shown);
    }
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    for (int i = 0; i < model->layer_count; i++) {
        fr_layer *l = &model->layers[i];
        if (!l->ops->takes_lora || l->lora.rank > 0 || !layer_matches(l->name, pattern))
            continue;
        int rc = attach(model, i, config, err);
        if (rc != FR_OK)
            return rc;
        /* kaiming_uniform_(a=√5) on A [rank, in]: U(-1/√in, 1/√in); B zeros. */
        fr_param *a = &model->params[l->params[FR_LORA_A]];
        float bound = 1.0f / sqrtf((float)a->shape[1]);
        for (size_t j = 0; j < a->numel; j++)
            a->data[j] = (2.0f * fr_rng_uniform(&rng) - 1.0f) * bound;
    }
    return FR_OK;
}

/* ---------------------------------------------------------- module names */

/* Hugging Face's heads sit outside the prefix. */
static bool is_head(const char *name) {
    return strcmp(name, "lm_head") == 0 || strcmp(name, "score") == 0;
}

static void module_name(const fr_model *model, const fr_layer *l, char *buf, size_t len) {
    snprintf(buf, len, "%s%s", is_head(l->name) ? "" : model->module_prefix, l->name);
}

/* The layer a file's module name is: with the model's prefix, "transformer."
 * or none in front.  -1 if none. */
static int find_module(const fr_model *model, const char *module) {
    int i = fr_model_find_layer(model, module);
    if (i >= 0)
        return i;
    const char *prefixes[] = {model->module_prefix, "transformer."};
    for (int k = 0; k < 2; k++) {
        size_t len = strlen(prefixes[k]);
        if (len && strncmp(module, prefixes[k], len) == 0)
            return fr_model_find_layer(model, module + len);
    }
    return -1;
}

/* -------------------------------------------------------------- writing */

static int make_dir(const char *dir, fr_error *err) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return fr_fail(err, FR_EIO, "%s: not a directory", dir);
        return FR_OK;
    }
    if (mkdir(dir, 0777) != 0)
        return fr_fail(err, FR_EIO, "%s: cannot create the directory: %s", dir, strerror(errno));
    return FR_OK;
}

static const char *task_type(const fr_model *model) {
    if (model->input_dtype != FR_I32)
        return NULL;
    return fr_model_targets_per_sample(model, FR_CROSS_ENTROPY) > 1 ? "CAUSAL_LM" : "SEQ_CLS";
}

/* PEFT's adapter_config.json for the model's adapters (their config c),
 * keys sorted as PEFT writes them. */
static void config_json(const fr_model *model, const fr_lora *c, bool conv1d, fr_text *t) {
    const char *task = task_type(model);
    fr_text_printf(t, "{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,\n"
                      "  \"base_model_name_or_path\": null,\n  \"bias\": \"none\",\n"
                      "  \"fan_in_fan_out\": %s,\n  \"inference_mode\": false,\n"
                      "  \"init_lora_weights\": true,\n  \"layers_pattern\": null,\n"
                      "  \"layers_to_transform\": null,\n  \"lora_alpha\": %.9g,\n"
                      "  \"lora_dropout\": %.9g,\n  \"modules_to_save\": null,\n"
                      "  \"peft_type\": \"LORA\",\n  \"r\": %d,\n  \"rank_pattern\": {},\n"
                      "  \"revision\": null,\n  \"target_modules\": [",
                   conv1d ? "true" : "false", c->alpha, c->dropout, c->rank);
    bool first = true;
    for (int i = 0; i < model->layer_count; i++) {
        if (model->layers[i].lora.rank <= 0)
            continue;
        char name[FR_NAME_MAX * 2];
        module_name(model, &model->layers[i], name, sizeof name);
        fr_text_printf(t, "%s\n    ", first ? "" : ",");
        fr_json_append_string(t, name);
        first = false;
    }
    fr_text_printf(t, "\n  ],\n  \"task_type\": %s%s%s,\n  \"use_rslora\": %s\n}\n",
                   task ? "\"" : "", task ? task : "null", task ? "\"" : "",
                   c->rslora ? "true" : "false");
}

int fr_model_save_adapter(const fr_model *model, const char *dir, fr_error *err) {
    const fr_lora *c = NULL;
    const char *kind = NULL;
    int count = 0;
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        if (l->lora.rank <= 0)
            continue;
        if (c && (c->rank != l->lora.rank || c->alpha != l->lora.alpha ||
                  c->dropout != l->lora.dropout || c->rslora != l->lora.rslora))
            return fr_fail(err, FR_EINVAL, "%s: the adapters differ in rank, alpha or dropout "
                           "(one adapter_config.json holds one of each)", dir);
        if (kind && strcmp(kind, l->ops->kind) != 0)
            return fr_fail(err, FR_EINVAL, "%s: adapters on both %s and %s layers ('%s'): PEFT's "
                           "adapter_config.json has one fan_in_fan_out for all", dir, kind,
                           l->ops->kind, l->name);
        c = &l->lora;
        kind = l->ops->kind;
        count++;
    }
    if (count == 0)
        return fr_fail(err, FR_EINVAL, "%s: the model has no adapters to save", dir);
    int rc = fr_model_ensure_arena((fr_model *)model, err);
    if (rc == FR_OK)
        rc = make_dir(dir, err);
    if (rc != FR_OK)
        return rc;
    fr_st_out *tensors = calloc((size_t)count * 2, sizeof *tensors);
    char (*names)[FR_NAME_MAX * 4] = calloc((size_t)count * 2, sizeof *names);
    fr_text json = {0};
    char path[PATH_MAX_LEN];
    if (!tensors || !names) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    int n = 0;
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        if (l->lora.rank <= 0)
            continue;
        char module[FR_NAME_MAX * 2];
        module_name(model, l, module, sizeof module);
        for (int slot = FR_LORA_A; slot <= FR_LORA_B; slot++) {
            const fr_param *p = &model->params[l->params[slot]];
            if (snprintf(names[n], sizeof names[n], PEFT_PREFIX "%s.%s", module,
                         slot == FR_LORA_A ? "lora_A.weight" : "lora_B.weight") >=
                (int)sizeof names[n])
                continue; /* cannot happen: layer names are short */
            tensors[n] = (fr_st_out){.name = names[n], .ndim = 2,
                                     .shape = {p->shape[0], p->shape[1]}, .data = p->data};
            n++;
        }
    }
    config_json(model, c, strcmp(kind, "conv1d") == 0, &json);
    if (json.failed) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    char format_key[] = "format", format_value[] = "pt";
    fr_st_meta format = {.key = format_key, .value = format_value};
    snprintf(path, sizeof path, "%s/%s", dir, ADAPTER_FILE);
    rc = fr_st_write(path, tensors, n, &format, 1, err);
    if (rc == FR_OK) {
        snprintf(path, sizeof path, "%s/%s", dir, CONFIG_FILE);
        rc = fr_write_file_atomic(path, json.data, json.length, err);
    }
done:
    free(tensors);
    free(names);
    free(json.data);
    return rc;
}

/* -------------------------------------------------------------- reading */

/* What adapter_config.json says. */
typedef struct peft_config {
    fr_lora_config lora;
    bool has_r, has_alpha, fan_in_fan_out;
    char *peft_type, *bias;
    char **targets;      /* a list of module names (PEFT's suffix rule) */
    int target_count;
    char *target_regex;  /* or one string: a regular expression over whole names */
    bool patterned;      /* a rank_pattern or alpha_pattern that is not empty */
} peft_config;

static void free_config(peft_config *c) {
    fr_free(c->peft_type);
    fr_free(c->bias);
    for (int i = 0; i < c->target_count; i++)
        fr_free(c->targets[i]);
    free(c->targets);
    fr_free(c->target_regex);
}

static int read_targets(fr_json_reader *r, peft_config *c) {
    if (fr_json_peek(r) == 'n')
        return fr_json_literal(r, "null");
    if (fr_json_peek(r) == '"') {
        size_t len;
        return fr_json_string(r, &c->target_regex, &len);
    }
    if (fr_json_peek(r) != '[')
        return fr_json_syntax_error(r, "target_modules must be a list or a string");
    r->pos++;
    bool first = true, done = false;
    int rc = FR_OK;
    while (rc == FR_OK) {
        rc = fr_json_next_element(r, &first, &done);
        if (rc != FR_OK || done)
            break;
        char **grown = realloc(c->targets, (size_t)(c->target_count + 1) * sizeof *grown);
        if (!grown)
            return fr_json_out_of_memory(r);
        c->targets = grown;
        size_t len;
        fr_json_skip_whitespace(r);
        rc = fr_json_string(r, &c->targets[c->target_count], &len);
        if (rc == FR_OK)
            c->target_count++;
    }
    return rc;
}

/* An object: empty or not (rank_pattern, alpha_pattern). */
static int read_pattern(fr_json_reader *r, bool *patterned) {
    if (fr_json_peek(r) == '{') {
        size_t at = r->pos++;
        fr_json_skip_whitespace(r);
        if (fr_json_peek(r) == '}') {
            r->pos++;
            return FR_OK;
        }
        r->pos = at;
        *patterned = true;
    }
    return fr_json_skip_value(r, 1);
}

/* One member of adapter_config.json (fr_json_read_object_file's callback). */
static int read_member(fr_json_reader *r, const char *key, void *context) {
    peft_config *c = context;
    double value;
    size_t len;
    int rc;
    if (strcmp(key, "r") == 0) {
        if ((rc = fr_json_number(r, &value)) != FR_OK)
            return rc;
        if (value != floor(value) || value < 1 || value > 65536)
            return fr_json_syntax_error(r, "r must be a whole number in 1-65536");
        c->lora.rank = (int)value;
        c->has_r = true;
        return FR_OK;
    }
    if (strcmp(key, "lora_alpha") == 0 || strcmp(key, "lora_dropout") == 0) {
        if ((rc = fr_json_number(r, &value)) != FR_OK)
            return rc;
        if (key[5] == 'a') {
            c->lora.alpha = (float)value;
            c->has_alpha = true;
        } else {
            c->lora.dropout = (float)value;
        }
        return FR_OK;
    }
    if (strcmp(key, "use_rslora") == 0 || strcmp(key, "fan_in_fan_out") == 0) {
        bool *flag = key[0] == 'u' ? &c->lora.rslora : &c->fan_in_fan_out;
        return fr_json_bool(r, flag);
    }
    if (strcmp(key, "peft_type") == 0)
        return fr_json_string(r, &c->peft_type, &len);
    if (strcmp(key, "bias") == 0)
        return fr_json_string(r, &c->bias, &len);
    if (strcmp(key, "target_modules") == 0)
        return read_targets(r, c);
    if (strcmp(key, "rank_pattern") == 0 || strcmp(key, "alpha_pattern") == 0)
        return read_pattern(r, &c->patterned);
    return fr_json_skip_value(r, 1);
}

static int read_config(const char *path, peft_config *c, fr_error *err) {
    int rc = fr_json_read_object_file(path, CONFIG_FILE, read_member, c, err);
    if (rc != FR_OK)
        return rc;
    if (!c->peft_type || strcmp(c->peft_type, "LORA") != 0)
        return fr_fail(err, FR_EFORMAT, "%s: peft_type is %s%s%s, not \"LORA\"", path,
                       c->peft_type ? "\"" : "", c->peft_type ? c->peft_type : "missing",
                       c->peft_type ? "\"" : "");
    if (c->bias && strcmp(c->bias, "none") != 0)
        return fr_fail(err, FR_EFORMAT, "%s: bias \"%s\": only \"none\" is supported (frost's "
                       "adapters train no bias)", path, c->bias);
    if (!c->has_r || !c->has_alpha)
        return fr_fail(err, FR_EFORMAT, "%s: no %s", path, !c->has_r ? "r" : "lora_alpha");
    if (c->patterned)
        return fr_fail(err, FR_EFORMAT, "%s: rank_pattern and alpha_pattern are not supported "
                       "(every adapter takes r and lora_alpha)", path);
    fr_error bad = {0};
    if (!valid_config(&c->lora, &bad))
        return fr_fail(err, FR_EFORMAT, "%s: %s", path, bad.msg);
    return FR_OK;
}

/* Whether the config's target_modules name layer l (under its module name). */
static bool config_targets(const fr_model *model, const peft_config *c, const fr_layer *l,
                           const regex_t *re) {
    char module[FR_NAME_MAX * 2];
    module_name(model, l, module, sizeof module);
    if (c->target_regex)
        return regexec(re, module, 0, NULL, 0) == 0 || regexec(re, l->name, 0, NULL, 0) == 0;
    for (int k = 0; k < c->target_count; k++) {
        size_t len = strlen(c->targets[k]), n = strlen(module);
        if (strcmp(module, c->targets[k]) == 0 || strcmp(l->name, c->targets[k]) == 0 ||
            (n > len && module[n - len - 1] == '.' && strcmp(module + n - len, c->targets[k]) == 0))
            return true;
    }
    return false;
}

/* The layer and slot a tensor of the adapter file is, or an error naming it. */
static int tensor_slot(const fr_model *model, const char *path, const fr_st_tensor *t,
                       int *layer, int *slot, fr_error *err) {
    const char *name = t->name;
    if (strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) != 0)
        return fr_fail(err, FR_EFORMAT, "%s: tensor '%s' is not under '" PEFT_PREFIX "'", path,
                       name);
    name += strlen(PEFT_PREFIX);
    size_t len = strlen(name);
    const char *suffixes[] = {".lora_A.weight", ".lora_B.weight"};
    for (int k = 0; k < 2; k++) {
        size_t s = strlen(suffixes[k]);
        if (len <= s || strcmp(name + len - s, suffixes[k]) != 0)
            continue;
        char module[FR_NAME_MAX * 3];
        snprintf(module, sizeof module, "%.*s", (int)(len - s), name);
        *layer = find_module(model, module);
        *slot = k ? FR_LORA_B : FR_LORA_A;
        if (*layer < 0)
            return fr_fail(err, FR_EFORMAT, "%s: tensor '%s': the model has no module '%s'", path,
                           t->name, module);
        if (!model->layers[*layer].ops->takes_lora)
            return fr_fail(err, FR_EFORMAT, "%s: tensor '%s': '%s' is a %s, which takes no "
                           "adapter", path, t->name, module, model->layers[*layer].ops->kind);
        return FR_OK;
    }
    return fr_fail(err, FR_EFORMAT, "%s: tensor '%s' is neither a lora_A nor a lora_B weight",
                   path, t->name);
}

/* The base weight's [in, out] of an adaptable layer, from its weight shape. */
static void layer_dims(const fr_layer *l, int *in, int *out) {
    bool transposed = strcmp(l->ops->kind, "conv1d") == 0; /* [in, out] */
    *in = l->param_shape[FR_WEIGHT][transposed ? 0 : 1];
    *out = l->param_shape[FR_WEIGHT][transposed ? 1 : 0];
}

/* Every tensor of the file against the model and the config; which layers
 * the adapter covers in wanted[]. */
static int check_adapter(const fr_model *model, const peft_config *c, const fr_st_file *file,
                         bool *wanted, fr_error *err) {
    const char *path = file->path;
    unsigned char *seen = calloc((size_t)model->layer_count + 1, 1);
    if (!seen)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    int rc = FR_OK;
    for (int i = 0; i < file->tensor_count && rc == FR_OK; i++) {
        const fr_st_tensor *t = &file->tensors[i];
        int layer, slot;
        rc = tensor_slot(model, path, t, &layer, &slot, err);
        if (rc != FR_OK)
            break;
        const fr_layer *l = &model->layers[layer];
        int in, out, r = c->lora.rank;
        layer_dims(l, &in, &out);
        int64_t want0 = slot == FR_LORA_A ? r : out, want1 = slot == FR_LORA_A ? in : r;
        if (t->i64 || t->ndim != 2 || t->shape[0] != want0 || t->shape[1] != want1) {
            char shape[64] = "[]";
            if (t->ndim == 2)
                snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)t->shape[0],
                         (long long)t->shape[1]);
            else if (t->ndim == 1)
                snprintf(shape, sizeof shape, "[%lld]", (long long)t->shape[0]);
            rc = fr_fail(err, FR_ESHAPE, "%s: tensor '%s' %s %s, but r %d and %s '%s' (%d in, "
                         "%d out) need %s [%lld, %lld]", path, t->name, t->i64 ? "is I64," : "has shape",
                         shape, r, l->ops->kind, l->name, in, out, "F32",
                         (long long)want0, (long long)want1);
            break;
        }
        if (l->lora.rank > 0 && !same_config(&l->lora, &c->lora)) {
            rc = fr_fail(err, FR_EINVAL, "%s: layer '%s' has an adapter of rank %d already", path,
                         l->name, l->lora.rank);
            break;
        }
        seen[layer] |= (unsigned char)(slot == FR_LORA_A ? 1 : 2);
    }
    for (int i = 0; i < model->layer_count && rc == FR_OK; i++) {
        wanted[i] = seen[i] != 0;
        if (seen[i] && seen[i] != 3)
            rc = fr_fail(err, FR_EFORMAT, "%s: '%s' has a %s but no %s", path,
                         model->layers[i].name, seen[i] == 1 ? "lora_A" : "lora_B",
                         seen[i] == 1 ? "lora_B" : "lora_A");
    }
    free(seen);
    return rc;
}

/* target_modules against the model: each entry names a module it has, and
 * every module the file adapts is a target. */
static int check_targets(const fr_model *model, const peft_config *c, const bool *wanted,
                         const char *path, fr_error *err) {
    regex_t re;
    if (c->target_regex) {
        char anchored[FR_NAME_MAX * 8];
        if (snprintf(anchored, sizeof anchored, "^(%s)$", c->target_regex) >= (int)sizeof anchored ||
            regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB) != 0)
            return fr_fail(err, FR_EFORMAT, "%s: target_modules '%s' is not a regular expression "
                           "frost reads", path, c->target_regex);
    }
    int rc = FR_OK;
    for (int k = 0; k < c->target_count && rc == FR_OK; k++) {
        bool found = false;
        for (int i = 0; i < model->layer_count && !found; i++) {
            peft_config one = {.targets = &c->targets[k], .target_count = 1};
            found = model->layers[i].ops->takes_lora &&
                    config_targets(model, &one, &model->layers[i], NULL);
        }
        if (!found)
            rc = fr_fail(err, FR_EFORMAT, "%s: target_modules names '%s', which the model has "
                         "no linear or conv1d module for", path, c->targets[k]);
    }
    for (int i = 0; i < model->layer_count && rc == FR_OK; i++)
        if (wanted[i] && (c->target_count || c->target_regex) &&
            !config_targets(model, c, &model->layers[i], &re))
            rc = fr_fail(err, FR_EFORMAT, "%s: adapter for '%s', which target_modules does not "
                         "name", path, model->layers[i].name);
    if (c->target_regex)
        regfree(&re);
    return rc;
}

int fr_model_load_adapter(fr_model *model, const char *dir, fr_error *err) {
    char config_path[PATH_MAX_LEN], tensors_path[PATH_MAX_LEN];
    snprintf(config_path, sizeof config_path, "%s/%s", dir, CONFIG_FILE);
    snprintf(tensors_path, sizeof tensors_path, "%s/%s", dir, ADAPTER_FILE);
    peft_config c = {0};
    fr_st_file *file = NULL;
    bool *wanted = calloc((size_t)model->layer_count + 1, sizeof *wanted);
    int rc = wanted ? read_config(config_path, &c, err)
                    : fr_fail(err, FR_ENOMEM, "%s: out of memory", dir);
    if (rc == FR_OK)
        rc = fr_st_read(tensors_path, &file, err);
    if (rc == FR_OK)
        rc = check_adapter(model, &c, file, wanted, err);
    if (rc == FR_OK)
        rc = check_targets(model, &c, wanted, config_path, err);
    int adapted = 0;
    for (int i = 0; rc == FR_OK && i < model->layer_count; i++)
        adapted += wanted[i];
    if (rc == FR_OK && adapted == 0)
        rc = fr_fail(err, FR_EFORMAT, "%s: no adapter tensors", tensors_path);
    for (int i = 0; rc == FR_OK && i < model->layer_count; i++)
        if (wanted[i] && model->layers[i].lora.rank == 0)
            rc = attach(model, i, &c.lora, err);
    for (int i = 0; rc == FR_OK && i < file->tensor_count; i++) {
        int layer, slot;
        rc = tensor_slot(model, tensors_path, &file->tensors[i], &layer, &slot, err);
        if (rc == FR_OK) {
            fr_param *p = &model->params[model->layers[layer].params[slot]];
            memcpy(p->data, file->tensors[i].data, p->numel * sizeof(float));
        }
    }
    fr_st_free(file);
    free_config(&c);
    free(wanted);
    return rc;
}

/* -------------------------------------------------------------- merging */

/* The weights file's tensor for module `module` ("<module>.weight", with the
 * prefix the file uses or none). */
static const fr_st_tensor *base_weight(const fr_st_file *w, const char *module) {
    char name[FR_NAME_MAX * 6];
    const char *prefix = "transformer.";
    size_t len = strlen(prefix);
    const char *forms[3] = {"", strncmp(module, prefix, len) == 0 ? NULL : prefix, NULL};
    const char *bare = strncmp(module, prefix, len) == 0 ? module + len : NULL;
    for (int k = 0; k < 2; k++) {
        if (!forms[k])
            continue;
        if (snprintf(name, sizeof name, "%s%s.weight", forms[k], module) >= (int)sizeof name)
            return NULL;
        const fr_st_tensor *t = fr_st_find(w, name);
        if (t)
            return t;
    }
    if (bare && snprintf(name, sizeof name, "%s.weight", bare) < (int)sizeof name)
        return fr_st_find(w, name);
    return NULL;
}

int fr_adapter_merge(const char *weights, const char *adapter_dir, const char *out,
                     fr_error *err) {
    char config_path[PATH_MAX_LEN], tensors_path[PATH_MAX_LEN];
    snprintf(config_path, sizeof config_path, "%s/%s", adapter_dir, CONFIG_FILE);
    snprintf(tensors_path, sizeof tensors_path, "%s/%s", adapter_dir, ADAPTER_FILE);
    peft_config c = {0};
    fr_st_file *w = NULL, *a = NULL;
    fr_st_out *tensors = NULL;
    float **merged = NULL;
    int rc = read_config(config_path, &c, err);
    if (rc == FR_OK)
        rc = fr_st_read(weights, &w, err);
    if (rc == FR_OK)
        rc = fr_st_read(tensors_path, &a, err);
    if (rc != FR_OK)
        goto done;
    tensors = calloc((size_t)w->tensor_count + 1, sizeof *tensors);
    merged = calloc((size_t)w->tensor_count + 1, sizeof *merged);
    if (!tensors || !merged) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", out);
        goto done;
    }
    float scale = fr_lora_scale(c.lora.rank, c.lora.alpha, c.lora.rslora);
    int r = c.lora.rank;
    int pairs = 0;
    for (int i = 0; i < a->tensor_count && rc == FR_OK; i++) {
        const fr_st_tensor *ta = &a->tensors[i];
        size_t len = strlen(ta->name), s = strlen(".lora_A.weight");
        if (strncmp(ta->name, PEFT_PREFIX, strlen(PEFT_PREFIX)) != 0 || len <= s ||
            (strcmp(ta->name + len - s, ".lora_A.weight") != 0 &&
             strcmp(ta->name + len - s, ".lora_B.weight") != 0)) {
            rc = fr_fail(err, FR_EFORMAT, "%s: tensor '%s' is not a PEFT LoRA weight",
                         tensors_path, ta->name);
            break;
        }
        if (ta->name[len - s + 6] == 'B')
            continue;
        char module[FR_NAME_MAX * 4], b_name[sizeof ta->name];
        snprintf(module, sizeof module, "%.*s", (int)(len - s - strlen(PEFT_PREFIX)),
                 ta->name + strlen(PEFT_PREFIX));
        memcpy(b_name, ta->name, sizeof b_name);
        b_name[len - s + 6] = 'B'; /* ".lora_A" -> ".lora_B" */
        const fr_st_tensor *tb = fr_st_find(a, b_name), *tw = base_weight(w, module);
        if (!tb) {
            rc = fr_fail(err, FR_EFORMAT, "%s: '%s' has a lora_A but no lora_B", tensors_path,
                         module);
            break;
        }
        if (!tw) {
            rc = fr_fail(err, FR_EFORMAT, "%s: no '%s.weight' for the adapter's tensor '%s'",
                         weights, module, ta->name);
            break;
        }
        if (ta->i64 || tb->i64 || tw->i64 || ta->ndim != 2 || tb->ndim != 2 || tw->ndim != 2 ||
            ta->shape[0] != r || tb->shape[1] != r) {
            rc = fr_fail(err, FR_ESHAPE, "%s: tensor '%s' or its lora_B is not 2-D F32 of rank "
                         "%d", tensors_path, ta->name, r);
            break;
        }
        int64_t in = ta->shape[1], outs = tb->shape[0];
        /* nn.Linear's [out, in], or Conv1D's [in, out] (fan_in_fan_out says
         * which when the two are the same size). */
        bool linear = tw->shape[0] == outs && tw->shape[1] == in;
        bool conv1d = tw->shape[0] == in && tw->shape[1] == outs;
        if (linear && conv1d)
            linear = !c.fan_in_fan_out;
        if (!linear && !conv1d) {
            rc = fr_fail(err, FR_ESHAPE, "%s: tensor '%s' has shape [%lld, %lld], which the "
                         "adapter '%s' ([%lld in, %lld out]) does not fit", weights, tw->name,
                         (long long)tw->shape[0], (long long)tw->shape[1], module,
                         (long long)in, (long long)outs);
            break;
        }
        int index = (int)(tw - w->tensors);
        if (merged[index]) {
            rc = fr_fail(err, FR_EFORMAT, "%s: two adapters for '%s'", tensors_path, tw->name);
            break;
        }
        merged[index] = fr_alloc(tw->numel * sizeof(float));
        if (!merged[index]) {
            rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", out);
            break;
        }
        for (int64_t o = 0; o < outs; o++)
            for (int64_t k = 0; k < in; k++) {
                double sum = 0.0;
                for (int j = 0; j < r; j++)
                    sum += (double)tb->data[o * r + j] * (double)ta->data[j * in + k];
                size_t at = linear ? (size_t)(o * in + k) : (size_t)(k * outs + o);
                merged[index][at] = (float)((double)tw->data[at] + (double)scale * sum);
            }
        pairs++;
    }
    if (rc == FR_OK && pairs == 0)
        rc = fr_fail(err, FR_EFORMAT, "%s: no adapter tensors", tensors_path);
    if (rc != FR_OK)
        goto done;
    for (int i = 0; i < w->tensor_count; i++) {
        const fr_st_tensor *t = &w->tensors[i];
        tensors[i] = (fr_st_out){.name = t->name, .ndim = t->ndim, .i64 = t->i64,
                                 .data = merged[i] ? merged[i]
                                         : t->i64  ? t->data_i64
                                                   : (const void *)t->data};
        for (int d = 0; d < t->ndim; d++)
            tensors[i].shape[d] = t->shape[d];
    }
    char format_key[] = "format", format_value[] = "pt";
    fr_st_meta format = {.key = format_key, .value = format_value};
    rc = fr_st_write(out, tensors, w->tensor_count, &format, 1, err);
done:
    if (merged && w)
        for (int i = 0; i < w->tensor_count; i++)
            fr_free(merged[i]);
    free(merged);
    free(tensors);
    fr_st_free(w);
    fr_st_free(a);
    free_config(&c);
    return rc;
}
