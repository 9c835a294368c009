/*
 * checkpoint.c - training checkpoints: everything needed to continue a run
 * as if it had never stopped, in one safetensors file.
 *
 * Tensors: every parameter under its own name (so a checkpoint is a weights
 * file too), then the optimizer state of each trainable parameter under
 * "<name>.<state>" with PyTorch's state names (SGD "momentum", Adam
 * "exp_avg" and "exp_avg_sq").  State is stored per parameter, not as the
 * slab, so a checkpoint does not depend on the slab layout and a run can
 * resume on another number of threads or ranks.
 *
 * Metadata written here ("frost.*"): the step counter, the optimizer, the
 * frozen set, the per-parameter optimizer step counts, and the learning
 * rates with their schedule (lr_schedule.c; the schedule's position is the step
 * counter).  The caller adds
 * its own entries (data position, seed, hyper-parameters).
 */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define META_KIND "frost.checkpoint"
#define META_STEP "frost.step"
#define META_OPTIMIZER "frost.optimizer"
#define META_FROZEN "frost.frozen"
#define META_PARAM_STEPS "frost.param_steps"

struct fr_checkpoint {
    fr_st_file *file;
};

static const char *optimizer_name(fr_optimizer_kind kind) {
    return kind == FR_ADAM ? "adam" : kind == FR_ADAMW ? "adamw" : "sgd";
}

/* The state names of a rule, in the order of fr_trainer_param_state's `which`. */
static const char *state_name(const fr_train_config *config, int which) {
    if (config->optimizer == FR_SGD)
        return which == 0 ? "momentum" : NULL;
    return which == 0 ? "exp_avg" : "exp_avg_sq";
}

/* "a,b,c": the names of the frozen parameters. */
static void frozen_list(const fr_model *model, fr_text *out) {
    fr_text_printf(out, "%s", "");
    for (int i = 0, first = 1; i < model->param_count; i++) {
        if (model->params[i].requires_grad)
            continue;
        if (!first)
            fr_text_printf(out, ",");
        fr_text_printf(out, "%s", model->params[i].name);
        first = 0;
    }
}

static int check_state_finite(fr_trainer *trainer, int which, const char *what,
                              const char *path, fr_error *err) {
    const fr_model *model = fr_trainer_model(trainer);
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        const float *state = fr_trainer_param_state(trainer, which, i);
        for (size_t j = 0; state && j < p->numel; j++)
            if (!isfinite(state[j]))
                return fr_fail(err, FR_ENONFINITE,
                               "%s: not written: the %s state of '%s' holds non-finite values", path,
                               what, p->name);
    }
    return FR_OK;
}

