/*
 * attention.c - multi-head self-attention on GPT-2's packed q, k, v (the
 * c_attn output), with or without the causal mask: the kernels
 * fr_attention_forward / fr_attention_backward (transformer_kernels.h says
 * what each argument holds).  This is the hot path of a GPT step beside the
 * linear layers, so each (sample, head) is a few OpenBLAS sgemm calls on
 * strided views of qkv, dout and dqkv (no copies) around one pass per row for
 * the softmax:
 *
 *   forward    S = scale Q K^T   P = softmax(S) per row   O = P V
 *   backward   dP = dO V^T       dS = P * (dP - rowsum(P * dP))
 *              dQ = scale dS K   dK = scale dS^T Q        dV = P^T dO
 *
 * with scale = 1/sqrt(head_dim).  P stays in the caller's scratch from forward
 * to backward (one [seq, seq] matrix per sample and head, zero above the
 * diagonal under the causal mask), and dP becomes dS in place in one more
 * [seq, seq] matrix after them.
 *
 * Under the causal mask half of every product is masked.  The rows go in
 * blocks of CAUSAL_BLOCK_ROWS: a block of rows [first, end) needs only
 * columns [0, end) of S, P, dP, dS, and a block of columns [first, end) (dK,
 * dV) only rows [first, seq), so the products skip the blocks above the
 * diagonal.  Without the mask there is one block of all the rows.
 */
#include "transformer_kernels.h"

#include <cblas.h>
#include <math.h>

/* Rows per block under the causal mask: smaller blocks skip more of the
 * masked half but make more, smaller sgemm calls (bench/attention_bench.c). */
#define CAUSAL_BLOCK_ROWS 32

/* Where one (sample, head)'s operands lie, and how far apart their rows are. */
typedef struct attention_shape {
    int seq, heads, dim, head_dim;
    size_t qkv_stride; /* floats from one row of qkv (and dqkv) to the next: 3 dim */
    int block_rows;    /* rows per block: CAUSAL_BLOCK_ROWS under the mask, else seq */
    bool causal;
    float scale; /* 1 / sqrt(head_dim) */
} attention_shape;

static attention_shape attention_shape_of(int seq, int heads, int dim, bool causal) {
    attention_shape shape;
    shape.seq = seq;
    shape.heads = heads;
    shape.dim = dim;
    shape.head_dim = dim / heads;
    shape.qkv_stride = 3 * (size_t)dim;
    shape.block_rows = causal && seq > CAUSAL_BLOCK_ROWS ? CAUSAL_BLOCK_ROWS : seq;
    shape.causal = causal;
    shape.scale = 1.0f / sqrtf((float)shape.head_dim);
    return shape;
}

/* Offset of (sample, head)'s q row 0 in qkv or dqkv; its k and v follow at
 * +dim and +2 dim. */
static size_t qkv_offset(const attention_shape *shape, int sample, int head) {
    return (size_t)sample * (size_t)shape->seq * shape->qkv_stride +
           (size_t)head * (size_t)shape->head_dim;
}

/* Offset of (sample, head)'s row 0 in out or dout ([seq, dim] per sample). */
static size_t out_offset(const attention_shape *shape, int sample, int head) {
    return (size_t)sample * (size_t)shape->seq * (size_t)shape->dim +
           (size_t)head * (size_t)shape->head_dim;
}

/* (sample, head)'s probabilities P [seq, seq] in the scratch. */
static float *probs_of(const attention_shape *shape, float *scratch, int sample, int head) {
    size_t square = (size_t)shape->seq * (size_t)shape->seq;
    return scratch + ((size_t)sample * (size_t)shape->heads + (size_t)head) * square;
}

/* The positions row t attends to: 0..t under the mask, all of them otherwise. */
static int attended(const attention_shape *shape, int t) {
    return shape->causal ? t + 1 : shape->seq;
}

/* The columns the rows of a block ending at `end` reach: [0, cols). */
static int block_cols(const attention_shape *shape, int end) {
    return shape->causal ? end : shape->seq;
}

/* The first row that reaches a block of columns starting at `first`. */
static int block_first_row(const attention_shape *shape, int first) {
    return shape->causal ? first : 0;
}

static int block_end(const attention_shape *shape, int first) {
    int end = first + shape->block_rows;
    return end < shape->seq ? end : shape->seq;
}

size_t fr_attention_scratch_floats(int n, int seq, int heads, int dim) {
    (void)dim;
    size_t square = (size_t)seq * (size_t)seq;
    /* P for every (sample, head), kept for backward; then dP / dS for one */
    return (size_t)n * (size_t)heads * square + square;
}

