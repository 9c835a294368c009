/*
 * test_allreduce.c - frost's gradient allreduce (src/comm/allreduce.c) on the
 * ranks it is started as: tests/mpi_allreduce.sh runs it with 2, 3 and 4.
 *
 * Sums of small whole numbers are exact in float32 (and in bfloat16 when they
 * are small enough), so the ring's result can be compared with the exact sum
 * bit for bit, whatever order it adds in; on random values every rank must
 * end with the same bits.  Rank 0 prints the TAP lines (the plan is the
 * script's); every check is decided by all ranks together.
 */
#include "config.h"

#include <mpi.h>
#define FR_HAVE_MPI_TYPES
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, size, failures;

/* One TAP line from rank 0, true only if it holds on every rank. */
static void check(int holds, const char *what, size_t count, const char *dtype) {
    int all = holds;
    MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all)
        failures++;
    if (rank == 0)
        printf("%sok - %d ranks, %zu %s values: %s\n", all ? "" : "not ", size, count, dtype, what);
    fflush(stdout);
}

static int sum(float *buf, size_t count, bool bf16) {
    fr_error err = {0};
    long ticket;
    int rc = fr_comm_start_sum(buf, count, bf16, 0, &ticket, &err);
    if (rc == FR_OK)
        rc = fr_comm_finish_sum(ticket, &err);
    if (rc != FR_OK)
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
    return rc;
}

/* Fill with (rank + 1) * (i % 7 - 3) + tag; the sum over ranks is exact. */
static float *exact_values(size_t count, int tag) {
    float *buf = malloc((count ? count : 1) * sizeof *buf);
    for (size_t i = 0; buf && i < count; i++)
        buf[i] = (float)((rank + 1) * ((int)(i % 7) - 3) + tag);
    return buf;
}

static int exact_result(const float *buf, size_t count, int tag) {
    int weight = size * (size + 1) / 2;
    for (size_t i = 0; i < count; i++)
        if (buf[i] != (float)(weight * ((int)(i % 7) - 3) + size * tag))
            return 0;
    return 1;
}

/* Whole numbers small enough for bfloat16 too: the sum must be exact. */
static void exact_sums(size_t count, bool bf16) {
    float *buf = exact_values(count, 0);
    int ok = sum(buf, count, bf16) == FR_OK && exact_result(buf, count, 0);
    check(ok, "every value is the exact sum over the ranks", count, bf16 ? "bf16" : "f32");
    free(buf);
}

/* Random values: every rank must end with the same bits.  These go through
 * fr_comm_sum, which the caller runs itself (exact_sums' through the
 * communication thread). */
