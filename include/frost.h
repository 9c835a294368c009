/*
 * frost.h - the whole public API of libfrost.
 *
 * frost trains small convolutional and fully connected networks data-parallel
 * over OpenMP threads and MPI ranks, with part of the network frozen the way a
 * PyTorch user sets requires_grad = False.  Frozen parameters get no gradient
 * buffer, no optimizer state and no backward work, and the gradient allreduce
 * carries the trainable parameters only.
 *
 * Conventions
 *   - Every name is prefixed fr_.  Objects are opaque and created/freed in pairs.
 *   - Functions that can fail return FR_OK (0) or a negative fr_status and,
 *     when `err` is not NULL, fill it with a one-line message that names the
 *     file and the problem.  The library never exits and never prints.
 *   - Parameter names, layouts and initialisation follow PyTorch:
 *     `<layer>.weight`, `<layer>.bias`; Linear weight [out, in]; Conv2d weight
 *     [out, in, kh, kw]; activations NCHW.
 */
#ifndef FROST_H
#define FROST_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FR_VERSION "0.1.0"

/* ---------------------------------------------------------------- errors */

typedef enum fr_status {
    FR_OK = 0,
    FR_EINVAL = -1,      /* bad argument or option value */
    FR_ENOMEM = -2,      /* allocation failed */
    FR_EIO = -3,         /* a file could not be opened, read or written */
    FR_EFORMAT = -4,     /* a file's contents are malformed */
    FR_ESHAPE = -5,      /* shapes do not fit together */
    FR_ENOMATCH = -6,    /* a freeze pattern matched no parameter */
    FR_ECOMM = -7,       /* ranks disagree or the communicator failed */
    FR_ENONFINITE = -8,  /* a loss or gradient became NaN or Inf */
    FR_EINTERRUPTED = -9, /* stopped by a signal */
    FR_ECOMMLOST = -10   /* a rank or its link stopped answering (end the job: fr_comm_abort) */
} fr_status;

#define FR_ERROR_LEN 512

/* A one-line, human-readable description of the last failure. */
typedef struct fr_error {
    int status;
    char msg[FR_ERROR_LEN];
} fr_error;

