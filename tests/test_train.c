/*
 * test_train.c - the trainer as a specification: losses and their gradients,
 * PyTorch's optimizer formulas, freezing at every granularity, and what a
 * frozen parameter must cost (no gradient, no optimizer state, no backward).
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, in test_files.h */

#include "internal.h"
#include "tap.h"
#include "test_files.h"

#include <math.h>
#include <string.h>

static fr_model *mlp(void) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse("fc1 = linear(10, 5); relu; fc2 = linear(5, 2)", "test", &m, &err) != FR_OK)
        tap_diag("%s", err.msg);
    fr_model_init(m, 7, NULL);
    return m;
}

static fr_model *convnet(void) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse("input 3 6 6; conv1 = conv2d(3, 16, 3); relu; conv2 = conv2d(16, 32, 3); relu;"
                       "flatten; fc1 = linear(128, 10); relu; fc2 = linear(10, 2)",
                       "test", &m, &err) != FR_OK)
        tap_diag("%s", err.msg);
    fr_model_init(m, 11, NULL);
    return m;
}

static void random_batch(fr_model *m, int n, float *x, int32_t *labels, uint64_t seed) {
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    for (int i = 0; i < n * fr_model_input_numel(m); i++)
        x[i] = fr_rng_uniform(&rng) * 2.0f - 1.0f;
    for (int i = 0; i < n; i++)
        labels[i] = (int32_t)fr_rng_below(&rng, (uint64_t)fr_model_output_numel(m));
}

/* The tests' training settings: the defaults, then optimizer `kind` (SGD's
 * momentum when asked), learning rate, threads and the largest batch. */
static fr_train_config test_config(fr_optimizer_kind kind, double lr, double momentum, int threads,
                                   int max_batch) {
    fr_train_config c;
    fr_train_config_default(&c);
    c.optimizer = kind;
    c.lr = lr;
    c.momentum = momentum;
    c.threads = threads;
    c.max_batch = max_batch;
    return c;
}

/* A trainer for m with settings c, or NULL, the reason a diagnostic. */
static fr_trainer *trainer_for(fr_model *m, const fr_train_config *c) {
    fr_trainer *t = NULL;
    fr_error err = {0};
    if (fr_trainer_new(m, c, &t, &err) != FR_OK)
        tap_diag("%s", err.msg);
    return t;
}

static fr_trainer *make_trainer(fr_model *m, fr_optimizer_kind kind, int threads, int batch) {
    fr_train_config c = test_config(kind, 0.1, kind == FR_SGD ? 0.9 : 0.0, threads, batch);
    return trainer_for(m, &c);
}

/* ------------------------------------------------------------- losses */

static void test_loss_gradients(void) {
    const int n = 3, k = 4;
    float out[12], dout[12], target[12];
    int32_t labels[3] = {2, 0, 3};
    fr_rng rng;
    fr_rng_seed(&rng, 3);
    for (int i = 0; i < n * k; i++) {
        out[i] = fr_rng_uniform(&rng) * 6.0f - 3.0f;
        target[i] = fr_rng_uniform(&rng);
    }
    for (int kind = 0; kind < 2; kind++) {
        const void *t = kind == FR_MSE ? (const void *)target : (const void *)labels;
        int bad = -1;
        long correct = 0;
        fr_loss((fr_loss_kind)kind, out, t, n, k, 1.0f / n, dout, &correct, &bad);
        double worst = 0.0;
        for (int i = 0; i < n * k; i++) {
            float keep = out[i];
            const float h = 1e-2f;
            out[i] = keep + h;
            double up = fr_loss((fr_loss_kind)kind, out, t, n, k, 1.0f, NULL, NULL, &bad) / n;
            out[i] = keep - h;
            double down = fr_loss((fr_loss_kind)kind, out, t, n, k, 1.0f, NULL, NULL, &bad) / n;
            out[i] = keep;
            double numeric = (up - down) / (2 * h);
            double diff = fabs(numeric - dout[i]) / (1e-3 + fabs(numeric));
            if (diff > worst)
                worst = diff;
        }
        tap_ok(worst < 1e-2, "%s: analytic gradient matches central differences (worst rel %.2g)",
               kind == FR_MSE ? "mse" : "cross-entropy", worst);
    }
    /* Large logits must not overflow: log-sum-exp is taken around the max. */
    float big[4] = {1000.0f, 0.0f, -1000.0f, 999.0f};
    int32_t label = 3;
    int bad = -1;
    double loss = fr_loss(FR_CROSS_ENTROPY, big, &label, 1, 4, 1.0f, NULL, NULL, &bad);
    tap_ok(fabs(loss - (1.0 + log1p(exp(-1.0)))) < 1e-4,
           "cross-entropy of logits near 1000 is finite and exact (%g)", loss);
    /* PyTorch's MSELoss: mean over every element. */
    float o[2] = {1.0f, 3.0f}, w[2] = {0.0f, 0.0f};
    tap_ok(fabs(fr_loss(FR_MSE, o, w, 1, 2, 1.0f, NULL, NULL, &bad) - 5.0) < 1e-9,
           "mse of (1, 3) against 0 is (1 + 9) / 2");
    int32_t wrong = 7;
    bad = -1;
    fr_loss(FR_CROSS_ENTROPY, o, &wrong, 1, 2, 1.0f, NULL, NULL, &bad);
    tap_ok(bad == 0, "a label outside the outputs is reported");
}

/* ---------------------------------------------------------- optimizers */

static void test_sgd_formulas(void) {
    fr_train_config c;
    fr_train_config_default(&c);
    c.lr = 0.1;
    c.momentum = 0.9;
    c.weight_decay = 0.01;
    float p = 1.0f, g1 = 0.5f, g2 = -0.25f, buf = 0.0f;
    /* step 1: g = 0.5 + 0.01*1 = 0.51; buf = g; p = 1 - 0.1*0.51 = 0.949 */
    fr_optim_update(&c, 1, &p, &g1, &buf, NULL, 1);
    tap_ok(fabsf(p - 0.949f) < 1e-6f && fabsf(buf - 0.51f) < 1e-6f,
           "SGD momentum step 1: buffer starts as the gradient (p %.6f)", p);
    /* step 2: g = -0.25 + 0.00949 = -0.24051; buf = 0.9*0.51 + g = 0.21849; p -= 0.021849 */
    fr_optim_update(&c, 2, &p, &g2, &buf, NULL, 1);
    tap_ok(fabsf(buf - 0.21849f) < 1e-6f && fabsf(p - 0.927151f) < 1e-6f,
           "SGD momentum step 2 follows buf = mu*buf + g (p %.6f)", p);

    c.nesterov = true;
    p = 1.0f;
    buf = 0.0f;
    fr_optim_update(&c, 1, &p, &g1, &buf, NULL, 1);
    /* nesterov: g + mu*buf = 0.51 + 0.459 = 0.969; p = 1 - 0.0969 */
    tap_ok(fabsf(p - 0.9031f) < 1e-6f, "SGD nesterov uses g + mu*buf (p %.6f)", p);

    c.nesterov = false;
    c.dampening = 0.5;
    p = 1.0f;
    buf = 0.0f;
    fr_optim_update(&c, 1, &p, &g1, &buf, NULL, 1);
    fr_optim_update(&c, 2, &p, &g2, &buf, NULL, 1);
    /* step 2 buf = 0.9*0.51 + 0.5*(-0.25 + 0.01*0.949) = 0.338745 */
    tap_ok(fabsf(buf - 0.338745f) < 1e-6f, "SGD dampening scales the new gradient (buf %.6f)", buf);

    c.momentum = 0.0;
    c.dampening = 0.0;
    c.weight_decay = 0.0;
    p = 1.0f;
    fr_optim_update(&c, 1, &p, &g1, NULL, NULL, 1);
    tap_ok(p == 1.0f - 0.1f * 0.5f, "plain SGD is p -= lr*g");
}

