/*
 * test_bf16.c - src/layers/bf16.c: the bf16 conversions and fr_sbgemm, the
 * GEMM of a frozen bf16 weight.  What must hold:
 *   - float32 -> bf16 rounds to nearest even (ties both ways, the largest
 *     finite values, subnormals), keeps infinities, keeps NaN a NaN (quiet);
 *     bf16 -> float32 is exact;
 *   - fr_sbgemm equals the float64 product of the bf16-rounded A and B within
 *     the bound of float32 summation, element by element:
 *       |C - C64| <= (k + 2 ceil(k / 128) + 4) u (|alpha| sum_p |a_ip b_pj| + |beta c_ij|)
 *     with u = 2^-24: k roundings of the running sums of exact bf16 x bf16
 *     products, two per k block (the kernels block k by at most 128 or 384)
 *     where a block's sum is scaled and added to C, and those of alpha and
 *     beta; for many shapes (1 to 100, odd, not multiples of 16 or of the
 *     kernel's tiles), both orientations of B, padded strides, alpha and
 *     beta 0, 1 and others;
 *   - it reads nothing past the rows' lengths (NaN there never shows), writes
 *     nothing past them in C, and with beta 0 never reads C (NaN in it);
 *   - the AVX512_BF16 kernel and the float32 fallback (forced) both do, and
 *     agree with each other within the sum of their bounds;
 *   - threads calling it at once on their own rows, or on their own columns
 *     through B's offset and stride, get the single call's bits (native) or
 *     stay within the bound (fallback).
 * Buffers come from malloc with their exact size so AddressSanitizer sees any
 * access past them.
 */
#include "internal.h"
#include "layers/bf16.h"
#include "tap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------- helpers */

