/*
 * options.c - parse and validate frost's flags.
 *
 * One table lists every flag, the commands that take it, and where its value
 * goes; numbers are parsed whole (no trailing junk) and range-checked.
 */
#define _POSIX_C_SOURCE 200809L
#include "options.h"
#include "tokenize.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum value_kind {
    FLAG, TEXT, LONG, INT, DOUBLE, OPTIMIZER, GRAD_DTYPE, RULE, SIGNAL, LAYOUT, NORMALIZE, SCHEDULE,
    INTERVAL, POSITIVE, LR_SCHEDULE, LR_RULE, FRESH
};

/* Which commands take a flag. */
enum { TRAIN = 1, EVAL = 2, INSPECT = 4, GENERATE = 8 };

typedef struct option_spec {
    const char *name;
    enum value_kind kind;
    int commands;
    size_t offset;  /* into frost_options */
    double min, max;
    bool freeze;    /* for RULE and SCHEDULE */
} option_spec;

#define AT(field) offsetof(frost_options, field)

static const option_spec options[] = {
    {"--model", TEXT, TRAIN | EVAL | INSPECT | GENERATE, AT(model), 0, 0, false},
    {"--weights", TEXT, GENERATE, AT(init), 0, 0, false},
    {"--prompt", TEXT, GENERATE, AT(prompt), 0, 0, false},
    {"--tokens", LONG, GENERATE, AT(tokens), 1, 1e6, false},
    {"--temperature", DOUBLE, GENERATE, AT(temperature), 0, 1e6, false},
    {"--top-k", INT, GENERATE, AT(top_k), 0, 1 << 30, false},
    {"--tokenizer", TEXT, GENERATE, AT(tokenizer), 0, 0, false},
    {"--data", TEXT, TRAIN | EVAL, AT(data), 0, 0, false},
    {"--classes", TEXT, TRAIN | EVAL, AT(classes), 0, 0, false},
    {"--data-layout", LAYOUT, TRAIN | EVAL, AT(data_layout), 0, 0, false},
    {"--normalize", NORMALIZE, TRAIN | EVAL, AT(normalize), 0, 0, false},
    {"--freeze", RULE, TRAIN | INSPECT, 0, 0, 0, true},
    {"--unfreeze", RULE, TRAIN | INSPECT, 0, 0, 0, false},
    {"--unfreeze-at", SCHEDULE, TRAIN, 0, 0, 0, false},
    {"--freeze-at", SCHEDULE, TRAIN, 0, 0, 0, true},
    {"--epochs", LONG, TRAIN, AT(epochs), 1, 1e9, false},
    {"--steps", LONG, TRAIN, AT(steps), 1, 1e12, false},
    {"--batch-size", INT, TRAIN | EVAL, AT(batch_size), 1, 1 << 20, false},
    {"--lr", DOUBLE, TRAIN, AT(train.lr), 0, 1e6, false},
    {"--momentum", DOUBLE, TRAIN, AT(train.momentum), 0, 1e3, false},
    {"--weight-decay", DOUBLE, TRAIN, AT(train.weight_decay), 0, 1e6, false},
    {"--nesterov", FLAG, TRAIN, AT(train.nesterov), 0, 0, false},
    {"--optimizer", OPTIMIZER, TRAIN, AT(train.optimizer), 0, 0, false},
    {"--threads", INT, TRAIN | EVAL | GENERATE, AT(train.threads), 1, 1024, false},
    {"--no-pin", FLAG, TRAIN | EVAL, AT(no_pin), 0, 0, false},
    {"--seed", LONG, TRAIN | GENERATE, AT(seed), 0, 9e15, false},
    {"--no-shuffle", FLAG, TRAIN, AT(shuffle), 0, 0, false},
    {"--init", TEXT, TRAIN | EVAL, AT(init), 0, 0, false},
    {"--init-new", FRESH, TRAIN, 0, 0, 0, false},
    {"--save", TEXT, TRAIN, AT(save), 0, 0, false},
    {"--metrics", TEXT, TRAIN, AT(metrics), 0, 0, false},
    {"--tensorboard", TEXT, TRAIN, AT(tensorboard), 0, 0, false},
    {"--log-every", LONG, TRAIN, AT(log_every), 1, 1e12, false},
    {"--eval-every", INTERVAL, TRAIN, AT(eval_every), 0, 0, false},
    {"--val-split", DOUBLE, TRAIN, AT(val_split), 0, 1, false},
    {"--save-best", TEXT, TRAIN, AT(save_best), 0, 0, false},
    {"--checkpoint", TEXT, TRAIN, AT(checkpoint), 0, 0, false},
    {"--checkpoint-every", LONG, TRAIN, AT(checkpoint_every), 1, 1e12, false},
    {"--resume", TEXT, TRAIN, AT(resume), 0, 0, false},
    {"--resume-if-exists", FLAG, TRAIN, AT(resume_if_exists), 0, 0, false},
    {"--stop-signal", SIGNAL, TRAIN, AT(stop_signal), 0, 0, false},
    {"--allow-freeze-change", FLAG, TRAIN, AT(allow_freeze_change), 0, 0, false},
    {"--bucket-mb", DOUBLE, TRAIN, AT(train.bucket_mb), 0.001, 1e6, false},
    {"--cache-mb", DOUBLE, TRAIN, AT(train.cache_mb), 0, 1e9, false},
    {"--no-cache", FLAG, TRAIN, AT(no_cache), 0, 0, false},
    {"--grad-dtype", GRAD_DTYPE, TRAIN, 0, 0, 0, false},
    {"--comm-timeout", DOUBLE, TRAIN | EVAL, AT(comm_timeout_s), 0.1, 1e7, false},
    {"--trace", TEXT, TRAIN, AT(trace), 0, 0, false},
    {"--lr-schedule", LR_SCHEDULE, TRAIN, AT(train.lr_schedule), 0, 0, false},
    {"--warmup-steps", LONG, TRAIN, AT(train.lr_schedule.warmup_steps), 0, 1e12, false},
    {"--lr-for", LR_RULE, TRAIN, 0, 0, 0, false},
    {"--clip-grad-norm", POSITIVE, TRAIN, AT(train.clip_grad_norm), 0, 1e12, false},
    {"--allow-lr-change", FLAG, TRAIN, AT(allow_lr_change), 0, 0, false},
};

