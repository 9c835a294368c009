/*
 * schedule.c - the points where a training run changes its frozen set
 * (--unfreeze-at, --freeze-at) and the interval of its evaluations
 * (--eval-every): parsed, checked against the model and the run's length,
 * and applied.
 *
 * The trainer needs nothing from here: it sees the model's requires_grad
 * flags at each step and re-plans its slab, buckets, optimizer state and
 * feature cache when they changed.  What this file guarantees is that the
 * change comes at the same step on every rank and in every resumed run.
 */
#define _POSIX_C_SOURCE 200809L
#include "schedule.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EPOCH 1000000000L
#define MAX_STEP 1000000000000L

const char *schedule_flag(const schedule_point *point) {
    return point->freeze ? "--freeze-at" : "--unfreeze-at";
}

/* Digits only (no sign, no spaces), at most `max`. */
static bool parse_count(const char *begin, const char *end, long max, long *out) {
    if (begin == end || end - begin > 13)
        return false;
    long value = 0;
    for (const char *c = begin; c < end; c++) {
        if (*c < '0' || *c > '9')
            return false;
        value = value * 10 + (*c - '0');
    }
    if (value > max)
        return false;
    *out = value;
    return true;
}

int schedule_parse_point(const char *text, bool freeze, schedule_point *point, fr_error *err) {
    *point = (schedule_point){.arg = text, .freeze = freeze, .step = -1};
    const char *colon = strchr(text, ':');
    if (!colon)
        return fr_fail(err, FR_EINVAL,
                       "'%s': expected POINT:PATTERN, POINT an epoch (2) or a step (s500)", text);
    point->pattern = colon + 1;
    if (!*point->pattern)
        return fr_fail(err, FR_EINVAL, "'%s': no pattern after the colon", text);
    point->in_steps = text[0] == 's';
    const char *digits = point->in_steps ? text + 1 : text;
    if (!parse_count(digits, colon, point->in_steps ? MAX_STEP : MAX_EPOCH, &point->at))
        return fr_fail(err, FR_EINVAL,
                       "'%s': the point '%.*s' is neither an epoch (2) nor a step (s500)", text,
                       (int)(colon - text), text);
    if (!point->in_steps && point->at == 0)
        return fr_fail(err, FR_EINVAL,
                       "'%s': epochs count from 1 (epoch 1 is the start of the run; s0 is too)",
                       text);
    /* The start is known now; other epochs wait for the data's size. */
    if (point->in_steps)
        point->step = point->at;
    else if (point->at == 1)
        point->step = 0;
    return FR_OK;
}

int schedule_parse_interval(const char *text, schedule_interval *interval, fr_error *err) {
    size_t len = strlen(text);
    bool in_epochs = len > 0 && text[len - 1] == 'e';
    long count;
    if (!parse_count(text, text + len - (in_epochs ? 1 : 0), in_epochs ? MAX_EPOCH : MAX_STEP,
                     &count) ||
        count == 0)
        return fr_fail(err, FR_EINVAL, "'%s': expected a number of steps (200) or of epochs (1e)",
                       text);
    *interval = (schedule_interval){.count = count, .in_epochs = in_epochs};
    return FR_OK;
}

int schedule_check_patterns(fr_model *model, const schedule_point *points, int count,
                            fr_error *err) {
    size_t params = fr_model_param_count(model);
    bool *saved = malloc((params + 1) * sizeof *saved);
    if (!saved)
        return fr_fail(err, FR_ENOMEM, "out of memory");
    for (size_t i = 0; i < params; i++)
        saved[i] = fr_param_requires_grad(fr_model_param(model, i));
    int rc = FR_OK;
    for (int k = 0; k < count && rc == FR_OK; k++) {
        const schedule_point *p = &points[k];
        rc = p->freeze ? fr_model_freeze(model, p->pattern, err)
                       : fr_model_unfreeze(model, p->pattern, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "%s %s: ", schedule_flag(p), p->arg);
    }
    for (size_t i = 0; i < params; i++)
        fr_param_set_requires_grad(fr_model_param(model, i), saved[i]);
    free(saved);
    return rc;
}

