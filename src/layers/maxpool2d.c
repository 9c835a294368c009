/*
 * maxpool2d.c - max pooling, PyTorch's nn.MaxPool2d(kernel, stride, padding)
 * with its other defaults: no dilation, floor mode; stride = kernel unless
 * given (PyTorch's stride=None).  The padding counts as -inf: a window's
 * maximum is over the inputs it covers, and padding is at most half the kernel
 * so it covers at least one.
 *
 * Forward records where each maximum came from (an int32 flat index into the
 * sample's input plane) in the layer's scratch, which persists until backward;
 * backward then routes each output gradient to that one input.  Ties go to the
 * first maximum in row-major window order and a NaN wins, both as in PyTorch.
 * The arguments, shape rule and window loop are kernels.c's, shared with the
 * average pools; the common 2x2 window has its own loop.
 */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------- shape */

static int maxpool2d_infer_shape(fr_layer *l, fr_error *err) {
    int rc = fr_pool_infer_shape(l, err);
    if (rc != FR_OK)
        return rc;
    /* The argmax is an int32 index into one input plane. */
    if ((long long)l->in.d[1] * l->in.d[2] > INT32_MAX) {
        char self[96], shape[64];
        fr_layer_format(l, self, sizeof self);
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_EINVAL, "%s: input %s is too large", self, shape);
    }
    return FR_OK;
}

/* One argmax per output element of the slice. */
static size_t maxpool2d_scratch_bytes(const fr_layer *l, int n) {
    return (size_t)(n > 0 ? n : 0) * fr_shape_numel(l->out) * sizeof(int32_t);
}

/* ----------------------------------------------------- forward */

/* The common 2x2, stride 2 window, unrolled and branch-free (the choices are
 * selects, not jumps the predictor would miss half the time, and the loop
 * vectorizes); the same choice as the general loop: the first maximum in
 * row-major order, a NaN wins. */
static void max_of_2x2(const float *src, int w, int oh, int ow, float *dst, int32_t *where) {
    for (int oy = 0; oy < oh; oy++) {
        const float *top = src + (size_t)2 * oy * w, *bottom = top + w;
        float *out = dst + (size_t)oy * ow;
        int32_t *idx = where + (size_t)oy * ow;
        int32_t row = 2 * oy * w;
#pragma omp simd
        for (int ox = 0; ox < ow; ox++) {
            float a = top[2 * ox], b = top[2 * ox + 1], c = bottom[2 * ox], d = bottom[2 * ox + 1];
            int32_t at = row + 2 * ox, best = at;
            float v = a;
            bool take = b > v || b != b;
            v = take ? b : v;
            best = take ? at + 1 : best;
            take = c > v || c != c;
            v = take ? c : v;
            best = take ? at + w : best;
            take = d > v || d != d;
            v = take ? d : v;
            best = take ? at + w + 1 : best;
            out[ox] = v;
            idx[ox] = best;
        }
    }
}

/* Any other window: the maximum over the inputs it covers (the padding
 * counts as -inf), the first in row-major order, a NaN winning. */
typedef struct max_context {
    const float *in;
    float *out;
    int32_t *argmax;
} max_context;

static void take_max(const fr_window *window, void *context) {
    const max_context *c = context;
    const float *src = c->in + window->in_plane;
    int best = window->y0 * window->width + window->x0;
    float best_value = src[best];
    for (int y = window->y0; y < window->y1; y++) {
        for (int x = window->x0; x < window->x1; x++) {
            int at = y * window->width + x;
            float value = src[at];
            if (value > best_value || isnan(value)) {
                best_value = value;
                best = at;
            }
        }
    }
    c->out[window->out] = best_value;
    c->argmax[window->out] = best;
}

static void maxpool2d_forward(const fr_layer *l, const float *in, float *out,
                              int n, void *scratch) {
    fr_pool_window how = fr_pool_window_of(l);
    if (!(how.kernel == 2 && how.stride == 2 && how.pad == 0)) {
        max_context c = {in, out, scratch};
        fr_pool_each_window(l, how, n, take_max, &c);
        return;
    }
    int w = l->in.d[2], oh = l->out.d[1], ow = l->out.d[2];
    size_t in_plane = (size_t)l->in.d[1] * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.d[0];
    int32_t *argmax = scratch;
    for (size_t p = 0; p < planes; p++)
        max_of_2x2(in + p * in_plane, w, oh, ow, out + p * out_plane, argmax + p * out_plane);
}

/* ---------------------------------------------------- backward */

static void maxpool2d_backward(const fr_layer *l, const float *in,
                               const float *out, const float *dout, float *din, const fr_param_grads *grads, int n,
                               void *scratch) {
    (void)in;
    (void)out;
    (void)grads;
    if (!din)
        return;
    size_t in_plane = (size_t)l->in.d[1] * l->in.d[2];
    size_t out_plane = (size_t)l->out.d[1] * l->out.d[2];
    size_t planes = (size_t)n * l->in.d[0];
    const int32_t *argmax = scratch;
    memset(din, 0, planes * in_plane * sizeof *din);
    /* Overlapping windows (stride < kernel) can share a maximum: add. */
    for (size_t p = 0; p < planes; p++) {
        float *dst = din + p * in_plane;
        const float *grad = dout + p * out_plane;
        const int32_t *where = argmax + p * out_plane;
        for (size_t o = 0; o < out_plane; o++)
            dst[where[o]] += grad[o];
    }
}

const fr_layer_ops fr_maxpool2d_ops = {
    .kind = "maxpool2d",
    .args = FR_POOL_ARGS,
    .infer_shape = maxpool2d_infer_shape,
    .scratch_bytes = maxpool2d_scratch_bytes,
    .forward = maxpool2d_forward,
    .backward = maxpool2d_backward,
    .alias = false,
};
