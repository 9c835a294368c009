/*
 * test_lr_schedule.c - learning rates and gradient clipping as a specification:
 * the schedule is a pure function of the step with torch's closed forms, the
 * schedule text parses and fails one way per mistake, each step updates with
 * its own step's rate and each parameter with its own base rate, clipping
 * scales the averaged gradient to the norm (the same on 1, 2 and 3 threads),
 * and a checkpoint records the rates and refuses a run that changed them.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, in test_files.h */

#include "internal.h"
#include "command.h"
#include "tap.h"
#include "test_files.h"

#include <math.h>
#include <string.h>

#define MLP "fc1 = linear(10, 6); relu; fc2 = linear(6, 3)"
#define BATCH 8

static fr_model *mlp(void) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse(MLP, "test", &m, &err) != FR_OK)
        tap_diag("%s", err.msg);
    else
        fr_model_init(m, 5, NULL);
    return m;
}

static void batch(int step, float *x, int32_t *labels) {
    fr_rng rng;
    fr_rng_seed(&rng, 100 + (uint64_t)step);
    for (int i = 0; i < BATCH * 10; i++)
        x[i] = fr_rng_uniform(&rng) * 2.0f - 1.0f;
    for (int i = 0; i < BATCH; i++)
        labels[i] = (int32_t)fr_rng_below(&rng, 3);
}

static fr_train_config sgd(double lr, int threads) {
    fr_train_config c;
    fr_train_config_default(&c);
    c.lr = lr;
    c.threads = threads;
    c.max_batch = BATCH;
    return c;
}

static fr_trainer *trainer_for(fr_model *m, const fr_train_config *c) {
    fr_trainer *t = NULL;
    fr_error err = {0};
    if (fr_trainer_new(m, c, &t, &err) != FR_OK)
        tap_diag("%s", err.msg);
    return t;
}

/* All parameters, flattened, into out (returns the count). */
static size_t weights_of(fr_model *m, float *out) {
    size_t n = 0;
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        memcpy(out + n, fr_param_data(p), fr_param_numel(p) * sizeof(float));
        n += fr_param_numel(p);
    }
    return n;
}

static void copy_params(fr_model *to, fr_model *from) {
    for (size_t i = 0; i < fr_model_param_count(from); i++)
        memcpy(fr_param_data(fr_model_param(to, i)), fr_param_data(fr_model_param(from, i)),
               fr_param_numel(fr_model_param(from, i)) * sizeof(float));
}

/* ------------------------------------------------------------ schedule */

static bool near(double a, double b) { return fabs(a - b) <= 1e-15 * fabs(b) + 1e-18; }

static void test_closed_forms(void) {
    fr_lr_schedule step = {.kind = FR_LR_STEP, .step_size = 3, .gamma = 0.5};
    bool ok = true;
    for (long k = 0; k < 10; k++)
        ok = ok && fr_lr_at(&step, 0.1, k) == 0.1 * pow(0.5, (double)(k / 3));
    tap_ok(ok && fr_lr_at(&step, 0.1, 2) == 0.1 && fr_lr_at(&step, 0.1, 3) == 0.05,
           "StepLR: base * gamma^(k / step_size) (0.1 for k < 3, 0.05 from k = 3)");

    fr_lr_schedule cosine = {.kind = FR_LR_COSINE, .t_max = 10, .eta_min = 0.01};
    tap_ok(fr_lr_at(&cosine, 0.1, 0) == 0.1 && near(fr_lr_at(&cosine, 0.1, 5), 0.055) &&
               near(fr_lr_at(&cosine, 0.1, 10), 0.01) && near(fr_lr_at(&cosine, 0.1, 15), 0.055) &&
               near(fr_lr_at(&cosine, 0.1, 20), 0.1),
           "CosineAnnealingLR: base at 0, halfway at T_max/2, eta_min at T_max, and back up past "
           "it as torch's (%.17g at 15)", fr_lr_at(&cosine, 0.1, 15));

    fr_lr_schedule warm = {.warmup_steps = 4};
    tap_ok(fr_lr_at(&warm, 0.1, 0) == 0.1 * (1.0 / 4.0) && fr_lr_at(&warm, 0.1, 2) == 0.1 * (3.0 / 4.0) &&
               fr_lr_at(&warm, 0.1, 3) == 0.1 && fr_lr_at(&warm, 0.1, 100) == 0.1,
           "warmup alone: (k + 1) / W of the base rate for k < W, then the base rate");

    fr_lr_schedule warm_step = {.kind = FR_LR_STEP, .step_size = 1, .gamma = 0.5, .warmup_steps = 2};
    double got[5];
    for (int k = 0; k < 5; k++)
        got[k] = fr_lr_at(&warm_step, 0.1, k);
    tap_ok(got[0] == 0.05 && got[1] == 0.1 && got[2] == 0.1 && got[3] == 0.05 && got[4] == 0.025,
           "warmup then StepLR: the schedule starts at step W with its own k = 0 (SequentialLR): "
           "%g %g %g %g %g", got[0], got[1], got[2], got[3], got[4]);
}

