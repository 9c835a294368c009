/*
 * main.c - the frost command: parse the flags, start the communicator, run
 * one of train / eval / inspect / generate, and turn a failure into one
 * `frost: ...` line (from rank 0 only) and a non-zero exit status.
 * `frost tokenize`, `frost help` and `frost --version` only read and write
 * files or print: they run before any communicator starts.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"
#include "run.h"
#include "tokenize.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#ifdef HAVE_MPI
#include <mpi.h> /* the version macros only: src/comm.c is frost's MPI */
#endif

#define FROST_EXIT_INTERRUPTED 75

/* GNU's --version: the name and version first, then what this build has. */
static void print_version(void) {
    printf("frost %s\n", PACKAGE_VERSION);
#if defined(HAVE_MPI) && defined(OMPI_MAJOR_VERSION)
    printf("MPI: Open MPI %d.%d.%d (MPI %d.%d)\n", OMPI_MAJOR_VERSION, OMPI_MINOR_VERSION,
           OMPI_RELEASE_VERSION, MPI_VERSION, MPI_SUBVERSION);
#elif defined(HAVE_MPI)
    printf("MPI: MPI %d.%d\n", MPI_VERSION, MPI_SUBVERSION);
#else
    printf("MPI: none (configured --without-mpi: one process)\n");
#endif
#ifdef _OPENMP
    const char *openmp = _OPENMP >= 202011 ? "5.1" : _OPENMP >= 201811 ? "5.0"
                       : _OPENMP >= 201511 ? "4.5" : _OPENMP >= 201307 ? "4.0" : "3.x";
    printf("OpenMP: %s (_OPENMP %d)\n", openmp, _OPENMP);
#endif
    printf("BLAS: %s\n", openblas_get_config());
    printf("zlib: %s\n", zlibVersion());
    const char *dnnl = fr_conv_dnnl_version();
    printf("convolutions: %s\n", dnnl ? dnnl : "OpenBLAS (configured without oneDNN)");
}

/* `frost help --man TOPIC` and `frost help model`: the manual's page. */
static int show_man(const char *topic) {
    char page[64];
    snprintf(page, sizeof page, "frost%s%s", topic ? "-" : "", topic ? topic : "");
    fflush(stdout);
    if (topic && strcmp(topic, "model") == 0)
        execlp("man", "man", "5", page, (char *)NULL);
    else
        execlp("man", "man", page, (char *)NULL);
    fprintf(stderr, "frost: cannot run man (%s); the page is man/%s.%s in frost's source\n",
            strerror(errno), page, topic && strcmp(topic, "model") == 0 ? "5" : "1");
    return 1;
}

/* frost help [--man] [COMMAND|model]: argv[1] is "help", "--help" or "-h". */
static int help(int argc, char **argv) {
    int i = 2;
    bool man = i < argc && (strcmp(argv[i], "--man") == 0 || strcmp(argv[i], "-m") == 0);
    i += man;
    const char *topic = i < argc && strcmp(argv[i], "help") != 0 ? argv[i] : NULL;
    if (topic && strcmp(topic, "model") != 0 && !frost_is_command(topic)) {
        char suggestion[96];
        fprintf(stderr, "frost: no help on '%s'%s (frost help lists the commands)\n", topic,
                frost_command_suggestion(topic, suggestion, sizeof suggestion));
        return 1;
    }
    if (man || (topic && strcmp(topic, "model") == 0))
        return show_man(topic);
    frost_print_usage(topic);
    return 0;
}

int main(int argc, char **argv) {
    fr_error err = {0};
    frost_options opts;
    if (argc > 1 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        print_version();
        return 0;
    }
    if (argc > 1 && (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
                     strcmp(argv[1], "-h") == 0))
        return help(argc, argv);
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
        else if (strcmp(opts.command, "merge") == 0)
            rc = frost_merge(&opts, &err);
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
