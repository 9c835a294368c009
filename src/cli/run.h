/*
 * run.h - the three frost commands, each given parsed options.
 * Each returns an exit status; only rank 0 prints.
 */
#ifndef FROST_CLI_RUN_H
#define FROST_CLI_RUN_H

#include "options.h"

int frost_train(const frost_options *opts, fr_error *err);
int frost_eval(const frost_options *opts, fr_error *err);
int frost_inspect(const frost_options *opts, fr_error *err);

#endif
