/*
 * test_transformer_kernels.c - the transformer kernels of
 * src/layers/transformer_kernels.h (layer norm, GELU, token and position
 * embeddings, attention) against direct float64 references written here,
 * loop by loop from PyTorch's definitions, on random inputs of several
 * shapes (seq 1, odd widths, one head and several, causal and not).  What
 * must hold:
 *   - every output and gradient is within a stated error of the reference,
 *     measured as max |float32 - float64| / (max |float64| + 1e-6) over the
 *     tensor (the error relative to the tensor's scale);
 *   - parameter gradients are overwritten, or added to with `accumulate`;
 *     NULL gradients and in-place calls work where the header allows them;
 *   - GELU equals PyTorch's own values at fixed points.
 * Buffers come from malloc with their exact size so AddressSanitizer sees any
 * write past them; outputs start as NaN so that a value never written shows.
 */
#include "internal.h"
#include "layers/transformer_kernels.h"
#include "tap.h"
#include "reference.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Errors allowed, relative to the tensor's largest value (see above); float32
 * rounding is 6e-8 per operation, and the worst seen here is in brackets. */
#define LAYERNORM_TOLERANCE 1e-5 /* [2.3e-7] */
#define GELU_TOLERANCE 1e-6      /* backward [1.5e-7] */
/* GELU's forward also per element, |f32 - f64| / (|f64| + 1e-6), so that
 * the negative tail, where GELU is small, is checked at its own scale (its
 * textbook 0.5 x (1 + erf) would be off by 1e-2 there in float32) [1.8e-6] */
#define GELU_ELEMENT_TOLERANCE 1e-5
#define EXP_TOLERANCE 2.4e-7        /* fr_vector_expf, per element: 2 ulp [8e-8] */
#define EMBEDDING_TOLERANCE 1e-6    /* sums of a few rows [2e-8] */
#define ATTENTION_TOLERANCE 1e-5    /* [4.6e-7] */

/* ------------------------------------------------------- helpers */

static float *random_floats(fr_rng *rng, size_t count, float scale) {
    float *values = malloc((count ? count : 1) * sizeof *values);
    for (size_t i = 0; i < count; i++)
        values[i] = scale * (2.0f * fr_rng_uniform(rng) - 1.0f);
    return values;
}

/* The worst error of one behaviour over all its shapes, and where it was. */
typedef struct worst_case {
    double error;
    char where[128];
} worst_case;

