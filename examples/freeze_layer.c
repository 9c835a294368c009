/*
 * freeze_layer.c - freeze one layer of a model and train the rest.
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
 *     for p in model.fc1.parameters():
 *         p.requires_grad = False
 *
 * fr_model_freeze_layer(model, "fc1", &err) is that loop.  Frozen parameters
 * get no gradient buffer and no optimizer state, and because nothing before
 * fc2 trains, backward stops at fc2: no gradient flows into fc1 at all.
 *
 * The program prints each parameter's requires_grad, trains a few SGD steps on
 * a fixed random batch and checks that fc1 kept its exact bits while fc2 moved.
 */
#include "example.h"

enum { IN = 10 };

int main(void) {
    fr_error err = {0};
    fr_trainer *trainer = NULL;
    uint64_t *before = NULL;

    fr_model *model = fr_model_new(IN, 1, 1); /* samples are 10 floats */
    if (!model) {
        fprintf(stderr, "freeze_layer: cannot make the model\n");
        return 1;
    }
    if (fr_model_add_linear(model, "fc1", IN, 5, &err) != FR_OK ||
        fr_model_add_relu(model, NULL, &err) != FR_OK ||
        fr_model_add_linear(model, "fc2", 5, 2, &err) != FR_OK)
        goto fail;
    /* nn.Linear's default initialisation, seeded */
    if (fr_model_init(model, 1, &err) != FR_OK)
        goto fail;

    if (fr_model_freeze_layer(model, "fc1", &err) != FR_OK)
        goto fail;

    before = print_requires_grad(model);
    if (!before) {
        fr_fail(&err, FR_ENOMEM, "out of memory");
        goto fail;
    }
    if (train_a_few_steps(model, &trainer, &err) != FR_OK)
        goto fail;
    int failures = check_frozen_unchanged("freeze_layer", model, before);
    free(before);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return failures ? 1 : 0;

fail:
    fprintf(stderr, "freeze_layer: %s\n", err.msg);
    free(before);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return 1;
}
