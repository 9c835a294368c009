/*
 * test_layers.c - every layer on its own, built by hand the way the model
 * builds it (ops, arguments, input shape, then infer_shape), with weights and
 * scratch allocated here.  What must hold:
 *   - forward equals a direct, loop-by-loop reference computed in double;
 *   - backward equals central differences of the loss L = sum(out * R) for a
 *     fixed random R (so dout = R), for din, dweight and dbias;
 *   - frozen parameters (NULL dweight/dbias) change nothing else, a NULL din
 *     is allowed, and weight gradients are overwritten, never added to
 *     (the trainer relies on it to skip zeroing its gradient slabs);
 *   - infer_shape computes PyTorch's shapes and rejects what cannot fit;
 *   - every kind in the registry is an ops table the parser and the model can
 *     rely on (its argument schema binds as a Python call would).
 * Buffers come from malloc with their exact size so AddressSanitizer sees any
 * write past a layer's output or scratch.
 */
#include "internal.h"
#include "tap.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------ building layers */

/* `args` in the order of the kind's constructor (ops->args), as PyTorch's. */
static fr_layer layer_of(const fr_layer_ops *ops, const char *name, fr_shape in,
                         const int *args) {
    fr_layer l;
    memset(&l, 0, sizeof l);
    l.ops = ops;
    snprintf(l.name, sizeof l.name, "%s", name);
    for (int i = 0; i < fr_layer_arg_count(ops); i++)
        l.args[i] = args[i];
    l.in = in;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        l.params[k] = -1;
    return l;
}

static fr_layer linear_layer(fr_shape in, int in_features, int out_features) {
    return layer_of(&fr_linear_ops, "fc", in, (const int[]){in_features, out_features, 1});
}

static fr_layer conv_layer(fr_shape in, int in_c, int out_c, int k, int stride,
                           int pad) {
    return layer_of(&fr_conv2d_ops, "conv", in, (const int[]){in_c, out_c, k, stride, pad, 1});
}

static fr_layer pool_layer(fr_shape in, int k, int stride) {
    return layer_of(&fr_maxpool2d_ops, "pool", in, (const int[]){k, stride, 0});
}

/* A kind the tests reach through the registry, as the parser does. */
static fr_layer kind_layer(const char *kind, fr_shape in, const int *args) {
    const fr_layer_ops *ops = fr_layer_kind_find(kind);
    if (!ops) {
        tap_diag("no kind '%s' in the registry", kind);
        exit(1);
    }
    return layer_of(ops, kind, in, args);
}

static fr_layer relu_layer(fr_shape in) {
    return layer_of(&fr_relu_ops, "relu", in, NULL);
}

static float uniform_between(fr_rng *rng, float lo, float hi) {
    return lo + (hi - lo) * fr_rng_uniform(rng);
}

static float *random_floats(fr_rng *rng, size_t count) {
    float *values = malloc(count * sizeof *values);
    for (size_t i = 0; i < count; i++)
        values[i] = uniform_between(rng, -1.0f, 1.0f);
    return values;
}

static float *filled_floats(size_t count, float value) {
    float *values = malloc(count * sizeof *values);
    for (size_t i = 0; i < count; i++)
        values[i] = value;
    return values;
}

/* A layer under test with everything its forward and backward need. */
typedef struct rig {
    fr_layer layer;
    int n;
    size_t in_count, out_count, weight_count, bias_count;
    float *in, *out, *weight, *bias;
    float *upstream; /* R in L = sum(out * R): the gradient arriving at out */
    void *scratch;
    fr_rng rng;
} rig;

/* Random input, parameters and R; false if infer_shape refused the layer. */
static bool rig_open(rig *r, fr_layer layer, int n, uint64_t seed) {
    fr_error err = {0};
    memset(r, 0, sizeof *r);
    r->layer = layer;
    r->n = n;
    fr_rng_seed(&r->rng, seed);
    if (layer.ops->infer_shape(&r->layer, &err) != FR_OK) {
        tap_diag("infer_shape: %s", err.msg);
        return false;
    }
    fr_layer *l = &r->layer;
    r->in_count = (size_t)n * fr_shape_numel(l->in);
    r->out_count = (size_t)n * fr_shape_numel(l->out);
    r->weight_count = l->param_ndim[FR_WEIGHT] ? 1 : 0;
    for (int d = 0; d < l->param_ndim[FR_WEIGHT]; d++)
        r->weight_count *= (size_t)l->param_shape[FR_WEIGHT][d];
    r->bias_count = l->param_ndim[FR_BIAS] ? (size_t)l->param_shape[FR_BIAS][0] : 0;
    r->in = random_floats(&r->rng, r->in_count);
    r->out = filled_floats(r->out_count, NAN);
    r->upstream = random_floats(&r->rng, r->out_count);
    if (r->weight_count) {
        r->weight = random_floats(&r->rng, r->weight_count);
        r->bias = r->bias_count ? random_floats(&r->rng, r->bias_count) : NULL;
    }
    l->param_data[FR_WEIGHT] = r->weight;
    l->param_data[FR_BIAS] = r->bias;
    size_t scratch_bytes = l->ops->scratch_bytes(l, n);
    r->scratch = scratch_bytes ? malloc(scratch_bytes) : NULL;
    return true;
}

