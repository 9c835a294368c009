/*
 * affinity.c - where the trainer's threads run.
 *
 * Each replica's activations and slab are first touched by its own thread;
 * pinning keeps that thread, and its memory, on one CPU for the whole run.
 * The CPUs come from the process's affinity mask, which is how mpirun, srun
 * and taskset hand a rank its cores; ranks of one node that were given the
 * same mask (mpirun --bind-to none, srun without CPU binding) split it
 * between them, both for the default thread count and for pinning.  A lone
 * process whose mask has more CPUs than it has threads is left alone: nothing
 * tells it which of them other processes use.
 */
#define _GNU_SOURCE /* sched_getaffinity, sched_setaffinity, CPU_* */
#include "internal.h"
#include "command.h"

#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

static cpu_set_t launch_mask;
static bool have_launch_mask;

/* The mask the process started with; read once, since pinning narrows the
 * calling thread's own mask.  Empty if it cannot be read. */
static const cpu_set_t *process_mask(void) {
    if (!have_launch_mask) {
        if (sched_getaffinity(0, sizeof launch_mask, &launch_mask) != 0)
            CPU_ZERO(&launch_mask);
        have_launch_mask = true;
    }
    return &launch_mask;
}

/* "0-3", "0,2,5-7": CPUs [first, first + count) of the list. */
static void format_cpus(const int *cpus, int count, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < count && used < len;) {
        int j = i;
        while (j + 1 < count && cpus[j + 1] == cpus[j] + 1)
            j++;
        int n = j > i ? snprintf(buf + used, len - used, "%s%d-%d", i ? "," : "", cpus[i], cpus[j])
                      : snprintf(buf + used, len - used, "%s%d", i ? "," : "", cpus[i]);
        if (n < 0)
            break;
        used += (size_t)n;
        i = j + 1;
    }
}

/* The variable through which the user placed OpenMP's threads, if any. */
static const char *user_placement(void) {
    static const char *const vars[] = {"OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *value = getenv(vars[i]);
        if (value && *value)
            return vars[i];
    }
    return NULL;
}

int fr_cpu_share(int *cpus, char *description, size_t len, fr_error *err) {
    const cpu_set_t *mask = process_mask();
    int index = 0, sharing = 1;
    int rc = fr_comm_node_peers(mask, sizeof *mask, &index, &sharing, err);
    if (rc != FR_OK)
        return rc;
    int list[CPU_SETSIZE], n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, mask))
            list[n++] = c;
    if (n == 0) {
        *cpus = omp_get_max_threads();
        snprintf(description, len, "OpenMP's default: the affinity mask is unreadable");
        return FR_OK;
    }
    /* An even split: ranks with different thread counts would pin unevenly. */
    *cpus = n / sharing > 0 ? n / sharing : 1;
    char text[256];
    format_cpus(list, n, text, sizeof text);
    if (sharing > 1)
        snprintf(description, len, "the rank's share of CPUs %s", text);
    else
        snprintf(description, len, "the %s's CPUs %s", fr_comm_size() > 1 ? "rank" : "process",
                 text);
    return FR_OK;
}

int fr_trainer_pin_threads(fr_trainer *trainer, char *report, size_t report_len,
                           bool *oversubscribed, fr_error *err) {
    int threads = fr_trainer_threads(trainer);
    const cpu_set_t *mask = process_mask();
    *oversubscribed = false;
    if (report_len)
        report[0] = '\0';
    int index = 0, sharing = 1;
    int rc = fr_comm_node_peers(mask, sizeof *mask, &index, &sharing, err);
    if (rc != FR_OK)
        return rc;

    int cpus[CPU_SETSIZE];
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, mask))
            cpus[n++] = c;
    char list[256];
    format_cpus(cpus, n, list, sizeof list);
    long wanted = (long)threads * sharing;
    const char *var = user_placement();
    if (var) {
        /* The OpenMP runtime may have bound this thread already, so the mask
         * says nothing about the process's CPUs. */
        snprintf(report, report_len, "not pinned: %s is set", var);
        return FR_OK;
    }
    *oversubscribed = n > 0 && wanted > n;
    if (n == 0 || wanted > n) {
        snprintf(report, report_len, "not pinned: %ld thread%s (%d rank%s x %d) for %d CPU%s (%s)",
                 wanted, wanted > 1 ? "s" : "", sharing, sharing > 1 ? "s" : "", threads, n,
                 n == 1 ? "" : "s", n ? list : "affinity mask unreadable");
        return FR_OK;
    }
    if (wanted < n && sharing == 1) {
        /* A lone process with CPUs to spare: other processes (a sweep of
         * single-threaded runs, say) may be given the same mask, and pinning
         * each of them to its first CPUs would stack them there. */
        snprintf(report, report_len, "not pinned: %d thread%s for %d CPUs (%s), free to move",
                 threads, threads > 1 ? "s" : "", n, list);
        return FR_OK;
    }
    int first = index * threads, failed = 0;
#pragma omp parallel num_threads(threads) reduction(+ : failed)
    {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[first + omp_get_thread_num()], &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0)
            failed++;
    }
    format_cpus(cpus + first, threads, list, sizeof list);
    if (failed)
        snprintf(report, report_len, "not pinned: sched_setaffinity failed for %d of %d threads",
                 failed, threads);
    else
        snprintf(report, report_len, "pinned to CPU%s %s", threads > 1 ? "s" : "", list);
    return FR_OK;
}
