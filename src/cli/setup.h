/*
 * setup.h - what frost train, frost eval and frost inspect share: a run's
 * state, the setup that fills it and frees it (setup.c), and the metrics
 * file and TensorBoard event file a training run writes (metrics.c).  A
 * command's file includes this header, never another command's file.
 */
#ifndef FROST_CLI_SETUP_H
#define FROST_CLI_SETUP_H

#include "run.h"

static inline bool is_root(void) { return fr_comm_rank() == 0; }

/* What frost train and frost eval set up and use; eval leaves the training
 * parts (train, order, metrics, frozen_before) empty. */
typedef struct run_state {
    const frost_options *opts;
    fr_model *model;
    fr_dataset *train, *test;
    fr_dataset *val; /* --val-split's held-out tail of the training set */
    fr_trainer *trainer;
    float *x;
    int32_t *labels;
    int *order;
    fr_atomic_file *metrics; /* rank 0's --metrics, committed at the end */
    fr_tensorboard *tensorboard; /* rank 0's --tensorboard event file (else NULL) */
    uint64_t *frozen_before; /* per-parameter checksums of frozen parameters */
    char placement[200];     /* where the threads run, for the header */
    char thread_count[240];  /* why this many, when frost chose */
    /* --unfreeze-at and --freeze-at, resolved to steps; the phase in
     * progress began after step phase_first - 1. */
    schedule_point schedule[FROST_MAX_PATTERNS];
    schedule_interval eval_every;
    long phase_first;
    /* The last evaluation (logged with the step's row) and the best. */
    bool evaluated;
    double eval_loss, eval_accuracy, best_accuracy;
    long best_step;
    fr_lr_schedule lr_schedule; /* as resolved for this run (cosine's T_max) */
} run_state;

/* ---------------------------------------------------------------- setup.c */

/* The setup frost train and frost eval share, stage by stage, every stage
 * agreed by the ranks; free_run undoes whatever it got to, and whatever
 * frost train added (a metrics file not yet committed is discarded). */
int set_up_run(run_state *run, bool training, fr_error *err);
void free_run(run_state *run);
/* The model as --model, --lora, --adapter, --freeze, --unfreeze and the
 * schedule's points at the start make it (frost inspect's whole job). */
int load_model(const frost_options *opts, fr_model **out, fr_error *err);
/* Loss and accuracy of the model on a whole dataset (collective). */
int evaluate_dataset(fr_trainer *trainer, const fr_dataset *data, int batch_size, float *x,
                     int32_t *labels, double *loss, double *accuracy, fr_error *err);
long batches_per_epoch(const frost_options *opts, int samples);
/* The run's total steps: --steps, bounded by --epochs when that is given. */
long run_steps(const frost_options *opts, int samples);

/* -------------------------------------------------------------- metrics.c */

/* --metrics and --tensorboard opened on rank 0 (nothing elsewhere), once
 * the run is set up. */
int metrics_open(run_state *run, fr_error *err);
/* A log point's row: the metrics' CSV row and the same as TensorBoard
 * scalars, with the evaluation when the step had one. */
void metrics_row(run_state *run, long epoch, long step, double loss, double accuracy,
                 double rate, size_t bytes_per_step);
/* The test set's loss and accuracy after the last step, in TensorBoard. */
void metrics_test(run_state *run, long step, double loss, double accuracy);
/* Rank 0: the metrics file committed, the event file closed; the first
 * failure is returned (a failed TensorBoard write is reported here). */
int metrics_close(run_state *run, fr_error *err);

#endif