static void rig_close(rig *r) {
    free(r->in);
    free(r->out);
    free(r->upstream);
    free(r->weight);
    free(r->bias);
    free(r->scratch);
}

static void rig_forward(rig *r) {
    r->layer.ops->forward(&r->layer, r->in, r->out, r->n, r->scratch);
}

static void rig_backward(rig *r, float *din, float *dweight, float *dbias) {
    fr_param_grads grads = {{dweight, dbias}, 0};
    r->layer.ops->backward(&r->layer, r->in, r->out, r->upstream, din, &grads, r->n, r->scratch);
}

/* L = sum(out * R), summed in double so rounding stays far below the
 * differences the gradient check takes. */
static double rig_loss(rig *r) {
    rig_forward(r);
    double loss = 0.0;
    for (size_t i = 0; i < r->out_count; i++)
        loss += (double)r->out[i] * r->upstream[i];
    return loss;
}

/* ------------------------------------------------- comparisons */

/*
 * The worst disagreement between analytic gradients and central differences
 * over every element of `values`, as a fraction of the tolerance
 * 1e-3 + 1e-2 |numeric|: <= 1 passes.  Every layer here is piecewise linear in
 * each input and parameter, so with no kink within eps the difference is
 * exact up to float rounding, and a wrong transpose, a missing term or a
 * gradient in the wrong place misses by far more than that.
 */
static double gradient_error(rig *r, float *values, size_t count,
                             const float *analytic) {
    const float eps = 1e-2f;
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        float saved = values[i];
        values[i] = saved + eps;
        float up = values[i];
        double loss_up = rig_loss(r);
        values[i] = saved - eps;
        float down = values[i];
        double loss_down = rig_loss(r);
        values[i] = saved;
        /* Divide by the step actually taken, after rounding to float. */
        double numeric = (loss_up - loss_down) / ((double)up - (double)down);
        double error = fabs(analytic[i] - numeric) / (1e-3 + 1e-2 * fabs(numeric));
        if (error > worst)
            worst = error;
    }
    return worst;
}

/* Largest |got - want| relative to 1 + |want|. */
static double max_difference(const float *got, const double *want,
                             size_t count) {
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = fabs(got[i] - want[i]) / (1.0 + fabs(want[i]));
        if (!(d <= worst)) /* also catches NaN */
            worst = d;
    }
    return worst;
}

static bool same_floats(const float *a, const float *b, size_t count) {
    return memcmp(a, b, count * sizeof *a) == 0;
}

/* -------------------------------------- checks every layer shares */

/* din (pre-filled with garbage: it must be overwritten), dweight, dbias
 * against central differences. */
static void check_gradients(rig *r, const char *what) {
    float *din = filled_floats(r->in_count, 1e3f);
    /* Garbage in the gradients too: backward must overwrite them. */
    float *dweight = filled_floats(r->weight_count + 1, -5e2f);
    float *dbias = filled_floats(r->bias_count + 1, 3e2f);
    rig_forward(r);
    rig_backward(r, din, r->weight ? dweight : NULL, r->bias ? dbias : NULL);
    double error = gradient_error(r, r->in, r->in_count, din);
    tap_ok(error <= 1.0, "%s: din matches central differences (error %.3g of tolerance)",
           what, error);
    if (r->weight) {
        error = gradient_error(r, r->weight, r->weight_count, dweight);
        tap_ok(error <= 1.0, "%s: dweight matches central differences (error %.3g)",
               what, error);
    }
    if (r->bias) {
        error = gradient_error(r, r->bias, r->bias_count, dbias);
        tap_ok(error <= 1.0, "%s: dbias matches central differences (error %.3g)",
               what, error);
    }
    free(din);
    free(dweight);
    free(dbias);
}

/*
 * The freezing contract: NULL dweight/dbias must not change din, a NULL din
 * must not change the weight gradients, each gradient is computed on its own
 * when the other is frozen, and gradients replace what is there.
 */
static void check_frozen_and_accumulation(rig *r, const char *what) {
    size_t nw = r->weight_count, nb = r->bias_count, ni = r->in_count;
    float *din_all = calloc(ni, sizeof(float)), *din_frozen = filled_floats(ni, 7.0f);
    float *dw_all = calloc(nw, sizeof(float)), *db_all = calloc(nb, sizeof(float));
    float *dw = calloc(nw, sizeof(float)), *db = calloc(nb, sizeof(float));
    float *dw_alone = calloc(nw, sizeof(float)), *db_alone = calloc(nb, sizeof(float));

    rig_forward(r);
    rig_backward(r, din_all, dw_all, db_all);

    rig_backward(r, din_frozen, NULL, NULL);
    tap_ok(same_floats(din_frozen, din_all, ni),
           "%s: with weight and bias frozen din is unchanged", what);

    rig_backward(r, NULL, dw, db);
    tap_ok(same_floats(dw, dw_all, nw) && same_floats(db, db_all, nb),
           "%s: with din NULL the weight and bias gradients are unchanged", what);

    rig_backward(r, NULL, dw_alone, NULL);
    rig_backward(r, NULL, NULL, db_alone);
    tap_ok(same_floats(dw_alone, dw_all, nw) && same_floats(db_alone, db_all, nb),
           "%s: dweight with the bias frozen and dbias with the weight frozen "
           "are each unchanged", what);

    for (size_t i = 0; i < nw; i++)
        dw[i] = 1e3f + (float)i;
    for (size_t i = 0; i < nb; i++)
        db[i] = -1e3f - (float)i;
    rig_backward(r, NULL, dw, db);
    tap_ok(same_floats(dw, dw_all, nw) && same_floats(db, db_all, nb),
           "%s: backward overwrites dweight and dbias, whatever they held", what);

    free(din_all);
    free(din_frozen);
    free(dw_all);
    free(db_all);
    free(dw);
    free(db);
    free(dw_alone);
    free(db_alone);
}

