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
    INTERVAL, POSITIVE, LR_SCHEDULE, LR_RULE, FRESH, LORA, FROZEN_DTYPE
};

/* Which commands take a flag. */
enum { TRAIN = 1, EVAL = 2, INSPECT = 4, GENERATE = 8, MERGE = 16 };

typedef struct option_spec {
    const char *name;
    enum value_kind kind;
    int commands;
    size_t offset;  /* into frost_options */
    double min, max;
    bool freeze;    /* for RULE and SCHEDULE */
    /* For `frost COMMAND --help` (and so `frost help COMMAND`): what the value
     * looks like (NULL for a flag without one) and one line saying what the
     * flag does, with its default.  man/frost-COMMAND.1 holds the full text;
     * tests/docs.sh checks that the two list the same flags. */
    const char *value;
    const char *help;
} option_spec;

#define AT(field) offsetof(frost_options, field)

static const option_spec options[] = {
    {"--model", TEXT, TRAIN | EVAL | INSPECT | GENERATE, AT(model), 0, 0, false, "FILE|SPEC",
     "model file, the same text inline with ';' between layers, or a GPT-2 config.json "
     "(man 5 frost-model); required"},
    {"--weights", TEXT, GENERATE | MERGE, AT(init), 0, 0, false, "W.safetensors",
     "the weights to sample from, or to merge the adapter into; required"},
    {"--out", TEXT, MERGE, AT(out), 0, 0, false, "F.safetensors",
     "where merge writes the merged weights; required (-o F too)"},
    {"-o", TEXT, MERGE, AT(out), 0, 0, false, "F.safetensors", "the same as --out"},
    {"--prompt", TEXT, GENERATE, AT(prompt), 0, 0, false, "TEXT",
     "the text to continue (its tokens come first); required"},
    {"--tokens", LONG, GENERATE, AT(tokens), 1, 1e6, false, "N", "tokens to add (default 64)"},
    {"--temperature", DOUBLE, GENERATE, AT(temperature), 0, 1e6, false, "T",
     "sample softmax(logits / T); 0 takes the most likely token (default 1)"},
    {"--top-k", INT, GENERATE, AT(top_k), 0, 1 << 30, false, "K",
     "sample among the K most likely tokens only (default 0: all)"},
    {"--tokenizer", TEXT, GENERATE, AT(tokenizer), 0, 0, false, "byte|DIR",
     "bytes, or GPT-2's BPE from DIR/encoder.json and DIR/vocab.bpe (default byte)"},
    {"--data", TEXT, TRAIN | EVAL, AT(data), 0, 0, false, "DIR",
     "NumPy train_x.npy, train_y.npy, test_x.npy, test_y.npy or IDX files, raw or .gz "
     "(default " FROST_DEFAULT_DATA ")"},
    {"--classes", TEXT, TRAIN | EVAL, AT(classes), 0, 0, false, "LIST",
     "keep only samples with these labels: 0-4, 5,6,7 or 0-2,7 (default all)"},
    {"--data-layout", LAYOUT, TRAIN | EVAL, AT(data_layout), 0, 0, false, "nchw|nhwc",
     "how 4-D NumPy images are laid out (default nchw)"},
    {"--normalize", NORMALIZE, TRAIN | EVAL, AT(normalize), 0, 0, false, "MEAN,STD[;MEAN,STD...]",
     "(x - mean) / std per channel, torchvision's Normalize (default none)"},
    {"--freeze", RULE, TRAIN | INSPECT, 0, 0, 0, true, "P",
     "freeze the parameters glob or layer name P matches; repeatable, in order with --unfreeze"},
    {"--unfreeze", RULE, TRAIN | INSPECT, 0, 0, 0, false, "P",
     "make the parameters P matches trainable again; repeatable"},
    {"--lora", LORA, TRAIN | INSPECT, 0, 0, 0, false, "P[,P...]",
     "LoRA adapters on the linear/conv1d layers P names (PEFT's target_modules: c_attn "
     "names h.0.attn.c_attn); every base parameter frozen; repeatable"},
    {"--lora-rank", INT, TRAIN | INSPECT, AT(lora_config.rank), 1, 65536, false, "R",
     "the adapters' rank r (default 8)"},
    {"--lora-alpha", DOUBLE, TRAIN | INSPECT, AT(lora_alpha), 1e-6, 1e6, false, "A",
     "the adapters' lora_alpha: they are scaled by A/R (default 8)"},
    {"--lora-dropout", DOUBLE, TRAIN | INSPECT, AT(lora_dropout), 0, 0.999999, false, "P",
     "dropout on the adapters' input in training (default 0)"},
    {"--rslora", FLAG, TRAIN | INSPECT, AT(lora_config.rslora), 0, 0, false, NULL,
     "scale the adapters by A/sqrt(R), rank-stabilized LoRA (default A/R)"},
    {"--adapter", TEXT, TRAIN | EVAL | INSPECT | GENERATE | MERGE, AT(adapter), 0, 0, false, "DIR",
     "a PEFT adapter directory (adapter_config.json, adapter_model.safetensors): train "
     "continues it, eval and generate apply it, merge merges it"},
    {"--save-adapter", TEXT, TRAIN, AT(save_adapter), 0, 0, false, "DIR",
     "write the trained adapters as a PEFT adapter directory (default none)"},
    {"--unfreeze-at", SCHEDULE, TRAIN, 0, 0, 0, false, "POINT:P",
     "unfreeze P during the run: POINT an epoch (2) or a step (s500); repeatable"},
    {"--freeze-at", SCHEDULE, TRAIN, 0, 0, 0, true, "POINT:P",
     "freeze P during the run, POINT as for --unfreeze-at; repeatable"},
    {"--epochs", LONG, TRAIN, AT(epochs), 1, 1e9, false, "N",
     "passes over the training data (default 1; with --steps the smaller wins)"},
    {"--steps", LONG, TRAIN, AT(steps), 1, 1e12, false, "N",
     "total optimizer steps; alone it overrides --epochs (default: the epochs' steps)"},
    {"--batch-size", INT, TRAIN | EVAL, AT(batch_size), 1, 1 << 20, false, "B",
     "the global batch, split over ranks then threads (default 64)"},
    {"--lr", DOUBLE, TRAIN, AT(train.lr), 0, 1e6, false, "X", "learning rate (default 0.01)"},
    {"--momentum", DOUBLE, TRAIN, AT(train.momentum), 0, 1e3, false, "X",
     "SGD momentum, PyTorch's (default 0)"},
    {"--weight-decay", DOUBLE, TRAIN, AT(train.weight_decay), 0, 1e6, false, "X",
     "weight decay; AdamW's is decoupled (default 0)"},
    {"--nesterov", FLAG, TRAIN, AT(train.nesterov), 0, 0, false, NULL,
     "Nesterov momentum for SGD (default off)"},
    {"--optimizer", OPTIMIZER, TRAIN, AT(train.optimizer), 0, 0, false, "sgd|adam|adamw",
     "PyTorch's update rules (default sgd)"},
    {"--lr-schedule", LR_SCHEDULE, TRAIN, AT(train.lr_schedule), 0, 0, false, "S",
     "constant, step:STEP_SIZE[:GAMMA] or cosine[:T_MAX[:ETA_MIN]] (default constant)"},
    {"--warmup-steps", LONG, TRAIN, AT(train.lr_schedule.warmup_steps), 0, 1e12, false, "N",
     "step k < N runs at (k+1)/N of the rate, then the schedule (default 0)"},
    {"--lr-for", LR_RULE, TRAIN, 0, 0, 0, false, "P=LR",
     "base rate LR for the parameters P matches; repeatable, the last match wins"},
    {"--clip-grad-norm", POSITIVE, TRAIN, AT(train.clip_grad_norm), 0, 1e12, false, "X",
     "scale the gradient to global L2 norm X at most (default off)"},
    {"--threads", INT, TRAIN | EVAL | GENERATE, AT(train.threads), 1, 1024, false, "T",
     "threads of this process (default OMP_NUM_THREADS, else one per CPU the rank was given)"},
    {"--no-pin", FLAG, TRAIN | EVAL, AT(no_pin), 0, 0, false, NULL,
     "leave thread placement to the OS (default: each thread pinned to its own CPU)"},
    {"--seed", LONG, TRAIN | GENERATE, AT(seed), 0, 9e15, false, "N",
     "seed of the initialisation, shuffling and dropout, or of the sampling (default 0)"},
    {"--no-shuffle", FLAG, TRAIN, AT(shuffle), 0, 0, false, NULL,
     "take batches in dataset order (default: shuffled every epoch)"},
    {"--init", TEXT, TRAIN | EVAL, AT(init), 0, 0, false, "W.safetensors",
     "start from these weights (default: seeded initialisation; eval: required)"},
    {"--init-new", FRESH, TRAIN, 0, 0, 0, false, "P",
     "the parameters P matches keep their seeded initialisation and may be missing from "
     "--init (a new head); repeatable"},
    {"--save", TEXT, TRAIN, AT(save), 0, 0, false, "W.safetensors",
     "write the final weights, atomically (default none)"},
    {"--metrics", TEXT, TRAIN, AT(metrics), 0, 0, false, "FILE.csv",
     "one CSV row of loss, accuracy, samples/s, allreduce bytes, lr per logged step (default none)"},
    {"--tensorboard", TEXT, TRAIN, AT(tensorboard), 0, 0, false, "DIR",
     "TensorBoard scalars in a new event file in DIR (default none)"},
    {"--log-every", LONG, TRAIN, AT(log_every), 1, 1e12, false, "N",
     "progress line and metrics row every N steps (default 100)"},
    {"--eval-every", INTERVAL, TRAIN, AT(eval_every), 0, 0, false, "N|Ne",
     "evaluate every N steps or N epochs and at the end (default: at the end only)"},
    {"--val-split", DOUBLE, TRAIN, AT(val_split), 0, 1, false, "FRACTION",
     "evaluate on the training set's last FRACTION, held out (default: the test set)"},
    {"--save-best", TEXT, TRAIN, AT(save_best), 0, 0, false, "W.safetensors",
     "keep the weights of the best evaluation by accuracy (needs --eval-every); with "
     "adapters, their PEFT directory"},
    {"--checkpoint", TEXT, TRAIN, AT(checkpoint), 0, 0, false, "C.safetensors",
     "training checkpoint, written at the end and when a signal stops the run (default none)"},
    {"--checkpoint-every", LONG, TRAIN, AT(checkpoint_every), 1, 1e12, false, "N",
     "also write the checkpoint every N steps (default: only at the end and when stopped)"},
    {"--resume", TEXT, TRAIN, AT(resume), 0, 0, false, "C.safetensors",
     "continue a checkpointed run exactly where it stopped"},
    {"--resume-if-exists", FLAG, TRAIN, AT(resume_if_exists), 0, 0, false, NULL,
     "resume from the --checkpoint file if it exists, else start afresh"},
    {"--stop-signal", SIGNAL, TRAIN, AT(stop_signal), 0, 0, false, "NAME",
     "also checkpoint and exit 75 on this signal: USR1, USR2, HUP, ... (default TERM)"},
    {"--allow-freeze-change", FLAG, TRAIN, AT(allow_freeze_change), 0, 0, false, NULL,
     "let --resume use another frozen set (default: refused)"},
    {"--allow-lr-change", FLAG, TRAIN, AT(allow_lr_change), 0, 0, false, NULL,
     "let --resume use other rates or schedule (default: refused)"},
    {"--bucket-mb", DOUBLE, TRAIN, AT(train.bucket_mb), 0.001, 1e6, false, "X",
     "size of the allreduce buckets sent while backward runs (default 4)"},
    {"--cache-mb", DOUBLE, TRAIN, AT(train.cache_mb), 0, 1e9, false, "X",
     "budget of the frozen-prefix feature cache (default a quarter of RAM)"},
    {"--no-cache", FLAG, TRAIN, AT(no_cache), 0, 0, false, NULL,
     "no frozen-prefix feature cache (default: on)"},
    {"--frozen-dtype", FROZEN_DTYPE, TRAIN | EVAL | GENERATE, AT(frozen_bf16), 0, 0, false,
     "f32|bf16",
     "keep frozen linear/conv1d/embedding weights in bf16: half their memory, bf16 products "
     "(default f32)"},
    {"--grad-dtype", GRAD_DTYPE, TRAIN, 0, 0, 0, false, "f32|bf16",
     "how gradients travel between ranks; bf16 halves the bytes (default f32)"},
    {"--comm-timeout", DOUBLE, TRAIN | EVAL, AT(comm_timeout_s), 0.1, 1e7, false, "S",
     "end the job when a rank waits S seconds for another (default 120)"},
    {"--trace", TEXT, TRAIN, AT(trace), 0, 0, false, "T.json",
     "write a Chrome trace of every layer, thread and allreduce (default none)"},
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
    if (strcmp(command, "merge") == 0)
        return MERGE;
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
    case LORA:
        if (opts->lora_count == FROST_MAX_PATTERNS)
            return fr_fail(err, FR_EINVAL, "%s: more than %d patterns", o->name, FROST_MAX_PATTERNS);
        opts->lora[opts->lora_count++] = value;
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
    case FROZEN_DTYPE:
        if (strcmp(value, "f32") == 0 || strcmp(value, "fp32") == 0 || strcmp(value, "float32") == 0)
            *(bool *)field = false;
        else if (strcmp(value, "bf16") == 0 || strcmp(value, "bfloat16") == 0)
            *(bool *)field = true;
        else
            return fr_fail(err, FR_EINVAL, "--frozen-dtype '%s': expected f32 or bf16", value);
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

static const char *option_suggestion(const char *word, int bit, char *buf, size_t len);

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
    /* PEFT's LoraConfig defaults. */
    opts->lora_config = (fr_lora_config){.rank = 8};
    opts->lora_alpha = 8.0;
    if (argc < 2)
        return fr_fail(err, FR_EINVAL, "no command given (expected train, eval, inspect, generate, merge or tokenize; see frost help)");
    opts->command = argv[1];
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        opts->help = true;
        opts->command = NULL;
        return FR_OK;
    }
    int bit = command_bit(argv[1]);
    char suggestion[96];
    if (!bit)
        return fr_fail(err, FR_EINVAL,
                       "unknown command '%s'%s (expected train, eval, inspect, generate, "
                       "merge or tokenize; see frost help)",
                       argv[1], frost_command_suggestion(argv[1], suggestion, sizeof suggestion));
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
            return fr_fail(err, FR_EINVAL, "unknown option '%s' for 'frost %s'%s (see frost help %s)",
                           arg, opts->command,
                           option_suggestion(name, bit, suggestion, sizeof suggestion),
                           opts->command);
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
        if (strncmp(o->name, "--lora-", 7) == 0 || strcmp(o->name, "--rslora") == 0)
            opts->lora_setting_given = true;
        if (strcmp(o->name, "--val-split") == 0 && !(opts->val_split > 0 && opts->val_split < 1))
            return fr_fail(err, FR_EINVAL,
                           "--val-split %s: expected the fraction to hold out, above 0 and below 1",
                           value);
    }
    /* --steps alone means that many steps, however many epochs it takes. */
    if (opts->steps > 0 && !epochs_given)
        opts->epochs = 0;
    if (bit == MERGE) {
        if (!opts->init || !opts->adapter || !opts->out)
            return fr_fail(err, FR_EINVAL, "'frost merge' needs --weights W.safetensors, "
                           "--adapter DIR and -o F.safetensors");
        return FR_OK;
    }
    if (!opts->model)
        return fr_fail(err, FR_EINVAL, "'frost %s' needs --model FILE|SPEC", opts->command);
    if (opts->lora_setting_given && !opts->lora_count)
        return fr_fail(err, FR_EINVAL, "--lora-rank, --lora-alpha, --lora-dropout and --rslora "
                       "need --lora PATTERN (the layers that get adapters)");
    if (opts->adapter && opts->lora_count)
        return fr_fail(err, FR_EINVAL, "--adapter %s and --lora both give adapters: the "
                       "directory's adapter_config.json says which layers and what rank; use one",
                       opts->adapter);
    if (opts->save_adapter && !opts->adapter && !opts->lora_count)
        return fr_fail(err, FR_EINVAL, "--save-adapter needs adapters: --lora PATTERN, or "
                       "--adapter DIR to continue");
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

