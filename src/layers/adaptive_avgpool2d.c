/*
 * adaptive_avgpool2d.c - PyTorch's nn.AdaptiveAvgPool2d(output_size) for a
 * square output: each output cell averages the input window PyTorch gives it,
 * rows [floor(i*H/out), ceil((i+1)*H/out)) and the same for columns, so the
 * windows cover the input whatever its size (they overlap when it does not
 * divide).  adaptive_avgpool2d(1) is a global average pool: ResNet's head.
 * No scratch: backward spreads each output gradient evenly over its window.
 * The windows (kernel 0 in fr_pool_window) and the averaging are kernels.c's.
 */
#include "kernels.h"

/* adaptive_avgpool2d(output_size) */
enum { OUTPUT_SIZE };

static const fr_pool_window ADAPTIVE = {0, 0, 0};

/* ------------------------------------------------------- shape */

static int adaptive_avgpool2d_infer_shape(fr_layer *l, fr_error *err) {
    int cells = l->args[OUTPUT_SIZE];
    if (fr_layer_need_image(l, err) != FR_OK)
        return FR_ESHAPE;
    if (cells < 1) {
        char self[64];
        fr_layer_format(l, self, sizeof self);
        return fr_layer_fail(l, err, FR_EINVAL, "%s needs an output size of at least 1", self);
    }
    l->out = fr_shape_chw(l->in.d[0], cells, cells);
    fr_layer_no_params(l);
    return FR_OK;
}

/* ----------------------------------------------------- forward */

static void adaptive_avgpool2d_forward(const fr_layer *l, const float *in, float *out, int n,
                                       void *scratch) {
    (void)scratch;
    fr_avgpool_forward(l, ADAPTIVE, in, out, n);
}

/* ---------------------------------------------------- backward */

static void adaptive_avgpool2d_backward(const fr_layer *l, const float *in, const float *out,
                                        const float *dout, float *din, const fr_param_grads *grads, int n, void *scratch) {
    (void)in, (void)out, (void)grads, (void)scratch;
    if (din)
        fr_avgpool_backward(l, ADAPTIVE, dout, din, n);
}

const fr_layer_ops fr_adaptive_avgpool2d_ops = {
    .kind = "adaptive_avgpool2d",
    .args = {{"output_size", .minimum = 1}},
    .infer_shape = adaptive_avgpool2d_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = adaptive_avgpool2d_forward,
    .backward = adaptive_avgpool2d_backward,
};