static float float_of_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static uint32_t bits_of_float(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static bool is_bf16_nan(fr_bf16 value) { return (value & 0x7fff) > 0x7f80; }

/* ---------------------------------------------------- conversions */

typedef struct conversion {
    uint32_t f32;
    fr_bf16 bf16;
} conversion;

/* One TAP line: every float32 bit pattern of the table converts to its bf16. */
static void check_conversions(const conversion *cases, size_t count, const char *what) {
    for (size_t i = 0; i < count; i++) {
        float value = float_of_bits(cases[i].f32);
        fr_bf16 got;
        fr_bf16_from_f32(&got, &value, 1);
        if (got != cases[i].bf16) {
            tap_ok(false, "%s (0x%08x gave 0x%04x, not 0x%04x)", what, cases[i].f32, got,
                   cases[i].bf16);
            return;
        }
    }
    tap_ok(true, "%s (%zu cases)", what, count);
}

#define CHECK_CONVERSIONS(what, ...)                                                         \
    do {                                                                                     \
        static const conversion cases[] = {__VA_ARGS__};                                     \
        check_conversions(cases, sizeof cases / sizeof cases[0], what);                      \
    } while (0)

/* Rounding to nearest even written another way, for a finite value: of the
 * two bf16 around it (its bits truncated, and the next one up in
 * magnitude), the nearer in float64, the even one on a tie. */
static fr_bf16 nearest_even_by_distance(uint32_t bits) {
    fr_bf16 below = (fr_bf16)(bits >> 16), above = (fr_bf16)(below + 1);
    double value = float_of_bits(bits);
    double low = float_of_bits((uint32_t)below << 16);
    /* above may be the infinity, which is 2^128 away from zero for rounding */
    double high = (above & 0x7fff) == 0x7f80 ? copysign(ldexp(1.0, 128), value)
                                             : (double)float_of_bits((uint32_t)above << 16);
    double to_low = fabs(value - low), to_high = fabs(high - value);
    if (to_low != to_high)
        return to_low < to_high ? below : above;
    return (below & 1) ? above : below;
}

static void test_conversions(fr_rng *rng) {
    CHECK_CONVERSIONS("halfway cases round down to an even mantissa", {0x3f808000, 0x3f80},
                      {0xbf808000, 0xbf80}, {0x3f828000, 0x3f82}, {0x40008000, 0x4000},
                      {0x00808000, 0x0080});
    CHECK_CONVERSIONS("halfway cases round up from an odd mantissa", {0x3f818000, 0x3f82},
                      {0xbf818000, 0xbf82}, {0x3f838000, 0x3f84},
                      {0x3fff8000, 0x4000}, /* the carry runs into the exponent */
                      {0xbfff8000, 0xc000});
    CHECK_CONVERSIONS("values off halfway round to the nearer; bf16 values stay",
                      {0x3f808001, 0x3f81}, {0x3f807fff, 0x3f80}, {0xbf80ffff, 0xbf81},
                      {0x3f800000, 0x3f80}, {0x00000000, 0x0000}, {0x80000000, 0x8000},
                      {0x42f6e979, 0x42f7});
    CHECK_CONVERSIONS("the largest finite values: bf16's largest stays, past its halfway "
                      "point rounds to infinity",
                      {0x7f7f0000, 0x7f7f}, {0x7f7f7fff, 0x7f7f}, {0x7f7f8000, 0x7f80},
                      {0x7f7fffff, 0x7f80}, {0xff7f7fff, 0xff7f}, {0xff7fffff, 0xff80});
    CHECK_CONVERSIONS("subnormals round to nearest even too, not flushed to zero",
                      {0x00000001, 0x0000}, {0x00008000, 0x0000}, {0x00018000, 0x0002},
                      {0x00008001, 0x0001}, {0x00010000, 0x0001}, {0x80008001, 0x8001},
                      {0x007fffff, 0x0080}, /* up to the smallest normal */
                      {0x807f8000, 0x8080});
    CHECK_CONVERSIONS("infinities stay infinite", {0x7f800000, 0x7f80}, {0xff800000, 0xff80});
    CHECK_CONVERSIONS("NaN stays NaN, quiet, with its sign and its payload's top bits",
                      {0x7fc00000, 0x7fc0}, {0xffc00000, 0xffc0},
                      {0x7f800001, 0x7fc0}, /* signalling, payload below bf16's bits */
                      {0xff800001, 0xffc0}, {0x7f810000, 0x7fc1},
                      {0x7fffffff, 0x7fff}); /* no carry out of a NaN */

    bool widened_exact = true, round_trip = true;
    for (uint32_t value = 0; value <= 0xffff; value++) {
        fr_bf16 bf16 = (fr_bf16)value, back;
        float wide;
        fr_bf16_to_f32(&wide, &bf16, 1);
        widened_exact &= bits_of_float(wide) == value << 16;
        fr_bf16_from_f32(&back, &wide, 1);
        round_trip &= is_bf16_nan(bf16) ? is_bf16_nan(back) : back == bf16;
    }
    tap_ok(widened_exact, "to_f32 is exact: each of the 65536 bf16 widens to its bits << 16");
    tap_ok(round_trip, "from_f32 gives every bf16 back from its float32 (a NaN as a NaN)");

    /* random bit patterns over every exponent, and long arrays (a vectorized
     * loop and its tail) */
    enum { RANDOM_VALUES = 1000003 };
    float *values = malloc(RANDOM_VALUES * sizeof *values);
    fr_bf16 *rounded = malloc(RANDOM_VALUES * sizeof *rounded);
    for (size_t i = 0; i < RANDOM_VALUES; i++) {
        uint32_t bits = (uint32_t)fr_rng_next(rng);
        if (i % 4 == 0)
            bits = (bits & 0xffff0000u) | 0x8000u; /* a tie */
        values[i] = float_of_bits(bits);
    }
    fr_bf16_from_f32(rounded, values, RANDOM_VALUES);
    size_t wrong = 0, first_wrong = 0;
    for (size_t i = 0; i < RANDOM_VALUES; i++) {
        uint32_t bits = bits_of_float(values[i]);
        bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
        bool right = nan ? is_bf16_nan(rounded[i]) && (rounded[i] & 0x8000) == (bits >> 16 & 0x8000)
                         : rounded[i] == nearest_even_by_distance(bits);
        if (!right && !wrong++)
            first_wrong = i;
    }
    if (wrong)
        tap_diag("first wrong: 0x%08x", bits_of_float(values[first_wrong]));
    tap_ok(!wrong,
           "from_f32 on %d random bit patterns (a quarter ties) is the nearer bf16, the even "
           "one on ties (%zu wrong)",
           RANDOM_VALUES, wrong);
    free(values);
    free(rounded);
}

/* --------------------------------------------------------- GEMM */

#define UNIT_ROUNDOFF 0x1p-24
#define PAD_A NAN       /* A's row padding: must never be read */
#define PAD_C 1234.5f   /* C's row padding: must never be written */
static const fr_bf16 PAD_B = 0x7fc0; /* NaN */

/* One product to check: operands with padded strides, C's starting values. */
typedef struct gemm_case {
    bool trans_b;
    int m, n, k, lda, ldb, ldc;
    float alpha, beta;
    float *a, *c_start;
    fr_bf16 *b;
} gemm_case;

static float random_float(fr_rng *rng) { return 2.0f * fr_rng_uniform(rng) - 1.0f; }

/* beta 0 starts C as NaN, which must not show. */
static gemm_case make_case(fr_rng *rng, bool trans_b, int m, int n, int k, float alpha,
                           float beta, int pad_a, int pad_b, int pad_c) {
    gemm_case g = {trans_b, m, n, k, k + pad_a, (trans_b ? k : n) + pad_b, n + pad_c,
                   alpha, beta, NULL, NULL, NULL};
    int b_rows = trans_b ? n : k, b_row_length = trans_b ? k : n;
    g.a = malloc(((size_t)m * g.lda + 1) * sizeof *g.a);
    g.b = malloc(((size_t)b_rows * g.ldb + 1) * sizeof *g.b);
    g.c_start = malloc(((size_t)m * g.ldc + 1) * sizeof *g.c_start);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < g.lda; p++)
            g.a[(size_t)i * g.lda + p] = p < k ? random_float(rng) : PAD_A;
    for (int r = 0; r < b_rows; r++)
        for (int c = 0; c < g.ldb; c++) {
            float value = random_float(rng);
            fr_bf16_from_f32(&g.b[(size_t)r * g.ldb + c], &value, 1);
            if (c >= b_row_length)
                g.b[(size_t)r * g.ldb + c] = PAD_B;
        }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < g.ldc; j++)
            g.c_start[(size_t)i * g.ldc + j] =
                j >= n ? PAD_C : beta == 0.0f ? NAN : random_float(rng);
    return g;
}

