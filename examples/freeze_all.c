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
#include "example.h"

enum { IN = 10 };

int main(void) {
    fr_error err = {0};
    fr_trainer *trainer = NULL;
    uint64_t *before = NULL;

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

    before = print_requires_grad(model);
    if (!before) {
        fr_fail(&err, FR_ENOMEM, "out of memory");
        goto fail;
    }
    if (train_a_few_steps(model, &trainer, &err) != FR_OK)
        goto fail;
    int failures = check_frozen_unchanged("freeze_all", model, before);
    /* Nothing trains, so no layer's backward ran at all. */
    for (int layer = 0; layer < fr_model_layer_count(model); layer++)
        if (fr_trainer_layer_backward_calls(trainer, layer) != 0) {
            fprintf(stderr, "freeze_all: layer %s ran backward\n", fr_model_layer_name(model, layer));
            failures++;
        }
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