/* The signals a batch system may send as notice (Slurm's --signal, PBS's and
 * LSF's warning actions); the rest end a process for good reasons. */
static const struct {
    const char *name;
    int number;
} stop_signals[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},
                    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"QUIT", SIGQUIT},
                    {"ALRM", SIGALRM}, {"XCPU", SIGXCPU}};

/* "USR1", "SIGUSR1", "usr1". */
static int parse_signal(const char *text, int *out, fr_error *err) {
    const char *name = strncasecmp(text, "SIG", 3) == 0 ? text + 3 : text;
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
        if (strcasecmp(name, stop_signals[i].name) == 0) {
            *out = stop_signals[i].number;
            return FR_OK;
        }
    return fr_fail(err, FR_EINVAL,
                   "--stop-signal '%s': expected TERM, INT, HUP, USR1, USR2, QUIT, ALRM or XCPU",
                   text);
}

/*
 * --normalize MEAN,STD[;MEAN,STD...]: torchvision's Normalize(mean, std).
 * Numbers are read as doubles and rounded to float32, as torch does with a
 * Python list; each std must be positive.  Whether the count fits the
 * channels is for the data to say (fr_dataset_normalize).
 */
static int parse_normalize(const char *text, frost_options *opts, fr_error *err) {
    static const char usage[] = "expected MEAN,STD pairs separated by ';' (0.5,0.25 or "
                                "0.49,0.25;0.48,0.24;0.45,0.26)";
    const char *cursor = text;
    int count = 0;
    for (;;) {
        double pair[2];
        for (int k = 0; k < 2; k++) {
            char *end;
            errno = 0;
            pair[k] = strtod(cursor, &end);
            if (end == cursor || errno == ERANGE || !(fabs(pair[k]) <= FLT_MAX))
                return fr_fail(err, FR_EINVAL, "--normalize '%s': %s", text, usage);
            cursor = end;
            while (*cursor == ' ')
                cursor++;
            if (k == 0 && *cursor++ != ',')
                return fr_fail(err, FR_EINVAL, "--normalize '%s': %s", text, usage);
        }
        if (count == FROST_MAX_NORMALIZE)
            return fr_fail(err, FR_EINVAL, "--normalize: more than %d pairs", FROST_MAX_NORMALIZE);
        if (!((float)pair[1] > 0.0f))
            return fr_fail(err, FR_EINVAL, "--normalize '%s': std %g (pair %d) must be positive",
                           text, pair[1], count + 1);
        opts->normalize_mean[count] = (float)pair[0];
        opts->normalize_std[count] = (float)pair[1];
        count++;
        if (*cursor == '\0')
            break;
        if (*cursor++ != ';')
            return fr_fail(err, FR_EINVAL, "--normalize '%s': %s", text, usage);
    }
    opts->normalize = text;
    opts->normalize_count = count;
    return FR_OK;
}