/* --------------------------------------------------- references */

static double *direct_linear(const rig *r) {
    int in_f = r->layer.args[0], out_f = r->layer.args[1];
    double *out = malloc(r->out_count * sizeof *out);
    for (int s = 0; s < r->n; s++)
        for (int o = 0; o < out_f; o++) {
            double sum = r->bias[o];
            for (int i = 0; i < in_f; i++)
                sum += (double)r->in[s * in_f + i] * r->weight[o * in_f + i];
            out[s * out_f + o] = sum;
        }
    return out;
}

static double *direct_conv(const rig *r) {
    const fr_layer *l = &r->layer;
    /* conv2d(in_channels, out_channels, kernel_size, stride, padding) */
    int k = l->args[2], stride = l->args[3], pad = l->args[4];
    fr_shape in = l->in, out = l->out;
    double *result = malloc(r->out_count * sizeof *result);
    double *dst = result;
    for (int s = 0; s < r->n; s++)
        for (int o = 0; o < out.d[0]; o++)
            for (int y = 0; y < out.d[1]; y++)
                for (int x = 0; x < out.d[2]; x++) {
                    double sum = r->bias ? r->bias[o] : 0.0;
                    for (int c = 0; c < in.d[0]; c++)
                        for (int ki = 0; ki < k; ki++)
                            for (int kj = 0; kj < k; kj++) {
                                int iy = y * stride - pad + ki;
                                int ix = x * stride - pad + kj;
                                if (iy < 0 || iy >= in.d[1] || ix < 0 || ix >= in.d[2])
                                    continue;
                                sum += (double)r->in[((s * in.d[0] + c) * in.d[1] + iy) * in.d[2] + ix] *
                                       r->weight[((o * in.d[0] + c) * k + ki) * k + kj];
                            }
                    *dst++ = sum;
                }
    return result;
}

/* maxpool2d or avgpool2d(kernel_size, stride, padding): the padding is -inf
 * for the maximum and zeros for the average, which divides by k * k
 * (PyTorch's count_include_pad=True). */
static double *direct_pool(const rig *r, bool average) {
    const fr_layer *l = &r->layer;
    int k = l->args[0], stride = l->args[1], pad = l->args[2];
    fr_shape in = l->in, out = l->out;
    double *result = malloc(r->out_count * sizeof *result);
    double *dst = result;
    for (int p = 0; p < r->n * in.d[0]; p++)
        for (int y = 0; y < out.d[1]; y++)
            for (int x = 0; x < out.d[2]; x++) {
                double best = -INFINITY, sum = 0.0;
                for (int ki = 0; ki < k; ki++)
                    for (int kj = 0; kj < k; kj++) {
                        int iy = y * stride - pad + ki, ix = x * stride - pad + kj;
                        if (iy < 0 || iy >= in.d[1] || ix < 0 || ix >= in.d[2])
                            continue;
                        double v = r->in[((size_t)p * in.d[1] + iy) * in.d[2] + ix];
                        sum += v;
                        if (v > best)
                            best = v;
                    }
                *dst++ = average ? sum / (k * k) : best;
            }
    return result;
}

static double *direct_maxpool(const rig *r) { return direct_pool(r, false); }

/* adaptive_avgpool2d(output_size): cell i averages [floor(i*H/o), ceil((i+1)*H/o)). */
static double *direct_adaptive_avgpool(const rig *r) {
    fr_shape in = r->layer.in, out = r->layer.out;
    double *result = malloc(r->out_count * sizeof *result);
    double *dst = result;
    for (int p = 0; p < r->n * in.d[0]; p++)
        for (int y = 0; y < out.d[1]; y++)
            for (int x = 0; x < out.d[2]; x++) {
                int y0 = (int)floor((double)y * in.d[1] / out.d[1]);
                int y1 = (int)ceil((double)(y + 1) * in.d[1] / out.d[1]);
                int x0 = (int)floor((double)x * in.d[2] / out.d[2]);
                int x1 = (int)ceil((double)(x + 1) * in.d[2] / out.d[2]);
                double sum = 0.0;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++)
                        sum += r->in[((size_t)p * in.d[1] + iy) * in.d[2] + ix];
                *dst++ = sum / ((y1 - y0) * (x1 - x0));
            }
    return result;
}

static void check_forward(rig *r, double *want, const char *what) {
    rig_forward(r);
    double diff = max_difference(r->out, want, r->out_count);
    tap_ok(diff <= 1e-5, "%s: forward equals the direct reference (difference %.3g)",
           what, diff);
    free(want);
}

/* ------------------------------------------------------- linear */

