/*
 * example.h - what the three freezing examples share: print every parameter's
 * requires_grad as PyTorch would, train a few SGD steps on a fixed random
 * batch, and check that frozen parameters kept their exact bits while
 * trainable ones moved.  Each example is then only its model and its freezing.
 */
#ifndef FROST_EXAMPLE_H
#define FROST_EXAMPLE_H

#include "frost.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { EXAMPLE_BATCH = 8, EXAMPLE_STEPS = 3 };

/* for name, p in model.named_parameters(): print(name, "requires_grad:", p.requires_grad)
 * Returns each parameter's checksum, to compare after training (NULL: out of memory). */
static uint64_t *print_requires_grad(fr_model *model) {
    size_t count = fr_model_param_count(model);
    uint64_t *before = calloc(count + 1, sizeof *before);
    for (size_t i = 0; before && i < count; i++) {
        fr_param *p = fr_model_param(model, i);
        printf("%s requires_grad: %s\n", fr_param_name(p),
               fr_param_requires_grad(p) ? "True" : "False");
        before[i] = fr_param_checksum(p);
    }
    return before;
}

/*
 * optimizer = torch.optim.SGD(model.parameters(), lr=0.1); nn.CrossEntropyLoss()
 * and EXAMPLE_STEPS steps on one fixed batch: inputs in [-1, 1], labels 0 or 1.
 * Prints each step's loss; the trainer is returned for inspection.
 */
static int train_a_few_steps(fr_model *model, fr_trainer **trainer, fr_error *err) {
    int in = fr_model_input_numel(model);
    float *x = malloc(sizeof(float) * EXAMPLE_BATCH * (size_t)in);
    int32_t labels[EXAMPLE_BATCH];
    if (!x)
        return fr_fail(err, FR_ENOMEM, "out of memory");
    srand(1);
    for (int i = 0; i < EXAMPLE_BATCH * in; i++)
        x[i] = 2.0f * (float)rand() / (float)RAND_MAX - 1.0f;
    for (int i = 0; i < EXAMPLE_BATCH; i++)
        labels[i] = i % 2;
    fr_train_config config;
    fr_train_config_default(&config);
    config.lr = 0.1;
    config.max_batch = EXAMPLE_BATCH;
    int rc = fr_trainer_new(model, &config, trainer, err);
    for (int step = 1; rc == FR_OK && step <= EXAMPLE_STEPS; step++) {
        double loss;
        rc = fr_trainer_step(*trainer, x, labels, EXAMPLE_BATCH, &loss, NULL, err);
        if (rc == FR_OK)
            printf("step %d loss %.4f\n", step, loss);
        if (rc == FR_OK && !isfinite(loss))
            rc = fr_fail(err, FR_ENONFINITE, "the loss at step %d is %g", step, loss);
    }
    free(x);
    return rc;
}

/* Frozen: the very same bits.  Trainable: moved.  Returns the failures. */
static int check_frozen_unchanged(const char *program, fr_model *model, const uint64_t *before) {
    int failures = 0, trainable = 0;
    for (size_t i = 0; i < fr_model_param_count(model); i++) {
        fr_param *p = fr_model_param(model, i);
        bool changed = fr_param_checksum(p) != before[i];
        trainable += fr_param_requires_grad(p);
        if (changed != fr_param_requires_grad(p)) {
            fprintf(stderr, "%s: %s is %s but %s\n", program, fr_param_name(p),
                    fr_param_requires_grad(p) ? "trainable" : "frozen",
                    changed ? "changed" : "did not change");
            failures++;
        }
    }
    if (!failures)
        printf("frozen parameters unchanged, %s\n",
               trainable ? "trainable parameters changed" : "no trainable parameters");
    return failures;
}

#endif
