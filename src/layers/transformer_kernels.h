/*
 * transformer_kernels.h - the numerical kernels of a GPT-style transformer
 * (layer norm, GELU, token and position embeddings, multi-head self-attention)
 * as plain functions over flat float arrays, forward and backward side by
 * side.  They know nothing of layers, shapes or the trainer: the layer ops
 * tables that wire them into a model call them with the rows of one thread.
 * Each is single-threaded (the trainer runs one call per thread on its own
 * rows) and each matches its PyTorch counterpart, named below, to float
 * rounding; tests/test_transformer_kernels.c checks them against float64.
 *
 * Conventions: "rows" are independent vectors of `dim` floats, row-major;
 * a gradient argument that may be NULL is one the caller does not want; a
 * parameter gradient is overwritten by the call's gradient unless
 * `accumulate`, when the call's gradient is added to what is there.
 */
#ifndef FROST_TRANSFORMER_KERNELS_H
#define FROST_TRANSFORMER_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------- layer norm */

/*
 * nn.LayerNorm(dim, eps) over the last dimension of in [rows, dim]:
 * out = (x - mean) * rstd * gamma + beta, with the biased variance
 * (rstd = 1 / sqrt(var + eps)).  gamma and beta [dim] may each be NULL (no
 * scale: 1, no shift: 0; elementwise_affine=False passes both NULL).  Saves
 * each row's mean and rstd ([rows] each) for backward.  out may equal in.
 */
void fr_layernorm_forward(const float *in, const float *gamma, const float *beta, float *out,
                          float *mean, float *rstd, long rows, int dim, float eps);

/*
 * The gradients of fr_layernorm_forward from dout [rows, dim], with the mean
 * and rstd it saved: din [rows, dim] (always overwritten), dgamma and dbeta
 * [dim] (overwritten, or added to when accumulate).  Each of din, dgamma,
 * dbeta may be NULL; gamma NULL means a scale of 1 (dgamma is then the
 * gradient at gamma = 1).  din may equal dout, not in.
 */
void fr_layernorm_backward(const float *in, const float *dout, const float *gamma,
                           const float *mean, const float *rstd, long rows, int dim, float *din,
                           float *dgamma, float *dbeta, bool accumulate);

/* ---------------------------------------------------------------- GELU */

/*
 * nn.GELU, element-wise over count floats: approximate='none' (x * Phi(x),
 * Phi the normal CDF, through erf) or, with tanh_approx, approximate='tanh'
 * (GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).
 * out may equal in.
 */
void fr_gelu_forward(const float *in, float *out, size_t count, bool tanh_approx);

/* din = dout * GELU'(in), the same form as forward; din may equal dout. */
void fr_gelu_backward(const float *in, const float *dout, float *din, size_t count,
                      bool tanh_approx);

/* ---------------------------------------------------------- embeddings */

/*
 * nn.Embedding: out row r [dim] = table row ids[r], for rows ids; table is
 * [vocab, dim].  The caller has checked every id lies in [0, vocab).
 */
void fr_embedding_forward(const int32_t *ids, const float *table, float *out, long rows,
                          int dim);

/*
 * dtable [vocab, dim] row ids[r] += dout row r for every r (an id repeated
 * sums its rows).  Unless accumulate, the whole dtable is zeroed first.
 */
void fr_embedding_backward(const int32_t *ids, const float *dout, float *dtable, long rows,
                           int dim, int vocab, bool accumulate);

/*
 * GPT-2's position embedding (wpe) added to n samples of [seq, dim]:
 * out[s][t] = in[s][t] + table[t] for t < seq; table has at least seq rows
 * (the model's context length).  out may equal in.
 */
void fr_position_embedding_forward(const float *in, const float *table, float *out, int n,
                                   int seq, int dim);

/*
 * din = dout (skipped when din is NULL or equals dout); dtable rows [0, seq)
 * = the sum over the n samples of dout[s] (added to what is there when
 * accumulate); dtable may be NULL (a frozen table).  The function does not
 * know the table's length, so rows at and beyond seq, positions this call
 * never reached, are never touched: left as they are when accumulating, and
 * NOT zeroed otherwise either: the caller zeroes them once (their gradient is
 * 0 whenever seq is shorter than the table) or does not look at them.
 */
void fr_position_embedding_backward(const float *dout, float *din, float *dtable, int n,
                                    int seq, int dim, bool accumulate);

/* ----------------------------------------------------------- attention */

