/*
 * layernorm.c - PyTorch's nn.LayerNorm over the last dimension, forward and
 * backward, on rows of `dim` floats (the kernels; transformer_kernels.h says
 * what each argument holds).  Forward keeps each row's mean and 1/std so that
 * backward needs no second pass over the statistics.
 *
 * Each row's statistics are summed in float, two passes (the mean, then the
 * squared deviations from it), not the one-pass E[x^2] - E[x]^2, which loses
 * every digit when a row's mean is large next to its spread.
 */
#include "transformer_kernels.h"

#include <math.h>

/* ----------------------------------------------------- forward */

void fr_layernorm_forward(const float *in, const float *gamma, const float *beta, float *out,
                          float *mean, float *rstd, long rows, int dim, float eps) {
    for (long r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * (size_t)dim;
        float *y = out + (size_t)r * (size_t)dim;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < dim; i++)
            sum += x[i];
        float row_mean = sum / (float)dim;
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int i = 0; i < dim; i++) {
            float deviation = x[i] - row_mean;
            squares += deviation * deviation;
        }
        float row_rstd = 1.0f / sqrtf(squares / (float)dim + eps);
        mean[r] = row_mean;
        rstd[r] = row_rstd;
        /* the affine part in passes of its own over the row (in L1): a test
         * of gamma or beta inside the loop would keep it from vectorizing */
#pragma omp simd
        for (int i = 0; i < dim; i++)
            y[i] = (x[i] - row_mean) * row_rstd;
        if (gamma) {
#pragma omp simd
            for (int i = 0; i < dim; i++)
                y[i] *= gamma[i];
        }
        if (beta) {
#pragma omp simd
            for (int i = 0; i < dim; i++)
                y[i] += beta[i];
        }
    }
}

/* ---------------------------------------------------- backward */

/*
 * With xhat = (x - mean) rstd and g = dout * gamma, the input gradient is
 *     din = rstd (g - mean(g) - xhat mean(g xhat)),
 * the two row means being what the normalisation's own dependence on x
 * subtracts; dgamma sums dout * xhat over the rows, dbeta sums dout.
 */
void fr_layernorm_backward(const float *in, const float *dout, const float *gamma,
                           const float *mean, const float *rstd, long rows, int dim, float *din,
                           float *dgamma, float *dbeta, bool accumulate) {
    if (!accumulate) {
        if (dgamma)
            memset(dgamma, 0, (size_t)dim * sizeof *dgamma);
        if (dbeta)
            memset(dbeta, 0, (size_t)dim * sizeof *dbeta);
    }
    for (long r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * (size_t)dim;
        const float *dy = dout + (size_t)r * (size_t)dim;
        float row_mean = mean[r], row_rstd = rstd[r];
        if (dgamma) {
#pragma omp simd
            for (int i = 0; i < dim; i++)
                dgamma[i] += dy[i] * ((x[i] - row_mean) * row_rstd);
        }
        if (dbeta) {
#pragma omp simd
            for (int i = 0; i < dim; i++)
                dbeta[i] += dy[i];
        }
        if (!din)
            continue;
        /* g = dout * gamma, the gradient at xhat, first goes in din's row
         * (dout's row is read at the same index, so din may equal dout) */
        float *g = din + (size_t)r * (size_t)dim;
        if (gamma) {
#pragma omp simd
            for (int i = 0; i < dim; i++)
                g[i] = dy[i] * gamma[i];
        } else if (g != dy) {
            memcpy(g, dy, (size_t)dim * sizeof *g);
        }
        float g_sum = 0.0f, g_xhat_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, g_xhat_sum)
        for (int i = 0; i < dim; i++) {
            g_sum += g[i];
            g_xhat_sum += g[i] * ((x[i] - row_mean) * row_rstd);
        }
        float g_mean = g_sum / (float)dim, g_xhat_mean = g_xhat_sum / (float)dim;
#pragma omp simd
        for (int i = 0; i < dim; i++) {
            float xhat = (x[i] - row_mean) * row_rstd;
            g[i] = row_rstd * (g[i] - g_mean - xhat * g_xhat_mean);
        }
    }
}
