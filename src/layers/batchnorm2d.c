/*
 * batchnorm2d.c - batch normalization over the channels of images, PyTorch's
 * nn.BatchNorm2d: weight [C] and bias [C] (when affine), buffers running_mean
 * and running_var [C] and num_batches_tracked (int64, []).
 *
 * In train mode (fr_layer.training) the statistics are the global batch's:
 * every replica sums its rows (sum of x and of x^2 per channel, in double),
 * the trainer adds those sums over the replicas and ranks (stats_count and
 * the hooks below), and each replica normalizes its rows with the batch's
 * mean and biased variance.  The running statistics move by `momentum` toward
 * the batch's mean and unbiased variance, once per step.  Backward needs two
 * more global sums per channel (of dy and of dy * xhat) for the gradient at
 * the input; the parameters' gradients are this replica's share, summed with
 * the slab like any other.  In eval mode (evaluation, or a frozen layer) the
 * running statistics normalize and nothing changes.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

/* batchnorm2d(num_features, eps=1e-5, momentum=0.1, affine=True) */
enum { FEATURES, EPS, MOMENTUM, AFFINE };
/* Buffers, in the order of the ops table. */
enum { RUNNING_MEAN, RUNNING_VAR, BATCHES_TRACKED };

/* ------------------------------------------------------- shape */

static int batchnorm2d_infer_shape(fr_layer *l, fr_error *err) {
    char self[96], shape[64];
    fr_layer_format(l, self, sizeof self);
    fr_shape_format(l->in, shape, sizeof shape);
    if (fr_layer_need_image(l, err) != FR_OK)
        return FR_ESHAPE;
    if (l->in.d[0] != l->args[FEATURES])
        return fr_layer_fail(l, err, FR_ESHAPE, "%s expects %d channels, got %s", self,
                             l->args[FEATURES], shape);
    l->out = l->in;
    fr_layer_no_params(l);
    if (l->args[AFFINE]) {
        fr_layer_param_shape(l, FR_WEIGHT, 1, &l->in.d[0]);
        fr_layer_param_shape(l, FR_BIAS, 1, &l->in.d[0]);
    }
    return FR_OK;
}

/* Channel c's scale and shift: y = x * scale + shift. */
static void affine_of(const fr_layer *l, int c, double mean, double invstd, float *scale,
                      float *shift) {
    const float *weight = l->param_data[FR_WEIGHT], *bias = l->param_data[FR_BIAS];
    double w = weight ? weight[c] : 1.0, b = bias ? bias[c] : 0.0;
    *scale = (float)(w * invstd);
    *shift = (float)(b - mean * w * invstd);
}

/* Channel c of n samples normalized with (mean, invstd). */
static void normalize_channel(const fr_layer *l, const float *in, float *out, int n, int c,
                              double mean, double invstd) {
    int channels = l->out.d[0], plane = l->out.d[1] * l->out.d[2];
    float scale, shift;
    affine_of(l, c, mean, invstd, &scale, &shift);
    for (int s = 0; s < n; s++) {
        const float *x = in + ((size_t)s * channels + c) * plane;
        float *y = out + ((size_t)s * channels + c) * plane;
#pragma omp simd
        for (int k = 0; k < plane; k++)
            y[k] = x[k] * scale + shift;
    }
}

/* The batch's mean and 1/sqrt(var + eps) from the summed statistics
 * (sum, sum of squares, count), channel c. */
static void batch_moments(const fr_layer *l, const double *sums, int c, double *mean,
                          double *var, double *invstd) {
    int channels = l->out.d[0];
    double count = sums[2 * channels];
    *mean = count > 0 ? sums[c] / count : 0.0;
    *var = count > 0 ? sums[channels + c] / count - *mean * *mean : 0.0;
    if (*var < 0.0)
        *var = 0.0;
    *invstd = 1.0 / sqrt(*var + fr_arg_real(l->args[EPS]));
}

static void running_moments(const fr_layer *l, int c, double *mean, double *invstd) {
    const float *running_mean = l->buffer_data[RUNNING_MEAN];
    const float *running_var = l->buffer_data[RUNNING_VAR];
    *mean = running_mean[c];
    *invstd = 1.0 / sqrt((double)running_var[c] + fr_arg_real(l->args[EPS]));
}

