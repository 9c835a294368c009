/*
 * bf16.c - bfloat16 conversions and fr_sbgemm, the GEMM of a frozen bf16
 * weight with float32 accumulation (bf16.h says what each function promises).
 *
 * The native kernel is a blocked GEMM in the Goto/BLIS manner, built for
 * vdpbf16ps, which multiplies 16 pairs of bf16 by 16 pairs and adds each
 * pair's two products to one float32 lane:
 *   - k is cut into blocks of at most KC_MAX, n into blocks of at most
 *     NC_MAX columns; for each (n block, k block) op(B) is packed once into
 *     panels of NR = 48 columns, each k-pair of a panel three 64-byte vectors
 *     whose lane j holds (op(B)[2p][j], op(B)[2p+1][j]), the layout vdpbf16ps
 *     takes;
 *   - rows of A are packed MC_MAX at a time, rounded to bf16, row by row (a
 *     row's consecutive elements already are its k-pairs);
 *   - the micro-kernel keeps an MR x NR = 8 x 48 tile of C in 24 zmm
 *     accumulators; per k-pair it loads the panel's three vectors and
 *     broadcasts each row's pair, 24 vdpbf16ps.  Its B panel stays in L1 while
 *     it walks down the packed rows of A (in L2).
 * Edges: a short tile is a kernel with fewer rows, short panels are padded
 * with zero columns and stored through masks, an odd k is padded with a zero
 * pair half.  Scratch is one fixed block on the stack (bf16.h), no allocation.
 *
 * Without AVX512_BF16, blocks of op(B) and of the bf16-rounded A are widened
 * to float32 and multiplied by cblas_sgemm: the same numbers in another
 * summation order.
 */
#include "layers/bf16.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_BF16_KERNEL 1
#include <immintrin.h>
#endif

/* ----------------------------------------------------- conversions */