int fr_trainer_save_checkpoint(fr_trainer *trainer, const char *path, const fr_meta *extra,
                               int extra_count, fr_error *err) {
    fr_model *model = fr_trainer_model(trainer);
    const fr_train_config *config = fr_trainer_config(trainer);
    /* The frozen set may have changed since the last step: lay the state out
     * for it first (parameters unfrozen since start with fresh state). */
    int rc = fr_trainer_sync_plan(trainer, err);
    if (rc != FR_OK)
        return rc;
    rc = fr_model_check_finite(model, err);
    if (rc != FR_OK) {
        fr_error_prefix(err, "%s: not written: ", path);
        return rc;
    }
    for (int which = 0; which < 2 && rc == FR_OK; which++)
        rc = check_state_finite(trainer, which, state_name(config, which), path, err);
    if (rc != FR_OK)
        return rc;

    /* Tensors: parameters, buffers, then state; the names need storage while
     * writing. */
    int capacity = model->param_count * 3 + model->buffer_count;
    fr_st_out *tensors = calloc((size_t)capacity + 1, sizeof *tensors);
    char (*names)[FR_NAME_MAX * 2] = calloc((size_t)capacity + 1, sizeof *names);
    fr_text frozen = {0}, steps = {0}, lr_texts[FR_LR_META_COUNT] = {{0}};
    fr_st_meta *meta = calloc((size_t)extra_count + 8 + FR_LR_META_COUNT, sizeof *meta);
    float *widened = NULL;
    if (!tensors || !names || !meta) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    /* Parameters kept in bf16 are written as float32, exactly their values. */
    widened = fr_model_widened_bf16(model);
    if (!widened && fr_model_bf16_numel(model)) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    int count = 0;
    size_t at = 0;
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        tensors[count++] = (fr_st_out){.name = p->name, .ndim = p->ndim,
                                       .data = p->bf16 ? widened + at : p->data};
        at += p->bf16 ? p->numel : 0;
        for (int d = 0; d < p->ndim; d++)
            tensors[count - 1].shape[d] = p->shape[d];
    }
    count = fr_model_buffer_tensors(model, tensors, count);
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        if (!p->requires_grad)
            continue;
        fr_text_printf(&steps, "%s%s=%ld", steps.length ? "," : "", p->name,
                       fr_trainer_param_steps(trainer)[i]);
        for (int which = 0; which < 2; which++) {
            const float *state = fr_trainer_param_state(trainer, which, i);
            if (!state)
                continue;
            snprintf(names[count], sizeof names[count], "%s.%s", p->name, state_name(config, which));
            tensors[count] = (fr_st_out){.name = names[count], .ndim = p->ndim, .data = state};
            for (int d = 0; d < p->ndim; d++)
                tensors[count].shape[d] = p->shape[d];
            count++;
        }
    }
    fr_text_printf(&steps, "%s", "");
    frozen_list(model, &frozen);
    if (frozen.failed || steps.failed) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    char step_text[32];
    snprintf(step_text, sizeof step_text, "%ld", fr_trainer_steps_done(trainer));
    /* fr_st_meta holds mutable pointers; the writer only reads them. */
    int n_meta = 0;
    meta[n_meta++] = (fr_st_meta){(char *)META_KIND, (char *)"1"};
    meta[n_meta++] = (fr_st_meta){(char *)META_STEP, step_text};
    meta[n_meta++] = (fr_st_meta){(char *)META_OPTIMIZER, (char *)optimizer_name(config->optimizer)};
    meta[n_meta++] = (fr_st_meta){(char *)META_FROZEN, frozen.data};
    meta[n_meta++] = (fr_st_meta){(char *)META_PARAM_STEPS, steps.data};
    if (!fr_trainer_lr_metadata(trainer, lr_texts, meta + n_meta)) {
        rc = fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    n_meta += FR_LR_META_COUNT;
    for (int i = 0; i < extra_count; i++)
        meta[n_meta++] = (fr_st_meta){(char *)extra[i].key, (char *)extra[i].value};
    rc = fr_st_write(path, tensors, count, meta, n_meta, err);
done:
    fr_free(widened);
    free(tensors);
    free(names);
    free(meta);
    free(frozen.data);
    free(steps.data);
    for (int i = 0; i < FR_LR_META_COUNT; i++)
        free(lr_texts[i].data);
    return rc;
}

int fr_checkpoint_open(const char *path, fr_checkpoint **out, fr_error *err) {
    *out = NULL;
    fr_checkpoint *checkpoint = calloc(1, sizeof *checkpoint);
    if (!checkpoint)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    int rc = fr_st_read(path, &checkpoint->file, err);
    if (rc == FR_OK && !fr_st_meta_get(checkpoint->file, META_KIND))
        rc = fr_fail(err, FR_EFORMAT, "%s: a weights file, not a training checkpoint",
                     path);
    if (rc != FR_OK) {
        fr_checkpoint_close(checkpoint);
        return rc;
    }
    *out = checkpoint;
    return FR_OK;
}

void fr_checkpoint_close(fr_checkpoint *checkpoint) {
    if (!checkpoint)
        return;
    if (checkpoint->file)
        fr_st_free(checkpoint->file);
    free(checkpoint);
}

const char *fr_checkpoint_get(const fr_checkpoint *checkpoint, const char *key) {
    return fr_st_meta_get(checkpoint->file, key);
}

/* Is `name` an item of the comma-separated `list`? */
static bool list_has(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p = comma ? comma + 1 : NULL;
    }
    return false;
}

/* The count recorded for `name` in "a=3,b=5", or -1. */
static long list_count(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            char *end;
            long value = strtol(p + n + 1, &end, 10);
            if (end != p + n + 1 && value >= 0 && (*end == ',' || *end == '\0'))
                return value;
            return -1;
        }
        p = comma ? comma + 1 : NULL;
    }
    return -1;
}

static int parse_long(const char *text, long *out) {
    if (!text || !*text)
        return -1;
    char *end;
    long value = strtol(text, &end, 10);
    if (*end || value < 0)
        return -1;
    *out = value;
    return 0;
}