static void test_parse_and_check(void) {
    fr_error err = {0};
    fr_lr_schedule s = {.warmup_steps = 7};
    int rc = fr_lr_schedule_parse("step:10", &s, &err);
    tap_ok(rc == FR_OK && s.kind == FR_LR_STEP && s.step_size == 10 && s.gamma == 0.1 &&
               s.warmup_steps == 7,
           "'step:10' is StepLR(10, gamma=0.1), the warmup left as it was");
    rc = fr_lr_schedule_parse("cosine", &s, &err);
    tap_ok(rc == FR_OK && s.kind == FR_LR_COSINE && s.t_max == 0 && s.eta_min == 0.0,
           "'cosine' leaves T_max 0 for the caller to fill in");
    rc = fr_lr_schedule_parse("cosine:50:0.001", &s, &err);
    char text[128];
    fr_lr_schedule_format(&s, text, sizeof text);
    tap_ok(rc == FR_OK && strcmp(text, "warmup 7 steps, then CosineAnnealingLR(T_max=50, eta_min=0.001)") == 0,
           "'cosine:50:0.001' reads and formats with torch's names: %s", text);

    const char *bad[] = {"", "linear", "step", "step:0", "step:x", "step:5:0", "step:5:-1",
                         "step:5:inf", "step:1:2:3", "cosine:0", "cosine:5:-0.1", "cosine:5:1:2",
                         "constant:1", "step::1", "cosine:"};
    int refused = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fr_lr_schedule before = {.kind = FR_LR_STEP, .step_size = 4, .gamma = 0.5}, t = before;
        err = (fr_error){0};
        if (fr_lr_schedule_parse(bad[i], &t, &err) == FR_EINVAL && strchr(err.msg, '\n') == NULL &&
            strstr(err.msg, "schedule '") && memcmp(&t, &before, sizeof t) == 0)
            refused++;
        else
            tap_diag("'%s' -> %s", bad[i], err.msg);
    }
    tap_ok(refused == (int)(sizeof bad / sizeof bad[0]),
           "%d malformed schedules are each refused with one line, the schedule untouched", refused);

    fr_lr_schedule checks[] = {{.warmup_steps = -1},
                               {.kind = FR_LR_STEP, .step_size = 0, .gamma = 0.5},
                               {.kind = FR_LR_STEP, .step_size = 2, .gamma = 0.0},
                               {.kind = FR_LR_COSINE, .t_max = 0},
                               {.kind = FR_LR_COSINE, .t_max = 3, .eta_min = -1.0},
                               {.kind = (fr_lr_schedule_kind)7}};
    int failed = 0;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        fr_train_config c = sgd(0.1, 1);
        c.lr_schedule = checks[i];
        fr_model *m = mlp();
        fr_trainer *t = NULL;
        failed += fr_trainer_new(m, &c, &t, &err) == FR_EINVAL && !t;
        fr_trainer_free(t);
        fr_model_free(m);
    }
    fr_train_config c = sgd(0.1, 1);
    c.clip_grad_norm = -1.0;
    fr_model *m = mlp();
    fr_trainer *t = NULL;
    rc = fr_trainer_new(m, &c, &t, &err);
    tap_ok(failed == 6 && rc == FR_EINVAL && strstr(err.msg, "clipping"),
           "fr_trainer_new refuses each out-of-range schedule and a negative clipping norm (%s)",
           err.msg);
    fr_trainer_free(t);
    fr_model_free(m);
}

/* ------------------------------------------------------- rates in steps */