static void worst_update(worst_case *worst, double error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void worst_update(worst_case *worst, double error, const char *fmt, ...) {
    if (worst->where[0] && !(error > worst->error))
        return;
    worst->error = error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(worst->where, sizeof worst->where, fmt, ap);
    va_end(ap);
}

/* One TAP line: `what` holds within `tolerance`, with the worst case seen. */
static void check_worst(const worst_case *worst, double tolerance, const char *what) {
    tap_ok(worst->error < tolerance, "%s (error %.2g < %.0g, worst at %s)", what, worst->error,
           tolerance, worst->where[0] ? worst->where : "-");
}

static bool same_floats(const float *a, const float *b, size_t count) {
    return memcmp(a, b, count * sizeof *a) == 0;
}

/* ---------------------------------------------------- layer norm */

#define LAYERNORM_EPS 1e-5f

typedef struct layernorm_shape {
    long rows;
    int dim;
} layernorm_shape;

static const layernorm_shape layernorm_shapes[] = {{1, 1}, {4, 7}, {3, 64}, {5, 129}, {2, 384}};
#define LAYERNORM_SHAPE_COUNT (sizeof layernorm_shapes / sizeof layernorm_shapes[0])

/* nn.LayerNorm in double: biased variance; gamma/beta NULL mean 1 and 0. */
static void layernorm_reference(const float *in, const float *gamma, const float *beta, long rows,
                                int dim, double *out, double *mean, double *rstd) {
    for (long r = 0; r < rows; r++) {
        const float *x = in + r * dim;
        double sum = 0.0, squares = 0.0;
        for (int i = 0; i < dim; i++)
            sum += x[i];
        mean[r] = sum / dim;
        for (int i = 0; i < dim; i++)
            squares += (x[i] - mean[r]) * (x[i] - mean[r]);
        rstd[r] = 1.0 / sqrt(squares / dim + (double)LAYERNORM_EPS);
        for (int i = 0; i < dim; i++)
            out[r * dim + i] = (x[i] - mean[r]) * rstd[r] * (gamma ? gamma[i] : 1.0) +
                               (beta ? beta[i] : 0.0);
    }
}

/* Its gradients through the Jacobian, entry by entry:
 * d xhat_j / d x_i = rstd (delta_ij - 1/dim - xhat_i xhat_j / dim). */
static void layernorm_backward_reference(const float *in, const float *dout, const float *gamma,
                                         long rows, int dim, double *din, double *dgamma,
                                         double *dbeta) {
    double *xhat = zeroed_doubles((size_t)dim);
    for (int i = 0; i < dim; i++)
        dgamma[i] = dbeta[i] = 0.0;
    for (long r = 0; r < rows; r++) {
        const float *x = in + r * dim, *dy = dout + r * dim;
        double sum = 0.0, squares = 0.0;
        for (int i = 0; i < dim; i++)
            sum += x[i];
        double mean = sum / dim;
        for (int i = 0; i < dim; i++)
            squares += (x[i] - mean) * (x[i] - mean);
        double rstd = 1.0 / sqrt(squares / dim + (double)LAYERNORM_EPS);
        for (int i = 0; i < dim; i++)
            xhat[i] = (x[i] - mean) * rstd;
        for (int i = 0; i < dim; i++) {
            double total = 0.0;
            for (int j = 0; j < dim; j++)
                total += dy[j] * (gamma ? gamma[j] : 1.0) * rstd *
                         ((i == j ? 1.0 : 0.0) - 1.0 / dim - xhat[i] * xhat[j] / dim);
            din[r * dim + i] = total;
            dgamma[i] += dy[i] * xhat[i];
            dbeta[i] += dy[i];
        }
    }
    free(xhat);
}

/* Everything one layer norm shape needs, inputs random, outputs NaN. */
typedef struct layernorm_case {
    long rows;
    int dim;
    size_t count;
    float *in, *gamma, *beta, *dout, *out, *mean, *rstd, *din, *dgamma, *dbeta;
    double *want_out, *want_mean, *want_rstd, *want_din, *want_dgamma, *want_dbeta;
} layernorm_case;

static layernorm_case layernorm_case_of(layernorm_shape shape, fr_rng *rng, bool affine) {
    layernorm_case c;
    c.rows = shape.rows;
    c.dim = shape.dim;
    c.count = (size_t)shape.rows * (size_t)shape.dim;
    c.in = random_floats(rng, c.count, 2.0f);
    /* an offset, so that the mean matters */
    for (size_t i = 0; i < c.count; i++)
        c.in[i] += 3.0f;
    c.gamma = affine ? random_floats(rng, (size_t)c.dim, 1.5f) : NULL;
    c.beta = affine ? random_floats(rng, (size_t)c.dim, 1.0f) : NULL;
    c.dout = random_floats(rng, c.count, 1.0f);
    c.out = filled_floats(c.count, NAN);
    c.mean = filled_floats((size_t)c.rows, NAN);
    c.rstd = filled_floats((size_t)c.rows, NAN);
    c.din = filled_floats(c.count, NAN);
    c.dgamma = filled_floats((size_t)c.dim, NAN);
    c.dbeta = filled_floats((size_t)c.dim, NAN);
    c.want_out = zeroed_doubles(c.count);
    c.want_mean = zeroed_doubles((size_t)c.rows);
    c.want_rstd = zeroed_doubles((size_t)c.rows);
    c.want_din = zeroed_doubles(c.count);
    c.want_dgamma = zeroed_doubles((size_t)c.dim);
    c.want_dbeta = zeroed_doubles((size_t)c.dim);
    layernorm_reference(c.in, c.gamma, c.beta, c.rows, c.dim, c.want_out, c.want_mean,
                        c.want_rstd);
    layernorm_backward_reference(c.in, c.dout, c.gamma, c.rows, c.dim, c.want_din, c.want_dgamma,
                                 c.want_dbeta);
    return c;
}

static void layernorm_case_free(layernorm_case *c) {
    float *floats[] = {c->in,  c->gamma, c->beta, c->dout,   c->out,
                       c->mean, c->rstd, c->din,  c->dgamma, c->dbeta};
    double *doubles[] = {c->want_out, c->want_mean,   c->want_rstd,
                         c->want_din, c->want_dgamma, c->want_dbeta};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        free(floats[i]);
    for (size_t i = 0; i < sizeof doubles / sizeof doubles[0]; i++)
        free(doubles[i]);
}

static void layernorm_forward_of(layernorm_case *c) {
    fr_layernorm_forward(c->in, c->gamma, c->beta, c->out, c->mean, c->rstd, c->rows, c->dim,
                         LAYERNORM_EPS);
}

static void layernorm_backward_of(layernorm_case *c, float *din, float *dgamma, float *dbeta,
                                  bool accumulate) {
    fr_layernorm_backward(c->in, c->dout, c->gamma, c->mean, c->rstd, c->rows, c->dim, din,
                          dgamma, dbeta, accumulate);
}

static void test_layernorm(fr_rng *rng) {
    worst_case forward = {0}, forward_plain = {0}, backward = {0}, backward_plain = {0};
    worst_case accumulated = {0};
    bool in_place_same = true, null_grads_same = true, grad_in_place_same = true;
    for (size_t s = 0; s < LAYERNORM_SHAPE_COUNT; s++) {
        layernorm_shape shape = layernorm_shapes[s];
        for (int affine = 0; affine <= 1; affine++) {
            layernorm_case c = layernorm_case_of(shape, rng, affine);
            layernorm_forward_of(&c);
            double error = fmax(relative_error(c.out, c.want_out, c.count),
                                fmax(relative_error(c.mean, c.want_mean, (size_t)c.rows),
                                     relative_error(c.rstd, c.want_rstd, (size_t)c.rows)));
            worst_update(affine ? &forward : &forward_plain, error, "rows=%ld dim=%d", c.rows,
                         c.dim);

            /* garbage in dgamma and dbeta: overwritten without accumulate */
            float *dgamma = filled_floats((size_t)c.dim, 1e30f);
            float *dbeta = filled_floats((size_t)c.dim, -1e30f);
            layernorm_backward_of(&c, c.din, dgamma, dbeta, false);
            /* dgamma and dbeta are the gradients at gamma = 1 and beta = 0
             * when the forward had neither */
            error = fmax(relative_error(c.din, c.want_din, c.count),
                         fmax(relative_error(dgamma, c.want_dgamma, (size_t)c.dim),
                              relative_error(dbeta, c.want_dbeta, (size_t)c.dim)));
            worst_update(affine ? &backward : &backward_plain, error, "rows=%ld dim=%d", c.rows,
                         c.dim);

            /* accumulate: 0.5 + this call's gradient */
            for (int i = 0; i < c.dim; i++)
                dgamma[i] = dbeta[i] = 0.5f;
            layernorm_backward_of(&c, c.din, dgamma, dbeta, true);
            for (int i = 0; i < c.dim; i++) {
                c.want_dgamma[i] += 0.5;
                c.want_dbeta[i] += 0.5;
            }
            worst_update(&accumulated,
                         fmax(relative_error(dgamma, c.want_dgamma, (size_t)c.dim),
                              relative_error(dbeta, c.want_dbeta, (size_t)c.dim)),
                         "rows=%ld dim=%d affine=%d", c.rows, c.dim, affine);

            /* NULL gradients: each alone gives the bits it gave beside the others */
            float *din_alone = filled_floats(c.count, NAN);
            float *dgamma_alone = filled_floats((size_t)c.dim, NAN);
            float *dbeta_alone = filled_floats((size_t)c.dim, NAN);
            float *din_all = filled_floats(c.count, NAN);
            layernorm_backward_of(&c, din_all, dgamma, dbeta, false);
            layernorm_backward_of(&c, din_alone, NULL, NULL, false);
            layernorm_backward_of(&c, NULL, dgamma_alone, NULL, false);
            layernorm_backward_of(&c, NULL, NULL, dbeta_alone, false);
            null_grads_same &= same_floats(din_alone, din_all, c.count) &&
                               same_floats(dgamma_alone, dgamma, (size_t)c.dim) &&
                               same_floats(dbeta_alone, dbeta, (size_t)c.dim);

            /* din in dout's place */
            float *dout_saved = copy_floats(c.dout, c.count);
            layernorm_backward_of(&c, c.dout, NULL, NULL, false);
            grad_in_place_same &= same_floats(c.dout, din_all, c.count);
            memcpy(c.dout, dout_saved, c.count * sizeof *c.dout);

            /* out in in's place */
            float *out_saved = copy_floats(c.out, c.count);
            fr_layernorm_forward(c.in, c.gamma, c.beta, c.in, c.mean, c.rstd, c.rows, c.dim,
                                 LAYERNORM_EPS);
            in_place_same &= same_floats(c.in, out_saved, c.count);

            float *scratch[] = {dgamma,  dbeta,      din_alone, dgamma_alone,
                                dbeta_alone, din_all, dout_saved, out_saved};
            for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++)
                free(scratch[i]);
            layernorm_case_free(&c);
        }
    }
    check_worst(&forward, LAYERNORM_TOLERANCE,
                "layernorm forward with gamma and beta equals the float64 reference: out, "
                "mean, rstd");
    check_worst(&forward_plain, LAYERNORM_TOLERANCE,
                "layernorm forward with gamma and beta NULL normalizes only");
    check_worst(&backward, LAYERNORM_TOLERANCE,
                "layernorm backward equals the Jacobian in float64: din, and dgamma and dbeta "
                "overwritten without accumulate (+-1e30 before)");
    check_worst(&backward_plain, LAYERNORM_TOLERANCE,
                "layernorm backward with gamma NULL (a scale of 1) gives din, and dgamma and "
                "dbeta at gamma = 1, beta = 0");
    check_worst(&accumulated, LAYERNORM_TOLERANCE,
                "layernorm backward with accumulate adds dgamma and dbeta to what is there");
    tap_ok(null_grads_same,
           "layernorm backward: din, dgamma, dbeta each computed alone (the others NULL) give "
           "the same bits");
    tap_ok(grad_in_place_same, "layernorm backward with din == dout gives the same bits");
    tap_ok(in_place_same, "layernorm forward with out == in gives the same bits");
}

