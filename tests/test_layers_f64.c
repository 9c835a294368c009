/*
 * test_layers_f64.c - the standard test of the layer registry: every kind in
 * fr_layer_kinds, the residual join and every loss of the loss table against
 * a naive float64 reference written here, loop by loop from PyTorch's
 * definitions.  The test iterates the registry and looks each kind up by name
 * in its table of checks (kind_checks): a kind without a check fails it, so
 * a kind comes with its reference or the build's tests break.
 *
 * What must hold, for every kind and each of its configurations (shapes and
 * arguments that exercise it, eval and train mode):
 *   - forward, the gradient at the input and each parameter's gradient for
 *     L = sum(out * R), R random (so the reference gradients are R
 *     backpropagated), are within the kind's stated tolerance of float64,
 *     measured as max |f32 - f64| / (max |f64| + 1e-6) over the tensor;
 *   - backward writes over its gradients (they start as garbage, the output
 *     as NaN); a kind that accumulates (ops->accumulates: a tied parameter's
 *     second user) adds, with fr_param_grads.accumulate set, the gradient it
 *     would have written onto what is there (to the bit where it adds in one
 *     operation, else to float rounding);
 *   - train mode runs through the hooks the trainer calls: batchnorm2d's
 *     batch statistics (forward_sums, forward_with, backward_sums and
 *     backward_with for one replica's rows and for a batch split between
 *     replicas, then commit), dropout's forward_at (its mask scales by
 *     1/(1-p), drops about p, depends on a row's place in the batch only, and
 *     backward applies the same mask).
 * The losses are checked the same way: the summed loss, its gradient times
 * the scale the trainer passes, the count of targets and the argmax hits.
 * Buffers come from malloc with their exact size so that AddressSanitizer
 * sees any write past a layer's output, scratch or gradients.
 */
#include "internal.h"
#include "layers/kernels.h"
#include "tap.h"
#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A real argument in the units the layers hold it in (eps=1e-5). */
#define REAL(value) ((int)((value) / FR_REAL_UNIT + 0.5))
/* Added to max |f64| in the relative error, so that an all-zero reference
 * still fails a nonzero result. */
#define TINY 1e-6

/* ------------------------------------------------------- helpers */

static float *random_floats(fr_rng *rng, size_t count, float scale, float offset) {
    float *values = malloc((count ? count : 1) * sizeof *values);
    for (size_t i = 0; i < count; i++) {
        float value = scale * (2.0f * fr_rng_uniform(rng) - 1.0f);
        /* never exactly 0: relu's and dropout's references read the sign */
        values[i] = offset + (value != 0.0f ? value : scale * 0x1p-20f);
    }
    return values;
}

static double *doubles_of(const float *from, size_t count) {
    double *values = zeroed_doubles(count);
    for (size_t i = 0; i < count; i++)
        values[i] = from[i];
    return values;
}

/* ------------------------------------------------ a layer under test */

/* How a configuration runs its layer. */
typedef enum layer_mode {
    EVAL,        /* forward and backward (eval mode: fr_layer.training false) */
    TRAIN_STATS, /* train mode through the batch-statistics hooks */
    TRAIN_AT,    /* train mode through forward_at, then backward */
} layer_mode;

/* One configuration of a kind: its arguments in the order of ops->args (every
 * one given, defaults included), the sample's shape and the batch. */
typedef struct layer_config {
    int args[FR_LAYER_ARGS_MAX];
    fr_shape in;
    int n;
    layer_mode mode;
    float scale, offset; /* inputs uniform in offset + [-scale, scale]; scale 0 means 1 */
    int replicas;        /* TRAIN_STATS: the batch split between this many (0: one) */
    bool in_place;       /* EVAL of an ops->inplace kind: out == in, as the trainer runs it */
    fr_lora lora;        /* a LoRA adapter (kinds that take one; rank 0: none; scale set here) */
    const char *note;    /* what the configuration exercises, for the messages */
} layer_config;

/*
 * A layer built the way the model builds it, its float32 inputs, parameters,
 * buffers and R, what frost computed, and the float64 reference: the same
 * values as doubles (x, r, p) and what the reference writes (y, dx, dp).
 */
typedef struct layer_case {
    fr_layer layer;
    const layer_config *config;
    int n;
    size_t in_count, out_count;
    size_t param_count[FR_LAYER_PARAMS_MAX]; /* 0: the layer has no such parameter */
    bool token_input;                        /* int32 ids (embedding): no din */
    int32_t *ids;
    float *in, *out, *upstream, *din;
    const float *backward_in; /* what backward reads as its input: in, or out in place */
    float *param[FR_LAYER_PARAMS_MAX], *grad[FR_LAYER_PARAMS_MAX];
    void *scratch;
    double *x, *r, *p[FR_LAYER_PARAMS_MAX];
    double *y, *dx, *dp[FR_LAYER_PARAMS_MAX];
    double *forward_sums; /* TRAIN_STATS: the sums forward_with was given */
    fr_rng rng;
} layer_case;

/* A configuration's table, and sample shapes: an image, a sequence, a vector. */
#define CONFIGS(list) list, (int)(sizeof list / sizeof list[0])
#define CHW(c, h, w) {3, {c, h, w, 0}}
#define SEQ(t, c) {2, {t, c, 0, 0}}
#define VEC(f) {1, {f, 0, 0, 0}}

/* The most replicas a configuration splits its batch between. */
#define REPLICAS_MAX 8
/* Garbage the gradients start as: backward must write over it. */
#define GARBAGE -7e2f
/* Dropout's place in the run (forward_at). */
#define RUN_SEED 20240611u
#define RUN_STEP 3L
#define FIRST_ROW 5

static const char *layer_mode_name(layer_mode mode) {
    return mode == TRAIN_STATS ? "train mode (batch statistics)"
           : mode == TRAIN_AT  ? "train mode (forward_at)"
                               : "eval mode";
}

static size_t param_numel(const fr_layer *l, int slot) {
    if (l->param_ndim[slot] == 0)
        return 0;
    size_t numel = 1;
    for (int d = 0; d < l->param_ndim[slot]; d++)
        numel *= (size_t)l->param_shape[slot][d];
    return numel;
}

static int param_slots(const fr_layer_ops *ops) {
    int slots = 0;
    while (slots < FR_LAYER_PARAMS_MAX && ops->params[slots].suffix)
        slots++;
    return slots;
}

/* The layer of `config`, named after its kind (dropout's mask hashes the
 * name), with infer_shape run; false with a diagnostic if it refused. */
static bool build_layer(const fr_layer_ops *ops, const layer_config *config, fr_layer *l) {
    fr_error err = {0};
    memset(l, 0, sizeof *l);
    l->ops = ops;
    snprintf(l->name, sizeof l->name, "%s", ops->kind);
    for (int i = 0; i < fr_layer_arg_count(ops); i++)
        l->args[i] = config->args[i];
    l->in = config->in;
    l->input = -1;
    l->first_buffer = -1;
    l->lora = config->lora;
    if (l->lora.rank > 0)
        l->lora.scale = fr_lora_scale(l->lora.rank, l->lora.alpha, l->lora.rslora);
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        l->params[k] = -1;
    if (ops->infer_shape(l, &err) != FR_OK) {
        tap_diag("%s: infer_shape refused the configuration: %s", ops->kind, err.msg);
        return false;
    }
    return true;
}

/* Random inputs (token ids below the vocabulary, with repeats, for an
 * embedding), parameters, buffers and R; the output NaN. */
static bool case_open(layer_case *c, const fr_layer_ops *ops, const layer_config *config,
                      uint64_t seed) {
    memset(c, 0, sizeof *c);
    if (!build_layer(ops, config, &c->layer))
        return false;
    fr_layer *l = &c->layer;
    c->config = config;
    c->n = config->n;
    fr_rng_seed(&c->rng, seed);
    float scale = config->scale > 0.0f ? config->scale : 1.0f;
    c->in_count = (size_t)c->n * fr_shape_numel(l->in);
    c->out_count = (size_t)c->n * fr_shape_numel(l->out);
    c->token_input = ops->input_dtype == FR_I32;
    if (c->token_input) {
        int vocab = param_numel(l, FR_WEIGHT) ? l->param_shape[FR_WEIGHT][0] : 1;
        c->ids = malloc(c->in_count * sizeof *c->ids);
        for (size_t i = 0; i < c->in_count; i++)
            c->ids[i] = (int32_t)fr_rng_below(&c->rng, (uint64_t)vocab);
        if (c->in_count > 2)
            c->ids[2] = c->ids[0]; /* a repeat for sure: its gradient rows add */
        c->in = (float *)(void *)c->ids;
    } else {
        c->in = random_floats(&c->rng, c->in_count, scale, config->offset);
        c->x = doubles_of(c->in, c->in_count);
        c->din = filled_floats(c->in_count, GARBAGE);
        c->dx = zeroed_doubles(c->in_count);
    }
    c->upstream = random_floats(&c->rng, c->out_count, 1.0f, 0.0f);
    c->r = doubles_of(c->upstream, c->out_count);
    c->out = filled_floats(c->out_count, NAN);
    c->y = zeroed_doubles(c->out_count);
    for (int k = 0; k < param_slots(ops); k++) {
        c->param_count[k] = param_numel(l, k);
        if (!c->param_count[k])
            continue;
        c->param[k] = random_floats(&c->rng, c->param_count[k], 1.0f, 0.0f);
        c->p[k] = doubles_of(c->param[k], c->param_count[k]);
        c->grad[k] = filled_floats(c->param_count[k], GARBAGE);
        c->dp[k] = zeroed_doubles(c->param_count[k]);
        l->param_data[k] = c->param[k];
    }
    /* Buffers as the model allocates them: [] or one per output channel;
     * float ones in [0.5, 1.5] (a running variance must be positive). */
    for (int b = 0; b < FR_LAYER_BUFFERS_MAX && ops->buffers[b].suffix; b++) {
        const fr_buffer_kind *kind = &ops->buffers[b];
        size_t numel = kind->scalar ? 1 : (size_t)l->out.d[0];
        if (kind->i64) {
            int64_t *count = calloc(numel, sizeof *count);
            count[0] = 3;
            l->buffer_data[b] = count;
        } else {
            l->buffer_data[b] = random_floats(&c->rng, numel, 0.5f, 1.0f);
        }
    }
    l->training = config->mode != EVAL;
    c->backward_in = c->in;
    size_t scratch_bytes = ops->scratch_bytes(l, c->n);
    c->scratch = scratch_bytes ? malloc(scratch_bytes) : NULL;
    return true;
}