/* ----------------------------------------------------- forward */

/* Eval mode: the running statistics. */
static void batchnorm2d_forward(const fr_layer *l, const float *in, float *out, int n,
                                void *scratch) {
    (void)scratch;
    for (int c = 0; c < l->out.d[0]; c++) {
        double mean, invstd;
        running_moments(l, c, &mean, &invstd);
        normalize_channel(l, in, out, n, c, mean, invstd);
    }
}

static int batchnorm2d_stats_count(const fr_layer *l) { return 2 * l->out.d[0] + 1; }

/* Train mode: sum and sum of squares per channel, and the count. */
static void batchnorm2d_forward_sums(const fr_layer *l, const float *in, int n, double *sums) {
    int channels = l->out.d[0], plane = l->out.d[1] * l->out.d[2];
    for (int c = 0; c < channels; c++) {
        double sum = 0.0, squares = 0.0;
        for (int s = 0; s < n; s++) {
            const float *x = in + ((size_t)s * channels + c) * plane;
            /* Vectors of partial sums, in double and in a fixed order: the
             * result depends on the rows, not on threads or timing. */
#pragma omp simd reduction(+ : sum, squares)
            for (int k = 0; k < plane; k++) {
                double v = x[k];
                sum += v;
                squares += v * v;
            }
        }
        sums[c] = sum;
        sums[channels + c] = squares;
    }
    sums[2 * channels] = (double)n * plane;
}

static void batchnorm2d_forward_with(const fr_layer *l, const float *in, float *out, int n,
                                     const double *sums, void *scratch) {
    (void)scratch;
    for (int c = 0; c < l->out.d[0]; c++) {
        double mean, var, invstd;
        batch_moments(l, sums, c, &mean, &var, &invstd);
        normalize_channel(l, in, out, n, c, mean, invstd);
    }
}

/* The running statistics, as PyTorch moves them: toward the batch's mean
 * and unbiased variance. */
static void batchnorm2d_commit(const fr_layer *l, const double *sums) {
    int channels = l->out.d[0];
    float *running_mean = l->buffer_data[RUNNING_MEAN];
    float *running_var = l->buffer_data[RUNNING_VAR];
    int64_t *tracked = l->buffer_data[BATCHES_TRACKED];
    double momentum = fr_arg_real(l->args[MOMENTUM]), count = sums[2 * channels];
    for (int c = 0; c < channels; c++) {
        double mean, var, invstd;
        batch_moments(l, sums, c, &mean, &var, &invstd);
        double unbiased = count > 1 ? var * count / (count - 1) : var;
        running_mean[c] = (float)(momentum * mean + (1.0 - momentum) * running_mean[c]);
        running_var[c] = (float)(momentum * unbiased + (1.0 - momentum) * running_var[c]);
    }
    (*tracked)++;
}

/* ---------------------------------------------------- backward */

/* Channel c's sums of dy and of dy * xhat over n samples, xhat from
 * (mean, invstd); they are also its parameters' gradients (dweight, dbias
 * NULL when not wanted). */
static void channel_sums(const fr_layer *l, const float *in, const float *dout, int n, int c,
                         double mean, double invstd, double *sum_dy, double *sum_dy_xhat,
                         float *dweight, float *dbias) {
    int channels = l->out.d[0], plane = l->out.d[1] * l->out.d[2];
    double dy_total = 0.0, dy_x = 0.0;
    for (int s = 0; s < n; s++) {
        const float *dy = dout + ((size_t)s * channels + c) * plane;
        const float *x = in + ((size_t)s * channels + c) * plane;
#pragma omp simd reduction(+ : dy_total, dy_x)
        for (int k = 0; k < plane; k++) {
            double g = dy[k];
            dy_total += g;
            dy_x += g * x[k];
        }
    }
    *sum_dy = dy_total;
    *sum_dy_xhat = (dy_x - mean * dy_total) * invstd;
    if (dweight)
        dweight[c] = (float)*sum_dy_xhat;
    if (dbias)
        dbias[c] = (float)*sum_dy;
}

