/*
 * main.c - the frost command: parse the flags, start the communicator, run
 * one of train / eval / inspect, and turn a failure into one `frost: ...`
 * line (from rank 0 only) and a non-zero exit status.  `frost tokenize`
 * only reads and writes files: it runs before any communicator starts.
 */
#include "run.h"
#include "tokenize.h"

#include <stdio.h>
#include <string.h>

#define FROST_EXIT_INTERRUPTED 75

int main(int argc, char **argv) {
    fr_error err = {0};
    frost_options opts;
    if (argc > 1 && strcmp(argv[1], "tokenize") == 0) {
        int status = frost_tokenize(argc, argv, &err);
        if (status != FR_OK) {
            fflush(stdout);
            fprintf(stderr, "frost: %s\n", err.msg);
        }
        return status == FR_OK ? 0 : 1;
    }
    /* A training run's stop signals are caught from the start: starting MPI
     * takes seconds, and a SIGTERM then must not kill the run (the
     * --stop-signal follows once the flags are parsed). */
    if (argc > 1 && strcmp(argv[1], "train") == 0)
        frost_catch_stop_signals(0);
    /* MPI may rewrite argv, so start it before parsing. */
    int rc = fr_comm_init(&argc, &argv, &err);
    if (rc == FR_OK)
        /* Ranks started with different flags must all stop together. */
        rc = fr_comm_agree(frost_parse_options(argc, argv, &opts, &err), &err);
    if (rc == FR_OK)
        fr_comm_set_timeout(opts.comm_timeout_s);
    if (rc == FR_OK && opts.help) {
        if (fr_comm_rank() == 0)
            frost_print_usage(opts.command);
        fr_comm_finalize();
        return 0;
    }
    if (rc == FR_OK) {
        if (strcmp(opts.command, "train") == 0)
            rc = frost_train(&opts, &err);
        else if (strcmp(opts.command, "eval") == 0)
            rc = frost_eval(&opts, &err);
        else if (strcmp(opts.command, "generate") == 0)
            rc = frost_generate(&opts, &err);
        else
            rc = frost_inspect(&opts, &err);
    }
    if (rc == FR_ECOMMLOST) {
        /* A rank or link is gone: the ranks still here cannot agree on
         * anything, so each says what it saw and the job ends now. */
        fflush(stdout);
        fprintf(stderr, "frost: %s\n", err.msg);
        fr_comm_abort(1);
        return 1;
    }
    if (rc != FR_OK && fr_comm_rank() == 0) {
        fflush(stdout);
        fprintf(stderr, "frost: %s\n", err.msg);
    }
    fr_comm_finalize();
    /* A stopped run is neither a success nor a failure: a batch script requeues
     * on 75 (EX_TEMPFAIL) and resumes from the checkpoint. */
    if (rc == FR_EINTERRUPTED)
        return FROST_EXIT_INTERRUPTED;
    return rc == FR_OK ? 0 : 1;
}