static void case_close(layer_case *c) {
    if (c->token_input)
        free(c->ids);
    else
        free(c->in);
    free(c->out);
    free(c->upstream);
    free(c->din);
    free(c->scratch);
    free(c->x);
    free(c->r);
    free(c->y);
    free(c->dx);
    free(c->forward_sums);
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
        free(c->param[k]);
        free(c->grad[k]);
        free(c->p[k]);
        free(c->dp[k]);
    }
    for (int b = 0; b < FR_LAYER_BUFFERS_MAX; b++)
        free(c->layer.buffer_data[b]);
}

/* Which slots' gradients backward writes (all the layer has). */
static fr_param_grads grads_of(layer_case *c, float *const *into, bool accumulate) {
    fr_param_grads grads = {{NULL}, 0};
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        if (c->param_count[k]) {
            grads.grad[k] = into[k];
            if (accumulate)
                grads.accumulate |= 1u << k;
        }
    return grads;
}

/* The backward of EVAL and TRAIN_AT: din and parameter gradients from R
 * (`upstream`) into `into`. */
static void run_backward(layer_case *c, const float *upstream, float *din, float *const *into,
                         bool accumulate) {
    fr_param_grads grads = grads_of(c, into, accumulate);
    c->layer.ops->backward(&c->layer, c->backward_in, c->out, upstream, din, &grads, c->n,
                           c->scratch);
}

/* dst += src, count doubles: the trainer's sum of the replicas' statistics. */
static void add_doubles(double *dst, const double *src, int count) {
    for (int i = 0; i < count; i++)
        dst[i] += src[i];
}

/*
 * Train mode with batch statistics as the trainer runs it: the batch split
 * between the replicas by rows (3 rows between 4 replicas leave replica 0
 * none: it passes n = 0); each replica's sums added, in replica order, before
 * each half; each replica's parameter gradients, written over garbage, added
 * as the trainer adds the replicas' slabs.
 */
static void run_with_batch_statistics(layer_case *c) {
    const fr_layer_ops *ops = c->layer.ops;
    fr_layer *l = &c->layer;
    int replicas = c->config->replicas > 1 ? c->config->replicas : 1, count = ops->stats_count(l);
    size_t in_numel = fr_shape_numel(l->in), out_numel = fr_shape_numel(l->out);
    double *partial = zeroed_doubles((size_t)count), *backward_sums = zeroed_doubles((size_t)count);
    c->forward_sums = zeroed_doubles((size_t)count);
    /* replica r: rows [first[r], first[r + 1]) */
    int first[REPLICAS_MAX + 1];
    for (int r = 0; r <= replicas; r++)
        first[r] = r * c->n / replicas;
    float *replica_grad[FR_LAYER_PARAMS_MAX] = {NULL};
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        if (c->param_count[k]) {
            replica_grad[k] = malloc(c->param_count[k] * sizeof(float));
            memset(c->grad[k], 0, c->param_count[k] * sizeof(float));
        }
    for (int r = 0; r < replicas; r++) {
        ops->forward_sums(l, c->in + first[r] * in_numel, first[r + 1] - first[r], partial);
        add_doubles(c->forward_sums, partial, count);
    }
    for (int r = 0; r < replicas; r++)
        ops->forward_with(l, c->in + first[r] * in_numel, c->out + first[r] * out_numel,
                          first[r + 1] - first[r], c->forward_sums, c->scratch);
    for (int r = 0; r < replicas; r++) {
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
            for (size_t i = 0; i < c->param_count[k]; i++)
                replica_grad[k][i] = GARBAGE;
        ops->backward_sums(l, c->in + first[r] * in_numel, c->upstream + first[r] * out_numel,
                           first[r + 1] - first[r], partial, replica_grad[FR_WEIGHT],
                           replica_grad[FR_BIAS], c->forward_sums);
        add_doubles(backward_sums, partial, count);
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
            for (size_t i = 0; i < c->param_count[k]; i++)
                c->grad[k][i] += replica_grad[k][i];
    }
    for (int r = 0; r < replicas; r++)
        ops->backward_with(l, c->in + first[r] * in_numel, c->upstream + first[r] * out_numel,
                           c->din + first[r] * in_numel, first[r + 1] - first[r], backward_sums,
                           c->forward_sums);
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        free(replica_grad[k]);
    free(partial);
    free(backward_sums);
}

/* Forward and backward in the configuration's mode, as the trainer runs them. */
static void run_layer(layer_case *c) {
    const fr_layer_ops *ops = c->layer.ops;
    fr_layer *l = &c->layer;
    switch (c->config->mode) {
    case EVAL:
        if (c->config->in_place) { /* the output over the input, which backward never reads */
            memcpy(c->out, c->in, c->in_count * sizeof *c->out);
            c->backward_in = c->out;
            ops->forward(l, c->out, c->out, c->n, c->scratch);
        } else {
            ops->forward(l, c->in, c->out, c->n, c->scratch);
        }
        run_backward(c, c->upstream, c->din, c->grad, false);
        break;
    case TRAIN_AT:
        ops->forward_at(l, c->in, c->out, c->n, c->scratch, RUN_SEED, RUN_STEP, FIRST_ROW);
        run_backward(c, c->upstream, c->din, c->grad, false);
        break;
    case TRAIN_STATS:
        run_with_batch_statistics(c);
        break;
    }
}

/* ------------------------------------------------- the checks' table */

typedef struct kind_check kind_check;
struct kind_check {
    const char *kind;
    /* The largest relative error allowed for every quantity of every
     * configuration; the worst measured (gcc -O2, OpenBLAS) in the comment. */
    double tolerance;
    /* Fills c->y, c->dx and c->dp from c->x (or c->ids), c->p, c->r and the
     * layer's arguments and buffers; the zeroed arrays are there to add into. */
    void (*reference)(layer_case *c);
    const layer_config *configs;
    int config_count;
    /* Train mode's further checks (TRAIN_STATS and TRAIN_AT configurations),
     * and how many TAP lines each writes. */
    void (*train_checks)(const kind_check *check, layer_case *c, const char *what);
    int train_lines;
    /* A kind without forward and backward (an alias, the join): its own
     * checks instead of configurations, and their TAP lines. */
    void (*special)(const kind_check *check, const fr_layer_ops *ops);
    int special_lines;
};

/* --------------------------------------------------- references */

/* The argument called `name`; the table's configurations give them all. */
static int arg_of(const layer_case *c, const char *name) {
    const fr_layer_ops *ops = c->layer.ops;
    for (int i = 0; i < fr_layer_arg_count(ops); i++)
        if (strcmp(ops->args[i].name, name) == 0)
            return c->layer.args[i];
    tap_diag("%s has no argument '%s'", ops->kind, name);
    abort();
}

/* Rows of `features` values each in a batch of c->n samples. */
static long rows_of(const layer_case *c, int features) {
    return (long)(c->in_count / (size_t)features);
}

/*
 * A LoRA adapter's part, added onto the base's: y += s · drop(x) Aᵀ Bᵀ, with
 * drop the adapter's dropout mask in train mode (its hash, as lora.c's, at the
 * run's place: RUN_SEED, RUN_STEP, FIRST_ROW) and the gradients through it.
 */
static void lora_reference(layer_case *c, int in_f, int out_f) {
    const fr_layer *l = &c->layer;
    if (!c->param_count[FR_LORA_A])
        return;
    int rank = l->lora.rank;
    double s = l->lora.scale, p = l->training ? l->lora.dropout : 0.0;
    const double *A = c->p[FR_LORA_A], *B = c->p[FR_LORA_B];
    long rows = rows_of(c, in_f), per = rows / c->n;
    uint64_t key = fr_dropout_key(RUN_SEED, RUN_STEP, l->name, "lora_dropout");
    uint64_t threshold = (uint64_t)(p * (1 << 24) + 0.5);
    double *xd = zeroed_doubles((size_t)in_f), *keep = zeroed_doubles((size_t)in_f);
    double *t = zeroed_doubles((size_t)rank), *dt = zeroed_doubles((size_t)rank);
    for (long r = 0; r < rows; r++) {
        const double *x = c->x + r * in_f, *dy = c->r + r * out_f;
        uint64_t row_key = fr_mix64(key ^ (uint64_t)(FIRST_ROW + r / per));
        for (int i = 0; i < in_f; i++) {
            bool kept = p == 0.0 ||
                        (fr_mix64(row_key + (uint64_t)((r % per) * in_f + i)) >> 40) >= threshold;
            keep[i] = kept ? 1.0 / (1.0 - p) : 0.0;
            xd[i] = x[i] * keep[i];
        }
        for (int j = 0; j < rank; j++) {
            t[j] = 0.0;
            for (int i = 0; i < in_f; i++)
                t[j] += xd[i] * A[j * in_f + i];
        }
        for (int j = 0; j < rank; j++)
            dt[j] = 0.0;
        for (int o = 0; o < out_f; o++)
            for (int j = 0; j < rank; j++) {
                c->y[r * out_f + o] += s * B[o * rank + j] * t[j];
                c->dp[FR_LORA_B][o * rank + j] += s * dy[o] * t[j];
                dt[j] += s * dy[o] * B[o * rank + j];
            }
        for (int j = 0; j < rank; j++)
            for (int i = 0; i < in_f; i++) {
                c->dp[FR_LORA_A][j * in_f + i] += dt[j] * xd[i];
                c->dx[r * in_f + i] += keep[i] * dt[j] * A[j * in_f + i];
            }
    }
    free(xd);
    free(keep);
    free(t);
    free(dt);
}