static void test_adam_formulas(void) {
    fr_train_config c;
    fr_train_config_default(&c);
    c.optimizer = FR_ADAM;
    c.lr = 0.01;
    c.weight_decay = 0.1;
    float p = 2.0f, g = 0.5f, m = 0.0f, v = 0.0f;
    /* Computed in double from torch.optim.Adam's formulas. */
    double gp = 0.5 + 0.1 * 2.0, m1 = 0.1 * gp, v1 = 0.001 * gp * gp;
    double p1 = 2.0 - 0.01 / (1 - 0.9) * m1 / (sqrt(v1) / sqrt(1 - 0.999) + 1e-8);
    fr_optim_update(&c, 1, &p, &g, &m, &v, 1);
    tap_ok(fabs(p - p1) < 1e-6, "Adam step 1 with L2 weight decay (p %.7f, want %.7f)", p, p1);
    double g2 = 0.5 + 0.1 * p1, m2 = 0.9 * m1 + 0.1 * g2, v2 = 0.999 * v1 + 0.001 * g2 * g2;
    double p2 = p1 - 0.01 / (1 - 0.81) * m2 / (sqrt(v2) / sqrt(1 - 0.999 * 0.999) + 1e-8);
    fr_optim_update(&c, 2, &p, &g, &m, &v, 1);
    tap_ok(fabs(p - p2) < 1e-6, "Adam step 2 is bias-corrected (p %.7f, want %.7f)", p, p2);

    c.optimizer = FR_ADAMW;
    p = 2.0f;
    m = v = 0.0f;
    double decayed = 2.0 * (1 - 0.01 * 0.1), am = 0.1 * 0.5, av = 0.001 * 0.25;
    double pw = decayed - 0.01 / 0.1 * am / (sqrt(av) / sqrt(0.001) + 1e-8);
    fr_optim_update(&c, 1, &p, &g, &m, &v, 1);
    tap_ok(fabs(p - pw) < 1e-6, "AdamW decays the weight, not the gradient (p %.7f, want %.7f)", p, pw);
}

/* ------------------------------------------------------------ freezing */

static void test_freeze_api(void) {
    fr_model *m = convnet();
    fr_error err = {0};
    tap_ok(fr_model_freeze(m, "*conv*", &err) == FR_OK, "freeze by glob '*conv*' succeeds");
    int frozen = 0;
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        bool want_frozen = strstr(fr_param_name(p), "conv") != NULL;
        frozen += !fr_param_requires_grad(p) == want_frozen;
    }
    tap_ok(frozen == 8, "exactly the conv parameters are frozen");
    tap_ok(fr_model_freeze(m, "conv3*", &err) == FR_ENOMATCH && strstr(err.msg, "conv3*"),
           "a pattern that matches nothing is an error naming it (%s)", err.msg);
    tap_ok(fr_model_freeze(m, "relu", &err) == FR_ENOMATCH, "a pattern that matches no parameter is an error");
    fr_model_unfreeze(m, "conv2", &err);
    tap_ok(fr_param_requires_grad(fr_model_find_param(m, "conv2.weight")) &&
               fr_param_requires_grad(fr_model_find_param(m, "conv2.bias")) &&
               !fr_param_requires_grad(fr_model_find_param(m, "conv1.weight")),
           "a bare layer name unfreezes all of that layer's parameters");
    fr_model_unfreeze_all(m);
    tap_ok(fr_model_freeze(m, "*.bias", &err) == FR_OK &&
               !fr_param_requires_grad(fr_model_find_param(m, "fc2.bias")) &&
               fr_param_requires_grad(fr_model_find_param(m, "fc2.weight")),
           "'*.bias' freezes biases only");
    fr_model_unfreeze_all(m);
    tap_ok(fr_model_freeze_layer(m, "fc1", &err) == FR_OK &&
               fr_model_trainable_numel(m) == fr_model_numel(m) - 128 * 10 - 10,
           "freeze_layer('fc1') freezes its weight and bias");
    tap_ok(fr_model_freeze_layer(m, "nope", &err) == FR_ENOMATCH, "freeze_layer of an unknown layer fails");
    fr_param_set_requires_grad(fr_model_find_param(m, "fc1.bias"), true);
    tap_ok(fr_param_requires_grad(fr_model_find_param(m, "fc1.bias")), "per-parameter requires_grad");
    fr_model_freeze_all(m);
    tap_ok(fr_model_trainable_numel(m) == 0, "freeze_all leaves nothing trainable");
    fr_model_free(m);
}

/* Train a few steps: frozen parameters keep their bits, trainable ones move. */
static void test_frozen_unchanged(fr_optimizer_kind kind, const char *pattern) {
    fr_model *m = convnet();
    fr_error err = {0};
    fr_model_freeze(m, pattern, &err);
    fr_model_param(m, 0);
    float x[8 * 108];
    int32_t labels[8];
    random_batch(m, 8, x, labels, 5);
    size_t count = fr_model_param_count(m);
    uint64_t before[16];
    for (size_t i = 0; i < count; i++)
        before[i] = fr_param_checksum(fr_model_param(m, i));
    fr_train_config c = test_config(kind, 0.05, kind == FR_SGD ? 0.9 : 0.0, 2, 8);
    c.weight_decay = 0.1; /* must not touch frozen parameters either */
    fr_trainer *t = trainer_for(m, &c);
    double loss = 0.0;
    int rc = t ? FR_OK : FR_EINVAL;
    for (int s = 0; s < 3 && rc == FR_OK; s++)
        rc = fr_trainer_step(t, x, labels, 8, &loss, NULL, &err);
    if (rc != FR_OK)
        tap_diag("%s", err.msg);
    int frozen_same = 0, frozen = 0, trainable_moved = 0, trainable = 0;
    for (size_t i = 0; i < count; i++) {
        fr_param *p = fr_model_param(m, i);
        bool same = fr_param_checksum(p) == before[i];
        if (fr_param_requires_grad(p)) {
            trainable++;
            trainable_moved += !same;
        } else {
            frozen++;
            frozen_same += same;
        }
    }
    const char *name = kind == FR_SGD ? "sgd" : kind == FR_ADAM ? "adam" : "adamw";
    tap_ok(rc == FR_OK && frozen > 0 && frozen_same == frozen,
           "%s, freeze '%s': 3 steps succeed, all %d frozen parameters bitwise unchanged", name,
           pattern, frozen);
    tap_ok(rc == FR_OK && trainable > 0 && trainable_moved == trainable,
           "%s, freeze '%s': all %d trainable parameters changed", name, pattern, trainable);
    fr_trainer_free(t);
    fr_model_free(m);
}

/* ------------------------------------------------------- what freezing saves */

static void test_frozen_costs_nothing(void) {
    const int threads = 2;
    fr_model *full = convnet(), *tuned = convnet();
    fr_error err = {0};
    fr_model_freeze(tuned, "conv*", &err);
    fr_model_freeze(tuned, "fc1", &err);
    fr_model_param(full, 0);
    fr_model_param(tuned, 0);
    size_t base = fr_allocated_bytes();
    fr_trainer *tf = make_trainer(full, FR_ADAM, threads, 8);
    size_t full_bytes = fr_allocated_bytes() - base;
    base = fr_allocated_bytes();
    fr_trainer *tt = make_trainer(tuned, FR_ADAM, threads, 8);
    size_t tuned_bytes = fr_allocated_bytes() - base;
    size_t trainable = fr_model_trainable_numel(tuned), frozen = fr_model_numel(tuned) - trainable;
    tap_ok(trainable == 10 * 2 + 2, "only fc2 (22 values) is trainable");
    /* The whole slab in cache lines (16 floats), and the second thread's
     * room for fc2's bias (its weight is summed by rows into the slab). */
    tap_ok(fr_trainer_gradient_bytes(tt) == (32 + 16) * sizeof(float),
           "gradient slabs hold trainable parameters only (%zu bytes)", fr_trainer_gradient_bytes(tt));
    tap_ok(fr_trainer_optimizer_bytes(tt) == 2 * trainable * sizeof(float),
           "Adam state exists for trainable parameters only (%zu bytes)", fr_trainer_optimizer_bytes(tt));
    /* The whole slab and two Adam moments: what the frozen values would have cost. */
    size_t saved = 3 * frozen * sizeof(float);
    tap_ok(full_bytes >= tuned_bytes + saved,
           "the library allocates at least %zu fewer bytes when they are frozen (%zu vs %zu)", saved,
           tuned_bytes, full_bytes);
    tap_ok(fr_trainer_allreduce_bytes(tt) == 4 * trainable, "allreduce carries 4 x trainable bytes");

    float x[8 * 108];
    int32_t labels[8];
    random_batch(tuned, 8, x, labels, 9);
    size_t before_step = fr_allocated_bytes();
    int rc = fr_trainer_step(tt, x, labels, 8, NULL, NULL, &err);
    if (rc == FR_OK)
        rc = fr_trainer_step(tt, x, labels, 5, NULL, NULL, &err);
    tap_ok(rc == FR_OK && fr_allocated_bytes() == before_step,
           "a training step allocates nothing (two steps: %s)", rc == FR_OK ? "ok" : err.msg);

    /* Backward stops at the first layer with a trainable parameter. */
    int calls_below = 0;
    for (int l = 0; l < 7; l++) /* conv1 .. fc1's relu */
        calls_below += fr_trainer_layer_backward_calls(tt, l) != 0;
    tap_ok(calls_below == 0, "no backward work for the frozen prefix (layers 0-6)");
    tap_ok(fr_trainer_layer_backward_calls(tt, 7) == 2 * threads,
           "fc2's backward ran once per replica per step (%ld)", fr_trainer_layer_backward_calls(tt, 7));
    tap_ok(fr_trainer_layer_backward_calls(tf, 0) == 0, "a trainer that has not stepped has done no backward");

    /* Everything frozen: no slab at all, and a step only evaluates. */
    fr_model_freeze_all(tuned);
    uint64_t sum = fr_model_checksum(tuned);
    double loss = NAN;
    tap_ok(fr_trainer_step(tt, x, labels, 8, &loss, NULL, &err) == FR_OK && isfinite(loss),
           "a step with everything frozen computes the loss");
    tap_ok(fr_trainer_gradient_bytes(tt) == 0 && fr_trainer_optimizer_bytes(tt) == 0,
           "nothing trainable: no gradient or optimizer memory");
    tap_ok(fr_model_checksum(tuned) == sum, "nothing trainable: no parameter changes");
    fr_trainer_free(tf);
    fr_trainer_free(tt);
    fr_model_free(full);
    fr_model_free(tuned);
}

