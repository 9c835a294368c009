/*
 * freeze_pattern.c - freeze every parameter whose name matches a pattern.
 *
 * The PyTorch this mirrors, a small conv net on 3x6x6 inputs:
 *
 *     class Net(nn.Module):
 *         def __init__(self):
 *             super().__init__()
 *             self.conv1 = nn.Conv2d(3, 16, 3)
 *             self.conv2 = nn.Conv2d(16, 32, 3)
 *             self.fc1 = nn.Linear(128, 10)       # 32 x 2 x 2 = 128
 *             self.fc2 = nn.Linear(10, 2)
 *         def forward(self, x):
 *             x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
 *             return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
 *
 *     model = Net()
 *     for name, p in model.named_parameters():
 *         if "conv" in name:
 *             p.requires_grad = False
 *
 * fr_model_freeze(model, "*conv*", &err) is that loop: the pattern is a shell
 * glob over the parameter names (`conv*`, `*.bias`, `fc?.weight`), and one that
 * matches nothing is an error rather than a silent no-op.  The frozen
 * convolutions still run forward, but backward stops at fc1: no gradient is
 * computed for them or propagated into them.
 *
 * The program prints each parameter's requires_grad, trains a few SGD steps on
 * a fixed random batch and checks that conv1 and conv2 kept their exact bits
 * while fc1 and fc2 moved.
 */
#include "frost.h"

#include <stdio.h>
#include <stdlib.h>

/* Net's layers in the order forward() runs them, as frost model text. */
static const char *const NET =
    "input 3 6 6\n"
    "conv1 = conv2d(3, 16, 3)\n"
    "relu\n"
    "conv2 = conv2d(16, 32, 3)\n"
    "relu\n"
    "flatten\n"
    "fc1 = linear(128, 10)\n"
    "relu\n"
    "fc2 = linear(10, 2)\n";

enum { IN = 3 * 6 * 6, BATCH = 8, STEPS = 3 };

int main(void) {
    fr_error err = {0};
    fr_trainer *trainer = NULL;
    uint64_t *before = NULL;
    int failures = 0;

    fr_model *model = NULL;
    if (fr_model_parse(NET, "NET", &model, &err) != FR_OK)
        goto fail;
    /* PyTorch's default initialisation, seeded */
    if (fr_model_init(model, 1, &err) != FR_OK)
        goto fail;

    if (fr_model_freeze(model, "*conv*", &err) != FR_OK)
        goto fail;

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
    }

    /* Frozen: the very same bits.  Trainable: moved. */
    for (size_t i = 0; i < count; i++) {
        fr_param *p = fr_model_param(model, i);
        bool changed = fr_param_checksum(p) != before[i];
        if (changed != fr_param_requires_grad(p)) {
            fprintf(stderr, "freeze_pattern: %s is %s but %s\n", fr_param_name(p),
                    fr_param_requires_grad(p) ? "trainable" : "frozen",
                    changed ? "changed" : "did not change");
            failures++;
        }
    }
    if (!failures)
        printf("frozen parameters unchanged, trainable parameters changed\n");
    free(before);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return failures ? 1 : 0;

fail:
    fprintf(stderr, "freeze_pattern: %s\n", err.msg);
    free(before);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return 1;
}
