/*
 * embedding.c - the two embeddings of a GPT: tokens (nn.Embedding, a table
 * row per id) and positions (GPT-2's wpe, a table row per position added to
 * each sample's activations).  Forward and backward side by side; the
 * backward of both is a scatter-add of rows of the output gradient into rows
 * of the table's gradient.
 */
#include "transformer_kernels.h"

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
