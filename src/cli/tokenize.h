/*
 * tokenize.h - `frost tokenize`: text files to token .npy files
 * (tokenize.c).  It reads and writes files only, so main runs it without
 * starting the communicator.
 */
#ifndef FROST_CLI_TOKENIZE_H
#define FROST_CLI_TOKENIZE_H

#include "frost.h"
#include "formats/tokenizer.h"

/* argv[1] is "tokenize".  Prints the usage or one summary line; returns
 * FR_OK or fills err (the caller prints it as `frost: ...`). */
int frost_tokenize(int argc, char **argv, fr_error *err);
void frost_tokenize_usage(void);

/* "byte", or a directory holding GPT-2's encoder.json and vocab.bpe (frost
 * tokenize's and frost generate's --tokenizer). */
int frost_load_tokenizer(const char *name, fr_tokenizer **tokenizer, fr_error *err);

#endif
