/*
 * conv_layers.c - frost's conv2d forward and backward (and the stem's max-pool) on resnet18's
 * shapes, called directly through libfrost's layer ops, as one frost thread runs them: what a
 * step pays per layer, with whatever backend the library was built with (oneDNN or OpenBLAS).
 *
 *   make && cc -O2 -std=c11 -I. -Isrc -Iinclude -I/usr/include/x86_64-linux-gnu/openblas-pthread \
 *       bench/conv_layers.c -o conv_layers -Lsrc/.libs -lfrost -lopenblas
 *   OMP_NUM_THREADS=1 LD_LIBRARY_PATH=src/.libs ./conv_layers 8 5 112  # samples, rounds, side
 *
 * Per convolution (one of each distinct shape): forward, and backward with the weight gradient
 * and (but for the stem) the input gradient, best of the rounds in the thread's CPU time
 * (CLOCK_THREAD_CPUTIME_ID) and in GFLOP/s of it.  OMP_NUM_THREADS=1 keeps oneDNN on one core,
 * as it is inside frost's threads.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float *random_floats(size_t count) {
    float *values = malloc(count * sizeof *values);
    for (size_t i = 0; i < count; i++)
        values[i] = (float)rand() / RAND_MAX - 0.5f;
    return values;
}

static fr_layer layer_of(const fr_layer_ops *ops, fr_shape in, const int *args, int count) {
    fr_layer l;
    memset(&l, 0, sizeof l);
    l.ops = ops;
    snprintf(l.name, sizeof l.name, "bench");
    for (int i = 0; i < count; i++)
        l.args[i] = args[i];
    l.in = in;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        l.params[k] = -1;
    fr_error err = {0};
    if (ops->infer_shape(&l, &err) != FR_OK) {
        fprintf(stderr, "conv_layers: %s\n", err.msg);
        exit(1);
    }
    return l;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8, reps = argc > 2 ? atoi(argv[2]) : 5;
    int side = argc > 3 ? atoi(argv[3]) : 112;
    openblas_set_num_threads(1);
    int h = side / 2, p1 = h / 2, p2 = p1 / 2, p3 = (p2 + 1) / 2, p4 = (p3 + 1) / 2;
    struct { const char *name; int cin, cout, k, stride, pad, h; } convs[] = {
        {"conv1 7x7/2", 3, 64, 7, 2, 3, side},        {"layer1 3x3", 64, 64, 3, 1, 1, p1},
        {"layer2.0.conv1 3x3/2", 64, 128, 3, 2, 1, p1}, {"layer2 3x3", 128, 128, 3, 1, 1, p2},
        {"layer3.0.conv1 3x3/2", 128, 256, 3, 2, 1, p2}, {"layer3 3x3", 256, 256, 3, 1, 1, p3},
        {"layer4.0.conv1 3x3/2", 256, 512, 3, 2, 1, p3}, {"layer4 3x3", 512, 512, 3, 1, 1, p4},
    };
    const char *dnnl = fr_conv_dnnl_version();
    printf("frost conv2d (%s) on resnet18's shapes, %dx%d images, %d samples, one core's CPU "
           "time, best of %d\n", dnnl ? dnnl : "OpenBLAS", side, side, n, reps);
    printf("| conv | forward ms | GFLOP/s | backward ms | GFLOP/s |\n|---|---:|---:|---:|---:|\n");
    double forward_total = 0, backward_total = 0;
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        fr_layer l = layer_of(&fr_conv2d_ops, fr_shape_chw(convs[i].cin, convs[i].h, convs[i].h),
                              (const int[]){convs[i].cin, convs[i].cout, convs[i].k,
                                            convs[i].stride, convs[i].pad, 0}, 6);
        size_t in_numel = fr_shape_numel(l.in), out_numel = fr_shape_numel(l.out);
        size_t weights = (size_t)convs[i].cout * convs[i].cin * convs[i].k * convs[i].k;
        float *x = random_floats(in_numel * n), *y = malloc(out_numel * n * sizeof *y);
        float *dy = random_floats(out_numel * n), *dx = malloc(in_numel * n * sizeof *dx);
        float *w = random_floats(weights), *dw = malloc(weights * sizeof *dw);
        void *scratch = malloc(l.ops->scratch_bytes(&l, n) + 64);
        l.param_data[FR_WEIGHT] = w;
        fr_param_grads grads;
        memset(&grads, 0, sizeof grads);
        grads.grad[FR_WEIGHT] = dw;
        double forward = 1e9, backward = 1e9;
        for (int r = 0; r < reps; r++) {
            double t0 = cpu_now();
            l.ops->forward(&l, x, y, n, scratch);
            double t1 = cpu_now();
            l.ops->backward(&l, x, y, dy, i ? dx : NULL, &grads, n, scratch);
            double t2 = cpu_now();
            forward = t1 - t0 < forward ? t1 - t0 : forward;
            backward = t2 - t1 < backward ? t2 - t1 : backward;
        }
        double flops = 2.0 * convs[i].cin * convs[i].k * convs[i].k * convs[i].cout *
                       l.out.d[1] * l.out.d[2] * n;
        printf("| %s | %.2f | %.1f | %.2f | %.1f |\n", convs[i].name, forward * 1e3,
               flops / forward * 1e-9, backward * 1e3, flops * (i ? 2 : 1) / backward * 1e-9);
        forward_total += forward;
        backward_total += backward;
        free(x), free(y), free(dy), free(dx), free(w), free(dw), free(scratch);
    }
    fr_layer pool = layer_of(&fr_maxpool2d_ops, fr_shape_chw(64, side / 2, side / 2),
                             (const int[]){3, 2, 1}, 3);
    float *x = random_floats(fr_shape_numel(pool.in) * n);
    float *y = malloc(fr_shape_numel(pool.out) * n * sizeof *y);
    void *argmax = malloc(pool.ops->scratch_bytes(&pool, n));
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_now();
        pool.ops->forward(&pool, x, y, n, argmax);
        double t1 = cpu_now();
        best = t1 - t0 < best ? t1 - t0 : best;
    }
    printf("\none of each convolution: forward %.1f ms, backward %.1f ms; maxpool2d(3, 2, 1) "
           "forward %.2f ms\n", forward_total * 1e3, backward_total * 1e3, best * 1e3);
    free(x), free(y), free(argmax);
    return 0;
}
