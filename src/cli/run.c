/*
 * run.c - frost train, frost eval and frost inspect.
 *
 * Training and evaluation are set up by one function (set_up_run) in stages
 * (model, frozen set, weights, data, output paths, trainer), each followed by
 * fr_comm_agree so that a failure on any one rank ends every rank with that
 * rank's message.  Before the first step the ranks
 * compare fingerprints of everything that must match.  Only rank 0 prints and
 * writes files; files are written whole or not at all.
 */
#define _POSIX_C_SOURCE 200809L
#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
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

/* Events kept per thread for --trace (56 bytes each): a few thousand steps. */
#define TRACE_EVENTS_MAX ((size_t)1 << 18)

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
    if (rc == FR_OK && opts->classes) {
        rc = fr_dataset_keep_classes(data, opts->classes, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "--classes: ");
    }
    if (rc == FR_OK && fr_dataset_sample_numel(data) != fr_model_input_numel(model))
        rc = fr_fail(err, FR_ESHAPE, "%s: images have %d values, the model's input takes %d",
                     fr_dataset_images_path(data), fr_dataset_sample_numel(data),
                     fr_model_input_numel(model));
    if (rc == FR_OK && fr_dataset_class_count(data) > fr_model_output_numel(model))
        rc = fr_fail(err, FR_EFORMAT, "%s: label %d is out of range for a model with %d outputs",
                     fr_dataset_labels_path(data), fr_dataset_class_count(data) - 1,
                     fr_model_output_numel(model));
    if (rc != FR_OK) {
        fr_dataset_free(data);
        return rc;
    }
    *out = data;
    return FR_OK;
}

/*
 * An output path must be writable before training starts, not after it.
 * access(W_OK) is not enough: it says yes to root on a read-only directory
 * and in /proc or /sys.  So create (and remove) the temporary file the writer
 * will use, PATH.tmp.PID, in the same directory.
 */
static int check_output_path(const char *flag, const char *path, fr_error *err) {
    if (!path)
        return FR_OK;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fr_fail(err, FR_EIO, "%s %s: is a directory", flag, path);
    /* The file is replaced by rename: never do that to /dev/null or a FIFO. */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return fr_fail(err, FR_EIO, "%s %s: not a regular file", flag, path);
    char *copy = strdup(path);
    size_t probe_len = strlen(path) + 32;
    char *probe = malloc(probe_len);
    if (!copy || !probe) {
        free(copy);
        free(probe);
        return fr_fail(err, FR_ENOMEM, "out of memory");
    }
    const char *dir = dirname(copy);
    int rc = FR_OK;
    if (stat(dir, &st) != 0)
        rc = fr_fail(err, FR_EIO, "%s %s: directory %s does not exist", flag, path, dir);
    else if (!S_ISDIR(st.st_mode))
        rc = fr_fail(err, FR_EIO, "%s %s: %s is not a directory", flag, path, dir);
    if (rc == FR_OK) {
        snprintf(probe, probe_len, "%s.tmp.%ld", path, (long)getpid());
        int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0 && errno != EEXIST) {
            rc = fr_fail(err, FR_EIO, "%s %s: cannot create a file in %s: %s", flag, path, dir,
                         strerror(errno));
        } else if (fd >= 0) {
            close(fd);
            unlink(probe);
        }
    }
    free(probe);
    free(copy);
    return rc;
}

/*
 * The ranks must agree on everything that shapes the update and on every
 * setting that decides which collective calls a rank makes (logging,
 * checkpoints, where the weights come from), before the first of those calls:
 * ranks that disagree would otherwise hang in, or corrupt, a collective.
 */
