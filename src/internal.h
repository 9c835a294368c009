/*
 * internal.h - what the parts of libfrost share and users do not see.
 *
 * The two central data structures are declared here:
 *   - the parameter arena: one allocation holding every parameter of a model,
 *     each fr_param a pointer at an offset into it (fr_model.arena);
 *   - the gradient slab: one contiguous buffer per replica holding the
 *     gradients of the trainable parameters only, each at an offset the
 *     trainer plans and keeps (plan.c), laid out in the order backward
 *     produces them (last layer first).
 * The arena's offsets live in model.c, the slab's in plan.c.
 */
#ifndef FROST_INTERNAL_H
#define FROST_INTERNAL_H

#include "frost.h"

#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define FR_NAME_MAX 64
#define FR_ALIGN 64

/* ------------------------------------------------------------ errors */

/* fr_fail and fr_error_prefix are public (frost.h). */

/* Names and patterns come from users; a control character (a newline, say)
 * would break a one-line error message, so messages show text through this:
 * `text` copied into `shown`, control characters as '?'.  Returns shown. */
const char *fr_printable(const char *text, char *shown, size_t len);

/* ------------------------------------------------------------ text */

/* A growing NUL-terminated string (util.c); `failed` sticks once an
 * allocation fails, and the caller checks it once at the end.  Release
 * `data` with free. */
typedef struct fr_text {
    char *data;
    size_t length, capacity;
    bool failed;
} fr_text;

