/*
 * run.c - frost train, frost eval and frost inspect.
 *
 * Training is set up in stages (model, frozen set, weights, data, output
 * paths), each followed by fr_comm_agree so that a failure on any one rank
 * ends every rank with that rank's message.  Before the first step the ranks
 * compare fingerprints of everything that must match.  Only rank 0 prints and
 * writes files; files are written whole or not at all.
 */
#define _POSIX_C_SOURCE 200809L
#include "run.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double peak_rss_mb(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss / 1024.0; /* Linux reports KiB */
}

static bool is_root(void) { return fr_comm_rank() == 0; }

/* ---------------------------------------------------------------- setup */

static int load_model(const frost_options *opts, fr_model **out, fr_error *err) {
    fr_model *model = NULL;
    int rc = fr_model_load(opts->model, &model, err);
    for (int i = 0; rc == FR_OK && i < opts->rule_count; i++) {
        const freeze_rule *rule = &opts->rules[i];
        rc = rule->freeze ? fr_model_freeze(model, rule->pattern, err)
                          : fr_model_unfreeze(model, rule->pattern, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "%s ", rule->freeze ? "--freeze" : "--unfreeze");
    }
    if (rc != FR_OK) {
        fr_model_free(model);
        return rc;
    }
    *out = model;
    return FR_OK;
}

static int load_data(const frost_options *opts, const fr_model *model, bool train,
                     fr_dataset **out, fr_error *err) {
    fr_dataset *data = NULL;
    int rc = fr_dataset_load_dir(opts->data, train, &data, err);
    if (rc == FR_OK && opts->classes)
        rc = fr_dataset_keep_classes(data, opts->classes, err);
    if (rc == FR_OK && fr_dataset_sample_numel(data) != fr_model_input_numel(model))
        rc = fr_fail(err, FR_ESHAPE, "%s: samples have %d values, the model's input takes %d",
                     opts->data, fr_dataset_sample_numel(data), fr_model_input_numel(model));
    if (rc == FR_OK && fr_dataset_class_count(data) > fr_model_output_numel(model))
        rc = fr_fail(err, FR_EFORMAT, "%s: label %d is out of range for a model with %d outputs",
                     opts->data, fr_dataset_class_count(data) - 1, fr_model_output_numel(model));
    if (rc != FR_OK) {
        fr_dataset_free(data);
        return rc;
    }
    *out = data;
    return FR_OK;
}

/* An output path must be writable before training starts, not after it. */
static int check_output_path(const char *flag, const char *path, fr_error *err) {
    if (!path)
        return FR_OK;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fr_fail(err, FR_EIO, "%s %s: is a directory", flag, path);
    char *copy = strdup(path);
    if (!copy)
        return fr_fail(err, FR_ENOMEM, "out of memory");
    const char *dir = dirname(copy);
    int rc = FR_OK;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        rc = fr_fail(err, FR_EIO, "%s %s: directory %s does not exist", flag, path, dir);
    else if (access(dir, W_OK) != 0)
        rc = fr_fail(err, FR_EIO, "%s %s: directory %s is not writable", flag, path, dir);
    free(copy);
    return rc;
}

/* The ranks must agree on everything that shapes the update. */
static int compare_ranks(const frost_options *opts, const fr_model *model,
                         const fr_dataset *data, fr_error *err) {
    double settings[] = {opts->batch_size, opts->epochs, opts->steps, opts->seed, opts->shuffle};
    return fr_comm_check_run(model, &opts->train, settings, sizeof settings / sizeof settings[0],
                             fr_dataset_size(data), err);
}

/* Weights: --init on every rank (then checked equal), else seeded init on
 * rank 0 broadcast to all, so every replica starts from the same bits. */
static int initialise_weights(const frost_options *opts, fr_model *model, fr_error *err) {
    int rc;
    if (opts->init) {
        rc = fr_comm_agree(fr_model_load_weights(model, opts->init, err), err);
        if (rc == FR_OK)
            rc = fr_comm_check_same(fr_model_checksum(model), "the --init weights", err);
        return rc;
    }
    fr_model_init(model, (uint64_t)opts->seed);
    return fr_comm_agree(fr_comm_broadcast_model(model, err), err);
}

/* ------------------------------------------------------------- batches */

/* Copy this rank's rows of the global batch (the rest stay untouched). */
static void gather_batch(const fr_dataset *data, const int *order, int batch, int first,
                         int count, float *x, int32_t *labels) {
    int numel = fr_dataset_sample_numel(data);
    const float *images = fr_dataset_images(data);
    const uint8_t *all_labels = fr_dataset_labels(data);
    for (int i = first; i < first + count; i++) {
        memcpy(x + (size_t)i * numel, images + (size_t)order[i] * numel, sizeof(float) * numel);
        labels[i] = all_labels[order[i]];
    }
    (void)batch;
}