/*
 * The gradient memory the threads' replicas hold beyond the whole slab (4 x
 * trainable, in whole cache lines of 16 floats): each further replica keeps
 * room for the gradients summed at the end of backward only (the biases here:
 * linear weights are summed by rows straight into the slab), each at the
 * place in its cache line it has in the slab (the slab holds the layers last
 * first, a layer's bias before its weight), plus room for the largest staged
 * weight (a conv2d weight of 65,536 values or more).
 */
static size_t cache_lines(size_t floats) { return (floats + 15) / 16 * 16; }

static size_t expected_gradient_bytes(fr_model *m, int threads, size_t staged_floats) {
    size_t trainable = fr_model_trainable_numel(m), slab = 0, own = 0;
    for (size_t i = fr_model_param_count(m); i-- > 0;) {
        /* Parameters are declared weight then bias; the slab takes them in reverse. */
        fr_param *p = fr_model_param(m, i);
        if (!fr_param_requires_grad(p))
            continue;
        bool bias = strstr(fr_param_name(p), ".bias") != NULL;
        bool in_own = bias || (fr_param_ndim(p) == 4 && fr_param_numel(p) < 65536);
        if (in_own) {
            while (own % 16 != slab % 16)
                own++;
            own += fr_param_numel(p);
        }
        slab += fr_param_numel(p);
    }
    size_t per_thread = threads > 1 ? cache_lines(own) + cache_lines(staged_floats) : 0;
    return (cache_lines(trainable) + (size_t)(threads - 1) * per_thread) * sizeof(float);
}

/* A dataset of n random samples of 1 x 8 x 8 in [0, 1], 10 classes. */
static fr_dataset *random_images(int n, uint64_t seed) {
    float *x = malloc(sizeof(float) * 64 * (size_t)n);
    int32_t *labels = malloc((size_t)n * sizeof *labels);
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    for (int i = 0; i < 64 * n; i++)
        x[i] = fr_rng_uniform(&rng);
    for (int i = 0; i < n; i++)
        labels[i] = (int32_t)fr_rng_below(&rng, 10);
    fr_dataset *data = NULL;
    fr_error err = {0};
    if (fr_dataset_from_arrays(x, labels, n, 1, 8, 8, &data, &err) != FR_OK)
        tap_diag("%s", err.msg);
    free(x);
    free(labels);
    return data;
}

/* Gradient memory does not grow with threads for linear weights, a large
 * conv2d weight costs a thread one stage, and the memory accessors add up to
 * what the library holds. */
static void test_gradient_memory(void) {
    const char *spec = "input 1 8 8; fc1 = linear(64, 300); relu; fc2 = linear(300, 200); relu;"
                       "fc3 = linear(200, 10)";
    size_t bytes[5] = {0};
    for (int threads = 1; threads <= 4; threads += 3) {
        size_t baseline = fr_allocated_bytes();
        fr_model *m = NULL;
        fr_error err = {0};
        fr_model_parse(spec, "test", &m, &err);
        fr_model_init(m, 5, &err);
        fr_dataset *data = random_images(40, 3);
        fr_trainer *t = make_trainer(m, FR_SGD, threads, 16);
        int ids[16];
        for (int i = 0; i < 16; i++)
            ids[i] = 2 * i;
        int rc = fr_trainer_step_samples(t, data, ids, 16, NULL, NULL, &err);
        bytes[threads] = fr_trainer_gradient_bytes(t);
        size_t expected = expected_gradient_bytes(m, threads, 0);
        tap_ok(rc == FR_OK && bytes[threads] == expected,
               "%d thread%s, linear layers: gradient memory %zu bytes, expected %zu (a whole slab%s)",
               threads, threads > 1 ? "s" : "", bytes[threads], expected,
               threads > 1 ? ", and the biases per further thread" : "");
        size_t parts = fr_model_weight_bytes(m) + fr_trainer_gradient_bytes(t) +
                       fr_trainer_optimizer_bytes(t) + fr_trainer_activation_bytes(t) +
                       fr_dataset_bytes(data) + fr_trainer_cache_bytes(t);
        size_t held = fr_allocated_bytes() - baseline;
        /* 81,710 parameters; in the model each starts a cache line. */
        tap_ok(parts == held && fr_trainer_optimizer_bytes(t) == 81710 * sizeof(float) &&
                   fr_model_weight_bytes(m) == 81728 * sizeof(float) &&
                   fr_dataset_bytes(data) >= 40 * 64 * sizeof(float),
               "%d thread%s: weights, gradients, optimizer state, activations, dataset and cache "
               "add up to what the library holds (%zu bytes, %zu held)",
               threads, threads > 1 ? "s" : "", parts, held);
        fr_trainer_free(t);
        fr_dataset_free(data);
        fr_model_free(m);
    }
    /* fc1 frozen: the cache holds its outputs, gradient and optimizer memory
     * follow the trainable count, and the parts still add up. */
    {
        size_t baseline = fr_allocated_bytes();
        fr_model *m = NULL;
        fr_error err = {0};
        fr_model_parse(spec, "test", &m, &err);
        fr_model_init(m, 5, &err);
        fr_model_freeze(m, "fc1", &err);
        fr_dataset *data = random_images(40, 3);
        fr_trainer *t = make_trainer(m, FR_SGD, 2, 16);
        int ids[16];
        for (int i = 0; i < 16; i++)
            ids[i] = 2 * i;
        int rc = fr_trainer_step_samples(t, data, ids, 16, NULL, NULL, &err);
        size_t trainable = 60000 + 200 + 2000 + 10;
        size_t parts = fr_model_weight_bytes(m) + fr_trainer_gradient_bytes(t) +
                       fr_trainer_optimizer_bytes(t) + fr_trainer_activation_bytes(t) +
                       fr_dataset_bytes(data) + fr_trainer_cache_bytes(t);
        tap_ok(rc == FR_OK && fr_trainer_cache_bytes(t) == 40 * 300 * sizeof(float) &&
                   fr_trainer_optimizer_bytes(t) == trainable * sizeof(float) &&
                   fr_trainer_gradient_bytes(t) == expected_gradient_bytes(m, 2, 0) &&
                   parts == fr_allocated_bytes() - baseline,
               "fc1 frozen, 2 threads: cache %zu, optimizer %zu, gradients %zu bytes; the parts add "
               "up to what the library holds", fr_trainer_cache_bytes(t),
               fr_trainer_optimizer_bytes(t), fr_trainer_gradient_bytes(t));
        fr_trainer_free(t);
        fr_dataset_free(data);
        fr_model_free(m);
    }
    /* 3 x (10 + 200 + 300 biases, each at its offset modulo 16 in the slab) */
    tap_ok(bytes[4] - bytes[1] == 3 * 512 * sizeof(float),
           "4 threads hold only the biases beyond 1 thread's gradient memory (%zu more bytes)",
           bytes[4] - bytes[1]);

    /* conv2's weight (73,728 values) is staged: the other threads hold one
     * copy of it, not a whole slab, and training gives 1 thread's weights. */
    const char *conv = "input 8 6 6; conv1 = conv2d(8, 16, 3, padding=1); relu;"
                       "conv2 = conv2d(16, 512, 3); relu; adaptive_avgpool2d(1); flatten;"
                       "fc = linear(512, 10)";
    static float weights[3][82000];
    size_t count[3] = {0};
    bool stepped = true; /* on both thread counts, every step succeeded */
    for (int threads = 1; threads <= 3; threads += 2) {
        fr_model *m = NULL;
        fr_error err = {0};
        fr_model_parse(conv, "test", &m, &err);
        fr_model_init(m, 9, &err);
        fr_trainer *t = make_trainer(m, FR_SGD, threads, 5);
        float x[5 * 8 * 36];
        int32_t labels[5];
        random_batch(m, 5, x, labels, 13);
        int rc = FR_OK;
        /* 5 rows over 3 threads, then 2 (one thread without rows). */
        for (int s = 0; s < 4 && rc == FR_OK; s++)
            rc = fr_trainer_step(t, x, labels, s % 2 ? 2 : 5, NULL, NULL, &err);
        stepped = stepped && rc == FR_OK;
        size_t expected = expected_gradient_bytes(m, threads, threads > 1 ? 73728 : 0);
        tap_ok(rc == FR_OK && fr_trainer_gradient_bytes(t) == expected,
               "%d thread%s, a large conv2d weight: gradient memory %zu bytes, expected %zu", threads,
               threads > 1 ? "s" : "", fr_trainer_gradient_bytes(t), expected);
        count[threads - 1] = copy_weights(m, weights[threads - 1], 82000);
        fr_trainer_free(t);
        fr_model_free(m);
    }
    double worst = 0.0;
    for (size_t i = 0; i < count[0]; i++)
        worst = fmax(worst, fabs((double)weights[2][i] - weights[0][i]) /
                                (1e-3 + fabs((double)weights[0][i])));
    tap_ok(stepped && count[0] > 80000 && count[0] == count[2] && worst < 1e-5,
           "3 threads with a staged conv2d weight train as 1 thread (worst relative difference %.2g)",
           worst);
}