static fr_bf16 bf16_of(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (fr_bf16)((bits >> 16) | 0x40u); /* NaN: keep sign and payload, set quiet */
    /* Round to nearest even: add just under half an ulp of bf16, plus the
     * kept lowest bit, then truncate; a carry may run into the exponent,
     * which is right (up to infinity from the largest values). */
    return (fr_bf16)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static float f32_of(fr_bf16 value) {
    uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

void fr_bf16_from_f32(fr_bf16 *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = bf16_of(src[i]);
}

void fr_bf16_to_f32(float *dst, const fr_bf16 *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = f32_of(src[i]);
}

/* ------------------------------------------------- which kernel */

static atomic_bool fallback_forced;

void fr_bf16_force_fallback(bool force) { atomic_store(&fallback_forced, force); }

#ifdef HAVE_BF16_KERNEL
/* 0 not yet checked, 1 supported, 2 not.  __builtin_cpu_supports checks
 * with xgetbv that the OS saves the zmm state too. */
static atomic_int cpu_has_bf16;

static bool cpu_supports_bf16(void) {
    int known = atomic_load_explicit(&cpu_has_bf16, memory_order_relaxed);
    if (!known) {
        __builtin_cpu_init();
        /* FROST_BF16_FALLBACK=1 acts out a CPU without it (tests, benchmarks). */
        const char *off = getenv("FROST_BF16_FALLBACK");
        bool supported = !(off && *off && strcmp(off, "0") != 0) &&
                         __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512bf16");
        known = supported ? 1 : 2;
        atomic_store_explicit(&cpu_has_bf16, known, memory_order_relaxed);
    }
    return known == 1;
}
#else
static bool cpu_supports_bf16(void) { return false; }
#endif

bool fr_bf16_native(void) { return !atomic_load(&fallback_forced) && cpu_supports_bf16(); }

/* C = beta C over m x n: what is left of the product when alpha or k is 0. */
static void scale_c(int m, int n, float beta, float *C, int ldc) {
    for (int i = 0; i < m; i++) {
        float *row = C + (size_t)i * ldc;
        for (int j = 0; j < n; j++)
            row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* ------------------------------------------------ native kernel */

#ifdef HAVE_BF16_KERNEL
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define BF16_INLINE static inline __attribute__((always_inline)) BF16_TARGET
/* Loops over a tile's rows must unroll completely for its accumulators to
 * stay in registers; the row count is a constant once tile_rows is inlined. */
#ifdef __clang__
#define UNROLL_ROWS _Pragma("clang loop unroll(full)")
#else
#define UNROLL_ROWS _Pragma("GCC unroll 8")
#endif

enum {
    MR = 8,              /* rows of the micro-tile */
    NR = 48,             /* columns of the micro-tile: three vectors of 16 */
    KC_MAX = 384,        /* bf16 elements of k per block (even) */
    NC_MAX = 8 * NR,     /* columns of op(B) packed at once */
    MC_MAX = 8 * MR,     /* rows of A packed at once */
};

/* The packing scratch: a k block of op(B) for NC_MAX columns (KC_MAX / 2
 * pairs of NC_MAX dwords) and MC_MAX rows of A in bf16: 336 KiB.  Smaller
 * blocks measured slower (KC 256: a quarter; NC 240: a few percent, within
 * the noise of the shared machine). */
typedef struct pack_scratch {
    _Alignas(64) uint32_t b[KC_MAX / 2 * NC_MAX];
    _Alignas(64) fr_bf16 a[MC_MAX * KC_MAX];
} pack_scratch;

/* 16 float32 -> 16 bf16 rounded to nearest even, as bf16_of: vcvtneps2bf16
 * would flush subnormals, and the fallback must see the same A. */
BF16_INLINE __m256i round_to_bf16(__m512i bits) {
    const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
    __m512i high = _mm512_srli_epi32(bits, 16);
    __m512i bias = _mm512_add_epi32(_mm512_and_si512(high, _mm512_set1_epi32(1)),
                                    _mm512_set1_epi32(0x7fff));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
    rounded = _mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(rounded);
}

/* Rows [0, rows) of A's k block [0, kc) -> bf16, row i at packed + i * stride,
 * an odd kc followed by a zero so the last pair is whole. */
BF16_INLINE void pack_a(int rows, int kc, const float *A, int lda, fr_bf16 *packed,
                        int stride) {
    for (int i = 0; i < rows; i++) {
        const float *src = A + (size_t)i * lda;
        fr_bf16 *dst = packed + (size_t)i * stride;
        /* the rows are lda apart, too far for the hardware to guess the next
         * (5% faster on the GPT shapes) */
        if (i + 2 < rows)
            for (int line = 0; line < kc; line += 16)
                _mm_prefetch((const char *)(src + 2 * (size_t)lda + line), _MM_HINT_T0);
        int col = 0;
        for (; col + 16 <= kc; col += 16)
            _mm256_storeu_si256((__m256i *)(dst + col),
                                round_to_bf16(_mm512_loadu_si512(src + col)));
        if (col < kc) {
            __mmask16 tail = (__mmask16)((1u << (kc - col)) - 1);
            __m512i bits = _mm512_maskz_loadu_epi32(tail, src + col);
            /* the zero lanes past kc round to zero: the pad comes with them */
            __mmask16 store = (__mmask16)((1u << (kc - col + (kc & 1))) - 1);
            _mm256_mask_storeu_epi16(dst + col, store, round_to_bf16(bits));
        }
    }
}

/* Mask of the first `count` (<= 32) 16-bit lanes. */
BF16_INLINE __mmask32 first_lanes32(int count) {
    return count >= 32 ? (__mmask32)~0u : count <= 0 ? 0 : (__mmask32)((1u << count) - 1);
}
BF16_INLINE __mmask16 first_lanes16(int count) {
    return count >= 16 ? (__mmask16)0xffff : count <= 0 ? 0 : (__mmask16)((1u << count) - 1);
}

/* One NR-column panel of B [k x n] (!trans_b): columns [0, cols) of rows
 * [0, kc) at B, ldb apart; pair p of column j goes to lane j of vector
 * p * 3 + j / 16, (B[2p][j], B[2p+1][j]) in its low and high half. */
BF16_INLINE void pack_b_rows(int kc, int cols, const fr_bf16 *B, int ldb, uint32_t *panel) {
    __mmask16 masks[3];
    for (int v = 0; v < 3; v++)
        masks[v] = first_lanes16(cols - 16 * v);
    for (int p = 0; p < (kc + 1) / 2; p++) {
        const fr_bf16 *even = B + (size_t)(2 * p) * ldb;
        const fr_bf16 *odd = even + ldb;
        bool has_odd = 2 * p + 1 < kc;
        for (int v = 0; v < 3; v++) {
            __m512i low = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(masks[v], even + 16 * v));
            __m512i high = has_odd ? _mm512_cvtepu16_epi32(
                                         _mm256_maskz_loadu_epi16(masks[v], odd + 16 * v))
                                   : _mm512_setzero_si512();
            _mm512_store_si512(panel + (size_t)(3 * p + v) * 16,
                               _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
        }
    }
}

/* 16 x 16 dwords, rows[i] lane j -> rows[j] lane i (unpacks by 32 and 64
 * bits, then the 128-bit lanes as a 4 x 4 transpose). */
BF16_INLINE void transpose_16x16(__m512i rows[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
    }
    /* u[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i + 3 */
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        __m512i a = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44);
        __m512i b = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
        __m512i c = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xee);
        __m512i d = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xee);
        rows[j] = _mm512_shuffle_i32x4(a, b, 0x88);
        rows[4 + j] = _mm512_shuffle_i32x4(a, b, 0xdd);
        rows[8 + j] = _mm512_shuffle_i32x4(c, d, 0x88);
        rows[12 + j] = _mm512_shuffle_i32x4(c, d, 0xdd);
    }
}