/* ------------------------------------------------------------- help */

/* The commands, for `frost help`, for "did you mean" and for the manual's
 * pages (frost-COMMAND(1)). */
static const struct {
    const char *name, *synopsis, *summary;
} commands[] = {
    {"train", "--model FILE|SPEC [--data DIR] [--freeze P]... [options]",
     "Train a model on a dataset, part of it frozen as PyTorch's requires_grad = False."},
    {"eval", "--model FILE|SPEC --init W.safetensors [--data DIR] [options]",
     "Loss and accuracy of the weights on the test set (test_x.npy or t10k-)."},
    {"inspect", "--model FILE|SPEC [--freeze P]... [--unfreeze P]...",
     "One line per parameter (name shape count trainable|frozen), the totals, allreduce bytes."},
    {"generate", "--model FILE|SPEC --weights W.safetensors --prompt TEXT [options]",
     "Continue TEXT with tokens sampled from a language model."},
    {"merge", "--weights W.safetensors --adapter DIR -o F.safetensors",
     "Base weights with a PEFT LoRA adapter merged in, as one weights file."},
    {"tokenize", "--out DIR [options] FILE...",
     "Text files to token .npy files for frost train --data."},
};
#define COMMAND_COUNT (sizeof commands / sizeof commands[0])

/* Optimal string alignment distance: the one-character insertions,
 * deletions, substitutions and swaps of neighbours that turn a into b.
 * Names are short; longer ones are compared on their first 63 characters. */