/* The adapter's dropout mask, as dropout's: a function of each row's place
 * in the global batch, not of the call (rows 2.. computed alone at their
 * place give the same bits). */
static void lora_train_checks(const kind_check *check, layer_case *c, const char *what) {
    (void)check;
    size_t in_sample = fr_shape_numel(c->layer.in), out_sample = fr_shape_numel(c->layer.out);
    float *rest = filled_floats((size_t)(c->n - 2) * out_sample, NAN);
    void *scratch = malloc(c->layer.ops->scratch_bytes(&c->layer, c->n - 2));
    c->layer.ops->forward_at(&c->layer, c->in + 2 * in_sample, rest, c->n - 2, scratch, RUN_SEED,
                             RUN_STEP, FIRST_ROW + 2);
    tap_ok(memcmp(rest, c->out + 2 * out_sample, (size_t)(c->n - 2) * out_sample * sizeof *rest) ==
               0,
           "%s: rows 2.. computed in a call of their own at their place in the batch get the "
           "same adapter dropout", what);
    free(rest);
    free(scratch);
}

/* linear: y = x W^T + b, W [out, in], per row of in_features. */
static void linear_reference(layer_case *c) {
    int in_f = arg_of(c, "in_features"), out_f = arg_of(c, "out_features");
    const double *w = c->p[FR_WEIGHT], *b = c->p[FR_BIAS];
    for (long r = 0; r < rows_of(c, in_f); r++) {
        const double *x = c->x + r * in_f, *dy = c->r + r * out_f;
        double *dx = c->dx + r * in_f;
        for (int o = 0; o < out_f; o++) {
            double sum = b ? b[o] : 0.0;
            for (int i = 0; i < in_f; i++) {
                sum += x[i] * w[o * in_f + i];
                dx[i] += dy[o] * w[o * in_f + i];
                c->dp[FR_WEIGHT][o * in_f + i] += dy[o] * x[i];
            }
            c->y[r * out_f + o] = sum;
            if (b)
                c->dp[FR_BIAS][o] += dy[o];
        }
    }
    lora_reference(c, in_f, out_f);
}

/* Hugging Face's Conv1D: y = x W + b, W [nx, nf]. */
static void conv1d_reference(layer_case *c) {
    int nf = arg_of(c, "nf"), nx = arg_of(c, "nx");
    const double *w = c->p[FR_WEIGHT], *b = c->p[FR_BIAS];
    for (long r = 0; r < rows_of(c, nx); r++) {
        const double *x = c->x + r * nx, *dy = c->r + r * nf;
        double *dx = c->dx + r * nx;
        for (int f = 0; f < nf; f++) {
            double sum = b[f];
            for (int i = 0; i < nx; i++) {
                sum += x[i] * w[i * nf + f];
                dx[i] += dy[f] * w[i * nf + f];
                c->dp[FR_WEIGHT][i * nf + f] += x[i] * dy[f];
            }
            c->y[r * nf + f] = sum;
            c->dp[FR_BIAS][f] += dy[f];
        }
    }
    lora_reference(c, nx, nf);
}

/* conv2d: every output position's window over the zero-padded input. */
static void conv2d_reference(layer_case *c) {
    int k = arg_of(c, "kernel_size"), stride = arg_of(c, "stride"), pad = arg_of(c, "padding");
    int in_c = c->layer.in.d[0], h = c->layer.in.d[1], w = c->layer.in.d[2];
    int out_c = c->layer.out.d[0], oh = c->layer.out.d[1], ow = c->layer.out.d[2];
    const double *weight = c->p[FR_WEIGHT], *bias = c->p[FR_BIAS];
    for (int s = 0; s < c->n; s++)
        for (int o = 0; o < out_c; o++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    size_t at = (((size_t)s * out_c + o) * oh + y) * ow + x;
                    double sum = bias ? bias[o] : 0.0, dy = c->r[at];
                    for (int ch = 0; ch < in_c; ch++)
                        for (int ki = 0; ki < k; ki++)
                            for (int kj = 0; kj < k; kj++) {
                                int iy = y * stride - pad + ki, ix = x * stride - pad + kj;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                                    continue;
                                size_t in_at = (((size_t)s * in_c + ch) * h + iy) * w + ix;
                                size_t w_at = (((size_t)o * in_c + ch) * k + ki) * k + kj;
                                sum += c->x[in_at] * weight[w_at];
                                c->dx[in_at] += dy * weight[w_at];
                                c->dp[FR_WEIGHT][w_at] += dy * c->x[in_at];
                            }
                    c->y[at] = sum;
                    if (bias)
                        c->dp[FR_BIAS][o] += dy;
                }
}

/* The pools: PyTorch's windows, the adaptive ones for adaptive_avgpool2d. */
typedef enum pool_kind { MAX_POOL, AVERAGE_POOL, ADAPTIVE_POOL } pool_kind;

static void pool_reference(layer_case *c, pool_kind kind) {
    int planes = c->n * c->layer.in.d[0], h = c->layer.in.d[1], w = c->layer.in.d[2];
    int oh = c->layer.out.d[1], ow = c->layer.out.d[2];
    int k = 0, stride = 0, pad = 0;
    if (kind != ADAPTIVE_POOL) {
        k = arg_of(c, "kernel_size");
        stride = arg_of(c, "stride");
        stride = stride == FR_ARG_NONE ? k : stride;
        pad = arg_of(c, "padding");
    }
    for (int p = 0; p < planes; p++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                int y0, y1, x0, x1;
                if (kind == ADAPTIVE_POOL) { /* [floor(i H / out), ceil((i + 1) H / out)) */
                    y0 = y * h / oh;
                    y1 = ((y + 1) * h + oh - 1) / oh;
                    x0 = x * w / ow;
                    x1 = ((x + 1) * w + ow - 1) / ow;
                } else { /* the window over the padded input, its padding cut off */
                    y0 = y * stride - pad;
                    x0 = x * stride - pad;
                    y1 = y0 + k < h ? y0 + k : h;
                    x1 = x0 + k < w ? x0 + k : w;
                    y0 = y0 < 0 ? 0 : y0;
                    x0 = x0 < 0 ? 0 : x0;
                }
                /* count_include_pad=True: the padding's zeros count */
                double area = kind == AVERAGE_POOL ? (double)k * k : (double)(y1 - y0) * (x1 - x0);
                size_t out_at = ((size_t)p * oh + y) * ow + x, best = 0;
                double total = 0.0, best_value = -INFINITY;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++) {
                        size_t at = ((size_t)p * h + iy) * w + ix;
                        total += c->x[at];
                        if (c->x[at] > best_value) { /* the first maximum, row-major */
                            best_value = c->x[at];
                            best = at;
                        }
                    }
                if (kind == MAX_POOL) {
                    c->y[out_at] = best_value;
                    c->dx[best] += c->r[out_at];
                    continue;
                }
                c->y[out_at] = total / area;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++)
                        c->dx[((size_t)p * h + iy) * w + ix] += c->r[out_at] / area;
            }
}

static void maxpool2d_reference(layer_case *c) { pool_reference(c, MAX_POOL); }
static void avgpool2d_reference(layer_case *c) { pool_reference(c, AVERAGE_POOL); }
static void adaptive_avgpool2d_reference(layer_case *c) { pool_reference(c, ADAPTIVE_POOL); }

/* relu: max(x, 0), the gradient where x > 0. */
static void relu_reference(layer_case *c) {
    for (size_t i = 0; i < c->in_count; i++) {
        c->y[i] = c->x[i] > 0.0 ? c->x[i] : 0.0;
        c->dx[i] = c->x[i] > 0.0 ? c->r[i] : 0.0;
    }
}

/* The batch's mean and biased variance of channel ch. */
static void batch_moments(const layer_case *c, int ch, double *mean, double *var) {
    int channels = c->layer.in.d[0], plane = c->layer.in.d[1] * c->layer.in.d[2];
    double sum = 0.0, squares = 0.0, count = (double)c->n * plane;
    for (int s = 0; s < c->n; s++)
        for (int k = 0; k < plane; k++)
            sum += c->x[((size_t)s * channels + ch) * plane + k];
    *mean = sum / count;
    for (int s = 0; s < c->n; s++)
        for (int k = 0; k < plane; k++) {
            double deviation = c->x[((size_t)s * channels + ch) * plane + k] - *mean;
            squares += deviation * deviation;
        }
    *var = squares / count;
}

