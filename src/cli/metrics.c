/*
 * metrics.c - what a training run records besides its output: the --metrics
 * CSV and the --tensorboard event file, rank 0's.  Opened at setup, a row at
 * each log point, committed when the run ends or a signal stops it.  The
 * metrics file is written whole or not at all; the event file is a log that
 * grows as the run goes.
 */
#include "setup.h"

#include <stdio.h>

/* The learning rate of each logged step, and with --clip-grad-norm the
 * gradient's norm before clipping: the metrics' last columns. */
static const char *schedule_columns(const frost_options *opts) {
    return opts->train.clip_grad_norm > 0.0 ? ",lr,grad_norm" : ",lr";
}

static void schedule_values(const run_state *run, long step, char *buf, size_t len) {
    int used = snprintf(buf, len, ",%.12g", fr_trainer_lr(run->trainer, -1, step - 1));
    if (run->opts->train.clip_grad_norm > 0.0 && used > 0 && (size_t)used < len)
        snprintf(buf + used, len - (size_t)used, ",%.9g", fr_trainer_grad_norm(run->trainer));
}

/*
 * The metrics grow row by row in the library's atomic file (PATH.tmp.PID) and
 * replace PATH once, at the end of the run or when a signal stops it: synced,
 * renamed, and the directory synced, as weights and checkpoints are.  Rows
 * are not synced as they come: until the commit they are only in the
 * temporary file, which a failed run removes (no partial output), so a sync
 * per row would make nothing more durable.
 */
static int open_metrics(run_state *run, fr_error *err) {
    const char *path = run->opts->metrics;
    if (!path || !is_root())
        return FR_OK;
    int rc = fr_atomic_open(path, &run->metrics, err);
    if (rc == FR_OK)
        fr_atomic_printf(run->metrics,
                         "step,epoch,loss,accuracy,samples_per_s,allreduce_bytes,eval_loss,eval_accuracy%s\n",
                         schedule_columns(run->opts));
    return rc;
}

static int close_metrics(run_state *run, fr_error *err) {
    fr_atomic_file *metrics = run->metrics;
    run->metrics = NULL;
    return fr_atomic_commit(metrics, err);
}

/*
 * --tensorboard DIR: rank 0's event file, started at setup (so a directory
 * that cannot be made stops the run before its first step) and written at the
 * metrics' log points.  A failed write stops the file, not the run: it is
 * reported, once, when the run ends, as a failed --metrics is.
 */
static int open_tensorboard(run_state *run, fr_error *err) {
    const char *dir = run->opts->tensorboard;
    if (!dir || !is_root())
        return FR_OK;
    int rc = fr_tb_open(dir, &run->tensorboard, err);
    if (rc != FR_OK)
        fr_error_prefix(err, "--tensorboard ");
    return rc;
}

static int close_tensorboard(run_state *run, fr_error *err) {
    fr_tensorboard *tensorboard = run->tensorboard;
    run->tensorboard = NULL;
    int rc = fr_tb_close(tensorboard, err);
    if (rc != FR_OK)
        fr_error_prefix(err, "--tensorboard ");
    return rc;
}

int metrics_open(run_state *run, fr_error *err) {
    int rc = open_metrics(run, err);
    if (rc == FR_OK)
        rc = open_tensorboard(run, err);
    return rc;
}

void metrics_row(run_state *run, long epoch, long step, double loss, double accuracy,
                 double rate, size_t bytes_per_step) {
    char lr_values[64];
    schedule_values(run, step, lr_values, sizeof lr_values);
    char evaluation[64] = ",";
    if (run->evaluated)
        snprintf(evaluation, sizeof evaluation, "%.6f,%.6f", run->eval_loss, run->eval_accuracy);
    if (run->metrics)
        fr_atomic_printf(run->metrics, "%ld,%ld,%.6f,%.4f,%.1f,%zu,%s%s\n", step, epoch + 1, loss,
                         accuracy, rate, bytes_per_step, evaluation, lr_values);
    /* The same row as TensorBoard scalars (a write failure sticks). */
    fr_tb_scalar(run->tensorboard, "train/loss", loss);
    fr_tb_scalar(run->tensorboard, "train/accuracy", accuracy);
    fr_tb_scalar(run->tensorboard, "train/learning_rate",
                 fr_trainer_lr(run->trainer, -1, step - 1));
    if (run->opts->train.clip_grad_norm > 0.0)
        fr_tb_scalar(run->tensorboard, "train/grad_norm", fr_trainer_grad_norm(run->trainer));
    fr_tb_scalar(run->tensorboard, "system/samples_per_s", rate);
    fr_tb_scalar(run->tensorboard, "system/allreduce_bytes_per_step", (double)bytes_per_step);
    if (run->evaluated) {
        fr_tb_scalar(run->tensorboard, "eval/loss", run->eval_loss);
        fr_tb_scalar(run->tensorboard, "eval/accuracy", run->eval_accuracy);
    }
    fr_tb_write(run->tensorboard, step, NULL);
}

void metrics_test(run_state *run, long step, double loss, double accuracy) {
    fr_tb_scalar(run->tensorboard, "eval/loss", loss);
    fr_tb_scalar(run->tensorboard, "eval/accuracy", accuracy);
    fr_tb_write(run->tensorboard, step, NULL);
}

int metrics_close(run_state *run, fr_error *err) {
    int rc = close_metrics(run, err);
    if (rc == FR_OK)
        rc = close_tensorboard(run, err);
    return rc;
}
