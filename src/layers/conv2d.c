/*
 * conv2d.c - the 2-D convolution, PyTorch's nn.Conv2d with a square kernel,
 * one stride and zero padding on all sides: weight [out, in, k, k], bias [out]
 * unless bias=False.
 *
 * Each sample is unrolled by im2col into a [in*k*k x oh*ow] matrix so the
 * convolution becomes one GEMM, W[out x in*k*k] · col.  Backward recomputes
 * that matrix rather than keeping it from forward, so the scratch is a few
 * samples' columns whatever the batch; the same buffer then receives the
 * input gradient's columns, which col2im folds back into the image.  A 1x1
 * kernel with stride 1 and no padding needs no unrolling: the image already
 * is col.
 *
 * A small output plane makes thin GEMMs: resnet18's layer4 on 112x112 images
 * has 4x4 planes, so one sample's weight gradient is a product over 16 values
 * that reads and writes all of dW [512 x 4608], and its input gradient a
 * product with 16 columns.  So backward takes the samples in groups: the
 * group's columns side by side in one matrix [in*k*k x group*oh*ow], the
 * output gradient staged beside it as [out x group*oh*ow], and one GEMM each
 * for dW and the input gradient's columns.  A group holds enough samples for
 * GROUP_COLUMNS columns; a plane that wide goes alone, as before.
 *
 * Forward stays one sample at a time.  OpenBLAS's value for one column of a
 * product depends on how wide the matrix is, so a grouped forward would give
 * a sample other bits in other company: the frozen trunk's outputs in the
 * feature cache (computed in dataset order) would no longer be the bits an
 * uncached step computes, and a ReLU or max-pool tie can turn on such a bit
 * (bench/README.md, *resnet18*).  Backward's sums change their rounding too,
 * but each thread's rows are the same with and without the cache.
 */
#include "kernels.h"

#include <cblas.h>
#include <limits.h>
#include <string.h>

/* conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, *, bias=True) */
enum { IN_CHANNELS, OUT_CHANNELS, KERNEL_SIZE, STRIDE, PADDING, BIAS };

/* The sizes of the per-sample GEMMs, derived once from the layer. */
typedef struct conv_dims {
    int in_c, out_c, k, stride, pad;
    int h, w, oh, ow;
    int col_rows;   /* in_c * k * k: the GEMM's inner dimension */
    int out_plane;  /* oh * ow */
    bool unrolled;  /* false for the 1x1 / stride 1 / no padding case */
    int group;      /* samples per GEMM, before capping by the rows at hand */
} conv_dims;

/* Columns a group of samples fills, at least: a GEMM this wide runs at
 * OpenBLAS's full rate on resnet18's shapes, where 16 or 49 columns ran at
 * 55-80% (bench/README.md, *resnet18*). */
enum { GROUP_COLUMNS = 256 };

/* The shape as conv2d_dnnl.c takes it. */
static fr_conv_shape shape_of(const conv_dims *d) {
    return (fr_conv_shape){d->in_c, d->out_c, d->k, d->stride, d->pad, d->h, d->w, d->oh, d->ow};
}

static conv_dims dims_of(const fr_layer *l) {
    conv_dims d;
    d.in_c = l->args[IN_CHANNELS];
    d.out_c = l->args[OUT_CHANNELS];
    d.k = l->args[KERNEL_SIZE];
    d.stride = l->args[STRIDE];
    d.pad = l->args[PADDING];
    d.h = l->in.d[1];
    d.w = l->in.d[2];
    d.oh = l->out.d[1];
    d.ow = l->out.d[2];
    d.col_rows = d.in_c * d.k * d.k;
    d.out_plane = d.oh * d.ow;
    d.unrolled = !(d.k == 1 && d.stride == 1 && d.pad == 0);
    d.group = d.unrolled ? (GROUP_COLUMNS + d.out_plane - 1) / d.out_plane : 1;
    return d;
}

/* ------------------------------------------------------- shape */