/* Loss and accuracy of the model on a whole dataset. */
static int evaluate_dataset(fr_trainer *trainer, const fr_dataset *data, int batch_size,
                            float *x, int32_t *labels, double *loss, double *accuracy,
                            fr_error *err) {
    int n = fr_dataset_size(data);
    int *order = malloc(sizeof(int) * (size_t)n);
    if (!order)
        return fr_fail(err, FR_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        order[i] = i;
    double loss_sum = 0.0;
    long correct_sum = 0;
    int rc = FR_OK;
    for (int start = 0; start < n && rc == FR_OK; start += batch_size) {
        int batch = n - start < batch_size ? n - start : batch_size, first, count;
        fr_trainer_rank_rows(trainer, batch, &first, &count);
        gather_batch(data, order + start, batch, first, count, x, labels);
        double batch_loss;
        long correct;
        rc = fr_trainer_evaluate(trainer, x, labels, batch, &batch_loss, &correct, err);
        loss_sum += batch_loss * batch;
        correct_sum += correct;
    }
    free(order);
    *loss = loss_sum / n;
    *accuracy = (double)correct_sum / n;
    return rc;
}

/* ---------------------------------------------------------------- train */

typedef struct training_run {
    const frost_options *opts;
    fr_model *model;
    fr_dataset *train, *test;
    fr_trainer *trainer;
    float *x;
    int32_t *labels;
    int *order;
    FILE *metrics;
    char *metrics_tmp;
    uint64_t *frozen_before; /* per-parameter checksums of frozen parameters */
} training_run;

static void free_run(training_run *run) {
    if (run->metrics) {
        fclose(run->metrics);
        remove(run->metrics_tmp); /* no partial output */
    }
    free(run->metrics_tmp);
    free(run->x);
    free(run->labels);
    free(run->order);
    free(run->frozen_before);
    fr_trainer_free(run->trainer);
    fr_dataset_free(run->train);
    fr_dataset_free(run->test);
    fr_model_free(run->model);
}

static void record_frozen(training_run *run) {
    for (size_t i = 0; i < fr_model_param_count(run->model); i++) {
        fr_param *p = fr_model_param(run->model, i);
        run->frozen_before[i] = fr_param_requires_grad(p) ? 0 : fr_param_checksum(p);
    }
}

/* A frozen parameter that changed is a bug in frost: fail loudly. */
static int verify_frozen(training_run *run, fr_error *err) {
    for (size_t i = 0; i < fr_model_param_count(run->model); i++) {
        fr_param *p = fr_model_param(run->model, i);
        if (!fr_param_requires_grad(p) && fr_param_checksum(p) != run->frozen_before[i])
            return fr_fail(err, FR_EINVAL,
                           "frozen parameter '%s' changed during training: this is a bug in frost",
                           fr_param_name(p));
    }
    return FR_OK;
}

static int open_metrics(training_run *run, fr_error *err) {
    const char *path = run->opts->metrics;
    if (!path || !is_root())
        return FR_OK;
    size_t len = strlen(path) + 32;
    run->metrics_tmp = malloc(len);
    if (!run->metrics_tmp)
        return fr_fail(err, FR_ENOMEM, "out of memory");
    snprintf(run->metrics_tmp, len, "%s.tmp.%ld", path, (long)getpid());
    run->metrics = fopen(run->metrics_tmp, "w");
    if (!run->metrics)
        return fr_fail(err, FR_EIO, "%s: cannot write: %s", path, strerror(errno));
    fprintf(run->metrics, "step,epoch,loss,accuracy,samples_per_s,allreduce_bytes\n");
    return FR_OK;
}

static int close_metrics(training_run *run, fr_error *err) {
    if (!run->metrics)
        return FR_OK;
    FILE *f = run->metrics;
    run->metrics = NULL;
    bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(run->metrics_tmp, run->opts->metrics) != 0) {
        remove(run->metrics_tmp);
        return fr_fail(err, FR_EIO, "%s: cannot write: %s", run->opts->metrics, strerror(errno));
    }
    return FR_OK;
}

static void format_duration(double seconds, char *buf, size_t len) {
    long s = seconds > 0 && seconds < 1e9 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, len, "%ld:%02ld", s / 60, s % 60);
}