int schedule_resolve(schedule_point *points, int count, schedule_interval *interval,
                     long epoch_steps, long total_steps, fr_error *err) {
    for (int k = 0; k < count; k++) {
        schedule_point *p = &points[k];
        p->step = p->in_steps ? p->at : (p->at - 1) * epoch_steps;
        if (p->step == 0 || p->step < total_steps)
            continue;
        if (p->in_steps)
            return fr_fail(err, FR_EINVAL,
                           "%s %s: the run has %ld steps, so no step comes after step %ld",
                           schedule_flag(p), p->arg, total_steps, p->at);
        return fr_fail(err, FR_EINVAL,
                       "%s %s: the run has %ld steps (%ld per epoch), so epoch %ld never starts",
                       schedule_flag(p), p->arg, total_steps, epoch_steps, p->at);
    }
    if (interval && interval->count)
        interval->steps = interval->in_epochs ? interval->count * epoch_steps : interval->count;
    return FR_OK;
}

int schedule_apply(fr_model *model, const schedule_point *points, int count, long first,
                   long last, schedule_report on_change, void *context, fr_error *err) {
    /* Each step of the range that has points, in increasing order; its
     * points in command-line order, as --freeze and --unfreeze apply. */
    for (long step = first - 1;;) {
        long next = -1;
        for (int k = 0; k < count; k++)
            if (points[k].step > step && points[k].step <= last &&
                (next < 0 || points[k].step < next))
                next = points[k].step;
        if (next < 0)
            return FR_OK;
        step = next;
        for (int k = 0; k < count; k++) {
            const schedule_point *p = &points[k];
            if (p->step != step)
                continue;
            size_t before = fr_model_trainable_numel(model);
            int rc = p->freeze ? fr_model_freeze(model, p->pattern, err)
                               : fr_model_unfreeze(model, p->pattern, err);
            if (rc != FR_OK) {
                fr_error_prefix(err, "%s %s: ", schedule_flag(p), p->arg);
                return rc;
            }
            if (on_change)
                on_change(p, before, fr_model_trainable_numel(model), context);
        }
    }
}

bool schedule_due(const schedule_point *points, int count, long step) {
    for (int k = 0; k < count; k++)
        if (points[k].step == step)
            return true;
    return false;
}

int schedule_phase(const schedule_point *points, int count, long step) {
    int phase = 1;
    for (int k = 0; k < count; k++) {
        long s = points[k].step;
        if (s <= 0 || s > step)
            continue;
        bool first_at_s = true; /* points at one step start one phase */
        for (int j = 0; j < k; j++)
            first_at_s = first_at_s && points[j].step != s;
        phase += first_at_s;
    }
    return phase;
}

/* FNV-1a over what decides what happens when (the steps follow from it and
 * from the dataset's size, which the ranks compare too). */
static uint64_t hash_bytes(uint64_t hash, const void *data, size_t len) {
    const unsigned char *bytes = data;
    for (size_t i = 0; i < len; i++)
        hash = (hash ^ bytes[i]) * 0x100000001b3ULL;
    return hash;
}

uint64_t schedule_hash(const schedule_point *points, int count,
                       const schedule_interval *interval) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (int k = 0; k < count; k++) {
        const schedule_point *p = &points[k];
        hash = hash_bytes(hash, p->arg, strlen(p->arg) + 1);
        hash = hash_bytes(hash, &p->freeze, sizeof p->freeze);
    }
    if (interval) {
        hash = hash_bytes(hash, &interval->count, sizeof interval->count);
        hash = hash_bytes(hash, &interval->in_epochs, sizeof interval->in_epochs);
    }
    return hash;
}