static int conv2d_infer_shape(fr_layer *l, fr_error *err) {
    const int *a = l->args;
    int in_c = a[IN_CHANNELS], out_c = a[OUT_CHANNELS], k = a[KERNEL_SIZE];
    int stride = a[STRIDE], pad = a[PADDING];
    char self[96], shape[64];
    fr_layer_format(l, self, sizeof self);
    fr_shape_format(l->in, shape, sizeof shape);

    if (fr_layer_need_image(l, err) != FR_OK)
        return FR_ESHAPE;
    if (in_c < 1 || out_c < 1 || k < 1 || stride < 1 || pad < 0)
        return fr_layer_fail(l, err, FR_EINVAL,
                             "%s needs channels, kernel and stride of at least 1 "
                             "and padding of at least 0", self);
    if (l->in.d[0] != in_c)
        return fr_layer_fail(l, err, FR_ESHAPE,
                             "%s expects %d input channels, got %s", self, in_c,
                             shape);
    int oh = fr_window_count(l->in.d[1], k, stride, pad);
    int ow = fr_window_count(l->in.d[2], k, stride, pad);
    if (oh < 1 || ow < 1)
        return fr_layer_fail(l, err, FR_ESHAPE,
                             "%s: kernel %dx%d is larger than the input %s "
                             "with padding %d", self, k, k, shape, pad);
    /* BLAS takes int dimensions; the GEMM operands must stay within them. */
    long long col_rows = (long long)in_c * k * k;
    if (col_rows * out_c > INT_MAX || (long long)oh * ow * col_rows > INT_MAX ||
        (long long)oh * ow * out_c > INT_MAX)
        return fr_layer_fail(l, err, FR_EINVAL, "%s on %s is too large", self,
                             shape);

    l->out = fr_shape_chw(out_c, oh, ow);
    fr_layer_param_shape(l, FR_WEIGHT, 4, (const int[]){out_c, in_c, k, k});
    if (a[BIAS])
        fr_layer_param_shape(l, FR_BIAS, 1, &out_c);
    l->fan_in = (int)col_rows;
    return FR_OK;
}

/* Samples per GEMM for n rows: the dims' group, at most n. */
static int group_for(const conv_dims *d, int n) {
    return n < d->group ? (n > 0 ? n : 1) : d->group;
}

/* A group's columns [col_rows x g*plane], and for a group of more than one
 * sample its staged output gradient [out_c x g*plane] after them.  n is the most rows
 * a call gets, so the scratch is one sample's columns for a wide plane
 * whatever the batch. */
static size_t conv2d_scratch_bytes(const fr_layer *l, int n) {
    conv_dims d = dims_of(l);
    if (!d.unrolled)
        return 0;
    size_t g = (size_t)group_for(&d, n);
    size_t rows = (size_t)d.col_rows + (g > 1 ? (size_t)d.out_c : 0);
    return rows * g * (size_t)d.out_plane * sizeof(float);
}

/* Samples [s0, s0 + g) of `in` unrolled side by side into col [K x g*P]. */
static void group_columns(const conv_dims *d, const float *in, size_t in_numel, int s0, int g,
                          float *col) {
    size_t ld = (size_t)g * d->out_plane;
    for (int j = 0; j < g; j++)
        fr_im2col(in + (size_t)(s0 + j) * in_numel, d->in_c, d->h, d->w, d->k, d->stride,
                  d->pad, d->oh, d->ow, col + (size_t)j * d->out_plane, ld);
}

/* ----------------------------------------------------- forward */

/* One sample: its columns (or the image itself for 1x1) times W, straight
 * into its output plane. */
static void forward_one(const fr_layer *l, const conv_dims *d, const float *in_s, float *out_s,
                        float *col) {
    const float *bias = l->param_data[FR_BIAS];
    if (d->unrolled) {
        fr_im2col(in_s, d->in_c, d->h, d->w, d->k, d->stride, d->pad, d->oh, d->ow, col,
                  (size_t)d->out_plane);
        in_s = col;
    }
    /* The bias goes in first so the GEMM adds onto it (beta = 1), in
     * PyTorch's order; a fused relu follows while out_s is in cache. */
    if (bias)
        fr_bias_set_channels(out_s, bias, d->out_c, d->out_plane);
    /* out_s[out x P] = W[out x K] · col[K x P] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->out_c, d->out_plane, d->col_rows,
                1.0f, l->param_data[FR_WEIGHT], d->col_rows, in_s, d->out_plane,
                bias ? 1.0f : 0.0f, out_s, d->out_plane);
    if (l->fused_relu)
        fr_relu_inplace(out_s, (size_t)d->out_c * d->out_plane);
}

static void conv2d_forward(const fr_layer *l, const float *in, float *out,
                           int n, void *scratch) {
    conv_dims d = dims_of(l);
    size_t in_numel = fr_shape_numel(l->in), out_numel = fr_shape_numel(l->out);
    fr_conv_shape shape = shape_of(&d);
    if (fr_conv_dnnl_forward(&shape, l->param_data[FR_WEIGHT], l->param_data[FR_BIAS], in, out,
                             n)) {
        if (l->fused_relu)
            fr_relu_inplace(out, (size_t)n * out_numel);
        return;
    }
    for (int s = 0; s < n; s++)
        forward_one(l, &d, in + s * in_numel, out + s * out_numel, scratch);
}

/* ---------------------------------------------------- backward */

/* dW (+)= dout[out x cols] · colᵀ and din's columns dcol[K x cols] = Wᵀ ·
 * dout, for one sample (cols = P, ld = P) or a group side by side (cols =
 * ld = g*P); dcol reuses col's buffer (the columns are no longer needed)
 * unless it is the input gradient itself (1x1 kernels). */
static void backward_products(const fr_layer *l, const conv_dims *d, const float *dout,
                              const float *col, float *dweight, bool accumulate, float *dcol,
                              int cols) {
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d->out_c, d->col_rows, cols, 1.0f,
                    dout, cols, col, cols, accumulate ? 1.0f : 0.0f, dweight, d->col_rows);
    if (dcol)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d->col_rows, cols, d->out_c, 1.0f,
                    l->param_data[FR_WEIGHT], d->col_rows, dout, cols, 0.0f, dcol, cols);
}

