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

/* The maximum of src over rows [y0, y1) and columns [x0, x1) of a w-wide
 * plane and its flat index: the first in row-major order, a NaN winning (a
 * later NaN wins over an earlier one, as PyTorch's loop has it). */
static inline float max_over(const float *src, int w, int y0, int y1, int x0, int x1,
                             int32_t *where) {
    int32_t best = y0 * w + x0;
    float v = src[best];
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            int32_t at = y * w + x;
            float value = src[at];
            bool take = value > v || value != value;
            v = take ? value : v;
            best = take ? at : best;
        }
    *where = best;
    return v;
}

/* Any other window over one plane: the padding counts as -inf, so a window
 * at the edge is the maximum over the inputs it covers.  The columns whose
 * windows lie inside the row, [inner0, inner1), go branch-free, all at once
 * for each tap (resnet18's 3x3 stride 2 stem pool: 27 of 28 columns); the few
 * at the edges one by one. */
static void max_of_windows(const float *src, int h, int w, int oh, int ow, fr_pool_window how,
                           float *dst, int32_t *where) {
    int k = how.kernel, s = how.stride, pad = how.pad;
    int inner1 = w + pad - k >= 0 ? (w + pad - k) / s + 1 : 0;
    inner1 = inner1 < ow ? inner1 : ow;
    int inner0 = (pad + s - 1) / s;
    inner0 = inner0 < inner1 ? inner0 : inner1;
    for (int oy = 0; oy < oh; oy++) {
        int y0 = oy * s - pad, y1 = y0 + k;
        y0 = y0 < 0 ? 0 : y0;
        y1 = y1 < h ? y1 : h;
        float *out = dst + (size_t)oy * ow;
        int32_t *idx = where + (size_t)oy * ow;
        for (int edge = 0; edge < 2; edge++) /* [0, inner0), then [inner1, ow) */
            for (int ox = edge ? inner1 : 0; ox < (edge ? ow : inner0); ox++) {
                int x0 = ox * s - pad, x1 = x0 + k;
                out[ox] = max_over(src, w, y0, y1, x0 < 0 ? 0 : x0, x1 < w ? x1 : w, &idx[ox]);
            }
        /* Tap by tap in the window's row-major order, each over all the
         * inner columns at once: the loop over columns is the inner one, so
         * it vectorizes. */
        for (int ox = inner0; ox < inner1; ox++) {
            idx[ox] = y0 * w + ox * s - pad;
            out[ox] = src[idx[ox]];
        }
        for (int y = y0; y < y1; y++)
            for (int kx = 0; kx < k; kx++) {
                int32_t first = y * w + kx - pad;
#pragma omp simd
                for (int ox = inner0; ox < inner1; ox++) {
                    int32_t at = first + ox * s;
                    float value = src[at];
                    bool take = value > out[ox] || value != value;
                    out[ox] = take ? value : out[ox];
                    idx[ox] = take ? at : idx[ox];
                }
            }
    }
}

static void maxpool2d_forward(const fr_layer *l, const float *in, float *out,
                              int n, void *scratch) {
    fr_pool_window how = fr_pool_window_of(l);
    int h = l->in.d[1], w = l->in.d[2], oh = l->out.d[1], ow = l->out.d[2];
    size_t in_plane = (size_t)h * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.d[0];
    int32_t *argmax = scratch;
    bool two_by_two = how.kernel == 2 && how.stride == 2 && how.pad == 0;
    for (size_t p = 0; p < planes; p++) {
        if (two_by_two)
            max_of_2x2(in + p * in_plane, w, oh, ow, out + p * out_plane, argmax + p * out_plane);
        else
            max_of_windows(in + p * in_plane, h, w, oh, ow, how, out + p * out_plane,
                           argmax + p * out_plane);
    }
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
