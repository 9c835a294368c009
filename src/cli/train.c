/*
 * train.c - frost train: the steps over the data, the --unfreeze-at and
 * --freeze-at phases, evaluations during the run (--eval-every,
 * --save-best), checkpoints and --resume, the stop signals, and the summary.
 * The setup it shares with frost eval is setup.c's, its metrics rows
 * metrics.c's.  Only rank 0 prints and writes files; files are written whole
 * or not at all.
 */
#define _POSIX_C_SOURCE 200809L
#include "setup.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

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

/* Events kept per thread for --trace (56 bytes each): a few thousand steps. */
#define TRACE_EVENTS_MAX ((size_t)1 << 18)

/* ------------------------------------------ frozen parameters, the header */

static void record_frozen(run_state *run) {
    for (size_t i = 0; i < fr_model_param_count(run->model); i++) {
        fr_param *p = fr_model_param(run->model, i);
        run->frozen_before[i] = fr_param_requires_grad(p) ? 0 : fr_param_checksum(p);
    }
}

/* A frozen parameter that changed is a bug in frost: fail loudly. */
static int verify_frozen(run_state *run, fr_error *err) {
    for (size_t i = 0; i < fr_model_param_count(run->model); i++) {
        fr_param *p = fr_model_param(run->model, i);
        if (!fr_param_requires_grad(p) && fr_param_checksum(p) != run->frozen_before[i])
            return fr_fail(err, FR_EINVAL,
                           "frozen parameter '%s' changed during training: this is a bug in frost",
                           fr_param_name(p));
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

/* One header line when the learning rate is more than a constant --lr. */
static void print_learning_rates(const run_state *run) {
    const frost_options *opts = run->opts;
    const fr_lr_schedule *schedule = &run->lr_schedule;
    if (schedule->kind == FR_LR_CONSTANT && schedule->warmup_steps == 0 &&
        opts->lr_rule_count == 0 && opts->train.clip_grad_norm == 0.0)
        return;
    char text[256];
    fr_lr_schedule_format(schedule, text, sizeof text);
    printf("learning rate %g, %s", opts->train.lr, text);
    if (opts->lr_rule_count) {
        size_t own = 0, count = fr_model_param_count(run->model);
        for (size_t i = 0; i < count; i++)
            own += fr_trainer_lr(run->trainer, (int)i, 0) != fr_trainer_lr(run->trainer, -1, 0);
        printf("; --lr-for gives %zu of %zu parameters a rate of their own", own, count);
    }
    if (opts->train.clip_grad_norm > 0.0)
        printf("; gradient norm clipped to %g", opts->train.clip_grad_norm);
    printf("\n");
}

static void print_header(const run_state *run) {
    const frost_options *opts = run->opts;
    size_t total = fr_model_numel(run->model), trainable = fr_model_trainable_numel(run->model);
    printf("frost %s: %d rank%s x %d thread%s, global batch %d, %d training samples\n",
           FR_VERSION, fr_comm_size(), fr_comm_size() > 1 ? "s" : "",
           fr_trainer_threads(run->trainer), fr_trainer_threads(run->trainer) > 1 ? "s" : "",
           opts->batch_size, fr_dataset_size(run->train));
    printf("parameters %zu, trainable %zu (%.1f%%), frozen %zu; allreduce %zu bytes per step\n",
           total, trainable, total ? 100.0 * trainable / total : 0.0, total - trainable,
           fr_trainer_allreduce_bytes(run->trainer));
    printf("threads: %s%s\n", run->thread_count, run->placement);
    char comm[128];
    fr_comm_thread_scheduling(comm, sizeof comm);
    if (comm[0])
        printf("communication thread: %s\n", comm);
    for (int k = 0; k < opts->schedule_count; k++) {
        const schedule_point *p = &run->schedule[k];
        if (p->step > 0)
            printf("schedule: %s '%s' after step %ld (%s %s)\n", p->freeze ? "freeze" : "unfreeze",
                   p->pattern, p->step, schedule_flag(p), p->arg);
    }
    if (run->eval_every.count)
        printf("evaluation: every %ld steps and at the end, on %s (%d samples)\n",
               run->eval_every.steps,
               run->val ? "the held-out tail of the training set" : "the test set",
               fr_dataset_size(run->val ? run->val : run->test));
    print_learning_rates(run);
    fflush(stdout);
}

/* ------------------------------------------------------ checkpoints */

/*
 * SIGTERM (Slurm's notice), SIGINT (Ctrl-C) and the --stop-signal (USR1 for
 * `#SBATCH --signal=USR1@120`) only raise a flag: the step in progress
 * finishes, the ranks agree, and the run checkpoints and exits.  The handlers
 * go in before MPI starts (main) and before setup, so a notice that comes
 * while the run starts stops it before its first step instead of killing it.
 * SA_RESTART: the signal lands on any thread, and must not make a write of
 * the checkpoint or of output going to a pipe (srun's, mpirun's) fail with
 * EINTR.
 */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int signo) { stop_signal = signo; }

void frost_catch_stop_signals(int extra) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    if (extra)
        sigaction(extra, &action, NULL);
}