/* Eval mode: the statistics are constants. */
static void batchnorm2d_backward(const fr_layer *l, const float *in, const float *out,
                                 const float *dout, float *din, const fr_param_grads *grads,
                                 int n, void *scratch) {
    (void)out;
    (void)scratch;
    float *dweight = grads->grad[FR_WEIGHT], *dbias = grads->grad[FR_BIAS];
    int channels = l->out.d[0], plane = l->out.d[1] * l->out.d[2];
    for (int c = 0; c < channels; c++) {
        double mean, invstd, sum_dy, sum_dy_xhat;
        running_moments(l, c, &mean, &invstd);
        if (dweight || dbias)
            channel_sums(l, in, dout, n, c, mean, invstd, &sum_dy, &sum_dy_xhat, dweight, dbias);
        if (!din)
            continue;
        const float *weight = l->param_data[FR_WEIGHT];
        float scale = (float)((weight ? weight[c] : 1.0) * invstd);
        for (int s = 0; s < n; s++) {
            size_t at = ((size_t)s * channels + c) * plane;
#pragma omp simd
            for (int k = 0; k < plane; k++)
                din[at + k] = dout[at + k] * scale;
        }
    }
}

static void batchnorm2d_backward_sums(const fr_layer *l, const float *in, const float *dout,
                                      int n, double *sums, float *dweight, float *dbias,
                                      const double *forward_sums) {
    int channels = l->out.d[0];
    for (int c = 0; c < channels; c++) {
        double mean, var, invstd;
        batch_moments(l, forward_sums, c, &mean, &var, &invstd);
        channel_sums(l, in, dout, n, c, mean, invstd, &sums[c], &sums[channels + c], dweight,
                     dbias);
    }
    sums[2 * channels] = 0.0;
}

/* din = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), the means
 * over the global batch. */
static void batchnorm2d_backward_with(const fr_layer *l, const float *in, const float *dout,
                                      float *din, int n, const double *sums,
                                      const double *forward_sums) {
    int channels = l->out.d[0], plane = l->out.d[1] * l->out.d[2];
    double count = forward_sums[2 * channels];
    for (int c = 0; c < channels; c++) {
        double mean, var, invstd;
        batch_moments(l, forward_sums, c, &mean, &var, &invstd);
        double w = l->param_data[FR_WEIGHT] ? l->param_data[FR_WEIGHT][c] : 1.0;
        float scale = (float)(w * invstd), mean_dy = (float)(sums[c] / count);
        float xhat_scale = (float)invstd, mean_dy_xhat = (float)(sums[channels + c] / count);
        float shift = (float)mean;
        for (int s = 0; s < n; s++) {
            size_t at = ((size_t)s * channels + c) * plane;
#pragma omp simd
            for (int k = 0; k < plane; k++) {
                float xhat = (in[at + k] - shift) * xhat_scale;
                din[at + k] = scale * (dout[at + k] - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
}

const fr_layer_ops fr_batchnorm2d_ops = {
    .kind = "batchnorm2d",
    .params = {{"weight", FR_INIT_ONES}, {"bias", FR_INIT_ZEROS}},
    .args = {{"num_features", .minimum = 1},
             {"eps", .minimum = 1, .optional = true, .default_value = 10000, .real = true},
             {"momentum", .minimum = 0, .optional = true, .default_value = 100000000,
              .real = true},
             {"affine", .optional = true, .default_value = 1, .boolean = true}},
    .implies_input = FR_IMPLIES_IMAGE,
    .infer_shape = batchnorm2d_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = batchnorm2d_forward,
    .backward = batchnorm2d_backward,
    .buffers = {{"running_mean", .initial = 0.0f},
                {"running_var", .initial = 1.0f},
                {"num_batches_tracked", .i64 = true, .scalar = true, .initial = 0.0f}},
    .stats_count = batchnorm2d_stats_count,
    .forward_sums = batchnorm2d_forward_sums,
    .forward_with = batchnorm2d_forward_with,
    .commit = batchnorm2d_commit,
    .backward_sums = batchnorm2d_backward_sums,
    .backward_with = batchnorm2d_backward_with,
};