static void test_linear(void) {
    rig r;
    /* A 2x2x3 input exercises the implicit flatten: 12 features. */
    if (!tap_ok(rig_open(&r, linear_layer(fr_shape_chw(2, 2, 3), 12, 5), 3, 1),
                "linear(12, 5) accepts a 2x2x3 input (12 features)"))
        return;
    tap_ok(r.layer.out.ndim == 1 && r.layer.out.d[0] == 5 &&
               r.layer.param_ndim[FR_WEIGHT] == 2 && r.layer.param_shape[FR_WEIGHT][0] == 5 &&
               r.layer.param_shape[FR_WEIGHT][1] == 12 && r.layer.param_shape[FR_BIAS][0] == 5 &&
               r.layer.fan_in == 12,
           "linear(12, 5): output [5], weight [5, 12], bias [5], fan_in 12");
    check_forward(&r, direct_linear(&r), "linear batch 3");
    check_gradients(&r, "linear batch 3");
    check_frozen_and_accumulation(&r, "linear");
    rig_close(&r);
}

/* ------------------------------------------------------- conv2d */

static void test_conv2d(void) {
    static const struct {
        int in_c, out_c, k, stride, pad, h, w;
    } cases[] = {
        {2, 3, 3, 1, 0, 5, 7}, /* the common case, non-square input */
        {2, 3, 3, 2, 1, 5, 7}, /* stride and padding */
        {2, 3, 2, 2, 0, 6, 7}, /* even kernel, odd width floors */
        {3, 4, 1, 1, 0, 5, 7}, /* 1x1: the path without im2col */
        {2, 2, 2, 3, 1, 7, 8}, /* stride > kernel: inputs no window reads */
        {1, 2, 3, 1, 2, 3, 4}, /* padding wider than a third of the input */
        /* "Same" padding, stride 1: im2col's shifted-plane path, down to
         * taps that shift the whole plane out (resnet18's 1x1 at the end). */
        {2, 3, 3, 1, 1, 5, 7},
        {2, 2, 5, 1, 2, 2, 3},
        {1, 2, 3, 1, 1, 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "conv2d(%d, %d, k%d, s%d, p%d) on %dx%dx%d",
                 cases[i].in_c, cases[i].out_c, cases[i].k, cases[i].stride,
                 cases[i].pad, cases[i].in_c, cases[i].h, cases[i].w);
        rig r;
        fr_layer l = conv_layer(fr_shape_chw(cases[i].in_c, cases[i].h, cases[i].w),
                                cases[i].in_c, cases[i].out_c, cases[i].k,
                                cases[i].stride, cases[i].pad);
        if (!tap_ok(rig_open(&r, l, 2, 100 + i), "%s: infer_shape accepts it", what))
            continue;
        check_forward(&r, direct_conv(&r), what);
        check_gradients(&r, what);
        if (i == 1)
            check_frozen_and_accumulation(&r, what);
        rig_close(&r);
    }
}

/* Backward takes small planes in groups of samples (one GEMM each for dW and
 * the input gradient), but a sample's forward must not depend on the samples
 * beside it: the feature cache computes the frozen trunk in dataset order and
 * a step in batch order, and the two must agree bit for bit. */
static void test_conv2d_forward_alone(void) {
    rig r;
    fr_layer l = conv_layer(fr_shape_chw(8, 4, 4), 8, 16, 3, 1, 1);
    if (!tap_ok(rig_open(&r, l, 6, 77), "conv2d(8, 16, 3, padding=1) on 6 x 8x4x4: accepted"))
        return;
    rig_forward(&r);
    size_t in_numel = fr_shape_numel(r.layer.in), out_numel = fr_shape_numel(r.layer.out);
    float *alone = malloc(out_numel * sizeof *alone);
    bool same = true;
    for (int s = 0; s < r.n; s++) {
        r.layer.ops->forward(&r.layer, r.in + s * in_numel, alone, 1, r.scratch);
        same = same && memcmp(alone, r.out + s * out_numel, out_numel * sizeof *alone) == 0;
    }
    tap_ok(same, "conv2d's forward gives each of 6 samples with 4x4 planes the bits it gets alone");
    free(alone);
    rig_close(&r);
}

/* conv2d(..., bias=False): no bias parameter, and none added. */
static void test_conv2d_without_bias(void) {
    rig r;
    fr_layer l = layer_of(&fr_conv2d_ops, "conv", fr_shape_chw(2, 5, 6),
                          (const int[]){2, 3, 3, 1, 1, 0});
    if (!tap_ok(rig_open(&r, l, 2, 150), "conv2d(2, 3, 3, padding=1, bias=False) on 2x5x6: "
                                         "infer_shape accepts it"))
        return;
    tap_ok(r.layer.param_ndim[FR_WEIGHT] == 4 && r.layer.param_shape[FR_BIAS][0] == 0 && r.layer.fan_in == 18,
           "conv2d with bias=False has a weight [3, 2, 3, 3] and no bias");
    check_forward(&r, direct_conv(&r), "conv2d bias=False");
    check_gradients(&r, "conv2d bias=False");
    rig_close(&r);
}

/* --------------------------------------------------------- relu */

