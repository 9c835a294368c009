/*
 * linear.c - the fully connected layer, PyTorch's nn.Linear:
 * out = in · Wᵀ + b with W [out_features, in_features] and b [out_features].
 *
 * As PyTorch's, it acts on every position of a sequence: a sample [T, C]
 * with C = in_features gives [T, out_features], T rows of one GEMM.  A sample
 * whose elements number in_features altogether is read as one flat vector
 * instead (NCHW order, like torch.flatten), so a linear layer may follow a
 * convolution without an explicit flatten; that reading wins where both fit.
 * The whole batch slice is one GEMM in each direction; frozen parameters (no
 * gradient asked for) cost no work.
 * forward_rows and input_grad_cols compute a block of the output (input)
 * features, for the trainer's splits by features.
 * It takes a LoRA adapter (lora.c): out += scale · dropout(in) · Aᵀ · Bᵀ.
 * A frozen weight kept in bf16 (--frozen-dtype bf16) is multiplied in bf16
 * with float32 accumulation (bf16.c); it never has a weight gradient.
 */
#include "kernels.h"
#include "bf16.h"

#include <cblas.h>
#include <limits.h>

/* linear(in_features, out_features, bias=True) */
enum { IN_FEATURES, OUT_FEATURES, BIAS };

static int in_features(const fr_layer *l) { return l->args[IN_FEATURES]; }
static int out_features(const fr_layer *l) { return l->args[OUT_FEATURES]; }
/* GEMM rows for n samples: one per position. */
static int rows_of(const fr_layer *l, int n) {
    return n * (int)(fr_shape_numel(l->in) / (size_t)in_features(l));
}

/* ------------------------------------------------------- shape */

static int linear_infer_shape(fr_layer *l, fr_error *err) {
    int in = in_features(l), out = out_features(l);
    if (in < 1 || out < 1)
        return fr_layer_fail(l, err, FR_EINVAL,
                             "linear(%d, %d) needs at least 1 input and 1 output "
                             "feature", in, out);
    size_t got = fr_shape_numel(l->in);
    bool flat = got == (size_t)in, per_position = l->in.ndim >= 2 && fr_shape_last(l->in) == in;
    if (!flat && !per_position) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE,
                             "linear(%d, %d) expects %d input features, got %s = %zu",
                             in, out, in, shape, got);
    }
    if ((long long)in * out > INT_MAX)
        return fr_layer_fail(l, err, FR_EINVAL,
                             "linear(%d, %d) has too many weights", in, out);
    if (flat) {
        l->out = fr_shape_vector(out);
    } else {
        if (got / (size_t)in * (size_t)out > INT_MAX)
            return fr_layer_fail(l, err, FR_EINVAL, "linear(%d, %d) has too many outputs", in, out);
        l->out = l->in;
        l->out.d[l->out.ndim - 1] = out;
    }
    fr_layer_param_shape(l, FR_WEIGHT, 2, (const int[]){out, in});
    if (l->args[BIAS])
        fr_layer_param_shape(l, FR_BIAS, 1, &out);
    fr_lora_param_shapes(l, in, out);
    l->fan_in = in;
    return FR_OK;
}

/* ----------------------------------------------------- forward */

static size_t linear_scratch_bytes(const fr_layer *l, int n) {
    return fr_lora_scratch_bytes(l, rows_of(l, n), in_features(l));
}

/* The base, then the adapter (dropout where `at` says), then a fused relu. */
static void forward_with(const fr_layer *l, const float *in, float *out, int n, void *scratch,
                         const fr_lora_at *at) {
    int rows = rows_of(l, n), in_n = in_features(l), out_n = out_features(l);
    bool adapter = l->lora.rank > 0;
    const fr_bf16 *w16 = l->param_bf16[FR_WEIGHT];
    if (w16 && rows > 0) {
        /* The bias first and the product onto it, as fr_gemm_affine. */
        const float *bias = l->param_data[FR_BIAS];
        for (int r = 0; bias && r < rows; r++)
            memcpy(out + (size_t)r * out_n, bias, (size_t)out_n * sizeof *out);
        fr_sbgemm(true, rows, out_n, in_n, 1.0f, in, in_n, w16, in_n, bias ? 1.0f : 0.0f, out,
                  out_n);
        if (l->fused_relu && !adapter)
            fr_relu_inplace(out, (size_t)rows * (size_t)out_n);
    } else if (!w16) {
        fr_gemm_affine(in, l->param_data[FR_WEIGHT], l->param_data[FR_BIAS], out, rows, in_n,
                       out_n, l->fused_relu && !adapter);
    }
    if (!adapter || rows <= 0)
        return;
    fr_lora_forward(l, in, out, rows, in_features(l), out_features(l), scratch, at);
    if (l->fused_relu)
        fr_relu_inplace(out, (size_t)rows * (size_t)out_features(l));
}