void fr_text_printf(fr_text *t, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------ memory */

/* Tracked, 64-byte aligned, zero-filled allocations (fr_allocated_bytes). */
void *fr_alloc(size_t bytes);
void fr_free(void *ptr);
/* The bytes fr_alloc was asked for when it returned ptr (0 for NULL): what
 * the memory accessors report, so they add up to fr_allocated_bytes. */
size_t fr_alloc_size(const void *ptr);
/* Overflow-checked a * b; returns false on overflow. */
bool fr_mul_size(size_t a, size_t b, size_t *out);

/* --------------------------------------------------------------- RNG */

/* xoshiro256** seeded through splitmix64: small, fast, reproducible. */
typedef struct fr_rng {
    uint64_t s[4];
} fr_rng;

void fr_rng_seed(fr_rng *rng, uint64_t seed);
uint64_t fr_rng_next(fr_rng *rng);
/* Uniform in [0, 1) with 24 random bits. */
float fr_rng_uniform(fr_rng *rng);
/* Uniform integer in [0, bound). */
uint64_t fr_rng_below(fr_rng *rng, uint64_t bound);

/* 64-bit FNV-1a over bytes, chained through `hash`. */
uint64_t fr_hash_bytes(uint64_t hash, const void *data, size_t len);
#define FR_HASH_INIT 0xcbf29ce484222325ULL

/* ------------------------------------------------------------ shapes */

/* The shape of one sample, N-dimensional, the last dimension the features
 * (DESIGN.md, "The sample contract"): an image is [C, H, W], a vector [F], a
 * token sequence [T] (of int32 ids, the model's input_dtype says) and its
 * activations [T, C].  Dimensions past ndim are 0. */
typedef struct fr_shape {
    int ndim;
    int d[FR_MAX_DIMS];
} fr_shape;

static inline size_t fr_shape_numel(fr_shape s) {
    size_t numel = 1;
    for (int i = 0; i < s.ndim; i++)
        numel *= (size_t)s.d[i];
    return numel;
}
/* [c, h, w], [f] and [a, b]. */
static inline fr_shape fr_shape_chw(int c, int h, int w) { return (fr_shape){3, {c, h, w, 0}}; }
static inline fr_shape fr_shape_vector(int f) { return (fr_shape){1, {f, 0, 0, 0}}; }
static inline fr_shape fr_shape_2d(int a, int b) { return (fr_shape){2, {a, b, 0, 0}}; }
/* The last dimension (features per position); 1 for a scalar. */
static inline int fr_shape_last(fr_shape s) { return s.ndim > 0 ? s.d[s.ndim - 1] : 1; }
static inline bool fr_shape_equal(fr_shape a, fr_shape b) {
    if (a.ndim != b.ndim)
        return false;
    for (int i = 0; i < a.ndim; i++)
        if (a.d[i] != b.d[i])
            return false;
    return true;
}
/* "32x26x26", "784", "64x128": the one way shapes appear in messages. */
void fr_shape_format(fr_shape shape, char *buf, size_t len);
/* Bytes of one element of `dtype`. */
static inline size_t fr_dtype_size(fr_dtype dtype) {
    (void)dtype; /* float32 and int32 alike */
    return 4;
}

/* ------------------------------------------------------------ params */

/* bfloat16 bits (layers/bf16.h converts and multiplies them). */
typedef uint16_t fr_bf16;

struct fr_param {
    char name[FR_NAME_MAX];  /* "fc1.weight" */
    int ndim;
    int shape[FR_MAX_DIMS];
    size_t numel;
    size_t arena_offset;     /* floats from fr_model.arena */
    float *data;             /* fr_model.arena + arena_offset */
    bool requires_grad;
    int layer;               /* the layer that declared it (its owner); a tied
                                parameter is used by later layers too */
    bool adapter;            /* a LoRA adapter's (lora_A, lora_B): not a base weight, so
                                weights files leave it out and adapter files hold it */
    /* Kept in bf16 (fr_model_store_frozen_bf16): its values are bf16[], its
     * data NULL and its arena space given back.  Unfrozen, the next
     * fr_model_ensure_arena gives it float32 storage of its own again
     * (own_data: data is an allocation of its own, not in the arena). */
    fr_bf16 *bf16;
    bool own_data;
};

/* A parameter's values as float32 into dst (numel of them), whatever it is
 * stored as; and set from float32 (rounded once when it is kept in bf16). */
void fr_param_get_f32(const fr_param *p, float *dst);
void fr_param_set_f32(fr_param *p, const float *src);
/* The values of every parameter kept in bf16, as float32, one after another
 * in parameter order (fr_alloc'd; NULL when there are none or no memory:
 * fr_model_bf16_numel tells which), for writing files. */
size_t fr_model_bf16_numel(const fr_model *model);
float *fr_model_widened_bf16(const fr_model *model);

/* ------------------------------------------------------------ layers */

typedef struct fr_layer fr_layer;

/* Longest layer name: "<name>.weight" must fit a parameter name (FR_NAME_MAX). */
#define FR_LAYER_NAME_MAX 48
/* Most arguments a layer kind takes, and the largest value of any of them. */
#define FR_LAYER_ARGS_MAX 6
#define FR_ARG_LIMIT 1000000
/* The value of an argument whose PyTorch default is None (maxpool2d's stride):
 * the layer's shape rule decides what it means. */
#define FR_ARG_NONE INT_MIN

/*
 * One argument of a layer kind, in the order PyTorch's constructor takes it.
 * The parser binds a model file's arguments with it, fr_model_add_layer checks
 * them against it, and fr_layer_format writes them back.
 */
typedef struct fr_layer_arg {
    const char *name;    /* PyTorch's keyword: "kernel_size" */
    const char *alias;   /* another keyword accepted ("kernel"), or NULL */
    int minimum;         /* 1 for sizes, 0 for padding; every value is at most FR_ARG_LIMIT */
    bool optional;       /* may be left out; it then takes default_value */
    int default_value;   /* FR_ARG_NONE for PyTorch's None */
    bool keyword_only;   /* only by keyword (bias=False: PyTorch has arguments before it we lack) */
    bool boolean;        /* written True or False, held as 1 or 0 */
    bool real;           /* a number in [0, 1] written as Python writes floats (eps=1e-5),
                            held in units of FR_REAL_UNIT (minimum and default too) */
    /* A word from this NULL-ended list (approximate='tanh', written with or
     * without quotes), held as its index. */
    const char *const *choices;
} fr_layer_arg;

/* A real argument's unit: eps=1e-5 is held as 10000.  Reals lie in [0, 1]. */
#define FR_REAL_UNIT 1e-9
#define FR_REAL_MAX 1000000000
static inline double fr_arg_real(int value) { return value * FR_REAL_UNIT; }

/* A layer's buffers (batchnorm2d's running statistics): state that is not a
 * parameter, saved and loaded with the weights under "<layer>.<suffix>". */
#define FR_LAYER_BUFFERS_MAX 3
typedef struct fr_buffer_kind {
    const char *suffix;  /* "running_mean" */
    bool i64;            /* int64 (num_batches_tracked), else float */
    bool scalar;         /* shape [], else [out channels] */
    float initial;       /* its value in a fresh model */
} fr_buffer_kind;

/* What a kind's first argument says about a model input nobody gave. */
typedef enum fr_implied_input {
    FR_IMPLIES_NOTHING,
    FR_IMPLIES_VECTOR,  /* a vector of that many features (linear) */
    FR_IMPLIES_IMAGE,   /* 28x28 images with that many channels (conv2d) */
} fr_implied_input;

/*
 * A layer kind's parameters (its schema): their names and initial values, in
 * the order named_parameters() lists them.  infer_shape gives each its shape
 * (fr_layer_param_shape); one it leaves without a shape does not exist in
 * that layer (bias=False).  Slot FR_WEIGHT is "the weight" the trainer may
 * split by rows (weight_grad_rows), FR_BIAS its bias.
 */
#define FR_LAYER_PARAMS_MAX 4
/* A kind that takes LoRA adapters (linear, conv1d) lists lora_A and lora_B in
 * slots FR_LORA_A and FR_LORA_B; its infer_shape gives them shapes only when
 * the layer has an adapter (fr_layer.lora.rank > 0). */
enum { FR_WEIGHT = 0, FR_BIAS = 1, FR_LORA_A = 2, FR_LORA_B = 3 };
typedef enum fr_init {
    FR_INIT_FAN_IN_UNIFORM, /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear's and nn.Conv2d's */
    FR_INIT_ONES,           /* norms' weights */
    FR_INIT_ZEROS,          /* norms' biases */
    FR_INIT_NORMAL,         /* N(0, 1): nn.Embedding's */
    FR_INIT_NORMAL_SMALL,   /* N(0, 0.02): Hugging Face's Conv1D and GPT-2's */
} fr_init;
typedef struct fr_param_kind {
    const char *suffix; /* "weight" */
    fr_init init;
} fr_param_kind;

/*
 * A LoRA adapter beside a layer's weight (PEFT's semantics, src/layers/lora.c):
 * out += scale · dropout(in) · Aᵀ · Bᵀ with A [rank, in] and B [out, rank],
 * scale = alpha / rank, or alpha / sqrt(rank) with rslora.  rank 0: none.
 */
typedef struct fr_lora {
    int rank;
    float alpha;
    float dropout;   /* PEFT's lora_dropout, on the adapter's input only */
    bool rslora;
    float scale;
} fr_lora;

/* The gradients a layer's backward writes: grad[k] for parameter slot k, NULL
 * where it is not wanted (frozen, or absent); OVERWRITTEN with this batch's
 * gradient unless bit k of `accumulate` is set (a tied parameter's second
 * user), when it is added to what is there. */
typedef struct fr_param_grads {
    float *grad[FR_LAYER_PARAMS_MAX];
    unsigned accumulate;
} fr_param_grads;

/*
 * A layer kind: everything the rest of the program knows about it.  Each kind
 * is one file in src/layers/ defining one of these, and one line of the
 * registry (src/layers/registry.c); the parser, the model and the trainer ask
 * the ops table and never switch on a kind.
 *
 * In forward and backward, `scratch` is what a layer needs beyond its input
 * and output: per replica and per layer, sized by scratch_bytes for the
 * replica's largest slice; it persists from forward to backward (maxpool keeps
 * its argmax there).
 */
typedef struct fr_layer_ops {
    const char *kind;   /* PyTorch's class name in lower case: "conv2d" */
    /* Its parameters; a NULL suffix ends the list. */
    fr_param_kind params[FR_LAYER_PARAMS_MAX + 1];
    /* What it reads: floats, or token ids (int32; embedding), which only the
     * model's input holds. */
    fr_dtype input_dtype;
    /* Its backward honours fr_param_grads.accumulate, so one of its
     * parameters may be tied to another layer's (fr_model_tie). */
    bool accumulates;
    /* Its arguments, in order; a NULL name ends the list.  fr_layer.args[i]
     * holds the value of args[i]. */
    fr_layer_arg args[FR_LAYER_ARGS_MAX + 1];
    fr_implied_input implies_input;
    /* A relu right after it may run in its forward (fr_layer.fused_relu). */
    bool fuses_relu;
    /* It takes a LoRA adapter (fr_layer.lora): lora_A and lora_B are in its
     * schema's slots FR_LORA_A and FR_LORA_B. */
    bool takes_lora;
    /* Forward and the gradient at its input read a frozen FR_WEIGHT kept in
     * bf16 (fr_layer.param_bf16) when it is: --frozen-dtype bf16. */
    bool bf16_weight;
    /* Output shape from l->in and the arguments; gives its parameters their
     * shapes (fr_layer_param_shape) and fan_in. */
    int (*infer_shape)(fr_layer *l, fr_error *err);
    size_t (*scratch_bytes)(const fr_layer *l, int n);
    /* in: n x in-shape, out: n x out-shape. */
    void (*forward)(const fr_layer *l, const float *in, float *out, int n,
                    void *scratch);
    /*
     * dout: gradient of the loss w.r.t. out.  din (gradient w.r.t. in) is NULL
     * when nothing below needs it.  grads says where its parameters'
     * gradients go (fr_param_grads: each replica runs a layer's backward once
     * per step, so the slab never needs zeroing, and a tied parameter's
     * second user adds to the first's).
     */
    void (*backward)(const fr_layer *l, const float *in, const float *out,
                     const float *dout, float *din, const fr_param_grads *grads, int n,
                     void *scratch);
    /*
     * Optional: rows [row_begin, row_end) of the weight gradient (rows of the
     * weight's first dimension) for n samples, written over, or added to when
     * `accumulate`.  With it the trainer splits the weight gradient between
     * threads by rows instead of giving each thread a whole copy to sum; it
     * then passes dweight = NULL to backward.
     */
    void (*weight_grad_rows)(const fr_layer *l, const float *in, const float *dout, int n,
                             float *dweight, int row_begin, int row_end, bool accumulate);
    /*
     * Optional, with weight_grad_rows: forward for the outputs that rows
     * [row_begin, row_end) of the weight make (with a fused relu).  With both
     * the trainer on several ranks computes a large weight's gradient in row
     * blocks, sending each as it is done, and the next forward takes each
     * block as soon as its update is applied.
     */
    void (*forward_rows)(const fr_layer *l, const float *in, float *out, int n, int row_begin,
                         int row_end);
    /*
     * Optional, with forward_rows: columns [col_begin, col_end) of the
     * gradient at the input (n x in) from dout, written over.  With both,
     * a step whose threads have few rows each splits the layer's forward and
     * input gradient by features over the rank's whole batch.
     */
    void (*input_grad_cols)(const fr_layer *l, const float *dout, float *din, int n,
                            int col_begin, int col_end);
    /* Its buffers; a NULL suffix ends the list.  Only layers with buffers
     * take the model's FR_LAYER_BUFFERS_MAX slots in fr_layer.buffer_data. */
    fr_buffer_kind buffers[FR_LAYER_BUFFERS_MAX + 1];
    /*
     * Optional: statistics over the whole batch (batchnorm2d in train mode,
     * fr_layer.training).  The trainer then runs the layer in two halves
     * around a meeting of every replica (and rank): stats_count doubles of
     * partial sums from each replica's rows, summed in replica then rank
     * order, so the result does not depend on how the batch is split.
     *   forward_sums: this replica's sums for forward;
     *   forward_with: forward from the batch's sums; commit: the buffers
     *     updated from them, once per step (the main thread);
     *   backward_sums: this replica's sums for backward, and its parameters'
     *     gradients from them (dweight/dbias NULL when not wanted);
     *   backward_with: the gradient at the input from the batch's sums.
     * A replica without rows passes n = 0 and contributes zeros.
     */
    int (*stats_count)(const fr_layer *l);
    void (*forward_sums)(const fr_layer *l, const float *in, int n, double *sums);
    void (*forward_with)(const fr_layer *l, const float *in, float *out, int n,
                         const double *sums, void *scratch);
    void (*commit)(const fr_layer *l, const double *sums);
    void (*backward_sums)(const fr_layer *l, const float *in, const float *dout, int n,
                          double *sums, float *dweight, float *dbias, const double *forward_sums);
    void (*backward_with)(const fr_layer *l, const float *in, const float *dout, float *din,
                          int n, const double *sums, const double *forward_sums);
    /* Optional: forward that depends on where the rows sit (dropout's mask):
     * row 0 is row `first_row` of the global batch at step `step` (counted
     * from 0) of a run seeded with `seed`.  Used instead of forward when the
     * layer is in train mode. */
    void (*forward_at)(const fr_layer *l, const float *in, float *out, int n, void *scratch,
                       uint64_t seed, long step, int first_row);
    /* Out aliases in (flatten): forward/backward are never called. */
    bool alias;
    /* Forward may run with out == in (relu): the trainer then gives the layer
     * no buffer of its own.  Backward must not need the layer's input. */
    bool inplace;
    /* The end of a residual block (src/layers/residual.c): its output is the
     * sum of its input (the body's) and fr_layer.shortcut's output, which the
     * trainer forms; backward passes its gradient to both unchanged. */
    bool join;
} fr_layer_ops;

struct fr_layer {
    const fr_layer_ops *ops;
    char name[FR_NAME_MAX];       /* with its blocks' names in front: "layer1.0.conv1" */
    int args[FR_LAYER_ARGS_MAX];  /* in the order of ops->args */
    /* The model is a graph whose layers are listed in topological order: the
     * layer whose output this one reads (-1: the model input; the previous
     * layer except at the start of a block's body or shortcut), and for a
     * join the shortcut's last layer (or the block's input). */
    int input, shortcut;
    fr_shape in, out;
    /* Per slot of ops->params: the parameter's index in the model (-1: none;
     * a tied slot holds another layer's), the shape infer_shape gave it
     * (ndim 0: absent) and its data in the model's arena (set with it). */
    int params[FR_LAYER_PARAMS_MAX];
    int param_ndim[FR_LAYER_PARAMS_MAX];
    int param_shape[FR_LAYER_PARAMS_MAX][FR_MAX_DIMS];
    const float *param_data[FR_LAYER_PARAMS_MAX];
    /* A slot's parameter kept in bf16 (its param_data is then NULL). */
    const fr_bf16 *param_bf16[FR_LAYER_PARAMS_MAX];
    fr_lora lora;      /* its adapter (kinds that take one; rank 0: none) */
    int fan_in;        /* for PyTorch's default init */
    float init_std;    /* > 0: its normally drawn parameters' standard deviation instead of
                          the kind's (GPT-2's 0.02, and its c_proj's 0.02 / sqrt(2 n_layer)) */
    /* Set by the trainer when an in-place relu follows: forward applies it in
     * the bias pass after the GEMM, and the relu's own forward is skipped. */
    bool fused_relu;
    /* Its buffers' data (float or int64_t as the kind says), allocated with
     * the layer; and whether it runs in train mode (batch statistics, a
     * dropout mask), set by the trainer before each step and evaluation. */
    void *buffer_data[FR_LAYER_BUFFERS_MAX];
    int first_buffer;  /* index in fr_model.buffers, -1 if none */
    bool training;
};

/* One buffer of a model (fr_model.buffers), in declaration order. */
typedef struct fr_buffer {
    char name[FR_NAME_MAX];  /* "bn1.running_mean" */
    bool i64;
    int ndim;                /* 0 (a scalar) or 1 */
    int shape[1];
    size_t numel;
    void *data;              /* fr_layer.buffer_data's */
    int layer;
} fr_buffer;

/* Whether the trainer may run layer l by blocks of its outputs
 * (forward_rows: the splits by features and the in-flight pipeline), which
 * computes the float32 base weight's part alone: not with an adapter or a
 * bf16 weight. */
static inline bool fr_layer_runs_by_rows(const fr_layer *l) {
    return l->ops->forward_rows && l->lora.rank == 0 && !l->param_bf16[FR_WEIGHT];
}

/* The registry (src/layers/registry.c): every kind, in the order messages
 * list them. */
extern const fr_layer_ops *const fr_layer_kinds[];
extern const int fr_layer_kind_count;
/* The kind called `name` (exactly, lower case), or NULL. */
const fr_layer_ops *fr_layer_kind_find(const char *name);
/* How many arguments the kind takes. */
int fr_layer_arg_count(const fr_layer_ops *ops);
/* "conv2d(1, 32, 3, 2)" or "conv2d(1, 32, 3, bias=False)": the layer as a
 * model file would write it, arguments at their defaults left out. */
void fr_layer_format(const fr_layer *l, char *buf, size_t len);
/* Whether `value` may be argument `index` of the kind; if not, the message
 * names both ("conv2d: stride must be positive, got 0"). */
int fr_layer_check_arg(const fr_layer_ops *ops, int index, int value, fr_error *err);

/* The kinds the public fr_model_add_* functions and the trainer's relu
 * fusion name. */
extern const fr_layer_ops fr_linear_ops;
extern const fr_layer_ops fr_conv2d_ops;
extern const fr_layer_ops fr_relu_ops;
extern const fr_layer_ops fr_maxpool2d_ops;
extern const fr_layer_ops fr_flatten_ops;
/* The join that ends a residual block; not a kind of the registry (a model
 * file writes `residual NAME { ... }`), the model adds it. */
extern const fr_layer_ops fr_residual_ops;

/* Shared kernels (kernels.c). */
/* out[n x m] = in[n x k] * W[m x k]^T + b (b may be NULL), then
 * max(out, 0) when `relu`. */
/* Columns [col_begin, col_end) of fr_gemm_affine's out (m wide): the
 * weight's rows and the bias's values of those outputs. */
void fr_gemm_affine_cols(const float *in, const float *weight, const float *bias, float *out,
                         int n, int k, int m, int col_begin, int col_end, bool relu);
void fr_gemm_affine(const float *in, const float *weight, const float *bias,
                    float *out, int n, int k, int m, bool relu);
/* values = max(values, 0); a NaN passes through, as in PyTorch. */
void fr_relu_inplace(float *values, size_t count);
/* out[c x plane]: every element of channel c set to bias[c] (conv's bias). */
void fr_bias_set_channels(float *out, const float *bias, int channels, int plane);
/* "oneDNN X.Y.Z" when conv2d runs through oneDNN (configure --with-dnnl),
 * else NULL (src/layers/conv2d_dnnl.c). */
const char *fr_conv_dnnl_version(void);
/* col[(c*kh*kw) x (oh*ow)] from one image [c x h x w], each row ld floats
 * after the one before (ld >= oh*ow: other samples' columns may sit beside). */
void fr_im2col(const float *img, int c, int h, int w, int k, int stride,
               int pad, int oh, int ow, float *col, size_t ld);
/* img[c x h x w] += col2im(col), col's rows ld floats apart.  col is scratch:
 * the entries that fall in the padding may be zeroed on the way. */
void fr_col2im_add(float *col, int c, int h, int w, int k, int stride,
                   int pad, int oh, int ow, float *img, size_t ld);
/* dbias[j] = sum over the rows of d[rows x cols] of column j (added to
 * what is there when `accumulate`). */
void fr_bias_grad_rows(const float *d, long rows, int cols, float *dbias, bool accumulate);
/* out = a + b, element-wise (a residual block's join). */
void fr_add_arrays(float *out, const float *a, const float *b, size_t count);
/* into += from, element-wise (gradients meeting where a block's input forks). */
void fr_add_into(float *into, const float *from, size_t count);

/* ------------------------------------------------------------- model */

/* How deep residual blocks nest. */
#define FR_BLOCK_DEPTH_MAX 16

/* A block being built: a residual one (fr_model_begin_residual ...
 * fr_model_end_residual), which names its layers unless it is anonymous, or
 * one that only names them (fr_model_begin_block ... fr_model_end_block). */
typedef struct fr_open_block {
    char name[FR_NAME_MAX];  /* the prefix of its layers' names, with the enclosing
                                blocks': "layer1.0" ("" at the top) */
    int input;               /* the layer whose output enters the block; -1 the model input */
    int body_end;            /* the body's last layer once the shortcut began */
    bool in_shortcut;
    bool names_only;         /* fr_model_begin_block's: no join */
    bool anonymous;          /* a residual without a name of its own */
} fr_open_block;

struct fr_model {
    fr_shape input;
    fr_dtype input_dtype;   /* FR_F32, or FR_I32 token ids (an embedding reads them) */
    fr_layer *layers;
    int layer_count, layer_cap;
    /* While building: the layer the next one reads (-1: the model input) and
     * the blocks still open, innermost last. */
    int tail;
    fr_open_block blocks[FR_BLOCK_DEPTH_MAX];
    int block_depth;
    fr_param *params;
    int param_count, param_cap;
    fr_buffer *buffers;
    int buffer_count, buffer_cap;
    float *arena;           /* every parameter, one allocation */
    size_t arena_floats;     /* floats the parameters need */
    size_t arena_capacity;   /* floats allocated */
    /* A trainer whose last step's updates are still in flight (train.c),
     * and how to apply them (fr_trainer_sync, through a pointer so that
     * model.c needs nothing of train.c): whatever reads or writes the
     * parameters calls fr_model_settle first. */
    struct fr_trainer *in_flight;
    int (*sync_in_flight)(struct fr_trainer *trainer, fr_error *err);
    /* What Hugging Face puts in front of the names of modules other than
     * lm_head in the model these came from ("transformer." for a GPT-2 from
     * a config.json): adapter files name modules with it, as PEFT does. */
    char module_prefix[16];
};

/* Apply the updates in flight, if any; const because reading a model is
 * what needs it. */
void fr_model_settle(const fr_model *model);

/* The arena exists once the first parameter is read or written. */
int fr_model_ensure_arena(fr_model *model, fr_error *err);
/* Whether layer i is frozen: its parameters are all frozen, or it has none
 * and lies before the first trainable layer.  A frozen layer runs in eval
 * mode in training too (batchnorm2d keeps its statistics, dropout passes
 * everything): the trainer sets fr_layer.training from this. */
bool fr_model_layer_frozen(const fr_model *model, int i);
/* Whether one of layer l's parameters (its own or a tied one) is trainable. */
bool fr_layer_trains(const fr_model *model, const fr_layer *l);
/* The layers using parameter `param` (its owner and those tied to it), in
 * order: how many, and the first `most` of them in layers[]. */
int fr_param_users(const fr_model *model, int param, int *layers, int most);
/* Index of the first layer with a trainable parameter, layer_count if none. */
int fr_model_first_trainable_layer(const fr_model *model);
int fr_model_find_layer(const fr_model *model, const char *name);
/* Append a layer of kind `ops` whose arguments, in the kind's order, are
 * args[0 .. fr_layer_arg_count(ops)); the fr_model_add_* functions and the
 * parser add through it.  `name` NULL: the layer's index. */
int fr_model_add_layer(fr_model *model, const fr_layer_ops *ops, const char *name,
                       const int *args, fr_error *err);
/* Parameters layer `layer` gained: its infer_shape run again (a LoRA
 * adapter set in fr_layer.lora gives lora_A and lora_B shapes), a parameter
 * added for each slot with a shape and none yet, the arena grown (values
 * already there stay; the new ones are zeros). */
int fr_model_add_layer_params(fr_model *model, int layer, fr_error *err);
/* The name a layer called `name` (NULL: unnamed) added now would get: the open
 * blocks' names in front, an unnamed layer its index. */
void fr_model_next_layer_name(const fr_model *model, const char *name, char *buf, size_t len);
/* fr_model_parse with the layer kinds `kinds[0 .. kind_count)` in place of
 * the registry's (spec.c; fr_model_parse passes fr_layer_kinds): a test's own
 * kinds are parsed and bound exactly as the registry's. */
int fr_model_parse_with_kinds(const char *text, const char *source,
                              const fr_layer_ops *const *kinds, int kind_count, fr_model **out,
                              fr_error *err);

/* ----------------------------------------------------------- safetensors */

/* A safetensors file read into memory (safetensors.c). */
typedef struct fr_st_tensor {
    char name[FR_NAME_MAX * 2];
    int ndim;
    int64_t shape[FR_MAX_DIMS];
    size_t numel;
    bool i64;           /* dtype I64, else F32 */
    const float *data;  /* into the file buffer (F32) */
    const void *data_i64; /* (I64) possibly unaligned: read it with memcpy */
} fr_st_tensor;

typedef struct fr_st_meta {
    char *key;
    char *value;
} fr_st_meta;

typedef struct fr_st_file {
    char *path;
    unsigned char *bytes;  /* the whole file */
    size_t size;
    fr_st_tensor *tensors;
    int tensor_count;
    fr_st_meta *meta;
    int meta_count;
} fr_st_file;

int fr_st_read(const char *path, fr_st_file **out, fr_error *err);
void fr_st_free(fr_st_file *file);
const fr_st_tensor *fr_st_find(const fr_st_file *file, const char *name);
const char *fr_st_meta_get(const fr_st_file *file, const char *key);

/* A tensor to write: data is numel float32 values, or int64 when i64. */
typedef struct fr_st_out {
    const char *name;
    int ndim;
    int64_t shape[FR_MAX_DIMS];
    const void *data;
    bool i64;
} fr_st_out;

/* Write atomically (PATH.tmp.PID in the same directory, fsync, rename). */
int fr_st_write(const char *path, const fr_st_out *tensors, int tensor_count,
                const fr_st_meta *meta, int meta_count, fr_error *err);

/* Copy every parameter from an opened safetensors file (weights.c); the file
 * must fit the model, which is checked before anything is copied. */
int fr_model_copy_weights(fr_model *model, const fr_st_file *file, fr_error *err);
/* Append the model's buffers to a list of tensors to write (room for
 * model->buffer_count more); returns the new count. */
int fr_model_buffer_tensors(const fr_model *model, fr_st_out *tensors, int count);
/* The model's buffers set to a fresh model's values. */
void fr_model_reset_buffers(fr_model *model);

/* ------------------------------------------------------- trainer state */

/* For checkpoint.c: parameter `param`'s optimizer state `which` (0: momentum
 * or exp_avg, 1: exp_avg_sq; NULL where the rule keeps none or the parameter
 * is frozen), the per-parameter step counts and the step counter.  The plan
 * follows the model's current frozen set only after fr_trainer_sync_plan. */
float *fr_trainer_param_state(fr_trainer *trainer, int which, int param);
int fr_trainer_sync_plan(fr_trainer *trainer, fr_error *err);
long *fr_trainer_param_steps(fr_trainer *trainer);
void fr_trainer_set_steps_done(fr_trainer *trainer, long steps);
const fr_train_config *fr_trainer_config(const fr_trainer *trainer);
fr_model *fr_trainer_model(const fr_trainer *trainer);
/* How many of layer `layer`'s GEMMs (forward, or the gradient at its input)
 * ran split by features over the rank's batch, summed over threads (train.c,
 * FEATURE_SPLIT_ROWS). */
long fr_trainer_feature_split_calls(const fr_trainer *trainer, int layer);

/* lr_schedule.c, for checkpoint.c: the learning rates as a checkpoint records
 * them, FR_LR_META_COUNT entries of `meta` whose values live in `texts`
 * (false when out of memory); and whether a checkpoint's are this trainer's
 * (FR_EINVAL naming the first difference; one that records none passes). */
#define FR_LR_META_COUNT 3
bool fr_trainer_lr_metadata(const fr_trainer *trainer, fr_text texts[FR_LR_META_COUNT],
                            fr_st_meta *meta);
int fr_trainer_check_lr_metadata(const fr_trainer *trainer, const fr_checkpoint *checkpoint,
                                 const char *path, fr_error *err);

/* freeze.c: hits[i] says whether parameter i matches `pattern` (a glob, or a
 * layer or block name, as fr_model_freeze matches); FR_ENOMATCH when none does. */
int fr_model_match(const fr_model *model, const char *pattern, bool *hits, fr_error *err);

/* ------------------------------------------------------------- data */

/* Typed tensors (DESIGN.md, "The sample contract"): n inputs of one shape,
 * float32 (images NCHW; IDX and uint8 pixels in [0, 1]) or int32 token ids,
 * and n x target_numel int32 targets: one class id per sample, or one per
 * position (language modelling; FR_IGNORE_INDEX ignored).  The trainer
 * gathers both as bytes without knowing their types. */
struct fr_dataset {
    char images_path[512], labels_path[512]; /* where it came from, for messages */
    int n;
    fr_shape shape;
    fr_dtype x_dtype;
    void *x;          /* n x numel(shape) of x_dtype */
    int target_numel; /* targets per sample */
    int32_t *labels;  /* n x target_numel */
};

/* npy.c: a NumPy .npy file held in memory, parsed and checked: a simple
 * little-endian dtype ('u' or 'i' of 1, 2, 4 or 8 bytes, 'f' of 4 or 8), C
 * order, a body of exactly count * item_bytes bytes.  `data` points into
 * the bytes given, which must outlive the array. */
#define FR_NPY_MAX_DIMS 32

typedef struct fr_npy {
    char kind;      /* 'u' unsigned integer, 'i' signed integer, 'f' float */
    int item_bytes; /* 1, 2, 4 or 8 */
    char descr[48]; /* as the header gives it ("<f4"), for messages */
    int ndim;
    uint64_t shape[FR_NPY_MAX_DIMS];
    size_t count;              /* elements: the product of the shape */
    const unsigned char *data; /* count * item_bytes bytes */
} fr_npy;

int fr_npy_parse(const char *path, const unsigned char *bytes, size_t size, fr_npy *array,
                 fr_error *err);
/* The shape as numpy prints it: "(60000, 28, 28)", "(5,)". */
void fr_npy_shape_string(const fr_npy *array, char *text, size_t len);
/* Writes PATH atomically (fr_write_atomic) as numpy.save does: format 1.0,
 * the dict {'descr': DESCR, 'fortran_order': False, 'shape': (...), }
 * padded with spaces to a multiple of 64 bytes and ended by '\n', then the
 * data, the product of the shape's items of DESCR's size ("<i4": 4) in C
 * order, as they are in memory (little-endian). */
int fr_npy_write(const char *path, const char *descr, int ndim, const uint64_t *shape,
                 const void *data, fr_error *err);

/* data.c: a dataset of n samples of `shape` (x_dtype) with target_numel
 * int32 targets each, allocated (`what` names it in messages); a sample's
 * bytes of input and of targets; what byte pixels p become (p / 255, as a
 * table); npy_data.c: whether the .npy file at `path` holds token ids. */
int fr_dataset_alloc(int n, fr_shape shape, fr_dtype x_dtype, int target_numel, const char *what,
                     fr_dataset **out, fr_error *err);
size_t fr_dataset_sample_bytes(const fr_dataset *data);
size_t fr_dataset_target_bytes(const fr_dataset *data);
void fr_byte_pixel_values(float pixel_value[256]);
bool fr_npy_holds_tokens(const char *path);

/* gzip.c: fr_read_file, then gunzipped when it starts with the gzip magic;
 * `limit` bounds the decompressed size.  Release *out with fr_free. */
int fr_read_file_gunzip(const char *path, size_t limit, unsigned char **out,
                        size_t *size, fr_error *err);


/* ------------------------------------------------------------- loss */

/*
 * A loss (loss.c's table): the targets it takes for a model whose sample
 * output has shape `output` (targets_per_sample values of target_dtype per
 * sample), how many of `samples` samples' targets count toward its mean
 * (cross-entropy ignores FR_IGNORE_INDEX per position), and compute: the SUM
 * of the loss over rows [0, n) of `output`, with d(loss)/d(output) times
 * `scale` (1 / the global count, so that replicas' gradients sum to the
 * mean) into doutput when it is not NULL, the argmax hits into *correct,
 * and a sample with a target out of range into *bad_row (else left alone).
 * label_ok (cross-entropy) says whether a class id may be a target at all.
 */
typedef struct fr_loss_ops {
    const char *name;
    fr_dtype target_dtype;
    int (*targets_per_sample)(fr_shape output);
    long (*count)(fr_shape output, const void *targets, long samples);
    double (*compute)(fr_shape output, const float *out, const void *targets, int n, float scale,
                      float *doutput, long *correct, long *bad_row);
    bool (*label_ok)(fr_shape output, int32_t label);
} fr_loss_ops;

const fr_loss_ops *fr_loss_kind_ops(fr_loss_kind kind);

/* A sample's loss over a flat output of k values (tests): fr_loss_ops's
 * compute for an output [k]; a bad label's row into *bad_label. */
double fr_loss(fr_loss_kind kind, const float *output, const void *targets,
               int n, int k, float scale, float *doutput, long *correct,
               int *bad_label);

/* ------------------------------------------------------------- optim */

/* One parameter's update with PyTorch's rule; `step` counts from 1 for this
 * parameter; m and v are its state (NULL where the rule keeps none). */
void fr_optim_update(const fr_train_config *config, long step, float *param,
                     const float *grad, float *m, float *v, size_t n);
/* How many state floats per parameter value the rule keeps (0, 1 or 2). */
int fr_optim_state_per_value(const fr_train_config *config);
/* Validate hyper-parameters; the message names the bad one. */
int fr_optim_check(const fr_train_config *config, fr_error *err);


/* ------------------------------------------------------------- comm */

/* In-place sum of at most 8 doubles over all ranks; a no-op on one rank. */
int fr_comm_allreduce_doubles(double *buf, int count, fr_error *err);
int fr_comm_barrier(fr_error *err);
/* Every rank's bytes, concatenated in rank order on rank 0 (*all, released
 * with free; NULL on the other ranks). */
int fr_comm_gather_bytes(const void *mine, size_t length, char **all, size_t *all_length,
                         fr_error *err);
#define FR_DEFAULT_COMM_TIMEOUT_S 120.0

/*
 * The gradient allreduce (allreduce.c): an in-place sum over all ranks run by
 * a communication thread, so it moves while the workers compute.  Each sum
 * started gets a ticket (numbered from 0 for the whole run); every rank
 * starts the same sums in the same order and the thread runs them in that
 * order.  fr_comm_finish_sum waits for one.  Floats go over the wire as
 * float32, or as bfloat16 when `bf16`
 * (summed in float32 on arrival; every rank ends with the same bits either
 * way); `label` names the sum in the trace.  The doubles variant carries a
 * step's loss totals.  fr_allreduce_quiesce waits until every sum started
 * is done: the main thread calls it before any MPI call of its own (MPI runs
 * MPI_THREAD_SERIALIZED).  A thread waiting for a sum that has not begun
 * runs it itself, and the jobs after it up to the one it waits for; the
 * communication thread takes the rest.  Main thread only.
 */
int fr_comm_start_sum(float *buf, size_t count, bool bf16, int label, long *ticket,
                      fr_error *err);
int fr_comm_start_sum_doubles(double *buf, int count, long *ticket, fr_error *err);
int fr_comm_finish_sum(long ticket, fr_error *err);
/* Start a sum and wait for it: where nothing is in flight the caller runs it
 * itself, with no hand-over to the communication thread (the sums a step
 * waits for at once: BatchNorm's statistics, "stop?"). */
int fr_comm_sum(float *buf, size_t count, bool bf16, int label, fr_error *err);
int fr_comm_sum_doubles(double *buf, int count, fr_error *err);
/* How many sums a waiting thread has run itself (for tests). */
long fr_comm_sums_run_by_waiters(void);
void fr_allreduce_quiesce(void);
/* Start the communication thread (fr_comm_init does, before any thread is
 * pinned, so it may run on any of the process's CPUs) and stop it
 * (fr_comm_finalize). */
int fr_allreduce_start(fr_error *err);
void fr_allreduce_shutdown(void);
/* Whether the ranks' communication threads fit this machine's CPUs: at most
 * one per CPU, so real-time ones never wait for each other (comm.c; with
 * how many ranks share this rank's CPUs and how many CPUs those are). */
bool fr_comm_thread_may_be_realtime(int *sharing, int *cpus);
#ifdef FR_HAVE_MPI_TYPES
/* For allreduce.c: the communicator the gradients use, and a timed wait. */
MPI_Comm fr_comm_gradients(void);
int fr_comm_wait(MPI_Request *request, const char *what, int peer, fr_error *err);
int fr_comm_wait_spinning(MPI_Request *request, const char *what, int peer, double spin_s,
                          fr_error *err);
#endif

/* float32 -> bfloat16, rounding to nearest even (NaN stays NaN), and back.
 * Both results are formed and one selected, without a branch, so that the
 * allreduce's loops over a bucket vectorize. */
static inline uint16_t fr_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
static inline float fr_from_bf16(uint16_t half) {
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* ------------------------------------------------------------ barrier */

/* barrier.c: where the `threads` threads of a parallel region wait for each
 * other, as `#pragma omp barrier` does but spinning only a few microseconds
 * before sleeping.  Zeroed memory is a ready barrier. */
typedef struct fr_barrier {
    atomic_uint arrived, generation;
} fr_barrier;
void fr_barrier_wait(fr_barrier *barrier, int threads);

/* ------------------------------------------------------------ trace */

/* trace.c: Chrome trace events of the step (see fr_trace_start in frost.h).
 * Slots 0..threads-1 are the worker threads, fr_trace_comm_slot() the
 * communication thread's.  fr_trace_add records [begin_s, now). */
bool fr_trace_on(void);
double fr_trace_now(void);
int fr_trace_comm_slot(void);
void fr_trace_set_step(long step);
void fr_trace_add(int slot, const char *name, const char *what, int index, double begin_s,
                  size_t bytes);
/* The same for an event of a given step (the communication thread's sums
 * finish during the next step); fr_trace_step is the step being recorded. */
void fr_trace_add_at(long step, int slot, const char *name, const char *what, int index,
                     double begin_s, size_t bytes);
long fr_trace_step(void);

/* ------------------------------------------------------------ files */

/* fileio.c: the whole regular file at PATH, refused when larger than `limit`
 * bytes, into one FR_ALIGN-aligned fr_alloc'd buffer (release it with
 * fr_free) followed by `spare` zero bytes (a NUL after text, or room to
 * move the contents); *size is what was read, less than the file's size if it
 * shrank meanwhile (parsers check their sizes).  Every whole-file read goes
 * through here. */
int fr_read_file(const char *path, size_t limit, size_t spare, unsigned char **out,
                 size_t *size, fr_error *err);
/* fileio.c: write PATH.tmp.PID with write_contents, sync it, rename it over
 * PATH, sync the directory; on failure PATH is untouched. */
int fr_write_atomic(const char *path, bool (*write_contents)(FILE *stream, void *context),
                    void *context, fr_error *err);
int fr_write_file_atomic(const char *path, const void *data, size_t length, fr_error *err);
/* tensorboard.c's encoding, for the tests: CRC-32C (Castagnoli) of `len`
 * bytes continuing `crc` (0 to start); TFRecord's mask of a CRC; `value` as a
 * protobuf varint into `out` (room for 10 bytes), returning its length. */
uint32_t fr_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t fr_crc32c_mask(uint32_t crc);
size_t fr_varint_encode(uint64_t value, unsigned char *out);
/* Rank 0's values to every rank. */
int fr_comm_broadcast_floats(float *buf, size_t count, fr_error *err);
/* Collective: among the ranks on this machine (the same kernel: network
 * namespaces and containers of one host count as one machine) whose `key`
 * bytes equal ours, our position (*index) and how many there are (*count). */
int fr_comm_node_peers(const void *key, size_t len, int *index, int *count, fr_error *err);

#endif /* FROST_INTERNAL_H */