/* --normalize as the checkpoint records it: the float32 values ("none"
 * without it), so that "0.5,0.25" and "0.50, 0.250" are the same setting.
 * NULL when out of memory; free it. */
static char *normalize_setting(const frost_options *opts) {
    size_t len = 8 + (size_t)opts->normalize_count * 34;
    char *text = malloc(len);
    if (!text)
        return NULL;
    snprintf(text, len, "none");
    size_t used = 0;
    for (int i = 0; i < opts->normalize_count; i++)
        used += (size_t)snprintf(text + used, len - used, "%s%.9g,%.9g", i ? ";" : "",
                                 opts->normalize_mean[i], opts->normalize_std[i]);
    return text;
}

/* What the run adds to a checkpoint: where it is in the data, and the
 * settings that must match for a resume to continue the same run. */
static int save_checkpoint(run_state *run, long epoch, long batch_in_epoch, fr_error *err) {
    const frost_options *opts = run->opts;
    char *normalize = normalize_setting(opts);
    if (!normalize)
        return fr_comm_agree(fr_fail(err, FR_ENOMEM, "out of memory"), err);
    char values[10][64];
    snprintf(values[0], sizeof values[0], "%ld", epoch);
    snprintf(values[1], sizeof values[1], "%ld", batch_in_epoch);
    snprintf(values[2], sizeof values[2], "%ld", opts->seed);
    snprintf(values[3], sizeof values[3], "%d", opts->shuffle);
    snprintf(values[4], sizeof values[4], "%d", opts->batch_size);
    snprintf(values[5], sizeof values[5], "%d", fr_dataset_size(run->train));
    snprintf(values[6], sizeof values[6], "%.17g", opts->train.lr);
    snprintf(values[7], sizeof values[7], "%d", fr_comm_size());
    /* The best evaluation so far, so that a resumed run keeps --save-best's
     * file unless it does better. */
    snprintf(values[8], sizeof values[8], "%.17g", run->best_accuracy);
    snprintf(values[9], sizeof values[9], "%ld", run->best_step);
    fr_meta meta[] = {{"epoch", values[0]},      {"batch_in_epoch", values[1]},
                      {"seed", values[2]},       {"shuffle", values[3]},
                      {"batch_size", values[4]}, {"dataset_size", values[5]},
                      {"lr", values[6]},         {"ranks", values[7]},
                      {"classes", opts->classes ? opts->classes : "all"},
                      {"normalize", normalize},
                      {"eval_best_accuracy", values[8]}, {"eval_best_step", values[9]}};
    int count = (int)(sizeof meta / sizeof meta[0]) - (run->eval_every.count ? 0 : 2);
    int rc = FR_OK;
    if (is_root())
        rc = fr_trainer_save_checkpoint(run->trainer, opts->checkpoint, meta, count, err);
    free(normalize);
    return fr_comm_agree(rc, err);
}

