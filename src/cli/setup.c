/*
 * setup.c - what frost train and frost eval set up before their first batch,
 * and what generate.c takes of it (--lora, --adapter, --frozen-dtype bf16).
 *
 * Training and evaluation are set up by one function (set_up_run) in stages
 * (model, frozen set, weights, data, output paths, trainer), each followed by
 * fr_comm_agree so that a failure on any one rank ends every rank with that
 * rank's message.  Before the first step the ranks
 * compare fingerprints of everything that must match.
 */
#define _POSIX_C_SOURCE 200809L
#include "setup.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------- model, data, weights */

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

int load_model(const frost_options *opts, fr_model **out, fr_error *err) {
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

int evaluate_dataset(fr_trainer *trainer, const fr_dataset *data, int batch_size,
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

/* ------------------------------------------ the run's length and outputs */

long batches_per_epoch(const frost_options *opts, int samples) {
    return (samples + opts->batch_size - 1) / opts->batch_size;
}

long run_steps(const frost_options *opts, int samples) {
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

/*
 * The setup frost train and frost eval share, stage by stage: the model and
 * its frozen set, the ranks' settings compared, the weights, the data (the
 * training set too, and the output paths, when `training`), the trainer and
 * its threads, one batch's buffers (and the training run's epoch order and
 * frozen checksums).
 */
int set_up_run(run_state *run, bool training, fr_error *err) {
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
    return fr_comm_agree(local, err);
}

void free_run(run_state *run) {
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