/* ---------------------------------------------------------- GELU */

/* Where GELU is tested: a grid over [-10, 10] (both tails, where the forms'
 * textbook expressions cancel), an odd count so vector loops have a tail. */
#define GELU_POINTS 2001
#define PI 3.14159265358979323846

static double gelu_reference(double x, bool tanh_approx) {
    if (tanh_approx)
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / PI) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * erfc(-x / sqrt(2.0));
}

static double gelu_derivative_reference(double x, bool tanh_approx) {
    if (tanh_approx) {
        double u = sqrt(2.0 / PI) * (x + 0.044715 * x * x * x), t = tanh(u);
        return 0.5 * (1.0 + t) +
               0.5 * x * (1.0 - t * t) * sqrt(2.0 / PI) * (1.0 + 3.0 * 0.044715 * x * x);
    }
    return 0.5 * erfc(-x / sqrt(2.0)) + x * exp(-0.5 * x * x) / sqrt(2.0 * PI);
}

/* max over elements of |got - want| / (|want| + 1e-6). */
static double elementwise_error(const float *got, const double *want, size_t count) {
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double error = isnan(got[i]) ? INFINITY : fabs(got[i] - want[i]) / (fabs(want[i]) + 1e-6);
        worst = error > worst ? error : worst;
    }
    return worst;
}

