/*
 * embedding.c - the two embeddings of a GPT: tokens (nn.Embedding, a table
 * row per id) and positions (GPT-2's wpe, a table row per position added to
 * each sample's activations).  Forward and backward side by side; the
 * backward of both is a scatter-add of rows of the output gradient into rows
 * of the table's gradient.
 */
#include "transformer_kernels.h"
#include "bf16.h"

#include <limits.h>

/* dst[i] += src[i] for count floats: a row (or a sample) of gradient. */
static void add_floats(float *dst, const float *src, size_t count) {
#pragma omp simd
    for (size_t i = 0; i < count; i++)
        dst[i] += src[i];
}

/* ------------------------------------------------------ tokens */

void fr_embedding_forward(const int32_t *ids, const float *table, float *out, long rows,
                          int dim) {
    size_t row_bytes = (size_t)dim * sizeof *table;
    for (long r = 0; r < rows; r++)
        memcpy(out + (size_t)r * (size_t)dim, table + (size_t)ids[r] * (size_t)dim, row_bytes);
}

void fr_embedding_backward(const int32_t *ids, const float *dout, float *dtable, long rows,
                           int dim, int vocab, bool accumulate) {
    if (!accumulate)
        memset(dtable, 0, (size_t)vocab * (size_t)dim * sizeof *dtable);
    for (long r = 0; r < rows; r++)
        add_floats(dtable + (size_t)ids[r] * (size_t)dim, dout + (size_t)r * (size_t)dim,
                   (size_t)dim);
}

/* --------------------------------------------------- positions */

void fr_position_embedding_forward(const float *in, const float *table, float *out, int n,
                                   int seq, int dim) {
    size_t sample_floats = (size_t)seq * (size_t)dim;
    for (int s = 0; s < n; s++) {
        const float *x = in + (size_t)s * sample_floats;
        float *y = out + (size_t)s * sample_floats;
#pragma omp simd
        for (size_t i = 0; i < sample_floats; i++)
            y[i] = x[i] + table[i];
    }
}

void fr_position_embedding_backward(const float *dout, float *din, float *dtable, int n,
                                    int seq, int dim, bool accumulate) {
    size_t sample_floats = (size_t)seq * (size_t)dim;
    if (din && din != dout)
        memcpy(din, dout, (size_t)n * sample_floats * sizeof *din);
    if (!dtable)
        return;
    if (!accumulate)
        memset(dtable, 0, sample_floats * sizeof *dtable);
    for (int s = 0; s < n; s++)
        add_floats(dtable, dout + (size_t)s * sample_floats, sample_floats);
}

/* ------------------------------------------------ the layer kinds */

#include "kernels.h"

/* embedding(num_embeddings, embedding_dim): token ids [T] -> [T, dim]. */
enum { NUM_EMBEDDINGS, EMBEDDING_DIM };

static int embedding_infer_shape(fr_layer *l, fr_error *err) {
    int vocab = l->args[NUM_EMBEDDINGS], dim = l->args[EMBEDDING_DIM];
    if (l->in.ndim != 1) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE, "embedding(%d, %d) reads a sequence of token "
                             "ids [T], got %s", vocab, dim, shape);
    }
    if ((long long)vocab * dim > INT_MAX || (long long)l->in.d[0] * dim > INT_MAX)
        return fr_layer_fail(l, err, FR_EINVAL, "embedding(%d, %d) is too large", vocab, dim);
    l->out = fr_shape_2d(l->in.d[0], dim);
    fr_layer_no_params(l);
    fr_layer_param_shape(l, FR_WEIGHT, 2, (const int[]){vocab, dim});
    return FR_OK;
}

static void embedding_forward(const fr_layer *l, const float *in, float *out, int n,
                              void *scratch) {
    (void)scratch;
    const int32_t *ids = (const int32_t *)(const void *)in;
    long rows = (long)n * l->in.d[0];
    int dim = l->args[EMBEDDING_DIM];
    const fr_bf16 *table16 = l->param_bf16[FR_WEIGHT];
    if (!table16) {
        fr_embedding_forward(ids, l->param_data[FR_WEIGHT], out, rows, dim);
        return;
    }
    /* A frozen table kept in bf16: each row widened (exactly). */
    for (long r = 0; r < rows; r++)
        fr_bf16_to_f32(out + (size_t)r * (size_t)dim, table16 + (size_t)ids[r] * (size_t)dim,
                       (size_t)dim);
}

