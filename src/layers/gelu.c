/*
 * gelu.c - PyTorch's nn.GELU, element-wise, in its two forms: the exact one
 * (approximate='none', x Phi(x) with Phi the standard normal CDF) and the
 * tanh one (approximate='tanh', GPT-2's gelu_new).  Forward and backward
 * side by side, both forms per direction in one function.
 *
 * Both are written without erff or tanhf, which glibc cannot vectorize here,
 * and without the cancellation of their textbook forms where x is negative
 * (1 + erf and 1 + tanh then subtract two numbers close to 1):
 *   - the tanh form's 0.5 (1 + tanh(u)) is the logistic sigmoid of 2u,
 *     1 / (1 + e^(-2u)), so gelu = x / (1 + e^(-2u));
 *   - the exact form's Phi(x) = erfc(-x / sqrt 2) / 2, with erfc from
 *     Numerical Recipes' erfcc (a Chebyshev fit of erfc(z) e^(z^2), relative
 *     error below 1.2e-7 for every z >= 0; negative z by 2 - erfc(-z)).
 * Every exp is fr_vector_expf, so each loop vectorizes under `omp simd`, 8
 * floats a vector where the CPU has AVX2 (FR_ELEMENTWISE_CLONES: the same bits).
 */
#include "transformer_kernels.h"

#include <math.h>

#define SQRT_HALF 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f     /* the normal density at 0 */
#define TANH_FORM_SCALE 0.79788456080286536f /* sqrt(2 / pi) */
#define TANH_FORM_CUBIC 0.044715f

/* Phi(x), the standard normal CDF, through erfc of |x| / sqrt 2. */
static inline float normal_cdf(float x) {
    float z = fabsf(x) * SQRT_HALF;
    float t = 1.0f / (1.0f + 0.5f * z);
    float series =
        -1.26551223f +
        t * (1.00002368f +
             t * (0.37409196f +
                  t * (0.09678418f +
                       t * (-0.18628806f +
                            t * (0.27886807f +
                                 t * (-1.13520398f +
                                      t * (1.48851587f +
                                           t * (-0.82215223f + t * 0.17087277f))))))));
    float half_erfc = 0.5f * t * fr_vector_expf(series - z * z);
    /* x <= 0: half_erfc, else 1 - half_erfc; as arithmetic on selected
     * constants, which vectorizes where a branch around the subtraction
     * would not */
    float base = x > 0.0f ? 1.0f : 0.0f, sign = x > 0.0f ? -1.0f : 1.0f;
    return base + sign * half_erfc;
}

/* The tanh form's u = sqrt(2/pi) (x + 0.044715 x^3). */
static inline float tanh_form_argument(float x) {
    return TANH_FORM_SCALE * (x + TANH_FORM_CUBIC * x * x * x);
}

/* ----------------------------------------------------- forward */

FR_ELEMENTWISE_CLONES
void fr_gelu_forward(const float *in, float *out, size_t count, bool tanh_approx) {
    if (tanh_approx) {
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            float x = in[i];
            out[i] = x / (1.0f + fr_vector_expf(-2.0f * tanh_form_argument(x)));
        }
        return;
    }
#pragma omp simd
    for (size_t i = 0; i < count; i++) {
        float x = in[i];
        out[i] = x * normal_cdf(x);
    }
}

/* ---------------------------------------------------- backward */

/*
 * Exact form: GELU'(x) = Phi(x) + x phi(x), phi the normal density.
 * Tanh form: with s = sigmoid(2u) = 1 / (1 + e), e = e^(-2u),
 * GELU'(x) = s + x 2u'(x) s (1 - s), and s (1 - s) = e s^2, which stays
 * accurate where s is near 1; u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
 */
FR_ELEMENTWISE_CLONES
void fr_gelu_backward(const float *in, const float *dout, float *din, size_t count,
                      bool tanh_approx) {
    if (tanh_approx) {
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            float x = in[i];
            float e = fr_vector_expf(-2.0f * tanh_form_argument(x));
            float s = 1.0f / (1.0f + e);
            float du_dx = TANH_FORM_SCALE * (1.0f + 3.0f * TANH_FORM_CUBIC * x * x);
            din[i] = dout[i] * (s + 2.0f * x * du_dx * ((e * s) * s));
        }
        return;
    }
#pragma omp simd
    for (size_t i = 0; i < count; i++) {
        float x = in[i];
        float density = INV_SQRT_2PI * fr_vector_expf(-0.5f * x * x);
        din[i] = dout[i] * (normal_cdf(x) + x * density);
    }
}

/* ------------------------------------------------ the layer kind */

#include "kernels.h"

/* gelu(approximate='none'): erf form, or 'tanh' (GPT-2's gelu_new). */
enum { APPROXIMATE };
static const char *const approximations[] = {"none", "tanh", NULL};

static void gelu_forward(const fr_layer *l, const float *in, float *out, int n, void *scratch) {
    (void)scratch;
    fr_gelu_forward(in, out, (size_t)n * fr_shape_numel(l->in), l->args[APPROXIMATE] == 1);
}

static void gelu_backward(const fr_layer *l, const float *in, const float *out, const float *dout,
                          float *din, const fr_param_grads *grads, int n, void *scratch) {
    (void)out, (void)grads, (void)scratch;
    if (din)
        fr_gelu_backward(in, dout, din, (size_t)n * fr_shape_numel(l->in),
                         l->args[APPROXIMATE] == 1);
}

const fr_layer_ops fr_gelu_ops = {
    .kind = "gelu",
    .args = {{"approximate", .optional = true, .default_value = 0, .keyword_only = true,
              .choices = approximations}},
    .infer_shape = fr_infer_same_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = gelu_forward,
    .backward = gelu_backward,
};
