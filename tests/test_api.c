/*
 * test_api.c - the library seams that `frost train --resume`, `frost eval` and
 * `--init` stand on, tested through the public API (frost.h) alone:
 *   - a checkpoint saved after a few steps and restored into a fresh trainer
 *     continues exactly as the uninterrupted run did: the next steps' losses
 *     and the final weights are bitwise equal, for SGD and Adam(W);
 *   - fr_trainer_evaluate gives the loss and accuracy computed by hand on a
 *     model small enough to do so, and changes nothing;
 *   - fr_model_load_weights refuses a file with a missing, an extra or a
 *     wrongly shaped tensor with a message naming that tensor, and leaves
 *     the model as it was.
 * Files go to a private directory under /tmp that is removed at the end.
 */
#define _POSIX_C_SOURCE 200809L

#include "frost.h"
#include "tap.h"
#include "test_files.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>



/* A parsed model with seeded weights; NULL (and a diagnostic) if it fails. */
static fr_model *model_from(const char *spec, uint64_t seed) {
    fr_model *model = NULL;
    fr_error err = {0};
    if (fr_model_parse(spec, "test", &model, &err) != FR_OK ||
        fr_model_init(model, seed, &err) != FR_OK) {
        tap_diag("%s: %s", spec, err.msg);
        fr_model_free(model);
        return NULL;
    }
    return model;
}


/* ------------------------------------------------------ checkpoint/resume */

#define MLP "input 1 2 3; fc1 = linear(6, 8); relu; fc2 = linear(8, 3)"
#define MLP_NUMEL (6 * 8 + 8 + 8 * 3 + 3)
#define BATCH 5
#define STEPS_BEFORE 3
#define STEPS_AFTER 4