/* Token ids have no gradient: din is never asked for. */
static void embedding_backward(const fr_layer *l, const float *in, const float *out,
                               const float *dout, float *din, const fr_param_grads *grads, int n,
                               void *scratch) {
    (void)out, (void)din, (void)scratch;
    if (grads->grad[FR_WEIGHT])
        fr_embedding_backward((const int32_t *)(const void *)in, dout, grads->grad[FR_WEIGHT],
                              (long)n * l->in.d[0], l->args[EMBEDDING_DIM],
                              l->args[NUM_EMBEDDINGS], grads->accumulate & (1u << FR_WEIGHT));
}

const fr_layer_ops fr_embedding_ops = {
    .kind = "embedding",
    .params = {{"weight", FR_INIT_NORMAL}},
    .bf16_weight = true,
    .input_dtype = FR_I32,
    .accumulates = true,
    .args = {{"num_embeddings", .minimum = 1}, {"embedding_dim", .minimum = 1}},
    .infer_shape = embedding_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = embedding_forward,
    .backward = embedding_backward,
};

/* position_embedding(num_positions, embedding_dim): x [T, dim] + table[t]
 * (GPT-2's wpe, an nn.Embedding of positions 0..T-1 added to the tokens'). */
enum { NUM_POSITIONS };

static int position_embedding_infer_shape(fr_layer *l, fr_error *err) {
    int positions = l->args[NUM_POSITIONS], dim = l->args[EMBEDDING_DIM];
    if (l->in.ndim != 2 || l->in.d[1] != dim || l->in.d[0] > positions) {
        char shape[64];
        fr_shape_format(l->in, shape, sizeof shape);
        return fr_layer_fail(l, err, FR_ESHAPE, "position_embedding(%d, %d) expects [T, %d] "
                             "with T at most %d, got %s", positions, dim, dim, positions, shape);
    }
    if ((long long)positions * dim > INT_MAX)
        return fr_layer_fail(l, err, FR_EINVAL, "position_embedding(%d, %d) is too large",
                             positions, dim);
    l->out = l->in;
    fr_layer_no_params(l);
    fr_layer_param_shape(l, FR_WEIGHT, 2, (const int[]){positions, dim});
    return FR_OK;
}

static void position_embedding_forward(const fr_layer *l, const float *in, float *out, int n,
                                       void *scratch) {
    (void)scratch;
    const fr_bf16 *table16 = l->param_bf16[FR_WEIGHT];
    if (!table16) {
        fr_position_embedding_forward(in, l->param_data[FR_WEIGHT], out, n, l->in.d[0],
                                      l->in.d[1]);
        return;
    }
    /* A frozen table kept in bf16: widened a row at a time (exactly), then added. */
    int seq = l->in.d[0], dim = l->in.d[1];
    float row[256];
    for (int s = 0; s < n; s++)
        for (int t = 0; t < seq; t++) {
            size_t at = ((size_t)s * (size_t)seq + (size_t)t) * (size_t)dim;
            for (int c = 0; c < dim; c += 256) {
                int w = dim - c < 256 ? dim - c : 256;
                fr_bf16_to_f32(row, table16 + (size_t)t * (size_t)dim + (size_t)c, (size_t)w);
                for (int j = 0; j < w; j++)
                    out[at + (size_t)c + (size_t)j] = in[at + (size_t)c + (size_t)j] + row[j];
            }
        }
}

static void position_embedding_backward(const fr_layer *l, const float *in, const float *out,
                                        const float *dout, float *din,
                                        const fr_param_grads *grads, int n, void *scratch) {
    (void)in, (void)out, (void)scratch;
    int seq = l->in.d[0], dim = l->in.d[1];
    float *dtable = grads->grad[FR_WEIGHT];
    bool accumulate = grads->accumulate & (1u << FR_WEIGHT);
    fr_position_embedding_backward(dout, din, dtable, n, seq, dim, accumulate);
    /* Positions past the sequence get no gradient, but the slab is written over. */
    if (dtable && !accumulate)
        memset(dtable + (size_t)seq * dim, 0,
               (size_t)(l->args[NUM_POSITIONS] - seq) * (size_t)dim * sizeof *dtable);
}

const fr_layer_ops fr_position_embedding_ops = {
    .kind = "position_embedding",
    .params = {{"weight", FR_INIT_NORMAL}},
    .bf16_weight = true,
    .args = {{"num_positions", .minimum = 1}, {"embedding_dim", .minimum = 1}},
    .infer_shape = position_embedding_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = position_embedding_forward,
    .backward = position_embedding_backward,
    .inplace = true,
};
