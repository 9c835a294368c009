/*
 * freeze_api.c - README.md's "The same in C", whole: a model from its text, weights
 * from a safetensors file, the three ways of freezing, a few training steps
 * and the weights written back.  It is built against the installed library,
 * as any program outside frost's tree would be:
 *
 *     cc freeze_api.c $(pkg-config --cflags --libs frost) -o freeze_api
 *     ./freeze_api
 *
 * (tests/install.sh does exactly this after `make install DESTDIR=...`, and
 * tests/docs.sh checks that every call README.md shows is made here.)
 *
 * The PyTorch it mirrors:
 *
 *     for p in model.parameters(): p.requires_grad = False       # everything
 *     for p in model.fc1.parameters(): p.requires_grad = False   # one layer
 *     for n, p in model.named_parameters():                      # by name
 *         if n.startswith("conv"): p.requires_grad = False
 */
#include <frost.h>

#include <stdio.h>
#include <stdlib.h>

#define MODEL "conv1 = conv2d(1, 4, 3); relu; flatten; fc1 = linear(2704, 16); relu; " \
              "fc2 = linear(16, 10)"
enum { BATCH = 8, STEPS = 3 };

static void print_trainable(const char *what, fr_model *model) {
    printf("%-22s", what);
    for (size_t i = 0; i < fr_model_param_count(model); i++) {
        fr_param *p = fr_model_param(model, i);
        if (fr_param_requires_grad(p))
            printf(" %s", fr_param_name(p));
    }
    printf(" (%zu of %zu values trainable)\n", fr_model_trainable_numel(model),
           fr_model_numel(model));
}

int main(void) {
    fr_error err = {0};
    fr_model *model = NULL;
    fr_trainer *trainer = NULL;
    fr_train_config config;
    static float x[BATCH * 28 * 28];
    int32_t labels[BATCH];
    double loss = 0.0;

    /* "Pretrained" weights to start from: a seeded initialisation, saved. */
    if (fr_model_load(MODEL, &model, &err) != FR_OK || fr_model_init(model, 7, &err) != FR_OK ||
        fr_model_save_weights(model, "pretrained.safetensors", &err) != FR_OK)
        goto fail;
    fr_model_free(model);
    model = NULL;

    if (fr_model_load(MODEL, &model, &err) != FR_OK)
        goto fail;
    if (fr_model_load_weights(model, "pretrained.safetensors", &err) != FR_OK)
        goto fail;
    fr_model_freeze_all(model);
    print_trainable("--freeze '*':", model);
    fr_model_unfreeze_all(model);
    if (fr_model_freeze_layer(model, "fc1", &err) != FR_OK)
        goto fail;
    print_trainable("--freeze fc1:", model);
    fr_model_unfreeze_all(model);
    if (fr_model_freeze(model, "conv*", &err) != FR_OK)
        goto fail;
    print_trainable("--freeze 'conv*':", model);
    uint64_t frozen_before = fr_model_frozen_checksum(model);

    fr_train_config_default(&config);
    config.lr = 0.05;
    config.max_batch = BATCH;
    if (fr_trainer_new(model, &config, &trainer, &err) != FR_OK)
        goto fail;
    for (int i = 0; i < BATCH * 28 * 28; i++)
        x[i] = (float)((i * 7919) % 256) / 255.0f;
    for (int i = 0; i < BATCH; i++)
        labels[i] = i % 10;
    for (int step = 1; step <= STEPS; step++) {
        if (fr_trainer_step(trainer, x, labels, BATCH, &loss, NULL, &err) != FR_OK)
            goto fail;
        printf("step %d loss %.4f\n", step, loss);
    }
    if (fr_model_save_weights(model, "tuned.safetensors", &err) != FR_OK)
        goto fail;
    bool unchanged = fr_model_frozen_checksum(model) == frozen_before;
    printf("conv1 %s; tuned.safetensors written\n", unchanged ? "unchanged" : "CHANGED");
    fr_trainer_free(trainer);
    fr_model_free(model);
    return unchanged ? 0 : 1;

fail:
    fprintf(stderr, "freeze_api: %s\n", err.msg);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return 1;
}
