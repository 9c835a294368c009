/*
 * conv1d.c - Hugging Face's Conv1D(nf, nx), the linear layer of GPT-2's
 * checkpoints: out = in · W + b with W stored [nx, nf] (in, out), the
 * transpose of nn.Linear's, and b [nf].  Like linear it acts on every
 * position of a sequence [T, nx] (T rows of one GEMM) or on a sample of nx
 * elements read flat.  Initialised as Hugging Face does: W ~ N(0, 0.02), b = 0.
 * Its weight may be tied (its backward adds into a gradient when asked).
 * It takes a LoRA adapter (lora.c) as PEFT puts one beside a Conv1D
 * (fan_in_fan_out): A [r, nx], B [nf, r], out += scale · dropout(in) · Aᵀ · Bᵀ.
 * A frozen weight kept in bf16 is multiplied in bf16 (bf16.c).
 */
#include "kernels.h"
#include "bf16.h"

#include <cblas.h>
#include <limits.h>

/* conv1d(nf, nx): out features first, as Hugging Face's constructor takes them. */
enum { NF, NX };

static int rows_of(const fr_layer *l, int n) {
    return n * (int)(fr_shape_numel(l->in) / (size_t)l->args[NX]);
}

static int conv1d_infer_shape(fr_layer *l, fr_error *err) {
    int nf = l->args[NF], nx = l->args[NX];
    size_t got = fr_shape_numel(l->in);
    bool per_position = l->in.ndim >= 2 && fr_shape_last(l->in) == nx;
    if (got != (size_t)nx && !per_position) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE, "conv1d(%d, %d) expects %d input features, got %s",
                             nf, nx, nx, shape);
    }
    if ((long long)nf * nx > INT_MAX || got / (size_t)nx * (size_t)nf > INT_MAX)
        return fr_layer_fail(l, err, FR_EINVAL, "conv1d(%d, %d) is too large", nf, nx);
    l->out = l->in;
    if (per_position)
        l->out.d[l->out.ndim - 1] = nf;
    else
        l->out = fr_shape_vector(nf);
    fr_layer_no_params(l);
    fr_layer_param_shape(l, FR_WEIGHT, 2, (const int[]){nx, nf});
    fr_layer_param_shape(l, FR_BIAS, 1, &nf);
    fr_lora_param_shapes(l, nx, nf);
    l->fan_in = nx;
    return FR_OK;
}

static size_t conv1d_scratch_bytes(const fr_layer *l, int n) {
    return fr_lora_scratch_bytes(l, rows_of(l, n), l->args[NX]);
}

static void forward_with(const fr_layer *l, const float *in, float *out, int n, void *scratch,
                         const fr_lora_at *at) {
    int rows = rows_of(l, n), nf = l->args[NF], nx = l->args[NX];
    if (rows <= 0)
        return;
    /* The bias first and the GEMM onto it, as addmm does. */
    for (int r = 0; r < rows; r++)
        memcpy(out + (size_t)r * nf, l->param_data[FR_BIAS], (size_t)nf * sizeof *out);
    if (l->param_bf16[FR_WEIGHT])
        fr_sbgemm(false, rows, nf, nx, 1.0f, in, nx, l->param_bf16[FR_WEIGHT], nf, 1.0f, out, nf);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, nf, nx, 1.0f, in, nx,
                    l->param_data[FR_WEIGHT], nf, 1.0f, out, nf);
    fr_lora_forward(l, in, out, rows, nx, nf, scratch, at);
}

static void conv1d_forward(const fr_layer *l, const float *in, float *out, int n, void *scratch) {
    forward_with(l, in, out, n, scratch, NULL);
}

/* Train mode: the adapter's dropout mask depends on where the rows sit. */
static void conv1d_forward_at(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch, uint64_t seed, long step, int first_row) {
    fr_lora_at at = {seed, step, first_row, n > 0 ? rows_of(l, n) / n : 1};
    forward_with(l, in, out, n, scratch, &at);
}

static void conv1d_backward(const fr_layer *l, const float *in, const float *out,
                            const float *dout, float *din, const fr_param_grads *grads, int n,
                            void *scratch) {
    (void)out;
    int rows = rows_of(l, n), nf = l->args[NF], nx = l->args[NX];
    if (rows <= 0)
        return;
    /* dW[nx x nf] = inᵀ[nx x rows] · dout[rows x nf] */
    if (grads->grad[FR_WEIGHT])
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nx, nf, rows, 1.0f, in, nx, dout, nf,
                    grads->accumulate & (1u << FR_WEIGHT) ? 1.0f : 0.0f, grads->grad[FR_WEIGHT],
                    nf);
    if (grads->grad[FR_BIAS])
        fr_bias_grad_rows(dout, rows, nf, grads->grad[FR_BIAS],
                          grads->accumulate & (1u << FR_BIAS));
    /* din[rows x nx] = dout[rows x nf] · Wᵀ[nf x nx] */
    if (din && l->param_bf16[FR_WEIGHT])
        fr_sbgemm(true, rows, nx, nf, 1.0f, dout, nf, l->param_bf16[FR_WEIGHT], nf, 0.0f, din, nx);
    else if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nx, nf, 1.0f, dout, nf,
                    l->param_data[FR_WEIGHT], nf, 0.0f, din, nx);
    fr_lora_backward(l, in, dout, din, grads, rows, nx, nf, scratch);
}

const fr_layer_ops fr_conv1d_ops = {
    .kind = "conv1d",
    .params = {{"weight", FR_INIT_NORMAL_SMALL},
               {"bias", FR_INIT_ZEROS},
               {"lora_A.weight", FR_INIT_FAN_IN_UNIFORM},
               {"lora_B.weight", FR_INIT_ZEROS}},
    .accumulates = true,
    .args = {{"nf", .minimum = 1}, {"nx", .minimum = 1}},
    .takes_lora = true,
    .bf16_weight = true,
    .infer_shape = conv1d_infer_shape,
    .scratch_bytes = conv1d_scratch_bytes,
    .forward = conv1d_forward,
    .forward_at = conv1d_forward_at,
    .backward = conv1d_backward,
};