/* Gradual unfreezing between steps rebuilds the slab and keeps training. */
static void test_gradual_unfreezing(void) {
    fr_model *m = convnet();
    fr_error err = {0};
    fr_model_freeze_all(m);
    fr_model_unfreeze(m, "fc2", &err);
    fr_trainer *t = make_trainer(m, FR_SGD, 2, 8);
    float x[8 * 108];
    int32_t labels[8];
    random_batch(m, 8, x, labels, 13);
    int rc = fr_trainer_step(t, x, labels, 8, NULL, NULL, &err);
    size_t small = fr_trainer_allreduce_bytes(t);
    uint64_t conv1 = fr_param_checksum(fr_model_find_param(m, "conv1.weight"));
    fr_model_unfreeze(m, "fc1", &err);
    if (rc == FR_OK)
        rc = fr_trainer_step(t, x, labels, 8, NULL, NULL, &err);
    tap_ok(rc == FR_OK && fr_trainer_allreduce_bytes(t) == small + 4 * (128 * 10 + 10),
           "unfreezing fc1 grows the slab by its parameters");
    tap_ok(rc == FR_OK && fr_param_checksum(fr_model_find_param(m, "conv1.weight")) == conv1,
           "still-frozen conv1 is unchanged after unfreezing fc1");
    fr_trainer_free(t);
    fr_model_free(m);
}


/* Loss falls on a fixed batch, and thread counts agree. */
static void test_learning_and_threads(void) {
    double final[3];
    float weights[3][67]; /* the MLP's 10x5 + 5 + 5x2 + 2 parameters */
    size_t weight_count[3];
    bool stepped = true; /* every step of every thread count succeeded */
    for (int threads = 1; threads <= 3; threads++) {
        fr_model *m = mlp();
        fr_trainer *t = make_trainer(m, FR_SGD, threads, 7);
        float x[7 * 10];
        int32_t labels[7];
        random_batch(m, 7, x, labels, 21);
        fr_error err = {0};
        double first = 0.0, loss = 0.0;
        int rc = t ? FR_OK : FR_EINVAL;
        for (int s = 0; s < 30 && rc == FR_OK; s++) {
            rc = fr_trainer_step(t, x, labels, 7, &loss, NULL, &err);
            if (s == 0)
                first = loss;
        }
        if (rc != FR_OK)
            tap_diag("%d threads: %s", threads, err.msg);
        stepped = stepped && rc == FR_OK;
        if (threads == 1)
            tap_ok(rc == FR_OK && loss < 0.5 * first, "the loss on a fixed batch falls (%.4f -> %.4f)",
                   first, loss);
        final[threads - 1] = loss;
        weight_count[threads - 1] = copy_weights(m, weights[threads - 1], 67);
        fr_trainer_free(t);
        fr_model_free(m);
    }
    tap_ok(stepped && fabs(final[1] - final[0]) < 1e-5 * fabs(final[0]) &&
               fabs(final[2] - final[0]) < 1e-5 * fabs(final[0]),
           "1, 2 and 3 threads (uneven slices of 7) reach the same loss (%.7f %.7f %.7f)", final[0],
           final[1], final[2]);
    /* Slices of 7, 4+3 and 3+2+2 sum in different orders: equal to float
     * rounding, not bitwise. */
    double worst = 0.0;
    for (int threads = 2; threads <= 3; threads++)
        for (size_t i = 0; i < weight_count[0]; i++)
            worst = fmax(worst, fabs((double)weights[threads - 1][i] - weights[0][i]) /
                                    (1e-6 + fabs((double)weights[0][i])));
    tap_ok(stepped && weight_count[0] == 67 && weight_count[1] == 67 && weight_count[2] == 67 &&
               worst < 1e-4,
           "1, 2 and 3 threads end with the same weights, all 67 (worst relative difference %.2g)",
           worst);
}

/* 40 random 1x4x4 samples of 3 classes. */
static fr_dataset *random_dataset(uint64_t seed) {
    float x[40 * 16];
    int32_t labels[40];
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    for (int i = 0; i < 40 * 16; i++)
        x[i] = fr_rng_uniform(&rng);
    for (int i = 0; i < 40; i++)
        labels[i] = i % 3;
    fr_dataset *data = NULL;
    fr_error err = {0};
    if (fr_dataset_from_arrays(x, labels, 40, 1, 4, 4, &data, &err) != FR_OK)
        tap_diag("%s", err.msg);
    return data;
}

/* Train model m (freed here) on the 40 samples of `data`, `epochs` epochs of
 * batches of 10 in shuffled order, SGD (lr 0.1, momentum 0.9) on 2 threads,
 * the frozen-prefix cache bounded by cache_mb (-1: off).  The bytes the
 * cache held go to *cache_bytes and the values of parameter `name` to `out`;
 * returns their count, or 0 when a step failed or `name` did not move (runs
 * compared with each other must each have trained). */