static int compare_ranks(const frost_options *opts, const fr_model *model, bool training,
                         fr_error *err) {
    double settings[] = {opts->batch_size,       opts->epochs,       opts->steps,
                         (double)opts->seed,     opts->shuffle,      opts->log_every,
                         opts->checkpoint_every, opts->init != NULL, opts->resume != NULL,
                         opts->checkpoint != NULL, opts->allow_freeze_change};
    /* Evaluating, only the batch size decides the collective calls. */
    int count = training ? (int)(sizeof settings / sizeof settings[0]) : 1;
    return fr_comm_check_run(model, &opts->train, settings, count, 0, err);
}

/* Weights: --init on every rank (then checked equal), else seeded init on
 * rank 0 broadcast to all, so every replica starts from the same bits. */
static int initialise_weights(const frost_options *opts, fr_model *model, bool training,
                              fr_error *err) {
    int rc;
    if (opts->init) {
        rc = fr_comm_agree(fr_model_load_weights(model, opts->init, err), err);
        if (rc == FR_OK)
            rc = fr_comm_check_same(fr_model_checksum(model), "the --init weights", err);
        /* Evaluating, NaN or Inf weights would only give a NaN loss: say
         * where they are.  (Training says so at the step they break, with the
         * last checkpoint kept.) */
        if (rc == FR_OK && !training && fr_model_check_finite(model, err) != FR_OK) {
            fr_error_prefix(err, "%s: ", opts->init);
            rc = FR_ENONFINITE;
        }
        return rc;
    }
    int local = fr_model_init(model, (uint64_t)opts->seed, err);
    if (local == FR_OK)
        local = fr_comm_broadcast_model(model, err);
    return fr_comm_agree(local, err);
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

/* ------------------------------------------------------ thread placement */

/*
 * With neither --threads nor OMP_NUM_THREADS, a rank runs one thread per CPU
 * it was given, its share when ranks of a node share a mask: OpenMP's own
 * default (every CPU of the mask, on every rank) would run 2 ranks x 2
 * threads on 2 CPUs under `srun -n 2`.  `note` says where the number came
 * from, for the header; it stays empty when the user chose.  Collective.
 */
static int choose_threads(fr_train_config *config, char *note, size_t len, fr_error *err) {
    int share = 0;
    char where[200];
    note[0] = '\0';
    int rc = fr_comm_agree(fr_cpu_share(&share, where, sizeof where, err), err);
    const char *omp = getenv("OMP_NUM_THREADS");
    if (rc == FR_OK && config->threads == 0 && !(omp && *omp)) {
        config->threads = share;
        snprintf(note, len, "%d (%s), ", share, where);
    }
    return rc;
}

/*
 * Pin the trainer's threads unless --no-pin (collective).  Threads that
 * outnumber the CPUs this rank may use are worth a warning: the usual cause is
 * mpirun binding each rank to one core while it runs several threads.
 */
static int place_threads(const frost_options *opts, fr_trainer *trainer, char *report,
                         size_t len, fr_error *err) {
    if (opts->no_pin) {
        snprintf(report, len, "not pinned (--no-pin)");
        return FR_OK;
    }
    bool oversubscribed = false;
    int rc = fr_comm_agree(fr_trainer_pin_threads(trainer, report, len, &oversubscribed, err), err);
    if (rc == FR_OK && oversubscribed) {
        char rank[32] = "";
        if (fr_comm_size() > 1)
            snprintf(rank, sizeof rank, "rank %d: ", fr_comm_rank());
        fprintf(stderr,
                "frost: warning: %sthreads %s, so they take turns; give each rank its own "
                "cores (mpirun --map-by slot:PE=%d) or use fewer --threads\n",
                rank, report, fr_trainer_threads(trainer));
    }
    return rc;
}

/* ---------------------------------------------------------- a run's state */

/* What frost train and frost eval set up and use; eval leaves the training
 * parts (train, order, metrics, frozen_before) empty. */
typedef struct run_state {
    const frost_options *opts;
    fr_model *model;
    fr_dataset *train, *test;
    fr_trainer *trainer;
    float *x;
    int32_t *labels;
    int *order;
    fr_atomic_file *metrics; /* rank 0's --metrics, committed at the end */
    uint64_t *frozen_before; /* per-parameter checksums of frozen parameters */
    char placement[200];     /* where the threads run, for the header */
    char thread_count[240];  /* why this many, when frost chose */
} run_state;

static void free_run(run_state *run) {
    fr_atomic_discard(run->metrics); /* no partial output */
    free(run->x);
    free(run->labels);
    free(run->order);
    free(run->frozen_before);
    fr_trainer_free(run->trainer);
    fr_dataset_free(run->train);
    fr_dataset_free(run->test);
    fr_model_free(run->model);
}

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
        fr_atomic_printf(run->metrics, "step,epoch,loss,accuracy,samples_per_s,allreduce_bytes\n");
    return rc;
}