static int setup_training(training_run *run, fr_error *err) {
    const frost_options *opts = run->opts;
    int rc = fr_comm_agree(load_model(opts, &run->model, err), err);
    if (rc == FR_OK)
        rc = initialise_weights(opts, run->model, err);
    if (rc == FR_OK)
        rc = fr_comm_agree(load_data(opts, run->model, true, &run->train, err), err);
    if (rc == FR_OK)
        rc = fr_comm_agree(load_data(opts, run->model, false, &run->test, err), err);
    if (rc == FR_OK) {
        int local = FR_OK;
        if (is_root()) {
            local = check_output_path("--save", opts->save, err);
            if (local == FR_OK)
                local = check_output_path("--metrics", opts->metrics, err);
        }
        rc = fr_comm_agree(local, err);
    }
    if (rc == FR_OK)
        rc = compare_ranks(opts, run->model, run->train, err);
    if (rc == FR_OK)
        rc = fr_comm_agree(fr_trainer_new(run->model, &opts->train, &run->trainer, err), err);
    if (rc != FR_OK)
        return rc;
    size_t n = (size_t)fr_dataset_size(run->train);
    run->x = malloc(sizeof(float) * (size_t)opts->batch_size * fr_model_input_numel(run->model));
    run->labels = malloc(sizeof(int32_t) * (size_t)opts->batch_size);
    run->order = malloc(sizeof(int) * n);
    run->frozen_before = calloc(fr_model_param_count(run->model) + 1, sizeof(uint64_t));
    int local = run->x && run->labels && run->order && run->frozen_before
                    ? FR_OK
                    : fr_fail(err, FR_ENOMEM, "out of memory for a batch of %d", opts->batch_size);
    if (local == FR_OK)
        local = open_metrics(run, err);
    return fr_comm_agree(local, err);
}

static void print_header(const training_run *run) {
    const frost_options *opts = run->opts;
    size_t total = fr_model_numel(run->model), trainable = fr_model_trainable_numel(run->model);
    printf("frost %s: %d rank%s x %d thread%s, global batch %d, %d training samples\n",
           FR_VERSION, fr_comm_size(), fr_comm_size() > 1 ? "s" : "",
           fr_trainer_threads(run->trainer), fr_trainer_threads(run->trainer) > 1 ? "s" : "",
           opts->batch_size, fr_dataset_size(run->train));
    printf("parameters %zu, trainable %zu (%.1f%%), frozen %zu; allreduce %zu bytes per step\n",
           total, trainable, total ? 100.0 * trainable / total : 0.0, total - trainable,
           fr_trainer_allreduce_bytes(run->trainer));
    fflush(stdout);
}

int frost_train(const frost_options *opts, fr_error *err) {
    training_run run = {.opts = opts};
    int rc = setup_training(&run, err);
    if (rc != FR_OK) {
        free_run(&run);
        return rc;
    }
    record_frozen(&run);
    if (is_root())
        print_header(&run);

    int n = fr_dataset_size(run.train), batch_size = opts->batch_size;
    long batches_per_epoch = (n + batch_size - 1) / batch_size;
    long total_steps = opts->steps;
    if (opts->epochs > 0 && (total_steps == 0 || opts->epochs * batches_per_epoch < total_steps))
        total_steps = opts->epochs * batches_per_epoch;

    double start = now_seconds(), interval_start = start, last_loss = 0.0;
    long step = 0, interval_samples = 0;
    double samples_trained = 0;
    size_t interval_bytes = fr_trainer_bytes_sent(run.trainer);
    for (long epoch = 0; step < total_steps && rc == FR_OK; epoch++) {
        fr_epoch_order(run.order, n, (uint64_t)opts->seed, epoch, opts->shuffle);
        for (long b = 0; b < batches_per_epoch && step < total_steps && rc == FR_OK; b++) {
            int begin = (int)(b * batch_size);
            int batch = n - begin < batch_size ? n - begin : batch_size, first, count;
            fr_trainer_rank_rows(run.trainer, batch, &first, &count);
            gather_batch(run.train, run.order + begin, batch, first, count, run.x, run.labels);
            long correct = 0;
            rc = fr_trainer_step(run.trainer, run.x, run.labels, batch, &last_loss, &correct, err);
            if (rc != FR_OK)
                break;
            step++;
            interval_samples += batch;
            samples_trained += batch;
            if (step % opts->log_every != 0 && step != total_steps)
                continue;
            /* Replicas must stay bit-identical; a cheap check at every log. */
            rc = fr_comm_check_same(fr_model_checksum(run.model), "the weights", err);
            if (rc != FR_OK)
                break;
            double t = now_seconds();
            double rate = interval_samples / (t - interval_start);
            size_t sent = fr_trainer_bytes_sent(run.trainer);
            size_t bytes_per_step = (sent - interval_bytes) /
                                    (size_t)(step % opts->log_every ? step % opts->log_every : opts->log_every);
            if (is_root()) {
                char eta[32];
                format_duration((total_steps - step) * (t - start) / step, eta, sizeof eta);
                printf("epoch %ld step %ld/%ld loss %.4f acc %.1f%% %.0f samples/s ETA %s\n",
                       epoch + 1, step, total_steps, last_loss, 100.0 * correct / batch, rate, eta);
                fflush(stdout);
                if (run.metrics)
                    fprintf(run.metrics, "%ld,%ld,%.6f,%.4f,%.1f,%zu\n", step, epoch + 1, last_loss,
                            (double)correct / batch, rate, bytes_per_step);
            }
            interval_start = t;
            interval_samples = 0;
            interval_bytes = sent;
        }
    }
    double elapsed = now_seconds() - start;
    if (rc == FR_OK)
        rc = verify_frozen(&run, err);
    double test_loss = 0.0, test_accuracy = 0.0;
    if (rc == FR_OK)
        rc = evaluate_dataset(run.trainer, run.test, batch_size, run.x, run.labels, &test_loss,
                              &test_accuracy, err);
    if (rc == FR_OK && is_root() && opts->save)
        rc = fr_model_save_weights(run.model, opts->save, err);
    rc = fr_comm_agree(rc, err);
    if (rc == FR_OK && is_root())
        rc = close_metrics(&run, err);
    if (rc == FR_OK && is_root()) {
        printf("done: %ld steps in %.1f s, %.0f samples/s, final loss %.4f\n", step, elapsed,
               elapsed > 0 ? samples_trained / elapsed : 0.0, last_loss);
        printf("test: loss %.4f accuracy %.2f%% (%d samples)\n", test_loss, 100.0 * test_accuracy,
               fr_dataset_size(run.test));
        printf("frozen parameters: %zu, unchanged (checksum %016llx)\n",
               fr_model_numel(run.model) - fr_model_trainable_numel(run.model),
               (unsigned long long)fr_model_frozen_checksum(run.model));
        printf("allreduce: %zu bytes per step, %zu bytes in all; peak memory %.0f MB\n",
               fr_trainer_allreduce_bytes(run.trainer), fr_trainer_bytes_sent(run.trainer),
               peak_rss_mb());
        if (opts->save)
            printf("saved %s\n", opts->save);
    }
    free_run(&run);
    return rc;
}