/* The library names its own arguments; the user knows the flags. */
static void append_to_message(fr_error *err, const char *text) {
    size_t used = strnlen(err->msg, sizeof err->msg);
    snprintf(err->msg + used, sizeof err->msg - used, "%s", text);
}

/* A resumed run must see the same data in the same order. */
static int check_resume_setting(const char *path, const fr_checkpoint *checkpoint,
                                const char *key, const char *want, const char *what,
                                fr_error *err) {
    const char *have = fr_checkpoint_get(checkpoint, key);
    if (!have || strcmp(have, want) != 0)
        return fr_fail(err, FR_EINVAL, "%s: the checkpoint was written with %s %s, this run has %s",
                       path, what, have ? have : "(none)", want);
    return FR_OK;
}

/*
 * A resumed run starts with the frozen set the schedule gives after the
 * checkpoint's step: the points before it are applied now, the ones at it and
 * after it when the run gets there, as in the uninterrupted run.  `*at` gets
 * the checkpoint's step.
 */
static int catch_up_schedule(run_state *run, const fr_checkpoint *checkpoint, long *at,
                             fr_error *err) {
    const char *text = fr_checkpoint_get(checkpoint, "frost.step");
    char *end = NULL;
    long step = text ? strtol(text, &end, 10) : -1;
    if (!text || *end || step < 0)
        return fr_fail(err, FR_EFORMAT, "%s: checkpoint metadata is incomplete or malformed",
                       run->opts->resume);
    int count = run->opts->schedule_count;
    *at = step;
    return schedule_apply(run->model, run->schedule, count, 1, step - 1, NULL, NULL, err);
}

/* The best evaluation before the checkpoint (none if it has no record). */
static void restore_best(run_state *run, const fr_checkpoint *checkpoint) {
    const char *accuracy = fr_checkpoint_get(checkpoint, "eval_best_accuracy");
    const char *step = fr_checkpoint_get(checkpoint, "eval_best_step");
    if (accuracy && step) {
        run->best_accuracy = strtod(accuracy, NULL);
        run->best_step = strtol(step, NULL, 10);
    }
}

static int resume(run_state *run, fr_error *err) {
    const frost_options *opts = run->opts;
    fr_checkpoint *checkpoint = NULL;
    int rc = fr_checkpoint_open(opts->resume, &checkpoint, err);
    if (rc == FR_EFORMAT && strstr(err->msg, "a weights file, not a training checkpoint"))
        append_to_message(err, " (use --init)");
    char want[4][32];
    snprintf(want[0], sizeof want[0], "%d", opts->batch_size);
    snprintf(want[1], sizeof want[1], "%ld", opts->seed);
    snprintf(want[2], sizeof want[2], "%d", opts->shuffle);
    snprintf(want[3], sizeof want[3], "%d", fr_dataset_size(run->train));
    const char *keys[] = {"batch_size", "seed", "shuffle", "dataset_size"};
    const char *what[] = {"--batch-size", "--seed", "shuffle (1) / --no-shuffle (0)",
                          "a training set of size"};
    for (int i = 0; rc == FR_OK && i < 4; i++)
        rc = check_resume_setting(opts->resume, checkpoint, keys[i], want[i], what[i], err);
    if (rc == FR_OK)
        rc = check_resume_setting(opts->resume, checkpoint, "classes",
                                  opts->classes ? opts->classes : "all", "--classes", err);
    /* Checkpoints from before --normalize have no key: they were written without it. */
    char *normalize = rc == FR_OK ? normalize_setting(opts) : NULL;
    if (rc == FR_OK && !normalize)
        rc = fr_fail(err, FR_ENOMEM, "out of memory");
    if (rc == FR_OK && !fr_checkpoint_get(checkpoint, "normalize") &&
        strcmp(normalize, "none") != 0)
        rc = fr_fail(err, FR_EINVAL,
                     "%s: the checkpoint was written with --normalize none, this run has %s",
                     opts->resume, normalize);
    if (rc == FR_OK && fr_checkpoint_get(checkpoint, "normalize"))
        rc = check_resume_setting(opts->resume, checkpoint, "normalize", normalize,
                                  "--normalize", err);
    free(normalize);
    long at = 0;
    if (rc == FR_OK)
        rc = catch_up_schedule(run, checkpoint, &at, err);
    if (rc == FR_OK) {
        unsigned allow = (opts->allow_freeze_change ? FR_RESTORE_FREEZE_CHANGE : 0) |
                         (opts->allow_lr_change ? FR_RESTORE_LR_CHANGE : 0);
        rc = fr_trainer_restore(run->trainer, checkpoint, allow, err);
        if (rc == FR_EINVAL && strstr(err->msg, "the frozen set must match") &&
            opts->schedule_count) {
            char text[256];
            snprintf(text, sizeof text,
                     "; this run's frozen set at step %ld is --freeze and --unfreeze, then the "
                     "schedule's points before that step (--allow-freeze-change allows a "
                     "difference)",
                     at);
            append_to_message(err, text);
        } else if (rc == FR_EINVAL && strstr(err->msg, "the frozen set must match"))
            append_to_message(err, "; --allow-freeze-change allows it");
        if (rc == FR_EINVAL && strstr(err->msg, "the learning rates must match"))
            append_to_message(err, "; --allow-lr-change allows it");
    }
    if (rc == FR_OK)
        restore_best(run, checkpoint);
    fr_checkpoint_close(checkpoint);
    return fr_comm_agree(rc, err);
}