/* batchnorm2d: y = (x - mean) / sqrt(var + eps) w + b per channel, with the
 * running statistics in eval mode (constants) and the batch's in train mode
 * (whose dependence on x adds the two mean terms of dx). */
static void batchnorm2d_reference(layer_case *c) {
    int channels = c->layer.in.d[0], plane = c->layer.in.d[1] * c->layer.in.d[2];
    double eps = fr_arg_real(arg_of(c, "eps")), count = (double)c->n * plane;
    bool batch = c->config->mode == TRAIN_STATS;
    const float *running_mean = c->layer.buffer_data[0], *running_var = c->layer.buffer_data[1];
    for (int ch = 0; ch < channels; ch++) {
        double mean = running_mean[ch], var = running_var[ch];
        if (batch)
            batch_moments(c, ch, &mean, &var);
        double invstd = 1.0 / sqrt(var + eps);
        double w = c->p[FR_WEIGHT] ? c->p[FR_WEIGHT][ch] : 1.0;
        double b = c->p[FR_BIAS] ? c->p[FR_BIAS][ch] : 0.0;
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int s = 0; s < c->n; s++)
            for (int k = 0; k < plane; k++) {
                size_t at = ((size_t)s * channels + ch) * plane + k;
                double xhat = (c->x[at] - mean) * invstd;
                c->y[at] = xhat * w + b;
                sum_dy += c->r[at];
                sum_dy_xhat += c->r[at] * xhat;
            }
        if (c->p[FR_WEIGHT]) {
            c->dp[FR_WEIGHT][ch] = sum_dy_xhat;
            c->dp[FR_BIAS][ch] = sum_dy;
        }
        for (int s = 0; s < c->n; s++)
            for (int k = 0; k < plane; k++) {
                size_t at = ((size_t)s * channels + ch) * plane + k;
                double xhat = (c->x[at] - mean) * invstd;
                c->dx[at] = batch ? w * invstd * (c->r[at] - sum_dy / count -
                                                  xhat * sum_dy_xhat / count)
                                  : w * invstd * c->r[at];
            }
    }
}

/* dropout: the identity in eval mode; in train mode each element kept with
 * its input scaled by 1/(1-p), or 0.  The mask is frost's own (read from its
 * output: no input is 0), so this checks the scaling and that backward
 * drops the same elements; the fraction dropped is a check of its own. */
static void dropout_reference(layer_case *c) {
    double p = fr_arg_real(arg_of(c, "p"));
    bool train = c->config->mode == TRAIN_AT;
    for (size_t i = 0; i < c->in_count; i++) {
        double keep = !train ? 1.0 : c->out[i] != 0.0f ? 1.0 / (1.0 - p) : 0.0;
        c->y[i] = c->x[i] * keep;
        c->dx[i] = c->r[i] * keep;
    }
}

/* embedding: row ids[r] of the table; its gradient rows add up per id. */
static void embedding_reference(layer_case *c) {
    int dim = arg_of(c, "embedding_dim");
    for (size_t r = 0; r < c->in_count; r++)
        for (int d = 0; d < dim; d++) {
            c->y[r * dim + d] = c->p[FR_WEIGHT][(size_t)c->ids[r] * dim + d];
            c->dp[FR_WEIGHT][(size_t)c->ids[r] * dim + d] += c->r[r * dim + d];
        }
}

/* position_embedding: x[t] + table[t]; the table's rows past T get 0. */
static void position_embedding_reference(layer_case *c) {
    int seq = c->layer.in.d[0], dim = c->layer.in.d[1];
    for (int s = 0; s < c->n; s++)
        for (int t = 0; t < seq; t++)
            for (int d = 0; d < dim; d++) {
                size_t at = ((size_t)s * seq + t) * dim + d;
                c->y[at] = c->x[at] + c->p[FR_WEIGHT][(size_t)t * dim + d];
                c->dx[at] = c->r[at];
                c->dp[FR_WEIGHT][(size_t)t * dim + d] += c->r[at];
            }
}

/* layernorm over the last dimension, biased variance. */
static void layernorm_reference(layer_case *c) {
    int dim = arg_of(c, "normalized_shape");
    double eps = fr_arg_real(arg_of(c, "eps"));
    const double *gamma = c->p[FR_WEIGHT], *beta = c->p[FR_BIAS];
    for (long r = 0; r < rows_of(c, dim); r++) {
        const double *x = c->x + r * dim, *dy = c->r + r * dim;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < dim; i++)
            mean += x[i] / dim;
        for (int i = 0; i < dim; i++)
            var += (x[i] - mean) * (x[i] - mean) / dim;
        double rstd = 1.0 / sqrt(var + eps), g_mean = 0.0, g_xhat_mean = 0.0;
        for (int i = 0; i < dim; i++) {
            double xhat = (x[i] - mean) * rstd, g = dy[i] * (gamma ? gamma[i] : 1.0);
            c->y[r * dim + i] = xhat * (gamma ? gamma[i] : 1.0) + (beta ? beta[i] : 0.0);
            if (gamma) {
                c->dp[FR_WEIGHT][i] += dy[i] * xhat;
                c->dp[FR_BIAS][i] += dy[i];
            }
            g_mean += g / dim;
            g_xhat_mean += g * xhat / dim;
        }
        for (int i = 0; i < dim; i++) {
            double xhat = (x[i] - mean) * rstd, g = dy[i] * (gamma ? gamma[i] : 1.0);
            c->dx[r * dim + i] = rstd * (g - g_mean - xhat * g_xhat_mean);
        }
    }
}

/* gelu: x Phi(x) through erf, or 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static void gelu_reference(layer_case *c) {
    bool tanh_form = arg_of(c, "approximate") == 1;
    const double pi = 3.14159265358979323846, sqrt_2_over_pi = sqrt(2.0 / pi);
    for (size_t i = 0; i < c->in_count; i++) {
        double x = c->x[i], value, slope;
        if (tanh_form) {
            double u = sqrt_2_over_pi * (x + 0.044715 * x * x * x), t = tanh(u);
            value = 0.5 * x * (1.0 + t);
            slope = 0.5 * (1.0 + t) +
                    0.5 * x * (1.0 - t * t) * sqrt_2_over_pi * (1.0 + 3.0 * 0.044715 * x * x);
        } else {
            double cdf = 0.5 * (1.0 + erf(x / sqrt(2.0)));
            value = x * cdf;
            slope = cdf + x * exp(-0.5 * x * x) / sqrt(2.0 * pi);
        }
        c->y[i] = value;
        c->dx[i] = c->r[i] * slope;
    }
}

/* attention on packed [T, 3C]: per sample and head, P = softmax(q k^T /
 * sqrt(D) + mask), out = P v; dP = dout v^T, dS = P (dP - rowsum(P dP)),
 * dq = dS k / sqrt(D), dk = dS^T q / sqrt(D), dv = P^T dout. */
static void attention_reference(layer_case *c) {
    int heads = arg_of(c, "num_heads"), causal = arg_of(c, "causal");
    int seq = c->layer.in.d[0], dim = c->layer.out.d[1], head_dim = dim / heads;
    size_t stride = 3 * (size_t)dim;
    double scale = 1.0 / sqrt((double)head_dim);
    double *prob = zeroed_doubles((size_t)seq * seq);
    double *score_grad = zeroed_doubles((size_t)seq * seq);
    for (int s = 0; s < c->n; s++)
        for (int h = 0; h < heads; h++) {
            const double *q = c->x + s * seq * stride + h * head_dim, *k = q + dim, *v = k + dim;
            const double *dy = c->r + (size_t)s * seq * dim + h * head_dim;
            double *o = c->y + (size_t)s * seq * dim + h * head_dim;
            double *dq = c->dx + s * seq * stride + h * head_dim, *dk = dq + dim, *dv = dk + dim;
            for (int t = 0; t < seq; t++) {
                int valid = causal ? t + 1 : seq;
                double max = -INFINITY, sum = 0.0;
                for (int j = 0; j < valid; j++) {
                    double score = 0.0;
                    for (int d = 0; d < head_dim; d++)
                        score += q[t * stride + d] * k[j * stride + d];
                    prob[t * seq + j] = score * scale;
                    max = fmax(max, prob[t * seq + j]);
                }
                for (int j = 0; j < seq; j++) {
                    prob[t * seq + j] = j < valid ? exp(prob[t * seq + j] - max) : 0.0;
                    sum += prob[t * seq + j];
                }
                for (int j = 0; j < seq; j++)
                    prob[t * seq + j] /= sum;
                for (int d = 0; d < head_dim; d++)
                    for (int j = 0; j < seq; j++)
                        o[t * dim + d] += prob[t * seq + j] * v[j * stride + d];
            }
            for (int t = 0; t < seq; t++) {
                double weighted = 0.0;
                for (int j = 0; j < seq; j++) {
                    double total = 0.0;
                    for (int d = 0; d < head_dim; d++)
                        total += dy[t * dim + d] * v[j * stride + d];
                    score_grad[t * seq + j] = total;
                    weighted += prob[t * seq + j] * total;
                }
                for (int j = 0; j < seq; j++)
                    score_grad[t * seq + j] =
                        prob[t * seq + j] * (score_grad[t * seq + j] - weighted);
            }
            for (int t = 0; t < seq; t++)
                for (int d = 0; d < head_dim; d++)
                    for (int j = 0; j < seq; j++) {
                        dq[t * stride + d] += score_grad[t * seq + j] * k[j * stride + d] * scale;
                        dk[t * stride + d] += score_grad[j * seq + t] * q[j * stride + d] * scale;
                        dv[t * stride + d] += prob[j * seq + t] * dy[j * dim + d];
                    }
        }
    free(prob);
    free(score_grad);
}

