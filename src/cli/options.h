/*
 * options.h - the frost command line, parsed into one struct.
 *
 * Flags are DESIGN.md's contract.  Every value is range-checked here, so the
 * commands only ever see valid settings; a bad flag is one `frost: ...` line.
 */
#ifndef FROST_CLI_OPTIONS_H
#define FROST_CLI_OPTIONS_H

#include "frost.h"
#include "command.h"
#include "schedule.h"

#define FROST_MAX_PATTERNS 64
#define FROST_DEFAULT_DATA "/usr/share/datasets/fashion-mnist"
#define FROST_MAX_NORMALIZE 1024 /* --normalize pairs: channels, or features of (N, F) data */

typedef struct freeze_rule {
    const char *pattern;
    bool freeze; /* false: --unfreeze */
} freeze_rule;

/* --lr-for PATTERN=LR: the parameters PATTERN matches train at base rate LR. */
typedef struct lr_rule {
    const char *text; /* the flag's value, for messages */
    char pattern[256];
    double lr;
} lr_rule;

typedef struct frost_options {
    const char *command; /* "train", "eval", "inspect", "generate", "merge" */
    const char *model;
    const char *data;
    const char *classes;
    fr_layout data_layout; /* of 4-D NumPy images */
    const char *normalize; /* --normalize as given; NULL: none */
    int normalize_count;
    float normalize_mean[FROST_MAX_NORMALIZE], normalize_std[FROST_MAX_NORMALIZE];
    freeze_rule rules[FROST_MAX_PATTERNS];
    int rule_count;
    long epochs;
    long steps;      /* 0: no limit; otherwise the total number of steps */
    int batch_size;  /* global */
    fr_train_config train;
    long seed;
    bool shuffle;
    const char *init;
    const char *init_new[FROST_MAX_PATTERNS]; /* --init-new: parameters --init leaves fresh */
    int init_new_count;
    const char *save;
    const char *metrics;
    const char *tensorboard; /* directory of TensorBoard event files */
    const char *checkpoint;
    long checkpoint_every; /* 0: only at the end and when stopped */
    const char *resume;
    bool resume_if_exists; /* resume from `checkpoint` if that file exists */
    int stop_signal;       /* besides SIGTERM and SIGINT: checkpoint and exit 75 */
    bool allow_freeze_change;
    schedule_point schedule[FROST_MAX_PATTERNS]; /* --unfreeze-at, --freeze-at */
    int schedule_count;
    schedule_interval eval_every;
    double val_split;      /* 0: evaluate on the test set */
    const char *save_best; /* weights of the best evaluation */
    bool no_cache;
    bool no_pin; /* leave thread placement to the OS (or OMP_PROC_BIND) */
    double comm_timeout_s; /* 0: the library's default */
    const char *trace;     /* Chrome trace-event file */
    long log_every;
    /* Learning rates: the schedule and --clip-grad-norm are in train;
     * a cosine schedule without T_MAX has lr_schedule.t_max 0 (the run's
     * steps after the warmup). */
    lr_rule lr_rules[FROST_MAX_PATTERNS];
    int lr_rule_count;
    bool allow_lr_change;
    /* frost generate */
    const char *prompt;
    long tokens;
    double temperature;
    int top_k;
    const char *tokenizer; /* "byte" or GPT-2's BPE directory */
    /* LoRA: --lora patterns (each may hold several, comma-separated), the
     * adapters' settings, and whether any setting was given (--adapter's
     * config gives them instead); adapter directories to read and write. */
    const char *lora[FROST_MAX_PATTERNS];
    int lora_count;
    fr_lora_config lora_config;  /* rank and rslora; alpha and dropout below */
    double lora_alpha, lora_dropout;
    bool lora_setting_given;
    const char *adapter;
    const char *save_adapter;
    const char *out; /* frost merge -o */
    bool frozen_bf16; /* --frozen-dtype bf16 */
    bool help;
} frost_options;

/* Parse argv (argv[1] is the command).  Returns FR_OK or fills err; an
 * unknown command or option names the closest one. */
int frost_parse_options(int argc, char **argv, frost_options *opts, fr_error *err);
/* `frost help` (command NULL) or `frost help COMMAND`: every flag of the
 * command with what it does and its default. */
void frost_print_usage(const char *command);
/* One flag of a help list, "  --flag VALUE   what it does (default)". */
void frost_print_flag(const char *name, const char *value, const char *help);
bool frost_is_command(const char *word);

/* "Did you mean": the edit distance of two names (one-character insertions,
 * deletions, substitutions and swaps of neighbours); the candidate closest
 * to `word`, or NULL when none is close enough to be a typo of it; and
 * " (did you mean COMMAND?)" for an unknown command ("" when none is close). */
int frost_edit_distance(const char *a, const char *b);
const char *frost_closest(const char *word, const char *const *candidates, size_t count);
const char *frost_command_suggestion(const char *word, char *buf, size_t len);

#endif