/* --lr-for PATTERN=LR: the pattern is everything before the last '='. */
static int parse_lr_rule(const char *text, frost_options *opts, fr_error *err) {
    if (opts->lr_rule_count == FROST_MAX_PATTERNS)
        return fr_fail(err, FR_EINVAL, "--lr-for: more than %d rules", FROST_MAX_PATTERNS);
    lr_rule *rule = &opts->lr_rules[opts->lr_rule_count];
    const char *eq = strrchr(text, '=');
    size_t len = eq ? (size_t)(eq - text) : 0;
    if (!eq || len == 0 || !eq[1])
        return fr_fail(err, FR_EINVAL, "--lr-for '%s': expected PATTERN=LR, e.g. 'layer4*=0.01'",
                       text);
    if (len >= sizeof rule->pattern)
        return fr_fail(err, FR_EINVAL, "--lr-for '%.40s...': the pattern is too long", text);
    char *end;
    errno = 0;
    double lr = strtod(eq + 1, &end);
    if (end == eq + 1 || *end || errno == ERANGE || !isfinite(lr) || lr < 0.0 || lr > 1e6)
        return fr_fail(err, FR_EINVAL,
                       "--lr-for '%s': the learning rate '%s' must be a number between 0 and 1e6",
                       text, eq + 1);
    memcpy(rule->pattern, text, len);
    rule->pattern[len] = '\0';
    rule->text = text;
    rule->lr = lr;
    opts->lr_rule_count++;
    return FR_OK;
}

static const option_spec *find_option(const char *name) {
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
    return NULL;
}

static int command_bit(const char *command) {
    if (strcmp(command, "train") == 0)
        return TRAIN;
    if (strcmp(command, "eval") == 0)
        return EVAL;
    if (strcmp(command, "inspect") == 0)
        return INSPECT;
    if (strcmp(command, "generate") == 0)
        return GENERATE;
    return 0;
}

static int parse_number(const option_spec *o, const char *text, double *out, bool integer,
                        fr_error *err) {
    char *end;
    errno = 0;
    double value = integer ? (double)strtoll(text, &end, 10) : strtod(text, &end);
    if (end == text || *end || errno == ERANGE || !isfinite(value))
        return fr_fail(err, FR_EINVAL, "%s '%s': expected %s", o->name, text,
                       integer ? "a whole number" : "a number");
    /* Whole-number limits in full ("1048576", not %g's "1.04858e+06"). */
    if (value < o->min || value > o->max)
        return fr_fail(err, FR_EINVAL, integer ? "%s %s: must be between %.0f and %.0f"
                                               : "%s %s: must be between %g and %g",
                       o->name, text, o->min, o->max);
    *out = value;
    return FR_OK;
}

