/*
 * gemm_dnnl.c - the GPT benchmark's linear products through Debian's oneDNN
 * (dnnl_sgemm) next to OpenBLAS's cblas_sgemm, on one core, and whether a
 * row's result depends on how many rows the call has: what oneDNN as frost's
 * GEMM would give (bench/README.md, *LoRA and a bf16 frozen base*).
 *
 *   cc -O2 -fopenmp bench/gemm_dnnl.c -o gemm_dnnl -ldnnl -lopenblas
 *   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ./gemm_dnnl [reps]
 *
 * For each shape (1,024 rows; the conv1d layers of L6 C384) and both
 * orientations of B: GFLOP/s of the best of `reps` (15) wall times, then, for
 * oneDNN, rows 5.. of calls with m = 1 .. 1000 rows compared bit for bit with
 * the same rows of the 1,024-row call (frost's feature cache and its layouts
 * need a row's bits whatever its company).
 */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 15;
    const int shapes[][2] = {{1152, 384}, {1536, 384}, {384, 1536}, {384, 384}}; /* n, k */
    const int rows[] = {1, 2, 3, 7, 16, 17, 64, 100, 512, 1000};
    int m = 1024;
    printf("| n | k | B | OpenBLAS GFLOP/s | oneDNN GFLOP/s | oneDNN rows differing from m 1024 |\n");
    printf("|---:|---:|---|---:|---:|---|\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n = shapes[s][0], k = shapes[s][1];
        float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n);
        float *c = malloc(sizeof(float) * m * n), *d = malloc(sizeof(float) * m * n);
        if (!a || !b || !c || !d)
            return 1;
        srand(1);
        for (long i = 0; i < (long)m * k; i++)
            a[i] = rand() / (float)RAND_MAX - 0.5f;
        for (long i = 0; i < (long)k * n; i++)
            b[i] = rand() / (float)RAND_MAX - 0.5f;
        for (int tb = 0; tb < 2; tb++) {
            int ldb = tb ? k : n;
            double best_blas = 1e9, best_dnnl = 1e9;
            for (int r = 0; r < reps; r++) {
                double t = now();
                cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                            1.0f, a, k, b, ldb, 0.0f, c, n);
                t = now() - t;
                best_blas = t < best_blas ? t : best_blas;
                t = now();
                dnnl_sgemm('N', tb ? 'T' : 'N', m, n, k, 1.0f, a, k, b, ldb, 0.0f, c, n);
                t = now() - t;
                best_dnnl = t < best_dnnl ? t : best_dnnl;
            }
            char differ[128] = "";
            for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
                int mm = rows[i];
                dnnl_sgemm('N', tb ? 'T' : 'N', mm, n, k, 1.0f, a + 5L * k, k, b, ldb, 0.0f, d, n);
                if (memcmp(d, c + 5L * n, sizeof(float) * mm * n) != 0)
                    snprintf(differ + strlen(differ), sizeof differ - strlen(differ), "%s%d",
                             differ[0] ? ", " : "m ", mm);
            }
            double flops = 2.0 * m * n * k;
            printf("| %d | %d | %s | %.0f | %.0f | %s |\n", n, k, tb ? "[n x k]" : "[k x n]",
                   flops / best_blas / 1e9, flops / best_dnnl / 1e9, differ[0] ? differ : "none");
        }
        free(a);
        free(b);
        free(c);
        free(d);
    }
    return 0;
}