static size_t train_cached(fr_model *m, double cache_mb, fr_dataset *data, int epochs,
                           const char *name, float *out, size_t *cache_bytes) {
    fr_error err = {0};
    fr_train_config c = test_config(FR_SGD, 0.1, 0.9, 2, 10);
    c.cache_mb = cache_mb;
    fr_trainer *t = trainer_for(m, &c);
    fr_param *p = fr_model_find_param(m, name);
    uint64_t initial = fr_param_checksum(p);
    int order[40];
    int rc = t ? FR_OK : FR_EINVAL;
    for (long epoch = 0; rc == FR_OK && epoch < epochs; epoch++) {
        fr_epoch_order(order, 40, 5, epoch, true);
        for (int b = 0; b < 40 && rc == FR_OK; b += 10)
            if ((rc = fr_trainer_step_samples(t, data, order + b, 10, NULL, NULL, &err)) != FR_OK)
                tap_diag("%s", err.msg);
    }
    *cache_bytes = t ? fr_trainer_cache_bytes(t) : 0;
    fr_trainer_free(t);
    size_t n = fr_param_numel(p);
    memcpy(out, fr_param_data(p), n * sizeof(float));
    bool moved = fr_param_checksum(p) != initial;
    if (rc == FR_OK && !moved)
        tap_diag("%s did not move in %d epochs", name, epochs);
    fr_model_free(m);
    return rc == FR_OK && moved ? n : 0;
}

/* A frozen-prefix MLP, three epochs, the prefix cached or not; returns the
 * trainable weights' values in `out`. */
static size_t train_epochs(double cache_mb, fr_dataset *data, float *out, size_t *cache_bytes) {
    fr_model *m = NULL;
    fr_error err = {0};
    fr_model_parse("input 1 4 4; fc1 = linear(16, 32); relu; fc2 = linear(32, 32); relu;"
                   "fc3 = linear(32, 3)", "test", &m, &err);
    fr_model_init(m, 3, &err);
    fr_model_freeze(m, "fc1", &err);
    fr_model_freeze(m, "fc2", &err);
    return train_cached(m, cache_mb, data, 3, "fc3.weight", out, cache_bytes);
}

static void test_feature_cache(void) {
    fr_dataset *data = random_dataset(17);
    float plain[96], cached[96], partial[96];
    size_t bytes_off, bytes_on, bytes_partial;
    size_t n = train_epochs(-1, data, plain, &bytes_off);
    size_t n_cached = train_epochs(0, data, cached, &bytes_on);
    /* Room for 25 of the 40 samples' 32 features. */
    size_t n_partial = train_epochs(25.0 * 32 * 4 / 1048576.0, data, partial, &bytes_partial);
    tap_ok(bytes_off == 0 && bytes_on == 40 * 32 * sizeof(float) &&
               bytes_partial == 25 * 32 * sizeof(float),
           "the cache holds fc2's output for every sample, or as many as the budget allows "
           "(%zu, %zu, %zu bytes)", bytes_off, bytes_on, bytes_partial);
    double worst = 0.0, worst_partial = 0.0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs(plain[i] - cached[i]));
        worst_partial = fmax(worst_partial, fabs(plain[i] - partial[i]));
    }
    tap_ok(n == 96 && n_cached == n && n_partial == n && worst <= 1e-6 && worst_partial <= 1e-6,
           "training with the frozen-prefix cache gives the weights of training without it, all "
           "three runs trained (max diff %.2g, partial cache %.2g)", worst, worst_partial);
    fr_dataset_free(data);
}


/* ------------------------------------------------------ residual blocks */

/* conv0 feeds a block whose shortcut is a 1x1 convolution and whose body
 * holds a nested block with the identity shortcut: the gradient at each
 * block's input is the sum of its two branches'.  No relu: central
 * differences across its kink would be wrong by more than a lost branch. */
#define RESIDUAL_NET                                                                             \
    "input 2 4 4; conv0 = conv2d(2, 3, 3, padding=1);"                                           \
    "residual b { c1 = conv2d(3, 3, 3, padding=1); residual inner { c2 = conv2d(3, 3, 1) };"     \
    "  shortcut { d = conv2d(3, 3, 1, bias=False) } };"                                          \
    "flatten; fc = linear(48, 3)"

static fr_model *residual_net(void) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse(RESIDUAL_NET, "test", &m, &err) != FR_OK)
        tap_diag("%s", err.msg);
    else
        fr_model_init(m, 5, NULL);
    return m;
}

/*
 * One SGD step with lr 1 and no momentum moves each trainable parameter by
 * minus its gradient; central differences of the loss (fr_trainer_evaluate)
 * give the same gradient independently.  Returns the worst difference
 * relative to 1e-2 + |gradient|, over every value of every trainable
 * parameter (INFINITY when a step or an evaluation failed); `frozen_moved`
 * counts frozen values that changed, `calls` how often the backward of layer
 * `watched` ran.
 */
static double residual_gradient_error(const char *const *freeze, int threads, int *frozen_moved,
                                      const char *watched, long *calls) {
    fr_model *m = residual_net();
    fr_error err = {0};
    if (!m)
        return INFINITY;
    for (int k = 0; freeze && freeze[k]; k++)
        if (fr_model_freeze(m, freeze[k], &err) != FR_OK)
            tap_diag("%s", err.msg);
    enum { N = 4 };
    float x[N * 32];
    int32_t labels[N];
    random_batch(m, N, x, labels, 31);
    fr_train_config c = test_config(FR_SGD, 1.0, 0.0, threads, N);
    fr_trainer *t = trainer_for(m, &c);
    if (!t) {
        fr_model_free(m);
        return INFINITY;
    }
    size_t total = fr_model_numel(m);
    float *before = malloc(total * sizeof(float));
    double *numeric = malloc(total * sizeof(double));
    size_t at = 0;
    int rc = FR_OK;
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        float *v = fr_param_data(p);
        for (size_t j = 0; j < fr_param_numel(p); j++, at++) {
            before[at] = v[j];
            const float eps = 1e-3f;
            double up = 0.0, down = 0.0;
            v[j] = before[at] + eps;
            if (rc == FR_OK)
                rc = fr_trainer_evaluate(t, x, labels, N, &up, NULL, &err);
            double step = v[j];
            v[j] = before[at] - eps;
            if (rc == FR_OK)
                rc = fr_trainer_evaluate(t, x, labels, N, &down, NULL, &err);
            step -= v[j]; /* 2 eps as float rounds it */
            v[j] = before[at];
            numeric[at] = (up - down) / step;
        }
    }
    if (rc == FR_OK)
        rc = fr_trainer_step(t, x, labels, N, NULL, NULL, &err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(t, &err);
    if (rc != FR_OK)
        tap_diag("%s", err.msg);
    double worst = rc == FR_OK ? 0.0 : INFINITY;
    *frozen_moved = 0;
    at = 0;
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        const float *v = fr_param_data(p);
        for (size_t j = 0; j < fr_param_numel(p); j++, at++) {
            if (!p->requires_grad) {
                *frozen_moved += v[j] != before[at];
                continue;
            }
            double analytic = (double)before[at] - v[j];
            worst = fmax(worst, fabs(analytic - numeric[at]) / (1e-2 + fabs(numeric[at])));
        }
    }
    *calls = fr_trainer_layer_backward_calls(t, fr_model_find_layer(m, watched));
    free(before);
    free(numeric);
    fr_trainer_free(t);
    fr_model_free(m);
    return worst;
}

static void test_residual_gradients(void) {
    int moved = 0;
    long calls = 0;
    double worst = residual_gradient_error(NULL, 1, &moved, "b.d", &calls);
    tap_ok(worst < 1e-2 && calls == 1,
           "a residual block (1x1 shortcut, a nested identity block): every parameter's gradient "
           "matches central differences of the loss (worst relative difference %.2g)", worst);
    worst = residual_gradient_error(NULL, 3, &moved, "b.d", &calls);
    tap_ok(worst < 1e-2, "the same on 3 threads (worst %.2g)", worst);
    static const char *const prefix[] = {"conv0", NULL};
    worst = residual_gradient_error(prefix, 2, &moved, "conv0", &calls);
    tap_ok(worst < 1e-2 && moved == 0 && calls == 0,
           "conv0 frozen: the blocks' gradients still match (worst %.2g), conv0 keeps its bits "
           "(%d values moved) and its backward never runs (%ld calls)", worst, moved, calls);
    static const char *const shortcut[] = {"conv0", "b.d", NULL};
    worst = residual_gradient_error(shortcut, 1, &moved, "b.d", &calls);
    tap_ok(worst < 1e-2 && moved == 0 && calls == 0,
           "conv0 and the shortcut frozen: the body's gradients match (worst %.2g), nothing runs "
           "for the frozen shortcut (%ld backward calls, %d values moved)", worst, calls, moved);
    static const char *const body[] = {"conv0", "b.c1", "b.inner", NULL};
    worst = residual_gradient_error(body, 2, &moved, "b.c1", &calls);
    tap_ok(worst < 1e-2 && moved == 0 && calls == 0,
           "conv0 and the body frozen (a bare block name freezes the block): the shortcut's "
           "gradient matches (worst %.2g), nothing runs for the body (%ld calls, %d moved)",
           worst, calls, moved);
}