/* ----------------------------------------------------- forward */

/* Running maxima kept side by side in largest_of. */
enum { MAX_LANES = 8 };

/*
 * The largest of row[0..count), count >= 1.  Kept in MAX_LANES running maxima
 * that are plain element-wise selects, which GCC and clang both vectorize,
 * where clang will not vectorize a float max reduction (`omp simd
 * reduction(max:)` included) without -ffast-math, and warns that it did not.
 * A NaN may be missed here; the softmax's exp and sum then carry it.
 */
static float largest_of(const float *row, int count) {
    float lane_max[MAX_LANES];
    for (int lane = 0; lane < MAX_LANES; lane++)
        lane_max[lane] = row[0];
    int j = 0;
    for (; j + MAX_LANES <= count; j += MAX_LANES)
        for (int lane = 0; lane < MAX_LANES; lane++)
            lane_max[lane] = row[j + lane] > lane_max[lane] ? row[j + lane] : lane_max[lane];
    float max = row[0];
    for (; j < count; j++)
        max = row[j] > max ? row[j] : max;
    for (int lane = 0; lane < MAX_LANES; lane++)
        max = lane_max[lane] > max ? lane_max[lane] : max;
    return max;
}

/*
 * The scaled scores of `valid` positions in `row` become their softmax (max
 * subtracted first, so no exp overflows); positions [valid, seq) become 0,
 * the masked ones, so that the products may read the whole block.  Three
 * short loops over a row that stays in L1 between them.
 */
static void softmax_row(float *row, int valid, int seq) {
    float max = largest_of(row, valid);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < valid; j++) {
        float e = fr_vector_expf(row[j] - max);
        row[j] = e;
        sum += e;
    }
    float inverse_sum = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < valid; j++)
        row[j] *= inverse_sum;
    memset(row + valid, 0, (size_t)(seq - valid) * sizeof *row);
}

static void head_forward(const attention_shape *shape, const float *q, float *out,
                         float *probs) {
    const float *k = q + shape->dim, *v = q + 2 * shape->dim;
    int seq = shape->seq, head_dim = shape->head_dim, qkv_stride = (int)shape->qkv_stride;
    for (int first = 0; first < seq; first = block_end(shape, first)) {
        int end = block_end(shape, first), rows = end - first, cols = block_cols(shape, end);
        float *block_probs = probs + (size_t)first * (size_t)seq;
        /* S = scale Q K^T for these rows */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, shape->scale,
                    q + (size_t)first * shape->qkv_stride, qkv_stride, k, qkv_stride, 0.0f,
                    block_probs, seq);
        for (int t = first; t < end; t++)
            softmax_row(probs + (size_t)t * (size_t)seq, attended(shape, t), seq);
        /* O = P V */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, cols, 1.0f,
                    block_probs, seq, v, qkv_stride, 0.0f, out + (size_t)first * (size_t)shape->dim,
                    shape->dim);
    }
}

void fr_attention_forward(const float *qkv, float *out, float *scratch, int n, int seq,
                          int heads, int dim, bool causal) {
    attention_shape shape = attention_shape_of(seq, heads, dim, causal);
    for (int sample = 0; sample < n; sample++)
        for (int head = 0; head < heads; head++)
            head_forward(&shape, qkv + qkv_offset(&shape, sample, head),
                         out + out_offset(&shape, sample, head),
                         probs_of(&shape, scratch, sample, head));
}

/* ---------------------------------------------------- backward */

/*
 * The softmax's backward for one row: dS = P * (dP - sum(P * dP)) over the
 * `valid` positions, in place of dP; masked positions [valid, seq) become 0.
 */
static void softmax_backward_row(const float *probs, float *grad, int valid, int seq) {
    float weighted = 0.0f;
#pragma omp simd reduction(+ : weighted)
    for (int j = 0; j < valid; j++)
        weighted += probs[j] * grad[j];
#pragma omp simd
    for (int j = 0; j < valid; j++)
        grad[j] = probs[j] * (grad[j] - weighted);
    memset(grad + valid, 0, (size_t)(seq - valid) * sizeof *grad);
}