static int set_value(const option_spec *o, const char *value, frost_options *opts, fr_error *err) {
    char *field = (char *)opts + o->offset;
    double number = 0;
    int rc = FR_OK;
    switch (o->kind) {
    case FLAG:
        /* --no-shuffle clears; the others set. */
        *(bool *)field = strcmp(o->name, "--no-shuffle") != 0;
        return FR_OK;
    case TEXT:
        if (!*value)
            return fr_fail(err, FR_EINVAL, "%s: empty value", o->name);
        *(const char **)field = value;
        return FR_OK;
    case RULE:
        if (opts->rule_count == FROST_MAX_PATTERNS)
            return fr_fail(err, FR_EINVAL, "%s: more than %d patterns", o->name, FROST_MAX_PATTERNS);
        opts->rules[opts->rule_count++] = (freeze_rule){value, o->freeze};
        return FR_OK;
    case FRESH:
        if (opts->init_new_count == FROST_MAX_PATTERNS)
            return fr_fail(err, FR_EINVAL, "%s: more than %d patterns", o->name, FROST_MAX_PATTERNS);
        opts->init_new[opts->init_new_count++] = value;
        return FR_OK;
    case SCHEDULE:
        if (opts->schedule_count == FROST_MAX_PATTERNS)
            return fr_fail(err, FR_EINVAL, "%s: more than %d points", o->name, FROST_MAX_PATTERNS);
        rc = schedule_parse_point(value, o->freeze, &opts->schedule[opts->schedule_count], err);
        if (rc != FR_OK)
            fr_error_prefix(err, "%s ", o->name);
        opts->schedule_count += rc == FR_OK;
        return rc;
    case INTERVAL:
        rc = schedule_parse_interval(value, (schedule_interval *)field, err);
        if (rc != FR_OK)
            fr_error_prefix(err, "%s ", o->name);
        return rc;
    case OPTIMIZER:
        if (strcmp(value, "sgd") == 0)
            opts->train.optimizer = FR_SGD;
        else if (strcmp(value, "adam") == 0)
            opts->train.optimizer = FR_ADAM;
        else if (strcmp(value, "adamw") == 0)
            opts->train.optimizer = FR_ADAMW;
        else
            return fr_fail(err, FR_EINVAL, "--optimizer '%s': expected sgd, adam or adamw", value);
        return FR_OK;
    case GRAD_DTYPE:
        if (strcmp(value, "f32") == 0 || strcmp(value, "fp32") == 0 || strcmp(value, "float32") == 0)
            opts->train.grad_dtype = FR_GRAD_F32;
        else if (strcmp(value, "bf16") == 0 || strcmp(value, "bfloat16") == 0)
            opts->train.grad_dtype = FR_GRAD_BF16;
        else
            return fr_fail(err, FR_EINVAL, "--grad-dtype '%s': expected f32 or bf16", value);
        return FR_OK;
    case SIGNAL:
        return parse_signal(value, (int *)field, err);
    case LAYOUT:
        if (strcasecmp(value, "nchw") == 0)
            opts->data_layout = FR_LAYOUT_NCHW;
        else if (strcasecmp(value, "nhwc") == 0)
            opts->data_layout = FR_LAYOUT_NHWC;
        else
            return fr_fail(err, FR_EINVAL, "--data-layout '%s': expected nchw or nhwc", value);
        return FR_OK;
    case NORMALIZE:
        return parse_normalize(value, opts, err);
    case LR_SCHEDULE:
        if ((rc = fr_lr_schedule_parse(value, (fr_lr_schedule *)field, err)) != FR_OK)
            fr_error_prefix(err, "%s: ", o->name);
        return rc;
    case LR_RULE:
        return parse_lr_rule(value, opts, err);
    case POSITIVE: {
        char *end;
        errno = 0;
        number = strtod(value, &end);
        if (end == value || *end || errno == ERANGE || !isfinite(number) || !(number > 0.0) ||
            number > o->max)
            return fr_fail(err, FR_EINVAL, "%s '%s': must be a number > 0 and <= %g", o->name,
                           value, o->max);
        *(double *)field = number;
        return FR_OK;
    }
    case LONG:
        if ((rc = parse_number(o, value, &number, true, err)) == FR_OK)
            *(long *)field = (long)number;
        return rc;
    case INT:
        if ((rc = parse_number(o, value, &number, true, err)) == FR_OK)
            *(int *)field = (int)number;
        return rc;
    case DOUBLE:
        if ((rc = parse_number(o, value, &number, false, err)) == FR_OK)
            *(double *)field = number;
        return rc;
    }
    return rc;
}

