/*
 * allreduce.c - frost's gradient allreduce alone, against Open MPI's, on the
 * ranks it is started as (mpirun -np N bench/allreduce [options]).
 *
 * For each size it times frost's ring (the communication thread of
 * src/comm/allreduce.c, float32 and bfloat16) and MPI_Allreduce on the same
 * buffer, REPS times after a warm-up, and prints the median with the ideal
 * ring time 2(n-1)/n x bytes / link rate when --link-mbps gives the rate (in
 * megabits per second, as tc writes it), and the latency floor: the median
 * time of an 8-byte MPI_Allreduce.  Sizes are in bytes of float32 gradients.
 *
 *   bench/allreduce [--link-mbps 1000] [--reps 20] [SIZE...]
 * Defaults: the MLP's 11,653,160 bytes, one 4 MB bucket, and the 41,000-byte
 * head of `--freeze '*' --unfreeze fc4`.
 */
#include "config.h"

#include <mpi.h>
#define FR_HAVE_MPI_TYPES
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int n) {
    qsort(values, (size_t)n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

/* The slowest rank's time for one call, in seconds. */
static double slowest(double seconds) {
    double worst = seconds;
    MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}

typedef enum { FROST_F32, FROST_BF16, MPI_ALLREDUCE } method;

static double time_once(method m, float *buf, size_t count) {
    fr_error err = {0};
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    if (m == MPI_ALLREDUCE) {
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    } else if (fr_comm_sum(buf, count, m == FROST_BF16, 0, &err) != FR_OK) {
        fprintf(stderr, "allreduce: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return slowest(MPI_Wtime() - start);
}

static double time_median(method m, float *buf, size_t count, int reps) {
    double *times = malloc((size_t)reps * sizeof *times);
    time_once(m, buf, count); /* warm-up: connections, buffers */
    for (int i = 0; i < reps; i++) {
        for (size_t j = 0; j < count; j++)
            buf[j] = 1e-3f * (float)(j % 97);
        times[i] = time_once(m, buf, count);
    }
    double result = median(times, reps);
    free(times);
    return result;
}

int main(int argc, char **argv) {
    fr_error err = {0};
    if (fr_comm_init(&argc, &argv, &err) != FR_OK) {
        fprintf(stderr, "allreduce: %s\n", err.msg);
        return 1;
    }
    double link_mbps = 0.0;
    int reps = 20;
    size_t sizes[32];
    int size_count = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--link-mbps") == 0 && i + 1 < argc)
            link_mbps = atof(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (size_count < 32 && atol(argv[i]) > 0)
            sizes[size_count++] = (size_t)atol(argv[i]);
        else {
            fprintf(stderr, "usage: allreduce [--link-mbps M] [--reps N] [BYTES...]\n");
            fr_comm_finalize();
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    if (size_count == 0) {
        sizes[size_count++] = 11653160;
        sizes[size_count++] = 4 << 20;
        sizes[size_count++] = 41000;
    }
    int n = fr_comm_size();
    /* One buffer for every size: the largest, at most 64 MB (larger sizes
     * are cut to it below). */
    size_t largest = 0;
    for (int s = 0; s < size_count; s++)
        largest = sizes[s] > largest ? sizes[s] : largest;
    if (largest > (size_t)64 << 20)
        largest = (size_t)64 << 20;
    float *buf = malloc(largest + sizeof(float));
    double *latency = malloc((size_t)reps * sizeof *latency);
    double tiny[2];
    MPI_Allreduce(MPI_IN_PLACE, tiny, 2, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    for (int i = 0; i < reps; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, tiny, 2, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        latency[i] = slowest(MPI_Wtime() - start);
    }
    double floor_s = median(latency, reps);
    if (fr_comm_rank() == 0) {
        printf("%d ranks, %d repetitions, median of the slowest rank; latency floor (8-byte "
               "MPI_Allreduce) %.3f ms\n", n, reps, floor_s * 1e3);
        printf("| bytes | ideal ring ms | frost f32 ms | share of ideal | frost bf16 ms | "
               "Open MPI ms | frost/Open MPI |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    for (int s = 0; s < size_count; s++) {
        size_t count = sizes[s] / sizeof(float);
        if (count * sizeof(float) > (size_t)64 << 20)
            count = ((size_t)64 << 20) / sizeof(float);
        double f32 = time_median(FROST_F32, buf, count, reps);
        double bf16 = time_median(FROST_BF16, buf, count, reps);
        double ompi = time_median(MPI_ALLREDUCE, buf, count, reps);
        if (fr_comm_rank() != 0)
            continue;
        double ideal = link_mbps > 0 ? 2.0 * (n - 1) / n * (double)count * sizeof(float) * 8 /
                                           (link_mbps * 1e6)
                                     : 0.0;
        char ideal_text[32] = "-", share[32] = "-";
        if (ideal > 0) {
            snprintf(ideal_text, sizeof ideal_text, "%.2f", ideal * 1e3);
            snprintf(share, sizeof share, "%.1f%%", 100.0 * ideal / f32);
        }
        printf("| %zu | %s | %.2f | %s | %.2f | %.2f | %.2f |\n", count * sizeof(float),
               ideal_text, f32 * 1e3, share, bf16 * 1e3, ompi * 1e3, ompi / f32);
    }
    free(buf);
    free(latency);
    fr_comm_finalize();
    return 0;
}