/* A frozen prefix ending after a residual block is cached like any other;
 * one ending inside a block (the shortcut still reads the block's input) is
 * not, and both train as without the cache. */
static size_t residual_cache_run(const char *const *freeze, double cache_mb, fr_dataset *data,
                                 float *out, size_t *cache_bytes) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse("input 1 4 4; conv0 = conv2d(1, 4, 3, padding=1); relu;"
                       "residual b { c1 = conv2d(4, 4, 3, padding=1); relu;"
                       "  c2 = conv2d(4, 4, 3, padding=1); shortcut { d = conv2d(4, 4, 1) } };"
                       "relu; flatten; fc = linear(64, 3)", "test", &m, &err) != FR_OK)
        tap_diag("%s", err.msg);
    fr_model_init(m, 3, &err);
    for (int k = 0; freeze[k]; k++)
        if (fr_model_freeze(m, freeze[k], &err) != FR_OK)
            tap_diag("%s", err.msg);
    return train_cached(m, cache_mb, data, 2, "fc.weight", out, cache_bytes);
}

static void test_residual_cache(void) {
    fr_dataset *data = random_dataset(19);
    static const char *const whole[] = {"conv0", "b", NULL};
    static const char *const inside[] = {"conv0", "b.c1", "b.c2", NULL};
    float plain[192], cached[192];
    size_t off_bytes, on_bytes;
    /* 192: fc's weight; 0 when a run failed or did not train. */
    size_t n_plain = residual_cache_run(whole, -1, data, plain, &off_bytes);
    size_t n_cached = residual_cache_run(whole, 0, data, cached, &on_bytes);
    tap_ok(n_plain == 192 && n_cached == 192 && off_bytes == 0 &&
               on_bytes == 40 * 64 * sizeof(float) && memcmp(plain, cached, sizeof plain) == 0,
           "a frozen residual block is cached (%zu bytes: the relu after it) and trains to the "
           "same bits as without the cache", on_bytes);
    n_plain = residual_cache_run(inside, -1, data, plain, &off_bytes);
    n_cached = residual_cache_run(inside, 0, data, cached, &on_bytes);
    tap_ok(n_plain == 192 && n_cached == 192 && on_bytes == 0 &&
               memcmp(plain, cached, sizeof plain) == 0,
           "a frozen prefix ending inside a block (its shortcut trains) caches nothing (%zu bytes) "
           "and trains as without the cache", on_bytes);
    fr_dataset_free(data);
}

static void test_bad_steps(void) {
    fr_model *m = mlp();
    fr_trainer *t = make_trainer(m, FR_SGD, 1, 4);
    float x[8 * 10] = {0};
    int32_t labels[8] = {0, 1, 5, 0, 0, 0, 0, 0};
    fr_error err = {0};
    tap_ok(fr_trainer_step(t, x, labels, 8, NULL, NULL, &err) == FR_EINVAL,
           "a batch larger than the trainer was made for is refused");
    uint64_t sum = fr_model_checksum(m);
    tap_ok(fr_trainer_step(t, x, labels, 4, NULL, NULL, &err) == FR_EINVAL && strstr(err.msg, "label"),
           "a label outside the outputs is refused (%s)", err.msg);
    tap_ok(fr_model_checksum(m) == sum, "a refused step changes no weight");
    fr_train_config c;
    fr_train_config_default(&c);
    c.lr = -1;
    fr_trainer *bad = NULL;
    tap_ok(fr_trainer_new(m, &c, &bad, &err) == FR_EINVAL && strstr(err.msg, "learning rate -1"),
           "a negative learning rate is refused");
    fr_trainer_free(t);
    fr_model_free(m);
}


/* ------------------------------------------------- batchnorm2d, dropout */

#define BN_NET "input 2 4 4; conv1 = conv2d(2, 3, 3, bias=False); bn1 = batchnorm2d(3); relu;" \
               "flatten; fc = linear(12, 3)"

static fr_model *bn_net(const char *spec) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse(spec, "test", &m, &err) != FR_OK) {
        tap_diag("%s", err.msg);
        return NULL;
    }
    fr_model_init(m, 5, NULL);
    /* Away from weight 1, bias 0, so that the affine part is tested too. */
    fr_param *w = fr_model_find_param(m, "bn1.weight"), *b = fr_model_find_param(m, "bn1.bias");
    for (size_t j = 0; w && j < fr_param_numel(w); j++) {
        fr_param_data(w)[j] = 0.5f + 0.3f * (float)j;
        fr_param_data(b)[j] = 0.2f - 0.1f * (float)j;
    }
    return m;
}

static fr_trainer *sgd_trainer(fr_model *m, double lr, int threads, int batch) {
    fr_train_config c = test_config(FR_SGD, lr, 0.0, threads, batch);
    c.seed = 9;
    return trainer_for(m, &c);
}

/* Train mode: every parameter's gradient (one SGD step at lr 1) against
 * central differences of the train-mode loss (steps at lr 0, which move no
 * parameter), batch statistics and all; INFINITY when a step failed. */
static double bn_gradient_error(int threads) {
    enum { N = 5 };
    fr_model *m = bn_net(BN_NET), *probe = bn_net(BN_NET);
    if (!m || !probe)
        return INFINITY;
    float x[N * 32];
    int32_t labels[N];
    random_batch(m, N, x, labels, 17);
    fr_trainer *step = sgd_trainer(m, 1.0, threads, N), *still = sgd_trainer(probe, 0.0, threads, N);
    fr_error err = {0};
    double worst = 0.0;
    int rc = step && still ? FR_OK : FR_EINVAL;
    if (rc == FR_OK)
        rc = fr_trainer_step(step, x, labels, N, NULL, NULL, &err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(step, &err);
    for (size_t i = 0; i < fr_model_param_count(probe); i++) {
        fr_param *p = fr_model_param(probe, i);
        const float *after = fr_param_data(fr_model_param(m, i));
        float *v = fr_param_data(p);
        for (size_t j = 0; j < fr_param_numel(p); j++) {
            float keep = v[j];
            const float eps = 1e-3f;
            double up = 0.0, down = 0.0;
            v[j] = keep + eps;
            if (rc == FR_OK)
                rc = fr_trainer_step(still, x, labels, N, &up, NULL, &err);
            double h = v[j];
            v[j] = keep - eps;
            if (rc == FR_OK)
                rc = fr_trainer_step(still, x, labels, N, &down, NULL, &err);
            h -= v[j];
            v[j] = keep;
            double numeric = (up - down) / h, analytic = (double)keep - after[j];
            worst = fmax(worst, fabs(analytic - numeric) / (1e-2 + fabs(numeric)));
        }
    }
    if (rc != FR_OK) {
        tap_diag("%s", err.msg);
        worst = INFINITY;
    }
    fr_trainer_free(step);
    fr_trainer_free(still);
    fr_model_free(m);
    fr_model_free(probe);
    return worst;
}

/* `steps` SGD steps on `threads` threads at batch `batch`: the losses, and
 * the final parameters and float buffers, appended to `out`; returns their
 * count, or 0 when a step failed. */
static size_t layout_run(const char *spec, const char *freeze, int threads, int batch, int steps,
                         double *out) {
    fr_model *m = bn_net(spec);
    fr_error err = {0};
    if (!m)
        return 0;
    if (freeze && fr_model_freeze(m, freeze, &err) != FR_OK)
        tap_diag("%s", err.msg);
    fr_trainer *t = sgd_trainer(m, 0.1, threads, batch);
    float x[8 * 32];
    int32_t labels[8];
    size_t count = 0;
    int rc = t ? FR_OK : FR_EINVAL;
    for (int s = 0; s < steps && rc == FR_OK; s++) {
        random_batch(m, batch, x, labels, 100 + (uint64_t)s);
        double loss = 0.0;
        rc = fr_trainer_step(t, x, labels, batch, &loss, NULL, &err);
        out[count++] = loss;
    }
    if (rc == FR_OK)
        rc = fr_trainer_sync(t, &err);
    if (rc != FR_OK) {
        tap_diag("%s", err.msg);
        fr_trainer_free(t);
        fr_model_free(m);
        return 0;
    }
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        for (size_t j = 0; j < fr_param_numel(p); j++)
            out[count++] = fr_param_data(p)[j];
    }
    for (size_t i = 0; i < fr_model_buffer_count(m); i++) {
        float *f = fr_model_buffer_floats(m, fr_model_buffer_name(m, i));
        int64_t *n = fr_model_buffer_i64(m, fr_model_buffer_name(m, i));
        for (size_t j = 0; j < fr_model_buffer_numel(m, i); j++)
            out[count++] = f ? f[j] : (double)n[j];
    }
    fr_trainer_free(t);
    fr_model_free(m);
    return count;
}

