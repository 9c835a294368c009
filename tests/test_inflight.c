/*
 * test_inflight.c - a step's update in flight (fr_trainer_step on several
 * ranks returns before its gradient sums are applied) is invisible through
 * the API: whatever reads the model, every trainer call and a change of the
 * frozen set see the weights as if the step had ended with its update.
 *
 * Run under mpirun on 2 ranks (tests/mpi_inflight.sh), once with updates in
 * flight and once with config.sync_updates (each step applies its update
 * before it returns): the same arithmetic in the same order, so rank 0's
 * record of what it read after each call must be the same text.  A read
 * that saw the weights before the update, or an update applied with the
 * wrong plan or step count, changes the record.
 *
 * The model's large layer (fc3, 600,000 weights) has its gradient computed
 * and sent in row blocks and its forward run by blocks of outputs.
 *
 * Usage: test_inflight THREADS CHECKPOINT_PATH in-flight|sync BUCKET_MB
 */
#include "frost.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 32
#define INPUT 64
#define CLASSES 10

static int rank;

static void die(const char *what, const fr_error *err) {
    fprintf(stderr, "rank %d: %s: %s\n", rank, what, err->msg);
    exit(1);
}

/* Rank 0 records; every rank computes the same. */
static void record(const char *what, long step, fr_model *model, double value) {
    if (rank == 0)
        printf("%s %ld weights %016llx value %.9g\n", what, step,
               (unsigned long long)fr_model_checksum(model), value);
}

int main(int argc, char **argv) {
    fr_error err = {0};
    if (fr_comm_init(&argc, &argv, &err) != FR_OK)
        die("fr_comm_init", &err);
    if (argc != 5) {
        fprintf(stderr, "usage: test_inflight THREADS CHECKPOINT_PATH in-flight|sync BUCKET_MB\n");
        return 2;
    }
    rank = fr_comm_rank();

    fr_model *model = fr_model_new(1, 1, INPUT);
    if (!model || fr_model_add_linear(model, "fc1", INPUT, 32, &err) != FR_OK ||
        fr_model_add_relu(model, "relu1", &err) != FR_OK ||
        fr_model_add_linear(model, "fc2", 32, 600, &err) != FR_OK ||
        fr_model_add_relu(model, "relu2", &err) != FR_OK ||
        fr_model_add_linear(model, "fc3", 600, 1000, &err) != FR_OK ||
        fr_model_add_relu(model, "relu3", &err) != FR_OK ||
        fr_model_add_linear(model, "fc4", 1000, CLASSES, &err) != FR_OK ||
        fr_model_init(model, 7, &err) != FR_OK)
        die("building the model", &err);

    fr_train_config config;
    fr_train_config_default(&config);
    config.lr = 0.05;
    config.momentum = 0.9;
    config.threads = atoi(argv[1]);
    config.max_batch = BATCH;
    /* 0.05: fc4+fc3 (fc3's weight in two row blocks, the second sent after
     * the last bucket), fc2, fc1; 100: one bucket, blocked. */
    config.bucket_mb = atof(argv[4]);
    config.sync_updates = strcmp(argv[3], "sync") == 0;
    fr_trainer *trainer;
    if (fr_trainer_new(model, &config, &trainer, &err) != FR_OK)
        die("fr_trainer_new", &err);

    static float x[BATCH * INPUT];
    static int32_t y[BATCH];
    uint64_t s = 12345;
    for (int i = 0; i < BATCH * INPUT; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
    }
    for (int i = 0; i < BATCH; i++)
        y[i] = (int32_t)((i * 7 + 3) % CLASSES);

    volatile sig_atomic_t stop = 0;
    fr_trainer_watch_stop(trainer, &stop);
    double loss = 0.0;
    long correct = 0;
    for (long step = 1; step <= 10; step++) {
        if (step == 9 && rank == fr_comm_size() - 1)
            stop = 1; /* one rank only: every rank must learn of it */
        if (fr_trainer_step(trainer, x, y, BATCH, &loss, &correct, &err) != FR_OK)
            die("fr_trainer_step", &err);
        switch (step) {
        case 1: /* the model's checksum */
            record("checksum", step, model, loss);
            break;
        case 2: /* a parameter read through fr_model_find_param */
            record("param", step, model,
                   fr_param_data(fr_model_find_param(model, "fc3.weight"))[1234]);
            break;
        case 3: /* the frozen set changed with the update in flight */
            if (fr_model_freeze(model, "fc4.*", &err) != FR_OK)
                die("fr_model_freeze", &err);
            break;
        case 4:
            record("frozen fc4", step, model, loss);
            if (fr_model_unfreeze(model, "fc4.*", &err) != FR_OK)
                die("fr_model_unfreeze", &err);
            break;
        case 5: { /* evaluation right after a step */
            double eval_loss = 0.0;
            if (fr_trainer_evaluate(trainer, x, y, BATCH, &eval_loss, NULL, &err) != FR_OK)
                die("fr_trainer_evaluate", &err);
            record("evaluate", step, model, eval_loss);
            break;
        }
        case 6: { /* a checkpoint, restored into the next trainer */
            if (fr_trainer_save_checkpoint(trainer, argv[2], NULL, 0, &err) != FR_OK)
                die("fr_trainer_save_checkpoint", &err);
            record("saved", step, model, loss);
            break;
        }
        case 7:
            record("stop before", step, model, fr_trainer_stop_requested(trainer));
            break;
        default:
            break;
        }
        /* fr_trainer_sync applies nothing twice. */
        if (step == 8) {
            if (fr_trainer_sync(trainer, &err) != FR_OK || fr_trainer_sync(trainer, &err) != FR_OK)
                die("fr_trainer_sync", &err);
            record("synced", step, model, loss);
        }
    }
    record("stop after", 10, model, fr_trainer_stop_requested(trainer));

    /* The step-6 checkpoint, restored over the update in flight. */
    fr_checkpoint *checkpoint;
    if (fr_checkpoint_open(argv[2], &checkpoint, &err) != FR_OK ||
        fr_trainer_restore(trainer, checkpoint, false, &err) != FR_OK)
        die("restoring", &err);
    fr_checkpoint_close(checkpoint);
    record("restored", fr_trainer_steps_done(trainer), model, 0.0);
    if (fr_trainer_step(trainer, x, y, BATCH, &loss, NULL, &err) != FR_OK)
        die("fr_trainer_step", &err);
    record("after restore", fr_trainer_steps_done(trainer), model, loss);

    fr_trainer_free(trainer);
    fr_model_free(model);
    fr_comm_finalize();
    return 0;
}