/* ----------------------------------------------------------------- eval */

int frost_eval(const frost_options *opts, fr_error *err) {
    fr_model *model = NULL;
    fr_dataset *test = NULL;
    fr_trainer *trainer = NULL;
    float *x = NULL;
    int32_t *labels = NULL;
    int rc = fr_comm_agree(load_model(opts, &model, err), err);
    if (rc == FR_OK)
        rc = fr_comm_agree(fr_model_load_weights(model, opts->init, err), err);
    if (rc == FR_OK)
        rc = fr_comm_agree(load_data(opts, model, false, &test, err), err);
    if (rc == FR_OK)
        rc = fr_comm_agree(fr_trainer_new(model, &opts->train, &trainer, err), err);
    if (rc == FR_OK) {
        x = malloc(sizeof(float) * (size_t)opts->batch_size * fr_model_input_numel(model));
        labels = malloc(sizeof(int32_t) * (size_t)opts->batch_size);
        rc = fr_comm_agree(x && labels ? FR_OK : fr_fail(err, FR_ENOMEM, "out of memory"), err);
    }
    double loss = 0.0, accuracy = 0.0;
    if (rc == FR_OK)
        rc = evaluate_dataset(trainer, test, opts->batch_size, x, labels, &loss, &accuracy, err);
    if (rc == FR_OK && is_root())
        printf("test: loss %.4f accuracy %.2f%% (%d samples)\n", loss, 100.0 * accuracy,
               fr_dataset_size(test));
    free(x);
    free(labels);
    fr_trainer_free(trainer);
    fr_dataset_free(test);
    fr_model_free(model);
    return rc;
}

/* -------------------------------------------------------------- inspect */

int frost_inspect(const frost_options *opts, fr_error *err) {
    fr_model *model = NULL;
    int rc = fr_comm_agree(load_model(opts, &model, err), err);
    if (rc != FR_OK)
        return rc;
    if (is_root()) {
        for (size_t i = 0; i < fr_model_param_count(model); i++) {
            fr_param *p = fr_model_param(model, i);
            char shape[96];
            fr_param_shape_string(p, shape, sizeof shape);
            printf("%s %s %zu %s\n", fr_param_name(p), shape, fr_param_numel(p),
                   fr_param_requires_grad(p) ? "trainable" : "frozen");
        }
        size_t total = fr_model_numel(model), trainable = fr_model_trainable_numel(model);
        printf("total parameters: %zu\n", total);
        printf("trainable parameters: %zu (%.2f%%)\n", trainable,
               total ? 100.0 * trainable / total : 0.0);
        printf("frozen parameters: %zu\n", total - trainable);
        printf("allreduce bytes per step: %zu\n", trainable * sizeof(float));
    }
    fr_model_free(model);
    return FR_OK;
}
