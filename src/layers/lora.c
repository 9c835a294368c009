/*
 * lora.c - the LoRA adapter of a layer that takes one (linear, conv1d), as
 * PEFT computes it:
 *
 *     out += scale · dropout(in) · Aᵀ · Bᵀ      A [rank, in], B [out, rank]
 *
 * The layer computes its base part (in · Wᵀ + b, or in · W + b) and calls
 * these for the adapter's.  Forward keeps t = dropout(in) · Aᵀ (rows x rank)
 * in the layer's scratch for backward, and with dropout in train mode the
 * dropped input and its mask too.  Backward computes the adapter's gradients
 * only where asked (a frozen adapter asks for none) and adds the adapter's
 * part of the gradient at the input to what the base wrote there: a frozen
 * base costs one GEMM (the input gradient), never its weight gradient.
 *
 * The dropout mask is a hash of the run's seed, the step, the layer's name,
 * the sample's row in the global batch and the element, as dropout.c's, so
 * every layout of threads and ranks drops the same elements.
 */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* The scratch: a header, then t [rows x rank] and dt [rows x rank], then
 * (dropout in train mode) the dropped input [rows x in], the gradient through
 * it [rows x in] and its mask [rows x in] bytes.  Backward leaves what
 * forward kept as it was, so it may run twice (the layer checks do). */
typedef struct lora_header {
    int masked; /* forward dropped elements: backward applies the mask */
} lora_header;

#define HEADER_BYTES ((sizeof(lora_header) + FR_ALIGN - 1) / FR_ALIGN * FR_ALIGN)

static size_t round_up(size_t bytes) { return (bytes + FR_ALIGN - 1) / FR_ALIGN * FR_ALIGN; }

size_t fr_lora_scratch_bytes(const fr_layer *l, int rows, int in_n) {
    if (l->lora.rank <= 0 || rows <= 0)
        return 0;
    size_t bytes = HEADER_BYTES + 2 * round_up((size_t)rows * (size_t)l->lora.rank * sizeof(float));
    if (l->lora.dropout > 0.0f)
        bytes += 2 * round_up((size_t)rows * (size_t)in_n * sizeof(float)) +
                 round_up((size_t)rows * (size_t)in_n);
    return bytes;
}

static float *t_of(void *scratch) { return (float *)((char *)scratch + HEADER_BYTES); }
static float *dt_of(const fr_layer *l, void *scratch, int rows) {
    return (float *)((char *)t_of(scratch) +
                     round_up((size_t)rows * (size_t)l->lora.rank * sizeof(float)));
}
static float *dropped_of(const fr_layer *l, void *scratch, int rows) {
    return (float *)((char *)dt_of(l, scratch, rows) +
                     round_up((size_t)rows * (size_t)l->lora.rank * sizeof(float)));
}
static float *through_of(const fr_layer *l, void *scratch, int rows, int in_n) {
    return (float *)((char *)dropped_of(l, scratch, rows) +
                     round_up((size_t)rows * (size_t)in_n * sizeof(float)));
}
static unsigned char *mask_of(const fr_layer *l, void *scratch, int rows, int in_n) {
    return (unsigned char *)through_of(l, scratch, rows, in_n) +
           round_up((size_t)rows * (size_t)in_n * sizeof(float));
}

float fr_lora_scale(int rank, float alpha, bool rslora) {
    return rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
}

/* The mask and the dropped input: row r of the GEMM is position r % per of
 * sample first_row + r / per. */
static void drop_input(const fr_layer *l, const float *in, int rows, int in_n,
                       const fr_lora_at *at, float *dropped, unsigned char *keep) {
    double p = l->lora.dropout;
    float scale = p < 1.0 ? (float)(1.0 / (1.0 - p)) : 0.0f;
    uint64_t threshold = (uint64_t)(p * (1 << 24) + 0.5);
    uint64_t key = fr_dropout_key(at->seed, at->step, l->name, "lora_dropout");
    int per = at->rows_per_sample > 0 ? at->rows_per_sample : 1;
    for (int r = 0; r < rows; r++) {
        uint64_t row_key = fr_mix64(key ^ (uint64_t)(at->first_row + r / per));
        size_t first = (size_t)(r % per) * (size_t)in_n, at_row = (size_t)r * (size_t)in_n;
        for (int c = 0; c < in_n; c++) {
            keep[at_row + c] = (fr_mix64(row_key + first + (size_t)c) >> 40) >= threshold;
            dropped[at_row + c] = keep[at_row + c] ? in[at_row + c] * scale : 0.0f;
        }
    }
}

