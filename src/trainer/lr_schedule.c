/*
 * lr_schedule.c - learning rates: the schedule, per-parameter base rates, and
 * what a checkpoint records of them.
 *
 * The learning rate of a step is a pure function of the step's index and the
 * parameter's base rate (fr_lr_at), with torch.optim.lr_scheduler's closed
 * forms (frost.h says which scheduler each kind is).  Nothing about it is
 * state: a resumed run needs only the step counter, and an update applied
 * after its step (in flight on several ranks) asks for the rate of the step
 * that made it (train.c's update_range, through fr_param_lr).
 *
 * Base rates per parameter are torch's param groups by name: a pattern as
 * --freeze takes, applied in order, the last match winning.  They belong to
 * the trainer (its plan), not to the model, like the slab offsets.
 */
#include "trainer.h"
#include "command.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- schedule */

double fr_lr_at(const fr_lr_schedule *schedule, double base_lr, long step) {
    long warmup = schedule->warmup_steps;
    if (step < 0)
        step = 0;
    /* LambdaLR(lambda k: (k + 1) / W): the factor first, in double, as
     * Python computes it, then base * factor. */
    if (step < warmup)
        return base_lr * ((double)(step + 1) / (double)warmup);
    long k = step - (warmup > 0 ? warmup : 0);
    switch (schedule->kind) {
    case FR_LR_STEP:
        if (schedule->step_size < 1)
            break; /* not a schedule fr_lr_schedule_check passes */
        return base_lr * pow(schedule->gamma, (double)(k / schedule->step_size));
    case FR_LR_COSINE: {
        if (schedule->t_max < 1)
            break;
        /* CosineAnnealingLR's closed form, in its order of operations. */
        const double pi = 3.14159265358979323846;
        double eta_min = schedule->eta_min;
        return eta_min + (base_lr - eta_min) *
                             (1.0 + cos(pi * (double)k / (double)schedule->t_max)) / 2.0;
    }
    case FR_LR_CONSTANT:
        break;
    }
    return base_lr;
}

int fr_lr_schedule_check(const fr_lr_schedule *s, fr_error *err) {
    if (s->warmup_steps < 0)
        return fr_fail(err, FR_EINVAL, "warmup steps %ld: must be >= 0", s->warmup_steps);
    switch (s->kind) {
    case FR_LR_CONSTANT:
        return FR_OK;
    case FR_LR_STEP:
        if (s->step_size < 1)
            return fr_fail(err, FR_EINVAL, "StepLR step size %ld: must be >= 1", s->step_size);
        if (!(s->gamma > 0.0) || !isfinite(s->gamma))
            return fr_fail(err, FR_EINVAL, "StepLR gamma %g: must be a finite number > 0",
                           s->gamma);
        return FR_OK;
    case FR_LR_COSINE:
        if (s->t_max < 1)
            return fr_fail(err, FR_EINVAL, "CosineAnnealingLR T_max %ld: must be >= 1", s->t_max);
        if (!(s->eta_min >= 0.0) || !isfinite(s->eta_min))
            return fr_fail(err, FR_EINVAL,
                           "CosineAnnealingLR eta_min %g: must be a finite number >= 0",
                           s->eta_min);
        return FR_OK;
    }
    return fr_fail(err, FR_EINVAL, "unknown learning-rate schedule %d", (int)s->kind);
}

/* The shortest %g that reads back as the same double. */
static void format_double(double value, char *buf, size_t len) {
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, len, "%.*g", digits, value);
        if (strtod(buf, NULL) == value)
            return;
    }
}

void fr_lr_schedule_format(const fr_lr_schedule *s, char *buf, size_t len) {
    char a[32], b[32], warmup[64] = "";
    if (s->warmup_steps > 0)
        snprintf(warmup, sizeof warmup, "warmup %ld steps, then ", s->warmup_steps);
    switch (s->kind) {
    case FR_LR_STEP:
        format_double(s->gamma, a, sizeof a);
        snprintf(buf, len, "%sStepLR(step_size=%ld, gamma=%s)", warmup, s->step_size, a);
        return;
    case FR_LR_COSINE:
        format_double(s->eta_min, b, sizeof b);
        snprintf(buf, len, "%sCosineAnnealingLR(T_max=%ld, eta_min=%s)", warmup, s->t_max, b);
        return;
    case FR_LR_CONSTANT:
        break;
    }
    snprintf(buf, len, "%sconstant", warmup);
}

/* ---------------------------------------------------------------- parse */

#define SCHEDULE_SYNTAX "constant, step:STEP_SIZE[:GAMMA] or cosine[:T_MAX[:ETA_MIN]]"

/* Field `field` of a schedule text, a whole number >= 1. */
static int parse_count(const char *text, const char *field, const char *what, long *out,
                       fr_error *err) {
    char *end;
    errno = 0;
    long long value = strtoll(field, &end, 10);
    if (end == field || *end || errno == ERANGE || value < 1 || value > 1000000000000LL)
        return fr_fail(err, FR_EINVAL, "schedule '%s': %s '%s' must be a whole number >= 1", text,
                       what, field);
    *out = (long)value;
    return FR_OK;
}