/* pool_sequence: the last position's row, or the mean over positions. */
static void pool_sequence_reference(layer_case *c) {
    bool mean = arg_of(c, "mode") == 1;
    int seq = c->layer.in.d[0], dim = c->layer.in.d[1];
    for (int s = 0; s < c->n; s++)
        for (int t = 0; t < seq; t++)
            for (int d = 0; d < dim; d++) {
                size_t in_at = ((size_t)s * seq + t) * dim + d, out_at = (size_t)s * dim + d;
                double share = mean ? 1.0 / seq : t == seq - 1 ? 1.0 : 0.0;
                c->y[out_at] += c->x[in_at] * share;
                c->dx[in_at] = c->r[out_at] * share;
            }
}

/* ------------------------------------------------ the checks */

/* The worst error of the kind being checked, for its summary. */
static double kind_worst_error;

static void note_error(double error) {
    if (isnan(error) || error > kind_worst_error)
        kind_worst_error = isnan(error) ? INFINITY : error;
}

static void check_quantity(const kind_check *check, const char *what, const char *quantity,
                           const float *got, const double *want, size_t count) {
    double error = relative_error(got, want, count);
    note_error(error);
    tap_ok(error <= check->tolerance, "%s: %s within %.0e of float64 (error %.2g)", what, quantity,
           check->tolerance, error);
}

/*
 * The accumulate contract, for a kind whose parameter may be tied: with
 * fr_param_grads.accumulate set, backward adds what it would have written.
 * Compared with the float sum of the two gradients each written alone (a
 * second R): equal to the bit where the kind adds its finished gradient onto
 * what is there, and to float rounding where it adds inside its sum (an
 * OpenBLAS GEMM with beta 1 may start its sum from C; the embedding adds a
 * repeated id's rows one by one); the error is relative to the sum's largest
 * value, as every other.
 */
static void check_accumulate(const kind_check *check, layer_case *c, const char *what) {
    float *second_upstream = random_floats(&c->rng, c->out_count, 1.0f, 0.0f);
    float *alone[FR_LAYER_PARAMS_MAX] = {NULL}, *added[FR_LAYER_PARAMS_MAX] = {NULL};
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        if (c->param_count[k]) {
            alone[k] = filled_floats(c->param_count[k], GARBAGE);
            added[k] = copy_floats(c->grad[k], c->param_count[k]);
        }
    float *din = c->token_input ? NULL : filled_floats(c->in_count, GARBAGE);
    run_backward(c, second_upstream, din, alone, false);
    run_backward(c, second_upstream, din, added, true);
    double worst = 0.0;
    bool exact = true;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
        double *sum = zeroed_doubles(c->param_count[k]);
        for (size_t i = 0; i < c->param_count[k]; i++) {
            sum[i] = (float)(c->grad[k][i] + alone[k][i]); /* the float sum */
            exact = exact && added[k][i] == (float)sum[i];
        }
        double error = relative_error(added[k], sum, c->param_count[k]);
        worst = isnan(error) || error > worst ? error : worst;
        free(sum);
    }
    note_error(worst);
    tap_ok(worst <= check->tolerance,
           "%s: a second backward with accumulate set adds its gradient onto the first: "
           "first + second written alone, %s (error %.2g)", what,
           exact ? "to the bit" : "not to the bit", worst);
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
        free(alone[k]);
        free(added[k]);
    }
    free(din);
    free(second_upstream);
}

/* The TAP lines one configuration writes (the plan counts them first). */
static int config_lines(const kind_check *check, const fr_layer_ops *ops,
                        const layer_config *config) {
    fr_layer l;
    if (!build_layer(ops, config, &l))
        return 1;
    int lines = 1 + (ops->input_dtype == FR_I32 ? 0 : 1); /* forward, din */
    bool has_params = false;
    for (int k = 0; k < param_slots(ops); k++)
        if (param_numel(&l, k)) {
            lines++;
            has_params = true;
        }
    if (ops->accumulates && has_params)
        lines++;
    if (config->mode != EVAL)
        lines += check->train_lines;
    return lines;
}

static void check_config(const kind_check *check, const fr_layer_ops *ops,
                         const layer_config *config, uint64_t seed) {
    layer_case c;
    char layer[96], shape[64], what[256];
    if (!case_open(&c, ops, config, seed)) {
        tap_ok(false, "%s: infer_shape accepts configuration %d", ops->kind,
               (int)(config - check->configs));
        return;
    }
    fr_layer_format(&c.layer, layer, sizeof layer);
    fr_shape_format(config->in, shape, sizeof shape);
    snprintf(what, sizeof what, "%s on %d x %s, %s%s%s", layer, config->n, shape,
             layer_mode_name(config->mode), config->note ? ", " : "",
             config->note ? config->note : "");
    run_layer(&c);
    check->reference(&c);
    check_quantity(check, what, "forward", c.out, c.y, c.out_count);
    if (!c.token_input)
        check_quantity(check, what, "din", c.din, c.dx, c.in_count);
    bool has_params = false;
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
        if (c.param_count[k]) {
            char quantity[64];
            snprintf(quantity, sizeof quantity, "d%s (written over garbage)",
                     ops->params[k].suffix);
            check_quantity(check, what, quantity, c.grad[k], c.dp[k], c.param_count[k]);
            has_params = true;
        }
    if (ops->accumulates && has_params)
        check_accumulate(check, &c, what);
    if (config->mode != EVAL)
        check->train_checks(check, &c, what);
    case_close(&c);
}

/* ------------------------------------------- train mode's own checks */

/* batchnorm2d's commit: running = momentum * batch + (1 - momentum) *
 * running, the variance unbiased; num_batches_tracked counts the step. */
static void batchnorm2d_train_checks(const kind_check *check, layer_case *c, const char *what) {
    int channels = c->layer.in.d[0], plane = c->layer.in.d[1] * c->layer.in.d[2];
    double momentum = fr_arg_real(arg_of(c, "momentum")), count = (double)c->n * plane;
    float *running_mean = c->layer.buffer_data[0], *running_var = c->layer.buffer_data[1];
    int64_t *tracked = c->layer.buffer_data[2];
    double *want = zeroed_doubles(2 * (size_t)channels);
    for (int ch = 0; ch < channels; ch++) {
        double mean, var;
        batch_moments(c, ch, &mean, &var);
        want[ch] = momentum * mean + (1.0 - momentum) * running_mean[ch];
        want[channels + ch] = momentum * var * count / (count - 1) +
                              (1.0 - momentum) * running_var[ch];
    }
    int64_t tracked_before = *tracked;
    c->layer.ops->commit(&c->layer, c->forward_sums);
    double error = fmax(relative_error(running_mean, want, (size_t)channels),
                        relative_error(running_var, want + channels, (size_t)channels));
    note_error(error);
    tap_ok(error <= check->tolerance && *tracked == tracked_before + 1,
           "%s: commit moves running_mean and running_var by momentum toward the batch's mean "
           "and unbiased variance (error %.2g) and counts the batch (%lld -> %lld)",
           what, error, (long long)tracked_before, (long long)*tracked);
    free(want);
}

/* dropout's mask: about p of the elements dropped (within 4 standard
 * deviations), and a function of the row's place in the global batch, not
 * of the call: rows [2, n) computed alone at their place give the same bits. */
static void dropout_train_checks(const kind_check *check, layer_case *c, const char *what) {
    (void)check;
    double p = fr_arg_real(arg_of(c, "p"));
    size_t dropped = 0;
    for (size_t i = 0; i < c->out_count; i++)
        dropped += c->out[i] == 0.0f;
    double fraction = (double)dropped / c->out_count;
    double spread = 4.0 * sqrt(p * (1.0 - p) / c->out_count) + 1e-9;
    tap_ok(fabs(fraction - p) <= spread, "%s: %.4f of the elements dropped, p %.2f +- %.4f", what,
           fraction, p, spread);
    size_t sample = fr_shape_numel(c->layer.in), skipped = 2 * sample;
    float *rest = filled_floats(c->out_count - skipped, NAN);
    unsigned char *mask = malloc(c->out_count - skipped);
    c->layer.ops->forward_at(&c->layer, c->in + skipped, rest, c->n - 2, mask, RUN_SEED,
                             RUN_STEP, FIRST_ROW + 2);
    tap_ok(memcmp(rest, c->out + skipped, (c->out_count - skipped) * sizeof *rest) == 0,
           "%s: rows 2.. computed in a call of their own at their place in the batch are "
           "dropped alike", what);
    free(rest);
    free(mask);
}

/* --------------------------------------- kinds without forward */

static void flatten_special(const kind_check *check, const fr_layer_ops *ops) {
    (void)check;
    static const layer_config images = {.in = CHW(3, 4, 5), .n = 1};
    static const layer_config sequence = {.in = SEQ(6, 8), .n = 1};
    fr_layer image_layer, sequence_layer;
    bool built = build_layer(ops, &images, &image_layer) &&
                 build_layer(ops, &sequence, &sequence_layer);
    tap_ok(built && image_layer.out.ndim == 1 && image_layer.out.d[0] == 60 &&
               sequence_layer.out.ndim == 1 && sequence_layer.out.d[0] == 48,
           "flatten: 3x4x5 becomes [60] and 6x8 becomes [48]: its only arithmetic is the shape");
    tap_ok(built && ops->alias && !ops->forward && !ops->backward &&
               image_layer.param_ndim[FR_WEIGHT] == 0 && !ops->params[0].suffix,
           "flatten: an alias (its output is its input's storage, NCHW order) with no forward, "
           "backward or parameters to check in float64");
}

