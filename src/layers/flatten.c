/*
 * flatten.c - PyTorch's nn.Flatten: a sample of any shape ([C, H, W], [T, C])
 * becomes a vector of all its elements, in C, H, W order.  NCHW storage already is that order, so the layer
 * moves no data: its output aliases its input (ops.alias) and the trainer
 * never calls forward or backward.  Only the shape changes.
 */
#include "kernels.h"

#include <limits.h>

static int flatten_infer_shape(fr_layer *l, fr_error *err) {
    size_t numel = fr_shape_numel(l->in);
    if (numel > INT_MAX) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_EINVAL, "flatten of %s has too many elements", shape);
    }
    l->out = fr_shape_vector((int)numel);
    fr_layer_no_params(l);
    return FR_OK;
}

const fr_layer_ops fr_flatten_ops = {
    .kind = "flatten",
    .infer_shape = flatten_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = NULL,
    .backward = NULL,
    .alias = true,
};