static void same_bits(size_t count, bool bf16) {
    float *buf = malloc((count ? count : 1) * sizeof *buf);
    fr_rng rng;
    fr_rng_seed(&rng, 1234 + (uint64_t)rank);
    for (size_t i = 0; i < count; i++)
        buf[i] = fr_rng_uniform(&rng) - 0.5f;
    fr_error err = {0};
    int ok = fr_comm_sum(buf, count, bf16, 0, &err) == FR_OK;
    uint64_t mine = fr_hash_bytes(FR_HASH_INIT, buf, count * sizeof *buf), first = mine;
    MPI_Bcast(&first, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    check(ok && mine == first, "random values: every rank ends with the same bits", count,
          bf16 ? "bf16" : "f32");
    free(buf);
}

/* bfloat16 keeps the float32 sum to within its rounding (2^-8 relative per
 * rounding, at most one per rank and one for the result). */
static void bf16_close(size_t count) {
    float *buf = malloc(count * sizeof *buf), *exact = malloc(count * sizeof *exact);
    fr_rng rng;
    fr_rng_seed(&rng, 99 + (uint64_t)rank);
    for (size_t i = 0; i < count; i++)
        exact[i] = buf[i] = 0.5f + fr_rng_uniform(&rng); /* positive: no cancellation */
    MPI_Allreduce(MPI_IN_PLACE, exact, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    int ok = sum(buf, count, true) == FR_OK;
    double worst = 0.0;
    for (size_t i = 0; i < count; i++)
        worst = fmax(worst, fabs(buf[i] - exact[i]) / exact[i]);
    ok = ok && worst <= (size + 1) * ldexp(1.0, -8);
    char what[128];
    snprintf(what, sizeof what, "within bfloat16 rounding of the float32 sum (worst %.2g)", worst);
    check(ok, what, count, "bf16");
    free(buf);
    free(exact);
}

/*
 * Who runs a sum: on an idle engine fr_comm_sum runs on the caller, with no
 * hand-over to the communication thread; behind sums in flight it waits its
 * turn, and the jobs still run in the order they were started (a sum the
 * caller takes over must not pass one the thread has begun, or the ranks'
 * messages would cross).  Started sums finished in any order all complete.
 */
static void who_runs(void) {
    fr_error err = {0};
    /* The thread may still hold a wake-up from the sums before (it lost the
     * job to their waiter), and so take the first of these; after that
     * nothing wakes it. */
    long before = fr_comm_sums_run_by_waiters();
    int ok = 1;
    for (int k = 0; k < 20; k++) {
        float *small = exact_values(1000, k);
        ok = ok && fr_comm_sum(small, 1000, false, 0, &err) == FR_OK &&
             exact_result(small, 1000, k);
        free(small);
    }
    ok = ok && fr_comm_sums_run_by_waiters() - before >= 19;
    check(ok, "fr_comm_sum on an idle engine runs on the caller", 1000, "f32");

    /* A large sum and two small ones started, then a third small one summed
     * at once, then the first three finished last to first. */
    const size_t big = 300001;
    float *large = exact_values(big, 2), *a = exact_values(5, 3), *b = exact_values(8193, 4);
    float *c = exact_values(10250, 5);
    long t_large, t_a, t_b;
    ok = fr_comm_start_sum(large, big, false, 0, &t_large, &err) == FR_OK &&
         fr_comm_start_sum(a, 5, true, 0, &t_a, &err) == FR_OK &&
         fr_comm_start_sum(b, 8193, false, 0, &t_b, &err) == FR_OK &&
         fr_comm_sum(c, 10250, false, 0, &err) == FR_OK &&
         fr_comm_finish_sum(t_b, &err) == FR_OK && fr_comm_finish_sum(t_a, &err) == FR_OK &&
         fr_comm_finish_sum(t_large, &err) == FR_OK;
    if (!ok)
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
    ok = ok && exact_result(large, big, 2) && exact_result(a, 5, 3) &&
         exact_result(b, 8193, 4) && exact_result(c, 10250, 5);
    check(ok, "sums started, one summed at once behind them, finished last to first: all exact",
          big + 5 + 8193 + 10250, "f32/bf16");
    free(large);
    free(a);
    free(b);
    free(c);
}

static void rounding(void) {
    /* Round to nearest, ties to even, on the 16 bits kept. */
    uint32_t cases[][2] = {
        {0x3f800000u, 0x3f80u}, /* 1.0 */
        {0x3f808000u, 0x3f80u}, /* tie, even stays */
        {0x3f818000u, 0x3f82u}, /* tie, odd rounds up */
        {0x3f808001u, 0x3f81u}, /* above the tie */
        {0x7f7fffffu, 0x7f80u}, /* the largest float rounds to infinity */
        {0xff800000u, 0xff80u}, /* -infinity */
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float value;
        memcpy(&value, &cases[i][0], sizeof value);
        ok = ok && fr_to_bf16(value) == cases[i][1];
    }
    check(ok, "float32 -> bfloat16 rounds to nearest even", 6, "f32");
    float nan_value = NAN;
    check(isnan(fr_from_bf16(fr_to_bf16(nan_value))) && fr_from_bf16(0x3f80u) == 1.0f,
          "a NaN stays NaN; bfloat16 -> float32 is exact", 2, "bf16");
}

int main(int argc, char **argv) {
    fr_error err = {0};
    if (fr_comm_init(&argc, &argv, &err) != FR_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    rank = fr_comm_rank();
    size = fr_comm_size();
    /* Below, at and above the two-rank exchange (16,384 floats), fewer
     * values than ranks, several chunks per segment, odd lengths; 8,193 and
     * 10,250 floats (32,772 and 41,000 bytes) go by halving and doubling on
     * 4 or more ranks, with halves of odd length. */
    const size_t counts[] = {0, 1, 3, 5, 1000, 8193, 10250, 16384, 16385, 100003, 300001};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        exact_sums(counts[i], false);
        exact_sums(counts[i], true);
        same_bits(counts[i], false);
        same_bits(counts[i], true);
    }
    bf16_close(70001);
    who_runs();
    rounding();
    fr_comm_finalize();
    return failures ? 1 : 0;
}