static void test_rates_in_steps(void) {
    static float x[BATCH * 10], a[256], b[256], initial[256];
    int32_t labels[BATCH];
    fr_error err = {0};

    /* Each step's update uses that step's rate: SGD without momentum keeps
     * no state, so one trainer per step at a constant rate is the same.
     * Every step must succeed and every parameter move: two same-seed models
     * that never trained would compare equal too. */
    fr_model *scheduled = mlp(), *by_hand = mlp();
    size_t n = weights_of(scheduled, initial);
    fr_train_config c = sgd(0.5, 1);
    c.lr_schedule = (fr_lr_schedule){.kind = FR_LR_COSINE, .t_max = 4, .eta_min = 0.05, .warmup_steps = 2};
    fr_trainer *t = trainer_for(scheduled, &c);
    int rc = t ? FR_OK : FR_EINVAL;
    for (int k = 0; k < 6 && rc == FR_OK; k++) {
        batch(k, x, labels);
        rc = fr_trainer_step(t, x, labels, BATCH, NULL, NULL, &err);
        fr_train_config one = sgd(fr_lr_at(&c.lr_schedule, 0.5, k), 1);
        fr_trainer *step = trainer_for(by_hand, &one);
        if (rc == FR_OK)
            rc = step ? fr_trainer_step(step, x, labels, BATCH, NULL, NULL, &err) : FR_EINVAL;
        if (rc != FR_OK)
            tap_diag("step %d: %s", k, err.msg);
        fr_trainer_free(step);
    }
    weights_of(scheduled, a);
    weights_of(by_hand, b);
    size_t moved = 0, at = 0;
    for (size_t i = 0; i < fr_model_param_count(scheduled); i++) {
        size_t numel = fr_param_numel(fr_model_param(scheduled, i));
        moved += memcmp(a + at, initial + at, numel * sizeof(float)) != 0;
        at += numel;
    }
    tap_ok(rc == FR_OK && moved == fr_model_param_count(scheduled) &&
               memcmp(a, b, n * sizeof(float)) == 0 && t && fr_trainer_lr(t, -1, 1) == 0.5 &&
               fr_trainer_lr(t, -1, 0) == 0.25,
           "step k updates with the schedule's rate at k (warmup, then cosine): the weights of 6 "
           "steps (every step succeeded, %zu of %zu parameters moved) equal 6 one-step trainers "
           "at those rates, bit for bit", moved, fr_model_param_count(scheduled));
    fr_trainer_free(t);

    /* Per-parameter rates: patterns in order, the last match winning. */
    fr_model *m = mlp();
    fr_model *before = mlp();
    copy_params(before, m);
    c = sgd(0.1, 2);
    t = trainer_for(m, &c);
    int rc1 = fr_trainer_set_lr(t, "fc*", 0.5, &err);
    int rc2 = fr_trainer_set_lr(t, "fc1", 0.0, &err);
    int rc3 = fr_trainer_set_lr(t, "fc2.bias", 0.2, &err);
    tap_ok(rc1 == FR_OK && rc2 == FR_OK && rc3 == FR_OK && fr_trainer_lr(t, 0, 0) == 0.0 &&
               fr_trainer_lr(t, 1, 0) == 0.0 && fr_trainer_lr(t, 2, 0) == 0.5 &&
               fr_trainer_lr(t, 3, 0) == 0.2 && fr_trainer_lr(t, -1, 0) == 0.1,
           "fr_trainer_set_lr: a glob, then a layer name, then one parameter; the last match wins");
    int nomatch = fr_trainer_set_lr(t, "conv*", 0.1, &err);
    tap_ok(nomatch == FR_ENOMATCH && strstr(err.msg, "'conv*' matches no parameter"),
           "a pattern matching no parameter is FR_ENOMATCH: %s", err.msg);
    int negative = fr_trainer_set_lr(t, "fc1", -0.5, &err);
    tap_ok(negative == FR_EINVAL && strstr(err.msg, "-0.5"), "a negative rate is refused: %s",
           err.msg);
    batch(0, x, labels);
    int stepped = fr_trainer_step(t, x, labels, BATCH, NULL, NULL, &err);
    fr_param *w1 = fr_model_find_param(m, "fc1.weight"), *w2 = fr_model_find_param(m, "fc2.weight");
    tap_ok(stepped == FR_OK &&
               fr_param_checksum(w1) == fr_param_checksum(fr_model_find_param(before, "fc1.weight")) &&
               fr_param_checksum(w2) != fr_param_checksum(fr_model_find_param(before, "fc2.weight")),
           "fc1 at rate 0 keeps its bits, fc2 at 0.5 moves (%s)",
           stepped == FR_OK ? "ok" : err.msg);
    fr_trainer_free(t);
    fr_model_free(m);
    fr_model_free(before);
    fr_model_free(scheduled);
    fr_model_free(by_hand);
}