int frost_edit_distance(const char *a, const char *b) {
    enum { MAX = 64 };
    size_t n = strlen(a), m = strlen(b);
    n = n < MAX - 1 ? n : MAX - 1;
    m = m < MAX - 1 ? m : MAX - 1;
    int d[MAX][MAX];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int cost = a[i - 1] != b[j - 1];
            int best = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

const char *frost_closest(const char *word, const char *const *candidates, size_t count) {
    /* "-lr" and "lr" are "--lr" typed short. */
    const char *bare = word + strspn(word, "-");
    size_t length = strlen(bare);
    int allowed = length <= 3 ? 1 : length <= 6 ? 2 : 3, best_distance = allowed + 1;
    const char *best = NULL, *prefix_of = NULL;
    int prefixes = 0;
    for (size_t i = 0; i < count; i++) {
        const char *candidate = candidates[i] + strspn(candidates[i], "-");
        int distance = frost_edit_distance(bare, candidate);
        /* Two edits away and another first letter is another word. */
        if (distance >= 2 && candidate[0] != bare[0])
            continue;
        if (distance < best_distance) {
            best_distance = distance;
            best = candidates[i];
        }
        if (length >= 3 && strncmp(candidate, bare, length) == 0) {
            prefix_of = candidates[i];
            prefixes++;
        }
    }
    if (best)
        return best;
    return prefixes == 1 ? prefix_of : NULL;
}

/* " (did you mean X?)" for an unknown WORD, or "" when nothing is close. */
static const char *did_you_mean(const char *word, const char *const *candidates, size_t count,
                                char *buf, size_t len) {
    const char *closest = frost_closest(word, candidates, count);
    if (!closest)
        return "";
    snprintf(buf, len, " (did you mean %s?)", closest);
    return buf;
}

const char *frost_command_suggestion(const char *word, char *buf, size_t len) {
    const char *names[COMMAND_COUNT + 1];
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        names[i] = commands[i].name;
    names[COMMAND_COUNT] = "help";
    return did_you_mean(word, names, COMMAND_COUNT + 1, buf, len);
}

static const char *option_suggestion(const char *word, int bit, char *buf, size_t len) {
    const char *names[sizeof options / sizeof options[0]];
    size_t count = 0;
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        if (options[i].commands & bit)
            names[count++] = options[i].name;
    return did_you_mean(word, names, count, buf, len);
}

bool frost_is_command(const char *word) {
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (strcmp(word, commands[i].name) == 0)
            return true;
    return false;
}

/* "  --flag VALUE              what it does (default)": the help in a column
 * of its own, wrapped at 80 columns, below the flag when the flag is long. */
void frost_print_flag(const char *name, const char *value, const char *help) {
    enum { INDENT = 28, WIDTH = 80 };
    char flag[96];
    snprintf(flag, sizeof flag, "%s%s%s", name, value ? " " : "", value ? value : "");
    int column = printf("  %s", flag);
    if (column > INDENT - 2) {
        putchar('\n');
        column = 0;
    }
    const char *word = help;
    while (*word) {
        size_t length = strcspn(word, " ");
        if (column > INDENT && column + 1 + (int)length > WIDTH) {
            putchar('\n');
            column = 0;
        }
        if (column < INDENT)
            column += printf("%*s", INDENT - column, "");
        else
            column += printf(" ");
        column += printf("%.*s", (int)length, word);
        word += length;
        word += strspn(word, " ");
    }
    putchar('\n');
}

static void print_overview(void) {
    printf("usage: frost COMMAND [options]\n"
           "       frost help [--man] [COMMAND|model]\n"
           "       frost --version\n\n");
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        printf("usage: frost %s %s\n  %s\n", commands[i].name, commands[i].synopsis,
               commands[i].summary);
    printf("\nFreezing, as PyTorch's requires_grad = False: --freeze '*' (everything),\n"
           "--freeze fc1 (one layer), --freeze 'conv*' (a glob over parameter names);\n"
           "frost inspect --model M --freeze P shows what trains.\n"
           "frost help COMMAND lists its flags with their defaults; the manual is\n"
           "man frost, man frost-COMMAND and man 5 frost-model (the model files).\n");
}

void frost_print_usage(const char *command) {
    if (!command) {
        print_overview();
        return;
    }
    if (strcmp(command, "tokenize") == 0) {
        frost_tokenize_usage();
        return;
    }
    int bit = command_bit(command);
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (strcmp(command, commands[i].name) == 0)
            printf("usage: frost %s %s\n%s\n\noptions (default in parentheses):\n",
                   commands[i].name, commands[i].synopsis, commands[i].summary);
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        if (options[i].commands & bit)
            frost_print_flag(options[i].name, options[i].value, options[i].help);
    frost_print_flag("--help", NULL, "this list");
    printf("\nThe full reference: man frost-%s.\n", command);
}
