/*
 * trainer.h - what the trainer's files share: the trainer itself, its plan
 * (the gradient slab's layout, buckets and pieces, each replica's buffers)
 * and the feature cache.
 *
 *   plan.c    lays the plan out for the current frozen set, and makes and
 *             frees trainers;
 *   train.c   the training step, DESIGN.md's data path top to bottom, and
 *             evaluation;
 *   cache.c   the frozen-prefix feature cache.
 */
#ifndef FROST_TRAINER_H
#define FROST_TRAINER_H

#include "internal.h"

#include <signal.h>

/* Chunks of the slab that threads reduce are whole cache lines. */
#define SLAB_CHUNK_ALIGN 16

/* A weight gradient of at least this many floats that cannot be split by
 * rows (conv2d's) is staged: summed into replica 0's slab as soon as the
 * layer's backward is done, so the other threads hold a copy of the largest
 * such weight only, not one of each. */
#define STAGE_GRAD_FLOATS (64 * 1024)

/* One trainable parameter's place in the slab, and how the threads' shares
 * of its gradient are summed into replica 0's slab (the whole slab: the one
 * the ranks sum and the optimizer reads).  The other replicas have a
 * compact slab holding only the segments summed at the end of backward. */
typedef struct slab_segment {
    size_t slab_offset;
    size_t numel;
    int param;
    bool split;  /* computed by rows across threads, straight into replica 0's slab */
    bool staged; /* each other replica's copy in its stage, summed after the layer */
    /* Otherwise: summed at the end of backward, from own_offset in the other
     * replicas' compact slabs. */
    size_t own_offset;
} slab_segment;

/* A piece of the slab that one nonblocking allreduce carries: complete once
 * backward has passed layer `ready_after_layer`. */
typedef struct bucket {
    size_t begin, end;
    int ready_after_layer;
    int first_piece, pieces; /* its pieces, in slab order */
} bucket;

#define DEFAULT_BUCKET_MB 4.0

/* A bucket of at least this many floats is sent as two pieces (a head
 * during backward, the tail after the last bucket); smaller ones whole. */
#define SPLIT_BUCKET_FLOATS (128 * 1024)

/* A step whose threads have fewer rows each than this splits layers with
 * feature operations (forward_rows, input_grad_cols: linear) by features over
 * the rank's whole batch instead of by rows: each thread computes a block of
 * the output (input) features for every row, one GEMM of B x (OUT/T) x IN,
 * where its own rows alone (B/T x OUT x IN) would reread the whole weight for
 * a few rows (bench/thread_shapes.c: 66-80% of the sgemm rate at 16 rows, 95-100%
 * split by features). */
#define FEATURE_SPLIT_ROWS 64
/* On several ranks a weight of at least twice this many floats that closes
 * a bucket has its gradient computed in row blocks of about this size, each
 * sent as soon as it is done (at most MAX_ROW_BLOCKS). */
#define ROW_BLOCK_FLOATS (256 * 1024)
#define MAX_ROW_BLOCKS 8

/* A piece of the slab that one sum of the communication thread carries,
 * planned with the buckets.  `layer` is the first layer, in forward order,
 * holding a parameter in it: the next step's forward applies the piece's
 * update just before that layer, or just before the block of its outputs
 * that row block `block` of its weight makes (-1: the whole layer).
 * `early` pieces are sent as soon as backward completes them, the others
 * after the step's last bucket.  `ticket` is the last step's. */
typedef struct piece {
    size_t begin, end;
    int layer, block;
    bool early;
    long ticket;
} piece;

/* Where a step's samples come from: a caller's batch arrays, or a dataset
 * and the indices of the batch's samples (the replicas gather their rows, and
 * the feature cache can serve them). */
typedef struct batch_source {
    const void *x;
    const void *targets;
    const fr_dataset *data;
    const int *ids;
    bool cached; /* the feature cache serves the rank's rows (train.c, plan_step_rows) */
} batch_source;

/*
 * The frozen-prefix feature cache: when layers [0, first_trainable) hold no
 * trainable parameter, their output for a sample never changes, so it is
 * computed once per sample and every step runs only the trainable suffix.
 */
typedef struct feature_cache {
    bool enabled;
    size_t budget_bytes;
    int layer;            /* the prefix's last layer; -1: nothing cached */
    int samples;          /* dataset indices [0, samples) may be cached */
    size_t numel;         /* floats per sample */
    float *features;
    const fr_dataset *data; /* the dataset the entries belong to; NULL: empty */
    /* What caching all of the last planned dataset would take (0: its
     * prefix cannot be cached at all). */
    int wanted_samples;
    size_t wanted_bytes;
} feature_cache;

/* The step's loss totals: summed loss, correct predictions, whether a label
 * was out of range (so every rank learns of it), how many ranks were asked
 * to stop (fr_trainer_watch_stop), and when the replicas are checked
 * (fr_trainer_check_replicas) the weights' checksum in CHECK_PARTS parts of
 * CHECK_BITS bits and their squares: the ranks agree on a part exactly when
 * n * (sum of squares) == (sum)^2, all of it exact in doubles for up to
 * 2^15 ranks. */
