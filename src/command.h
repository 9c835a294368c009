/*
 * command.h - what the frost command (src/cli/) and the tests use of the
 * library beyond the public API (frost.h): the command line's own policy
 * (--classes, --lr-schedule's text, how many threads a rank runs unasked,
 * comparing the ranks' run settings, the header's line on the communication
 * thread).  Implemented in the library, where the data they need lives; not
 * installed.
 */
#ifndef FROST_COMMAND_H
#define FROST_COMMAND_H

#include "frost.h"

/* Keep only samples whose label is in `spec`: "0-4", "5,6,7,8,9", "0-2,7". */
int fr_dataset_keep_classes(fr_dataset *data, const char *spec, fr_error *err);

/*
 * Parse "constant", "step:STEP_SIZE[:GAMMA]" (gamma 0.1 by default, as
 * StepLR's) or "cosine[:T_MAX[:ETA_MIN]]" (eta_min 0; without T_MAX, t_max is
 * left 0 for the caller to fill in, e.g. with the steps after the warmup).
 * warmup_steps is left as it was.  One clear message per malformed value.
 */
int fr_lr_schedule_parse(const char *text, fr_lr_schedule *schedule, fr_error *err);

/* "constant", "StepLR(step_size=10, gamma=0.5)",
 * "warmup 5 steps, then CosineAnnealingLR(T_max=95, eta_min=0)": torch's names. */
void fr_lr_schedule_format(const fr_lr_schedule *schedule, char *buf, size_t len);

/*
 * How many threads this rank should run when nobody said (no --threads, no
 * OMP_NUM_THREADS): the CPUs of its affinity mask (what srun, mpirun or
 * taskset gave it), split evenly between the ranks of its node that have the
 * same mask (mpirun --bind-to none, srun without CPU binding), at least 1.
 * `description` gets where the number comes from, e.g. "the rank's share of
 * CPUs 0-1".  Collective under MPI: every rank calls it.
 */
int fr_cpu_share(int *cpus, char *description, size_t len, fr_error *err);

/* How this rank's communication thread is scheduled, as a line of text:
 * real-time (SCHED_FIFO) where the ranks' communication threads fit the
 * machine's CPUs and the privilege is there, else a raised nice weight,
 * with the reason.  Empty for a single process (there is no thread). */
void fr_comm_thread_scheduling(char *text, size_t len);

/*
 * Collective: ranks compare the model's parameter names and shapes, the frozen
 * set, the optimizer settings, `settings` (the caller's own run settings) and
 * the dataset size; the first that differs is named in the error.
 */
int fr_comm_check_run(const fr_model *model, const fr_train_config *config,
                      const double *settings, int setting_count, long dataset_size,
                      fr_error *err);

#endif /* FROST_COMMAND_H */