/* Batch `step` of a fixed sequence: inputs from a small LCG, labels cycling. */
static void batch_for_step(int step, float x[BATCH * 6], int32_t labels[BATCH]) {
    uint32_t state = 12345u + 977u * (uint32_t)step;
    for (int i = 0; i < BATCH * 6; i++) {
        state = state * 1664525u + 1013904223u;
        x[i] = (float)(state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    for (int i = 0; i < BATCH; i++)
        labels[i] = (step + i) % 3;
}

static fr_trainer *trainer_for(fr_model *model, fr_optimizer_kind optimizer) {
    fr_train_config config;
    fr_train_config_default(&config);
    config.optimizer = optimizer;
    config.lr = optimizer == FR_SGD ? 0.1 : 0.01;
    config.momentum = optimizer == FR_SGD ? 0.9 : 0.0;
    config.weight_decay = 0.01;
    config.threads = 2;
    config.max_batch = BATCH;
    fr_trainer *trainer = NULL;
    fr_error err = {0};
    if (fr_trainer_new(model, &config, &trainer, &err) != FR_OK)
        tap_diag("fr_trainer_new: %s", err.msg);
    return trainer;
}

/* Steps [first, first + count) of the sequence; each loss into `losses`.
 * FR_OK or the first failure's status. */
static int run_steps(fr_trainer *trainer, int first, int count, double *losses) {
    float x[BATCH * 6];
    int32_t labels[BATCH];
    fr_error err = {0};
    for (int s = 0; s < count; s++) {
        batch_for_step(first + s, x, labels);
        int status = fr_trainer_step(trainer, x, labels, BATCH, &losses[s], NULL, &err);
        if (status != FR_OK) {
            tap_diag("step %d: %s", first + s, err.msg);
            return status;
        }
    }
    return FR_OK;
}

/*
 * Trains STEPS_BEFORE steps, checkpoints, trains STEPS_AFTER more; then a
 * fresh model (other seed) and trainer restore the checkpoint and train the
 * same STEPS_AFTER steps.  Losses and weights must agree bit for bit.  With
 * `frozen` that layer is frozen before either trainer is made.
 */
static void test_resume(fr_optimizer_kind optimizer, const char *frozen, const char *what) {
    const char *path = in_test_dir("resume.safetensors");
    fr_error err = {0};
    fr_model *original = model_from(MLP, 5), *resumed = model_from(MLP, 99);
    if (frozen) {
        fr_model_freeze_layer(original, frozen, NULL);
        fr_model_freeze_layer(resumed, frozen, NULL);
    }
    fr_trainer *trainer = trainer_for(original, optimizer);
    double before[STEPS_BEFORE], after[STEPS_AFTER], again[STEPS_AFTER];
    float weights_at_checkpoint[MLP_NUMEL], weights[MLP_NUMEL], weights_again[MLP_NUMEL];

    int status = run_steps(trainer, 0, STEPS_BEFORE, before);
    copy_weights(original, weights_at_checkpoint, MLP_NUMEL);
    fr_meta note = {"test.note", "resume"};
    if (status == FR_OK)
        status = fr_trainer_save_checkpoint(trainer, path, &note, 1, &err);
    tap_ok(status == FR_OK, "%s: %d steps, then fr_trainer_save_checkpoint succeeds (%s)", what,
           STEPS_BEFORE, status ? err.msg : "ok");
    if (run_steps(trainer, STEPS_BEFORE, STEPS_AFTER, after) != FR_OK)
        memset(after, 0, sizeof after);
    copy_weights(original, weights, MLP_NUMEL);

    fr_checkpoint *checkpoint = NULL;
    fr_trainer *fresh = trainer_for(resumed, optimizer);
    status = fr_checkpoint_open(path, &checkpoint, &err);
    if (status == FR_OK)
        status = fr_trainer_restore(fresh, checkpoint, false, &err);
    const char *kept = checkpoint ? fr_checkpoint_get(checkpoint, "test.note") : NULL;
    tap_ok(status == FR_OK && fr_trainer_steps_done(fresh) == STEPS_BEFORE && kept &&
               strcmp(kept, "resume") == 0,
           "%s: a fresh trainer restores it: step counter %ld, the caller's metadata kept (%s)",
           what, fr_trainer_steps_done(fresh), status ? err.msg : "ok");
    fr_checkpoint_close(checkpoint);
    copy_weights(resumed, weights_again, MLP_NUMEL);
    tap_ok(memcmp(weights_again, weights_at_checkpoint, sizeof weights) == 0,
           "%s: the restored weights are the checkpointed ones, bitwise", what);

    if (run_steps(fresh, STEPS_BEFORE, STEPS_AFTER, again) != FR_OK)
        memset(again, 0xff, sizeof again);
    copy_weights(resumed, weights_again, MLP_NUMEL);
    tap_ok(memcmp(after, again, sizeof after) == 0,
           "%s: the %d steps after the restore give the uninterrupted run's losses bitwise "
           "(%.9g ... %.9g)",
           what, STEPS_AFTER, again[0], again[STEPS_AFTER - 1]);
    tap_ok(memcmp(weights, weights_again, sizeof weights) == 0 &&
               fr_model_checksum(original) == fr_model_checksum(resumed),
           "%s: and end with its weights, bitwise", what);
    fr_trainer_free(trainer);
    fr_trainer_free(fresh);
    fr_model_free(original);
    fr_model_free(resumed);
}

/* What a checkpoint may not be restored into; and that it is a weights file. */
static void test_restore_refused(void) {
    const char *path = in_test_dir("sgd.safetensors");
    fr_error err = {0};
    fr_model *model = model_from(MLP, 5);
    fr_trainer *trainer = trainer_for(model, FR_SGD);
    double losses[2];
    int status = run_steps(trainer, 0, 2, losses);
    if (status == FR_OK)
        status = fr_trainer_save_checkpoint(trainer, path, NULL, 0, &err);
    if (status != FR_OK)
        tap_diag("%s", err.msg);
    uint64_t saved = fr_model_checksum(model);

    fr_checkpoint *checkpoint = NULL;
    fr_checkpoint_open(path, &checkpoint, &err);
    fr_model *other = model_from(MLP, 6);
    fr_trainer *adam = trainer_for(other, FR_ADAM);
    status = checkpoint ? fr_trainer_restore(adam, checkpoint, false, &err) : FR_OK;
    tap_ok(status != FR_OK && strstr(err.msg, "sgd") && strstr(err.msg, "adam") &&
               !strchr(err.msg, '\n') && fr_trainer_steps_done(adam) == 0,
           "restoring an SGD checkpoint into an Adam trainer is refused naming both: %s",
           err.msg);
    fr_trainer_free(adam);
    fr_model_free(other);

    other = model_from("input 1 2 3; fc1 = linear(6, 8); relu; fc2 = linear(8, 4)", 6);
    fr_trainer *wider = trainer_for(other, FR_SGD);
    status = checkpoint ? fr_trainer_restore(wider, checkpoint, false, &err) : FR_OK;
    tap_ok(status != FR_OK && strstr(err.msg, "fc2.weight") && strstr(err.msg, path),
           "restoring into a model whose fc2 has another shape is refused naming fc2.weight: %s",
           err.msg);
    fr_trainer_free(wider);
    fr_model_free(other);
    fr_checkpoint_close(checkpoint);

    other = model_from(MLP, 7);
    status = fr_model_load_weights(other, path, &err);
    tap_ok(status == FR_OK && fr_model_checksum(other) == saved,
           "a checkpoint loads as a weights file: the parameters it was saved with (%s)",
           status ? err.msg : "ok");
    fr_model_free(other);
    fr_trainer_free(trainer);
    fr_model_free(model);
}

/* --------------------------------------------------------------- evaluate */

/*
 * fc = linear(2, 2) with identity weights and no bias: the logits are the
 * inputs.  Sample 0, [ln 3, 0] of class 0: p0 = 3/4, loss ln(4/3), right.
 * Sample 1, [0, ln 3] of class 0: p0 = 1/4, loss ln 4, wrong (argmax 1).
 */
static void test_evaluate(void) {
    fr_model *model = model_from("input 1 1 2; fc = linear(2, 2)", 1);
    if (!model) {
        for (int i = 0; i < 3; i++)
            tap_ok(0, "evaluate: the model builds");
        return;
    }
    float *weight = fr_param_data(fr_model_find_param(model, "fc.weight"));
    float *bias = fr_param_data(fr_model_find_param(model, "fc.bias"));
    const float identity[4] = {1, 0, 0, 1};
    memcpy(weight, identity, sizeof identity);
    bias[0] = bias[1] = 0.0f;
    const float x[4] = {logf(3.0f), 0.0f, 0.0f, logf(3.0f)};
    const int32_t labels[2] = {0, 0};
    uint64_t weights_before = fr_model_checksum(model);

    fr_train_config config;
    fr_train_config_default(&config);
    config.threads = 2; /* one sample each */
    config.max_batch = 2;
    fr_trainer *trainer = NULL;
    fr_error err = {0};
    double loss = -1.0;
    long correct = -1;
    int status = fr_trainer_new(model, &config, &trainer, &err);
    if (status == FR_OK)
        status = fr_trainer_evaluate(trainer, x, labels, 2, &loss, &correct, &err);
    double expected = (log(4.0 / 3.0) + log(4.0)) / 2.0;
    tap_ok(status == FR_OK && fabs(loss - expected) < 1e-6 && correct == 1,
           "evaluate, cross-entropy: mean loss (ln(4/3) + ln 4) / 2 = %.7f, got %.7f; "
           "1 of 2 right, got %ld (%s)",
           expected, loss, correct, status ? err.msg : "ok");
    tap_ok(fr_model_checksum(model) == weights_before && fr_trainer_steps_done(trainer) == 0,
           "evaluate changes no weight and counts no step");
    fr_trainer_free(trainer);

    /* MSE, the mean over every output: errors 0, -1, 0, ln 3. */
    config.loss = FR_MSE;
    const float targets[4] = {logf(3.0f), 1.0f, 0.0f, 0.0f};
    loss = -1.0;
    status = fr_trainer_new(model, &config, &trainer, &err);
    if (status == FR_OK)
        status = fr_trainer_evaluate(trainer, x, targets, 2, &loss, NULL, &err);
    expected = (1.0 + log(3.0) * log(3.0)) / 4.0;
    tap_ok(status == FR_OK && fabs(loss - expected) < 1e-6,
           "evaluate, MSE: mean of the squared errors (1 + ln(3)^2) / 4 = %.7f, got %.7f (%s)",
           expected, loss, status ? err.msg : "ok");
    fr_trainer_free(trainer);
    fr_model_free(model);
}

/* ----------------------------------------------------------- load weights */

#define SMALL "input 1 2 2; fc1 = linear(4, 3); relu; fc2 = linear(3, 2)"

/* Saves the weights of the model `spec` to `name`; the path. */
static const char *weights_of(const char *spec, const char *name) {
    const char *path = in_test_dir(name);
    fr_model *model = model_from(spec, 3);
    fr_error err = {0};
    if (!model || fr_model_save_weights(model, path, &err) != FR_OK)
        tap_diag("saving %s: %s", name, err.msg);
    fr_model_free(model);
    return path;
}

/* Loading `path` into `model` fails with `status`, a one-line message naming
 * the file and containing `want` and `want_too`, and changes no weight. */
static void expect_load_refused(fr_model *model, const char *path, int status, const char *want,
                                const char *want_too, const char *what) {
    fr_error err = {0};
    uint64_t before = fr_model_checksum(model);
    int got = fr_model_load_weights(model, path, &err);
    tap_ok(got == status && strstr(err.msg, path) && strstr(err.msg, want) &&
               strstr(err.msg, want_too) && !strchr(err.msg, '\n') &&
               fr_model_checksum(model) == before,
           "%s is refused naming %s, the model unchanged: %s", what, want, err.msg);
}

static void test_load_weights(void) {
    fr_model *model = model_from(SMALL, 1);
    fr_error err = {0};
    const char *path = weights_of(SMALL, "small.safetensors");
    int status = fr_model_load_weights(model, path, &err);
    fr_model *saved = model_from(SMALL, 3);
    tap_ok(status == FR_OK && fr_model_checksum(model) == fr_model_checksum(saved),
           "weights saved from a model load into another of the same shape (%s)",
           status ? err.msg : "ok");
    fr_model_free(saved);

    expect_load_refused(model, weights_of("input 1 2 2; fc1 = linear(4, 3)", "missing.safetensors"),
                        FR_EFORMAT, "'fc2.weight'", "no tensor", "a file without fc2");
    expect_load_refused(model,
                        weights_of(SMALL "; relu; fc3 = linear(2, 2)", "extra.safetensors"),
                        FR_EFORMAT, "'fc3.weight'", "not a parameter", "a file with an extra fc3");
    expect_load_refused(model,
                        weights_of("input 1 2 2; fc1 = linear(4, 3); relu; fc2 = linear(3, 5)",
                                   "wrong-shape.safetensors"),
                        FR_ESHAPE, "'fc2.weight'", "[5, 3], the model needs [2, 3]",
                        "a file whose fc2.weight is [5, 3]");
    expect_load_refused(model, in_test_dir("absent.safetensors"), FR_EIO, "absent.safetensors",
                        "no such file", "a file that does not exist");
    fr_model_free(model);
}

/*
 * The frozen set changes between steps through the API, not only through
 * the command line: the trainer lays its slab and optimizer state out again
 * before it saves, restores or steps (these overran their buffers before,
 * under AddressSanitizer), and two trainers on one model each keep their
 * own plan.
 */
static void test_frozen_set_changes(void) {
    const char *path = in_test_dir("changed.safetensors");
    fr_error err = {0};
    fr_model *model = model_from(MLP, 7);
    fr_model_freeze_layer(model, "fc1", NULL);
    fr_trainer *trainer = trainer_for(model, FR_ADAM);
    double losses[STEPS_AFTER];
    int status = run_steps(trainer, 0, 2, losses);
    if (status == FR_OK)
        status = fr_model_unfreeze(model, "fc1", &err);
    if (status == FR_OK)
        status = fr_trainer_save_checkpoint(trainer, path, NULL, 0, &err);
    tap_ok(status == FR_OK, "fc1 unfrozen after 2 steps: the checkpoint is written for the new "
           "frozen set (%s)", status ? err.msg : "ok");

    fr_checkpoint *checkpoint = NULL;
    fr_model_freeze_layer(model, "fc2", NULL);
    status = fr_checkpoint_open(path, &checkpoint, &err);
    if (status == FR_OK)
        status = fr_trainer_restore(trainer, checkpoint, true, &err);
    fr_checkpoint_close(checkpoint);
    tap_ok(status == FR_OK, "fc2 frozen since: the checkpoint restores into the new layout (%s)",
           status ? err.msg : "ok");
    fr_param *fc2 = fr_model_param(model, 2);
    uint64_t fc2_before = fr_param_checksum(fc2);
    status = run_steps(trainer, 2, 2, losses);
    tap_ok(status == FR_OK && isfinite(losses[1]) && fr_param_checksum(fc2) == fc2_before,
           "the trainer then steps with fc1 trained and fc2 frozen, fc2 unchanged");

    /* A second trainer on the same model, planned for another frozen set. */
    fr_model_unfreeze(model, "*", NULL);
    fr_trainer *second = trainer_for(model, FR_SGD);
    bool ok = run_steps(second, 4, 1, losses) == FR_OK;
    fr_model_freeze_layer(model, "fc2", NULL);
    ok = ok && run_steps(trainer, 5, 1, losses) == FR_OK;
    fr_model_unfreeze(model, "fc2", NULL);
    ok = ok && run_steps(second, 6, 1, losses) == FR_OK && isfinite(losses[0]);
    tap_ok(ok, "two trainers on one model, the frozen set changed between their steps: each "
           "steps on its own plan");
    fr_trainer_free(second);
    fr_trainer_free(trainer);
    fr_model_free(model);
}

int main(void) {
    tap_plan(37); /* every check below, counted: fewer or more fails the test */
    size_t allocated_before = fr_allocated_bytes();
    if (!make_test_dir("api"))
        return 1;
    test_resume(FR_SGD, NULL, "SGD with momentum");
    test_resume(FR_ADAM, NULL, "Adam");
    test_resume(FR_ADAMW, NULL, "AdamW");
    test_resume(FR_SGD, "fc1", "SGD, fc1 frozen from the start");
    test_restore_refused();
    test_evaluate();
    test_load_weights();
    test_frozen_set_changes();
    tap_ok(fr_allocated_bytes() == allocated_before, "every model, trainer and file was freed");
    remove_test_dir();
    struct stat info;
    tap_ok(stat(test_dir, &info) != 0, "the test directory is removed");
    return tap_done();
}