/* --------------------------------------------------------------- clipping */

/* One step from the same weights with `threads` and `clip`: the weights
 * after it in w, the norm it reported.  Returns the weights' count, or 0 when
 * the step failed. */
static size_t clipped_step(int threads, double clip, float *w, double *norm) {
    static float x[BATCH * 10];
    int32_t labels[BATCH];
    fr_error err = {0};
    fr_model *m = mlp();
    fr_train_config c = sgd(1.0, threads);
    c.clip_grad_norm = clip;
    fr_trainer *t = trainer_for(m, &c);
    *norm = fr_trainer_grad_norm(t);
    bool nan_before = isnan(*norm);
    batch(3, x, labels);
    int rc = t ? fr_trainer_step(t, x, labels, BATCH, NULL, NULL, &err) : FR_EINVAL;
    if (rc != FR_OK)
        tap_diag("%d threads, clip %g: %s", threads, clip, err.msg);
    *norm = nan_before ? fr_trainer_grad_norm(t) : -1.0;
    size_t n = weights_of(m, w);
    fr_trainer_free(t);
    fr_model_free(m);
    return rc == FR_OK ? n : 0;
}

static void test_clipping(void) {
    static float w0[256], plain[256], clipped[256], loose[256], two[256], three[256];
    double norm_plain, norm, norm_loose, norm2, norm3;
    fr_model *m = mlp();
    size_t n = weights_of(m, w0);
    fr_model_free(m);
    bool plain_ran = clipped_step(1, 0.0, plain, &norm_plain) == n;
    /* lr 1, no momentum: the update is the averaged gradient itself. */
    double squares = 0.0;
    for (size_t i = 0; i < n; i++)
        squares += ((double)w0[i] - plain[i]) * ((double)w0[i] - plain[i]);
    double expected = sqrt(squares), max_norm = expected / 4.0;
    bool clipped_ran = clipped_step(1, max_norm, clipped, &norm) == n;
    tap_ok(plain_ran && clipped_ran && expected > 0.0 && isnan(norm_plain) &&
               fabs(norm - expected) < 1e-5 * expected,
           "the reported norm is the averaged gradient's L2 norm (%.7g, expected %.7g); NAN "
           "without clipping", norm, expected);
    double coef = max_norm / (norm + 1e-6), worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double want = w0[i] - coef * ((double)w0[i] - plain[i]);
        worst = fmax(worst, fabs(clipped[i] - want));
    }
    tap_ok(plain_ran && clipped_ran && worst < 1e-6,
           "clipped to a quarter of the norm, every gradient is scaled by "
           "max_norm / (norm + 1e-6) (largest difference %.2g)", worst);
    /* expected > 0: the unclipped step moved the weights, so equal bits are
     * not two steps that did nothing. */
    bool loose_ran = clipped_step(1, 1e6, loose, &norm_loose) == n;
    tap_ok(plain_ran && loose_ran && expected > 0.0 &&
               memcmp(loose, plain, n * sizeof(float)) == 0 &&
               fabs(norm_loose - expected) < 1e-5 * expected,
           "a norm above the gradient's changes nothing, bit for bit");
    bool two_ran = clipped_step(2, max_norm, two, &norm2) == n;
    bool three_ran = clipped_step(3, max_norm, three, &norm3) == n;
    double spread = 0.0;
    for (size_t i = 0; i < n; i++)
        spread = fmax(spread, fmax(fabs(two[i] - clipped[i]), fabs(three[i] - clipped[i])));
    tap_ok(clipped_ran && two_ran && three_ran && fabs(norm2 - norm) <= 1e-6 * norm &&
               fabs(norm3 - norm) <= 1e-6 * norm && spread < 1e-6,
           "2 and 3 threads give the same norm and update within rounding (%.9g %.9g %.9g; "
           "weights %.2g)", norm, norm2, norm3, spread);
}

/* ------------------------------------------------------------ checkpoints */