int frost_parse_options(int argc, char **argv, frost_options *opts, fr_error *err) {
    memset(opts, 0, sizeof *opts);
    fr_train_config_default(&opts->train);
    opts->data = FROST_DEFAULT_DATA;
    opts->epochs = 1;
    opts->batch_size = 64;
    opts->shuffle = true;
    opts->log_every = 100;
    opts->stop_signal = SIGTERM;
    opts->tokens = 64;
    opts->temperature = 1.0;
    if (argc < 2)
        return fr_fail(err, FR_EINVAL, "no command given (expected train, eval, inspect, generate or tokenize; see frost --help)");
    opts->command = argv[1];
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        opts->help = true;
        opts->command = NULL;
        return FR_OK;
    }
    int bit = command_bit(argv[1]);
    if (!bit)
        return fr_fail(err, FR_EINVAL, "unknown command '%s' (expected train, eval, inspect, generate or tokenize)", argv[1]);
    bool epochs_given = false;
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            opts->help = true;
            return FR_OK;
        }
        /* Both "--lr 0.1" and "--lr=0.1". */
        char name[64];
        const char *value = NULL, *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        if (name_len >= sizeof name)
            name_len = sizeof name - 1;
        memcpy(name, arg, name_len);
        name[name_len] = '\0';
        const option_spec *o = find_option(name);
        if (!o)
            return fr_fail(err, FR_EINVAL, "unknown option '%s' for 'frost %s' (see frost %s --help)",
                           arg, opts->command, opts->command);
        if (!(o->commands & bit))
            return fr_fail(err, FR_EINVAL, "'frost %s' does not take %s", opts->command, o->name);
        if (o->kind == FLAG) {
            if (eq)
                return fr_fail(err, FR_EINVAL, "%s takes no value", o->name);
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return fr_fail(err, FR_EINVAL, "%s needs a value", o->name);
        }
        int rc = set_value(o, value, opts, err);
        if (rc != FR_OK)
            return rc;
        if (strcmp(o->name, "--epochs") == 0)
            epochs_given = true;
        if (strcmp(o->name, "--val-split") == 0 && !(opts->val_split > 0 && opts->val_split < 1))
            return fr_fail(err, FR_EINVAL,
                           "--val-split %s: expected the fraction to hold out, above 0 and below 1",
                           value);
    }
    /* --steps alone means that many steps, however many epochs it takes. */
    if (opts->steps > 0 && !epochs_given)
        opts->epochs = 0;
    if (!opts->model)
        return fr_fail(err, FR_EINVAL, "'frost %s' needs --model FILE|SPEC", opts->command);
    if (bit == EVAL && !opts->init)
        return fr_fail(err, FR_EINVAL, "'frost eval' needs --init WEIGHTS.safetensors");
    if (bit == GENERATE && !opts->init)
        return fr_fail(err, FR_EINVAL, "'frost generate' needs --weights WEIGHTS.safetensors");
    if (bit == GENERATE && !opts->prompt)
        return fr_fail(err, FR_EINVAL, "'frost generate' needs --prompt TEXT");
    if (opts->checkpoint_every && !opts->checkpoint)
        return fr_fail(err, FR_EINVAL, "--checkpoint-every needs --checkpoint FILE");
    if (opts->init_new_count && !opts->init)
        return fr_fail(err, FR_EINVAL, "--init-new needs --init WEIGHTS.safetensors (the file the "
                       "other parameters come from)");
    if (opts->resume && opts->init)
        return fr_fail(err, FR_EINVAL, "--resume and --init both give starting weights; use one");
    if (opts->resume_if_exists && !opts->checkpoint)
        return fr_fail(err, FR_EINVAL, "--resume-if-exists needs --checkpoint FILE (the file to resume from)");
    if (opts->resume_if_exists && opts->resume)
        return fr_fail(err, FR_EINVAL, "--resume-if-exists and --resume both name the checkpoint to resume; use one");
    if (opts->save_best && !opts->eval_every.count)
        return fr_fail(err, FR_EINVAL, "--save-best needs --eval-every N (when to evaluate)");
    if (opts->val_split > 0 && !opts->eval_every.count)
        return fr_fail(err, FR_EINVAL, "--val-split needs --eval-every N (when to evaluate)");
    if (opts->no_cache)
        opts->train.cache_mb = -1;
    opts->train.max_batch = opts->batch_size;
    return FR_OK;
}