/* One NR-column panel of B [n x k] (trans_b), the same layout as
 * pack_b_rows: op(B) column j is row j of B, whose pair p is already the
 * dword p of the row, so 16 rows' dwords transposed make 16 pairs' vectors. */
BF16_INLINE void pack_b_columns(int kc, int cols, const fr_bf16 *B, int ldb, uint32_t *panel) {
    int pairs = (kc + 1) / 2;
    for (int v = 0; v < 3; v++) {
        int rows_here = cols - 16 * v;
        for (int p0 = 0; p0 < pairs; p0 += 16) {
            __mmask32 elements = first_lanes32(kc - 2 * p0);
            __m512i block[16];
            for (int r = 0; r < 16; r++)
                block[r] = r < rows_here
                               ? _mm512_maskz_loadu_epi16(
                                     elements, B + (size_t)(16 * v + r) * ldb + 2 * p0)
                               : _mm512_setzero_si512();
            transpose_16x16(block);
            for (int q = 0; q < 16 && p0 + q < pairs; q++)
                _mm512_store_si512(panel + (size_t)(3 * (p0 + q) + v) * 16, block[q]);
        }
    }
}

/* 16 columns of C (those of `mask`) = alpha sum + beta C, C unread for beta 0. */
BF16_INLINE void store_c(float *c, __mmask16 mask, __m512 sum, __m512 alpha, __m512 beta,
                         bool read_c) {
    __m512 result = _mm512_mul_ps(sum, alpha);
    if (read_c)
        result = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, c), beta, result);
    _mm512_mask_storeu_ps(c, mask, result);
}

/* C tile [rows x NR] (columns past `cols` left alone) = alpha * A panel x B
 * panel + beta C, beta 0 without reading C.  rows is a constant in each
 * copy the switch in tile() makes, so acc[][] lives in registers. */
BF16_INLINE void tile_rows(const int rows, int pairs, const fr_bf16 *a, int a_stride,
                           const uint32_t *b, float *C, int ldc, int cols, float alpha,
                           float beta) {
    __m512 acc[MR][3];
UNROLL_ROWS
    for (int r = 0; r < rows; r++) {
        acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
        /* C comes back at the end: fetch it while the k loop runs (a later k
         * block finds it out of cache, written back a whole block ago) */
        if (beta != 0.0f)
            for (int line = 0; line < 3; line++)
                _mm_prefetch((const char *)(C + (size_t)r * ldc + 16 * line), _MM_HINT_T0);
    }
    for (int p = 0; p < pairs; p++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b + 48 * p);
        __m512bh b1 = (__m512bh)_mm512_load_si512(b + 48 * p + 16);
        __m512bh b2 = (__m512bh)_mm512_load_si512(b + 48 * p + 32);
UNROLL_ROWS
        for (int r = 0; r < rows; r++) {
            int32_t pair;
            memcpy(&pair, a + (size_t)r * a_stride + 2 * p, sizeof pair);
            __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], ar, b2);
        }
    }
    __mmask16 masks[3] = {first_lanes16(cols), first_lanes16(cols - 16),
                          first_lanes16(cols - 32)};
    __m512 alpha_v = _mm512_set1_ps(alpha), beta_v = _mm512_set1_ps(beta);
UNROLL_ROWS
    for (int r = 0; r < rows; r++) {
        float *c_row = C + (size_t)r * ldc;
        /* three calls, not a loop: a variable index would put acc in memory */
        store_c(c_row, masks[0], acc[r][0], alpha_v, beta_v, beta != 0.0f);
        store_c(c_row + 16, masks[1], acc[r][1], alpha_v, beta_v, beta != 0.0f);
        store_c(c_row + 32, masks[2], acc[r][2], alpha_v, beta_v, beta != 0.0f);
    }
}