static int close_metrics(run_state *run, fr_error *err) {
    fr_atomic_file *metrics = run->metrics;
    run->metrics = NULL;
    return fr_atomic_commit(metrics, err);
}

static void format_duration(double seconds, char *buf, size_t len) {
    long s = seconds > 0 && seconds < 1e9 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, len, "%ld:%02ld", s / 60, s % 60);
}

static long batches_per_epoch(const frost_options *opts, int samples) {
    return (samples + opts->batch_size - 1) / opts->batch_size;
}

/* The run's total steps: --steps, bounded by --epochs when that is given. */
static long run_steps(const frost_options *opts, int samples) {
    long total = opts->steps, per_epoch = batches_per_epoch(opts, samples);
    if (opts->epochs > 0 && (total == 0 || opts->epochs * per_epoch < total))
        total = opts->epochs * per_epoch;
    return total;
}

/* --save, --metrics, --checkpoint and --trace, on rank 0 (collective). */
static int check_output_paths(const frost_options *opts, fr_error *err) {
    int local = FR_OK;
    if (is_root()) {
        local = check_output_path("--save", opts->save, err);
        if (local == FR_OK)
            local = check_output_path("--metrics", opts->metrics, err);
        if (local == FR_OK)
            local = check_output_path("--checkpoint", opts->checkpoint, err);
        if (local == FR_OK)
            local = check_output_path("--trace", opts->trace, err);
    }
    return fr_comm_agree(local, err);
}

/*
 * The setup frost train and frost eval share, stage by stage: the model and
 * its frozen set, the ranks' settings compared, the weights, the data (the
 * training set too, and the output paths, when `training`), the trainer and
 * its threads, one batch's buffers (and the training run's epoch order,
 * frozen checksums and metrics file).
 */