static void head_backward(const attention_shape *shape, const float *q, const float *dout,
                          float *dq, const float *probs, float *score_grad) {
    const float *k = q + shape->dim, *v = q + 2 * shape->dim;
    float *dk = dq + shape->dim, *dv = dq + 2 * shape->dim;
    int seq = shape->seq, head_dim = shape->head_dim, dim = shape->dim;
    int qkv_stride = (int)shape->qkv_stride;
    /* By rows: dP = dO V^T, then dS in place, then dQ = scale dS K. */
    for (int first = 0; first < seq; first = block_end(shape, first)) {
        int end = block_end(shape, first), rows = end - first, cols = block_cols(shape, end);
        float *block_grad = score_grad + (size_t)first * (size_t)seq;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, 1.0f,
                    dout + (size_t)first * (size_t)dim, dim, v, qkv_stride, 0.0f, block_grad,
                    seq);
        for (int t = first; t < end; t++)
            softmax_backward_row(probs + (size_t)t * (size_t)seq,
                                 score_grad + (size_t)t * (size_t)seq, attended(shape, t), seq);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, cols,
                    shape->scale, block_grad, seq, k, qkv_stride, 0.0f,
                    dq + (size_t)first * shape->qkv_stride, qkv_stride);
    }
    /* By columns, once every row of dS is there: dV = P^T dO, dK = scale dS^T Q. */
    for (int first = 0; first < seq; first = block_end(shape, first)) {
        int end = block_end(shape, first), cols = end - first;
        int first_row = block_first_row(shape, first), rows = seq - first_row;
        size_t corner = (size_t)first_row * (size_t)seq + (size_t)first;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, head_dim, rows, 1.0f,
                    probs + corner, seq, dout + (size_t)first_row * (size_t)dim, dim, 0.0f,
                    dv + (size_t)first * shape->qkv_stride, qkv_stride);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, head_dim, rows, shape->scale,
                    score_grad + corner, seq, q + (size_t)first_row * shape->qkv_stride,
                    qkv_stride, 0.0f, dk + (size_t)first * shape->qkv_stride, qkv_stride);
    }
}

void fr_attention_backward(const float *qkv, const float *dout, float *dqkv, float *scratch,
                           int n, int seq, int heads, int dim, bool causal) {
    attention_shape shape = attention_shape_of(seq, heads, dim, causal);
    float *score_grad = scratch + (size_t)n * (size_t)heads * (size_t)seq * (size_t)seq;
    for (int sample = 0; sample < n; sample++)
        for (int head = 0; head < heads; head++) {
            size_t at = qkv_offset(&shape, sample, head);
            head_backward(&shape, qkv + at, dout + out_offset(&shape, sample, head), dqkv + at,
                          probs_of(&shape, scratch, sample, head), score_grad);
        }
}

/* ------------------------------------------------ the layer kind */

#include "kernels.h"

/* attention(num_heads, causal=True): packed q, k, v [T, 3C] -> [T, C]. */
enum { NUM_HEADS, CAUSAL };

static int attention_infer_shape(fr_layer *l, fr_error *err) {
    int heads = l->args[NUM_HEADS];
    if (l->in.ndim != 2 || l->in.d[1] % 3 != 0 || (l->in.d[1] / 3) % heads != 0) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE, "attention(%d) expects packed q, k, v [T, 3C] "
                             "with C a multiple of %d, got %s", heads, heads, shape);
    }
    l->out = fr_shape_2d(l->in.d[0], l->in.d[1] / 3);
    fr_layer_no_params(l);
    return FR_OK;
}

static size_t attention_scratch_bytes(const fr_layer *l, int n) {
    return fr_attention_scratch_floats(n > 0 ? n : 0, l->in.d[0], l->args[NUM_HEADS],
                                       l->out.d[1]) * sizeof(float);
}

static void attention_forward(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch) {
    fr_attention_forward(in, out, scratch, n, l->in.d[0], l->args[NUM_HEADS], l->out.d[1],
                         l->args[CAUSAL]);
}

static void attention_backward(const fr_layer *l, const float *in, const float *out,
                               const float *dout, float *din, const fr_param_grads *grads, int n,
                               void *scratch) {
    (void)out, (void)grads;
    if (din)
        fr_attention_backward(in, dout, din, scratch, n, l->in.d[0], l->args[NUM_HEADS],
                              l->out.d[1], l->args[CAUSAL]);
}

const fr_layer_ops fr_attention_ops = {
    .kind = "attention",
    .args = {{"num_heads", .minimum = 1},
             {"causal", .optional = true, .default_value = 1, .keyword_only = true,
              .boolean = true}},
    .infer_shape = attention_infer_shape,
    .scratch_bytes = attention_scratch_bytes,
    .forward = attention_forward,
    .backward = attention_backward,
};