static void test_relu(void) {
    rig r;
    if (!tap_ok(rig_open(&r, relu_layer(fr_shape_chw(2, 3, 4)), 2, 7),
                "relu accepts any shape"))
        return;
    tap_ok(r.layer.out.d[0] == 2 && r.layer.out.d[1] == 3 && r.layer.out.d[2] == 4 &&
               r.layer.param_ndim[FR_WEIGHT] == 0 && r.layer.param_shape[FR_BIAS][0] == 0,
           "relu keeps the shape and has no parameters");
    /* Keep every input at least 0.1 from the kink so the differences are exact. */
    for (size_t i = 0; i < r.in_count; i++)
        r.in[i] = (i % 3 ? 1.0f : -1.0f) * uniform_between(&r.rng, 0.1f, 1.0f);
    double *want = malloc(r.out_count * sizeof *want);
    for (size_t i = 0; i < r.in_count; i++)
        want[i] = r.in[i] > 0 ? r.in[i] : 0.0;
    check_forward(&r, want, "relu");
    check_gradients(&r, "relu");

    r.in[0] = 0.0f;
    r.in[1] = NAN;
    float *din = filled_floats(r.in_count, 1e3f);
    rig_forward(&r);
    rig_backward(&r, din, NULL, NULL);
    tap_ok(r.out[0] == 0.0f && din[0] == 0.0f,
           "relu: at exactly 0 the output and the gradient are 0 (as PyTorch)");
    tap_ok(isnan(r.out[1]), "relu: NaN passes through, as in PyTorch");
    /* Nothing wants the input gradient (relu first in the model): backward
     * must then write nothing, not even into the buffers it reads. */
    size_t in_bytes = r.in_count * sizeof(float), out_bytes = r.out_count * sizeof(float);
    float *in_before = malloc(in_bytes), *out_before = malloc(out_bytes);
    float *upstream_before = malloc(out_bytes);
    memcpy(in_before, r.in, in_bytes);
    memcpy(out_before, r.out, out_bytes);
    memcpy(upstream_before, r.upstream, out_bytes);
    rig_backward(&r, NULL, NULL, NULL);
    tap_ok(memcmp(in_before, r.in, in_bytes) == 0 && memcmp(out_before, r.out, out_bytes) == 0 &&
               memcmp(upstream_before, r.upstream, out_bytes) == 0,
           "relu: backward with din NULL leaves its input, output and upstream gradient untouched");
    free(in_before);
    free(out_before);
    free(upstream_before);
    free(din);
    rig_close(&r);
}

/* ---------------------------------------------------- maxpool2d */

/* Distinct values 0.05 apart, shuffled, so every window has one clear maximum
 * that a step of eps = 0.01 cannot change. */
static void distinct_inputs(rig *r) {
    for (size_t i = 0; i < r->in_count; i++)
        r->in[i] = 0.05f * ((float)i - (float)r->in_count / 2);
    for (size_t i = r->in_count; i > 1; i--) {
        size_t j = fr_rng_below(&r->rng, i);
        float t = r->in[i - 1];
        r->in[i - 1] = r->in[j];
        r->in[j] = t;
    }
}

