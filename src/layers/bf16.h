/*
 * bf16.h - bfloat16 storage and the GEMM of a frozen bf16 weight (issue 23,
 * --frozen-dtype bf16): conversions, and C = alpha A op(B) + beta C with A in
 * float32, B in bf16 and float32 accumulation.
 *
 * bf16 is the upper half of a float32 (8 exponent bits, 7 mantissa bits), so
 * to_f32 is exact and from_f32 rounds to nearest even.  fr_sbgemm runs on
 * AVX512_BF16 (vdpbf16ps: two bf16 products per float32 lane) where the CPU
 * has it, else it widens blocks to float32 and calls cblas_sgemm; both use
 * the same bf16-rounded A and B, so they differ only in summation order.
 * Everything here is single-threaded, allocates nothing (its packing scratch
 * is a fixed block on the caller's stack, 336 KiB; thread stacks of 1 MiB or
 * more are enough) and may run on many threads at once.
 */
#ifndef FROST_BF16_H
#define FROST_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint16_t fr_bf16;

/* float32 -> bf16, round to nearest even; a NaN stays a NaN (made quiet), an
 * infinity stays one, a finite value past the largest bf16 rounds to
 * infinity as IEEE rounding does, subnormals are rounded, not flushed.
 * dst and src may not overlap. */
void fr_bf16_from_f32(fr_bf16 *dst, const float *src, size_t n);
/* bf16 -> float32, exact. */
void fr_bf16_to_f32(float *dst, const fr_bf16 *src, size_t n);

/* Whether fr_sbgemm runs the AVX512_BF16 kernel: the CPU and the OS support
 * it (checked once) and the fallback is not forced. */
bool fr_bf16_native(void);

/* For tests and benchmarks: true makes fr_sbgemm take the float32 fallback
 * even where the native kernel could run (process-wide; not to be flipped
 * while another thread is inside fr_sbgemm). */
void fr_bf16_force_fallback(bool force);

/*
 * C[m x n] = alpha * A[m x k] * op(B) + beta * C, all row-major.
 *   A  float32, row stride lda; rounded to bf16 (nearest even) as it is
 *      packed, so the product is that of the bf16 values.
 *   B  bf16 as a layer stores it, row stride ldb:
 *      !trans_b: B is [k x n] and op(B) = B      (HF Conv1D forward, W [in x out];
 *                                                 nn.Linear input gradient, W [out x in])
 *       trans_b: B is [n x k] and op(B) = B^T    (nn.Linear forward;
 *                                                 Conv1D input gradient)
 *   C  float32, row stride ldc; beta == 0 writes C without reading it (it
 *      may hold NaN), alpha == 0 or k == 0 only scales C by beta.
 * Products are float32-exact (bf16 x bf16) and summed in float32.  The
 * native kernel flushes subnormal bf16 inputs and subnormal partial sums to
 * zero (vdpbf16ps does), the fallback does not: below 1.2e-38 the two
 * differ.  Any m, n, k >= 0 and any strides at least the row lengths; no
 * alignment is required of A, B or C.
 */
void fr_sbgemm(bool trans_b, int m, int n, int k, float alpha, const float *A, int lda,
               const fr_bf16 *B, int ldb, float beta, float *C, int ldc);

#endif