int fr_trainer_restore(fr_trainer *trainer, const fr_checkpoint *checkpoint, unsigned allow,
                       fr_error *err) {
    bool allow_freeze_change = allow & FR_RESTORE_FREEZE_CHANGE;
    fr_model *model = fr_trainer_model(trainer);
    const fr_train_config *config = fr_trainer_config(trainer);
    const fr_st_file *file = checkpoint->file;
    const char *path = file->path;
    const char *optimizer = fr_st_meta_get(file, META_OPTIMIZER);
    const char *frozen = fr_st_meta_get(file, META_FROZEN);
    const char *steps = fr_st_meta_get(file, META_PARAM_STEPS);
    long step = 0;
    if (!optimizer || !frozen || !steps || parse_long(fr_st_meta_get(file, META_STEP), &step))
        return fr_fail(err, FR_EFORMAT, "%s: checkpoint metadata is incomplete or malformed", path);
    /* The state is restored into the layout of the model's frozen set as it
     * is now, which may differ from the trainer's last step. */
    int rc = fr_trainer_sync_plan(trainer, err);
    if (rc != FR_OK)
        return rc;
    /* Another model's checkpoint: say so, before the frozen set or the
     * optimizer state are compared and give a less direct message. */
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        const fr_st_tensor *t = fr_st_find(file, p->name);
        bool same = t && t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!t)
            return fr_fail(err, FR_EINVAL,
                           "%s: the checkpoint is of another model: it has no tensor '%s'", path,
                           p->name);
        if (!same) {
            char have[128], want[128];
            size_t used = (size_t)snprintf(have, sizeof have, "[");
            for (int d = 0; d < t->ndim && used < sizeof have; d++)
                used += (size_t)snprintf(have + used, sizeof have - used, "%s%" PRId64,
                                         d ? ", " : "", t->shape[d]);
            if (used < sizeof have)
                snprintf(have + used, sizeof have - used, "]");
            fr_param_shape_string(p, want, sizeof want);
            return fr_fail(err, FR_EINVAL,
                           "%s: the checkpoint is of another model: '%s' is %s there, %s here",
                           path, p->name, have, want);
        }
    }
    if (strcmp(optimizer, optimizer_name(config->optimizer)) != 0)
        return fr_fail(err, FR_EINVAL, "%s: the checkpoint was trained with optimizer %s, this run uses %s",
                       path, optimizer, optimizer_name(config->optimizer));
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        bool was_frozen = list_has(frozen, p->name);
        if (was_frozen == p->requires_grad && !allow_freeze_change)
            return fr_fail(err, FR_EINVAL,
                               "%s: the checkpoint has '%s' %s, this run %s it (the frozen set must match unless a change is allowed, for staged fine-tuning)",
                               path, p->name, was_frozen ? "frozen" : "trainable",
                               p->requires_grad ? "trains" : "freezes");
    }
    if (!(allow & FR_RESTORE_LR_CHANGE) &&
        (rc = fr_trainer_check_lr_metadata(trainer, checkpoint, path, err)) != FR_OK)
        return rc;
    /* Check every state tensor before anything is copied. */
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        if (!p->requires_grad || list_has(frozen, p->name))
            continue;
        if (list_count(steps, p->name) < 0)
            return fr_fail(err, FR_EFORMAT, "%s: no optimizer step count for '%s'", path, p->name);
        for (int which = 0; which < 2; which++) {
            if (!fr_trainer_param_state(trainer, which, i))
                continue;
            char name[FR_NAME_MAX * 2];
            snprintf(name, sizeof name, "%s.%s", p->name, state_name(config, which));
            const fr_st_tensor *t = fr_st_find(file, name);
            if (!t || t->numel != p->numel || t->i64)
                return fr_fail(err, FR_EFORMAT, "%s: optimizer state '%s' is missing or has the wrong size",
                               path, name);
        }
    }
    rc = fr_model_copy_weights(model, file, err);
    if (rc != FR_OK)
        return rc;
    long *param_steps = fr_trainer_param_steps(trainer);
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        param_steps[i] = 0;
        if (!p->requires_grad)
            continue;
        bool fresh = list_has(frozen, p->name); /* unfrozen since: new state */
        for (int which = 0; which < 2; which++) {
            float *dst = fr_trainer_param_state(trainer, which, i);
            if (!dst)
                continue;
            if (fresh) {
                memset(dst, 0, p->numel * sizeof(float));
                continue;
            }
            char name[FR_NAME_MAX * 2];
            snprintf(name, sizeof name, "%s.%s", p->name, state_name(config, which));
            memcpy(dst, fr_st_find(file, name)->data, p->numel * sizeof(float));
        }
        if (!fresh)
            param_steps[i] = list_count(steps, p->name);
    }
    fr_trainer_set_steps_done(trainer, step);
    return FR_OK;
}