enum { CHECK_PARTS = 6, CHECK_BITS = 11, CHECK_AT = 4, LOSS_TOTALS = CHECK_AT + 2 * CHECK_PARTS };

/*
 * What one thread owns: its slice of the rank-wide activations, its scratch
 * and gradient slab.  The activations (outputs, gradient slots, gathered
 * rows) are rank-wide buffers (fr_trainer.activations), each replica's rows a
 * slice of them (train.c, slice_offset): in a step split by features the
 * slices of a layer's buffer are one contiguous matrix over the rank's rows
 * (replica r's at its first local row), otherwise each replica has a region
 * of its own, rows_cap rows of the buffer's widest layer, as if it had its own
 * buffers.
 */
typedef struct replica {
    int index;           /* its thread */
    int rows_cap;
    int local_first;     /* this step's first row among the rank's */
    const float *x;       /* this step's input rows */
    const void *targets;  /* and their targets */
    float *gathered_x;    /* rows gathered from a dataset (this step's slice) */
    int32_t *gathered_labels;
    void **scratch;      /* per layer */
    /* Its gradient slab: replica 0's is the whole slab; another's holds only
     * the segments summed at the end of backward (slab_segment.own_offset),
     * followed by its stage (room for the largest staged weight). */
    float *slab;
    float *stage;
    size_t slab_floats;  /* both, as allocated */
    int step_rows;            /* this step's rows */
    int first_row;            /* their first row in the global batch */
    const float *layer_dout;  /* the gradient backward is at, for split weight gradients */
    long *backward_calls; /* per layer */
    long *feature_split_calls; /* per layer: its GEMMs split by features */
    double loss_sum;
    long correct;
    int bad_label;
    float *owned[2];     /* the two allocations the scratch and slab live in */
} replica;

struct fr_trainer {
    fr_model *model;
    fr_train_config config;
    int threads;
    replica *replicas;

    /* The frozen set the slab was laid out for, and where each trainable
     * parameter's gradient (and optimizer state) sits in it.  The plan is
     * the trainer's own: two trainers on one model do not share it. */
    bool *planned_requires_grad;
    size_t *slab_offsets;
    /* Per layer: its output lives in its input's buffer (flatten, in-place relu). */
    bool *shares_input;
    /* Per layer: the gradient at its output is needed, because it or a layer
     * it reads from (directly or not) has a trainable parameter. */
    bool *needs_grad;
    /* Backward's gradients w.r.t. activations live in grad_slot_count slots
     * per replica (two, used in turn, for a list of layers; a residual block
     * holds the gradient at its input while its body and shortcut run).  Per
     * layer: the slot holding the gradient at its output; the slot its
     * backward writes the gradient at its input into (-1: none); and in
     * grad_adds, bit k set when that gradient is instead added into input k's
     * slot, which already holds another reader's share (for a layer that
     * computes it, din_slot is then a temporary). */
    int grad_slot_count;
    int *grad_slot, *din_slot;
    unsigned char *grad_adds;

    /* The rank-wide activations (replica's comment): one allocation holding
     * per layer its output's buffer (output_base, NULL where it shares its
     * input's; output_width floats per row of its widest user: the layer's
     * own for a kept output, the widest layer's for the two transient buffers
     * layers take in turn, output_transient), the gradient slots (grad_base,
     * rows of the widest layer) and the rows gathered from a dataset. */
    float *activations;
    float **output_base;
    size_t *output_width;
    bool *output_transient;
    float **grad_base;
    size_t grad_width;
    float *gathered_x_base;
    int32_t *gathered_labels_base;
    /* This step's (or evaluation's) rows on this rank, and whether it is
     * split by features (FEATURE_SPLIT_ROWS). */
    int rank_rows;
    bool feature_split;
    int first_trainable;
    size_t trainable_count;
    slab_segment *segments;
    int segment_count;
    /* Per parameter: its segment (-1: not trainable). */
    int *segment_of;
    /* Floats of the other replicas' compact slabs, and of their stages. */
    size_t own_floats, stage_floats;
    bucket *buckets;
    int bucket_count;
    /* Per layer: its weight gradient is split by rows between the threads,
     * each summing its rows over all replicas into replica 0's slab, instead
     * of one whole copy per replica summed afterwards (less memory traffic). */
    bool *split_weight;
    /* Per layer: its weight gradient is staged (slab_segment.staged). */
    bool *staged_weight;
    /* Per layer: bit k set when its backward adds parameter slot k's
     * gradient to what a later layer sharing the parameter wrote
     * (fr_param_grads.accumulate). */
    unsigned *grad_accumulate;

    /* Optimizer state, slab layout; per-parameter step counts (torch keeps
     * `step` per parameter, and a parameter unfrozen later starts at 1). */
    float *state_m, *state_v;
    long *param_steps;

