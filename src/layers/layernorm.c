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

/* ------------------------------------------------ the layer kind */

#include "kernels.h"

/* layernorm(normalized_shape, eps=1e-5, elementwise_affine=True), over the
 * last dimension: every position's row of [T, C] (or a vector [C]). */
enum { NORMALIZED_SHAPE, EPS, AFFINE };

static long rows_of(const fr_layer *l, int n) {
    return (long)n * (long)(fr_shape_numel(l->in) / (size_t)l->args[NORMALIZED_SHAPE]);
}

static int layernorm_infer_shape(fr_layer *l, fr_error *err) {
    int dim = l->args[NORMALIZED_SHAPE];
    if (fr_shape_last(l->in) != dim) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE, "layernorm(%d) normalises a last dimension of "
                             "%d, got %s", dim, dim, shape);
    }
    l->out = l->in;
    fr_layer_no_params(l);
    if (l->args[AFFINE]) {
        fr_layer_param_shape(l, FR_WEIGHT, 1, &dim);
        fr_layer_param_shape(l, FR_BIAS, 1, &dim);
    }
    return FR_OK;
}

/* Each row's mean and 1/std, from forward to backward. */
static size_t layernorm_scratch_bytes(const fr_layer *l, int n) {
    return 2 * (size_t)rows_of(l, n > 0 ? n : 0) * sizeof(float);
}

static void layernorm_forward(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch) {
    long rows = rows_of(l, n);
    float *mean = scratch, *rstd = mean + rows;
    fr_layernorm_forward(in, l->param_data[FR_WEIGHT], l->param_data[FR_BIAS], out, mean, rstd,
                         rows, l->args[NORMALIZED_SHAPE], (float)fr_arg_real(l->args[EPS]));
}

static void layernorm_backward(const fr_layer *l, const float *in, const float *out,
                               const float *dout, float *din, const fr_param_grads *grads, int n,
                               void *scratch) {
    (void)out;
    long rows = rows_of(l, n);
    const float *mean = scratch, *rstd = mean + rows;
    /* Both affine parameters belong to this layer, so they are tied together or not at all. */
    fr_layernorm_backward(in, dout, l->param_data[FR_WEIGHT], mean, rstd, rows,
                          l->args[NORMALIZED_SHAPE], din, grads->grad[FR_WEIGHT],
                          grads->grad[FR_BIAS], grads->accumulate != 0);
}

const fr_layer_ops fr_layernorm_ops = {
    .kind = "layernorm",
    .params = {{"weight", FR_INIT_ONES}, {"bias", FR_INIT_ZEROS}},
    .args = {{"normalized_shape", .minimum = 1},
             {"eps", .minimum = 1, .optional = true, .default_value = 10000, .real = true},
             {"elementwise_affine", .optional = true, .default_value = 1, .boolean = true}},
    .infer_shape = layernorm_infer_shape,
    .scratch_bytes = layernorm_scratch_bytes,
    .forward = layernorm_forward,
    .backward = layernorm_backward,
};