/* PyTorch's values, computed once with torch 1.13 in float64:
 *   x = torch.tensor(GELU_TORCH_X, dtype=torch.float64, requires_grad=True)
 *   y = torch.nn.functional.gelu(x, approximate=...)   # 'none', then 'tanh'
 *   torch.autograd.grad(y.sum(), x)                     # the derivative
 * printed with '%.17g'. */
static const float gelu_torch_x[] = {-4.0f, -2.5f, -1.0f, -0.5f, 0.0f, 0.25f, 1.0f, 2.0f, 3.5f};
#define GELU_TORCH_POINTS (sizeof gelu_torch_x / sizeof gelu_torch_x[0])
static const double gelu_torch_erf[GELU_TORCH_POINTS] = {
    -0.00012668496733247991, -0.015524163314440398, -0.15865525393145702,
    -0.15426876936299344,    0,                     0.14967658142073093,
    0.84134474606854304,     1.9544997361036416,    3.4991857982233756};
static const double gelu_torch_erf_grad[GELU_TORCH_POINTS] = {
    -0.00050364966122642149, -0.037611085908145193, -0.083315470587686347,
    0.13250487534383712,     0.5,                   0.69537335488363605,
    1.0833154705876864,      1.0852318010781969,    1.0028217603536247};
static const double gelu_torch_tanh[GELU_TORCH_POINTS] = {
    -7.0245948192271257e-05, -0.015084266089998577, -0.15880800939172329,
    -0.15428599017485606,    0,                     0.149675350701685,
    0.84119199060827676,     1.954597694087775,     3.4993838023446262};
static const double gelu_torch_tanh_grad[GELU_TORCH_POINTS] = {
    -0.00033512319712218684, -0.037951576212666177, -0.082964083845782577,
    0.13263009646535764,     0.5,                   0.69535409515106039,
    1.0829640838457826,      1.0860992566236183,    1.0024226437601167};