static void free_case(gemm_case *g) {
    free(g->a);
    free(g->b);
    free(g->c_start);
}

static double bf16_value(fr_bf16 value) {
    float wide;
    fr_bf16_to_f32(&wide, &value, 1);
    return wide;
}

/* The float64 product of the bf16-rounded operands, and each element's bound
 * (the header's formula). */
static void reference(const gemm_case *g, double *want, double *bound) {
    int k_blocks = (g->k + 127) / 128;
    double gamma = (g->k + 2.0 * k_blocks + 4.0) * UNIT_ROUNDOFF;
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < g->n; j++) {
            double sum = 0.0, magnitude = 0.0;
            for (int p = 0; p < g->k; p++) {
                fr_bf16 a;
                fr_bf16_from_f32(&a, &g->a[(size_t)i * g->lda + p], 1);
                fr_bf16 b = g->trans_b ? g->b[(size_t)j * g->ldb + p]
                                       : g->b[(size_t)p * g->ldb + j];
                double product = bf16_value(a) * bf16_value(b);
                sum += product;
                magnitude += fabs(product);
            }
            double c = g->beta == 0.0f ? 0.0 : g->c_start[(size_t)i * g->ldc + j];
            want[(size_t)i * g->n + j] = g->alpha * sum + g->beta * c;
            bound[(size_t)i * g->n + j] =
                gamma * (fabs(g->alpha) * magnitude + fabs(g->beta * c)) + 1e-30;
        }
}

