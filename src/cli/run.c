/*
 * run.c - frost train, frost eval and frost inspect.
 *
 * Training and evaluation are set up by one function (set_up_run) in stages
 * (model, frozen set, weights, data, output paths, trainer), each followed by
 * fr_comm_agree so that a failure on any one rank ends every rank with that
 * rank's message.  Before the first step the ranks
 * compare fingerprints of everything that must match.  Only rank 0 prints and
 * writes files; files are written whole or not at all, but for the
 * TensorBoard event file, a log that grows as the run goes.
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

/* A Hugging Face config.json builds GPT-2 for the data's sequence length
 * (its n_positions is only the longest it takes). */
static int load_config_model(const frost_options *opts, fr_model **out, fr_error *err) {
    fr_dataset *data = NULL;
    int dims[FR_MAX_DIMS] = {0}, seq = 0;
    if (opts->data && fr_dataset_load_dir(opts->data, true, &data, NULL) == FR_OK &&
        fr_dataset_dtype(data) == FR_I32 && fr_dataset_sample_dims(data, dims) == 1)
        seq = dims[0];
    fr_dataset_free(data);
    return fr_model_load_gpt2(opts->model, seq, out, err);
}

/* Whether some parameter's name starts with "PREFIX.": a layer or block
 * name that a bare freeze pattern can use. */
static bool names_parameters(fr_model *model, const char *prefix) {
    size_t length = strlen(prefix);
    for (size_t i = 0; i < fr_model_param_count(model); i++) {
        const char *name = fr_param_name(fr_model_param(model, i));
        if (strncmp(name, prefix, length) == 0 && name[length] == '.')
            return true;
    }
    return false;
}

/*
 * A pattern matched nothing, most often a typo: add the closest layer and
 * parameter names to the message.  A glob's literal characters are compared
 * with the names and with their beginnings, so `layr1*` finds `layer1.0`.
 */