/* ---------------------------------------------------------------- train */

typedef struct progress {
    double start, interval_start;
    long interval_steps, interval_samples;
    size_t interval_bytes;
    double samples_trained;
} progress;

static void log_progress(run_state *run, progress *p, long epoch, long step, long total_steps,
                         double loss, long correct, long counted) {
    /* Accuracy over what the step's loss counted: samples, or positions not
     * ignored (taken before an evaluation in the step replaced the count). */
    int batch = (int)counted;
    double t = now_seconds();
    double rate = p->interval_samples / (t - p->interval_start);
    size_t sent = fr_trainer_bytes_sent(run->trainer);
    size_t bytes_per_step = p->interval_steps ? (sent - p->interval_bytes) / (size_t)p->interval_steps : 0;
    if (is_root()) {
        char eta[32];
        long done_here = (long)(p->samples_trained / run->opts->batch_size);
        format_duration(done_here ? (total_steps - step) * (t - p->start) / done_here : 0, eta,
                        sizeof eta);
        printf("epoch %ld step %ld/%ld loss %.4f acc %.1f%% %.0f samples/s ETA %s\n", epoch + 1,
               step, total_steps, loss, 100.0 * correct / batch, rate, eta);
        fflush(stdout);
        metrics_row(run, epoch, step, loss, (double)correct / batch, rate, bytes_per_step);
    }
    p->interval_start = t;
    p->interval_steps = 0;
    p->interval_samples = 0;
    p->interval_bytes = sent;
}

/* ------------------------------------------------------------- phases */

/* What was frozen during the phase that ends after `last` steps is
 * unchanged; and where the feature cache stood. */
static void print_phase(run_state *run, long last) {
    size_t frozen = fr_model_numel(run->model) - fr_model_trainable_numel(run->model);
    printf("phase %d, steps %ld-%ld: ",
           schedule_phase(run->schedule, run->opts->schedule_count, run->phase_first - 1),
           run->phase_first, last);
    if (frozen)
        printf("%zu frozen parameters unchanged (checksum %016llx)", frozen,
               (unsigned long long)fr_model_frozen_checksum(run->model));
    else
        printf("no frozen parameters");
    int layer = fr_trainer_cache_layer(run->trainer);
    if (layer >= 0)
        printf("; feature cache %.3g MB through layer %s (%s)",
               fr_trainer_cache_bytes(run->trainer) / 1048576.0,
               fr_model_layer_name(run->model, layer), fr_model_layer_kind(run->model, layer));
    printf("\n");
}

