/*
 * run.h - the frost commands, each given parsed options and each in a file
 * of its own (train.c, eval.c, inspect.c, generate.c, merge.c), and what
 * generate.c and main.c take of frost train's setup and signals.  Each
 * returns an exit status; only rank 0 prints.  What train, eval and inspect
 * share besides is setup.h's.
 */
#ifndef FROST_CLI_RUN_H
#define FROST_CLI_RUN_H

#include "options.h"
#include "command.h"

int frost_train(const frost_options *opts, fr_error *err);
int frost_eval(const frost_options *opts, fr_error *err);
int frost_inspect(const frost_options *opts, fr_error *err);
int frost_generate(const frost_options *opts, fr_error *err);
/* frost merge: --weights with --adapter merged in, written to -o. */
int frost_merge(const frost_options *opts, fr_error *err);
/* setup.c: --lora's adapters (seeded by --seed) and --adapter's, added to a
 * model just built; with any, every base parameter is frozen (PEFT's start). */
int frost_add_adapters(const frost_options *opts, fr_model *model, fr_error *err);
/* --frozen-dtype bf16, once the weights are in (evaluating or sampling:
 * everything frozen first); says what it kept in bf16 on rank 0. */
int frost_frozen_bf16(const frost_options *opts, fr_model *model, bool training, fr_error *err);
/* train.c: from now on SIGTERM, SIGINT and `extra` (0: none) stop a training
 * run at the end of a step (frost train calls it; main calls it earlier too). */
void frost_catch_stop_signals(int extra);

#endif
