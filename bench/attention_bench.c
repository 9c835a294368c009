/* attention_bench.c - how fast the attention kernels run on one core, next to
 * the linear layers of the same transformer block.
 *
 * Times fr_attention_forward + fr_attention_backward (src/layers/attention.c)
 * at GPT-2 small's per-thread shape of a short context (n=8 samples, T=128,
 * C=384, H=6 heads of 64), with and without the causal mask, single-threaded
 * as the trainer runs it, and prints milliseconds and GFLOP/s, best and
 * median of REPS.  FLOPs are those of the products: 12 T^2 D per (sample,
 * head) without the mask (QK^T and PV forward; dP, dV, dQ, dK backward, each
 * 2 T^2 D), and with the mask the useful part only, 12 D T(T+1)/2, as
 * FlashAttention counts it.  For scale it also times the block's four linear
 * layers (c_attn C->3C, attn c_proj C->C, c_fc C->4C, mlp c_proj 4C->C) on
 * the same n*T rows with cblas_sgemm, forward and both backward products: the
 * GEMMs the attention sits between.
 *
 * Build (from the top of a built tree):
 *   gcc -O2 -std=c11 -fopenmp -Isrc -I/usr/include/x86_64-linux-gnu/openblas-pthread \
 *       bench/attention_bench.c -o attention_bench src/.libs/libfrost.so \
 *       -Wl,-rpath,$PWD/src/.libs -lopenblas -lm
 * Usage: attention_bench [REPS]
 */
#define _POSIX_C_SOURCE 200809L
#include "layers/transformer_kernels.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int num_threads);

enum { SAMPLES = 8, SEQ = 128, DIM = 384, HEADS = 6 };

static double seconds_on(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *random_floats(size_t count, unsigned *seed) {
    float *values = malloc(count * sizeof *values);
    for (size_t i = 0; i < count; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        values[i] = (float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    return values;
}

/* Best and median wall seconds of reps runs of run(context), after one
 * warm-up, and the median of the thread's CPU seconds (OpenBLAS runs on the
 * calling thread here), which a machine shared with other work inflates less:
 * compare the two to see how much the wall times waited for a core. */
typedef struct timing {
    double best, median, cpu_median;
} timing;

static timing time_runs(void (*run)(void *context), void *context, int reps) {
    double *wall = malloc((size_t)reps * sizeof *wall), *cpu = malloc((size_t)reps * sizeof *cpu);
    run(context);
    for (int r = 0; r < reps; r++) {
        double wall_start = seconds_on(CLOCK_MONOTONIC);
        double cpu_start = seconds_on(CLOCK_THREAD_CPUTIME_ID);
        run(context);
        cpu[r] = seconds_on(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
        wall[r] = seconds_on(CLOCK_MONOTONIC) - wall_start;
    }
    qsort(wall, (size_t)reps, sizeof *wall, compare_doubles);
    qsort(cpu, (size_t)reps, sizeof *cpu, compare_doubles);
    timing t = {wall[0], wall[reps / 2], cpu[reps / 2]};
    free(wall);
    free(cpu);
    return t;
}

/* ------------------------------------------------------- attention */

typedef struct attention_run {
    const float *qkv, *dout;
    float *out, *dqkv, *scratch;
    bool causal;
} attention_run;

static void attention_step(void *context) {
    attention_run *a = context;
    fr_attention_forward(a->qkv, a->out, a->scratch, SAMPLES, SEQ, HEADS, DIM, a->causal);
    fr_attention_backward(a->qkv, a->dout, a->dqkv, a->scratch, SAMPLES, SEQ, HEADS, DIM,
                          a->causal);
}

/* --------------------------------------------- the linear layers */

typedef struct linear_run {
    float *x, *dy, *w, *dw, *dx, *y; /* room for the largest layer */
} linear_run;

/* in -> out features on SAMPLES * SEQ rows: y = x w^T, dx = dy w, dw = dy^T x. */
static void linear_layer(linear_run *l, int in, int out) {
    int rows = SAMPLES * SEQ;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, l->x, in, l->w, in,
                0.0f, l->y, out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in, out, 1.0f, l->dy, out, l->w,
                in, 0.0f, l->dx, in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, rows, 1.0f, l->dy, out, l->x, in,
                0.0f, l->dw, in);
}

static void linear_step(void *context) {
    linear_run *l = context;
    linear_layer(l, DIM, 3 * DIM);
    linear_layer(l, DIM, DIM);
    linear_layer(l, DIM, 4 * DIM);
    linear_layer(l, 4 * DIM, DIM);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (reps <= 0 || reps > 100000) {
        fprintf(stderr, "usage: attention_bench [REPS]\n");
        return 2;
    }
    openblas_set_num_threads(1);
    unsigned seed = 12345;
    size_t rows = (size_t)SAMPLES * SEQ;
    int head_dim = DIM / HEADS;
    attention_run a = {
        .qkv = random_floats(rows * 3 * DIM, &seed),
        .dout = random_floats(rows * DIM, &seed),
        .out = malloc(rows * DIM * sizeof(float)),
        .dqkv = malloc(rows * 3 * DIM * sizeof(float)),
        .scratch = malloc(fr_attention_scratch_floats(SAMPLES, SEQ, HEADS, DIM) * sizeof(float)),
    };
    printf("attention n=%d T=%d C=%d H=%d (D=%d), one thread, forward+backward, %d reps\n",
           SAMPLES, SEQ, DIM, HEADS, head_dim, reps);
    double attention_ms[2];
    for (int causal = 0; causal <= 1; causal++) {
        a.causal = causal;
        timing t = time_runs(attention_step, &a, reps);
        double pairs = causal ? SEQ * (SEQ + 1) / 2.0 : (double)SEQ * SEQ;
        double flops = 12.0 * head_dim * pairs * SAMPLES * HEADS;
        attention_ms[causal] = 1e3 * t.cpu_median;
        printf("  %-6s best %6.2f ms (%5.1f GFLOP/s)  median %6.2f ms (%5.1f GFLOP/s)  "
               "median cpu %6.2f ms (%5.1f GFLOP/s)  [%.0f MFLOP%s]\n",
               causal ? "causal" : "full", 1e3 * t.best, 1e-9 * flops / t.best, 1e3 * t.median,
               1e-9 * flops / t.median, 1e3 * t.cpu_median, 1e-9 * flops / t.cpu_median,
               1e-6 * flops, causal ? ", the unmasked half" : "");
    }

    size_t largest = rows * 4 * DIM;
    linear_run l = {
        .x = random_floats(largest, &seed),
        .dy = random_floats(largest, &seed),
        .w = random_floats((size_t)4 * DIM * DIM, &seed),
        .dw = malloc((size_t)4 * DIM * DIM * sizeof(float)),
        .dx = malloc(largest * sizeof(float)),
        .y = malloc(largest * sizeof(float)),
    };
    timing t = time_runs(linear_step, &l, reps);
    double flops = 3.0 * 2.0 * (double)rows * DIM * DIM * 12.0;
    printf("  linear layers of the block (C->3C, C->C, C->4C, 4C->C), forward+backward: "
           "best %.2f ms "
           "(%.1f GFLOP/s)  median cpu %.2f ms (%.1f GFLOP/s)\n",
           1e3 * t.best, 1e-9 * flops / t.best, 1e3 * t.cpu_median, 1e-9 * flops / t.cpu_median);
    printf("  attention / linear layers, median cpu time: %.3f full, %.3f causal\n",
           attention_ms[0] / (1e3 * t.cpu_median), attention_ms[1] / (1e3 * t.cpu_median));
    return 0;
}