static void print_change(const schedule_point *point, size_t before, size_t after,
                         void *context) {
    run_state *run = context;
    if (is_root())
        printf("step %ld: %s %s: trainable parameters %zu -> %zu, allreduce %zu bytes per step\n",
               point->step, schedule_flag(point), point->arg, before, after,
               fr_trainer_allreduce_bytes(run->trainer));
}

/*
 * The schedule's points at `step` (steps done), on every rank at once: the
 * updates in flight are applied, the parameters frozen in the phase that
 * ends are checked, the frozen set changes, and the next step re-plans (the
 * trainer sees the new requires_grad flags).
 */
static int change_phase(run_state *run, long step, fr_error *err) {
    int rc = fr_trainer_sync(run->trainer, err);
    if (rc != FR_OK)
        return rc;
    rc = fr_comm_agree(verify_frozen(run, err), err);
    if (rc == FR_OK && is_root() && step >= run->phase_first)
        print_phase(run, step);
    if (rc == FR_OK)
        rc = fr_comm_agree(schedule_apply(run->model, run->schedule, run->opts->schedule_count,
                                          step, step, print_change, run, err),
                           err);
    if (rc == FR_OK) {
        record_frozen(run);
        run->phase_first = step + 1;
    }
    fflush(stdout);
    return rc;
}

/* --eval-every: loss and accuracy on the test set or the held-out tail
 * (collective); --save-best writes the weights when the accuracy beats the
 * best so far. */
static int evaluate_now(run_state *run, long step, fr_error *err) {
    const frost_options *opts = run->opts;
    const fr_dataset *set = run->val ? run->val : run->test;
    int rc = evaluate_dataset(run->trainer, set, opts->batch_size, run->x, run->labels,
                              &run->eval_loss, &run->eval_accuracy, err);
    if (rc != FR_OK)
        return rc;
    run->evaluated = true;
    bool best = run->eval_accuracy > run->best_accuracy;
    if (best) {
        run->best_accuracy = run->eval_accuracy;
        run->best_step = step;
    }
    /* With adapters the best is theirs: a PEFT adapter directory (the base
     * does not change). */
    bool adapters = fr_model_adapter_count(run->model) > 0;
    if (best && opts->save_best)
        rc = fr_comm_agree(!is_root() ? FR_OK
                           : adapters ? fr_model_save_adapter(run->model, opts->save_best, err)
                                      : fr_model_save_weights(run->model, opts->save_best, err),
                           err);
    if (rc == FR_OK && is_root())
        printf("eval at step %ld: %s loss %.4f accuracy %.2f%% (%d samples)%s%s\n", step,
               run->val ? "validation" : "test", run->eval_loss, 100.0 * run->eval_accuracy,
               fr_dataset_size(set), best && opts->save_best ? ", the best so far: saved " : "",
               best && opts->save_best ? opts->save_best : "");
    return rc;
}

/* The loss became NaN or Inf: say at which step, and which parameter broke. */
static int explain_nonfinite(run_state *run, fr_error *err) {
    fr_error where = {0};
    if (fr_model_check_finite(run->model, &where) != FR_OK) {
        char msg[FR_ERROR_LEN];
        snprintf(msg, sizeof msg, "%.200s; %.200s", err->msg, where.msg);
        memcpy(err->msg, msg, sizeof msg);
    }
    if (run->opts->checkpoint)
        fr_error_prefix(err, "stopped, the last checkpoint %s is kept: ", run->opts->checkpoint);
    return FR_ENONFINITE;
}

/* Room for every event of the run, up to a bound: one forward and one
 * backward per layer, and a few per bucket, each step. */
static int start_trace(run_state *run, fr_error *err) {
    const frost_options *opts = run->opts;
    long steps = run_steps(opts, fr_dataset_size(run->train)) - fr_trainer_steps_done(run->trainer);
    size_t per_step = 2 * fr_model_layer_count(run->model) + 64;
    size_t events = steps > 0 ? (size_t)steps * per_step : per_step;
    if (events > TRACE_EVENTS_MAX)
        events = TRACE_EVENTS_MAX;
    return fr_trace_start(fr_trainer_threads(run->trainer), events, err);
}

