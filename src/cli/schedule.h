/*
 * schedule.h - what changes during a training run, and when: gradual
 * unfreezing (--unfreeze-at, --freeze-at) and evaluation (--eval-every).
 *
 * A point is an epoch (`2`: before epoch 2's first step, epochs counted from
 * 1 as the progress lines count them) or a step (`s500`: after 500 steps,
 * before step 501).  Points are resolved to "steps done" once the data's size
 * is known; every rank resolves the same command line to the same steps, and
 * the ranks compare a hash of it before the first step.
 */
#ifndef FROST_CLI_SCHEDULE_H
#define FROST_CLI_SCHEDULE_H

#include "frost.h"

typedef struct schedule_point {
    const char *arg;     /* the flag's value as given: "2:layer4", "s500:fc*" */
    const char *pattern; /* what follows the first colon */
    bool freeze;         /* --freeze-at; false: --unfreeze-at */
    bool in_steps;       /* `sN`; false: epoch N */
    long at;             /* N */
    long step;           /* steps done when it applies; -1 until resolved */
} schedule_point;

/* An interval of steps (`N`) or of epochs (`Ne`). */
typedef struct schedule_interval {
    long count;     /* 0: none */
    bool in_epochs;
    long steps;     /* resolved */
} schedule_interval;

/* "2:layer4", "s500:fc*" into *point (arg and pattern point into `text`). */
int schedule_parse_point(const char *text, bool freeze, schedule_point *point, fr_error *err);
/* "200" (steps) or "1e" (epochs). */
int schedule_parse_interval(const char *text, schedule_interval *interval, fr_error *err);

/* The flag a point came from, for messages. */
const char *schedule_flag(const schedule_point *point);

/* Every point's pattern names at least one parameter of `model` (tried in
 * order on its frozen set, which is left as it was). */
int schedule_check_patterns(fr_model *model, const schedule_point *points, int count,
                            fr_error *err);

/* Steps for the epoch points and the interval, given the run's length; a
 * point at or after the run's last step is an error. */
int schedule_resolve(schedule_point *points, int count, schedule_interval *interval,
                     long epoch_steps, long total_steps, fr_error *err);

/* Apply, in order of step and then of the command line, the points whose
 * step is in [first, last]; `on_change` (may be NULL) is told of each. */
typedef void (*schedule_report)(const schedule_point *point, size_t trainable_before,
                                size_t trainable_after, void *context);
int schedule_apply(fr_model *model, const schedule_point *points, int count, long first,
                   long last, schedule_report on_change, void *context, fr_error *err);

/* Whether a point applies after `step` steps; the phase (counted from 1)
 * that the step after `step` steps belongs to. */
bool schedule_due(const schedule_point *points, int count, long step);
int schedule_phase(const schedule_point *points, int count, long step);

/* A hash of the points and the interval, for the ranks to compare. */
uint64_t schedule_hash(const schedule_point *points, int count,
                       const schedule_interval *interval);

#endif