static int set_up_run(run_state *run, bool training, fr_error *err) {
    const frost_options *opts = run->opts;
    int rc = fr_comm_agree(load_model(opts, &run->model, err), err);
    if (rc == FR_OK)
        rc = compare_ranks(opts, run->model, training, err);
    if (rc == FR_OK)
        rc = initialise_weights(opts, run->model, training, err);
    if (rc == FR_OK && training)
        rc = fr_comm_agree(load_data(opts, run->model, true, &run->train, err), err);
    if (rc == FR_OK)
        rc = fr_comm_agree(load_data(opts, run->model, false, &run->test, err), err);
    if (rc == FR_OK && training)
        rc = check_output_paths(opts, err);
    const fr_dataset *data = training ? run->train : run->test; /* what the steps go through */
    if (rc == FR_OK)
        rc = fr_comm_check_same((uint64_t)fr_dataset_size(data), "the dataset size", err);
    if (rc == FR_OK) {
        /* The feature cache costs one forward pass of the prefix over the
         * data before the first step; it pays from the second epoch on.  The
         * choice depends on the whole run, not what is left of it, so a
         * resumed run makes the same one. */
        fr_train_config config = opts->train;
        config.seed = (uint64_t)opts->seed;
        if (training && run_steps(opts, fr_dataset_size(run->train)) <=
                            batches_per_epoch(opts, fr_dataset_size(run->train)))
            config.cache_mb = -1;
        rc = choose_threads(&config, run->thread_count, sizeof run->thread_count, err);
        if (rc == FR_OK)
            rc = fr_comm_agree(fr_trainer_new(run->model, &config, &run->trainer, err), err);
    }
    if (rc == FR_OK)
        rc = place_threads(opts, run->trainer, run->placement, sizeof run->placement, err);
    if (rc != FR_OK)
        return rc;
    run->x = malloc(sizeof(float) * (size_t)opts->batch_size * fr_model_input_numel(run->model));
    run->labels = malloc(sizeof(int32_t) * (size_t)opts->batch_size);
    bool allocated = run->x && run->labels;
    if (training) {
        run->order = malloc(sizeof(int) * (size_t)fr_dataset_size(run->train));
        run->frozen_before = calloc(fr_model_param_count(run->model) + 1, sizeof(uint64_t));
        allocated = allocated && run->order && run->frozen_before;
    }
    int local = allocated ? FR_OK
                          : fr_fail(err, FR_ENOMEM, "out of memory for a batch of %d",
                                    opts->batch_size);
    if (local == FR_OK && training)
        local = open_metrics(run, err);
    return fr_comm_agree(local, err);
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

/* What the run adds to a checkpoint: where it is in the data, and the
 * settings that must match for a resume to continue the same run. */
static int save_checkpoint(run_state *run, long epoch, long batch_in_epoch, fr_error *err) {
    const frost_options *opts = run->opts;
    char values[8][64];
    snprintf(values[0], sizeof values[0], "%ld", epoch);
    snprintf(values[1], sizeof values[1], "%ld", batch_in_epoch);
    snprintf(values[2], sizeof values[2], "%ld", opts->seed);
    snprintf(values[3], sizeof values[3], "%d", opts->shuffle);
    snprintf(values[4], sizeof values[4], "%d", opts->batch_size);
    snprintf(values[5], sizeof values[5], "%d", fr_dataset_size(run->train));
    snprintf(values[6], sizeof values[6], "%.17g", opts->train.lr);
    snprintf(values[7], sizeof values[7], "%d", fr_comm_size());
    fr_meta meta[] = {{"epoch", values[0]},      {"batch_in_epoch", values[1]},
                      {"seed", values[2]},       {"shuffle", values[3]},
                      {"batch_size", values[4]}, {"dataset_size", values[5]},
                      {"lr", values[6]},         {"ranks", values[7]},
                      {"classes", opts->classes ? opts->classes : "all"}};
    int rc = FR_OK;
    if (is_root())
        rc = fr_trainer_save_checkpoint(run->trainer, opts->checkpoint, meta,
                                        (int)(sizeof meta / sizeof meta[0]), err);
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
    if (rc == FR_OK) {
        rc = fr_trainer_restore(run->trainer, checkpoint, opts->allow_freeze_change, err);
        if (rc == FR_EINVAL && strstr(err->msg, "the frozen set must match"))
            append_to_message(err, "; --allow-freeze-change allows it");
    }
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
                         double loss, long correct, int batch) {
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
        if (run->metrics)
            fr_atomic_printf(run->metrics, "%ld,%ld,%.6f,%.4f,%.1f,%zu\n", step, epoch + 1,
                             loss, (double)correct / batch, rate, bytes_per_step);
    }
    p->interval_start = t;
    p->interval_steps = 0;
    p->interval_samples = 0;
    p->interval_bytes = sent;
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
    if (is_root())
        print_header(&run);

    int n = fr_dataset_size(run.train), batch_size = opts->batch_size;
    long epoch_steps = batches_per_epoch(opts, n), total_steps = run_steps(opts, n);

    /* Steps count from the start of the run, resumed or not; the position in
     * the data follows from the step. */
    long step = fr_trainer_steps_done(run.trainer);
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
    while (step < total_steps && rc == FR_OK && !interrupted) {
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
        step++;
        p.interval_steps++;
        p.interval_samples += batch;
        p.samples_trained += batch;
        /* Shared with the step's loss: no collective of its own, which
         * would wait for the step's gradients still on the wire. */
        interrupted = fr_trainer_stop_requested(run.trainer);
        if (step % opts->log_every == 0 || step == total_steps || interrupted) {
            /* Ranks must stay bit-identical; a check at every log: with the
             * next step's loss (no wait for this step's update, still in
             * flight), or here when no step follows. */
            if (fr_comm_size() > 1 && (step == total_steps || interrupted))
                rc = fr_comm_check_same(fr_model_checksum(run.model), "the weights", err);
            else if (fr_comm_size() > 1)
                fr_trainer_check_replicas(run.trainer);
            if (rc == FR_OK)
                log_progress(&run, &p, epoch, step, total_steps, last_loss, correct, batch);
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
            rc = close_metrics(&run, err);
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
    if (rc == FR_OK && is_root() && opts->save)
        rc = fr_model_save_weights(run.model, opts->save, err);
    if (rc != FR_ECOMMLOST)
        rc = fr_comm_agree(rc, err);
    if (rc == FR_OK && is_root())
        rc = close_metrics(&run, err);
    if (rc == FR_OK && is_root()) {
        if (p.samples_trained == 0) /* resumed at or past the last step */
            printf("done: %ld steps, nothing left to train after resuming\n", step);
        else
            printf("done: %ld steps in %.1f s, %.0f samples/s, final loss %.4f\n", step, elapsed,
                   elapsed > 0 ? p.samples_trained / elapsed : 0.0, last_loss);
        printf("test: loss %.4f accuracy %.2f%% (%d samples)\n", test_loss, 100.0 * test_accuracy,
               fr_dataset_size(run.test));
        size_t frozen = fr_model_numel(run.model) - fr_model_trainable_numel(run.model);
        if (frozen)
            printf("frozen parameters: %zu, unchanged (checksum %016llx)\n", frozen,
                   (unsigned long long)fr_model_frozen_checksum(run.model));
        else
            printf("frozen parameters: 0\n");
        if (fr_trainer_cache_bytes(run.trainer))
            printf("feature cache: %.1f MB of frozen-prefix outputs\n",
                   fr_trainer_cache_bytes(run.trainer) / 1048576.0);
        printf("allreduce: %zu bytes per step, %zu bytes in all; peak memory %.0f MB\n",
               fr_trainer_allreduce_bytes(run.trainer), fr_trainer_bytes_sent(run.trainer),
               peak_rss_mb());
        print_memory(&run);
        if (opts->checkpoint)
            printf("checkpoint %s\n", opts->checkpoint);
        if (opts->save)
            printf("saved %s\n", opts->save);
    }
    free_run(&run);
    return rc;
}

/* ----------------------------------------------------------------- eval */

int frost_eval(const frost_options *opts, fr_error *err) {
    run_state run = {.opts = opts};
    int rc = set_up_run(&run, false, err);
    double loss = 0.0, accuracy = 0.0;
    if (rc == FR_OK)
        rc = evaluate_dataset(run.trainer, run.test, opts->batch_size, run.x, run.labels, &loss,
                              &accuracy, err);
    if (rc == FR_OK && is_root())
        printf("test: loss %.4f accuracy %.2f%% (%d samples)\n", loss, 100.0 * accuracy,
               fr_dataset_size(run.test));
    free_run(&run);
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
        /* Buffers after the parameters, the state word `buffer`. */
        for (size_t i = 0; i < fr_model_buffer_count(model); i++) {
            char shape[32];
            fr_model_buffer_shape_string(model, i, shape, sizeof shape);
            printf("%s %s %zu buffer\n", fr_model_buffer_name(model, i), shape,
                   fr_model_buffer_numel(model, i));
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