/* The join: the trainer forms out = body + shortcut with fr_add_arrays and,
 * where the block's input forks, adds the two gradients with fr_add_into. */
static void residual_special(const kind_check *check, const fr_layer_ops *ops) {
    static const layer_config block = {.in = CHW(4, 5, 6), .n = 2};
    fr_layer l;
    bool built = build_layer(ops, &block, &l);
    tap_ok(built && fr_shape_equal(l.out, l.in) && l.param_ndim[FR_WEIGHT] == 0 && ops->join &&
               !ops->forward && !ops->backward,
           "residual: a join of the input's shape, no parameters, formed by the trainer");
    fr_rng rng;
    fr_rng_seed(&rng, 77);
    size_t count = 2 * fr_shape_numel(block.in);
    float *body = random_floats(&rng, count, 1.0f, 0.0f);
    float *shortcut = random_floats(&rng, count, 1.0f, 0.0f);
    float *sum = filled_floats(count, NAN), *into = copy_floats(body, count);
    double *want = zeroed_doubles(count);
    for (size_t i = 0; i < count; i++)
        want[i] = (double)body[i] + shortcut[i];
    fr_add_arrays(sum, body, shortcut, count);
    fr_add_into(into, shortcut, count);
    double error = relative_error(sum, want, count);
    note_error(error);
    tap_ok(error <= check->tolerance,
           "residual: forward, body + shortcut (fr_add_arrays), within %.0e of float64 "
           "(error %.2g)",
           check->tolerance, error);
    error = relative_error(into, want, count);
    note_error(error);
    tap_ok(error <= check->tolerance,
           "residual: backward, the gradients meeting at the block's input added (fr_add_into), "
           "within %.0e of float64 (error %.2g)", check->tolerance, error);
    free(body);
    free(shortcut);
    free(sum);
    free(into);
    free(want);
}

/* --------------------------------------------- the configurations */

/* linear(in_features, out_features, bias) */
static const layer_config linear_configs[] = {
    {.args = {12, 7, 1}, .in = VEC(12), .n = 3, .note = "a flat vector"},
    {.args = {12, 7, 0}, .in = VEC(12), .n = 3, .note = "a flat vector"},
    {.args = {8, 5, 1}, .in = SEQ(6, 8), .n = 2, .note = "per position of [T, C]"},
    {.args = {60, 4, 1}, .in = CHW(3, 4, 5), .n = 2, .note = "an image read flat"},
    {.args = {12, 7, 1}, .in = VEC(12), .n = 3, .lora = {.rank = 3, .alpha = 6.0f},
     .note = "a LoRA adapter, r 3, alpha 6"},
    {.args = {8, 5, 0}, .in = SEQ(6, 8), .n = 2, .lora = {.rank = 4, .alpha = 8.0f, .rslora = true},
     .note = "per position, a LoRA adapter, rslora"},
    {.args = {8, 5, 1}, .in = SEQ(6, 8), .n = 4, .mode = TRAIN_AT,
     .lora = {.rank = 2, .alpha = 4.0f, .dropout = 0.25f},
     .note = "per position, a LoRA adapter with dropout 0.25"},
};
/* conv2d(in_channels, out_channels, kernel_size, stride, padding, bias) */
static const layer_config conv2d_configs[] = {
    {.args = {3, 4, 3, 1, 0, 1}, .in = CHW(3, 7, 6), .n = 2},
    {.args = {3, 4, 3, 2, 1, 0}, .in = CHW(3, 7, 6), .n = 2,
     .note = "stride 2, padding 1, no bias"},
    {.args = {2, 5, 1, 1, 0, 1}, .in = CHW(2, 4, 5), .n = 2,
     .note = "1x1: the image is its own columns"},
    {.args = {2, 3, 1, 2, 0, 1}, .in = CHW(2, 5, 5), .n = 2, .note = "1x1 with stride 2"},
    {.args = {2, 3, 4, 3, 2, 1}, .in = CHW(2, 9, 8), .n = 1,
     .note = "an even kernel, stride 3, padding 2"},
    /* backward's groups of samples (conv2d.c's GROUP_COLUMNS): 8x8 planes
     * go 4 samples per GEMM, so 6 samples as a group of 4 and one of 2; 3x3
     * planes all 6 in one group */
    {.args = {3, 4, 3, 1, 1, 1}, .in = CHW(3, 8, 8), .n = 6,
     .note = "samples in GEMM groups of 4 and 2"},
    {.args = {3, 5, 3, 2, 1, 0}, .in = CHW(3, 5, 6), .n = 6,
     .note = "one GEMM group of 6, stride 2, no bias"},
    {.args = {2, 3, 3, 1, 1, 1}, .in = CHW(2, 12, 12), .n = 3,
     .note = "a 144-column plane: groups of 2 and 1"},
};
/* maxpool2d and avgpool2d(kernel_size, stride, padding); the inputs have 24
 * random bits, so a window ties with a chance of 1e-5 (fixed seeds: none does) */
static const layer_config maxpool2d_configs[] = {
    {.args = {2, FR_ARG_NONE, 0}, .in = CHW(2, 6, 10), .n = 2, .note = "the vectorized 2x2 path"},
    {.args = {3, 2, 1}, .in = CHW(2, 7, 6), .n = 2, .note = "padding 1, overlapping windows"},
    {.args = {3, 2, 1}, .in = CHW(2, 5, 23), .n = 2,
     .note = "11 inner columns a row, taken tap by tap"},
    {.args = {2, 2, 1}, .in = CHW(1, 5, 4), .n = 2, .note = "padding with an even kernel"},
    {.args = {3, FR_ARG_NONE, 0}, .in = CHW(2, 8, 7), .n = 1,
     .note = "stride None, odd sizes floor"},
};
static const layer_config avgpool2d_configs[] = {
    {.args = {2, FR_ARG_NONE, 0}, .in = CHW(2, 5, 7), .n = 2, .note = "odd sizes floor"},
    {.args = {3, 2, 1}, .in = CHW(2, 7, 6), .n = 2,
     .note = "padding 1: its zeros count in the divisor"},
    {.args = {3, 1, 1}, .in = CHW(1, 4, 5), .n = 2, .note = "overlapping windows"},
};
/* adaptive_avgpool2d(output_size) */
static const layer_config adaptive_avgpool2d_configs[] = {
    {.args = {1}, .in = CHW(3, 5, 7), .n = 2, .note = "the global average"},
    {.args = {3}, .in = CHW(2, 5, 7), .n = 2, .note = "sizes that do not divide: windows overlap"},
    {.args = {4}, .in = CHW(1, 3, 6), .n = 2, .note = "more cells than rows"},
};
/* relu() */
static const layer_config relu_configs[] = {
    {.args = {0}, .in = CHW(2, 3, 5), .n = 3},
    {.args = {0}, .in = SEQ(4, 6), .n = 2, .in_place = true, .note = "in place"},
};
/* batchnorm2d(num_features, eps, momentum, affine) */
static const layer_config batchnorm2d_configs[] = {
    {.args = {3, REAL(1e-5), REAL(0.1), 1}, .in = CHW(3, 4, 5), .n = 2,
     .note = "the running statistics"},
    {.args = {2, REAL(1e-3), REAL(0.1), 0}, .in = CHW(2, 3, 3), .n = 3, .note = "no affine"},
    {.args = {3, REAL(1e-5), REAL(0.1), 1}, .in = CHW(3, 4, 5), .n = 4, .mode = TRAIN_STATS,
     .note = "one replica's sums"},
    {.args = {2, REAL(1e-3), REAL(0.3), 0}, .in = CHW(2, 3, 5), .n = 3, .mode = TRAIN_STATS,
     .note = "no affine"},
    {.args = {4, REAL(1e-5), REAL(0.1), 1}, .in = CHW(4, 2, 3), .n = 5, .mode = TRAIN_STATS,
     .scale = 0.5f, .offset = 2.0f, .note = "inputs around 2"},
    {.args = {3, REAL(1e-5), REAL(0.1), 1}, .in = CHW(3, 3, 4), .n = 3, .mode = TRAIN_STATS,
     .replicas = 4, .note = "4 replicas' sums added, one replica without rows"},
};
/* dropout(p) */
static const layer_config dropout_configs[] = {
    {.args = {REAL(0.5)}, .in = CHW(2, 3, 4), .n = 3, .note = "the identity"},
    {.args = {REAL(0.5)}, .in = SEQ(16, 32), .n = 6, .mode = TRAIN_AT},
    {.args = {REAL(0.1)}, .in = VEC(300), .n = 7, .mode = TRAIN_AT},
};
/* embedding(num_embeddings, embedding_dim): token ids with repeats */
static const layer_config embedding_configs[] = {
    {.args = {7, 5}, .in = VEC(6), .n = 3, .note = "18 ids over 7 rows"},
    {.args = {50, 16}, .in = VEC(9), .n = 2},
};
/* position_embedding(num_positions, embedding_dim) */
static const layer_config position_embedding_configs[] = {
    {.args = {6, 5}, .in = SEQ(6, 5), .n = 3, .note = "T equal to the table"},
    {.args = {10, 4}, .in = SEQ(7, 4), .n = 2, .note = "T shorter: the rows past it get 0"},
    {.args = {8, 6}, .in = SEQ(8, 6), .n = 2, .in_place = true, .note = "in place"},
};
/* layernorm(normalized_shape, eps, elementwise_affine) */
static const layer_config layernorm_configs[] = {
    {.args = {16, REAL(1e-5), 1}, .in = SEQ(5, 16), .n = 2},
    {.args = {7, REAL(1e-5), 0}, .in = SEQ(3, 7), .n = 2, .note = "no affine"},
    {.args = {33, REAL(1e-3), 1}, .in = VEC(33), .n = 4, .scale = 0.5f, .offset = 3.0f,
     .note = "rows around 3"},
};
/* gelu(approximate): 'none' or 'tanh' */
static const layer_config gelu_configs[] = {
    {.args = {0}, .in = SEQ(8, 24), .n = 2, .scale = 5.0f, .note = "inputs in [-5, 5]"},
    {.args = {1}, .in = SEQ(8, 24), .n = 2, .scale = 5.0f, .note = "inputs in [-5, 5]"},
};
/* attention(num_heads, causal) on [T, 3C] */
static const layer_config attention_configs[] = {
    {.args = {1, 1}, .in = SEQ(5, 12), .n = 2, .scale = 2.0f},
    {.args = {1, 0}, .in = SEQ(5, 12), .n = 2, .scale = 2.0f},
    {.args = {3, 1}, .in = SEQ(7, 18), .n = 2, .scale = 2.0f},
    {.args = {2, 0}, .in = SEQ(6, 24), .n = 1, .scale = 2.0f},
    {.args = {2, 1}, .in = SEQ(40, 12), .n = 1, .scale = 2.0f, .note = "T 40: blocks of 32 rows"},
};
/* conv1d(nf, nx): W [nx, nf] */
static const layer_config conv1d_configs[] = {
    {.args = {6, 10}, .in = VEC(10), .n = 3, .note = "a flat vector"},
    {.args = {9, 8}, .in = SEQ(5, 8), .n = 2, .note = "per position of [T, C]"},
    {.args = {9, 8}, .in = SEQ(5, 8), .n = 2, .lora = {.rank = 4, .alpha = 16.0f},
     .note = "per position, a LoRA adapter, r 4, alpha 16"},
    {.args = {6, 10}, .in = SEQ(3, 10), .n = 5, .mode = TRAIN_AT,
     .lora = {.rank = 3, .alpha = 3.0f, .dropout = 0.5f},
     .note = "per position, a LoRA adapter with dropout 0.5"},
};
/* pool_sequence(mode): 'last' or 'mean' */
static const layer_config pool_sequence_configs[] = {
    {.args = {0}, .in = SEQ(5, 6), .n = 3},
    {.args = {1}, .in = SEQ(5, 6), .n = 3},
    {.args = {1}, .in = SEQ(1, 4), .n = 2, .note = "T 1"},
};

