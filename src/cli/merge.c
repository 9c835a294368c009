/*
 * merge.c - frost merge: base weights with a PEFT LoRA adapter merged in
 * (W + scale · B · A, or its transpose for a Conv1D weight), written as one
 * plain weights file that frost and PyTorch load without the adapter.
 * Rank 0 alone reads and writes; merging is never implicit elsewhere.
 */
#include "run.h"

#include <stdio.h>

int frost_merge(const frost_options *opts, fr_error *err) {
    int rc = FR_OK;
    if (fr_comm_rank() == 0) {
        rc = fr_adapter_merge(opts->init, opts->adapter, opts->out, err);
        if (rc == FR_OK)
            printf("merged %s into %s: %s\n", opts->adapter, opts->init, opts->out);
    }
    return fr_comm_agree(rc, err);
}