/*
 * Multi-head self-attention on GPT-2's packed c_attn output: qkv is n samples
 * of [seq, 3 dim], q in columns [0, dim), k in [dim, 2 dim), v in
 * [2 dim, 3 dim); head h of `heads` uses columns [h D, (h+1) D) of each,
 * D = dim / heads (dim must be a multiple of heads).  out is n samples of
 * [seq, dim], head h's output in its columns [h D, (h+1) D):
 *     out_h = softmax(q_h k_h^T / sqrt(D) + mask) v_h,
 * the mask -inf above the diagonal when causal (position t attends to
 * positions 0..t) and 0 otherwise; this is
 * F.scaled_dot_product_attention(q, k, v, is_causal=causal) with q, k, v
 * viewed as [n, heads, seq, D].
 *
 * scratch holds fr_attention_scratch_floats(n, seq, heads, dim) floats: the
 * forward leaves the softmax probabilities there for the backward (so the
 * same pointer, unchanged in between, goes to both), and the backward uses
 * the rest as working room.  qkv, out, dout and dqkv do not overlap.
 */
size_t fr_attention_scratch_floats(int n, int seq, int heads, int dim);

void fr_attention_forward(const float *qkv, float *out, float *scratch, int n, int seq,
                          int heads, int dim, bool causal);

/*
 * dqkv [n, seq, 3 dim] (overwritten) from dout [n, seq, dim], with the qkv
 * the forward saw and its scratch.
 */
void fr_attention_backward(const float *qkv, const float *dout, float *dqkv, float *scratch,
                           int n, int seq, int heads, int dim, bool causal);

/* ---------------------------------- shared: wider vectors where there are */

/*
 * FR_ELEMENTWISE_CLONES before an element-wise kernel's definition compiles
 * it twice on x86-64 with GCC (glibc picks one at load time): for AVX2, 8
 * floats a vector, and for the baseline's SSE2, 4.  Only for loops whose
 * every element is computed alone (no reduction, whose order would follow
 * the vector's width, and no FMA: AVX2 does not imply it, and ISO C mode
 * contracts nothing), so both give the same bits and a run's results do not
 * depend on the machine.  Not with clang: clang 14 names the function's
 * entry point NAME.ifunc, and other files calling NAME do not link.
 */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define FR_ELEMENTWISE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FR_ELEMENTWISE_CLONES
#endif

/* ----------------------------------------------- shared: a vector exp */

/*
 * exp(x) for the kernels' element-wise loops, written so that `omp simd`
 * vectorizes it (glibc's expf is a call the compiler cannot vectorize without
 * -ffast-math): Cephes' expf, x = n ln2 + r with |r| <= ln2/2 and a degree-6
 * polynomial for e^r, within 2 ulp of the true value.  Arguments below -87.3
 * give 0 (no denormals), above 88 the value at 88 (1.65e38, never inf, so
 * that e / (1 + e) stays finite); NaN gives NaN.  Rounding to n adds and
 * subtracts 1.5 * 2^23, which leaves n in the low bits of the sum, read back
 * without a float-to-int conversion.  The ends of the range are applied as
 * bit masks, after computing on x as it is: a clamp or a branch lets the
 * compiler fold the clamped cases into constants, which puts the arithmetic
 * under a branch, and arithmetic that may raise a float exception under a
 * branch is something it will not vectorize.
 */
static inline float fr_vector_expf(float x) {
    const float exp_max = 88.0f, exp_min = -87.3f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    const uint32_t exp_of_max_bits = 0x7EF882B7u; /* 1.6516363e38f = expf(88) */
    float shifted = x * 1.44269504088896341f + round_magic;
    float whole = shifted - round_magic;
    /* ln 2 in two parts, so that whole * ln2 is exact in the first one */
    float r = x - whole * 0.693359375f + whole * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e_r = p * r * r + r + 1.0f;
    uint32_t shifted_bits, round_bits, scale_bits, value_bits;
    float round_float = round_magic, scale, value;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    memcpy(&round_bits, &round_float, sizeof round_bits);
    /* whole + 127 in the exponent field: 2^whole (garbage out of range,
     * where the masks below replace it) */
    scale_bits = (shifted_bits - round_bits + 127u) << 23;
    memcpy(&scale, &scale_bits, sizeof scale);
    value = e_r * scale;
    uint32_t in_range = -(uint32_t)!(x < exp_min) & -(uint32_t)!(x > exp_max);
    uint32_t above = -(uint32_t)(x > exp_max);
    memcpy(&value_bits, &value, sizeof value_bits);
    value_bits = (value_bits & in_range) | (exp_of_max_bits & above);
    memcpy(&value, &value_bits, sizeof value);
    return value;
}

#endif