/*
 * One line per kind: its tolerance (max |f32 - f64| / max |f64| over every
 * quantity of every configuration) and, in brackets, the worst error measured
 * (gcc -O2, OpenBLAS 0.3, x86-64).  Float32 rounds at 6e-8 per operation: the
 * sums of a few dozen products land near 1e-7; about 5x that is allowed, for
 * other BLAS kernels and compilers that sum in other orders.  Moving and
 * selecting (relu, maxpool2d) is exact; layernorm on rows around 3 loses what
 * x - mean loses in float32.
 */
static const kind_check kind_checks[] = {
    {"linear", 1e-6, linear_reference, CONFIGS(linear_configs), lora_train_checks, 1, NULL,
     0}, /* [1.4e-7] */
    {"conv2d", 1e-6, conv2d_reference, CONFIGS(conv2d_configs), NULL, 0, NULL, 0}, /* [1.3e-7] */
    {"relu", 0.0, relu_reference, CONFIGS(relu_configs), NULL, 0, NULL, 0},       /* [0] */
    {"maxpool2d", 0.0, maxpool2d_reference, CONFIGS(maxpool2d_configs), NULL, 0, NULL, 0}, /* [0] */
    {"flatten", 0.0, NULL, NULL, 0, NULL, 0, flatten_special, 2}, /* shapes only */
    {"avgpool2d", 1e-6, avgpool2d_reference, CONFIGS(avgpool2d_configs), NULL, 0, NULL,
     0}, /* [9.3e-8] */
    {"adaptive_avgpool2d", 1e-6, adaptive_avgpool2d_reference,
     CONFIGS(adaptive_avgpool2d_configs), NULL, 0, NULL, 0}, /* [1.1e-7] */
    {"batchnorm2d", 2e-6, batchnorm2d_reference, CONFIGS(batchnorm2d_configs),
     batchnorm2d_train_checks, 1, NULL, 0}, /* [2.5e-7, inputs around 2] */
    /* in * (float)(1/(1-p)): two roundings */
    {"dropout", 2e-7, dropout_reference, CONFIGS(dropout_configs), dropout_train_checks, 2, NULL,
     0}, /* [9.6e-8] */
    {"embedding", 1e-6, embedding_reference, CONFIGS(embedding_configs), NULL, 0, NULL,
     0}, /* [9.4e-8] */
    {"position_embedding", 1e-6, position_embedding_reference,
     CONFIGS(position_embedding_configs), NULL, 0, NULL, 0}, /* [5.7e-8] */
    {"layernorm", 5e-6, layernorm_reference, CONFIGS(layernorm_configs), NULL, 0, NULL,
     0}, /* [1.0e-6, rows around 3; 1.2e-7 around 0] */
    {"gelu", 1e-6, gelu_reference, CONFIGS(gelu_configs), NULL, 0, NULL, 0}, /* [1.4e-7] */
    {"attention", 2e-6, attention_reference, CONFIGS(attention_configs), NULL, 0, NULL,
     0}, /* [5.5e-7, T 40] */
    {"conv1d", 1e-6, conv1d_reference, CONFIGS(conv1d_configs), lora_train_checks, 1, NULL,
     0}, /* [2.1e-7] */
    {"pool_sequence", 1e-6, pool_sequence_reference, CONFIGS(pool_sequence_configs), NULL, 0,
     NULL, 0}, /* [7.1e-8] */
    /* a + b: one rounding */
    {"residual", 1e-7, NULL, NULL, 0, NULL, 0, residual_special, 3}, /* [0] */
};
#define KIND_CHECK_COUNT (int)(sizeof kind_checks / sizeof kind_checks[0])

static const kind_check *kind_check_of(const char *kind) {
    for (int i = 0; i < KIND_CHECK_COUNT; i++)
        if (strcmp(kind_checks[i].kind, kind) == 0)
            return &kind_checks[i];
    return NULL;
}

/* ------------------------------------------------------- losses */

/* One configuration of a loss: the output of one sample, the batch, and
 * which targets (for cross-entropy: every third position ignored). */
typedef struct loss_config {
    fr_shape output;
    int n;
    bool ignore_some;
    const char *note;
} loss_config;

typedef struct loss_check {
    const char *name;
    double tolerance; /* as the kinds' [worst measured] */
    /* The summed loss, its gradient (unscaled) and the argmax hits from the
     * doubles of the output and the targets (int32 or float). */
    double (*reference)(const loss_config *config, const double *out, const void *targets,
                        double *doutput, long *correct, long *count);
    const loss_config *configs;
    int config_count;
} loss_check;

static int argmax_of(const double *row, int k) {
    int best = 0;
    for (int j = 1; j < k; j++)
        if (row[j] > row[best])
            best = j;
    return best;
}

static int argmax_of_floats(const float *row, int k) {
    int best = 0;
    for (int j = 1; j < k; j++)
        if (row[j] > row[best])
            best = j;
    return best;
}

/* Cross-entropy per row of K logits: log sum exp - the target's logit; an
 * output [T, K] has a row per position, where FR_IGNORE_INDEX counts for
 * nothing; any other output is one row. */
static double cross_entropy_reference(const loss_config *config, const double *out,
                                      const void *targets, double *doutput, long *correct,
                                      long *count) {
    bool per_position = config->output.ndim == 2;
    int k = per_position ? config->output.d[1] : (int)fr_shape_numel(config->output);
    long rows = (long)config->n * (per_position ? config->output.d[0] : 1);
    const int32_t *labels = targets;
    double total = 0.0;
    for (long i = 0; i < rows; i++) {
        const double *row = out + i * k;
        if (labels[i] == FR_IGNORE_INDEX)
            continue;
        double sum = 0.0;
        for (int j = 0; j < k; j++)
            sum += exp(row[j]);
        total += log(sum) - row[labels[i]];
        for (int j = 0; j < k; j++)
            doutput[i * k + j] = exp(row[j]) / sum - (j == labels[i]);
        *correct += argmax_of(row, k) == labels[i];
        (*count)++;
    }
    return total;
}

/* MSE: per sample the mean over its elements of (out - target)^2; a hit
 * where the argmaxes agree. */
static double mse_reference(const loss_config *config, const double *out, const void *targets,
                            double *doutput, long *correct, long *count) {
    int k = (int)fr_shape_numel(config->output);
    const float *want = targets;
    double total = 0.0;
    for (int s = 0; s < config->n; s++) {
        for (int j = 0; j < k; j++) {
            double difference = out[s * k + j] - want[s * k + j];
            total += difference * difference / k;
            doutput[s * k + j] = 2.0 * difference / k;
        }
        *correct += argmax_of(out + s * k, k) == argmax_of_floats(want + s * k, k);
        (*count)++;
    }
    return total;
}

