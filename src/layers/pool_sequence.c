/*
 * pool_sequence.c - one vector per sequence, for classifying it: [T, C] ->
 * [C], the last position's row (mode='last', what GPT2ForSequenceClassification
 * reads for an unpadded row) or the mean over positions (mode='mean').
 */
#include "kernels.h"

/* pool_sequence(mode='last') */
enum { MODE };
enum { LAST, MEAN };
static const char *const modes[] = {"last", "mean", NULL};

static int pool_sequence_infer_shape(fr_layer *l, fr_error *err) {
    if (l->in.ndim != 2) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE, "pool_sequence expects a sequence [T, C], got %s",
                             shape);
    }
    l->out = fr_shape_vector(l->in.d[1]);
    fr_layer_no_params(l);
    return FR_OK;
}

static void pool_sequence_forward(const fr_layer *l, const float *in, float *out, int n,
                                  void *scratch) {
    (void)scratch;
    int seq = l->in.d[0], dim = l->in.d[1];
    for (int s = 0; s < n; s++) {
        const float *x = in + (size_t)s * seq * dim;
        float *y = out + (size_t)s * dim;
        if (l->args[MODE] == LAST) {
            memcpy(y, x + (size_t)(seq - 1) * dim, (size_t)dim * sizeof *y);
            continue;
        }
        memset(y, 0, (size_t)dim * sizeof *y);
        for (int t = 0; t < seq; t++)
            fr_add_into(y, x + (size_t)t * dim, (size_t)dim);
        for (int c = 0; c < dim; c++)
            y[c] /= (float)seq;
    }
}

static void pool_sequence_backward(const fr_layer *l, const float *in, const float *out,
                                   const float *dout, float *din, const fr_param_grads *grads,
                                   int n, void *scratch) {
    (void)in, (void)out, (void)grads, (void)scratch;
    if (!din)
        return;
    int seq = l->in.d[0], dim = l->in.d[1];
    for (int s = 0; s < n; s++) {
        const float *dy = dout + (size_t)s * dim;
        float *dx = din + (size_t)s * seq * dim;
        if (l->args[MODE] == LAST) {
            memset(dx, 0, (size_t)seq * dim * sizeof *dx);
            memcpy(dx + (size_t)(seq - 1) * dim, dy, (size_t)dim * sizeof *dx);
            continue;
        }
        for (int t = 0; t < seq; t++)
            for (int c = 0; c < dim; c++)
                dx[(size_t)t * dim + c] = dy[c] / (float)seq;
    }
}

const fr_layer_ops fr_pool_sequence_ops = {
    .kind = "pool_sequence",
    .args = {{"mode", .optional = true, .default_value = LAST, .keyword_only = true,
              .choices = modes}},
    .infer_shape = pool_sequence_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = pool_sequence_forward,
    .backward = pool_sequence_backward,
};