/*
 * --resume-if-exists: resume from the --checkpoint file when it exists, else
 * start afresh (from --init when given).  Every rank reads the checkpoint, so
 * every rank must see the file: ranks that disagree stop with a message
 * instead of half of them resuming.
 */
static int resolve_resume(frost_options *opts, fr_error *err) {
    if (!opts->resume_if_exists)
        return FR_OK;
    struct stat st;
    bool exists = stat(opts->checkpoint, &st) == 0;
    bool some = fr_comm_any(exists), all = !fr_comm_any(!exists);
    if (some && !all)
        return fr_fail(err, FR_EINVAL,
                       "--resume-if-exists: %s exists for some ranks and not for others; the checkpoint must be on a filesystem every rank sees",
                       opts->checkpoint);
    if (exists) {
        opts->resume = opts->checkpoint;
        opts->init = NULL; /* the checkpoint holds the weights */
    }
    return FR_OK;
}

/* Where the memory went: what the library holds, by part (their sum is what
 * it has allocated), beside the peak resident size, which adds the program,
 * its libraries and BLAS's buffers. */
static void print_memory(const run_state *run) {
    const double mb = 1048576.0;
    size_t weights = fr_model_weight_bytes(run->model);
    size_t gradients = fr_trainer_gradient_bytes(run->trainer);
    size_t optimizer = fr_trainer_optimizer_bytes(run->trainer);
    size_t activations = fr_trainer_activation_bytes(run->trainer);
    size_t dataset = fr_dataset_bytes(run->train) + fr_dataset_bytes(run->test);
    size_t cache = fr_trainer_cache_bytes(run->trainer);
    printf("memory: weights %.1f MB, gradients %.1f MB, optimizer state %.1f MB, activations "
           "%.1f MB, dataset %.1f MB, feature cache %.1f MB; %.1f MB in all, peak resident %.0f MB\n",
           weights / mb, gradients / mb, optimizer / mb, activations / mb, dataset / mb, cache / mb,
           (weights + gradients + optimizer + activations + dataset + cache) / mb, peak_rss_mb());
}