    /* Several ranks: per layer, the row blocks its weight gradient and
     * forward are computed in (0: not blocked), and the buckets' pieces.
     * While `in_flight`, the last step's sums are not applied yet: the next
     * step's forward applies each just before the first layer that needs it
     * (or fr_trainer_sync does), with the optimizer settings of the step
     * that made them. */
    int *row_blocks;
    piece *pieces;
    int piece_count;
    bool in_flight;
    fr_train_config in_flight_config;
    long in_flight_step; /* the step they belong to, counted from 1 */

    const volatile sig_atomic_t *stop_flag;
    bool stop_agreed;
    bool check_replicas; /* at the next step */

    long steps_done;
    /* The loss (loss.c's table) and its targets: target_width 4-byte values
     * a sample; how many of the current step's (or evaluation's) count. */
    const fr_loss_ops *loss;
    int target_width;
    long step_count;
    fr_barrier barrier;  /* where the step's threads meet (train.c's meet) */
    size_t bytes_sent;   /* into the gradient allreduce, all steps */
    double loss_totals[LOSS_TOTALS]; /* summed by the communication thread */
    feature_cache cache;

    /* Batch statistics (layers with ops->stats_count in train mode): per
     * thread four regions of stats_size doubles, its partial sums and its
     * copy of the batch's sums for the meetings in forward and in backward,
     * layer i's at stats_offset[i] in each (-1 for other layers; train.c's
     * stats_at).  A failed sum over ranks is kept in stats_status/stats_err
     * for the step. */
    size_t stats_size;
    double *stats;
    long *stats_offset;
    int stats_status;
    fr_error stats_err;

    /* Learning rates (lr_schedule.c): each parameter's base rate, NULL until
     * fr_trainer_set_lr (config.lr for every one).  A step's rate is the base
     * rate through config.lr_schedule at that step's index. */
    double *param_lr;
    /* Gradient clipping (train.c): each thread's sum of squares over its
     * chunk of the summed slab, and the norm of step grad_norm_step (from 1;
     * 0: none yet) before clipping. */
    double *clip_partial;
    double grad_norm;
    long grad_norm_step;
};

/* ------------------------------------------------------------ helpers */

/* Rows [first, first + count) of `total` for part `index` of `parts`. */
static inline void split_rows(int total, int parts, int index, int *first, int *count) {
    int base = total / parts, extra = total % parts;
    *first = index * base + (index < extra ? index : extra);
    *count = base + (index < extra ? 1 : 0);
}

/* Layer i's inputs: `input`, and a join's shortcut; -2 where it has no second. */
static inline int input_of(const fr_layer *l, int k) {
    return k == 0 ? l->input : l->ops->join ? l->shortcut : -2;
}

static inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static inline bool relu_fused_into(const fr_model *model, int i) {
    return i > 0 && model->layers[i - 1].fused_relu;
}

/* Rows [*begin, *end) of row block j of layer i's weight. */
static inline void block_rows(const fr_trainer *trainer, int i, int j, int *begin, int *end) {
    const fr_param *w = &trainer->model->params[trainer->model->layers[i].params[FR_WEIGHT]];
    int blocks = trainer->row_blocks[i], rows = w->shape[0];
    *begin = (int)((long long)rows * j / blocks);
    *end = (int)((long long)rows * (j + 1) / blocks);
}

/* Where replica r's backward writes the gradient of trainable parameter
 * `param` (not a split weight, which backward does not write). */
static inline float *replica_grad(const fr_trainer *trainer, const replica *r, int param) {
    const slab_segment *seg = &trainer->segments[trainer->segment_of[param]];
    if (r == &trainer->replicas[0])
        return r->slab + seg->slab_offset;
    return seg->staged ? r->stage : r->slab + seg->own_offset;
}

/* ------------------------------------------------ between the files */

/* plan.c: lay out the slab, buckets, pieces and replicas for the current
 * frozen set (keeping the optimizer state of parameters that stay
 * trainable); whether the frozen set changed since. */
int fr_plan_layout(fr_trainer *trainer, fr_error *err);
bool fr_plan_changed(const fr_trainer *trainer);

/* train.c: layers [from, to) of a replica's rows (every thread of the team
 * calls it where a layer gathers batch statistics); the buffer holding layer
 * i's output (x: the rows at the model's input). */
void fr_step_forward(fr_trainer *trainer, replica *r, const float *x, int rows, int from, int to);
const float *fr_step_output(const fr_trainer *trainer, const replica *r, const float *x, int i);
/* train.c: place replica r's rows in the rank-wide activations, its first
 * row local_first among the rank's (for the layout fr_trainer.feature_split
 * says). */
void fr_step_place(const fr_trainer *trainer, replica *r, int local_first);

/* lr_schedule.c: the learning rate of step `step` (from 0) for parameter
 * `param` under `config` (the trainer's, or the one an update in flight was
 * made with). */
double fr_param_lr(const fr_trainer *trainer, const fr_train_config *config, int param, long step);

/* cache.c: size and fill the cache for this dataset and the current frozen
 * prefix; whether it holds every one of the `rows` samples `ids`. */
int fr_cache_plan(fr_trainer *trainer, const fr_dataset *data, fr_error *err);
bool fr_cache_has_rows(const fr_trainer *trainer, const int *ids, int rows);

#endif
