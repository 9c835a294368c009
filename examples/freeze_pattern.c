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
#include "example.h"

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

int main(void) {
    fr_error err = {0};
    fr_trainer *trainer = NULL;
    uint64_t *before = NULL;

    fr_model *model = NULL;
    if (fr_model_parse(NET, "NET", &model, &err) != FR_OK)
        goto fail;
    /* PyTorch's default initialisation, seeded */
    if (fr_model_init(model, 1, &err) != FR_OK)
        goto fail;

    if (fr_model_freeze(model, "*conv*", &err) != FR_OK)
        goto fail;

    before = print_requires_grad(model);
    if (!before) {
        fr_fail(&err, FR_ENOMEM, "out of memory");
        goto fail;
    }
    if (train_a_few_steps(model, &trainer, &err) != FR_OK)
        goto fail;
    int failures = check_frozen_unchanged("freeze_pattern", model, before);
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