int frost_train(const frost_options *options, fr_error *err) {
    frost_catch_stop_signals(options->stop_signal);
    frost_options resolved = *options;
    const frost_options *opts = &resolved;
    run_state run = {.opts = opts};
    int rc = resolve_resume(&resolved, err);
    if (rc == FR_OK)
        rc = set_up_run(&run, true, err);
    if (rc == FR_OK)
        rc = fr_comm_agree(metrics_open(&run, err), err);
    if (rc == FR_OK && opts->resume)
        rc = resume(&run, err);
    if (rc != FR_OK) {
        free_run(&run);
        return rc;
    }
    if (opts->trace)
        rc = start_trace(&run, err);
    if (rc != FR_OK) {
        free_run(&run);
        return rc;
    }
    record_frozen(&run);
    run.phase_first = fr_trainer_steps_done(run.trainer) + 1;
    if (is_root())
        print_header(&run);

    int n = fr_dataset_size(run.train), batch_size = opts->batch_size;
    long epoch_steps = batches_per_epoch(opts, n), total_steps = run_steps(opts, n);

    /* Steps count from the start of the run, resumed or not; the position in
     * the data follows from the step. */
    long step = fr_trainer_steps_done(run.trainer);
    /* Resumed, TensorBoard drops what the stopped run logged after its
     * checkpoint (a failed write sticks, reported at the end). */
    fr_tb_start(run.tensorboard, step + 1, NULL);
    if (is_root() && opts->resume)
        printf("resumed from %s at step %ld\n", opts->resume, step);
    else if (is_root() && opts->resume_if_exists)
        printf("no checkpoint %s yet: starting afresh\n", opts->checkpoint);
    progress p = {.start = now_seconds()};
    p.interval_start = p.start;
    p.interval_bytes = fr_trainer_bytes_sent(run.trainer);
    double last_loss = NAN;
    long epoch = step / epoch_steps;
    /* A signal during setup stops the run before its first step. */
    bool interrupted = fr_comm_any(stop_signal != 0);
    fr_trainer_watch_stop(run.trainer, &stop_signal);
    bool have_order = false; /* this epoch's order, needed again after a resume */
    int schedule_count = opts->schedule_count;
    /* For tests: FROST_STOP_AFTER_STEP=N stops the run after step N as a stop
     * signal during that step would (the same on every rank it is given to). */
    const char *stop_text = getenv("FROST_STOP_AFTER_STEP");
    long stop_after = stop_text && *stop_text ? strtol(stop_text, NULL, 10) : -1;
    while (step < total_steps && rc == FR_OK && !interrupted) {
        if (step > 0 && schedule_due(run.schedule, schedule_count, step) &&
            (rc = change_phase(&run, step, err)) != FR_OK)
            break;
        long b = step % epoch_steps;
        epoch = step / epoch_steps;
        if (b == 0 || !have_order)
            fr_epoch_order(run.order, n, (uint64_t)opts->seed, epoch, opts->shuffle);
        have_order = true;
        int begin = (int)(b * batch_size);
        int batch = n - begin < batch_size ? n - begin : batch_size;
        long correct = 0;
        rc = fr_trainer_step_samples(run.trainer, run.train, run.order + begin, batch, &last_loss,
                                     &correct, err);
        if (rc == FR_ENONFINITE)
            rc = explain_nonfinite(&run, err);
        if (rc != FR_OK)
            break;
        long counted = fr_trainer_last_count(run.trainer);
        step++;
        p.interval_steps++;
        p.interval_samples += batch;
        p.samples_trained += batch;
        /* Shared with the step's loss: no collective of its own, which
         * would wait for the step's gradients still on the wire. */
        interrupted = fr_trainer_stop_requested(run.trainer) || step == stop_after;
        /* Evaluated even when stopping, so that the best so far in the
         * checkpoint is the uninterrupted run's. */
        run.evaluated = false;
        if (run.eval_every.count && (step % run.eval_every.steps == 0 || step == total_steps) &&
            (rc = evaluate_now(&run, step, err)) != FR_OK)
            break;
        /* A row for every evaluation, and one before each schedule point, so
         * that each row's bytes per step belong to one phase. */
        if (step % opts->log_every == 0 || step == total_steps || interrupted || run.evaluated ||
            schedule_due(run.schedule, schedule_count, step)) {
            /* Ranks must stay bit-identical; a check at every log: with the
             * next step's loss (no wait for this step's update, still in
             * flight), or here when no step follows. */
            if (fr_comm_size() > 1 && (step == total_steps || interrupted))
                rc = fr_comm_check_same(fr_model_checksum(run.model), "the weights", err);
            else if (fr_comm_size() > 1)
                fr_trainer_check_replicas(run.trainer);
            if (rc == FR_OK)
                log_progress(&run, &p, epoch, step, total_steps, last_loss, correct, counted);
        }
        if (rc == FR_OK && opts->checkpoint && !interrupted && opts->checkpoint_every &&
            step % opts->checkpoint_every == 0 && step < total_steps)
            rc = save_checkpoint(&run, step / epoch_steps, step % epoch_steps, err);
    }
    double elapsed = now_seconds() - p.start;
    if (rc == FR_OK && opts->trace)
        rc = fr_trace_write(opts->trace, err);
    fr_trace_stop();
    if (rc == FR_OK)
        rc = verify_frozen(&run, err);
    if (rc == FR_OK && opts->checkpoint)
        rc = save_checkpoint(&run, step / epoch_steps, step % epoch_steps, err);
    if (rc == FR_OK && interrupted) {
        /* The metrics so far are a complete record of this part of the run. */
        if (is_root())
            rc = metrics_close(&run, err);
        rc = fr_comm_agree(rc, err);
    }
    if (rc == FR_OK && interrupted) {
        if (opts->checkpoint)
            rc = fr_fail(err, FR_EINTERRUPTED,
                         "stopped by a signal after step %ld; checkpoint written to %s (continue with --resume %s)",
                         step, opts->checkpoint, opts->checkpoint);
        else
            rc = fr_fail(err, FR_EINTERRUPTED,
                         "stopped by a signal after step %ld; no --checkpoint was given, nothing saved", step);
        free_run(&run);
        return rc;
    }
    double test_loss = 0.0, test_accuracy = 0.0;
    if (rc == FR_OK)
        rc = evaluate_dataset(run.trainer, run.test, batch_size, run.x, run.labels, &test_loss,
                              &test_accuracy, err);
    if (rc == FR_OK)
        metrics_test(&run, step, test_loss, test_accuracy);
    if (rc == FR_OK && is_root() && opts->save)
        rc = fr_model_save_weights(run.model, opts->save, err);
    if (rc == FR_OK && is_root() && opts->save_adapter) {
        rc = fr_model_save_adapter(run.model, opts->save_adapter, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "--save-adapter: ");
    }
    if (rc != FR_ECOMMLOST)
        rc = fr_comm_agree(rc, err);
    if (rc == FR_OK && is_root())
        rc = metrics_close(&run, err);
    if (rc == FR_OK && is_root()) {
        if (p.samples_trained == 0) /* resumed at or past the last step */
            printf("done: %ld steps, nothing left to train after resuming\n", step);
        else
            printf("done: %ld steps in %.1f s, %.0f samples/s, final loss %.4f\n", step, elapsed,
                   elapsed > 0 ? p.samples_trained / elapsed : 0.0, last_loss);
        printf("test: loss %.4f accuracy %.2f%% (%d samples)\n", test_loss, 100.0 * test_accuracy,
               fr_dataset_size(run.test));
        if (schedule_count && step >= run.phase_first)
            print_phase(&run, step);
        if (run.eval_every.count && run.best_accuracy >= 0)
            printf("best evaluation: step %ld, accuracy %.2f%%%s%s\n", run.best_step,
                   100.0 * run.best_accuracy, opts->save_best ? ", weights in " : "",
                   opts->save_best ? opts->save_best : "");
        size_t frozen = fr_model_numel(run.model) - fr_model_trainable_numel(run.model),
               wanted_bytes = 0;
        if (frozen)
            printf("frozen parameters: %zu, unchanged (checksum %016llx)\n", frozen,
                   (unsigned long long)fr_model_frozen_checksum(run.model));
        else
            printf("frozen parameters: 0\n");
        int wanted = 0, held = fr_trainer_cache_samples(run.trainer, &wanted, &wanted_bytes);
        if (held > 0 && held == wanted)
            printf("feature cache: %.1f MB of frozen-prefix outputs\n",
                   fr_trainer_cache_bytes(run.trainer) / 1048576.0);
        else if (wanted > 0)
            /* The budget held part of it or none: say so, and what all would take. */
            printf("feature cache: %.1f MB of frozen-prefix outputs for %d of %d samples (all "
                   "would take %.1f MB; --cache-mb raises the budget), the rest run the prefix "
                   "each step\n",
                   fr_trainer_cache_bytes(run.trainer) / 1048576.0, held, wanted,
                   wanted_bytes / 1048576.0);
        printf("allreduce: %zu bytes per step, %zu bytes in all; peak memory %.0f MB\n",
               fr_trainer_allreduce_bytes(run.trainer), fr_trainer_bytes_sent(run.trainer),
               peak_rss_mb());
        print_memory(&run);
        if (opts->checkpoint)
            printf("checkpoint %s\n", opts->checkpoint);
        if (opts->save)
            printf("saved %s\n", opts->save);
        if (opts->save_adapter)
            printf("saved adapter %s\n", opts->save_adapter);
    }
    free_run(&run);
    return rc;
}
