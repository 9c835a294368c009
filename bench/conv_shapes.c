/*
 * conv_shapes.c - the GEMMs of resnet18's convolutions as one frost thread runs them, one sample
 * at a time against a group of samples side by side (conv2d.c's GROUP_COLUMNS), on one core.
 *
 *   cc -O2 -I/usr/include/x86_64-linux-gnu/openblas-pthread bench/conv_shapes.c -o conv_shapes \
 *      -lopenblas
 *   ./conv_shapes 112 8 [group_columns] [reps]   # image side, samples per thread
 *
 * For every distinct 3x3 (and the 7x7 stem) convolution of torchvision's resnet18 on SxS images,
 * the three products of a step on `n` samples: forward out[C x P] = W[C x K] col[K x P], weight
 * gradient dW[C x K] += dout[C x P] colᵀ, input gradient dcol[K x P] = Wᵀ dout, with P the output
 * plane, K = Cin*k*k; per sample (n products of P columns) and grouped (n/g products of g*P
 * columns, g the fewest samples reaching group_columns, 256 by default). The two ways alternate,
 * `reps` rounds (7), and the best round of each is printed in GFLOP/s of the thread's CPU time
 * (CLOCK_THREAD_CPUTIME_ID: time another process takes the core from it is not counted). im2col and the copies
 * are not timed: they are the same bytes either way.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Seconds for the n samples' three products, g samples per product. */
static void run(int c, int kdim, int plane, int n, int g, float *w, float *col, float *out,
                float *dw, double sec[3]) {
    sec[0] = sec[1] = sec[2] = 0;
    for (int s = 0; s < n; s += g) {
        int cnt = n - s < g ? n - s : g, cols = cnt * plane;
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c, cols, kdim, 1.0f, w, kdim, col,
                    cols, 0.0f, out, cols);
        double t1 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c, kdim, cols, 1.0f, out, cols, col,
                    cols, s ? 1.0f : 0.0f, dw, kdim);
        double t2 = now();
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kdim, cols, c, 1.0f, w, kdim, out,
                    cols, 0.0f, col, cols);
        double t3 = now();
        sec[0] += t1 - t0;
        sec[1] += t2 - t1;
        sec[2] += t3 - t2;
    }
}

int main(int argc, char **argv) {
    int side = argc > 1 ? atoi(argv[1]) : 112, n = argc > 2 ? atoi(argv[2]) : 8;
    int target = argc > 3 ? atoi(argv[3]) : 256, reps = argc > 4 ? atoi(argv[4]) : 7;
    openblas_set_num_threads(1);
    /* (name, Cin, Cout, k, plane side) */
    int h = (side + 6 - 7) / 2 + 1, p1 = (h + 2 - 3) / 2 + 1;
    int p2 = (p1 + 2 - 3) / 2 + 1, p3 = (p2 + 2 - 3) / 2 + 1, p4 = (p3 + 2 - 3) / 2 + 1;
    struct { const char *name; int cin, cout, k, oh; } convs[] = {
        {"conv1 7x7", 3, 64, 7, h},   {"layer1 3x3", 64, 64, 3, p1},
        {"layer2 3x3", 128, 128, 3, p2}, {"layer3 3x3", 256, 256, 3, p3},
        {"layer4 3x3", 512, 512, 3, p4},
    };
    printf("resnet18 on %dx%d, %d samples per thread, groups of >= %d columns; GFLOP/s on one "
           "core, best of %d\n", side, side, n, target, reps);
    printf("| conv | C x K x P | g | forward 1 | forward g | dW 1 | dW g | dX 1 | dX g |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        int c = convs[i].cout, kdim = convs[i].cin * convs[i].k * convs[i].k;
        int plane = convs[i].oh * convs[i].oh;
        int g = (target + plane - 1) / plane;
        g = g > n ? n : g;
        size_t cols = (size_t)g * plane;
        float *w = malloc(sizeof(float) * c * kdim), *dw = malloc(sizeof(float) * c * kdim);
        float *col = malloc(sizeof(float) * kdim * cols), *out = malloc(sizeof(float) * c * cols);
        for (size_t j = 0; j < (size_t)c * kdim; j++)
            w[j] = (float)rand() / RAND_MAX - 0.5f;
        for (size_t j = 0; j < (size_t)kdim * cols; j++)
            col[j] = (float)rand() / RAND_MAX - 0.5f;
        double best[2][3] = {{1e9, 1e9, 1e9}, {1e9, 1e9, 1e9}}, sec[3];
        for (int r = 0; r < reps; r++)
            for (int way = 0; way < 2; way++) {
                run(c, kdim, plane, n, way ? g : 1, w, col, out, dw, sec);
                for (int e = 0; e < 3; e++)
                    if (sec[e] < best[way][e])
                        best[way][e] = sec[e];
            }
        double flops = 2.0 * c * kdim * plane * n;
        printf("| %s | %d x %d x %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
               convs[i].name, c, kdim, plane, g, flops / best[0][0] * 1e-9,
               flops / best[1][0] * 1e-9, flops / best[0][1] * 1e-9, flops / best[1][1] * 1e-9,
               flops / best[0][2] * 1e-9, flops / best[1][2] * 1e-9);
        free(w), free(dw), free(col), free(out);
    }
    return 0;
}