static void test_gelu_form(bool tanh_approx) {
    const char *form = tanh_approx ? "tanh" : "erf";
    size_t count = GELU_POINTS;
    float *x = malloc(count * sizeof *x), *dout = malloc(count * sizeof *dout);
    double *want = zeroed_doubles(count), *want_grad = zeroed_doubles(count);
    for (size_t i = 0; i < count; i++) {
        x[i] = -10.0f + 20.0f * (float)i / (float)(count - 1);
        dout[i] = 0.5f + (float)(i % 7) * 0.25f;
        want[i] = gelu_reference(x[i], tanh_approx);
        want_grad[i] = dout[i] * gelu_derivative_reference(x[i], tanh_approx);
    }
    float *out = filled_floats(count, NAN), *din = filled_floats(count, NAN);
    fr_gelu_forward(x, out, count, tanh_approx);
    fr_gelu_backward(x, dout, din, count, tanh_approx);
    double error = elementwise_error(out, want, count);
    tap_ok(error < GELU_ELEMENT_TOLERANCE,
           "gelu %s forward equals float64 at every point of [-10, 10], each to its own scale, "
           "tails included (error per element %.2g < %.0g)",
           form, error, GELU_ELEMENT_TOLERANCE);
    /* per element would not do here: GELU' crosses 0 near x = -0.75, where
     * its two terms cancel */
    error = relative_error(din, want_grad, count);
    tap_ok(error < GELU_TOLERANCE,
           "gelu %s backward equals dout * GELU'(x) in float64 on [-10, 10] (error %.2g < %.0g)",
           form, error, GELU_TOLERANCE);

    /* in place: out == in, din == dout */
    float *in_place = copy_floats(x, count), *grad_in_place = copy_floats(dout, count);
    fr_gelu_forward(in_place, in_place, count, tanh_approx);
    fr_gelu_backward(x, grad_in_place, grad_in_place, count, tanh_approx);
    tap_ok(same_floats(in_place, out, count) && same_floats(grad_in_place, din, count),
           "gelu %s forward with out == in and backward with din == dout give the same bits",
           form);

    /* PyTorch's own numbers */
    const double *torch_value = tanh_approx ? gelu_torch_tanh : gelu_torch_erf;
    const double *torch_grad = tanh_approx ? gelu_torch_tanh_grad : gelu_torch_erf_grad;
    float ones[GELU_TORCH_POINTS], value[GELU_TORCH_POINTS], grad[GELU_TORCH_POINTS];
    for (size_t i = 0; i < GELU_TORCH_POINTS; i++)
        ones[i] = 1.0f;
    fr_gelu_forward(gelu_torch_x, value, GELU_TORCH_POINTS, tanh_approx);
    fr_gelu_backward(gelu_torch_x, ones, grad, GELU_TORCH_POINTS, tanh_approx);
    error = fmax(elementwise_error(value, torch_value, GELU_TORCH_POINTS),
                 elementwise_error(grad, torch_grad, GELU_TORCH_POINTS));
    tap_ok(error < GELU_ELEMENT_TOLERANCE,
           "gelu %s equals torch.nn.functional.gelu(approximate='%s') and its gradient at x in "
           "{-4, -2.5, -1, -0.5, 0, 0.25, 1, 2, 3.5} (error per element %.2g < %.0g)",
           form, tanh_approx ? "tanh" : "none", error, GELU_ELEMENT_TOLERANCE);
    free(x);
    free(dout);
    free(want);
    free(want_grad);
    free(out);
    free(din);
    free(in_place);
    free(grad_in_place);
}

/* The vector exp the softmax and GELU use: on a grid of [-87.29, 87.99], and its
 * ends as the header states them. */
static void test_vector_expf(void) {
    double worst = 0.0;
    const int points = 100003;
    for (int i = 0; i < points; i++) {
        float x = -87.29f + (87.99f + 87.29f) * (float)i / (float)(points - 1);
        double want = exp((double)x);
        double error = fabs(fr_vector_expf(x) - want) / want;
        worst = error > worst ? error : worst;
    }
    tap_ok(worst < EXP_TOLERANCE,
           "fr_vector_expf is within 2 ulp of exp on [-87.29, 87.99] (relative error %.2g < %.2g)",
           worst, EXP_TOLERANCE);
    tap_ok(fr_vector_expf(-87.31f) == 0.0f && fr_vector_expf(-INFINITY) == 0.0f &&
               fr_vector_expf(88.5f) == fr_vector_expf(88.0f) &&
               fr_vector_expf(INFINITY) == fr_vector_expf(88.0f) && isnan(fr_vector_expf(NAN)),
           "fr_vector_expf gives 0 below -87.3, exp(88) above 88 (never inf), NaN for NaN");
}

