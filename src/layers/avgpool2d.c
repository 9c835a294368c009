/*
 * avgpool2d.c - average pooling, PyTorch's nn.AvgPool2d(kernel, stride,
 * padding) with its other defaults: floor mode, count_include_pad=True;
 * stride = kernel unless given (PyTorch's stride=None).  The padding counts
 * as zeros, so every window is divided by kernel x kernel (floor mode keeps
 * each window inside the padded input).  No scratch: backward spreads each
 * output gradient evenly over the inputs its window covers.  The windows and
 * the averaging are kernels.c's, shared with maxpool2d and
 * adaptive_avgpool2d.
 */
#include "kernels.h"

/* ----------------------------------------------------- forward */

static void avgpool2d_forward(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch) {
    (void)scratch;
    fr_avgpool_forward(l, fr_pool_window_of(l), in, out, n);
}

/* ---------------------------------------------------- backward */

static void avgpool2d_backward(const fr_layer *l, const float *in, const float *out,
                               const float *dout, float *din, const fr_param_grads *grads, int n, void *scratch) {
    (void)in, (void)out, (void)grads, (void)scratch;
    if (din)
        fr_avgpool_backward(l, fr_pool_window_of(l), dout, din, n);
}

const fr_layer_ops fr_avgpool2d_ops = {
    .kind = "avgpool2d",
    .args = FR_POOL_ARGS,
    .infer_shape = fr_pool_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = avgpool2d_forward,
    .backward = avgpool2d_backward,
};
