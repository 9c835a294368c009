/*
 * conv2d.c - the 2-D convolution, PyTorch's nn.Conv2d with a square kernel,
 * one stride and zero padding on all sides: weight [out, in, k, k], bias [out]
 * unless bias=False.
 *
 * Each sample is unrolled by im2col into a [in*k*k x oh*ow] matrix so the
 * convolution becomes one GEMM, W[out x in*k*k] · col.  Backward recomputes
 * that matrix rather than keeping it from forward, so the scratch is one
 * sample's columns whatever the batch; the same buffer then receives the input
 * gradient's columns, which col2im folds back into the image.  A 1x1 kernel
 * with stride 1 and no padding needs no unrolling: the image already is col.
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
} conv_dims;

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

/* One sample's columns, independent of the batch size. */
static size_t conv2d_scratch_bytes(const fr_layer *l, int n) {
    (void)n;
    conv_dims d = dims_of(l);
    if (!d.unrolled)
        return 0;
    return (size_t)d.col_rows * (size_t)d.out_plane * sizeof(float);
}

/* The GEMM operand for one sample: the image itself for 1x1 kernels. */
static const float *columns_of(const conv_dims *d, const float *image,
                               float *scratch) {
    if (!d->unrolled)
        return image;
    fr_im2col(image, d->in_c, d->h, d->w, d->k, d->stride, d->pad, d->oh, d->ow,
              scratch);
    return scratch;
}

/* ----------------------------------------------------- forward */

static void conv2d_forward(const fr_layer *l, const float *in, float *out,
                           int n, void *scratch) {
    conv_dims d = dims_of(l);
    size_t in_numel = fr_shape_numel(l->in), out_numel = fr_shape_numel(l->out);
    const float *bias = l->param_data[FR_BIAS];
    for (int s = 0; s < n; s++) {
        const float *col = columns_of(&d, in + s * in_numel, scratch);
        float *out_s = out + s * out_numel;
        /* The bias goes in first so the GEMM adds onto it (beta = 1), in
         * PyTorch's order; a fused relu follows while out_s is in cache. */
        if (bias)
            fr_bias_set_channels(out_s, bias, d.out_c, d.out_plane);
        /* out_s[out x P] = W[out x K] · col[K x P] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d.out_c,
                    d.out_plane, d.col_rows, 1.0f, l->param_data[FR_WEIGHT], d.col_rows,
                    col, d.out_plane, bias ? 1.0f : 0.0f, out_s, d.out_plane);
        if (l->fused_relu)
            fr_relu_inplace(out_s, out_numel);
    }
}

/* ---------------------------------------------------- backward */

static void conv2d_backward(const fr_layer *l, const float *in,
                            const float *out, const float *dout, float *din, const fr_param_grads *grads, int n,
                            void *scratch) {
    (void)out;
    float *dweight = grads->grad[FR_WEIGHT], *dbias = grads->grad[FR_BIAS];
    conv_dims d = dims_of(l);
    size_t in_numel = fr_shape_numel(l->in), out_numel = fr_shape_numel(l->out);
    for (int s = 0; s < n; s++) {
        const float *dout_s = dout + s * out_numel;
        /* dW[out x K] (+)= dout_s[out x P] · colᵀ[P x K]: the first sample
         * overwrites, the rest accumulate. */
        if (dweight) {
            const float *col = columns_of(&d, in + s * in_numel, scratch);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d.out_c,
                        d.col_rows, d.out_plane, 1.0f, dout_s, d.out_plane, col,
                        d.out_plane, s == 0 ? 0.0f : 1.0f, dweight, d.col_rows);
        }
        if (dbias) {
            if (s == 0)
                memset(dbias, 0, (size_t)d.out_c * sizeof *dbias);
            fr_bias_grad_channels(dout_s, d.out_c, d.out_plane, dbias);
        }
        if (!din)
            continue;
        /* dcol[K x P] = Wᵀ[K x out] · dout_s[out x P].  For 1x1 kernels dcol
         * is the input gradient itself; otherwise it reuses the scratch the
         * columns were in (they are no longer needed) and is folded back. */
        float *din_s = din + s * in_numel;
        float *dcol = d.unrolled ? scratch : din_s;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d.col_rows,
                    d.out_plane, d.out_c, 1.0f, l->param_data[FR_WEIGHT], d.col_rows,
                    dout_s, d.out_plane, 0.0f, dcol, d.out_plane);
        if (d.unrolled) {
            memset(din_s, 0, in_numel * sizeof *din_s);
            fr_col2im_add(dcol, d.in_c, d.h, d.w, d.k, d.stride, d.pad, d.oh,
                          d.ow, din_s);
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