static void test_gelu(void) {
    test_gelu_form(false);
    test_gelu_form(true);
}

/* ---------------------------------------------------- embeddings */

static void test_token_embedding(fr_rng *rng) {
    /* id 3 three times, 0 and vocab - 1 at the ends of the table, 5 never */
    const int32_t ids[] = {3, 0, 3, 6, 1, 3, 2};
    const long rows = sizeof ids / sizeof ids[0];
    const int vocab = 7, dim = 5;
    size_t table_count = (size_t)vocab * dim, out_count = (size_t)rows * dim;
    float *table = random_floats(rng, table_count, 1.0f);
    float *out = filled_floats(out_count, NAN);
    fr_embedding_forward(ids, table, out, rows, dim);
    bool rows_copied = true;
    for (long r = 0; r < rows; r++)
        rows_copied &= same_floats(out + r * dim, table + ids[r] * dim, (size_t)dim);
    tap_ok(rows_copied, "embedding forward: out row r is table row ids[r], bit for bit");

    float *dout = random_floats(rng, out_count, 1.0f);
    double *want = zeroed_doubles(table_count);
    for (long r = 0; r < rows; r++)
        for (int i = 0; i < dim; i++)
            want[ids[r] * dim + i] += dout[r * dim + i];
    float *dtable = filled_floats(table_count, 1e30f);
    fr_embedding_backward(ids, dout, dtable, rows, dim, vocab, false);
    double error = relative_error(dtable, want, table_count);
    tap_ok(error < EMBEDDING_TOLERANCE,
           "embedding backward without accumulate: the table gradient is zeroed (1e30 before; "
           "row 5, never used, is 0) and a repeated id sums its rows (error %.2g < %.0g)",
           error, EMBEDDING_TOLERANCE);
    for (size_t i = 0; i < table_count; i++) {
        dtable[i] = 0.25f;
        want[i] += 0.25;
    }
    fr_embedding_backward(ids, dout, dtable, rows, dim, vocab, true);
    error = relative_error(dtable, want, table_count);
    tap_ok(error < EMBEDDING_TOLERANCE,
           "embedding backward with accumulate adds to the table gradient (error %.2g < %.0g)",
           error, EMBEDDING_TOLERANCE);
    free(table);
    free(out);
    free(dout);
    free(want);
    free(dtable);
}

static void test_position_embedding(fr_rng *rng) {
    /* a table longer than the sequence: rows [seq, table_rows) are never reached */
    const int n = 3, seq = 4, dim = 5, table_rows = 6;
    size_t count = (size_t)n * seq * dim, table_count = (size_t)table_rows * dim;
    size_t used = (size_t)seq * dim;
    float *in = random_floats(rng, count, 1.0f), *table = random_floats(rng, table_count, 1.0f);
    double *want = zeroed_doubles(count);
    for (int s = 0; s < n; s++)
        for (size_t i = 0; i < used; i++)
            want[s * used + i] = (double)in[s * used + i] + table[i];
    float *out = filled_floats(count, NAN);
    fr_position_embedding_forward(in, table, out, n, seq, dim);
    double error = relative_error(out, want, count);
    tap_ok(error < EMBEDDING_TOLERANCE,
           "position embedding forward: out[s][t] = in[s][t] + table[t] (error %.2g < %.0g)",
           error, EMBEDDING_TOLERANCE);
    fr_position_embedding_forward(in, table, in, n, seq, dim);
    tap_ok(same_floats(in, out, count), "position embedding forward in place gives the same bits");

    float *dout = random_floats(rng, count, 1.0f), *din = filled_floats(count, NAN);
    double *want_table = zeroed_doubles(table_count);
    for (int s = 0; s < n; s++)
        for (size_t i = 0; i < used; i++)
            want_table[i] += dout[s * used + i];
    for (size_t i = used; i < table_count; i++)
        want_table[i] = 7.0; /* the rows beyond seq keep what was there */
    float *dtable = filled_floats(table_count, 7.0f);
    for (size_t i = 0; i < used; i++)
        dtable[i] = 1e30f;
    fr_position_embedding_backward(dout, din, dtable, n, seq, dim, false);
    error = relative_error(dtable, want_table, table_count);
    tap_ok(same_floats(din, dout, count) && error < EMBEDDING_TOLERANCE,
           "position embedding backward: din = dout, table rows [0, seq) overwritten by the "
           "sum over samples, rows beyond seq untouched (error %.2g < %.0g)",
           error, EMBEDDING_TOLERANCE);
    for (size_t i = 0; i < used; i++) {
        dtable[i] = -0.5f;
        want_table[i] -= 0.5;
    }
    float *dout_saved = copy_floats(dout, count);
    fr_position_embedding_backward(dout, dout, dtable, n, seq, dim, true);
    fr_position_embedding_backward(dout, NULL, NULL, n, seq, dim, true);
    error = relative_error(dtable, want_table, table_count);
    tap_ok(error < EMBEDDING_TOLERANCE && same_floats(dout, dout_saved, count),
           "position embedding backward with accumulate adds to rows [0, seq) only; din == dout "
           "and NULL din and dtable are allowed (error %.2g < %.0g)",
           error, EMBEDDING_TOLERANCE);
    free(in);
    free(table);
    free(want);
    free(out);
    free(dout);
    free(din);
    free(want_table);
    free(dtable);
    free(dout_saved);
}