/* Fill `err` (if not NULL) with a formatted message; returns `status`. */
int fr_fail(fr_error *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Put "<formatted>" in front of the message already in `err`. */
void fr_error_prefix(fr_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* --------------------------------------------------------------- models */

typedef struct fr_model fr_model;
typedef struct fr_param fr_param;

#define FR_MAX_DIMS 4

/* What a model's input, a dataset's samples and its targets hold. */
typedef enum fr_dtype {
    FR_F32 = 0, /* float32: images, features, MSE targets */
    FR_I32 = 1  /* int32: token ids, class ids (-100: ignored, as PyTorch's ignore_index) */
} fr_dtype;

typedef enum fr_loss_kind {
    FR_CROSS_ENTROPY = 0, /* targets are int32 class indices: one per sample, or one per
                             position for an output [T, K] (FR_IGNORE_INDEX there ignored) */
    FR_MSE = 1            /* targets are floats, one per output */
} fr_loss_kind;

/* A per-position target that counts for nothing (PyTorch's ignore_index). */
#define FR_IGNORE_INDEX (-100)

/*
 * The sample contract: a sample's shape is N-dimensional (at most
 * FR_MAX_DIMS), its last dimension the features.  An image is [C, H, W]
 * floats, a vector [F], a token sequence [T] of int32 ids whose activations
 * are [T, C]; linear, layernorm and gelu act on every position's row.
 */
/* An empty model whose samples are `channels x height x width` floats; NULL
 * when a dimension is not positive or memory runs out. */
fr_model *fr_model_new(int channels, int height, int width);
/* An empty model whose samples have `ndim` dimensions `dims` of `dtype`
 * (FR_I32: token ids, read by an embedding first); NULL as above. */
fr_model *fr_model_new_shape(fr_dtype dtype, int ndim, const int *dims);
void fr_model_free(fr_model *model);

/*
 * Layers are appended in order.  `name` may be NULL: the layer is then named by
 * its index in the model, as nn.Sequential does ("0.weight").  Shapes are checked
 * against the layer it reads (the previous one, see the residual blocks below)
 * when the layer is added; a mismatch names both layers and both shapes.
 */
int fr_model_add_linear(fr_model *model, const char *name, int in_features,
                        int out_features, fr_error *err);
int fr_model_add_conv2d(fr_model *model, const char *name, int in_channels,
                        int out_channels, int kernel, int stride, int padding,
                        fr_error *err);
int fr_model_add_relu(fr_model *model, const char *name, fr_error *err);
int fr_model_add_maxpool2d(fr_model *model, const char *name, int kernel,
                           int stride, fr_error *err);
int fr_model_add_flatten(fr_model *model, const char *name, fr_error *err);

/*
 * A residual block: output = body(x) + shortcut(x).  After begin_residual the
 * layers added are the body, reading the block's input x; after
 * begin_shortcut (optional) they are the shortcut, reading x too; without one
 * the shortcut is the identity.  end_residual checks that both give the same
 * shape (a mismatch names both) and adds the sum, a layer named as the
 * block.  Inside a block every name gets the block's name and a dot in front
 * (`layer1.0` + `conv1` -> `layer1.0.conv1.weight`, torchvision's names);
 * blocks nest.  A model with a block still open cannot be trained.  With
 * name NULL the block is anonymous: its layers are named as the enclosing
 * block's are.
 */
int fr_model_begin_residual(fr_model *model, const char *name, fr_error *err);
/* A block that only names its layers (a Hugging Face module such as GPT-2's
 * `h.0`): no join; a residual block inside it without a name of its own
 * (fr_model_begin_residual with NULL) names its layers as the block does and
 * its join by its index ("h.0.5"). */
int fr_model_begin_block(fr_model *model, const char *name, fr_error *err);
int fr_model_end_block(fr_model *model, fr_error *err);
int fr_model_begin_shortcut(fr_model *model, fr_error *err);
int fr_model_end_residual(fr_model *model, fr_error *err);

/*
 * Parse a model description (DESIGN.md): one layer per line or `;` between
 * layers, `#` comments, optional `input C H W`.  `source` names the text in
 * error messages ("model.txt", "--model").  Without an input line the input is
 * C x 28 x 28 (C its in_channels) when the first layer is a convolution and
 * the first linear layer's in_features otherwise.
 */
int fr_model_parse(const char *text, const char *source, fr_model **out,
                   fr_error *err);
/*
 * GPT-2 from a Hugging Face config.json (model_type "gpt2"): Hugging Face's
 * parameter names (wte.weight, h.0.attn.c_attn.weight, ...), Conv1D weights
 * [in, out], the head tied to wte unless tie_word_embeddings is false; the
 * input is seq_len token ids (0: n_positions).  Its model.safetensors loads
 * with fr_model_load_weights.  A config.json path given to fr_model_load
 * builds it too.
 */
int fr_model_load_gpt2(const char *path, int seq_len, fr_model **out, fr_error *err);
/* `arg` is a path to a model file, or an inline description. */
int fr_model_load(const char *arg, fr_model **out, fr_error *err);

/* Values in one input sample (token ids for a model of tokens). */
int fr_model_input_numel(const fr_model *model);
/* The input's shape as channels x height x width (any other shape is its
 * element count x 1 x 1). */
void fr_model_input_shape(const fr_model *model, int *channels, int *height, int *width);
/* The input's and one sample's output's dimensions (room for FR_MAX_DIMS);
 * returns how many there are. */
int fr_model_input_dims(const fr_model *model, int *dims);
int fr_model_output_dims(const fr_model *model, int *dims);
fr_dtype fr_model_input_dtype(const fr_model *model);
/* For a model of token ids: how many ids its first layer (an embedding)
 * takes, its vocabulary; 0 for other models. */
int fr_model_vocab_size(const fr_model *model);
/* What a sample's targets are for this model's output under `loss`: how many
 * (cross-entropy: 1, or one per position of an output [T, K]) and over how
 * many classes (K). */
int fr_model_targets_per_sample(const fr_model *model, fr_loss_kind loss);
int fr_model_class_count(const fr_model *model);
int fr_model_output_numel(const fr_model *model);
int fr_model_layer_count(const fr_model *model);
const char *fr_model_layer_name(const fr_model *model, int layer);
const char *fr_model_layer_kind(const fr_model *model, int layer);
/* One line describing the layer and its output shape, e.g. "conv1 conv2d(1, 32, 3) -> 32x26x26". */
void fr_model_layer_describe(const fr_model *model, int layer, char *buf, size_t len);

/*
 * Tie parameter `name` (a layer's, "lm_head.weight") to parameter `to`
 * ("wte.weight"), as GPT-2 ties its head to its token embedding: the layer
 * then uses `to` itself, `name` is no longer a parameter (named_parameters()
 * lists a tied weight once, under its first name), their gradients add up,
 * and freezing either freezes both.  Same shape; before the parameters get
 * values (fr_model_init, loading); only kinds whose backward can add into a
 * gradient (linear, embedding, conv1d) share.
 */
int fr_model_tie(fr_model *model, const char *name, const char *to, fr_error *err);
/* The names parameter `index` also has in layers tied to it ("lm_head.weight"),
 * comma-separated into buf; how many there are. */
int fr_model_tied_names(const fr_model *model, size_t index, char *buf, size_t len);

/* PyTorch's default initialisation from a seeded generator.  Fails only
 * when the parameter arena cannot be allocated. */
int fr_model_init(fr_model *model, uint64_t seed, fr_error *err);

/* Parameters, in declaration order (as named_parameters() lists them). */
size_t fr_model_param_count(const fr_model *model);
fr_param *fr_model_param(fr_model *model, size_t index);
fr_param *fr_model_find_param(fr_model *model, const char *name);
size_t fr_model_numel(const fr_model *model);           /* all parameters */
size_t fr_model_trainable_numel(const fr_model *model); /* requires_grad ones */
/* Bytes holding the parameters' values and the buffers (batchnorm2d's). */
size_t fr_model_weight_bytes(const fr_model *model);

/* A parameter's name ("fc1.weight"), rank, size of dimension `axis` (0 past
 * the rank), element count, float32 values (in the model's arena; see
 * fr_trainer_step about updates in flight) and requires_grad flag. */
const char *fr_param_name(const fr_param *param);
int fr_param_ndim(const fr_param *param);
int fr_param_dim(const fr_param *param, int axis);
size_t fr_param_numel(const fr_param *param);
float *fr_param_data(fr_param *param);
bool fr_param_requires_grad(const fr_param *param);
void fr_param_set_requires_grad(fr_param *param, bool requires_grad);
/* "[32, 1, 3, 3]" */
void fr_param_shape_string(const fr_param *param, char *buf, size_t len);

/* Buffers: state that is not a parameter (batchnorm2d's running_mean and
 * running_var, float [C], and num_batches_tracked, int64 []), in declaration
 * order, saved and loaded with the weights under these names. */
size_t fr_model_buffer_count(const fr_model *model);
const char *fr_model_buffer_name(const fr_model *model, size_t index);
/* The data of the buffer called `name`: floats (NULL if it holds int64) or
 * int64 values (NULL if it holds floats); NULL if there is none. */
float *fr_model_buffer_floats(fr_model *model, const char *name);
int64_t *fr_model_buffer_i64(fr_model *model, const char *name);
/* numel, ndim and "[64]" / "[]" of buffer `index`. */
size_t fr_model_buffer_numel(const fr_model *model, size_t index);
void fr_model_buffer_shape_string(const fr_model *model, size_t index, char *buf, size_t len);

/* ------------------------------------------------------------- freezing */

/* requires_grad = False (True) on every parameter. */
void fr_model_freeze_all(fr_model *model);
void fr_model_unfreeze_all(fr_model *model);
/* All parameters of the layer with that name; FR_ENOMATCH if there is none. */
int fr_model_freeze_layer(fr_model *model, const char *layer, fr_error *err);
/*
 * `pattern` is a shell glob over parameter names (`conv*`, `*.bias`, `*`) or a
 * bare layer name (`fc1`, meaning all of that layer's parameters).  A pattern
 * that matches nothing is an error (FR_ENOMATCH).
 */
int fr_model_freeze(fr_model *model, const char *pattern, fr_error *err);
int fr_model_unfreeze(fr_model *model, const char *pattern, fr_error *err);

/* A 64-bit checksum of the bits of every frozen parameter, in order, and of
 * the buffers of every layer whose parameters are all frozen (a frozen
 * batchnorm2d runs in eval mode: its statistics never change). */
uint64_t fr_model_frozen_checksum(const fr_model *model);
/* A checksum of the bits of all parameters. */
uint64_t fr_model_checksum(const fr_model *model);
/* A checksum of one parameter's bits. */
uint64_t fr_param_checksum(const fr_param *param);

/* ------------------------------------------------------------- weights */

/* Read every parameter from a safetensors file; the first tensor that is
 * missing or has another shape or dtype is named in the error. */
int fr_model_load_weights(fr_model *model, const char *path, fr_error *err);
/* The same, but the parameters the `fresh_count` patterns match (globs or
 * layer names, as fr_model_freeze takes them; each must match) keep the
 * values they have (a new head's seeded initialisation) and may be missing
 * from the file, as may their layers' buffers: PyTorch's
 * load_state_dict(strict=False) for the layers a fine-tune adds. */
int fr_model_load_weights_except(fr_model *model, const char *path, const char *const *fresh,
                                 int fresh_count, fr_error *err);
/* Write all parameters (atomically: temporary file, fsync, rename). */
int fr_model_save_weights(const fr_model *model, const char *path, fr_error *err);

/* ------------------------------------------------------- LoRA adapters */

/*
 * A LoRA adapter beside a linear or conv1d layer's weight, with PEFT's
 * semantics: out = in · Wᵀ + b + scale · dropout(in) · Aᵀ · Bᵀ, A [rank, in]
 * initialised as kaiming_uniform_(a=√5), B [out, rank] zeros (so a fresh
 * adapter changes nothing), scale = alpha / rank, or alpha / √rank (rslora).
 * Its parameters are "<layer>.lora_A.weight" and "<layer>.lora_B.weight";
 * weights files leave them out, adapter files and checkpoints hold them.
 */
typedef struct fr_lora_config {
    int rank;       /* r, at least 1 */
    float alpha;    /* lora_alpha, positive */
    float dropout;  /* lora_dropout, in [0, 1) */
    bool rslora;    /* use_rslora */
} fr_lora_config;

/*
 * Adapters on every linear and conv1d layer `pattern` names: a glob over
 * layer names matching the whole name or, as PEFT's target_modules do, its
 * last dot-separated parts (`c_attn` names `h.0.attn.c_attn`), or a block's
 * name.  A pattern naming no such layer is an error (FR_ENOMATCH); a layer
 * with an adapter already keeps it (another rank or alpha is an error).  A
 * fresh adapter's A is drawn from `seed` (layer by layer in model order);
 * adapters start trainable.
 */
int fr_model_add_lora(fr_model *model, const char *pattern, const fr_lora_config *config,
                      uint64_t seed, fr_error *err);
/* Every parameter but the adapters' frozen: PEFT's start (only adapters
 * train); fr_model_unfreeze then trains chosen base parameters fully. */
void fr_model_freeze_base(fr_model *model);
/* Whether the parameter is an adapter's (lora_A or lora_B). */
bool fr_param_is_adapter(const fr_param *param);
/* How many layers have an adapter. */
int fr_model_adapter_count(const fr_model *model);
/*
 * A PEFT adapter directory (created if missing): adapter_model.safetensors
 * with "base_model.model.<module>.lora_A.weight" / ".lora_B.weight" (module
 * names as Hugging Face's model has them: "transformer.h.0.attn.c_attn" for a
 * GPT-2 from a config.json) and adapter_config.json.  Every adapter must
 * share rank, alpha, dropout and rslora, and the adapted layers must all be
 * conv1d or all linear (PEFT's one fan_in_fan_out).  Both files are written
 * atomically.
 */
int fr_model_save_adapter(const fr_model *model, const char *dir, fr_error *err);
/*
 * Reads a PEFT adapter directory into the model: adds the adapters its
 * config names (or checks those already there) and copies their values.
 * Everything is checked before the model changes: peft_type LORA, bias
 * "none", a module the model lacks, a rank or shape other than the config's,
 * a tensor missing or left over: one line naming the file and the tensor.
 */
int fr_model_load_adapter(fr_model *model, const char *dir, fr_error *err);
/*
 * Merged weights: the weights file `weights` with each adapted weight W
 * replaced by W + scale · B · A (W [out, in], nn.Linear) or its transpose
 * (W [in, out], Conv1D: fan_in_fan_out), computed in double precision, every
 * other tensor as it is; written to `out` atomically.
 */
int fr_adapter_merge(const char *weights, const char *adapter_dir, const char *out,
                     fr_error *err);

/*
 * --frozen-dtype bf16: every frozen weight that a linear, conv1d or embedding
 * layer reads (in the FR_WEIGHT slot; biases and norms stay float32) is kept
 * in bfloat16, rounded to nearest even once, here, and its float32 copy is
 * given back: half its memory.  Those layers then multiply with it in bf16
 * with float32 accumulation (AVX512_BF16 where the CPU has it, else widened
 * to float32 block by block).  Trainable parameters, gradients and optimizer
 * state stay float32; a parameter unfrozen later gets float32 storage again
 * (from its bf16 values).  Weights files and checkpoints hold its values as
 * float32.  *converted: how many parameters (may be NULL).
 */
int fr_model_store_frozen_bf16(fr_model *model, int *converted, fr_error *err);
/* Whether the CPU runs bf16 products natively (AVX512_BF16). */
bool fr_bf16_supported(void);

/* ---------------------------------------------------------------- data */

typedef struct fr_dataset fr_dataset;

/* An IDX image file and its label file, raw or gzip'd. Pixels become [0, 1]. */
int fr_dataset_load_idx(const char *images_path, const char *labels_path,
                        fr_dataset **out, fr_error *err);
/* How a 4-D image array is laid out; a sample in frost is always C x H x W. */
typedef enum fr_layout {
    FR_LAYOUT_NCHW, /* (N, C, H, W): PyTorch's */
    FR_LAYOUT_NHWC  /* (N, H, W, C): TensorFlow's, PIL's, OpenCV's */
} fr_layout;
/*
 * NumPy .npy files (numpy.save; format 1.0, 2.0 or 3.0), raw or gzip'd.
 * Images x: shape (N, C, H, W) or (N, H, W, C) as `layout` says, (N, H, W)
 * (one channel) or (N, F) (F features: a sample [F]); dtype uint8
 * (p becomes p / 255, as IDX pixels do), float32 or float64 (taken as they
 * are; every value must be finite).  Labels y: shape (N,), any integer
 * dtype, values 0 or more.  Token data: x of int32, int64 or uint16 ids
 * shaped (N, T) with labels y (classification), or (N, T+1) with y_path
 * NULL (language modelling: inputs the first T, targets the last T).
 */
int fr_dataset_load_npy(const char *x_path, const char *y_path, fr_layout layout,
                        fr_dataset **out, fr_error *err);
/*
 * `dir` holds NumPy files train_x.npy, train_y.npy, test_x.npy, test_y.npy
 * (each may be NAME.gz instead; a directory with train_x.npy or test_x.npy
 * is read as NumPy data), else the IDX files train-images-idx3-ubyte[.gz],
 * train-labels-idx1-ubyte[.gz] and the t10k- pair; `train` picks which.
 * fr_dataset_load_dir reads 4-D NumPy images as NCHW.
 */
int fr_dataset_load_dir(const char *dir, bool train, fr_dataset **out,
                        fr_error *err);
int fr_dataset_load_dir_as(const char *dir, bool train, fr_layout layout,
                           fr_dataset **out, fr_error *err);
/* A dataset over copies of x (n x sample_numel floats) and class ids (0 or more). */
int fr_dataset_from_arrays(const float *x, const int32_t *labels, int n,
                           int channels, int height, int width,
                           fr_dataset **out, fr_error *err);
/* A dataset of n rows of `seq` token ids and their targets: one class id per
 * row (targets_per_sample 1) or one per token (seq: the next token, say;
 * FR_IGNORE_INDEX ignored). */
int fr_dataset_from_tokens(const int32_t *tokens, const int32_t *targets, int n, int seq,
                           int targets_per_sample, fr_dataset **out, fr_error *err);
void fr_dataset_free(fr_dataset *data);
int fr_dataset_size(const fr_dataset *data);
int fr_dataset_sample_numel(const fr_dataset *data);
/* One sample's shape, channels x height x width (any other shape is its
 * element count x 1 x 1); and its dimensions (room for FR_MAX_DIMS; returns
 * how many). */
void fr_dataset_sample_shape(const fr_dataset *data, int *channels, int *height,
                             int *width);
int fr_dataset_sample_dims(const fr_dataset *data, int *dims);
/* FR_F32 (images, features) or FR_I32 (token ids). */
fr_dtype fr_dataset_dtype(const fr_dataset *data);
/* The inputs: floats (NULL for token data) or token ids (NULL otherwise). */
const float *fr_dataset_images(const fr_dataset *data);
const int32_t *fr_dataset_tokens(const fr_dataset *data);
/* Targets: fr_dataset_targets_per_sample class ids per sample (1, or one per
 * position for language modelling). */
const int32_t *fr_dataset_labels(const fr_dataset *data);
int fr_dataset_targets_per_sample(const fr_dataset *data);
/* The largest token id (-1 for data without tokens). */
int fr_dataset_largest_token(const fr_dataset *data);
/* Bytes the dataset holds in memory (its images as floats and its labels). */
size_t fr_dataset_bytes(const fr_dataset *data);
/*
 * Per-channel normalisation, torchvision's Normalize: x = (x - mean[c]) /
 * std[c] in float32.  `count` pairs: 1 (for every channel) or one per
 * channel; every mean finite, every std finite and > 0.
 */
int fr_dataset_normalize(fr_dataset *data, const float *mean, const float *std,
                         int count, fr_error *err);
/* Move samples [keep, n) into a new dataset *rest, in order; `data` keeps
 * [0, keep).  Both parts must be non-empty. */
int fr_dataset_split(fr_dataset *data, int keep, fr_dataset **rest, fr_error *err);
/* Largest label + 1. */
int fr_dataset_class_count(const fr_dataset *data);
/* The files the dataset was read from ("" for fr_dataset_from_arrays). */
const char *fr_dataset_images_path(const fr_dataset *data);
const char *fr_dataset_labels_path(const fr_dataset *data);
/*
 * The order in which epoch `epoch` visits n samples: 0..n-1 without shuffling,
 * else a Fisher-Yates permutation that depends on (seed, epoch) only, so every
 * rank and every resumed run sees the same order.
 */
void fr_epoch_order(int *order, int n, uint64_t seed, long epoch, bool shuffle);

/* ------------------------------------------------------------ training */

typedef enum fr_optimizer_kind {
    FR_SGD = 0,
    FR_ADAM = 1,
    FR_ADAMW = 2
} fr_optimizer_kind;



/* How gradients travel between ranks: float32, or bfloat16 (half the bytes;
 * summed in float32 on arrival, the optimizer stays float32), as PyTorch
 * DDP's bf16_compress_hook does. */
typedef enum { FR_GRAD_F32 = 0, FR_GRAD_BF16 = 1 } fr_grad_dtype;

/*
 * A learning-rate schedule: the learning rate of step k (counted from 0) is a
 * pure function of k and the base learning rate, fr_lr_at, so a resumed run
 * needs only the step count.  Each matches torch.optim.lr_scheduler stepped
 * once per optimizer step (scheduler.step() after optimizer.step()):
 *   FR_LR_CONSTANT  no scheduler: the base learning rate
 *   FR_LR_STEP      StepLR(step_size, gamma): base * gamma^(k / step_size)
 *   FR_LR_COSINE    CosineAnnealingLR(T_max, eta_min):
 *                   eta_min + (base - eta_min) * (1 + cos(pi * k / T_max)) / 2
 *                   (past T_max it rises again, as torch's does)
 * With warmup_steps W > 0, step k < W has base * (k + 1) / W, and the
 * schedule above starts at step W with its own k = 0: torch's
 *   SequentialLR(opt, [LambdaLR(opt, lambda k: (k + 1) / W), SCHEDULE], milestones=[W])
 * (the same factors as LinearLR(opt, start_factor=1/W, total_iters=W-1)).
 * Every parameter follows the schedule from its own base learning rate
 * (fr_trainer_set_lr), as a torch scheduler treats each param group; eta_min
 * is the same for all of them, as in torch.  All zero: constant, no warmup.
 */
typedef enum fr_lr_schedule_kind {
    FR_LR_CONSTANT = 0,
    FR_LR_STEP = 1,
    FR_LR_COSINE = 2
} fr_lr_schedule_kind;

typedef struct fr_lr_schedule {
    fr_lr_schedule_kind kind;
    long step_size;    /* FR_LR_STEP: >= 1 */
    double gamma;      /* FR_LR_STEP: > 0 */
    long t_max;        /* FR_LR_COSINE: >= 1 */
    double eta_min;    /* FR_LR_COSINE: >= 0 */
    long warmup_steps; /* >= 0 */
} fr_lr_schedule;

/* The learning rate of step `step` (from 0) for base learning rate `base_lr`. */
double fr_lr_at(const fr_lr_schedule *schedule, double base_lr, long step);
/* FR_EINVAL naming the first value out of range. */
int fr_lr_schedule_check(const fr_lr_schedule *schedule, fr_error *err);

typedef struct fr_train_config {
    fr_optimizer_kind optimizer;
    fr_loss_kind loss;
    double lr;
    double momentum;     /* SGD */
    double dampening;    /* SGD */
    bool nesterov;       /* SGD */
    double weight_decay; /* SGD/Adam: added to the gradient; AdamW: decoupled */
    double beta1, beta2, eps; /* Adam/AdamW */
    int threads;         /* replicas in this process; 0: OMP_NUM_THREADS */
    int max_batch;       /* largest global batch that will be passed to a step */
    double bucket_mb;    /* allreduce bucket size under MPI; 0: 4 MB */
    fr_grad_dtype grad_dtype; /* how gradients travel between ranks */
    double cache_mb;     /* frozen-prefix feature cache budget: 0 a quarter
                            of RAM, < 0 off (fr_trainer_step_samples only) */
    uint64_t seed;       /* dropout's masks depend on it, the step and the
                            sample's row in the global batch only */
    bool sync_updates;   /* several ranks: apply each step's update before
                            fr_trainer_step returns instead of leaving it in
                            flight (slower; see fr_trainer_step) */
    fr_lr_schedule lr_schedule; /* the learning rate per step (zero: constant) */
    double clip_grad_norm; /* > 0: torch's clip_grad_norm_(trainable, max_norm,
                              norm_type=2) on the gradient averaged over the
                              global batch, before every update; 0: off.  On
                              several ranks the update is then applied within
                              its step (no update in flight) */
} fr_train_config;

/* PyTorch's defaults: SGD, lr 0.01, no momentum or weight decay, Adam betas
 * (0.9, 0.999), eps 1e-8; cross-entropy; threads 0 (OMP_NUM_THREADS);
 * max_batch 64 (set it to the largest global batch you will pass). */
void fr_train_config_default(fr_train_config *config);

typedef struct fr_trainer fr_trainer;

/*
 * A trainer owns the replicas (one per thread; per rank under MPI), their
 * gradient slabs and the optimizer state.  It sees the model's requires_grad
 * flags at each step and rebuilds its slab when they changed.
 */
int fr_trainer_new(fr_model *model, const fr_train_config *config,
                   fr_trainer **out, fr_error *err);
void fr_trainer_free(fr_trainer *trainer);

/* Apply the last step's update if it is still in flight (see
 * fr_trainer_step); FR_OK when there is none. */
int fr_trainer_sync(fr_trainer *trainer, fr_error *err);

/*
 * Stopping on a signal at a step every rank agrees on: the trainer reads
 * *flag (set by the caller's signal handler) when a step's loss is summed,
 * and from then fr_trainer_stop_requested is true on every rank, after the
 * same step.  It costs no communication of its own.
 */
void fr_trainer_watch_stop(fr_trainer *trainer, const volatile sig_atomic_t *flag);
bool fr_trainer_stop_requested(const fr_trainer *trainer);

/*
 * At the next step, check that every rank holds the same weights as that
 * step starts (every update applied): a checksum travels with the step's
 * loss totals, so it costs no communication of its own and does not wait
 * for an update in flight.  That step fails with FR_ECOMM when they differ.
 */
void fr_trainer_check_replicas(fr_trainer *trainer);

/*
 * One optimisation step on a global batch of `batch` samples: x is batch
 * inputs (floats, or int32 token ids for a model whose input is tokens);
 * targets are int32 class indices for cross-entropy (one per sample, or one
 * per position for an output [T, K], FR_IGNORE_INDEX ignored) or batch x
 * output_numel floats for MSE.  Under MPI every rank passes the same global
 * batch (it may leave the other ranks' rows of x unfilled, fr_trainer_rank_rows
 * says which rows this rank reads, except for token ids, which are checked
 * against the vocabulary on every row; every row's targets must be there:
 * the loss is the mean over the targets of the whole batch that are not
 * ignored, which every rank counts).  `loss` receives that mean, `correct`
 * (may be NULL) how many argmax predictions were right (fr_trainer_last_count
 * says out of how many).  With every parameter frozen a step only runs
 * forward and reports the loss (where PyTorch's backward would raise).
 *
 * On several ranks a step returns once its loss is known, with its update
 * still in flight: the gradient sums finish on the communication thread
 * while the caller prepares the next batch, and the next step's forward
 * applies each piece just before the first layer that needs it.  Whatever
 * reads or writes the parameters through the model (fr_model_param,
 * fr_model_find_param, fr_model_checksum, fr_model_save_weights, ...) and
 * every other trainer call apply the update first; a pointer from
 * fr_param_data kept across steps needs fr_trainer_sync.
 */
int fr_trainer_step(fr_trainer *trainer, const void *x, const void *targets,
                    int batch, double *loss, long *correct, fr_error *err);
/*
 * The same step on samples ids[0..batch) of `data`, which the replicas gather
 * themselves.  When every layer before the first trainable one is frozen, the
 * prefix's output for a sample never changes: at the first such step the
 * trainer computes it for the dataset's first samples (as many as
 * config.cache_mb holds) in fixed chunks, and from then on runs only the
 * trainable suffix for them.  The result equals training without the cache to
 * float rounding, and does not depend on when the cache was filled, so a
 * resumed run repeats the uninterrupted one exactly.  The prefix's weights
 * must not be changed while the cache is in use.
 */
int fr_trainer_step_samples(fr_trainer *trainer, const fr_dataset *data,
                            const int *ids, int batch, double *loss,
                            long *correct, fr_error *err);
/* Bytes the feature cache holds now (0 when off or nothing cacheable). */
size_t fr_trainer_cache_bytes(const fr_trainer *trainer);
/* The layer whose outputs the feature cache holds now (the frozen prefix's
 * last), or -1 when it holds none. */
int fr_trainer_cache_layer(const fr_trainer *trainer);
/* How many of the dataset's samples the cache holds (the first ones), and in
 * *wanted / *wanted_bytes (either may be NULL) how many samples and bytes
 * caching the whole dataset would take (0 when its prefix cannot be cached:
 * no frozen prefix, a cut inside a residual block, the cache off). */
int fr_trainer_cache_samples(const fr_trainer *trainer, int *wanted, size_t *wanted_bytes);
/* Forward only: the model's output for `batch` samples x into out (batch x
 * output numel floats: logits), in evaluation mode; on several ranks each
 * fills the rows fr_trainer_rank_rows gives it. */
int fr_trainer_predict(fr_trainer *trainer, const void *x, int batch, float *out,
                       fr_error *err);
/* Forward only: mean loss and correct count over `batch` samples. */
int fr_trainer_evaluate(fr_trainer *trainer, const void *x,
                        const void *targets, int batch, double *loss,
                        long *correct, fr_error *err);
/*
 * Per-parameter learning rates, torch's param groups by name: every parameter
 * `pattern` matches (a glob or a layer name, as fr_model_freeze matches;
 * frozen ones too, for when they are unfrozen) gets base learning rate `lr`
 * instead of config.lr.  Calls apply in order: where patterns overlap, the
 * last call wins.  FR_ENOMATCH when the pattern matches nothing.  The
 * schedule (config.lr_schedule) acts on each parameter's base rate.
 */
int fr_trainer_set_lr(fr_trainer *trainer, const char *pattern, double lr, fr_error *err);
/* The learning rate step `step` (from 0) applies to parameter `param`
 * (-1: to a parameter without its own, config.lr through the schedule). */
double fr_trainer_lr(const fr_trainer *trainer, int param, long step);
/* With config.clip_grad_norm: the global L2 norm of the last step's averaged
 * gradient before clipping (what torch's clip_grad_norm_ returns); NAN before
 * the first step or without clipping. */
double fr_trainer_grad_norm(const fr_trainer *trainer);

/* Rows [*first, *first + *count) of a global batch are read by this rank. */
void fr_trainer_rank_rows(const fr_trainer *trainer, int batch, int *first,
                          int *count);

/* Optimizer steps taken (restored with a checkpoint). */
long fr_trainer_steps_done(const fr_trainer *trainer);
/* How many targets the last step's or evaluation's mean loss and correct
 * count were over: the batch, or its positions not ignored. */
long fr_trainer_last_count(const fr_trainer *trainer);
int fr_trainer_threads(const fr_trainer *trainer);
/* Bytes of gradient (slab) and optimizer-state memory allocated now.  The
 * gradients: one whole slab (4 x trainable parameters, rounded up to a cache
 * line), and per further thread room for the gradients it sums at the end of
 * backward (biases, small weights) and for the largest weight it cannot split
 * by rows (a large conv2d's); linear weights take no per-thread room. */
size_t fr_trainer_gradient_bytes(const fr_trainer *trainer);
size_t fr_trainer_optimizer_bytes(const fr_trainer *trainer);
/* Bytes of the threads' workspaces: activations kept for backward,
 * activation gradients, layer scratch and the gathered input rows. */
size_t fr_trainer_activation_bytes(const fr_trainer *trainer);
/* Bytes this rank puts into one gradient allreduce: 4 x trainable parameters,
 * 2 x with FR_GRAD_BF16 (as planned for the current frozen set).  The ring
 * that sums them sends 2(n-1)/n of that from each of n ranks: exactly that
 * many bytes on 2 ranks. */
size_t fr_trainer_allreduce_bytes(const fr_trainer *trainer);
/* Bytes this rank has actually passed to the gradient allreduce so far (0 on
 * a single rank, where no allreduce runs). */
size_t fr_trainer_bytes_sent(const fr_trainer *trainer);
/* How many times the backward pass of `layer` ran (summed over replicas). */
long fr_trainer_layer_backward_calls(const fr_trainer *trainer, int layer);

/* ---------------------------------------------------------- checkpoints */

/* A metadata entry: both strings are copied when written. */
typedef struct fr_meta {
    const char *key;
    const char *value;
} fr_meta;

/*
 * Write a training checkpoint: every parameter and buffer, the optimizer state of the
 * trainable ones ("<name>.momentum", "<name>.exp_avg", "<name>.exp_avg_sq"),
 * and in __metadata__ the step, the optimizer, the per-parameter step counts,
 * the frozen set, the learning rates and their schedule, plus the caller's
 * entries.  Atomic (temporary file,
 * fsync, rename); refused with FR_ENONFINITE if any value is NaN or Inf, so a
 * good checkpoint is never replaced by a broken one.  A checkpoint is also a
 * weights file for fr_model_load_weights.
 */
int fr_trainer_save_checkpoint(fr_trainer *trainer, const char *path,
                               const fr_meta *extra, int extra_count,
                               fr_error *err);

/* A checkpoint read into memory (refused when it is not one, naming the
 * file); closed with fr_checkpoint_close; fr_checkpoint_get reads its
 * metadata, fr_trainer_restore applies it. */
typedef struct fr_checkpoint fr_checkpoint;
int fr_checkpoint_open(const char *path, fr_checkpoint **out, fr_error *err);
void fr_checkpoint_close(fr_checkpoint *checkpoint);
/* A metadata value, or NULL. */
const char *fr_checkpoint_get(const fr_checkpoint *checkpoint, const char *key);
/* What fr_trainer_restore may find changed, bits of its `allow` (true is
 * FR_RESTORE_FREEZE_CHANGE). */
enum {
    FR_RESTORE_FREEZE_CHANGE = 1, /* the frozen set */
    FR_RESTORE_LR_CHANGE = 2      /* the learning rates and their schedule */
};
/*
 * Restore weights, optimizer state, step counts and the step counter.  The
 * checkpoint must come from the same model and optimizer; from the same
 * frozen set unless `allow` has FR_RESTORE_FREEZE_CHANGE (staged fine-tuning:
 * parameters unfrozen since start with fresh state); and with the same
 * learning rates (config.lr, the per-parameter ones, config.lr_schedule)
 * unless it has FR_RESTORE_LR_CHANGE (the run then goes on from the
 * checkpoint's step with this trainer's).  The schedule's position is the
 * step counter.
 */
int fr_trainer_restore(fr_trainer *trainer, const fr_checkpoint *checkpoint,
                       unsigned allow, fr_error *err);

/* FR_ENONFINITE naming the first parameter holding a NaN or Inf. */
int fr_model_check_finite(const fr_model *model, fr_error *err);

/* ------------------------------------------------------- ranks (MPI) */

/*
 * frost's communicator hides MPI.  Built with --without-mpi these calls are a
 * single process (rank 0 of 1), and fr_comm_init refuses to run when it sees
 * it was started by mpirun with several ranks.  The calling thread talks to
 * MPI, and during a training step frost's own communication thread runs the
 * gradient allreduce (MPI_THREAD_SERIALIZED: never both at once).
 */
int fr_comm_init(int *argc, char ***argv, fr_error *err);
void fr_comm_finalize(void);
bool fr_comm_have_mpi(void);
int fr_comm_rank(void);
int fr_comm_size(void);
/*
 * Collective: every rank passes its own status (and message in err).  If any
 * rank failed, every rank returns the status and message of the lowest failing
 * rank, so an error on one rank ends the whole job instead of hanging it.
 */
int fr_comm_agree(int status, fr_error *err);
/* Collective: a value that differs between ranks fails on every rank with
 * "ranks disagree on WHAT (rank 0: ..., rank N: ...)". */
int fr_comm_check_same(uint64_t value, const char *what, fr_error *err);
/* Collective: true on every rank if `flag` is true on any. */
bool fr_comm_any(bool flag);


/* Collective: every rank takes rank 0's parameter values. */
int fr_comm_broadcast_model(fr_model *model, fr_error *err);

/*
 * A rank that waits this long for another inside an MPI call (a rank or its
 * link is gone) gives up: the call fails with FR_ECOMM naming the rank it
 * waited for, and the caller should end the job with fr_comm_abort.  Default
 * 120 s; it must exceed the longest pause one rank makes while the others
 * wait (rank 0 writing a checkpoint, say).
 */
void fr_comm_set_timeout(double seconds);
/* End this process now (_exit, without MPI_Finalize), after a communication
 * failure: the launcher (mpirun, srun) then ends the other ranks.  MPI_Abort
 * would wait to reach every node, which hangs when a node's link is down. */
void fr_comm_abort(int exit_code);

/* ------------------------------------------------------------ tracing */

/*
 * Record a timeline of training from now on: each layer's forward and
 * backward on each thread, the thread reductions and optimizer updates, and
 * each bucket's gradient allreduce on the communication thread, at most
 * `events_per_thread` events per thread (later ones are dropped and the file
 * says so).  `threads` is the trainer's thread count.  Collective.
 */
int fr_trace_start(int threads, size_t events_per_thread, fr_error *err);
/* Collective: write what was recorded as a Chrome trace-event JSON file
 * (Perfetto, chrome://tracing), one process per rank, from rank 0. */
int fr_trace_write(const char *path, fr_error *err);
void fr_trace_stop(void);

/* ---------------------------------------------------------- TensorBoard */

/*
 * A TensorBoard event file: `tensorboard --logdir DIR` plots the scalars
 * as they come.  fr_tb_open makes DIR if it is missing (not its parents) and
 * starts a new file in it, DIR/events.out.tfevents.<unix time>.<hostname>
 * (TensorFlow's name; never one that exists), beginning with the file-version
 * record.  fr_tb_start marks the run's first step.  Scalars are gathered with fr_tb_scalar and written, as one event
 * at a step, by fr_tb_write, which flushes it so that a running TensorBoard
 * sees it.  Each run (a resumed one too) writes its own file; the files of a
 * directory make one run in TensorBoard.  Write from one process only (rank
 * 0 under MPI).
 *
 *     fr_tb_scalar(tb, "train/loss", loss);
 *     fr_tb_scalar(tb, "train/accuracy", accuracy);
 *     fr_tb_write(tb, step, &err);
 *
 * Errors stick: after the first failure (a full disk, say) nothing more is
 * written, and fr_tb_write, fr_tb_start and fr_tb_close return that
 * failure, naming the file.  `tb` may be NULL in every call but fr_tb_open:
 * nothing happens, so a program writes its scalars unconditionally and only
 * the process that opened a file writes one.
 */
typedef struct fr_tensorboard fr_tensorboard;
int fr_tb_open(const char *dir, fr_tensorboard **out, fr_error *err);
/* The event file's path (NULL for NULL). */
const char *fr_tb_path(const fr_tensorboard *tb);
/* Add `value` (stored as a float) under `tag` to the next event. */
void fr_tb_scalar(fr_tensorboard *tb, const char *tag, double value);
/* Write the scalars added since the last write as one event at `step` and
 * flush it; nothing when there are none. */
int fr_tb_write(fr_tensorboard *tb, long step, fr_error *err);
/* Mark that the run starts at `step`, its first step (1 when it starts
 * afresh, N+1 resumed from a checkpoint of step N); call it once, before the
 * first fr_tb_write.  TensorBoard takes the first start it reads in a
 * directory as the beginning and each later one as a restart: it drops the
 * points it read at `step` and later (what a stopped run logged after its
 * checkpoint, or all of an earlier run that started afresh in the same
 * directory). */
int fr_tb_start(fr_tensorboard *tb, long step, fr_error *err);
/* Close the file (NULL is allowed); returns the first failure, if any. */
int fr_tb_close(fr_tensorboard *tb, fr_error *err);

/* ---------------------------------------------------------------- files */

/*
 * A file written whole or not at all, as frost writes weights, checkpoints
 * and traces: what is printed goes to PATH.tmp.PID beside PATH; commit syncs
 * it, renames it over PATH and syncs the directory, so a crash or a full disk
 * leaves the old file or the new one, never part of one; discard removes it.
 * For output that grows while a program runs (the frost command's metrics).
 * A failed write is reported by commit, which releases the file either way.
 */
typedef struct fr_atomic_file fr_atomic_file;
/* Open PATH.tmp.PID beside PATH, print to it, then commit or discard it. */
int fr_atomic_open(const char *path, fr_atomic_file **out, fr_error *err);
void fr_atomic_printf(fr_atomic_file *file, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int fr_atomic_commit(fr_atomic_file *file, fr_error *err);
void fr_atomic_discard(fr_atomic_file *file);

/* ------------------------------------------------------ thread placement */


/*
 * Pin the trainer's threads, one CPU each, to CPUs this process may run on
 * (its affinity mask as mpirun, srun or taskset left it, read at the first
 * call); the ranks of one node whose masks are the same take consecutive
 * slices of it, so unbound ranks do not pile onto the same CPUs.  Nothing is
 * pinned when OMP_PROC_BIND, OMP_PLACES or GOMP_CPU_AFFINITY is set (the user
 * placed the threads), when the mask has fewer CPUs than the threads of the
 * ranks sharing it (*oversubscribed is then set: they will take turns on
 * them), or when a process that shares its mask with no other rank has more
 * CPUs than threads (other processes may have the same mask).  `report` gets one line, e.g.
 * "pinned to CPUs 0-3" or "not pinned: OMP_PROC_BIND is set".  Collective
 * under MPI: every rank calls it.
 */
int fr_trainer_pin_threads(fr_trainer *trainer, char *report, size_t report_len,
                           bool *oversubscribed, fr_error *err);

/* Bytes currently allocated by libfrost (all objects). */
size_t fr_allocated_bytes(void);

#ifdef __cplusplus
}
#endif

#endif /* FROST_H */