static void conv2d_backward(const fr_layer *l, const float *in,
                            const float *out, const float *dout, float *din, const fr_param_grads *grads, int n,
                            void *scratch) {
    (void)out;
    float *dweight = grads->grad[FR_WEIGHT], *dbias = grads->grad[FR_BIAS];
    conv_dims d = dims_of(l);
    size_t in_numel = fr_shape_numel(l->in), out_numel = fr_shape_numel(l->out);
    size_t plane = (size_t)d.out_plane;
    float *col = scratch;
    if (dbias) {
        memset(dbias, 0, (size_t)d.out_c * sizeof *dbias);
        for (int s = 0; s < n; s++)
            fr_bias_grad_channels(dout + s * out_numel, d.out_c, d.out_plane, dbias);
    }
    fr_conv_shape shape = shape_of(&d);
    if (fr_conv_dnnl_backward(&shape, l->param_data[FR_WEIGHT], in, dout, din, dweight, n))
        return;
    int g = group_for(&d, n);
    for (int s = 0; s < n; s += g) {
        int count = n - s < g ? n - s : g;
        size_t ld = (size_t)count * plane;
        /* The first group overwrites dW, the rest accumulate. */
        bool accumulate = s > 0;
        if (count == 1) {
            const float *in_s = in + s * in_numel;
            float *din_s = din ? din + s * in_numel : NULL;
            if (d.unrolled && dweight)
                fr_im2col(in_s, d.in_c, d.h, d.w, d.k, d.stride, d.pad, d.oh, d.ow, col, plane);
            backward_products(l, &d, dout + s * out_numel, d.unrolled ? col : in_s, dweight,
                              accumulate, din && d.unrolled ? col : din_s, d.out_plane);
            if (din && d.unrolled) {
                memset(din_s, 0, in_numel * sizeof *din_s);
                fr_col2im_add(col, d.in_c, d.h, d.w, d.k, d.stride, d.pad, d.oh, d.ow, din_s,
                              plane);
            }
            continue;
        }
        /* A group: dout's planes staged side by side [out x count*P]. */
        float *staged = col + (size_t)d.col_rows * ld;
        for (int j = 0; j < count; j++) {
            const float *dout_s = dout + (s + j) * out_numel;
            for (int ch = 0; ch < d.out_c; ch++)
                memcpy(staged + ch * ld + j * plane, dout_s + ch * plane, plane * sizeof *staged);
        }
        if (dweight)
            group_columns(&d, in, in_numel, s, count, col);
        backward_products(l, &d, staged, col, dweight, accumulate, din ? col : NULL, (int)ld);
        if (!din)
            continue;
        for (int j = 0; j < count; j++) {
            float *din_s = din + (s + j) * in_numel;
            memset(din_s, 0, in_numel * sizeof *din_s);
            fr_col2im_add(col + j * plane, d.in_c, d.h, d.w, d.k, d.stride, d.pad, d.oh, d.ow,
                          din_s, ld);
        }
    }
}

const fr_layer_ops fr_conv2d_ops = {
    .kind = "conv2d",
    .params = {{"weight", FR_INIT_FAN_IN_UNIFORM}, {"bias", FR_INIT_FAN_IN_UNIFORM}},
    .args = {{"in_channels", .minimum = 1},
             {"out_channels", .minimum = 1},
             {"kernel_size", "kernel", .minimum = 1},
             {"stride", .minimum = 1, .optional = true, .default_value = 1},
             {"padding", .minimum = 0, .optional = true, .default_value = 0},
             {"bias", .optional = true, .default_value = 1, .keyword_only = true, .boolean = true}},
    .implies_input = FR_IMPLIES_IMAGE,
    .fuses_relu = true,
    .infer_shape = conv2d_infer_shape,
    .scratch_bytes = conv2d_scratch_bytes,
    .forward = conv2d_forward,
    .backward = conv2d_backward,
    .alias = false,
};
