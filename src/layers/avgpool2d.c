/*
 * avgpool2d.c - average pooling, PyTorch's nn.AvgPool2d(kernel, stride,
 * padding) with its other defaults: floor mode, count_include_pad=True;
 * stride = kernel unless given (PyTorch's stride=None).  The padding counts
 * as zeros, so every window is divided by kernel x kernel (floor mode keeps
 * each window inside the padded input).  No scratch: backward spreads each
 * output gradient evenly over the inputs its window covers.
 */
#include "../kernels.h"

#include <string.h>

/* avgpool2d(kernel_size, stride=None, padding=0) */
enum { KERNEL_SIZE, STRIDE, PADDING };

static int pool_kernel(const fr_layer *l) { return l->args[KERNEL_SIZE]; }
static int pool_stride(const fr_layer *l) {
    return l->args[STRIDE] == FR_ARG_NONE ? l->args[KERNEL_SIZE] : l->args[STRIDE];
}

/* ------------------------------------------------------- shape */

static int avgpool2d_infer_shape(fr_layer *l, fr_error *err) {
    char self[96];
    fr_layer_format(l, self, sizeof self);
    return fr_pool_infer_shape(l, self, pool_kernel(l), pool_stride(l), l->args[PADDING], err);
}

/* ----------------------------------------------------- forward */

static void avgpool2d_forward(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch) {
    (void)scratch;
    int k = pool_kernel(l), stride = pool_stride(l), pad = l->args[PADDING];
    int h = l->in.h, w = l->in.w, oh = l->out.h, ow = l->out.w;
    size_t in_plane = (size_t)h * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.c;
    float area = (float)(k * k);
    for (size_t p = 0; p < planes; p++) {
        const float *src = in + p * in_plane;
        float *dst = out + p * out_plane;
        for (int oy = 0; oy < oh; oy++) {
            int y0, y1;
            fr_window_clip(oy * stride - pad, k, h, &y0, &y1);
            for (int ox = 0; ox < ow; ox++) {
                int x0, x1;
                fr_window_clip(ox * stride - pad, k, w, &x0, &x1);
                dst[oy * ow + ox] = fr_window_sum(src, w, y0, y1, x0, x1) / area;
            }
        }
    }
}

/* ---------------------------------------------------- backward */

static void avgpool2d_backward(const fr_layer *l, const float *in, const float *out,
                               const float *dout, float *din, float *dweight, float *dbias,
                               int n, void *scratch) {
    (void)in;
    (void)out;
    (void)dweight;
    (void)dbias;
    (void)scratch;
    if (!din)
        return;
    int k = pool_kernel(l), stride = pool_stride(l), pad = l->args[PADDING];
    int h = l->in.h, w = l->in.w, oh = l->out.h, ow = l->out.w;
    size_t in_plane = (size_t)h * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.c;
    float area = (float)(k * k);
    memset(din, 0, planes * in_plane * sizeof *din);
    for (size_t p = 0; p < planes; p++) {
        float *dst = din + p * in_plane;
        const float *grad = dout + p * out_plane;
        for (int oy = 0; oy < oh; oy++) {
            int y0, y1;
            fr_window_clip(oy * stride - pad, k, h, &y0, &y1);
            for (int ox = 0; ox < ow; ox++) {
                int x0, x1;
                fr_window_clip(ox * stride - pad, k, w, &x0, &x1);
                fr_window_add(dst, w, y0, y1, x0, x1, grad[oy * ow + ox] / area);
            }
        }
    }
}

const fr_layer_ops fr_avgpool2d_ops = {
    .kind = "avgpool2d",
    .args = {{"kernel_size", "kernel", .minimum = 1},
             {"stride", .minimum = 1, .optional = true, .default_value = FR_ARG_NONE},
             {"padding", .minimum = 0, .optional = true, .default_value = 0}},
    .infer_shape = avgpool2d_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = avgpool2d_forward,
    .backward = avgpool2d_backward,
};