static BF16_TARGET void tile(int rows, int pairs, const fr_bf16 *a, int a_stride,
                             const uint32_t *b, float *C, int ldc, int cols, float alpha,
                             float beta) {
    switch (rows) {
    case 8: tile_rows(8, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    case 7: tile_rows(7, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    case 6: tile_rows(6, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    case 5: tile_rows(5, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    case 4: tile_rows(4, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    case 3: tile_rows(3, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    case 2: tile_rows(2, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    default: tile_rows(1, pairs, a, a_stride, b, C, ldc, cols, alpha, beta); break;
    }
}

/* noinline: the two kernels' scratch never share a stack frame */
static __attribute__((noinline)) BF16_TARGET void
sbgemm_native(bool trans_b, int m, int n, int k, float alpha, const float *A, int lda,
              const fr_bf16 *B, int ldb, float beta, float *C, int ldc) {
    pack_scratch scratch;
    /* k blocks of equal even size, so the last is not a sliver */
    int k_blocks = (k + KC_MAX - 1) / KC_MAX;
    int kc_max = (k + k_blocks - 1) / k_blocks;
    kc_max += kc_max & 1;
    for (int jc = 0; jc < n; jc += NC_MAX) {
        int nc = min_int(NC_MAX, n - jc);
        for (int pc = 0; pc < k; pc += kc_max) {
            int kc = min_int(kc_max, k - pc), pairs = (kc + 1) / 2;
            /* the first k block applies beta, the others add to it */
            float beta_here = pc == 0 ? beta : 1.0f;
            for (int jr = 0; jr < nc; jr += NR) {
                uint32_t *panel = scratch.b + (size_t)jr / NR * pairs * NR;
                int cols = min_int(NR, nc - jr);
                if (trans_b)
                    pack_b_columns(kc, cols, B + (size_t)(jc + jr) * ldb + pc, ldb, panel);
                else
                    pack_b_rows(kc, cols, B + (size_t)pc * ldb + jc + jr, ldb, panel);
            }
            for (int ic = 0; ic < m; ic += MC_MAX) {
                int mc = min_int(MC_MAX, m - ic);
                int a_stride = 2 * pairs;
                pack_a(mc, kc, A + (size_t)ic * lda + pc, lda, scratch.a, a_stride);
                for (int jr = 0; jr < nc; jr += NR) {
                    const uint32_t *panel = scratch.b + (size_t)jr / NR * pairs * NR;
                    int cols = min_int(NR, nc - jr);
                    for (int ir = 0; ir < mc; ir += MR)
                        tile(min_int(MR, mc - ir), pairs, scratch.a + (size_t)ir * a_stride,
                             a_stride, panel, C + (size_t)(ic + ir) * ldc + jc + jr, ldc, cols,
                             alpha, beta_here);
                }
            }
        }
    }
}
#endif

/* ---------------------------------------------------- fallback */

enum {
    FALLBACK_KC = 128, /* k per block */
    FALLBACK_NC = 256, /* columns of op(B) widened at once */
    FALLBACK_MC = 64,  /* rows of A rounded at once */
};

/* op(B) and the rounded A widened to float32 a block at a time: 160 KiB. */
typedef struct fallback_scratch {
    float b[FALLBACK_KC * FALLBACK_NC];
    float a[FALLBACK_MC * FALLBACK_KC];
} fallback_scratch;

static __attribute__((noinline)) void
sbgemm_fallback(bool trans_b, int m, int n, int k, float alpha, const float *A, int lda,
                const fr_bf16 *B, int ldb, float beta, float *C, int ldc) {
    fallback_scratch scratch;
    for (int jc = 0; jc < n; jc += FALLBACK_NC) {
        int nc = min_int(FALLBACK_NC, n - jc);
        for (int pc = 0; pc < k; pc += FALLBACK_KC) {
            int kc = min_int(FALLBACK_KC, k - pc);
            float beta_here = pc == 0 ? beta : 1.0f;
            /* op(B)[pc .. pc + kc) x [jc .. jc + nc) as a row-major kc x nc block */
            for (int p = 0; p < kc; p++)
                for (int j = 0; j < nc; j++)
                    scratch.b[(size_t)p * nc + j] =
                        f32_of(trans_b ? B[(size_t)(jc + j) * ldb + pc + p]
                                       : B[(size_t)(pc + p) * ldb + jc + j]);
            for (int ic = 0; ic < m; ic += FALLBACK_MC) {
                int mc = min_int(FALLBACK_MC, m - ic);
                for (int i = 0; i < mc; i++)
                    for (int p = 0; p < kc; p++)
                        scratch.a[(size_t)i * kc + p] =
                            f32_of(bf16_of(A[(size_t)(ic + i) * lda + pc + p]));
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mc, nc, kc, alpha,
                            scratch.a, kc, scratch.b, nc, beta_here, C + (size_t)ic * ldc + jc,
                            ldc);
            }
        }
    }
}

/* ------------------------------------------------------- entry */

void fr_sbgemm(bool trans_b, int m, int n, int k, float alpha, const float *A, int lda,
               const fr_bf16 *B, int ldb, float beta, float *C, int ldc) {
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0 || alpha == 0.0f) {
        scale_c(m, n, beta, C, ldc);
        return;
    }
#ifdef HAVE_BF16_KERNEL
    if (fr_bf16_native()) {
        sbgemm_native(trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    sbgemm_fallback(trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