/* ----------------------------------------------------- attention */

typedef struct attention_case_shape {
    int n, seq, heads, dim;
} attention_case_shape;

/* seq 1; one head; odd head widths; seq 70 and 64 under the mask run the
 * kernel's blocks of 32 rows with a short last block and without one */
static const attention_case_shape attention_shapes[] = {
    {2, 5, 2, 8}, {1, 1, 3, 6}, {3, 7, 1, 5}, {2, 9, 3, 21}, {1, 70, 3, 12}, {2, 64, 2, 16}};
#define ATTENTION_SHAPE_COUNT (sizeof attention_shapes / sizeof attention_shapes[0])

/* Loop by loop in double, per (sample, head): the scores, the softmax over
 * the attended positions, out; then dP, dS = P (dP - sum P dP), dQ, dK, dV.
 * prob holds seq * seq doubles of room. */
static void attention_reference(attention_case_shape shape, bool causal, const float *qkv,
                                const float *dout, double *out, double *dqkv, double *prob,
                                double *score_grad) {
    int seq = shape.seq, dim = shape.dim, head_dim = shape.dim / shape.heads;
    size_t stride = 3 * (size_t)dim;
    double scale = 1.0 / sqrt((double)head_dim);
    for (int s = 0; s < shape.n; s++)
        for (int h = 0; h < shape.heads; h++) {
            const float *q = qkv + s * seq * stride + h * head_dim, *k = q + dim, *v = q + 2 * dim;
            const float *dy = dout + s * seq * dim + h * head_dim;
            double *o = out + s * seq * dim + h * head_dim;
            double *dq = dqkv + s * seq * stride + h * head_dim, *dk = dq + dim, *dv = dq + 2 * dim;
            for (int t = 0; t < seq; t++) {
                int valid = causal ? t + 1 : seq;
                double max = -INFINITY, sum = 0.0;
                for (int j = 0; j < valid; j++) {
                    double score = 0.0;
                    for (int d = 0; d < head_dim; d++)
                        score += (double)q[t * stride + d] * k[j * stride + d];
                    prob[t * seq + j] = score * scale;
                    max = fmax(max, prob[t * seq + j]);
                }
                for (int j = 0; j < valid; j++)
                    sum += prob[t * seq + j] = exp(prob[t * seq + j] - max);
                for (int j = 0; j < seq; j++)
                    prob[t * seq + j] = j < valid ? prob[t * seq + j] / sum : 0.0;
                for (int d = 0; d < head_dim; d++) {
                    double total = 0.0;
                    for (int j = 0; j < valid; j++)
                        total += prob[t * seq + j] * v[j * stride + d];
                    o[t * dim + d] = total;
                }
            }
            for (int t = 0; t < seq; t++) {
                double weighted = 0.0;
                for (int j = 0; j < seq; j++) {
                    double total = 0.0;
                    for (int d = 0; d < head_dim; d++)
                        total += (double)dy[t * dim + d] * v[j * stride + d];
                    score_grad[t * seq + j] = total;
                    weighted += prob[t * seq + j] * total;
                }
                for (int j = 0; j < seq; j++)
                    score_grad[t * seq + j] =
                        prob[t * seq + j] * (score_grad[t * seq + j] - weighted);
            }
            for (int t = 0; t < seq; t++)
                for (int d = 0; d < head_dim; d++) {
                    double q_total = 0.0, k_total = 0.0, v_total = 0.0;
                    for (int j = 0; j < seq; j++) {
                        q_total += score_grad[t * seq + j] * k[j * stride + d];
                        k_total += score_grad[j * seq + t] * q[j * stride + d];
                        v_total += prob[j * seq + t] * dy[j * dim + d];
                    }
                    dq[t * stride + d] = q_total * scale;
                    dk[t * stride + d] = k_total * scale;
                    dv[t * stride + d] = v_total;
                }
        }
}

