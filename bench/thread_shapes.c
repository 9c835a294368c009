/* thread_shapes.c - the GEMMs one frost thread runs for a linear layer when a global batch B is
 * split over T threads, timed on one core, so the cost of small per-thread batches shows without
 * a many-core machine.
 *
 * For linear(IN, OUT) and rows = B/T per thread (src/layers/linear.c, src/trainer/train.c):
 *   forward       out[rows x OUT] = in[rows x IN] . W^T            (one GEMM per thread)
 *   input grad    din[rows x IN] = dout[rows x OUT] . W             (one GEMM per thread)
 *   weight grad   split by rows (split_weight_grad): a thread owns OUT/T rows of dW and adds
 *                 every replica's product onto them, T GEMMs of (OUT/T) x IN x rows, beta = 1
 *   weight grad, one GEMM  the same rows of dW from all B rows at once ((OUT/T) x IN x B): what
 *                 the split would cost if the replicas' rows were one contiguous matrix
 *   forward, columns       what forward would cost split by output features instead of rows:
 *                 the thread's OUT/T outputs for all B rows, B x (OUT/T) x IN
 *   input grad, columns    likewise: B x (IN/T) x OUT
 * Each line: T, rows per thread, GFLOP/s of each (best of REPS), on one core
 * (openblas_set_num_threads(1)); the thread's FLOPs are 1/T of the layer's, as on T cores.
 *
 * Build: cc -O2 -I/usr/include/x86_64-linux-gnu/openblas-pthread bench/thread_shapes.c -o shapes -lopenblas
 * Usage: shapes [IN OUT B REPS]        (default 1024 1024 256 5)
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

static float *filled(size_t n, unsigned seed) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (float)((seed >> 16) & 0x7fff) / 32768.0f - 0.5f;
    }
    return p;
}

enum { FORWARD, INPUT_GRAD, WEIGHT_GRAD_SPLIT, WEIGHT_GRAD_ONE, FORWARD_COLS, INPUT_GRAD_COLS, KINDS };

/* One thread's share of a kind, once; returns its FLOPs. */
static double run(int kind, int in, int out, int batch, int threads, const float *x,
                  const float *w, const float *dout, float *y, float *dx, float *dw) {
    int rows = batch / threads, own = out / threads;
    switch (kind) {
    case FORWARD:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in,
                    0.0f, y, out);
        return 2.0 * rows * out * in;
    case INPUT_GRAD:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in, out, 1.0f, dout, out, w,
                    in, 0.0f, dx, in);
        return 2.0 * rows * out * in;
    case WEIGHT_GRAD_SPLIT:
        /* Replica s's rows are rows [s*rows, (s+1)*rows) of x and dout. */
        for (int s = 0; s < threads; s++)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, own, in, rows, 1.0f,
                        dout + (size_t)s * rows * out, out, x + (size_t)s * rows * in, in,
                        s == 0 ? 0.0f : 1.0f, dw, in);
        return 2.0 * own * in * rows * threads;
    case WEIGHT_GRAD_ONE:
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, own, in, batch, 1.0f, dout, out, x,
                    in, 0.0f, dw, in);
        return 2.0 * own * in * batch;
    case FORWARD_COLS:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, own, in, 1.0f, x, in, w, in,
                    0.0f, y, out);
        return 2.0 * batch * own * in;
    default: {
        int cols = in / threads;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, cols, out, 1.0f, dout, out,
                    w, in, 0.0f, dx, in);
        return 2.0 * batch * cols * out;
    }
    }
}

int main(int argc, char **argv) {
    int in = argc > 1 ? atoi(argv[1]) : 1024, out = argc > 2 ? atoi(argv[2]) : 1024;
    int batch = argc > 3 ? atoi(argv[3]) : 256, reps = argc > 4 ? atoi(argv[4]) : 5;
    if (in < 1 || out < 1 || batch < 1 || reps < 1) {
        fprintf(stderr, "usage: shapes [IN OUT B REPS]\n");
        return 2;
    }
    openblas_set_num_threads(1);
    float *x = filled((size_t)batch * in, 1), *w = filled((size_t)out * in, 2);
    float *dout = filled((size_t)batch * out, 3), *y = filled((size_t)batch * out, 4);
    float *dx = filled((size_t)batch * in, 5), *dw = filled((size_t)out * in, 6);
    if (!x || !w || !dout || !y || !dx || !dw) {
        fprintf(stderr, "shapes: out of memory\n");
        return 1;
    }
    printf("linear(%d, %d), global batch %d, one core; GFLOP/s (best of %d)\n", in, out, batch,
           reps);
    printf("threads rows/thread forward input-grad weight-grad(split) weight-grad(one GEMM) "
           "forward(columns) input-grad(columns)\n");
    for (int threads = 1; threads <= batch && threads <= out && threads <= in; threads *= 2) {
        double best[KINDS] = {0};
        for (int kind = 0; kind < KINDS; kind++)
            for (int r = 0; r < reps + 1; r++) {
                double t0 = now();
                double flops = run(kind, in, out, batch, threads, x, w, dout, y, dx, dw);
                double rate = flops / (now() - t0) / 1e9;
                if (r > 0 && rate > best[kind]) /* the first is warm-up */
                    best[kind] = rate;
            }
        printf("%7d %11d %7.1f %10.1f %18.1f %21.1f %16.1f %19.1f\n", threads, batch / threads,
               best[0], best[1], best[2], best[3], best[4], best[5]);
    }
    return 0;
}