void fr_lora_forward(const fr_layer *l, const float *in, float *out, int rows, int in_n,
                     int out_n, void *scratch, const fr_lora_at *at) {
    if (l->lora.rank <= 0 || rows <= 0)
        return;
    int rank = l->lora.rank;
    lora_header *header = scratch;
    header->masked = at && l->lora.dropout > 0.0f;
    const float *x = in;
    if (header->masked) {
        float *dropped = dropped_of(l, scratch, rows);
        drop_input(l, in, rows, in_n, at, dropped, mask_of(l, scratch, rows, in_n));
        x = dropped;
    }
    float *t = t_of(scratch);
    /* t[rows x rank] = x · Aᵀ, then out += scale · t · Bᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, rank, in_n, 1.0f, x, in_n,
                l->param_data[FR_LORA_A], in_n, 0.0f, t, rank);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out_n, rank, l->lora.scale, t, rank,
                l->param_data[FR_LORA_B], rank, 1.0f, out, out_n);
}

void fr_lora_backward(const fr_layer *l, const float *in, const float *dout, float *din,
                      const fr_param_grads *grads, int rows, int in_n, int out_n,
                      void *scratch) {
    if (l->lora.rank <= 0 || rows <= 0)
        return;
    int rank = l->lora.rank;
    const lora_header *header = scratch;
    float *t = t_of(scratch), *dt = dt_of(l, scratch, rows);
    float *dA = grads->grad[FR_LORA_A], *dB = grads->grad[FR_LORA_B];
    const float *x = header->masked ? dropped_of(l, scratch, rows) : in;
    /* dB[out x rank] = scale · doutᵀ · t */
    if (dB)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_n, rank, rows, l->lora.scale,
                    dout, out_n, t, rank, grads->accumulate & (1u << FR_LORA_B) ? 1.0f : 0.0f,
                    dB, rank);
    if (!dA && !din)
        return;
    /* dt[rows x rank] = scale · dout · B */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, rank, out_n, l->lora.scale, dout,
                out_n, l->param_data[FR_LORA_B], rank, 0.0f, dt, rank);
    /* dA[rank x in] = dtᵀ · x */
    if (dA)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rank, in_n, rows, 1.0f, dt, rank, x,
                    in_n, grads->accumulate & (1u << FR_LORA_A) ? 1.0f : 0.0f, dA, in_n);
    if (!din)
        return;
    /* din += dropout'(dt · A) */
    if (!header->masked) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in_n, rank, 1.0f, dt, rank,
                    l->param_data[FR_LORA_A], in_n, 1.0f, din, in_n);
        return;
    }
    float *through = through_of(l, scratch, rows, in_n);
    const unsigned char *keep = mask_of(l, scratch, rows, in_n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in_n, rank, 1.0f, dt, rank,
                l->param_data[FR_LORA_A], in_n, 0.0f, through, in_n);
    double p = l->lora.dropout;
    float scale = p < 1.0 ? (float)(1.0 / (1.0 - p)) : 0.0f;
    size_t count = (size_t)rows * (size_t)in_n;
    for (size_t i = 0; i < count; i++)
        din[i] += keep[i] ? through[i] * scale : 0.0f;
}

void fr_lora_param_shapes(fr_layer *l, int in_n, int out_n) {
    if (l->lora.rank <= 0)
        return;
    fr_layer_param_shape(l, FR_LORA_A, 2, (const int[]){l->lora.rank, in_n});
    fr_layer_param_shape(l, FR_LORA_B, 2, (const int[]){out_n, l->lora.rank});
}
