/*
 * relu.c - the rectifier, PyTorch's nn.ReLU: out = max(in, 0), element-wise,
 * any shape.  It has no parameters and no scratch: backward reads the mask
 * from its own output, as PyTorch does, so the gradient at exactly 0 is 0.
 */
#include "kernels.h"

/* ----------------------------------------------------- forward */

static void relu_forward(const fr_layer *l, const float *in, float *out, int n,
                         void *scratch) {
    (void)scratch;
    size_t count = (size_t)n * fr_shape_numel(l->in);
    /* Written as "negative -> 0" so a NaN passes through, as in PyTorch, and
     * the trainer's non-finite check still sees it. */
    if (out == in) {
        fr_relu_inplace(out, count);
        return;
    }
#pragma omp simd
    for (size_t i = 0; i < count; i++)
        out[i] = in[i] < 0.0f ? 0.0f : in[i];
}

/* ---------------------------------------------------- backward */

static void relu_backward(const fr_layer *l, const float *in, const float *out,
                          const float *dout, float *din, const fr_param_grads *grads, int n, void *scratch) {
    (void)in;
    (void)grads;
    (void)scratch;
    if (!din)
        return;
    size_t count = (size_t)n * fr_shape_numel(l->in);
    /* Both loads unconditional, so the select vectorizes: a branch on the
     * mask is a coin flip the predictor misses half the time. */
#pragma omp simd
    for (size_t i = 0; i < count; i++) {
        float g = dout[i];
        din[i] = out[i] > 0.0f ? g : 0.0f;
    }
}

const fr_layer_ops fr_relu_ops = {
    .kind = "relu",
    .infer_shape = fr_infer_same_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = relu_forward,
    .backward = relu_backward,
    .alias = false,
    .inplace = true,
};