static void linear_forward(const fr_layer *l, const float *in, float *out,
                           int n, void *scratch) {
    forward_with(l, in, out, n, scratch, NULL);
}

/* Train mode: the adapter's dropout mask depends on where the rows sit. */
static void linear_forward_at(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch, uint64_t seed, long step, int first_row) {
    fr_lora_at at = {seed, step, first_row, n > 0 ? rows_of(l, n) / n : 1};
    forward_with(l, in, out, n, scratch, &at);
}

/* Outputs [a, b) of the slice, from weight rows [a, b). */
static void linear_forward_rows(const fr_layer *l, const float *in, float *out, int n,
                                int row_begin, int row_end) {
    fr_gemm_affine_cols(in, l->param_data[FR_WEIGHT], l->param_data[FR_BIAS], out, rows_of(l, n),
                        in_features(l),
                        out_features(l), row_begin, row_end, l->fused_relu);
}

/* ---------------------------------------------------- backward */

static void linear_backward(const fr_layer *l, const float *in,
                            const float *out, const float *dout, float *din, const fr_param_grads *grads, int n,
                            void *scratch) {
    (void)out;
    int in_n = in_features(l), out_n = out_features(l);
    float *dweight = grads->grad[FR_WEIGHT], *dbias = grads->grad[FR_BIAS];
    n = rows_of(l, n);
    if (n <= 0)
        return;
    /* dW[out x in] = doutᵀ[out x n] · in[n x in] */
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_n, in_n, n, 1.0f, dout, out_n,
                    in, in_n, grads->accumulate & (1u << FR_WEIGHT) ? 1.0f : 0.0f, dweight, in_n);
    if (dbias)
        fr_bias_grad_rows(dout, n, out_n, dbias, grads->accumulate & (1u << FR_BIAS));
    /* din[n x in] = dout[n x out] · W[out x in] */
    if (din && l->param_bf16[FR_WEIGHT])
        fr_sbgemm(false, n, in_n, out_n, 1.0f, dout, out_n, l->param_bf16[FR_WEIGHT], in_n, 0.0f,
                  din, in_n);
    else if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in_n, out_n,
                    1.0f, dout, out_n, l->param_data[FR_WEIGHT], in_n, 0.0f, din, in_n);
    fr_lora_backward(l, in, dout, din, grads, n, in_n, out_n, scratch);
}

/* dW[rows a..b) = doutᵀ[a..b) x n] · in[n x in], over or onto what is there. */
static void linear_weight_grad_rows(const fr_layer *l, const float *in, const float *dout,
                                    int n, float *dweight, int row_begin, int row_end,
                                    bool accumulate) {
    int in_n = in_features(l), out_n = out_features(l);
    n = rows_of(l, n);
    if (n <= 0 || row_end <= row_begin)
        return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, row_end - row_begin, in_n, n, 1.0f,
                dout + row_begin, out_n, in, in_n, accumulate ? 1.0f : 0.0f,
                dweight + (size_t)row_begin * in_n, in_n);
}

/* din[:, a..b) = dout[n x out] · W[:, a..b) */
static void linear_input_grad_cols(const fr_layer *l, const float *dout, float *din, int n,
                                   int col_begin, int col_end) {
    int in_n = in_features(l), out_n = out_features(l);
    n = rows_of(l, n);
    if (n <= 0 || col_end <= col_begin)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, col_end - col_begin, out_n, 1.0f,
                dout, out_n, l->param_data[FR_WEIGHT] + col_begin, in_n, 0.0f, din + col_begin, in_n);
}

const fr_layer_ops fr_linear_ops = {
    .kind = "linear",
    .params = {{"weight", FR_INIT_FAN_IN_UNIFORM},
               {"bias", FR_INIT_FAN_IN_UNIFORM},
               {"lora_A.weight", FR_INIT_FAN_IN_UNIFORM},
               {"lora_B.weight", FR_INIT_ZEROS}},
    .accumulates = true,
    .args = {{"in_features", .minimum = 1},
             {"out_features", .minimum = 1},
             {"bias", .optional = true, .default_value = 1, .keyword_only = true, .boolean = true}},
    .implies_input = FR_IMPLIES_VECTOR,
    .fuses_relu = true,
    .takes_lora = true,
    .bf16_weight = true,
    .infer_shape = linear_infer_shape,
    .scratch_bytes = linear_scratch_bytes,
    .forward = linear_forward,
    .forward_at = linear_forward_at,
    .backward = linear_backward,
    .weight_grad_rows = linear_weight_grad_rows,
    .forward_rows = linear_forward_rows,
    .input_grad_cols = linear_input_grad_cols,
    .alias = false,
};