static float *run_case(const gemm_case *g) {
    size_t c_count = (size_t)g->m * g->ldc;
    float *c = malloc((c_count + 1) * sizeof *c);
    memcpy(c, g->c_start, c_count * sizeof *c);
    fr_sbgemm(g->trans_b, g->m, g->n, g->k, g->alpha, g->a, g->lda, g->b, g->ldb, g->beta, c,
              g->ldc);
    return c;
}

/* The worst error / bound of one behaviour over its cases, and where. */
typedef struct worst_case {
    double ratio;
    char where[160];
} worst_case;

static void note_case(worst_case *worst, double ratio, const gemm_case *g) {
    if (worst->where[0] && !(ratio > worst->ratio))
        return;
    worst->ratio = ratio;
    snprintf(worst->where, sizeof worst->where,
             "m %d n %d k %d trans_b %d lda %d ldb %d ldc %d alpha %g beta %g", g->m, g->n, g->k,
             g->trans_b, g->lda, g->ldb, g->ldc, g->alpha, g->beta);
}

/* Largest |got - want| / bound over C (a NaN is infinite), and whether C's
 * row padding kept its bits. */
static double error_ratio(const gemm_case *g, const float *got, const double *want,
                          const double *bound, bool *padding_kept) {
    double worst = 0.0;
    *padding_kept = true;
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < g->ldc; j++) {
            float value = got[(size_t)i * g->ldc + j];
            if (j >= g->n) {
                *padding_kept &= bits_of_float(value) == bits_of_float(PAD_C);
                continue;
            }
            size_t at = (size_t)i * g->n + j;
            double ratio = isnan(value) ? INFINITY : fabs(value - want[at]) / bound[at];
            worst = ratio > worst ? ratio : worst;
        }
    return worst;
}

/* What one kernel (native or fallback) did over the sweep. */
typedef struct kernel_record {
    worst_case error, beta_zero;
    bool padding_kept;
} kernel_record;

static float *check_kernel(const gemm_case *g, bool fallback, const double *want,
                           const double *bound, kernel_record *record) {
    fr_bf16_force_fallback(fallback);
    float *got = run_case(g);
    fr_bf16_force_fallback(false);
    bool padding_kept;
    double ratio = error_ratio(g, got, want, bound, &padding_kept);
    note_case(&record->error, ratio, g);
    if (g->beta == 0.0f)
        note_case(&record->beta_zero, ratio, g);
    record->padding_kept &= padding_kept;
    return got;
}

static void report_kernel(const kernel_record *record, const char *kernel, int shapes) {
    tap_ok(record->error.ratio <= 1.0,
           "%s: every element within the float32 summation bound over %d products "
           "(worst error / bound %.3g at %s)",
           kernel, shapes, record->error.ratio, record->error.where);
    tap_ok(record->beta_zero.ratio <= 1.0,
           "%s: beta 0 never reads C (NaN in it does not show; worst %.3g at %s)", kernel,
           record->beta_zero.ratio, record->beta_zero.where);
    tap_ok(record->padding_kept,
           "%s: nothing written past n in C's rows; NaN past k in A's rows and past the "
           "row in B's never shows",
           kernel);
}