static double largest_difference(const double *a, const double *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(a[i] - b[i]) / (1.0 + fabs(b[i])));
    return worst;
}

static void test_batchnorm(void) {
    double worst = bn_gradient_error(1);
    tap_ok(worst < 1e-2, "batchnorm2d in train mode: every parameter's gradient matches central "
           "differences of the train-mode loss (worst relative difference %.2g)", worst);
    worst = bn_gradient_error(2);
    tap_ok(worst < 1e-2, "the same on 2 threads, the statistics summed over both (worst %.2g)",
           worst);

    static double one[4096], two[4096], three[4096];
    size_t n1 = layout_run(BN_NET, NULL, 1, 7, 4, one);
    size_t n2 = layout_run(BN_NET, NULL, 2, 7, 4, two);
    tap_ok(n1 > 0 && n1 == n2 && largest_difference(two, one, n1) < 1e-5,
           "batchnorm2d: 2 threads give 1 thread's losses, weights and running statistics "
           "(largest difference %.2g)", n1 == n2 ? largest_difference(two, one, n1) : -1.0);
    n1 = layout_run(BN_NET, NULL, 1, 2, 3, one);
    size_t n3 = layout_run(BN_NET, NULL, 3, 2, 3, three);
    tap_ok(n1 > 0 && n1 == n3 && largest_difference(three, one, n1) < 1e-5,
           "batchnorm2d: 3 threads at batch 2 (one without rows) give 1 thread's (largest "
           "difference %.2g)", n1 == n3 ? largest_difference(three, one, n1) : -1.0);
    size_t buffers_at = n1 - 7; /* running_mean 3, running_var 3, num_batches_tracked */
    tap_ok(n1 > 7 && one[n1 - 1] == 3.0 && one[buffers_at] != 0.0,
           "batchnorm2d: the running statistics moved and num_batches_tracked counts the steps "
           "(%g)", n1 > 0 ? one[n1 - 1] : -1.0);

    /* Frozen: eval mode, its buffers keep their bits; the checksum covers them. */
    fr_model *m = bn_net(BN_NET);
    fr_error err = {0};
    fr_model_freeze(m, "bn1", &err);
    float mean_before[3], var_before[3];
    memcpy(mean_before, fr_model_buffer_floats(m, "bn1.running_mean"), sizeof mean_before);
    memcpy(var_before, fr_model_buffer_floats(m, "bn1.running_var"), sizeof var_before);
    uint64_t frozen_sum = fr_model_frozen_checksum(m);
    uint64_t fc_before = fr_param_checksum(fr_model_find_param(m, "fc.weight"));
    fr_trainer *t = sgd_trainer(m, 0.1, 2, 6);
    float x[6 * 32];
    int32_t labels[6];
    int rc = t ? FR_OK : FR_EINVAL;
    for (int s = 0; s < 3 && rc == FR_OK; s++) {
        random_batch(m, 6, x, labels, 50 + (uint64_t)s);
        rc = fr_trainer_step(t, x, labels, 6, NULL, NULL, &err);
    }
    if (rc == FR_OK)
        rc = fr_trainer_sync(t, &err);
    if (rc != FR_OK)
        tap_diag("%s", err.msg);
    /* The steps ran and trained fc: unchanged buffers are not steps that did nothing. */
    tap_ok(rc == FR_OK && fr_param_checksum(fr_model_find_param(m, "fc.weight")) != fc_before &&
               memcmp(mean_before, fr_model_buffer_floats(m, "bn1.running_mean"), sizeof mean_before) ==
                   0 &&
               memcmp(var_before, fr_model_buffer_floats(m, "bn1.running_var"), sizeof var_before) ==
                   0 &&
               *fr_model_buffer_i64(m, "bn1.num_batches_tracked") == 0 &&
               fr_model_frozen_checksum(m) == frozen_sum,
           "a frozen batchnorm2d runs in eval mode: 3 steps train fc, its buffers keep their "
           "bits, and the frozen checksum with them");
    fr_model_buffer_floats(m, "bn1.running_var")[1] += 1.0f;
    tap_ok(fr_model_frozen_checksum(m) != frozen_sum,
           "the frozen checksum sees a frozen batchnorm2d's buffer change");
    fr_trainer_free(t);

    /* Weights files carry the buffers; a missing one or a wrong dtype is named. */
    char path[256];
    if (!make_test_dir("bn"))
        tap_diag("mkdtemp failed");
    snprintf(path, sizeof path, "%s", in_test_dir("w.safetensors"));
    *fr_model_buffer_i64(m, "bn1.num_batches_tracked") = 12345;
    rc = fr_model_save_weights(m, path, &err);
    fr_model *back = bn_net(BN_NET);
    rc = rc == FR_OK ? fr_model_load_weights(back, path, &err) : rc;
    tap_ok(rc == FR_OK && *fr_model_buffer_i64(back, "bn1.num_batches_tracked") == 12345 &&
               memcmp(fr_model_buffer_floats(back, "bn1.running_var"),
                      fr_model_buffer_floats(m, "bn1.running_var"), 3 * sizeof(float)) == 0,
           "weights files save and load the buffers, num_batches_tracked as I64 (%s)",
           rc == FR_OK ? "ok" : err.msg);
    fr_st_out tensors[8];
    int count = 0;
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        tensors[count] = (fr_st_out){.name = p->name, .ndim = p->ndim, .data = p->data};
        for (int d = 0; d < p->ndim; d++)
            tensors[count].shape[d] = p->shape[d];
        count++;
    }
    snprintf(path, sizeof path, "%s", in_test_dir("missing.safetensors"));
    fr_st_write(path, tensors, count, NULL, 0, &err);
    rc = fr_model_load_weights(back, path, &err);
    tap_ok(rc != FR_OK && strstr(err.msg, "bn1.running_mean"),
           "a weights file without a batchnorm2d buffer is refused naming it: %s", err.msg);
    float wrong = 3.0f;
    int with_buffers = fr_model_buffer_tensors(m, tensors, count);
    tensors[with_buffers - 1] = (fr_st_out){.name = "bn1.num_batches_tracked", .data = &wrong};
    snprintf(path, sizeof path, "%s", in_test_dir("dtype.safetensors"));
    fr_st_write(path, tensors, with_buffers, NULL, 0, &err);
    rc = fr_model_load_weights(back, path, &err);
    tap_ok(rc != FR_OK && strstr(err.msg, "bn1.num_batches_tracked") && strstr(err.msg, "I64"),
           "num_batches_tracked as F32 is refused naming it and I64: %s", err.msg);
    fr_model_free(back);
    fr_model_free(m);

    /* Checkpoints carry the buffers: a restored run continues bitwise. */
    fr_model *run = bn_net(BN_NET), *resumed = bn_net(BN_NET);
    fr_trainer *tr = sgd_trainer(run, 0.1, 2, 6), *tr2 = sgd_trainer(resumed, 0.1, 2, 6);
    double losses[2][2] = {{0}};
    snprintf(path, sizeof path, "%s", in_test_dir("c.safetensors"));
    rc = tr && tr2 ? FR_OK : FR_EINVAL;
    for (int s = 0; s < 4 && rc == FR_OK; s++) {
        random_batch(run, 6, x, labels, 70 + (uint64_t)s);
        rc = fr_trainer_step(tr, x, labels, 6, s >= 2 ? &losses[0][s - 2] : NULL, NULL, &err);
        if (s == 1 && rc == FR_OK)
            rc = fr_trainer_save_checkpoint(tr, path, NULL, 0, &err);
    }
    fr_checkpoint *cp = NULL;
    if (rc == FR_OK && (rc = fr_checkpoint_open(path, &cp, &err)) == FR_OK) {
        rc = fr_trainer_restore(tr2, cp, false, &err);
        fr_checkpoint_close(cp);
    }
    for (int s = 2; s < 4 && rc == FR_OK; s++) {
        random_batch(resumed, 6, x, labels, 70 + (uint64_t)s);
        rc = fr_trainer_step(tr2, x, labels, 6, &losses[1][s - 2], NULL, &err);
    }
    if (rc == FR_OK)
        rc = fr_trainer_sync(tr, &err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(tr2, &err);
    tap_ok(rc == FR_OK && memcmp(losses[0], losses[1], sizeof losses[0]) == 0 &&
               memcmp(fr_model_buffer_floats(run, "bn1.running_var"),
                      fr_model_buffer_floats(resumed, "bn1.running_var"), 3 * sizeof(float)) == 0 &&
               *fr_model_buffer_i64(resumed, "bn1.num_batches_tracked") == 4,
           "a checkpoint carries the buffers: the restored run gives the same losses and running "
           "statistics bitwise, num_batches_tracked 4 (%s)", rc == FR_OK ? "ok" : err.msg);
    fr_trainer_free(tr);
    fr_trainer_free(tr2);
    fr_model_free(run);
    fr_model_free(resumed);
    remove_test_dir();
}

