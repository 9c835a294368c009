/* bf16_bench.c - how fast fr_sbgemm (src/layers/bf16.c), the GEMM of a frozen
 * bf16 weight, runs on one core next to cblas_sgemm on the same shapes in
 * float32.
 *
 * The shapes are the GPT benchmark's linear layers on m = 2048 rows (C = 384:
 * c_attn 384 -> 1152, attn c_proj 384 -> 384, c_fc 384 -> 1536, mlp c_proj
 * 1536 -> 384), each with trans_b (nn.Linear forward, W [n x k]; Conv1D input
 * gradient) and without (Conv1D forward, W [k x n]; nn.Linear input gradient).
 * cblas_sgemm gets the same bf16-rounded values widened to float32, so the two
 * compute the same product and the bench also prints their largest
 * difference relative to the output's largest value.  The two are timed in
 * turn, A B A B, REPS times each after a warm-up, on one thread; it prints
 * the median GFLOP/s (2 m n k per call) by wall time and by the thread's CPU
 * time (which a machine shared with other work inflates less), and their
 * ratio.  With --fallback it also times fr_sbgemm's float32 fallback.
 *
 * Build and run (from the top of a configured tree):
 *   make bench/bf16_bench && bench/bf16_bench [REPS] [--fallback]
 */
#define _POSIX_C_SOURCE 200809L
#include "layers/bf16.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void openblas_set_num_threads(int num_threads);

enum { ROWS = 2048 };

static const struct {
    int n, k;
    const char *layer;
} shapes[] = {
    {1152, 384, "c_attn"},
    {384, 384, "attn c_proj"},
    {1536, 384, "c_fc"},
    {384, 1536, "mlp c_proj"},
};

static double seconds_on(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int count) {
    qsort(values, (size_t)count, sizeof *values, compare_doubles);
    return values[count / 2];
}

static void random_floats(float *values, size_t count, unsigned *seed) {
    for (size_t i = 0; i < count; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        values[i] = (float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
}

/* One shape's operands: A and B rounded to bf16, B also widened back. */
typedef struct operands {
    bool trans_b;
    int n, k;
    float *a, *b_f32, *c;
    fr_bf16 *b;
} operands;

typedef enum kernel { SBGEMM, SGEMM, FALLBACK, KERNELS } kernel;

static void run(const operands *o, kernel which) {
    int ldb = o->trans_b ? o->k : o->n;
    fr_bf16_force_fallback(which == FALLBACK);
    if (which == SGEMM)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, o->trans_b ? CblasTrans : CblasNoTrans, ROWS,
                    o->n, o->k, 1.0f, o->a, o->k, o->b_f32, ldb, 0.0f, o->c, o->n);
    else
        fr_sbgemm(o->trans_b, ROWS, o->n, o->k, 1.0f, o->a, o->k, o->b, ldb, 0.0f, o->c, o->n);
}

int main(int argc, char **argv) {
    int reps = 15;
    bool with_fallback = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--fallback"))
            with_fallback = true;
        else if ((reps = atoi(argv[i])) <= 0 || reps > 10000) {
            fprintf(stderr, "usage: bf16_bench [REPS] [--fallback]\n");
            return 2;
        }
    }
    openblas_set_num_threads(1);
    printf("fr_sbgemm (%s) vs cblas_sgemm, one thread, m = %d, median of %d, GFLOP/s "
           "by wall time (by thread CPU time)\n",
           fr_bf16_native() ? "AVX512_BF16" : "fallback: no AVX512_BF16 here", ROWS, reps);
    printf("| layer | n | k | trans_b | sbgemm | sgemm | sbgemm/sgemm |%s max rel diff |\n",
           with_fallback ? " fallback |" : "");
    printf("|---|---|---|---|---|---|---|%s---|\n", with_fallback ? "---|" : "");
    unsigned seed = 12345;
    size_t most = (size_t)ROWS * 1536;
    operands o = {.a = malloc(most * sizeof(float)),
                  .b_f32 = malloc((size_t)1536 * 384 * sizeof(float)),
                  .c = malloc(most * sizeof(float)),
                  .b = malloc((size_t)1536 * 384 * sizeof(fr_bf16))};
    float *reference = malloc(most * sizeof(float));
    fr_bf16 *a_bf16 = malloc(most * sizeof(fr_bf16));
    double *wall[KERNELS], *cpu[KERNELS];
    for (int w = 0; w < KERNELS; w++) {
        wall[w] = malloc((size_t)reps * sizeof(double));
        cpu[w] = malloc((size_t)reps * sizeof(double));
    }
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int trans_b = 1; trans_b >= 0; trans_b--) {
            o.trans_b = trans_b;
            o.n = shapes[s].n;
            o.k = shapes[s].k;
            size_t a_count = (size_t)ROWS * o.k, b_count = (size_t)o.n * o.k;
            random_floats(o.a, a_count, &seed);
            fr_bf16_from_f32(a_bf16, o.a, a_count);
            fr_bf16_to_f32(o.a, a_bf16, a_count);
            random_floats(o.b_f32, b_count, &seed);
            fr_bf16_from_f32(o.b, o.b_f32, b_count);
            fr_bf16_to_f32(o.b_f32, o.b, b_count);

            size_t c_count = (size_t)ROWS * o.n;
            run(&o, SGEMM);
            memcpy(reference, o.c, c_count * sizeof(float));
            run(&o, SBGEMM);
            double difference = 0.0, largest = 0.0;
            for (size_t i = 0; i < c_count; i++) {
                difference = fmax(difference, fabs((double)o.c[i] - reference[i]));
                largest = fmax(largest, fabs((double)reference[i]));
            }

            kernel last = with_fallback ? FALLBACK : SGEMM;
            for (int r = 0; r < reps; r++)
                for (kernel w = SBGEMM; w <= last; w++) {
                    double wall_start = seconds_on(CLOCK_MONOTONIC);
                    double cpu_start = seconds_on(CLOCK_THREAD_CPUTIME_ID);
                    run(&o, w);
                    cpu[w][r] = seconds_on(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
                    wall[w][r] = seconds_on(CLOCK_MONOTONIC) - wall_start;
                }
            double flops = 2.0 * ROWS * o.n * o.k, gflops_wall[KERNELS], gflops_cpu[KERNELS];
            for (kernel w = SBGEMM; w <= last; w++) {
                gflops_wall[w] = 1e-9 * flops / median(wall[w], reps);
                gflops_cpu[w] = 1e-9 * flops / median(cpu[w], reps);
            }
            printf("| %s | %d | %d | %d | %.0f (%.0f) | %.0f (%.0f) | %.2f (%.2f) |",
                   shapes[s].layer, o.n, o.k, trans_b, gflops_wall[SBGEMM], gflops_cpu[SBGEMM], gflops_wall[SGEMM],
                   gflops_cpu[SGEMM], gflops_wall[SBGEMM] / gflops_wall[SGEMM],
                   gflops_cpu[SBGEMM] / gflops_cpu[SGEMM]);
            if (with_fallback)
                printf(" %.0f (%.0f) |", gflops_wall[FALLBACK], gflops_cpu[FALLBACK]);
            printf(" %.1e |\n", difference / largest);
            fflush(stdout);
        }
    fr_bf16_force_fallback(false);
    for (int w = 0; w < KERNELS; w++) {
        free(wall[w]);
        free(cpu[w]);
    }
    free(o.a);
    free(o.b_f32);
    free(o.c);
    free(o.b);
    free(reference);
    free(a_bf16);
    return 0;
}
