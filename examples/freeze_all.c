/*
 * freeze_all.c - freeze every parameter of a model.
 *
 * The PyTorch this mirrors:
 *
 *     class Net(nn.Module):
 *         def __init__(self):
 *             super().__init__()
 *             self.fc1 = nn.Linear(10, 5)
 *             self.fc2 = nn.Linear(5, 2)
 *         def forward(self, x):
 *             return self.fc2(torch.relu(self.fc1(x)))
 *
 *     model = Net()
 *     for p in model.parameters():
 *         p.requires_grad = False
 *
 * fr_model_freeze_all(model) is that loop.  In PyTorch a training step on such
 * a model fails at loss.backward() ("element 0 of tensors does not require
 * grad and does not have a grad_fn").  In frost the step is still allowed: with
 * nothing to train it runs forward and the loss only - no backward, no
 * gradients, no optimizer update - which is how a fully frozen model is used
 * as a fixed feature extractor or evaluated with the training loop.
 *
 * The program prints each parameter's requires_grad, runs a few steps on a
 * fixed random batch and checks that the loss is finite, that no backward pass
 * ran and that every parameter kept its exact bits.
 */
#include "frost.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { IN = 10, BATCH = 8, STEPS = 3 };

int main(void) {
    fr_error err = {0};
    fr_trainer *trainer = NULL;
    uint64_t *before = NULL;
    int failures = 0;

    fr_model *model = fr_model_new(IN, 1, 1); /* samples are 10 floats */
    if (!model) {
        fprintf(stderr, "freeze_all: cannot make the model\n");
        return 1;
    }
    if (fr_model_add_linear(model, "fc1", IN, 5, &err) != FR_OK ||
        fr_model_add_relu(model, NULL, &err) != FR_OK ||
        fr_model_add_linear(model, "fc2", 5, 2, &err) != FR_OK)
        goto fail;
    /* nn.Linear's default initialisation, seeded */
    if (fr_model_init(model, 1, &err) != FR_OK)
        goto fail;

    fr_model_freeze_all(model);

    /* for name, p in model.named_parameters(): print(name, "requires_grad:", p.requires_grad) */
    size_t count = fr_model_param_count(model);
    before = calloc(count, sizeof *before);
    if (!before) {
        fr_fail(&err, FR_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < count; i++) {
        fr_param *p = fr_model_param(model, i);
        printf("%s requires_grad: %s\n", fr_param_name(p),
               fr_param_requires_grad(p) ? "True" : "False");
        before[i] = fr_param_checksum(p);
    }

    /* A fixed random batch: inputs in [-1, 1], labels 0 or 1. */
    float x[BATCH * IN];
    int32_t labels[BATCH];
    srand(1);
    for (int i = 0; i < BATCH * IN; i++)
        x[i] = 2.0f * (float)rand() / (float)RAND_MAX - 1.0f;
    for (int i = 0; i < BATCH; i++)
        labels[i] = i % 2;

    /* optimizer = torch.optim.SGD(model.parameters(), lr=0.1); nn.CrossEntropyLoss() */
    fr_train_config config;
    fr_train_config_default(&config);
    config.lr = 0.1;
    config.max_batch = BATCH;
    if (fr_trainer_new(model, &config, &trainer, &err) != FR_OK)
        goto fail;
    for (int step = 1; step <= STEPS; step++) {
        double loss;
        if (fr_trainer_step(trainer, x, labels, BATCH, &loss, NULL, &err) != FR_OK)
            goto fail;
        printf("step %d loss %.4f\n", step, loss);
        if (!isfinite(loss)) {
            fprintf(stderr, "freeze_all: the loss at step %d is %g\n", step, loss);
            failures++;
        }
    }
    for (int layer = 0; layer < fr_model_layer_count(model); layer++)
        if (fr_trainer_layer_backward_calls(trainer, layer) != 0) {
            fprintf(stderr, "freeze_all: backward ran for layer %s\n",
                    fr_model_layer_name(model, layer));
            failures++;
        }

    /* Every parameter is frozen: each must keep its exact bits. */
    for (size_t i = 0; i < count; i++) {
        fr_param *p = fr_model_param(model, i);
        if (fr_param_checksum(p) != before[i]) {
            fprintf(stderr, "freeze_all: frozen %s changed\n", fr_param_name(p));
            failures++;
        }
    }
    if (!failures)
        printf("frozen parameters unchanged, no trainable parameters\n");
    free(before);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return failures ? 1 : 0;

fail:
    fprintf(stderr, "freeze_all: %s\n", err.msg);
    free(before);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return 1;
}