static void add_closest_names(fr_model *model, const char *pattern, fr_error *err) {
    enum { SHOWN = 3 };
    char literal[128];
    size_t length = 0;
    bool glob = false;
    for (const char *c = pattern; *c && length < sizeof literal - 1; c++) {
        if (strchr("*?[]", *c))
            glob = true;
        else
            literal[length++] = *c;
    }
    literal[length] = '\0';
    const char *best[SHOWN] = {0};
    int best_distance[SHOWN];
    size_t params = fr_model_param_count(model);
    int layers = fr_model_layer_count(model);
    for (size_t k = 0; k < (size_t)layers + params; k++) {
        const char *name = k < (size_t)layers ? fr_model_layer_name(model, (int)k)
                                              : fr_param_name(fr_model_param(model, k - layers));
        if (!name || (k < (size_t)layers && !names_parameters(model, name)))
            continue;
        int distance = frost_edit_distance(literal, name);
        if (glob) {
            char start[128];
            snprintf(start, sizeof start, "%.*s", (int)length, name);
            int to_start = frost_edit_distance(literal, start);
            distance = to_start < distance ? to_start : distance;
        }
        /* Keep the SHOWN closest, the first of equals; a name once. */
        bool seen = false;
        for (int i = 0; i < SHOWN && best[i]; i++)
            seen |= strcmp(best[i], name) == 0;
        /* The closest first; of equals the shorter (a layer before its
         * parameters), then the first. */
        for (int i = 0; i < SHOWN && !seen; i++)
            if (!best[i] || distance < best_distance[i] ||
                (distance == best_distance[i] && strlen(name) < strlen(best[i]))) {
                for (int j = SHOWN - 1; j > i; j--) {
                    best[j] = best[j - 1];
                    best_distance[j] = best_distance[j - 1];
                }
                best[i] = name;
                best_distance[i] = distance;
                break;
            }
    }
    if (!best[0])
        return;
    char list[FR_ERROR_LEN / 2] = "";
    for (int i = 0; i < SHOWN && best[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s'%s'", i ? ", " : "",
                 best[i]);
    size_t used = strlen(err->msg);
    snprintf(err->msg + used, sizeof err->msg - used, "; closest names: %s", list);
}

int frost_add_adapters(const frost_options *opts, fr_model *model, fr_error *err) {
    int rc = FR_OK;
    fr_lora_config config = opts->lora_config;
    config.alpha = (float)opts->lora_alpha;
    config.dropout = (float)opts->lora_dropout;
    for (int i = 0; rc == FR_OK && i < opts->lora_count; i++) {
        /* Each --lora may list several patterns: 'c_attn,c_fc'. */
        char patterns[1024];
        snprintf(patterns, sizeof patterns, "%s", opts->lora[i]);
        char *save = NULL;
        bool any = false;
        for (char *p = strtok_r(patterns, ",", &save); p && rc == FR_OK;
             p = strtok_r(NULL, ",", &save)) {
            any = true;
            rc = fr_model_add_lora(model, p, &config, (uint64_t)opts->seed, err);
            if (rc == FR_ENOMATCH)
                add_closest_names(model, p, err);
        }
        if (rc == FR_OK && !any)
            rc = fr_fail(err, FR_EINVAL, "--lora '%s': no pattern", opts->lora[i]);
    }
    if (rc == FR_OK && opts->adapter) {
        rc = fr_model_load_adapter(model, opts->adapter, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "--adapter: ");
    }
    /* PEFT's start: only the adapters train (--unfreeze trains more). */
    if (rc == FR_OK && fr_model_adapter_count(model) > 0)
        fr_model_freeze_base(model);
    return rc;
}

int frost_frozen_bf16(const frost_options *opts, fr_model *model, bool training, fr_error *err) {
    if (!opts->frozen_bf16)
        return FR_OK;
    /* Evaluating and sampling, nothing trains: every weight is frozen. */
    if (!training)
        fr_model_freeze_all(model);
    size_t before = fr_model_weight_bytes(model);
    int converted = 0;
    int rc = fr_model_store_frozen_bf16(model, &converted, err);
    if (rc != FR_OK)
        fr_error_prefix(err, "--frozen-dtype bf16: ");
    else if (fr_comm_rank() == 0 && strcmp(opts->command, "generate") != 0) /* stdout is its text */
        printf("frozen weights in bf16: %d tensors, weights %.1f MB -> %.1f MB; %s\n", converted,
               before / 1048576.0, fr_model_weight_bytes(model) / 1048576.0,
               fr_bf16_supported() ? "bf16 products on AVX512_BF16"
                                   : "this CPU has no AVX512_BF16: bf16 weights widened to float32 "
                                     "block by block (slower, the same numbers)");
    return rc;
}

static int load_model(const frost_options *opts, fr_model **out, fr_error *err) {
    fr_model *model = NULL;
    size_t len = strlen(opts->model);
    int rc = len > 5 && strcmp(opts->model + len - 5, ".json") == 0
                 ? load_config_model(opts, &model, err)
                 : fr_model_load(opts->model, &model, err);
    if (rc != FR_OK)
        fr_error_prefix(err, "--model: ");
    if (rc == FR_OK)
        rc = frost_add_adapters(opts, model, err);
    for (int i = 0; rc == FR_OK && i < opts->rule_count; i++) {
        const freeze_rule *rule = &opts->rules[i];
        rc = rule->freeze ? fr_model_freeze(model, rule->pattern, err)
                          : fr_model_unfreeze(model, rule->pattern, err);
        if (rc == FR_ENOMATCH)
            add_closest_names(model, rule->pattern, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "%s ", rule->freeze ? "--freeze" : "--unfreeze");
    }
    /* Every schedule point must name a parameter before anything runs; those
     * at the start belong to the starting frozen set. */
    if (rc == FR_OK)
        rc = schedule_check_patterns(model, opts->schedule, opts->schedule_count, err);
    if (rc == FR_OK)
        rc = schedule_apply(model, opts->schedule, opts->schedule_count, 0, 0, NULL, NULL, err);
    if (rc != FR_OK) {
        fr_model_free(model);
        return rc;
    }
    *out = model;
    return FR_OK;
}

/*
 * The samples must fit the model's input: as many values, and when both are
 * images (not vectors, which a linear layer takes flattened) the same
 * C x H x W, so that NHWC data read as NCHW is caught, not trained on.
 */
static int check_sample_shape(const fr_dataset *data, const fr_model *model, fr_error *err) {
    const char *path = fr_dataset_images_path(data);
    bool tokens = fr_dataset_dtype(data) == FR_I32;
    if (tokens != (fr_model_input_dtype(model) == FR_I32))
        return fr_fail(err, FR_ESHAPE, "%s holds %s, but the model's input is %s", path,
                       tokens ? "token ids" : "values", tokens ? "values" : "token ids");
    if (tokens) {
        int largest = fr_dataset_largest_token(data), vocabulary = fr_model_vocab_size(model);
        if (fr_dataset_sample_numel(data) != fr_model_input_numel(model))
            return fr_fail(err, FR_ESHAPE, "%s: rows of %d tokens, the model's input takes %d",
                           path, fr_dataset_sample_numel(data), fr_model_input_numel(model));
        if (largest >= vocabulary)
            return fr_fail(err, FR_EFORMAT, "%s: token id %d is out of range for the model's "
                           "vocabulary of %d", path, largest, vocabulary);
        return FR_OK;
    }
    if (fr_dataset_sample_numel(data) != fr_model_input_numel(model))
        return fr_fail(err, FR_ESHAPE, "%s: images have %d values, the model's input takes %d",
                       path, fr_dataset_sample_numel(data), fr_model_input_numel(model));
    int c, h, w, model_c, model_h, model_w;
    fr_dataset_sample_shape(data, &c, &h, &w);
    fr_model_input_shape(model, &model_c, &model_h, &model_w);
    bool both_images = (long)h * w > 1 && (long)model_h * model_w > 1;
    if (!both_images || (c == model_c && h == model_h && w == model_w))
        return FR_OK;
    const char *hint = "";
    if (c == model_h && h == model_w && w == model_c)
        hint = " (N, H, W, C data? give --data-layout nhwc)";
    else if (h == model_c && w == model_h && c == model_w)
        hint = " (N, C, H, W data? leave out --data-layout nhwc)";
    return fr_fail(err, FR_ESHAPE, "%s: images are %dx%dx%d (C x H x W), the model's input is "
                                   "%dx%dx%d%s",
                   path, c, h, w, model_c, model_h, model_w, hint);
}

static int load_data(const frost_options *opts, const fr_model *model, bool train,
                     fr_dataset **out, fr_error *err) {
    fr_dataset *data = NULL;
    int rc = fr_dataset_load_dir_as(opts->data, train, opts->data_layout, &data, err);
    if (rc == FR_OK && opts->classes) {
        rc = fr_dataset_keep_classes(data, opts->classes, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "--classes: ");
    }
    if (rc == FR_OK)
        rc = check_sample_shape(data, model, err);
    int targets = fr_model_targets_per_sample(model, FR_CROSS_ENTROPY);
    if (rc == FR_OK && fr_dataset_targets_per_sample(data) != targets)
        rc = fr_fail(err, FR_ESHAPE, "%s: %d targets per sample, the model's output takes %d "
                     "(one class per sample, or one per position)", fr_dataset_labels_path(data),
                     fr_dataset_targets_per_sample(data), targets);
    int classes = fr_model_class_count(model);
    if (rc == FR_OK && fr_dataset_class_count(data) > classes)
        rc = fr_fail(err, FR_EFORMAT, "%s: label %d is out of range for a model with %d outputs",
                     fr_dataset_labels_path(data), fr_dataset_class_count(data) - 1, classes);
    /* Once, here: every step, the evaluation and the frozen-prefix feature
     * cache then see the normalised values. */
    if (rc == FR_OK && opts->normalize) {
        rc = fr_dataset_normalize(data, opts->normalize_mean, opts->normalize_std,
                                  opts->normalize_count, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "--normalize: %s: ", fr_dataset_images_path(data));
    }
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
    /* The schedule and the evaluations decide when the ranks re-plan and
     * evaluate together. */
    uint64_t schedule = schedule_hash(opts->schedule, opts->schedule_count, &opts->eval_every);
    double settings[] = {opts->batch_size,       opts->epochs,       opts->steps,
                         (double)opts->seed,     opts->shuffle,      opts->log_every,
                         opts->checkpoint_every, opts->init != NULL, opts->resume != NULL,
                         opts->checkpoint != NULL, opts->allow_freeze_change,
                         (double)(schedule >> 11), opts->val_split, opts->save_best != NULL};
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
        /* Layers the file lacks (--init-new) start from the seeded
         * initialisation, the same on every rank. */
        rc = opts->init_new_count ? fr_model_init(model, (uint64_t)opts->seed, err) : FR_OK;
        if (rc == FR_OK)
            rc = fr_model_load_weights_except(model, opts->init, opts->init_new,
                                              opts->init_new_count, err);
        if (rc == FR_ENOMATCH)
            fr_error_prefix(err, "--init-new ");
        rc = fr_comm_agree(rc, err);
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

/* Copy this rank's rows of the global batch (the rest stay untouched) and
 * every row's targets (the loss's mean is over the whole batch's).  Inputs
 * move as bytes: floats or token ids alike. */
static void gather_batch(const fr_dataset *data, const int *order, int batch, int first,
                         int count, void *x, int32_t *labels) {
    size_t bytes = (size_t)fr_dataset_sample_numel(data) * 4;
    const char *inputs = fr_dataset_dtype(data) == FR_I32
                             ? (const char *)fr_dataset_tokens(data)
                             : (const char *)fr_dataset_images(data);
    int targets = fr_dataset_targets_per_sample(data);
    const int32_t *all_labels = fr_dataset_labels(data);
    /* Token ids are checked on every row of the batch (the ranks must agree
     * on a bad one before any runs it), so those rows are all copied. */
    if (fr_dataset_dtype(data) == FR_I32) {
        first = 0;
        count = batch;
    }
    for (int i = first; i < first + count; i++)
        memcpy((char *)x + (size_t)i * bytes, inputs + (size_t)order[i] * bytes, bytes);
    for (int i = 0; i < batch; i++)
        memcpy(labels + (size_t)i * targets, all_labels + (size_t)order[i] * targets,
               sizeof *labels * (size_t)targets);
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
    long correct_sum = 0, counted = 0;
    int rc = FR_OK;
    for (int start = 0; start < n && rc == FR_OK; start += batch_size) {
        int batch = n - start < batch_size ? n - start : batch_size, first, count;
        fr_trainer_rank_rows(trainer, batch, &first, &count);
        gather_batch(data, order + start, batch, first, count, x, labels);
        double batch_loss;
        long correct;
        rc = fr_trainer_evaluate(trainer, x, labels, batch, &batch_loss, &correct, err);
        /* Each batch's mean is over its targets that count: samples, or
         * positions not ignored. */
        long batch_count = fr_trainer_last_count(trainer);
        loss_sum += batch_loss * batch_count;
        correct_sum += correct;
        counted += batch_count;
    }
    free(order);
    *loss = counted ? loss_sum / counted : 0.0;
    *accuracy = counted ? (double)correct_sum / counted : 0.0;
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
/*
 * No silent slow placement: a rank that chose its thread count from what the
 * launcher gave it, where the job's ranks on this node then use at most half
 * of its CPUs.  Open MPI binds each rank to one core when it starts 2 ranks
 * or fewer, and srun gives a task one CPU unless --cpus-per-task says more,
 * so `mpirun -np 2 --host a,b` on two 64-core nodes would train on one core
 * of each, its communication thread on that core too.  Rank 0 says so once,
 * with the flags that fix it.  OMPI_COMM_WORLD_LOCAL_SIZE counts the ranks on
 * this node; without it every rank is taken to be here, which only ever
 * warns less.  Collective.
 */
static void warn_small_share(bool chose, int share) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    long here = local && atol(local) > 0 ? atol(local) : fr_comm_size();
    bool launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("SLURM_STEP_ID") ||
                    getenv("PMIX_RANK");
    bool small = chose && launched && online > 1 && 2 * here * share <= online;
    if (!fr_comm_any(small) || !is_root())
        return;
    long each = online / (here > 0 ? here : 1);
    if (small)
        fprintf(stderr, "frost: warning: rank 0 runs %d thread%s on %d of this node's %ld CPUs%s: "
                "no --threads or OMP_NUM_THREADS was given and the launcher gave the rank %d "
                "(mpirun binds each rank to one core when it starts 2 ranks or fewer; srun "
                "gives a task 1 CPU without --cpus-per-task). To use the node: mpirun "
                "--bind-to none (or --map-by slot:PE=%ld), srun --cpus-per-task=%ld; "
                "--threads %d keeps this placement quietly\n",
                share, share == 1 ? "" : "s", share, online,
                fr_comm_size() > 1 ? ", its communication thread there too" : "", share, each,
                each, share);
    else
        fprintf(stderr, "frost: warning: some ranks run on a small share of their node's CPUs "
                "(no --threads or OMP_NUM_THREADS was given and the launcher bound them): "
                "mpirun --bind-to none or srun --cpus-per-task=N gives them more\n");
}

static int choose_threads(fr_train_config *config, char *note, size_t len, fr_error *err) {
    int share = 0;
    char where[200];
    note[0] = '\0';
    int rc = fr_comm_agree(fr_cpu_share(&share, where, sizeof where, err), err);
    const char *omp = getenv("OMP_NUM_THREADS");
    bool chose = rc == FR_OK && config->threads == 0 && !(omp && *omp);
    if (chose) {
        config->threads = share;
        snprintf(note, len, "%d (%s), ", share, where);
    }
    if (rc == FR_OK)
        warn_small_share(chose, share);
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

static void free_run(run_state *run) {
    fr_atomic_discard(run->metrics); /* no partial output */
    fr_tb_close(run->tensorboard, NULL); /* a log: what it holds stays */
    free(run->x);
    free(run->labels);
    free(run->order);
    free(run->frozen_before);
    fr_trainer_free(run->trainer);
    fr_dataset_free(run->train);
    fr_dataset_free(run->test);
    fr_dataset_free(run->val);
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

/* --save-adapter DIR (and --save-best with adapters): a directory whose
 * files can be written, or one that can be made. */
static int check_adapter_dir(const char *flag, const char *dir, fr_error *err) {
    if (!dir)
        return FR_OK;
    struct stat st;
    if (stat(dir, &st) != 0)
        return check_output_path(flag, dir, err);
    if (!S_ISDIR(st.st_mode))
        return fr_fail(err, FR_EIO, "%s %s: not a directory (adapters are saved as a PEFT "
                       "adapter directory)", flag, dir);
    char file[4096];
    snprintf(file, sizeof file, "%s/adapter_model.safetensors", dir);
    return check_output_path(flag, file, err);
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
        if (local == FR_OK && (opts->lora_count || opts->adapter))
            local = check_adapter_dir("--save-best", opts->save_best, err);
        else if (local == FR_OK)
            local = check_output_path("--save-best", opts->save_best, err);
        if (local == FR_OK)
            local = check_adapter_dir("--save-adapter", opts->save_adapter, err);
    }
    return fr_comm_agree(local, err);
}

/* --val-split: the last FRACTION of the training set (after --classes) is
 * evaluated, not trained on; the same samples on every rank and resume. */
static int hold_out(run_state *run, fr_error *err) {
    int n = fr_dataset_size(run->train);
    int held = (int)(n * run->opts->val_split + 0.5);
    if (held < 1 || held >= n)
        return fr_fail(err, FR_EINVAL, "--val-split %g of %d training samples holds out %d: %s",
                       run->opts->val_split, n, held,
                       held < 1 ? "none to evaluate" : "none to train on");
    return fr_dataset_split(run->train, n - held, &run->val, err);
}

/* The schedule's epochs and --eval-every in steps, now that the run's
 * length is known. */
static int resolve_schedule(run_state *run, fr_error *err) {
    const frost_options *opts = run->opts;
    int n = fr_dataset_size(run->train);
    memcpy(run->schedule, opts->schedule, sizeof run->schedule);
    run->eval_every = opts->eval_every;
    run->best_accuracy = -1.0;
    return schedule_resolve(run->schedule, opts->schedule_count, &run->eval_every,
                            batches_per_epoch(opts, n), run_steps(opts, n), err);
}

/* ------------------------------------------------------ learning rates */

/*
 * The schedule as this run needs it: a cosine schedule without T_MAX anneals
 * over the run's steps after the warmup (the whole run's, so a resumed run
 * with the same --steps gets the same).  A warmup may outlast a run that a
 * later one continues.
 */
static int resolve_lr_schedule(const frost_options *opts, int samples,
                               fr_lr_schedule *schedule, fr_error *err) {
    long total = run_steps(opts, samples);
    if (schedule->kind == FR_LR_COSINE && schedule->t_max == 0) {
        if (total - schedule->warmup_steps < 1)
            return fr_fail(err, FR_EINVAL,
                           "--lr-schedule cosine: the run has no steps after the %ld warmup steps to anneal over (give cosine:T_MAX)",
                           schedule->warmup_steps);
        schedule->t_max = total - schedule->warmup_steps;
    }
    return FR_OK;
}

/* --lr-for, in order (where rules overlap the last one wins); then the ranks
 * compare the rates, which they must all update with. */
static int apply_lr_rules(run_state *run, fr_error *err) {
    const frost_options *opts = run->opts;
    int rc = FR_OK;
    for (int i = 0; rc == FR_OK && i < opts->lr_rule_count; i++) {
        const lr_rule *rule = &opts->lr_rules[i];
        rc = fr_trainer_set_lr(run->trainer, rule->pattern, rule->lr, err);
        if (rc == FR_ENOMATCH)
            add_closest_names(run->model, rule->pattern, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "--lr-for '%s': ", rule->text);
    }
    rc = fr_comm_agree(rc, err);
    uint64_t hash = 14695981039346656037u; /* FNV-1a over the rates' bits */
    for (size_t i = 0; rc == FR_OK && i < fr_model_param_count(run->model); i++) {
        double lr = fr_trainer_lr(run->trainer, (int)i, 0);
        const unsigned char *bytes = (const unsigned char *)&lr;
        for (size_t b = 0; b < sizeof lr; b++)
            hash = (hash ^ bytes[b]) * 1099511628211u;
    }
    return rc == FR_OK ? fr_comm_check_same(hash, "the learning rates (--lr-for)", err) : rc;
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
    if (rc == FR_OK)
        rc = fr_comm_agree(frost_frozen_bf16(opts, run->model, training, err), err);
    if (rc == FR_OK && training)
        rc = fr_comm_agree(load_data(opts, run->model, true, &run->train, err), err);
    if (rc == FR_OK && training && opts->val_split > 0)
        rc = fr_comm_agree(hold_out(run, err), err);
    if (rc == FR_OK)
        rc = fr_comm_agree(load_data(opts, run->model, false, &run->test, err), err);
    if (rc == FR_OK && training)
        rc = check_output_paths(opts, err);
    const fr_dataset *data = training ? run->train : run->test; /* what the steps go through */
    if (rc == FR_OK)
        rc = fr_comm_check_same((uint64_t)fr_dataset_size(data), "the dataset size", err);
    if (rc == FR_OK && training)
        rc = fr_comm_agree(resolve_schedule(run, err), err);
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
        if (training)
            rc = resolve_lr_schedule(opts, fr_dataset_size(run->train), &config.lr_schedule, err);
        run->lr_schedule = config.lr_schedule;
        if (rc == FR_OK)
            rc = choose_threads(&config, run->thread_count, sizeof run->thread_count, err);
        if (rc == FR_OK)
            rc = fr_comm_agree(fr_trainer_new(run->model, &config, &run->trainer, err), err);
    }
    if (rc == FR_OK)
        rc = place_threads(opts, run->trainer, run->placement, sizeof run->placement, err);
    if (rc == FR_OK && training)
        rc = apply_lr_rules(run, err);
    if (rc != FR_OK)
        return rc;
    run->x = malloc(sizeof(float) * (size_t)opts->batch_size * fr_model_input_numel(run->model));
    int targets = run->train ? fr_dataset_targets_per_sample(run->train)
                             : fr_dataset_targets_per_sample(run->test);
    run->labels = malloc(sizeof(int32_t) * (size_t)opts->batch_size * (size_t)targets);
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
    if (local == FR_OK && training)
        local = open_tensorboard(run, err);
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
                         double loss, long correct, int batch) {
    /* Accuracy over what the loss counted: samples, or positions not ignored. */
    batch = (int)fr_trainer_last_count(run->trainer);
    double t = now_seconds();
    double rate = p->interval_samples / (t - p->interval_start);
    size_t sent = fr_trainer_bytes_sent(run->trainer);
    size_t bytes_per_step = p->interval_steps ? (sent - p->interval_bytes) / (size_t)p->interval_steps : 0;
    if (is_root()) {
        char eta[32];
        long done_here = (long)(p->samples_trained / run->opts->batch_size);
        format_duration(done_here ? (total_steps - step) * (t - p->start) / done_here : 0, eta,
                        sizeof eta);
        char lr_values[64];
        schedule_values(run, step, lr_values, sizeof lr_values);
        printf("epoch %ld step %ld/%ld loss %.4f acc %.1f%% %.0f samples/s ETA %s\n", epoch + 1,
               step, total_steps, loss, 100.0 * correct / batch, rate, eta);
        fflush(stdout);
        char evaluation[64] = ",";
        if (run->evaluated)
            snprintf(evaluation, sizeof evaluation, "%.6f,%.6f", run->eval_loss,
                     run->eval_accuracy);
        if (run->metrics)
            fr_atomic_printf(run->metrics, "%ld,%ld,%.6f,%.4f,%.1f,%zu,%s%s\n", step, epoch + 1,
                             loss, (double)correct / batch, rate, bytes_per_step, evaluation,
                             lr_values);
        /* The same row as TensorBoard scalars (a write failure sticks). */
        fr_tb_scalar(run->tensorboard, "train/loss", loss);
        fr_tb_scalar(run->tensorboard, "train/accuracy", (double)correct / batch);
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
        if (rc == FR_OK && is_root())
            rc = close_tensorboard(&run, err);
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
    if (rc == FR_OK) {
        fr_tb_scalar(run.tensorboard, "eval/loss", test_loss);
        fr_tb_scalar(run.tensorboard, "eval/accuracy", test_accuracy);
        fr_tb_write(run.tensorboard, step, NULL);
    }
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
        rc = close_metrics(&run, err);
    if (rc == FR_OK && is_root())
        rc = close_tensorboard(&run, err);
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
        /* Tied parameters once, as named_parameters() lists them; then the
         * other names they have. */
        for (size_t i = 0; i < fr_model_param_count(model); i++) {
            char names[512];
            if (fr_model_tied_names(model, i, names, sizeof names) > 0)
                printf("# %s is %s (tied: one parameter, frozen or trained together, its "
                       "gradients added)\n", names, fr_param_name(fr_model_param(model, i)));
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