void frost_print_usage(const char *command) {
    if (!command || strcmp(command, "generate") == 0)
        printf("usage: frost generate --model FILE|SPEC|config.json --weights W.safetensors\n"
               "         --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
               "         [--tokenizer byte|DIR] [--threads T]\n"
               "  Continue TEXT with N tokens (64) sampled from a language model whose input is\n"
               "  token ids: softmax(logits / T) over the K most likely\n"
               "  (all when 0), seeded; --temperature 0 takes the most likely token.  The\n"
               "  context is the model's sequence length; a longer one keeps its last tokens.\n"
               "  --tokenizer byte (default): each byte a token; DIR: GPT-2's BPE from\n"
               "  DIR/encoder.json and DIR/vocab.bpe (frost tokenize's).\n");
    if (!command || strcmp(command, "train") == 0)
        printf("usage: frost train --model FILE|SPEC [--data DIR] [--freeze P]... [--unfreeze P]...\n"
               "         [--epochs N] [--steps N] [--batch-size B] [--lr X] [--momentum X]\n"
               "         [--nesterov] [--weight-decay X] [--optimizer sgd|adam|adamw] [--threads T]\n"
               "         [--seed N] [--no-shuffle] [--classes 0-4] [--data-layout nchw|nhwc]\n"
               "         [--normalize MEAN,STD[;MEAN,STD...]] [--init W.safetensors] [--init-new P]...\n"
               "         [--save W.safetensors] [--log-every N] [--metrics FILE.csv]\n"
               "         [--checkpoint C.safetensors] [--checkpoint-every N] [--resume C.safetensors]\n"
               "         [--resume-if-exists] [--stop-signal NAME] [--allow-freeze-change]\n"
               "         [--unfreeze-at POINT:P]... [--freeze-at POINT:P]... [--eval-every N|Ne]\n"
               "         [--val-split FRACTION] [--save-best W.safetensors]\n"
               "         [--bucket-mb X] [--cache-mb X] [--no-cache] [--no-pin]\n"
               "         [--grad-dtype f32|bf16] [--comm-timeout S] [--trace T.json]\n"
               "         [--tensorboard DIR]\n"
               "         [--lr-schedule S] [--warmup-steps N] [--lr-for P=LR]...\n"
               "         [--clip-grad-norm X] [--allow-lr-change]\n"
               "  Train the model on DIR (default " FROST_DEFAULT_DATA "): NumPy files\n"
               "  train_x.npy, train_y.npy, test_x.npy, test_y.npy, else IDX files\n"
               "  (train-images-idx3-ubyte, ..., t10k-...), each raw or .gz.  NumPy images are\n"
               "  uint8 (scaled to [0, 1], as IDX pixels are), float32 or float64, shaped\n"
               "  (N, C, H, W), or (N, H, W, C) with --data-layout nhwc, (N, H, W) or\n"
               "  (N, features); labels are integers, shape (N,).\n"
               "  --normalize subtracts MEAN and divides by STD per channel, as torchvision's\n"
               "  Normalize (one pair for every channel, or one per channel).\n"
               "  --batch-size is the global batch, split over MPI ranks and then threads.\n"
               "  --freeze/--unfreeze take a glob over parameter names (conv*, *.bias, *) or a\n"
               "  layer name, applied in order; a pattern that matches nothing is an error.\n"
               "  --steps is the total number of steps; --epochs bounds it too when given.\n"
               "  --unfreeze-at/--freeze-at POINT:P change the frozen set during the run, POINT\n"
               "  an epoch (2: before epoch 2's first step) or a step (s500: after 500 steps);\n"
               "  points at one step apply in command-line order.  Every rank re-plans there\n"
               "  (gradients, optimizer state, feature cache); parameters that become\n"
               "  trainable start with fresh optimizer state.\n"
               "  --eval-every N (steps) or Ne (epochs) evaluates on the test set, or on the\n"
               "  last FRACTION of the training set held out by --val-split, and at the last\n"
               "  step; --save-best writes the weights of the best evaluation (by accuracy).\n"
               "  --checkpoint is written every --checkpoint-every steps, at the end, and when\n"
               "  SIGTERM, SIGINT or the --stop-signal (USR1, USR2, HUP, ...) stops the run\n"
               "  (exit status 75); --resume continues exactly; --resume-if-exists resumes from\n"
               "  the --checkpoint file when there is one (else starts afresh, from --init if\n"
               "  given), so a requeued batch script needs no test of its own.\n"
               "  --bucket-mb sizes the allreduce buckets sent while backward runs (4).\n"
               "  --cache-mb bounds the frozen-prefix feature cache (a quarter of RAM);\n"
               "  --no-cache turns it off.\n"
               "  --grad-dtype bf16 sends gradients between ranks as bfloat16 (half the bytes;\n"
               "  summed and applied in float32).  --comm-timeout ends the job when a rank\n"
               "  waits that long for another (a rank or link is down; 120 s).\n"
               "  --metrics and --tensorboard get the loss, accuracy, samples/s and allreduce\n"
               "  bytes every --log-every steps: a CSV file, and TensorBoard scalars in an event\n"
               "  file in DIR (made if missing; with the learning rate, and the test loss and\n"
               "  accuracy at the end); a resumed run starts a new file in the same DIR.\n"
               "  --trace writes a Chrome trace (Perfetto, chrome://tracing) of every layer's\n"
               "  forward and backward per thread and every bucket's allreduce per rank.\n"
               "  --lr-schedule sets the learning rate per step, as torch's schedulers do:\n"
               "  constant (default); step:STEP_SIZE[:GAMMA] (StepLR, gamma 0.1);\n"
               "  cosine[:T_MAX[:ETA_MIN]] (CosineAnnealingLR; T_MAX defaults to the steps\n"
               "  after the warmup, ETA_MIN to 0).  --warmup-steps N: step k < N runs at\n"
               "  (k+1)/N of the rate, then the schedule starts (SequentialLR of\n"
               "  LambdaLR((k+1)/N) and the schedule, milestone N).\n"
               "  --lr-for P=LR gives the parameters glob or layer P base rate LR (torch's\n"
               "  param groups), applied in order: the last matching rule wins; every\n"
               "  rate follows the schedule.  --clip-grad-norm X scales the averaged\n"
               "  gradient to global L2 norm X at most (torch's clip_grad_norm_); the\n"
               "  metrics get its norm before clipping (grad_norm).  A resumed run must\n"
               "  keep the rates and schedule unless --allow-lr-change.\n"
               "  --threads defaults to OMP_NUM_THREADS, else to the rank's CPUs: its affinity\n"
               "  mask, split evenly between the ranks of a node that share the same mask.\n"
               "  Threads are pinned one per CPU of the process's affinity mask when it has\n"
               "  no spare CPUs (ranks of a node sharing a mask split it) unless --no-pin or\n"
               "  OMP_PROC_BIND/OMP_PLACES.\n");
    if (!command || strcmp(command, "eval") == 0)
        printf("usage: frost eval --model FILE|SPEC --init W.safetensors [--data DIR] [--classes C]\n"
               "         [--data-layout nchw|nhwc] [--normalize MEAN,STD[;MEAN,STD...]]\n"
               "         [--batch-size B] [--threads T] [--no-pin] [--comm-timeout S]\n"
               "  Loss and accuracy of the weights on the test set (test_x.npy or t10k-).\n");
    if (!command || strcmp(command, "inspect") == 0)
        printf("usage: frost inspect --model FILE|SPEC [--freeze P]... [--unfreeze P]...\n"
               "  One line per parameter: name shape count trainable|frozen; then totals and\n"
               "  the bytes one gradient allreduce will carry.\n");
    if (!command)
        frost_tokenize_usage();
}
