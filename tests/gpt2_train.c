/*
 * gpt2_train.c - a test driver: GPT-2 from a Hugging Face config.json and
 * model.safetensors, trained K steps with AdamW on DATADIR's token rows
 * (language modelling), batch k being rows (k*B + j) mod N as
 * tests/torch_gpt2.py's `train` takes them; prints "step loss" per step.
 *
 *   gpt2_train MODEL_DIR DATADIR STEPS BATCH LR WEIGHT_DECAY THREADS [FREEZE...]
 *
 * With GPT2_GRADS=FILE it writes instead the gradient of the first batch's
 * loss for every parameter (as a weights file, under the parameters' names):
 * one SGD step at learning rate 1024 (a power of two, so lr * g is exact and
 * only the subtraction rounds), then (before - after) / 1024.  With
 * GPT2_LOGITS=FILE it writes the logits of the first BATCH rows (raw float32,
 * BATCH x T x V) and trains nothing.  GPT2_ADAPTER=DIR puts a PEFT adapter
 * directory on the model, and only the adapters train (GPT2_GRADS is then an
 * adapter directory of their gradients); GPT2_SAVE=FILE and
 * GPT2_SAVE_ADAPTER=DIR write the weights and the adapters after training.
 */
#include "frost.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: gpt2_train MODEL_DIR DATADIR STEPS BATCH LR WD THREADS [FREEZE...]\n");
        return 2;
    }
    fr_error err = {0};
    char config[4096], weights[4096];
    snprintf(config, sizeof config, "%s/config.json", argv[1]);
    snprintf(weights, sizeof weights, "%s/model.safetensors", argv[1]);
    int steps = atoi(argv[3]), batch = atoi(argv[4]);
    fr_dataset *data = NULL;
    fr_model *model = NULL;
    fr_trainer *trainer = NULL;
    int rc = fr_comm_init(&argc, &argv, &err);
    if (rc == FR_OK)
        rc = fr_dataset_load_dir(argv[2], true, &data, &err);
    int dims[FR_MAX_DIMS];
    if (rc == FR_OK && fr_dataset_sample_dims(data, dims) == 1)
        rc = fr_model_load_gpt2(config, dims[0], &model, &err);
    if (rc == FR_OK)
        rc = fr_model_load_weights(model, weights, &err);
    /* GPT2_ADAPTER=DIR: a PEFT adapter on the model, which alone trains. */
    const char *adapter = getenv("GPT2_ADAPTER");
    if (rc == FR_OK && adapter && (rc = fr_model_load_adapter(model, adapter, &err)) == FR_OK)
        fr_model_freeze_base(model);
    for (int i = 8; i < argc && rc == FR_OK; i++)
        rc = fr_model_freeze(model, argv[i], &err);
    fr_train_config tc;
    fr_train_config_default(&tc);
    const char *grads_path = getenv("GPT2_GRADS");
    tc.optimizer = grads_path ? FR_SGD : FR_ADAMW;
    tc.lr = grads_path ? 1024.0 : atof(argv[5]);
    tc.weight_decay = grads_path ? 0.0 : atof(argv[6]);
    if (grads_path)
        steps = 1;
    tc.threads = atoi(argv[7]);
    tc.max_batch = batch;
    tc.cache_mb = -1;
    if (rc == FR_OK)
        rc = fr_trainer_new(model, &tc, &trainer, &err);
    size_t params = rc == FR_OK ? fr_model_param_count(model) : 0, total = 0;
    for (size_t i = 0; i < params; i++)
        total += fr_param_numel(fr_model_param(model, i));
    float *before = grads_path ? malloc(sizeof(float) * (total ? total : 1)) : NULL;
    for (size_t i = 0, at = 0; before && i < params; i++) {
        fr_param *p = fr_model_param(model, i);
        memcpy(before + at, fr_param_data(p), sizeof(float) * fr_param_numel(p));
        at += fr_param_numel(p);
    }
    const char *logits_path = getenv("GPT2_LOGITS");
    if (rc == FR_OK && logits_path) {
        int out_dims[FR_MAX_DIMS];
        fr_model_output_dims(model, out_dims);
        size_t count = (size_t)batch * (size_t)out_dims[0] * (size_t)out_dims[1];
        float *logits = malloc(sizeof(float) * count);
        FILE *file = logits ? fopen(logits_path, "wb") : NULL;
        rc = fr_trainer_predict(trainer, fr_dataset_tokens(data), batch, logits, &err);
        if (rc == FR_OK && (!file || fwrite(logits, sizeof(float), count, file) != count))
            rc = fr_fail(&err, FR_EIO, "%s: cannot write the logits", logits_path);
        if (file)
            fclose(file);
        free(logits);
        steps = 0;
    }
    int n = fr_dataset_size(data);
    int *ids = malloc(sizeof(int) * (size_t)batch);
    for (int k = 0; k < steps && rc == FR_OK; k++) {
        for (int j = 0; j < batch; j++)
            ids[j] = (int)(((long)k * batch + j) % n);
        double loss;
        rc = fr_trainer_step_samples(trainer, data, ids, batch, &loss, NULL, &err);
        if (rc == FR_OK && fr_comm_rank() == 0)
            printf("%d %.9g\n", k + 1, loss);
    }
    if (rc == FR_OK && grads_path && (rc = fr_trainer_sync(trainer, &err)) == FR_OK) {
        for (size_t i = 0, at = 0; i < params; i++) {
            fr_param *p = fr_model_param(model, i);
            float *values = fr_param_data(p);
            for (size_t j = 0; j < fr_param_numel(p); j++)
                values[j] = (before[at + j] - values[j]) / 1024.0f;
            at += fr_param_numel(p);
        }
        /* With an adapter its gradients go to an adapter directory. */
        rc = adapter ? fr_model_save_adapter(model, grads_path, &err)
                     : fr_model_save_weights(model, grads_path, &err);
    }
    free(before);
    if (rc == FR_OK && getenv("GPT2_SAVE"))
        rc = fr_model_save_weights(model, getenv("GPT2_SAVE"), &err);
    if (rc == FR_OK && getenv("GPT2_SAVE_ADAPTER"))
        rc = fr_model_save_adapter(model, getenv("GPT2_SAVE_ADAPTER"), &err);
    if (rc != FR_OK)
        fprintf(stderr, "gpt2_train: %s\n", err.msg);
    free(ids);
    fr_trainer_free(trainer);
    fr_model_free(model);
    fr_dataset_free(data);
    fr_comm_finalize();
    return rc == FR_OK ? 0 : 1;
}
