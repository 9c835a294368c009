/*
 * dropout.c - PyTorch's nn.Dropout(p): in train mode each element is zeroed
 * with probability p and the others scaled by 1/(1-p) (inverted dropout); in
 * eval mode (evaluation, or a frozen layer) it passes everything.
 *
 * The mask is a hash of the run's seed, the step, the sample's row in the
 * global batch and the element, never of the thread or rank that computes
 * it, so every layout of ranks and threads drops the same elements.  It is
 * kept in the scratch (one byte per element) for backward.
 */
#include "kernels.h"

#include <string.h>

/* dropout(p=0.5) */
enum { P };

static size_t dropout_scratch_bytes(const fr_layer *l, int n) {
    return (size_t)n * fr_shape_numel(l->in);
}

/* Eval mode: the identity. */
static void dropout_forward(const fr_layer *l, const float *in, float *out, int n,
                            void *scratch) {
    (void)scratch;
    if (out != in)
        memcpy(out, in, (size_t)n * fr_shape_numel(l->in) * sizeof *out);
}

static void dropout_forward_at(const fr_layer *l, const float *in, float *out, int n,
                               void *scratch, uint64_t seed, long step, int first_row) {
    size_t numel = fr_shape_numel(l->in);
    double p = fr_arg_real(l->args[P]);
    float scale = p < 1.0 ? (float)(1.0 / (1.0 - p)) : 0.0f;
    /* Kept when 24 random bits, as a fraction, reach p. */
    uint64_t threshold = (uint64_t)(p * (1 << 24) + 0.5);
    unsigned char *keep = scratch;
    uint64_t layer_key = fr_dropout_key(seed, step, l->name, NULL);
    for (int s = 0; s < n; s++) {
        uint64_t row_key = fr_mix64(layer_key ^ (uint64_t)(first_row + s));
        for (size_t j = 0; j < numel; j++) {
            size_t at = (size_t)s * numel + j;
            keep[at] = (fr_mix64(row_key + j) >> 40) >= threshold;
            out[at] = keep[at] ? in[at] * scale : 0.0f;
        }
    }
}

static void dropout_backward(const fr_layer *l, const float *in, const float *out,
                             const float *dout, float *din, const fr_param_grads *grads, int n,
                             void *scratch) {
    (void)in, (void)out, (void)grads;
    if (!din)
        return;
    size_t count = (size_t)n * fr_shape_numel(l->in);
    if (!l->training) {
        memcpy(din, dout, count * sizeof *din);
        return;
    }
    double p = fr_arg_real(l->args[P]);
    float scale = p < 1.0 ? (float)(1.0 / (1.0 - p)) : 0.0f;
    const unsigned char *keep = scratch;
    for (size_t i = 0; i < count; i++)
        din[i] = keep[i] ? dout[i] * scale : 0.0f;
}

const fr_layer_ops fr_dropout_ops = {
    .kind = "dropout",
    .args = {{"p", .minimum = 0, .optional = true, .default_value = 500000000, .real = true}},
    .infer_shape = fr_infer_same_shape,
    .scratch_bytes = dropout_scratch_bytes,
    .forward = dropout_forward,
    .backward = dropout_backward,
    .forward_at = dropout_forward_at,
};
