/*
 * residual.c - the join that ends a residual block: output = body(x) +
 * shortcut(x), the shortcut being the identity unless the block gives layers
 * for it.  It is not a kind of the registry (the model text writes
 * `residual NAME { ... }`); fr_model_end_residual adds it, named as the block,
 * after the shortcut's layers.  Its two inputs are fr_layer.input (the body's
 * last layer) and fr_layer.shortcut; both must have the shape the model
 * checked when the block closed.  The trainer forms the sum (ops.join) and in
 * backward hands the join's gradient to both branches unchanged.
 */
#include "kernels.h"

const fr_layer_ops fr_residual_ops = {
    .kind = "residual",
    .infer_shape = fr_infer_same_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = NULL,
    .backward = NULL,
    .join = true,
};