static void test_maxpool2d(void) {
    static const struct {
        int k, stride, pad, c, h, w;
    } cases[] = {
        {2, 2, 0, 2, 5, 7}, /* odd sizes floor: 2x3 */
        {3, 2, 0, 2, 7, 6}, /* overlapping windows share maxima */
        {2, 2, 0, 3, 6, 41}, /* wide rows: the vectorized 2x2 path and its tail */
        {3, 2, 1, 2, 7, 6}, /* padding: the window's border is -inf */
        {2, 2, 1, 1, 5, 4}, /* padding with an even kernel */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "maxpool2d(k%d, s%d, p%d) on %dx%dx%d", cases[i].k,
                 cases[i].stride, cases[i].pad, cases[i].c, cases[i].h, cases[i].w);
        rig r;
        fr_layer l = layer_of(&fr_maxpool2d_ops, "pool",
                              fr_shape_chw(cases[i].c, cases[i].h, cases[i].w),
                              (const int[]){cases[i].k, cases[i].stride, cases[i].pad});
        if (!tap_ok(rig_open(&r, l, 2, 200 + i), "%s: infer_shape accepts it", what))
            continue;
        int oh = (cases[i].h + 2 * cases[i].pad - cases[i].k) / cases[i].stride + 1;
        int ow = (cases[i].w + 2 * cases[i].pad - cases[i].k) / cases[i].stride + 1;
        tap_ok(r.layer.out.d[0] == cases[i].c && r.layer.out.d[1] == oh && r.layer.out.d[2] == ow,
               "%s: output %dx%dx%d (floor mode)", what, cases[i].c, oh, ow);
        tap_ok(r.layer.ops->scratch_bytes(&r.layer, 5) == 5 * fr_shape_numel(r.layer.out) * 4,
               "%s: scratch holds one int32 argmax per output element", what);
        distinct_inputs(&r);
        check_forward(&r, direct_maxpool(&r), what);
        check_gradients(&r, what);
        rig_close(&r);
    }

    /* All-equal windows: PyTorch sends the gradient to the first element. */
    rig r;
    if (!rig_open(&r, pool_layer(fr_shape_chw(1, 4, 4), 2, 2), 1, 300))
        return;
    memset(r.in, 0, r.in_count * sizeof *r.in);
    float *din = filled_floats(r.in_count, 1e3f);
    rig_forward(&r);
    rig_backward(&r, din, NULL, NULL);
    bool first_wins = true;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) {
            bool first = y % 2 == 0 && x % 2 == 0;
            float want = first ? r.upstream[(y / 2) * 2 + x / 2] : 0.0f;
            first_wins = first_wins && din[y * 4 + x] == want;
        }
    tap_ok(first_wins, "maxpool2d: on ties the first maximum in the window gets the gradient");
    r.in[5] = NAN;
    rig_forward(&r);
    tap_ok(isnan(r.out[0]) && !isnan(r.out[1]),
           "maxpool2d: a NaN in a window makes that output NaN, as in PyTorch");
    free(din);
    rig_close(&r);

    /* The same rules on wide rows, where the 2x2 path runs vectorized.  In
     * window x a NaN sits at position x % 4; then a tie of two maxima starts
     * at position x % 3 and the first of the two must take the gradient. */
    if (!rig_open(&r, pool_layer(fr_shape_chw(1, 2, 64), 2, 2), 1, 301))
        return;
    bool nan_wins = true, ties_first = true;
    for (int x = 0; x < 32; x++) {
        int spot[4] = {2 * x, 2 * x + 1, 64 + 2 * x, 64 + 2 * x + 1};
        for (int c = 0; c < 4; c++)
            r.in[spot[c]] = (float)c;
        r.in[spot[x % 4]] = NAN;
    }
    rig_forward(&r);
    for (int x = 0; x < 32; x++)
        nan_wins = nan_wins && isnan(r.out[x]);
    for (int x = 0; x < 32; x++) {
        int spot[4] = {2 * x, 2 * x + 1, 64 + 2 * x, 64 + 2 * x + 1};
        for (int c = 0; c < 4; c++)
            r.in[spot[c]] = 1.0f;
        r.in[spot[x % 3]] = r.in[spot[x % 3 + 1]] = 5.0f;
    }
    rig_forward(&r);
    float *wide = filled_floats(r.in_count, 1e3f);
    rig_backward(&r, wide, NULL, NULL);
    for (int x = 0; x < 32; x++) {
        int spot[4] = {2 * x, 2 * x + 1, 64 + 2 * x, 64 + 2 * x + 1};
        ties_first = ties_first && r.out[x] == 5.0f;
        for (int c = 0; c < 4; c++)
            ties_first = ties_first && wide[spot[c]] == (c == x % 3 ? r.upstream[x] : 0.0f);
    }
    tap_ok(nan_wins, "maxpool2d 2x2 on wide rows: a NaN anywhere in the window wins");
    tap_ok(ties_first, "maxpool2d 2x2 on wide rows: of two equal maxima the first takes the gradient");
    free(wide);
    rig_close(&r);
}

/* ------------------------------------------------- average pools */

static void test_avgpool2d(void) {
    static const struct {
        int k, stride, pad, c, h, w;
    } cases[] = {
        {2, 2, 0, 2, 5, 7}, /* odd sizes floor */
        {3, 2, 1, 2, 7, 6}, /* padding: zeros that count in the divisor */
        {3, 1, 1, 1, 4, 5}, /* overlapping windows */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "avgpool2d(k%d, s%d, p%d) on %dx%dx%d", cases[i].k,
                 cases[i].stride, cases[i].pad, cases[i].c, cases[i].h, cases[i].w);
        rig r;
        fr_layer l = kind_layer("avgpool2d", fr_shape_chw(cases[i].c, cases[i].h, cases[i].w),
                                (const int[]){cases[i].k, cases[i].stride, cases[i].pad});
        if (!tap_ok(rig_open(&r, l, 2, 250 + i), "%s: infer_shape accepts it", what))
            continue;
        check_forward(&r, direct_pool(&r, true), what);
        check_gradients(&r, what);
        rig_close(&r);
    }
    fr_error err = {0};
    fr_layer too_wide = kind_layer("avgpool2d", fr_shape_chw(1, 6, 6), (const int[]){3, 1, 2});
    fr_layer too_wide_max = pool_layer(fr_shape_chw(1, 6, 6), 3, 1);
    too_wide_max.args[2] = 2;
    tap_ok(too_wide.ops->infer_shape(&too_wide, &err) == FR_EINVAL &&
               strstr(err.msg, "more than half the kernel") &&
               too_wide_max.ops->infer_shape(&too_wide_max, &err) == FR_EINVAL,
           "avgpool2d and maxpool2d refuse a padding over half the kernel, as PyTorch does");
    tap_diag("%s", err.msg);
}

static void test_adaptive_avgpool2d(void) {
    static const struct {
        int size, c, h, w;
    } cases[] = {
        {1, 3, 5, 7}, /* the global average: ResNet's head */
        {3, 2, 5, 7}, /* sizes that do not divide: windows overlap */
        {4, 1, 3, 3}, /* more cells than inputs */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "adaptive_avgpool2d(%d) on %dx%dx%d", cases[i].size,
                 cases[i].c, cases[i].h, cases[i].w);
        rig r;
        fr_layer l = kind_layer("adaptive_avgpool2d",
                                fr_shape_chw(cases[i].c, cases[i].h, cases[i].w),
                                (const int[]){cases[i].size});
        if (!tap_ok(rig_open(&r, l, 2, 270 + i) && r.layer.out.d[0] == cases[i].c &&
                        r.layer.out.d[1] == cases[i].size && r.layer.out.d[2] == cases[i].size,
                    "%s: output %dx%dx%d", what, cases[i].c, cases[i].size, cases[i].size))
            continue;
        check_forward(&r, direct_adaptive_avgpool(&r), what);
        check_gradients(&r, what);
        rig_close(&r);
    }
}