#define DROPOUT_NET "input 2 4 4; flatten; fc1 = linear(32, 16); relu; drop = dropout(0.5);" \
                    "fc2 = linear(16, 3)"

static void test_dropout(void) {
    static double one[4096], two[4096], three[4096], plain[4096];
    size_t n1 = layout_run(DROPOUT_NET, NULL, 1, 7, 3, one);
    size_t n2 = layout_run(DROPOUT_NET, NULL, 2, 7, 3, two);
    size_t n3 = layout_run(DROPOUT_NET, NULL, 3, 7, 3, three);
    size_t np = layout_run("input 2 4 4; flatten; fc1 = linear(32, 16); relu; drop = dropout(0.0);"
                           "fc2 = linear(16, 3)", NULL, 1, 7, 3, plain);
    tap_ok(n1 > 0 && n1 == n2 && n1 == n3 && largest_difference(two, one, n1) < 1e-6 &&
               largest_difference(three, one, n1) < 1e-6,
           "dropout: the mask depends on the seed, step and row only: 2 and 3 threads train as "
           "1 (largest difference %.2g)", n1 == n3 ? largest_difference(three, one, n1) : -1.0);
    tap_ok(n1 > 0 && np == n1 && fabs(plain[0] - one[0]) > 1e-6,
           "dropout(0.5) changes the training loss from dropout(0.0)'s (%.6f vs %.6f)", one[0],
           plain[0]);
}


/* Wide enough for a cache line of features per thread on 2 and 4 threads:
 * fc1's and fc2's forward and fc2's and fc3's input gradients split by
 * features when the threads have few rows each. */
#define WIDE_MLP "input 1 1 24; fc1 = linear(24, 96); relu; fc2 = linear(96, 64); relu;" \
                 "fc3 = linear(64, 3)"

/* SGD with momentum on `threads` threads, `steps` steps at the batches
 * `batches` (in turn, 0-terminated), then an evaluation at 5 rows: the
 * losses, the evaluation's and the final weights into `out` (returns their
 * count, 0 when a step or the evaluation failed); per layer, how many GEMMs
 * of the steps ran split by features into `split` (5 layers). */
static size_t wide_run(int threads, const int *batches, int steps, double *out, long *split) {
    fr_model *m = NULL;
    fr_error err = {0};
    if (fr_model_parse(WIDE_MLP, "test", &m, &err) != FR_OK) {
        tap_diag("%s", err.msg);
        return 0;
    }
    fr_model_init(m, 5, NULL);
    fr_train_config c = test_config(FR_SGD, 0.05, 0.9, threads, 128);
    fr_trainer *t = trainer_for(m, &c);
    static float x[128 * 24];
    static int32_t labels[128];
    size_t count = 0, kinds = 0;
    while (batches[kinds])
        kinds++;
    int rc = t ? FR_OK : FR_EINVAL;
    for (int s = 0; s < steps && rc == FR_OK; s++) {
        int batch = batches[s % kinds];
        random_batch(m, batch, x, labels, 300 + (uint64_t)s);
        rc = fr_trainer_step(t, x, labels, batch, &out[count++], NULL, &err);
    }
    for (int i = 0; i < 5; i++)
        split[i] = t ? fr_trainer_feature_split_calls(t, i) : -1;
    random_batch(m, 5, x, labels, 299);
    if (rc == FR_OK)
        rc = fr_trainer_evaluate(t, x, labels, 5, &out[count++], NULL, &err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(t, &err);
    if (rc != FR_OK) {
        tap_diag("%s", err.msg);
        fr_trainer_free(t);
        fr_model_free(m);
        return 0;
    }
    for (size_t i = 0; i < fr_model_param_count(m); i++) {
        fr_param *p = fr_model_param(m, i);
        for (size_t j = 0; j < fr_param_numel(p); j++)
            out[count++] = fr_param_data(p)[j];
    }
    fr_trainer_free(t);
    fr_model_free(m);
    return count;
}

/* Few rows per thread: linear layers split by features over the rank's
 * batch (FEATURE_SPLIT_ROWS) train as one thread does. */
static void test_feature_split(void) {
    /* 10 rows (uneven on 4 threads), 2 (threads without rows), 7. */
    static const int few[] = {10, 2, 7, 0}, many[] = {128, 0};
    static double one[16384], two[16384], four[16384], again[16384];
    long split1[5], split2[5], split4[5], split_again[5];
    size_t n1 = wide_run(1, few, 9, one, split1);
    size_t n2 = wide_run(2, few, 9, two, split2);
    size_t n4 = wide_run(4, few, 9, four, split4);
    size_t n4b = wide_run(4, few, 9, again, split_again);
    double worst = fmax(largest_difference(two, one, n1), largest_difference(four, one, n1));
    tap_ok(n1 > 9 && n1 == n2 && n1 == n4 && worst < 1e-5,
           "split by features, 2 and 4 threads at 10, 2 and 7 rows a step train as 1 thread: "
           "losses, an evaluation and %zu weights within 1e-5 (worst %.2g)", n1 > 10 ? n1 - 10 : 0,
           worst);
    tap_ok(split1[0] == 0 && split1[2] == 0 && split2[0] > 0 && split2[2] > 0 && split2[4] > 0 &&
               split4[0] > 0 && split4[2] > 0 && split4[4] > 0 && split2[1] == 0,
           "the split ran: GEMMs of fc1, fc2, fc3 split by features on 2 threads %ld, %ld, %ld; "
           "on 4 %ld, %ld, %ld; none on 1", split2[0], split2[2], split2[4], split4[0], split4[2],
           split4[4]);
    tap_ok(n4 > 9 && n4b == n4 && memcmp(again, four, n4 * sizeof *four) == 0,
           "split by features, a layout gives the same bits run to run (4 threads, twice)");
    size_t n64 = wide_run(2, many, 2, again, split_again);
    tap_ok(n64 > 0 && split_again[0] == 0 && split_again[2] == 0 && split_again[4] == 0,
           "at 64 rows a thread (128 on 2 threads) nothing is split by features");
}

int main(void) {
    tap_plan(85); /* every check below, counted: fewer or more fails the test */
    test_loss_gradients();
    test_sgd_formulas();
    test_adam_formulas();
    test_freeze_api();
    test_frozen_unchanged(FR_SGD, "conv*");
    test_frozen_unchanged(FR_ADAM, "fc1");
    test_frozen_unchanged(FR_ADAMW, "*.bias");
    test_frozen_costs_nothing();
    test_gradient_memory();
    test_gradual_unfreezing();
    test_learning_and_threads();
    test_feature_cache();
    test_residual_gradients();
    test_residual_cache();
    test_bad_steps();
    test_batchnorm();
    test_dropout();
    test_feature_split();
    return tap_done();
}