static void test_checkpoint(void) {
    static float x[BATCH * 10];
    int32_t labels[BATCH];
    fr_error err = {0};
    if (!make_test_dir("lr-schedule"))
        return;
    const char *path = in_test_dir("c.safetensors");
    fr_model *m = mlp();
    fr_train_config c = sgd(0.1, 1);
    c.lr_schedule = (fr_lr_schedule){.kind = FR_LR_COSINE, .t_max = 10, .warmup_steps = 2};
    fr_trainer *t = trainer_for(m, &c);
    int rc = fr_trainer_set_lr(t, "fc1", 0.01, &err);
    batch(0, x, labels);
    if (rc == FR_OK)
        rc = fr_trainer_step(t, x, labels, BATCH, NULL, NULL, &err);
    if (rc == FR_OK)
        rc = fr_trainer_save_checkpoint(t, path, NULL, 0, &err);
    fr_checkpoint *cp = NULL;
    if (rc == FR_OK)
        rc = fr_checkpoint_open(path, &cp, &err);
    if (rc != FR_OK)
        tap_diag("%s", err.msg);
    const char *schedule = cp ? fr_checkpoint_get(cp, "frost.lr_schedule") : NULL;
    const char *lrs = cp ? fr_checkpoint_get(cp, "frost.param_lrs") : NULL;
    tap_ok(rc == FR_OK && schedule && lrs &&
               strcmp(schedule, "warmup 2 steps, then CosineAnnealingLR(T_max=10, eta_min=0)") == 0 &&
               strcmp(lrs, "fc1.weight=0.01,fc1.bias=0.01") == 0,
           "a checkpoint records the schedule (%s) and the rates of their own (%s)",
           schedule ? schedule : "-", lrs ? lrs : "-");

    /* The same rates resume; another schedule or rate is refused unless allowed. */
    fr_model *m2 = mlp();
    fr_trainer *same = trainer_for(m2, &c);
    int rc_same = fr_trainer_set_lr(same, "fc1.*", 0.01, &err);
    if (rc_same == FR_OK)
        rc_same = cp ? fr_trainer_restore(same, cp, 0, &err) : -1;
    tap_ok(rc_same == FR_OK && fr_trainer_steps_done(same) == 1,
           "the same rates resume at the checkpoint's step (%s)", rc_same == FR_OK ? "ok" : err.msg);

    fr_train_config other = c;
    other.lr_schedule.t_max = 12;
    fr_trainer *changed = trainer_for(m2, &other);
    int rc_lr = fr_trainer_set_lr(changed, "fc1", 0.01, &err);
    if (rc_lr != FR_OK)
        tap_diag("fr_trainer_set_lr: %s", err.msg);
    int rc_changed = cp ? fr_trainer_restore(changed, cp, FR_RESTORE_FREEZE_CHANGE, &err) : -1;
    tap_ok(rc_lr == FR_OK && rc_changed == FR_EINVAL && strstr(err.msg, "T_max=10") &&
               strstr(err.msg, "T_max=12"),
           "another schedule is refused, naming both: %s", err.msg);
    int rc_allowed = cp ? fr_trainer_restore(changed, cp, FR_RESTORE_LR_CHANGE, &err) : -1;
    tap_ok(rc_lr == FR_OK && rc_allowed == FR_OK, "FR_RESTORE_LR_CHANGE allows it");

    fr_trainer *rates = trainer_for(m2, &c);
    rc_lr = fr_trainer_set_lr(rates, "fc1", 0.01, &err);
    if (rc_lr == FR_OK)
        rc_lr = fr_trainer_set_lr(rates, "fc2.bias", 0.3, &err);
    if (rc_lr != FR_OK)
        tap_diag("fr_trainer_set_lr: %s", err.msg);
    int rc_rates = cp ? fr_trainer_restore(rates, cp, 0, &err) : -1;
    tap_ok(rc_lr == FR_OK && rc_rates == FR_EINVAL && strstr(err.msg, "'fc2.bias'"),
           "another per-parameter rate is refused, naming the parameter: %s", err.msg);
    fr_checkpoint_close(cp);
    fr_trainer_free(t);
    fr_trainer_free(same);
    fr_trainer_free(changed);
    fr_trainer_free(rates);
    fr_model_free(m);
    fr_model_free(m2);
    remove_test_dir();
}

int main(void) {
    tap_plan(23);
    test_closed_forms();
    test_parse_and_check();
    test_rates_in_steps();
    test_clipping();
    test_checkpoint();
    return tap_done();
}