/* A finite number > 0 (`positive`) or >= 0. */
static int parse_real(const char *text, const char *field, const char *what, bool positive,
                      double *out, fr_error *err) {
    char *end;
    errno = 0;
    double value = strtod(field, &end);
    if (end == field || *end || errno == ERANGE || !isfinite(value) ||
        (positive ? !(value > 0.0) : !(value >= 0.0)))
        return fr_fail(err, FR_EINVAL, "schedule '%s': %s '%s' must be a number %s", text, what,
                       field, positive ? "> 0" : ">= 0");
    *out = value;
    return FR_OK;
}

int fr_lr_schedule_parse(const char *text, fr_lr_schedule *schedule, fr_error *err) {
    char shown[FR_ERROR_LEN / 4], copy[256];
    const char *name = fr_printable(text ? text : "", shown, sizeof shown);
    if (!text || strlen(text) >= sizeof copy)
        return fr_fail(err, FR_EINVAL, "schedule '%s': expected " SCHEDULE_SYNTAX, name);
    /* The fields between colons; an empty one is an error, not a default. */
    strcpy(copy, text);
    char *fields[4];
    int count = 0;
    for (char *p = copy; count < 4;) {
        fields[count++] = p;
        char *colon = strchr(p, ':');
        if (!colon)
            break;
        *colon = '\0';
        p = colon + 1;
    }
    for (int i = 0; i < count; i++)
        if (!*fields[i])
            return fr_fail(err, FR_EINVAL, "schedule '%s': an empty field; expected " SCHEDULE_SYNTAX,
                           name);
    fr_lr_schedule parsed = {.warmup_steps = schedule->warmup_steps};
    int rc = FR_OK;
    if (strcmp(fields[0], "constant") == 0) {
        if (count > 1)
            return fr_fail(err, FR_EINVAL, "schedule '%s': constant takes no values", name);
        parsed.kind = FR_LR_CONSTANT;
    } else if (strcmp(fields[0], "step") == 0) {
        if (count < 2)
            return fr_fail(err, FR_EINVAL,
                           "schedule '%s': step needs a step size (step:STEP_SIZE[:GAMMA])", name);
        if (count > 3)
            return fr_fail(err, FR_EINVAL,
                           "schedule '%s': too many values (step:STEP_SIZE[:GAMMA])", name);
        parsed.kind = FR_LR_STEP;
        parsed.gamma = 0.1; /* StepLR's default */
        rc = parse_count(name, fields[1], "step size", &parsed.step_size, err);
        if (rc == FR_OK && count == 3)
            rc = parse_real(name, fields[2], "gamma", true, &parsed.gamma, err);
    } else if (strcmp(fields[0], "cosine") == 0) {
        if (count > 3)
            return fr_fail(err, FR_EINVAL,
                           "schedule '%s': too many values (cosine[:T_MAX[:ETA_MIN]])", name);
        parsed.kind = FR_LR_COSINE;
        if (count >= 2)
            rc = parse_count(name, fields[1], "T_max", &parsed.t_max, err);
        if (rc == FR_OK && count == 3)
            rc = parse_real(name, fields[2], "eta_min", false, &parsed.eta_min, err);
    } else {
        return fr_fail(err, FR_EINVAL, "schedule '%s': expected " SCHEDULE_SYNTAX, name);
    }
    if (rc == FR_OK)
        *schedule = parsed;
    return rc;
}

/* ------------------------------------------------ per-parameter base rates */

static double base_lr(const fr_trainer *trainer, const fr_train_config *config, int param) {
    if (!trainer->param_lr || param < 0 || param >= trainer->model->param_count)
        return config->lr;
    return trainer->param_lr[param];
}

double fr_param_lr(const fr_trainer *trainer, const fr_train_config *config, int param,
                   long step) {
    return fr_lr_at(&config->lr_schedule, base_lr(trainer, config, param), step);
}

double fr_trainer_lr(const fr_trainer *trainer, int param, long step) {
    return fr_param_lr(trainer, &trainer->config, param, step);
}

int fr_trainer_set_lr(fr_trainer *trainer, const char *pattern, double lr, fr_error *err) {
    if (!(lr >= 0.0) || !isfinite(lr))
        return fr_fail(err, FR_EINVAL, "learning rate %g: must be a finite number >= 0", lr);
    const fr_model *model = trainer->model;
    bool *hits = calloc((size_t)model->param_count + 1, sizeof *hits);
    if (!hits)
        return fr_fail(err, FR_ENOMEM, "out of memory");
    int rc = fr_model_match(model, pattern, hits, err);
    /* An update still in flight was made with the rates of its step. */
    if (rc == FR_OK)
        rc = fr_trainer_sync(trainer, err);
    if (rc == FR_OK && !trainer->param_lr) {
        trainer->param_lr = malloc(((size_t)model->param_count + 1) * sizeof(double));
        if (!trainer->param_lr)
            rc = fr_fail(err, FR_ENOMEM, "out of memory");
        for (int i = 0; rc == FR_OK && i < model->param_count; i++)
            trainer->param_lr[i] = trainer->config.lr;
    }
    for (int i = 0; rc == FR_OK && i < model->param_count; i++)
        if (hits[i])
            trainer->param_lr[i] = lr;
    free(hits);
    return rc;
}