/* ------------------------------------------------------- shapes */

static int shape_error(fr_layer l, fr_error *err) {
    memset(err, 0, sizeof *err);
    return l.ops->infer_shape(&l, err);
}

static void test_shapes(void) {
    fr_error err;
    fr_shape mnist = fr_shape_chw(1, 28, 28);

    /* The example network of DESIGN.md, layer by layer. */
    fr_layer conv1 = conv_layer(mnist, 1, 32, 3, 1, 0);
    tap_ok(conv1.ops->infer_shape(&conv1, &err) == FR_OK && conv1.out.d[0] == 32 &&
               conv1.out.d[1] == 26 && conv1.out.d[2] == 26 && conv1.param_ndim[FR_WEIGHT] == 4 &&
               conv1.param_shape[FR_WEIGHT][0] == 32 && conv1.param_shape[FR_WEIGHT][1] == 1 &&
               conv1.param_shape[FR_WEIGHT][2] == 3 && conv1.param_shape[FR_WEIGHT][3] == 3 &&
               conv1.param_shape[FR_BIAS][0] == 32 && conv1.fan_in == 9,
           "conv2d(1, 32, 3) on 1x28x28: 32x26x26, weight [32, 1, 3, 3], fan_in 9");
    fr_layer conv2 = conv_layer(conv1.out, 32, 64, 3, 1, 0);
    tap_ok(conv2.ops->infer_shape(&conv2, &err) == FR_OK && conv2.out.d[0] == 64 &&
               conv2.out.d[1] == 24 && conv2.fan_in == 288,
           "conv2d(32, 64, 3) on 32x26x26: 64x24x24, fan_in 288");
    tap_ok(conv2.ops->scratch_bytes(&conv2, 1) == 288u * 24 * 24 * 4 &&
               conv2.ops->scratch_bytes(&conv2, 64) == 288u * 24 * 24 * 4,
           "conv2d scratch is one sample's columns whatever the batch (a 576-column plane)");
    /* resnet18's layer4 on 112x112 images has 4x4 planes: backward takes the
     * samples in groups of 16 (256 columns), the output gradients staged
     * beside the columns. */
    fr_layer small = conv_layer(fr_shape_chw(4, 4, 4), 4, 8, 3, 1, 1);
    tap_ok(small.ops->infer_shape(&small, &err) == FR_OK &&
               small.ops->scratch_bytes(&small, 1) == 36u * 16 * 4 &&
               small.ops->scratch_bytes(&small, 8) == (36u + 8) * 8 * 16 * 4 &&
               small.ops->scratch_bytes(&small, 64) == (36u + 8) * 16 * 16 * 4,
           "conv2d with 16-value planes unrolls up to 16 samples side by side "
           "and stages their output gradients beside them");
    fr_layer pool = pool_layer(conv2.out, 2, 2);
    tap_ok(pool.ops->infer_shape(&pool, &err) == FR_OK && pool.out.d[0] == 64 &&
               pool.out.d[1] == 12 && pool.out.d[2] == 12,
           "maxpool2d(2) on 64x24x24: 64x12x12");
    fr_layer flat = layer_of(&fr_flatten_ops, "flatten", pool.out, NULL);
    tap_ok(flat.ops->infer_shape(&flat, &err) == FR_OK && flat.out.ndim == 1 &&
               flat.out.d[0] == 9216 && flat.ops->alias &&
               !flat.ops->forward && !flat.ops->backward && flat.param_ndim[FR_WEIGHT] == 0,
           "flatten of 64x12x12: [9216], an alias with no forward or backward");
    fr_layer fc1 = linear_layer(flat.out, 9216, 128);
    tap_ok(fc1.ops->infer_shape(&fc1, &err) == FR_OK && fc1.out.d[0] == 128,
           "linear(9216, 128) on 9216x1x1: 128x1x1");
    fr_layer one = conv_layer(fr_shape_chw(3, 5, 5), 3, 4, 1, 1, 0);
    tap_ok(one.ops->infer_shape(&one, &err) == FR_OK &&
               one.ops->scratch_bytes(&one, 8) == 0,
           "conv2d with a 1x1 kernel, stride 1, no padding needs no scratch");

    /* Rejections. */
    fr_layer fc = layer_of(&fr_linear_ops, "fc1", fr_shape_chw(32, 13, 13), (const int[]){9216, 128, 1});
    tap_ok(shape_error(fc, &err) == FR_ESHAPE && err.status == FR_ESHAPE &&
               strcmp(err.msg, "fc1: linear(9216, 128) expects 9216 input features, "
                               "got 32x13x13 = 5408") == 0,
           "linear rejects the wrong number of features, naming both shapes");
    tap_diag("%s", err.msg);
    tap_ok(shape_error(conv_layer(mnist, 3, 8, 3, 1, 0), &err) == FR_ESHAPE &&
               strstr(err.msg, "expects 3 input channels") && strstr(err.msg, "1x28x28"),
           "conv2d rejects an input with other channels than its in_channels");
    tap_diag("%s", err.msg);
    tap_ok(shape_error(conv_layer(fr_shape_chw(1, 3, 3), 1, 8, 4, 1, 0), &err) == FR_ESHAPE &&
               strstr(err.msg, "1x3x3"),
           "conv2d rejects a kernel larger than its input");
    tap_diag("%s", err.msg);
    tap_ok(shape_error(conv_layer(fr_shape_chw(1, 3, 9), 1, 8, 6, 1, 1), &err) == FR_ESHAPE,
           "conv2d rejects a kernel larger than its input with the padding");
    fr_layer fits = conv_layer(fr_shape_chw(1, 3, 3), 1, 8, 5, 1, 1);
    tap_ok(fits.ops->infer_shape(&fits, &err) == FR_OK && fits.out.d[1] == 1 && fits.out.d[2] == 1,
           "conv2d accepts a kernel exactly as large as the padded input (1x1 out)");
    tap_ok(shape_error(conv_layer(mnist, 1, 8, 3, 0, 0), &err) == FR_EINVAL &&
               shape_error(conv_layer(mnist, 1, 8, 3, 1, -1), &err) == FR_EINVAL &&
               shape_error(conv_layer(mnist, 1, 0, 3, 1, 0), &err) == FR_EINVAL,
           "conv2d rejects stride 0, negative padding and zero channels");
    tap_ok(shape_error(pool_layer(fr_shape_chw(4, 2, 2), 3, 3), &err) == FR_ESHAPE &&
               strstr(err.msg, "4x2x2"),
           "maxpool2d rejects a window larger than its input");
    tap_diag("%s", err.msg);
    tap_ok(shape_error(pool_layer(fr_shape_chw(4, 2, 9), 3, 1), &err) == FR_ESHAPE,
           "maxpool2d rejects a window taller than its input even when it is wide enough");
    tap_ok(shape_error(linear_layer(fr_shape_chw(0, 1, 1), 0, 4), &err) == FR_EINVAL,
           "linear rejects zero input features");
}