static void test_gemm_shapes(fr_rng *rng, bool native) {
    static const int ms[] = {1, 2, 3, 7, 8, 9, 15, 17, 31, 64, 65, 100};
    static const int ns[] = {1, 2, 15, 16, 17, 31, 33, 47, 48, 49, 95, 97};
    static const int ks[] = {1, 2, 3, 5, 15, 16, 17, 31, 32, 33, 63, 99};
    /* and past one cache block of each kernel: k blocks (uneven, odd last
     * one), n blocks, m blocks */
    static const int big[][3] = {{150, 500, 800}, {70, 250, 385}, {9, 49, 1001}};
    static const float scales[][2] = {{1, 0}, {1, 1}, {-0.75f, 0.5f}, {2.5f, 0},
                                      {1, -1}, {0.5f, 1}, {-1, 0}};
    static const int pads[] = {0, 1, 16, 3};
    enum { SMALL = 12 * 12 * 12 * 2, BIG = 3 * 2 };
    kernel_record records[2] = {{.padding_kept = true}, {.padding_kept = true}};
    worst_case agreement = {0};
    int count = 0;
    for (int shape = 0; shape < SMALL + BIG; shape++) {
        int m, n, k;
        bool trans_b = shape % 2;
        if (shape < SMALL) {
            m = ms[shape / 2 % 12];
            n = ns[shape / 24 % 12];
            k = ks[shape / 288];
        } else {
            m = big[(shape - SMALL) / 2][0];
            n = big[(shape - SMALL) / 2][1];
            k = big[(shape - SMALL) / 2][2];
        }
        const float *scale = scales[shape % 7];
        gemm_case g = make_case(rng, trans_b, m, n, k, scale[0], scale[1], pads[shape % 4],
                                pads[shape / 3 % 4], pads[shape / 5 % 4]);
        size_t c_count = (size_t)m * n;
        double *want = malloc(c_count * sizeof *want), *bound = malloc(c_count * sizeof *bound);
        reference(&g, want, bound);
        float *fallback = check_kernel(&g, true, want, bound, &records[0]);
        if (native) {
            float *fast = check_kernel(&g, false, want, bound, &records[1]);
            double worst = 0.0;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    size_t at = (size_t)i * g.ldc + j;
                    double ratio = fabs((double)fast[at] - fallback[at]) /
                                   (2.0 * bound[(size_t)i * n + j]);
                    worst = isnan(ratio) || ratio > worst ? (isnan(ratio) ? INFINITY : ratio)
                                                          : worst;
                }
            note_case(&agreement, worst, &g);
            free(fast);
        }
        free(fallback);
        free(want);
        free(bound);
        free_case(&g);
        count++;
    }
    report_kernel(&records[0], "fallback (float32 cblas_sgemm)", count);
    if (native) {
        report_kernel(&records[1], "AVX512_BF16", count);
        tap_ok(agreement.ratio <= 1.0,
               "AVX512_BF16 and the fallback agree within the sum of their bounds "
               "(worst difference / 2 bound %.3g at %s)",
               agreement.ratio, agreement.where);
    } else {
        for (int skipped = 0; skipped < 4; skipped++)
            tap_skip("this CPU has no AVX512_BF16");
    }
}

/* A times the identity: C is A rounded to bf16, exactly, wherever the
 * kernel rounds it (every position of a 16-wide chunk and of the tail). */
