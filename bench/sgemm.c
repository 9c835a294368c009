/* sgemm.c - the single-core sgemm limit of this machine, for bench/run.sh.
 *
 * Times OpenBLAS cblas_sgemm (C = A B, row-major, N x N x N, single-threaded: openblas_set_num_threads(1))
 * and prints the best and the median GFLOP/s over the repetitions, one line:
 *     sgemm N=1024 reps=10 best_gflops=123.4 median_gflops=120.1
 * The benchmark uses the best as the per-core limit (2*N^3 FLOPs per call).
 *
 * Build: cc -O2 -I/usr/include/x86_64-linux-gnu/openblas-pthread bench/sgemm.c -o sgemm -lopenblas
 * Usage: sgemm [N [REPS]]
 */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int num_threads);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1024;
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    if (n <= 0 || reps <= 0 || reps > 10000) {
        fprintf(stderr, "usage: sgemm [N [REPS]]\n");
        return 2;
    }
    openblas_set_num_threads(1);
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    double *gflops = malloc((size_t)reps * sizeof *gflops);
    if (!a || !b || !c || !gflops) {
        fprintf(stderr, "sgemm: out of memory\n");
        return 1;
    }
    unsigned s = 12345;
    for (size_t i = 0; i < nn; i++) {
        s = s * 1103515245u + 12345u;
        a[i] = (float)((s >> 16) & 0x7fff) / 32768.0f - 0.5f;
        s = s * 1103515245u + 12345u;
        b[i] = (float)((s >> 16) & 0x7fff) / 32768.0f - 0.5f;
        c[i] = 0.0f;
    }
    /* Warm-up: page in the buffers and let the clock settle. */
    for (int w = 0; w < 2; w++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double flops = 2.0 * (double)n * (double)n * (double)n;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = now() - t0;
        gflops[r] = t > 0 ? flops / t * 1e-9 : 0.0;
    }
    qsort(gflops, (size_t)reps, sizeof *gflops, cmp_double);
    double checksum = 0.0;
    for (size_t i = 0; i < nn; i += 4099)
        checksum += c[i];
    printf("sgemm N=%d reps=%d best_gflops=%.2f median_gflops=%.2f checksum=%.4g\n", n, reps,
           gflops[reps - 1], gflops[reps / 2], checksum);
    free(a);
    free(b);
    free(c);
    free(gflops);
    return 0;
}