static const loss_config cross_entropy_configs[] = {
    {VEC(10), 6, false, "one class per sample"},
    {SEQ(7, 11), 3, true, "one class per position, every third -100"},
};
static const loss_config mse_configs[] = {
    {VEC(5), 4, false, "a vector per sample"},
    {SEQ(3, 4), 3, false, "a [T, C] output, all its elements"},
};

static const loss_check loss_checks[] = {
    {"cross_entropy", 1e-6, cross_entropy_reference, CONFIGS(cross_entropy_configs)}, /* [5.3e-8] */
    {"mse", 1e-6, mse_reference, CONFIGS(mse_configs)}, /* [7.7e-8] */
};
#define LOSS_CHECK_COUNT (int)(sizeof loss_checks / sizeof loss_checks[0])
#define LOSS_CONFIG_LINES 3

static const loss_check *loss_check_of(const char *name) {
    for (int i = 0; i < LOSS_CHECK_COUNT; i++)
        if (strcmp(loss_checks[i].name, name) == 0)
            return &loss_checks[i];
    return NULL;
}

/* The loss as the trainer calls it: the sum over the batch's rows, the
 * gradient times 1 / the count of targets (the mean's). */
static void check_loss_config(const loss_check *check, const fr_loss_ops *ops,
                              const loss_config *config, uint64_t seed) {
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    char shape[64], what[160];
    fr_shape_format(config->output, shape, sizeof shape);
    snprintf(what, sizeof what, "%s on %d x %s, %s", ops->name, config->n, shape, config->note);
    size_t count = (size_t)config->n * fr_shape_numel(config->output);
    int per_sample = ops->targets_per_sample(config->output);
    size_t target_count = (size_t)config->n * per_sample;
    float *out = random_floats(&rng, count, 3.0f, 0.0f);
    double *x = doubles_of(out, count), *want_grad = zeroed_doubles(count);
    void *targets;
    if (ops->target_dtype == FR_I32) {
        int classes = (int)(count / target_count);
        int32_t *labels = malloc(target_count * sizeof *labels);
        for (size_t i = 0; i < target_count; i++)
            labels[i] = config->ignore_some && i % 3 == 1
                            ? FR_IGNORE_INDEX
                            : (int32_t)fr_rng_below(&rng, (uint64_t)classes);
        targets = labels;
    } else {
        targets = random_floats(&rng, target_count, 1.0f, 0.0f);
    }
    long want_correct = 0, want_count = 0;
    double want = check->reference(config, x, targets, want_grad, &want_correct, &want_count);
    long counted = ops->count(config->output, targets, config->n);
    float scale = 1.0f / (float)counted;
    for (size_t i = 0; i < count; i++)
        want_grad[i] *= scale;
    float *grad = filled_floats(count, GARBAGE);
    long correct = 0, bad_row = -1;
    double total = ops->compute(config->output, out, targets, config->n, scale, grad, &correct,
                                &bad_row);
    double error = fabs(total - want) / (fabs(want) + TINY);
    note_error(error);
    tap_ok(error <= check->tolerance,
           "%s: the summed loss %.6g within %.0e of float64 (error %.2g)",
           what, total, check->tolerance, error);
    error = relative_error(grad, want_grad, count);
    note_error(error);
    tap_ok(error <= check->tolerance,
           "%s: its gradient times 1/count within %.0e of float64 (error %.2g)", what,
           check->tolerance, error);
    tap_ok(counted == want_count && correct == want_correct && bad_row == -1,
           "%s: %ld targets count (want %ld), %ld argmax hits (want %ld), no bad row", what,
           counted, want_count, correct, want_correct);
    free(out);
    free(x);
    free(want_grad);
    free(grad);
    free(targets);
}

/* ------------------------------------------------- the registry */

/* Every kind the trainer can meet: the registry's, then the residual join,
 * which the model adds for a residual block. */
static int kind_count(void) { return fr_layer_kind_count + 1; }
static const fr_layer_ops *kind_at(int i) {
    return i < fr_layer_kind_count ? fr_layer_kinds[i] : &fr_residual_ops;
}

/* Every loss of the table: fr_loss_kind_ops for kinds 0, 1, ... until it
 * gives none or one already seen (it answers an unknown kind with
 * cross-entropy). */
#define LOSSES_MAX 16
static int loss_table(const fr_loss_ops **losses) {
    int count = 0;
    for (int kind = 0; count < LOSSES_MAX; kind++) {
        const fr_loss_ops *ops = fr_loss_kind_ops((fr_loss_kind)kind);
        for (int seen = 0; ops && seen < count; seen++)
            if (losses[seen] == ops)
                ops = NULL;
        if (!ops)
            break;
        losses[count++] = ops;
    }
    return count;
}

static int kind_lines(const kind_check *check, const fr_layer_ops *ops) {
    int lines = check->special ? check->special_lines : 0;
    for (int i = 0; i < check->config_count; i++)
        lines += config_lines(check, ops, &check->configs[i]);
    return lines;
}

/* Whether the configurations of `check` run everything `ops` has: forward
 * and backward, in place where it may run so, forward_at in train mode, the
 * batch-statistics hooks. */
static bool exercises_its_hooks(const kind_check *check, const fr_layer_ops *ops) {
    bool eval = false, at = false, stats = false, in_place = false;
    for (int i = 0; i < check->config_count; i++) {
        eval = eval || check->configs[i].mode == EVAL;
        at = at || check->configs[i].mode == TRAIN_AT;
        stats = stats || check->configs[i].mode == TRAIN_STATS;
        in_place = in_place || check->configs[i].in_place;
    }
    return (!ops->forward || eval) && (!ops->forward_at || at) && (!ops->stats_count || stats) &&
           (!ops->inplace || in_place);
}

/* Names of the kinds (or losses) without a check, comma-separated. */
static void append_name(char *list, size_t len, const char *name) {
    size_t used = strlen(list);
    snprintf(list + used, len - used, "%s%s", used ? ", " : "", name);
}

int main(void) {
    const fr_loss_ops *losses[LOSSES_MAX];
    int loss_count = loss_table(losses);

    /* The plan: four lines of coverage, then what each check writes. */
    int planned = 4;
    for (int i = 0; i < kind_count(); i++) {
        const kind_check *check = kind_check_of(kind_at(i)->kind);
        if (check)
            planned += kind_lines(check, kind_at(i));
    }
    for (int i = 0; i < loss_count; i++) {
        const loss_check *check = loss_check_of(losses[i]->name);
        if (check)
            planned += check->config_count * LOSS_CONFIG_LINES;
    }
    tap_plan(planned);

    char missing[512] = "", stale[512] = "";
    for (int i = 0; i < kind_count(); i++)
        if (!kind_check_of(kind_at(i)->kind))
            append_name(missing, sizeof missing, kind_at(i)->kind);
    tap_ok(!missing[0], "every layer kind has a float64 check%s%s (%d kinds and the residual join)",
           missing[0] ? ": missing " : "", missing, fr_layer_kind_count);
    for (int i = 0; i < KIND_CHECK_COUNT; i++) {
        bool known = false;
        for (int k = 0; k < kind_count(); k++)
            known = known || strcmp(kind_at(k)->kind, kind_checks[i].kind) == 0;
        if (!known)
            append_name(stale, sizeof stale, kind_checks[i].kind);
    }
    tap_ok(!stale[0], "every float64 check is of a kind in the registry%s%s",
           stale[0] ? ": no kind " : "", stale);
    char unexercised[512] = "";
    for (int i = 0; i < kind_count(); i++) {
        const kind_check *check = kind_check_of(kind_at(i)->kind);
        if (check && !exercises_its_hooks(check, kind_at(i)))
            append_name(unexercised, sizeof unexercised, kind_at(i)->kind);
    }
    tap_ok(!unexercised[0],
           "every check runs its kind's forward and backward, in place where the kind may run "
           "so, and its train-mode hooks (forward_at, the batch statistics) where it has "
           "them%s%s",
           unexercised[0] ? ": not " : "", unexercised);
    missing[0] = '\0';
    for (int i = 0; i < loss_count; i++)
        if (!loss_check_of(losses[i]->name))
            append_name(missing, sizeof missing, losses[i]->name);
    tap_ok(!missing[0], "every loss has a float64 check%s%s (%d losses)",
           missing[0] ? ": missing " : "", missing, loss_count);

    uint64_t seed = 1000;
    for (int i = 0; i < kind_count(); i++) {
        const fr_layer_ops *ops = kind_at(i);
        const kind_check *check = kind_check_of(ops->kind);
        if (!check)
            continue;
        kind_worst_error = 0.0;
        if (check->special)
            check->special(check, ops);
        for (int c = 0; c < check->config_count; c++)
            check_config(check, ops, &check->configs[c], seed++);
        tap_diag("%s: worst error %.2g, tolerance %.0e", ops->kind, kind_worst_error,
                 check->tolerance);
    }
    for (int i = 0; i < loss_count; i++) {
        const loss_check *check = loss_check_of(losses[i]->name);
        if (!check)
            continue;
        kind_worst_error = 0.0;
        for (int c = 0; c < check->config_count; c++)
            check_loss_config(check, losses[i], &check->configs[c], seed++);
        tap_diag("%s: worst error %.2g, tolerance %.0e", losses[i]->name, kind_worst_error,
                 check->tolerance);
    }
    return tap_done();
}