static void test_a_rounding(fr_rng *rng, bool fallback, const char *kernel) {
    enum { ROWS = 5, K = 37 };
    float a[ROWS * K], c[ROWS * K];
    fr_bf16 identity[K * K];
    for (int i = 0; i < ROWS * K; i++) {
        /* normal values (vdpbf16ps flushes subnormals) that round to finite
         * ones (inf times a zero of the identity would be NaN); a third ties */
        uint32_t bits = (uint32_t)fr_rng_below(rng, 0x7f7f7fffu - 0x00800000u) + 0x00800000u;
        if (i % 3 == 0)
            bits = (bits & 0xffff0000u) | 0x8000u;
        if (i % 2)
            bits |= 0x80000000u;
        a[i] = float_of_bits(bits);
    }
    for (int p = 0; p < K; p++)
        for (int j = 0; j < K; j++)
            identity[p * K + j] = p == j ? 0x3f80 : 0;
    fr_bf16_force_fallback(fallback);
    fr_sbgemm(false, ROWS, K, K, 1.0f, a, K, identity, K, 0.0f, c, K);
    fr_bf16_force_fallback(false);
    int wrong = 0;
    for (int i = 0; i < ROWS * K; i++) {
        fr_bf16 rounded;
        fr_bf16_from_f32(&rounded, &a[i], 1);
        wrong += bits_of_float(c[i]) != (uint32_t)rounded << 16;
    }
    tap_ok(!wrong, "%s rounds A to nearest even as fr_bf16_from_f32 does (%d of %d differ)",
           kernel, wrong, ROWS * K);
}

/* alpha 0 and k 0 leave beta C (zeros over NaN for beta 0) and read
 * neither A nor B; m or n 0 touch nothing. */
static void test_degenerate(void) {
    float c[6], nan_a[4] = {NAN, NAN, NAN, NAN};
    fr_bf16 nan_b[4] = {PAD_B, PAD_B, PAD_B, PAD_B};
    bool right = true;
    for (int fallback = 0; fallback <= 1; fallback++) {
        fr_bf16_force_fallback(fallback);
        for (int i = 0; i < 6; i++)
            c[i] = (float)i;
        fr_sbgemm(false, 2, 3, 2, 0.0f, nan_a, 2, nan_b, 3, 2.0f, c, 3); /* alpha 0 */
        for (int i = 0; i < 6; i++)
            right &= c[i] == 2.0f * (float)i;
        fr_sbgemm(true, 2, 3, 0, 1.0f, nan_a, 1, nan_b, 1, 0.5f, c, 3); /* k 0 */
        for (int i = 0; i < 6; i++)
            right &= c[i] == (float)i;
        for (int i = 0; i < 6; i++)
            c[i] = NAN;
        fr_sbgemm(true, 2, 3, 2, 0.0f, nan_a, 2, nan_b, 2, 0.0f, c, 3); /* beta 0 too */
        for (int i = 0; i < 6; i++)
            right &= c[i] == 0.0f;
        fr_sbgemm(false, 0, 3, 2, 1.0f, nan_a, 2, nan_b, 3, 0.0f, c, 3); /* m 0 */
        fr_sbgemm(true, 2, 0, 2, 1.0f, nan_a, 2, nan_b, 2, 0.0f, c, 3);  /* n 0 */
        for (int i = 0; i < 6; i++)
            right &= c[i] == 0.0f;
    }
    fr_bf16_force_fallback(false);
    tap_ok(right, "alpha 0 and k 0 give beta C without reading A or B (beta 0: zeros over "
                  "NaN); m or n 0 write nothing (both kernels)");
}

/* The trainer's split: each thread its own rows, or its own columns (B's
 * offset, and C's, with the full strides).  The native kernel gives each
 * element the same sums whatever the split, so the same bits; OpenBLAS under
 * the fallback may block a narrower product otherwise, so there the split
 * results are held to the bound. */