static void test_attention(fr_rng *rng) {
    worst_case forward[2], backward[2];
    memset(forward, 0, sizeof forward);
    memset(backward, 0, sizeof backward);
    bool repeatable = true;
    for (size_t s = 0; s < ATTENTION_SHAPE_COUNT; s++)
        for (int causal = 0; causal <= 1; causal++) {
            attention_case_shape shape = attention_shapes[s];
            size_t rows = (size_t)shape.n * shape.seq;
            size_t qkv_count = rows * 3 * shape.dim, out_count = rows * shape.dim;
            size_t square = (size_t)shape.seq * shape.seq;
            size_t scratch_count =
                fr_attention_scratch_floats(shape.n, shape.seq, shape.heads, shape.dim);
            /* inputs of +-2, so that the softmax is far from uniform */
            float *qkv = random_floats(rng, qkv_count, 2.0f);
            float *dout = random_floats(rng, out_count, 1.0f);
            float *out = filled_floats(out_count, NAN), *dqkv = filled_floats(qkv_count, NAN);
            float *scratch = filled_floats(scratch_count, NAN);
            double *want_out = zeroed_doubles(out_count), *want_dqkv = zeroed_doubles(qkv_count);
            double *prob = zeroed_doubles(square), *score_grad = zeroed_doubles(square);
            attention_reference(shape, causal, qkv, dout, want_out, want_dqkv, prob, score_grad);

            fr_attention_forward(qkv, out, scratch, shape.n, shape.seq, shape.heads, shape.dim,
                                 causal);
            fr_attention_backward(qkv, dout, dqkv, scratch, shape.n, shape.seq, shape.heads,
                                  shape.dim, causal);
            worst_update(&forward[causal], relative_error(out, want_out, out_count),
                         "n=%d seq=%d heads=%d dim=%d", shape.n, shape.seq, shape.heads,
                         shape.dim);
            worst_update(&backward[causal], relative_error(dqkv, want_dqkv, qkv_count),
                         "n=%d seq=%d heads=%d dim=%d", shape.n, shape.seq, shape.heads,
                         shape.dim);

            /* again on a used scratch and dqkv: the same bits */
            float *out_again = filled_floats(out_count, NAN);
            float *dqkv_again = filled_floats(qkv_count, 1e30f);
            fr_attention_forward(qkv, out_again, scratch, shape.n, shape.seq, shape.heads,
                                 shape.dim, causal);
            fr_attention_backward(qkv, dout, dqkv_again, scratch, shape.n, shape.seq, shape.heads,
                                  shape.dim, causal);
            repeatable &= same_floats(out, out_again, out_count) &&
                          same_floats(dqkv, dqkv_again, qkv_count);
            float *buffers[] = {qkv, dout, out, dqkv, scratch, out_again, dqkv_again};
            for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++)
                free(buffers[i]);
            free(want_out);
            free(want_dqkv);
            free(prob);
            free(score_grad);
        }
    check_worst(&forward[0], ATTENTION_TOLERANCE,
                "attention forward without the mask equals softmax(q k^T / sqrt(D)) v per head "
                "in float64");
    check_worst(&forward[1], ATTENTION_TOLERANCE,
                "attention forward with the causal mask: position t attends to 0..t only");
    check_worst(&backward[0], ATTENTION_TOLERANCE,
                "attention backward without the mask: dq, dk, dv in dqkv equal float64");
    check_worst(&backward[1], ATTENTION_TOLERANCE,
                "attention backward with the causal mask: dq, dk, dv in dqkv equal float64");
    tap_ok(repeatable,
           "attention forward and backward again on the used scratch give the same bits, and "
           "backward overwrites dqkv (1e30 before)");
}

int main(void) {
    fr_rng rng;
    fr_rng_seed(&rng, 20240601);
    tap_plan(8 + 2 + 2 * 4 + 3 + 4 + 5);
    test_layernorm(&rng);
    test_vector_expf();
    test_gelu();
    test_token_embedding(&rng);
    test_position_embedding(&rng);
    test_attention(&rng);
    return tap_done();
}