/* ------------------------------------------------------- registry */

/* What spec.c and model.c assume of every kind without asking. */
static bool kind_is_sound(const fr_layer_ops *ops, char *why, size_t len) {
    for (const char *p = ops->kind; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) {
            snprintf(why, len, "its name is not lower case");
            return false;
        }
    if (fr_layer_kind_find(ops->kind) != ops) {
        snprintf(why, len, "its name is not its own in the registry");
        return false;
    }
    if (!ops->infer_shape || !ops->scratch_bytes || (!ops->alias && (!ops->forward || !ops->backward))) {
        snprintf(why, len, "a function is missing");
        return false;
    }
    int count = fr_layer_arg_count(ops);
    bool optional_seen = false, keyword_only_seen = false;
    for (int i = 0; i < count; i++) {
        const fr_layer_arg *arg = &ops->args[i];
        bool default_fits = arg->boolean ? arg->default_value == 0 || arg->default_value == 1
                                         : arg->default_value == FR_ARG_NONE ||
                                               arg->default_value >= arg->minimum;
        if ((optional_seen && !arg->optional) || (keyword_only_seen && !arg->keyword_only) ||
            (arg->keyword_only && !arg->optional) || (arg->optional && !default_fits)) {
            snprintf(why, len, "argument '%s' breaks the order of a Python call or its default",
                     arg->name);
            return false;
        }
        optional_seen = optional_seen || arg->optional;
        keyword_only_seen = keyword_only_seen || arg->keyword_only;
    }
    if (ops->implies_input != FR_IMPLIES_NOTHING && (count == 0 || ops->args[0].minimum < 1)) {
        snprintf(why, len, "it implies an input from a first argument it lacks");
        return false;
    }
    return true;
}

static void test_registry(void) {
    bool sound = fr_layer_kind_count > 0;
    char why[128] = "the registry is empty";
    for (int i = 0; sound && i < fr_layer_kind_count; i++) {
        sound = kind_is_sound(fr_layer_kinds[i], why, sizeof why);
        if (!sound)
            tap_diag("%s: %s", fr_layer_kinds[i]->kind, why);
    }
    tap_ok(sound, "every one of the %d kinds in the registry is sound: a lower-case name of its "
                  "own, its functions, required arguments before optional, keyword-only last",
           fr_layer_kind_count);
    tap_ok(fr_layer_kind_find("linear") == &fr_linear_ops && !fr_layer_kind_find("Linear") &&
               !fr_layer_kind_find("conv3d"),
           "fr_layer_kind_find finds a kind by its exact name, and nothing else");
}

int main(void) {
    tap_plan(140); /* every check below, counted: fewer or more fails the test */
    test_linear();
    test_conv2d();
    test_conv2d_without_bias();
    test_conv2d_forward_alone();
    test_relu();
    test_maxpool2d();
    test_avgpool2d();
    test_adaptive_avgpool2d();
    test_shapes();
    test_registry();
    return tap_done();
}