static void test_threads(fr_rng *rng, bool fallback, const char *kernel) {
    enum { M = 67, N = 131, K = 99, THREADS = 2 };
    bool same = true;
    double worst = 0.0;
    fr_bf16_force_fallback(fallback);
    for (int trans_b = 0; trans_b <= 1; trans_b++) {
        gemm_case g = make_case(rng, trans_b, M, N, K, 1.0f, 0.0f, 1, 3, 2);
        double *want = malloc((size_t)M * N * sizeof *want);
        double *bound = malloc((size_t)M * N * sizeof *bound);
        reference(&g, want, bound);
        float *whole = run_case(&g);
        float *by_rows = malloc((size_t)M * g.ldc * sizeof *by_rows);
        float *by_columns = malloc((size_t)M * g.ldc * sizeof *by_columns);
        memcpy(by_rows, g.c_start, (size_t)M * g.ldc * sizeof *by_rows);
        memcpy(by_columns, g.c_start, (size_t)M * g.ldc * sizeof *by_columns);
#pragma omp parallel for num_threads(THREADS)
        for (int t = 0; t < THREADS; t++) {
            int row0 = M * t / THREADS, rows = M * (t + 1) / THREADS - row0;
            fr_sbgemm(g.trans_b, rows, N, K, 1.0f, g.a + (size_t)row0 * g.lda, g.lda, g.b, g.ldb,
                      0.0f, by_rows + (size_t)row0 * g.ldc, g.ldc);
            int col0 = N * t / THREADS, cols = N * (t + 1) / THREADS - col0;
            const fr_bf16 *b = g.trans_b ? g.b + (size_t)col0 * g.ldb : g.b + col0;
            fr_sbgemm(g.trans_b, M, cols, K, 1.0f, g.a, g.lda, b, g.ldb, 0.0f, by_columns + col0,
                      g.ldc);
        }
        bool padding_kept;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                size_t at = (size_t)i * g.ldc + j;
                same &= bits_of_float(by_rows[at]) == bits_of_float(whole[at]) &&
                        bits_of_float(by_columns[at]) == bits_of_float(whole[at]);
            }
        worst = fmax(worst, error_ratio(&g, by_rows, want, bound, &padding_kept));
        worst = padding_kept ? worst : INFINITY;
        worst = fmax(worst, error_ratio(&g, by_columns, want, bound, &padding_kept));
        worst = padding_kept ? worst : INFINITY;
        free(want);
        free(bound);
        free(whole);
        free(by_rows);
        free(by_columns);
        free_case(&g);
    }
    fr_bf16_force_fallback(false);
    if (fallback)
        tap_ok(worst <= 1.0,
               "%s: %d threads at once, splitting the rows or the columns (B's offset and "
               "stride), stay within the bound (worst error / bound %.3g)",
               kernel, THREADS, worst);
    else
        tap_ok(same && worst <= 1.0,
               "%s: %d threads at once, splitting the rows or the columns (B's offset and "
               "stride), give the single call's bits",
               kernel, THREADS);
}

/* Whether /proc/cpuinfo lists avx512_bf16: -1 when it cannot be read. */
static int cpuinfo_has_bf16(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return -1;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = !strncmp(line, "flags", 5) && strstr(line, " avx512_bf16");
    fclose(f);
    return found;
}

int main(void) {
    fr_rng rng;
    fr_rng_seed(&rng, 20261207);
    tap_plan(10 + 2 + 7 + 2 + 1 + 2);
    test_conversions(&rng);

    bool native = fr_bf16_native();
    int listed = cpuinfo_has_bf16();
    if (listed < 0)
        tap_skip("no /proc/cpuinfo to hold fr_bf16_native() against");
    else
        tap_ok(native == listed, "fr_bf16_native() is %s, as /proc/cpuinfo's flags say",
               native ? "true" : "false");
    fr_bf16_force_fallback(true);
    bool forced = !fr_bf16_native();
    fr_bf16_force_fallback(false);
    tap_ok(forced && fr_bf16_native() == native,
           "fr_bf16_force_fallback(true) makes fr_bf16_native() false, false restores it");

    test_gemm_shapes(&rng, native);
    test_a_rounding(&rng, true, "the fallback");
    if (native)
        test_a_rounding(&rng, false, "AVX512_BF16");
    else
        tap_skip("this CPU has no AVX512_BF16");
    test_degenerate();
    test_threads(&rng, true, "the fallback");
    if (native)
        test_threads(&rng, false, "AVX512_BF16");
    else
        tap_skip("this CPU has no AVX512_BF16");
    return tap_done();
}