/* ---------------------------------------------------------- checkpoints */

#define META_SCHEDULE "frost.lr_schedule"
#define META_LR "frost.lr"
#define META_PARAM_LRS "frost.param_lrs"

bool fr_trainer_lr_metadata(const fr_trainer *trainer, fr_text texts[FR_LR_META_COUNT],
                            fr_st_meta *meta) {
    char text[256];
    fr_text *schedule = &texts[0], *lr = &texts[1], *lrs = &texts[2];
    fr_lr_schedule_format(&trainer->config.lr_schedule, text, sizeof text);
    fr_text_printf(schedule, "%s", text);
    format_double(trainer->config.lr, text, sizeof text);
    fr_text_printf(lr, "%s", text);
    /* "name=lr,...": the parameters with a rate of their own. */
    fr_text_printf(lrs, "%s", "");
    for (int i = 0; i < trainer->model->param_count; i++) {
        double mine = base_lr(trainer, &trainer->config, i);
        if (mine == trainer->config.lr)
            continue;
        format_double(mine, text, sizeof text);
        fr_text_printf(lrs, "%s%s=%s", lrs->length ? "," : "", trainer->model->params[i].name,
                       text);
    }
    if (schedule->failed || lr->failed || lrs->failed)
        return false;
    /* fr_st_meta holds mutable pointers; the writer only reads them. */
    meta[0] = (fr_st_meta){(char *)META_SCHEDULE, schedule->data};
    meta[1] = (fr_st_meta){(char *)META_LR, lr->data};
    meta[2] = (fr_st_meta){(char *)META_PARAM_LRS, lrs->data};
    return true;
}

/* The rate "a=0.1,b=0.2" records for `name`, else `otherwise`; false when
 * the entry is malformed. */
static bool recorded_lr(const char *list, const char *name, double otherwise, double *out) {
    size_t n = strlen(name);
    *out = otherwise;
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            char *end;
            *out = strtod(p + n + 1, &end);
            return end != p + n + 1 && (*end == ',' || *end == '\0');
        }
        p = comma ? comma + 1 : NULL;
    }
    return true;
}

int fr_trainer_check_lr_metadata(const fr_trainer *trainer, const fr_checkpoint *checkpoint,
                                 const char *path, fr_error *err) {
    const char *schedule = fr_checkpoint_get(checkpoint, META_SCHEDULE);
    const char *lr_text = fr_checkpoint_get(checkpoint, META_LR);
    const char *lrs = fr_checkpoint_get(checkpoint, META_PARAM_LRS);
    if (!schedule && !lr_text && !lrs)
        return FR_OK; /* written before frost recorded them */
    char *end = NULL;
    double lr = lr_text ? strtod(lr_text, &end) : 0.0;
    if (!schedule || !lr_text || !lrs || end == lr_text || *end)
        return fr_fail(err, FR_EFORMAT, "%s: the checkpoint's learning-rate metadata is incomplete or malformed",
                       path);
    const char *why = "(the learning rates must match unless a change is allowed)";
    char mine[256], had[32], have[32];
    fr_lr_schedule_format(&trainer->config.lr_schedule, mine, sizeof mine);
    if (strcmp(schedule, mine) != 0)
        return fr_fail(err, FR_EINVAL,
                       "%s: the checkpoint was trained with learning-rate schedule %s, this run has %s %s",
                       path, schedule, mine, why);
    if (lr != trainer->config.lr) {
        format_double(lr, had, sizeof had);
        format_double(trainer->config.lr, have, sizeof have);
        return fr_fail(err, FR_EINVAL,
                       "%s: the checkpoint was trained with learning rate %s, this run has %s %s",
                       path, had, have, why);
    }
    for (int i = 0; i < trainer->model->param_count; i++) {
        const char *name = trainer->model->params[i].name;
        double recorded, now = base_lr(trainer, &trainer->config, i);
        if (!recorded_lr(lrs, name, lr, &recorded))
            return fr_fail(err, FR_EFORMAT, "%s: the checkpoint's learning rate for '%s' is malformed",
                           path, name);
        if (recorded != now) {
            format_double(recorded, had, sizeof had);
            format_double(now, have, sizeof have);
            return fr_fail(err, FR_EINVAL,
                           "%s: the checkpoint has learning rate %s for '%s', this run %s %s", path,
                           had, name, have, why);
        }
    }
    return FR_OK;
}
