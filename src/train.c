/*
 * train.c - the training step: DESIGN.md's data path, top to bottom.
 *
 *   global batch B ──► this rank's rows ──► one contiguous slice per thread
 *   each thread (a replica): forward with the shared weights, loss on its
 *       slice, backward down to the first layer with a trainable parameter,
 *       weight gradients of trainable parameters into its own slab
 *   threads: the slabs are summed in parallel, each thread one chunk.  A
 *       linear layer's weight gradient is instead split by rows: the threads
 *       meet after the layer's backward and each sums its rows over all
 *       replicas into replica 0's slab (one pass less over the largest
 *       gradients, and no whole copy per thread to write)
 *   ranks:   the slab in buckets, summed by the communication thread
 *            (allreduce.c) while backward goes on (trainable only)
 *   optimizer: trainable parameters only, over the same chunks; on several
 *            ranks during the next step's forward (updates in flight)
 *
 * On one rank the thread reduction and the optimizer are fused: a thread sums
 * its chunk of the slabs and updates the parameters under it at once.
 *
 * The gradient slab holds the trainable parameters' gradients in the order
 * backward produces them (last layer first); the optimizer state arrays use
 * the same layout, so frozen parameters cost neither.  Everything a step needs
 * is allocated when the trainer is made or when the frozen set changes.
 */
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Chunks of the slab that threads reduce are whole cache lines. */
#define SLAB_CHUNK_ALIGN 16

/* One trainable parameter's place in the slab. */
typedef struct slab_segment {
    size_t slab_offset;
    size_t numel;
    int param;
    bool split; /* computed by rows across threads, straight into replica 0's slab */
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
    const float *x;
    const void *targets;
    const fr_dataset *data;
    const int *ids;
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
} feature_cache;

/* The step's loss totals: summed loss, correct predictions, whether a label
 * was out of range (so every rank learns of it), how many ranks were asked
 * to stop (fr_trainer_watch_stop), and when the replicas are checked
 * (fr_trainer_check_replicas) the weights' checksum in CHECK_PARTS parts of
 * CHECK_BITS bits and their squares: the ranks agree on a part exactly when
 * n * (sum of squares) == (sum)^2, all of it exact in doubles for up to
 * 2^15 ranks. */
enum { CHECK_PARTS = 6, CHECK_BITS = 11, CHECK_AT = 4, LOSS_TOTALS = CHECK_AT + 2 * CHECK_PARTS };

/* What one thread owns: its activations, scratch and gradient slab. */
typedef struct replica {
    int rows_cap;
    const float *x;       /* this step's input rows */
    const void *targets;  /* and their targets */
    float *gathered_x;    /* rows gathered from a dataset */
    int32_t *gathered_labels;
    float **outputs;     /* per layer; NULL where the output shares the input's buffer */
    void **scratch;      /* per layer */
    float **grads;       /* the gradient slots w.r.t. activations (grad_slot_count) */
    float *slab;
    int step_rows;            /* this step's rows */
    int first_row;            /* their first row in the global batch */
    const float *layer_dout;  /* the gradient backward is at, for split weight gradients */
    long *backward_calls; /* per layer */
    double loss_sum;
    long correct;
    int bad_label;
    float *owned[2];     /* the two allocations the pointers above live in */
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
    int first_trainable;
    size_t trainable_count;
    slab_segment *segments;
    int segment_count;
    bucket *buckets;
    int bucket_count;
    /* Per layer: its weight gradient is split by rows between the threads,
     * each summing its rows over all replicas into replica 0's slab, instead
     * of one whole copy per replica summed afterwards (less memory traffic). */
    bool *split_weight;

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
    size_t bytes_sent;   /* into the gradient allreduce, all steps */
    double loss_totals[LOSS_TOTALS]; /* summed by the communication thread */
    feature_cache cache;

    /* Batch statistics (layers with ops->stats_count in train mode): each
     * replica's partial sums (stats_max doubles per thread), the sums of the
     * last meeting in backward, and per layer the forward's batch sums, kept
     * for its backward (at stats_offset[i], -1 for other layers).  A failed
     * sum over ranks is kept in stats_status/stats_err for the step. */
    int stats_max;
    double *stats_partial, *stats_total, *stats_saved;
    long *stats_offset;
    int stats_status;
    fr_error stats_err;
};

/* ------------------------------------------------------------ planning */

/* Rows [first, first + count) of `total` for part `index` of `parts`. */
static void split_rows(int total, int parts, int index, int *first, int *count) {
    int base = total / parts, extra = total % parts;
    *first = index * base + (index < extra ? index : extra);
    *count = base + (index < extra ? 1 : 0);
}

void fr_trainer_rank_rows(const fr_trainer *trainer, int batch, int *first, int *count) {
    (void)trainer;
    split_rows(batch, fr_comm_size(), fr_comm_rank(), first, count);
}

/* Layer i's inputs: `input`, and a join's shortcut; -2 where it has no second. */
static int input_of(const fr_layer *l, int k) {
    return k == 0 ? l->input : l->ops->join ? l->shortcut : -2;
}

/*
 * Which outputs share their input's buffer: flatten always, and an in-place
 * layer (relu) unless its input is the caller's batch, which is read-only, or
 * is read by another layer too (a residual block's input).
 */
static void plan_shared_outputs(fr_model *model, bool *shares_input) {
    int layers = model->layer_count;
    int *readers = calloc((size_t)layers + 1, sizeof *readers);
    int *owner = calloc((size_t)layers + 1, sizeof *owner);
    bool *exclusive = calloc((size_t)layers + 1, sizeof *exclusive);
    if (!readers || !owner || !exclusive) {
        /* Nothing shared but flatten is always correct. */
        for (int i = 0; i < layers; i++) {
            shares_input[i] = model->layers[i].ops->alias;
            model->layers[i].fused_relu = false;
        }
        free(readers);
        free(owner);
        free(exclusive);
        return;
    }
    for (int i = 0; i < layers; i++)
        for (int k = 0; k < 2; k++)
            if (input_of(&model->layers[i], k) >= 0)
                readers[input_of(&model->layers[i], k)]++;
    for (int i = 0; i < layers; i++) {
        const fr_layer *l = &model->layers[i];
        int in = l->input;
        /* The buffer holding the input, -1 the batch; whether only this layer
         * reads it (along a chain of sharing layers). */
        int in_owner = in >= 0 ? owner[in] : -1;
        shares_input[i] = l->ops->alias || (l->ops->inplace && in_owner >= 0 && exclusive[in]);
        owner[i] = shares_input[i] ? in_owner : i;
        exclusive[i] = readers[i] <= 1 && (!shares_input[i] || in < 0 || exclusive[in]);
    }
    /* A relu working in place right after a layer that can take it (linear,
     * conv2d: ops.fuses_relu) is applied in that layer's bias pass (the
     * epilogue of its GEMM) instead. */
    for (int i = 0; i < layers; i++) {
        fr_layer *l = &model->layers[i];
        const fr_layer *next = i + 1 < layers ? &model->layers[i + 1] : NULL;
        l->fused_relu = next && next->ops == &fr_relu_ops && next->input == i &&
                        shares_input[i + 1] && l->ops->fuses_relu;
    }
    free(readers);
    free(owner);
    free(exclusive);
}

static bool relu_fused_into(const fr_model *model, int i) {
    return i > 0 && model->layers[i - 1].fused_relu;
}

/*
 * Which layer outputs must be kept for backward: those from the layer before
 * the first trainable one onwards (a layer needs its input and output), those
 * read later than by the next layer (a residual block's input, its body's
 * end), plus the buffers that sharing layers there write into.  The rest live
 * in two transient buffers, used in turn.
 */
static void plan_kept_outputs(const fr_model *model, const bool *shares_input,
                              int first_trainable, bool *kept) {
    int last = model->layer_count - 1;
    for (int i = 0; i <= last; i++)
        kept[i] = i >= first_trainable - 1 || i == last;
    for (int i = 0; i <= last; i++)
        for (int k = 0; k < 2; k++) {
            int in = input_of(&model->layers[i], k);
            if (in >= 0 && in != i - 1)
                kept[in] = true;
        }
    for (int i = last; i > 0; i--)
        if (shares_input[i] && kept[i] && model->layers[i].input >= 0)
            kept[model->layers[i].input] = true;
}

/*
 * Backward's gradient slots, planned by walking backward as a step does: a
 * slot is taken when a layer's gradient is first written and given back once
 * every layer reading it is done.  The loss writes the last layer's gradient
 * into slot 0.  A layer that passes its gradient on unchanged (flatten, a
 * join) lends its slot to its inputs.  Where a residual block's input was
 * read twice, the second share arrives in a temporary and is added.  For a
 * list of layers this is the ping-pong of slots 0 and 1.
 */
static int plan_gradients(fr_trainer *trainer) {
    const fr_model *model = trainer->model;
    int layers = model->layer_count;
    /* At most one slot per layer plus the temporary is ever in use. */
    int *uses = calloc((size_t)layers + 3, sizeof *uses);
    if (!uses)
        return FR_ENOMEM;
    for (int i = 0; i < layers; i++) {
        const fr_layer *l = &model->layers[i];
        bool mine = (l->weight >= 0 && model->params[l->weight].requires_grad) ||
                    (l->bias >= 0 && model->params[l->bias].requires_grad);
        trainer->needs_grad[i] = mine;
        for (int k = 0; k < 2; k++)
            if (input_of(l, k) >= 0 && trainer->needs_grad[input_of(l, k)])
                trainer->needs_grad[i] = true;
        trainer->grad_slot[i] = trainer->din_slot[i] = -1;
        trainer->grad_adds[i] = 0;
    }
    int slots = 2;
    if (layers > 0 && trainer->needs_grad[layers - 1]) {
        trainer->grad_slot[layers - 1] = 0;
        uses[0] = 1;
    }
    for (int i = layers - 1; i >= 0; i--) {
        const fr_layer *l = &model->layers[i];
        int mine = trainer->grad_slot[i];
        if (!trainer->needs_grad[i] || mine < 0)
            continue;
        bool passes = l->ops->alias || l->ops->join;
        for (int k = 0; k < 2; k++) {
            int in = input_of(l, k);
            if (in < 0 || !trainer->needs_grad[in])
                continue;
            bool started = trainer->grad_slot[in] >= 0;
            if (passes && !started) {
                trainer->grad_slot[in] = mine;
                uses[mine]++;
                continue;
            }
            if (started)
                trainer->grad_adds[i] |= (unsigned char)(1u << k);
            if (passes)
                continue;
            int free_slot = 0;
            while (uses[free_slot] > 0)
                free_slot++;
            trainer->din_slot[i] = free_slot;
            if (free_slot + 1 > slots)
                slots = free_slot + 1;
            if (!started) {
                trainer->grad_slot[in] = free_slot;
                uses[free_slot]++;
            }
        }
        uses[mine]--;
    }
    trainer->grad_slot_count = slots;
    free(uses);
    return FR_OK;
}

static size_t layer_out_numel(const fr_model *model, int i) {
    return fr_shape_numel(model->layers[i].out);
}

static size_t max_activation_numel(const fr_model *model) {
    size_t most = fr_shape_numel(model->input);
    for (int i = 0; i < model->layer_count; i++)
        if (layer_out_numel(model, i) > most)
            most = layer_out_numel(model, i);
    return most;
}

static void free_replica(replica *r) {
    fr_free(r->owned[0]);
    fr_free(r->owned[1]);
    free(r->outputs);
    free(r->scratch);
    free(r->grads);
    free(r->backward_calls);
    memset(r, 0, sizeof *r);
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/*
 * Size and carve one replica's buffers: kept outputs, two transient outputs,
 * two activation-gradient buffers, per-layer scratch and the slab.  Called by
 * the thread that owns the replica, so its pages are first touched there.
 */
static int build_replica(fr_trainer *trainer, replica *r, int rows_cap, const bool *kept) {
    const fr_model *model = trainer->model;
    int layers = model->layer_count;
    size_t act = max_activation_numel(model) * (size_t)rows_cap;
    r->rows_cap = rows_cap;
    r->outputs = calloc((size_t)layers, sizeof *r->outputs);
    r->scratch = calloc((size_t)layers, sizeof *r->scratch);
    r->backward_calls = calloc((size_t)layers, sizeof *r->backward_calls);
    int slots = trainer->grad_slot_count;
    r->grads = calloc((size_t)slots, sizeof *r->grads);
    if (!r->outputs || !r->scratch || !r->backward_calls || !r->grads)
        return FR_ENOMEM;

    /* Floats: kept outputs + 2 transient + the gradient slots + scratch. */
    size_t input_floats = round_up(fr_shape_numel(model->input) * (size_t)rows_cap, SLAB_CHUNK_ALIGN);
    size_t label_floats = round_up((size_t)rows_cap, SLAB_CHUNK_ALIGN);
    size_t floats = (2 + (size_t)slots) * round_up(act, SLAB_CHUNK_ALIGN) + input_floats +
                    label_floats;
    for (int i = 0; i < layers; i++) {
        const fr_layer *l = &model->layers[i];
        if (!trainer->shares_input[i] && kept[i])
            floats += round_up(layer_out_numel(model, i) * (size_t)rows_cap, SLAB_CHUNK_ALIGN);
        if (l->ops->scratch_bytes)
            floats += round_up((l->ops->scratch_bytes(l, rows_cap) + 3) / 4, SLAB_CHUNK_ALIGN);
    }
    r->owned[0] = fr_alloc(floats * sizeof(float));
    /* The slab gets its own allocation: it is what other threads read. */
    r->owned[1] = fr_alloc(round_up(trainer->trainable_count, SLAB_CHUNK_ALIGN) * sizeof(float) + 64);
    if (!r->owned[0] || !r->owned[1])
        return FR_ENOMEM;
    r->slab = r->owned[1];

    float *next = r->owned[0];
    float *transient[2];
    for (int k = 0; k < 2; k++, next += round_up(act, SLAB_CHUNK_ALIGN))
        transient[k] = next;
    for (int k = 0; k < slots; k++, next += round_up(act, SLAB_CHUNK_ALIGN))
        r->grads[k] = next;
    r->gathered_x = next;
    next += input_floats;
    r->gathered_labels = (int32_t *)next;
    next += label_floats;

    /* Forward walks the layers; an output not kept goes to whichever
     * transient buffer does not hold the layer's input (an output not kept
     * is read only by the next layer, so that is the last one written). */
    int input_in = -1; /* which transient buffer holds the current input */
    for (int i = 0; i < layers; i++) {
        const fr_layer *l = &model->layers[i];
        if (trainer->shares_input[i]) {
            r->outputs[i] = NULL;
        } else if (kept[i]) {
            r->outputs[i] = next;
            next += round_up(layer_out_numel(model, i) * (size_t)rows_cap, SLAB_CHUNK_ALIGN);
            input_in = -1;
        } else {
            int use = input_in == 0 ? 1 : 0;
            r->outputs[i] = transient[use];
            input_in = use;
        }
        if (l->ops->scratch_bytes) {
            r->scratch[i] = next;
            next += round_up((l->ops->scratch_bytes(l, rows_cap) + 3) / 4, SLAB_CHUNK_ALIGN);
        }
    }
    return FR_OK;
}

static void free_plan(fr_trainer *trainer) {
    if (trainer->replicas)
        for (int t = 0; t < trainer->threads; t++)
            free_replica(&trainer->replicas[t]);
    free(trainer->segments);
    trainer->segments = NULL;
    trainer->segment_count = 0;
    free(trainer->buckets);
    trainer->buckets = NULL;
    trainer->bucket_count = 0;
    free(trainer->pieces);
    trainer->pieces = NULL;
    trainer->piece_count = 0;
    free(trainer->row_blocks);
    trainer->row_blocks = NULL;
    free(trainer->split_weight);
    trainer->split_weight = NULL;
}

/*
 * Cut the slab into buckets in backward order: a bucket closes at the first
 * layer boundary after it reaches the target size, so each can be sent as
 * soon as backward has passed that layer while backward goes on below.
 */
static int plan_buckets(fr_trainer *trainer) {
    const fr_model *model = trainer->model;
    double mb = trainer->config.bucket_mb > 0 ? trainer->config.bucket_mb : DEFAULT_BUCKET_MB;
    size_t target = (size_t)(mb * 1024 * 1024 / sizeof(float));
    if (target == 0)
        target = 1;
    trainer->buckets = calloc((size_t)model->layer_count + 1, sizeof *trainer->buckets);
    if (!trainer->buckets)
        return FR_ENOMEM;
    size_t begin = 0, end = 0;
    for (int i = model->layer_count - 1; i >= trainer->first_trainable; i--) {
        const fr_layer *l = &model->layers[i];
        int ids[2] = {l->weight, l->bias};
        for (int k = 0; k < 2; k++)
            if (ids[k] >= 0 && model->params[ids[k]].requires_grad &&
                trainer->slab_offsets[ids[k]] + model->params[ids[k]].numel > end)
                end = trainer->slab_offsets[ids[k]] + model->params[ids[k]].numel;
        bool last = i == trainer->first_trainable;
        if (end > begin && (end - begin >= target || last)) {
            trainer->buckets[trainer->bucket_count++] =
                (bucket){.begin = begin, .end = end, .ready_after_layer = i};
            begin = end;
        }
    }
    return FR_OK;
}

/* Where a bucket's head ends when it goes as head and tail (its end when it
 * goes whole). */
static size_t bucket_middle(const bucket *b) {
    if (b->end - b->begin < SPLIT_BUCKET_FLOATS)
        return b->end;
    return b->begin + round_up((b->end - b->begin) / 2, SLAB_CHUNK_ALIGN);
}

/* Rows [*begin, *end) of row block j of layer i's weight. */
static void block_rows(const fr_trainer *trainer, int i, int j, int *begin, int *end) {
    const fr_param *w = &trainer->model->params[trainer->model->layers[i].weight];
    int blocks = trainer->row_blocks[i], rows = w->shape[0];
    *begin = (int)((long long)rows * j / blocks);
    *end = (int)((long long)rows * (j + 1) / blocks);
}

/* The first layer, in forward order, with a parameter in slab range
 * [begin, end). */
static int piece_layer(const fr_trainer *trainer, size_t begin, size_t end) {
    const fr_model *model = trainer->model;
    for (int i = trainer->first_trainable; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        int ids[2] = {l->weight, l->bias};
        for (int k = 0; k < 2; k++) {
            if (ids[k] < 0 || !model->params[ids[k]].requires_grad)
                continue;
            size_t lo = trainer->slab_offsets[ids[k]], hi = lo + model->params[ids[k]].numel;
            if (lo < end && begin < hi)
                return i;
        }
    }
    return trainer->model->layer_count;
}

static void add_piece(fr_trainer *trainer, size_t begin, size_t end, int block, bool early) {
    trainer->pieces[trainer->piece_count++] =
        (piece){.begin = begin, .end = end, .layer = piece_layer(trainer, begin, end),
                .block = block, .early = early, .ticket = -1};
}

/*
 * Several ranks: cut each bucket into the pieces the communication thread
 * sums.  A bucket closed by a large weight with row operations
 * (weight_grad_rows and forward_rows) goes as one piece per row block of
 * that weight (the first also holds the rest of the bucket, the weight's
 * bias among it), otherwise as a head and a tail (or whole when small).  The
 * next forward needs the buckets in the opposite order to backward's, so a
 * bucket other than the step's last sends the first half of its pieces when
 * backward completes them and the rest after the last bucket.
 */
static int plan_pieces(fr_trainer *trainer) {
    const fr_model *model = trainer->model;
    trainer->row_blocks = calloc((size_t)model->layer_count + 1, sizeof *trainer->row_blocks);
    trainer->pieces = calloc((size_t)trainer->bucket_count * MAX_ROW_BLOCKS + 1,
                             sizeof *trainer->pieces);
    if (!trainer->row_blocks || !trainer->pieces)
        return FR_ENOMEM;
    if (fr_comm_size() == 1)
        return FR_OK;
    for (int k = 0; k < trainer->bucket_count; k++) {
        bucket *b = &trainer->buckets[k];
        int i = b->ready_after_layer;
        const fr_layer *l = &model->layers[i];
        bool last = k == trainer->bucket_count - 1;
        b->first_piece = trainer->piece_count;
        size_t numel = l->weight >= 0 ? model->params[l->weight].numel : 0;
        if (l->ops->weight_grad_rows && l->ops->forward_rows && numel >= 2 * ROW_BLOCK_FLOATS &&
            model->params[l->weight].requires_grad) {
            int blocks = (int)(numel / ROW_BLOCK_FLOATS);
            if (blocks > MAX_ROW_BLOCKS)
                blocks = MAX_ROW_BLOCKS;
            if (blocks > model->params[l->weight].shape[0])
                blocks = model->params[l->weight].shape[0];
            trainer->row_blocks[i] = blocks;
            trainer->split_weight[i] = true;
            for (int s = 0; s < trainer->segment_count; s++)
                if (trainer->segments[s].param == l->weight)
                    trainer->segments[s].split = true;
            size_t weight = trainer->slab_offsets[l->weight], row_len = numel / (size_t)
                                                                  model->params[l->weight].shape[0];
            size_t begin = b->begin;
            for (int j = 0; j < blocks; j++) {
                int lo, hi;
                block_rows(trainer, i, j, &lo, &hi);
                size_t end = j == blocks - 1 ? b->end : weight + (size_t)hi * row_len;
                add_piece(trainer, begin, end, j, last || j < (blocks + 1) / 2);
                begin = end;
            }
        } else {
            size_t middle = last ? b->end : bucket_middle(b);
            add_piece(trainer, b->begin, middle, -1, true);
            if (middle < b->end)
                add_piece(trainer, middle, b->end, -1, false);
        }
        b->pieces = trainer->piece_count - b->first_piece;
    }
    return FR_OK;
}

/*
 * Lay out the slab for the current frozen set: trainable parameters in the
 * order backward produces them, last layer first.  Optimizer state follows
 * the parameters that stay trainable; parameters that became trainable start
 * fresh.
 */
static int plan(fr_trainer *trainer, fr_error *err) {
    fr_model *model = trainer->model;
    int params = model->param_count;
    size_t *old_offsets = malloc(((size_t)params + 1) * sizeof *old_offsets);
    bool *was_trainable = malloc(((size_t)params + 1) * sizeof *was_trainable);
    if (!old_offsets || !was_trainable) {
        free(old_offsets);
        free(was_trainable);
        return fr_fail(err, FR_ENOMEM, "out of memory planning the gradient slab");
    }
    for (int i = 0; i < params; i++) {
        old_offsets[i] = trainer->slab_offsets[i];
        was_trainable[i] = trainer->planned_requires_grad[i];
    }
    free_plan(trainer);

    trainer->segments = calloc((size_t)params + 1, sizeof *trainer->segments);
    trainer->split_weight = calloc((size_t)model->layer_count + 1, sizeof *trainer->split_weight);
    if (!trainer->segments || !trainer->split_weight)
        goto oom;
    size_t offset = 0;
    for (int layer = model->layer_count - 1; layer >= 0; layer--) {
        const fr_layer *l = &model->layers[layer];
        /* The bias first: a layer's first piece then carries its bias, which
         * every block of its outputs needs. */
        int ids[2] = {l->bias, l->weight};
        trainer->split_weight[layer] = trainer->threads > 1 && l->weight >= 0 &&
                                       model->params[l->weight].requires_grad &&
                                       l->ops->weight_grad_rows;
        for (int k = 0; k < 2; k++) {
            if (ids[k] < 0 || !model->params[ids[k]].requires_grad)
                continue;
            fr_param *p = &model->params[ids[k]];
            trainer->slab_offsets[ids[k]] = offset;
            trainer->segments[trainer->segment_count++] =
                (slab_segment){.slab_offset = offset, .numel = p->numel, .param = ids[k],
                               .split = ids[k] == l->weight && trainer->split_weight[layer]};
            offset += p->numel;
        }
    }
    trainer->trainable_count = offset;
    trainer->first_trainable = fr_model_first_trainable_layer(model);
    if (plan_buckets(trainer) != FR_OK || plan_pieces(trainer) != FR_OK)
        goto oom;
    for (int i = 0; i < params; i++)
        trainer->planned_requires_grad[i] = model->params[i].requires_grad;

    /* Optimizer state: carry each still-trainable parameter's over. */
    int per_value = fr_optim_state_per_value(&trainer->config);
    float *old_state[2] = {trainer->state_m, trainer->state_v};
    float *new_state[2] = {NULL, NULL};
    for (int k = 0; k < per_value; k++) {
        new_state[k] = fr_alloc((offset ? offset : 1) * sizeof(float));
        if (!new_state[k]) {
            fr_free(new_state[0]);
            goto oom;
        }
    }
    for (int i = 0; i < params; i++) {
        fr_param *p = &model->params[i];
        if (!p->requires_grad)
            trainer->param_steps[i] = 0;
        else if (!was_trainable[i] || !old_state[0])
            trainer->param_steps[i] = 0;
        else
            for (int k = 0; k < per_value; k++)
                if (old_state[k])
                    memcpy(new_state[k] + trainer->slab_offsets[i], old_state[k] + old_offsets[i],
                           p->numel * sizeof(float));
    }
    fr_free(trainer->state_m);
    fr_free(trainer->state_v);
    trainer->state_m = new_state[0];
    trainer->state_v = new_state[1];
    free(old_offsets);
    free(was_trainable);

    /* Replicas: each thread builds its own. */
    bool *kept = calloc((size_t)model->layer_count + 1, sizeof *kept);
    if (!kept)
        return fr_fail(err, FR_ENOMEM, "out of memory planning activations");
    plan_shared_outputs(model, trainer->shares_input);
    plan_kept_outputs(model, trainer->shares_input, trainer->first_trainable, kept);
    if (plan_gradients(trainer) != FR_OK) {
        free(kept);
        return fr_fail(err, FR_ENOMEM, "out of memory planning activations");
    }
    int rank_first, rank_rows;
    split_rows(trainer->config.max_batch, fr_comm_size(), 0, &rank_first, &rank_rows);
    int failed = 0;
#pragma omp parallel num_threads(trainer->threads) reduction(+ : failed)
    {
        int t = omp_get_thread_num(), first, rows;
        split_rows(rank_rows, trainer->threads, 0, &first, &rows);
        if (build_replica(trainer, &trainer->replicas[t], rows > 0 ? rows : 1, kept) != FR_OK)
            failed++;
    }
    free(kept);
    if (failed)
        return fr_fail(err, FR_ENOMEM, "out of memory allocating replica workspaces for batch %d",
                       trainer->config.max_batch);
    return FR_OK;
oom:
    free(old_offsets);
    free(was_trainable);
    return fr_fail(err, FR_ENOMEM, "out of memory planning the gradient slab");
}

static bool frozen_set_changed(const fr_trainer *trainer) {
    for (int i = 0; i < trainer->model->param_count; i++)
        if (trainer->model->params[i].requires_grad != trainer->planned_requires_grad[i])
            return true;
    return false;
}

/* ---------------------------------------------------------- lifecycle */

/* A quarter of the machine's memory, shared by the ranks on it is not
 * known here: each process takes a quarter (--cache-mb sets it exactly). */
static size_t default_cache_budget(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0)
        return (size_t)1 << 30;
    return (size_t)pages * (size_t)page / 4;
}

/* Room for the batch statistics of every layer that may gather them. */
static int plan_batch_stats(fr_trainer *trainer, fr_error *err) {
    const fr_model *model = trainer->model;
    size_t saved = 0;
    trainer->stats_offset = malloc(((size_t)model->layer_count + 1) * sizeof(long));
    if (!trainer->stats_offset)
        return fr_fail(err, FR_ENOMEM, "out of memory creating the trainer");
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        trainer->stats_offset[i] = -1;
        if (!l->ops->stats_count)
            continue;
        int count = l->ops->stats_count(l);
        trainer->stats_offset[i] = (long)saved;
        saved += (size_t)count;
        if (count > trainer->stats_max)
            trainer->stats_max = count;
    }
    if (trainer->stats_max == 0)
        return FR_OK;
    trainer->stats_partial = calloc((size_t)trainer->threads * (size_t)trainer->stats_max,
                                    sizeof(double));
    trainer->stats_total = calloc((size_t)trainer->stats_max, sizeof(double));
    trainer->stats_saved = calloc(saved, sizeof(double));
    if (!trainer->stats_partial || !trainer->stats_total || !trainer->stats_saved)
        return fr_fail(err, FR_ENOMEM, "out of memory creating the trainer");
    return FR_OK;
}

int fr_trainer_new(fr_model *model, const fr_train_config *config, fr_trainer **out,
                   fr_error *err) {
    *out = NULL;
    int rc = fr_optim_check(config, err);
    if (rc != FR_OK)
        return rc;
    if (config->max_batch <= 0)
        return fr_fail(err, FR_EINVAL, "batch size %d: must be positive", config->max_batch);
    if (model->layer_count == 0)
        return fr_fail(err, FR_EINVAL, "the model has no layers");
    if (model->block_depth > 0)
        return fr_fail(err, FR_EINVAL, "residual block '%s' is not closed",
                       model->blocks[model->block_depth - 1].name);
    if ((rc = fr_model_ensure_arena(model, err)) != FR_OK)
        return rc;
    /* Parallelism comes from replicas; OpenBLAS's own threads would fight them. */
    openblas_set_num_threads(1);

    fr_trainer *trainer = calloc(1, sizeof *trainer);
    if (!trainer)
        return fr_fail(err, FR_ENOMEM, "out of memory creating the trainer");
    trainer->model = model;
    trainer->config = *config;
    trainer->threads = config->threads > 0 ? config->threads : omp_get_max_threads();
    trainer->cache.enabled = config->cache_mb >= 0;
    trainer->cache.budget_bytes = config->cache_mb > 0 ? (size_t)(config->cache_mb * 1048576.0)
                                                       : default_cache_budget();
    trainer->cache.layer = -1;
    trainer->replicas = calloc((size_t)trainer->threads, sizeof *trainer->replicas);
    trainer->planned_requires_grad = calloc((size_t)model->param_count + 1, sizeof(bool));
    trainer->param_steps = calloc((size_t)model->param_count + 1, sizeof(long));
    trainer->slab_offsets = calloc((size_t)model->param_count + 1, sizeof(size_t));
    trainer->shares_input = calloc((size_t)model->layer_count + 1, sizeof(bool));
    trainer->needs_grad = calloc((size_t)model->layer_count + 1, sizeof(bool));
    trainer->grad_slot = calloc((size_t)model->layer_count + 1, sizeof(int));
    trainer->din_slot = calloc((size_t)model->layer_count + 1, sizeof(int));
    trainer->grad_adds = calloc((size_t)model->layer_count + 1, 1);
    if (!trainer->replicas || !trainer->planned_requires_grad || !trainer->param_steps ||
        !trainer->shares_input || !trainer->slab_offsets || !trainer->needs_grad ||
        !trainer->grad_slot || !trainer->din_slot || !trainer->grad_adds) {
        fr_trainer_free(trainer);
        return fr_fail(err, FR_ENOMEM, "out of memory creating the trainer");
    }
    if ((rc = plan(trainer, err)) != FR_OK || (rc = plan_batch_stats(trainer, err)) != FR_OK) {
        fr_trainer_free(trainer);
        return rc;
    }
    *out = trainer;
    return FR_OK;
}

void fr_trainer_free(fr_trainer *trainer) {
    if (!trainer)
        return;
    fr_trainer_sync(trainer, NULL);
    free_plan(trainer);
    free(trainer->replicas);
    fr_free(trainer->state_m);
    fr_free(trainer->state_v);
    free(trainer->planned_requires_grad);
    free(trainer->param_steps);
    free(trainer->slab_offsets);
    free(trainer->shares_input);
    free(trainer->needs_grad);
    free(trainer->grad_slot);
    free(trainer->din_slot);
    free(trainer->grad_adds);
    fr_free(trainer->cache.features);
    free(trainer->stats_partial);
    free(trainer->stats_total);
    free(trainer->stats_saved);
    free(trainer->stats_offset);
    free(trainer);
}

/* ----------------------------------------------------- forward, backward */

/* The buffer holding layer j's output (-1: the input rows x): sharing
 * layers are walked back to the one that holds the data. */
static const float *output_of(const fr_trainer *trainer, const replica *r, const float *x, int j) {
    while (j >= 0 && trainer->shares_input[j])
        j = trainer->model->layers[j].input;
    return j >= 0 ? r->outputs[j] : x;
}

static const float *layer_input(const fr_trainer *trainer, const replica *r, const float *x,
                                int i) {
    return output_of(trainer, r, x, trainer->model->layers[i].input);
}

static const float *layer_output(const fr_trainer *trainer, const replica *r, const float *x,
                                 int i) {
    return output_of(trainer, r, x, i);
}

/*
 * Every thread in step: the replicas' partial sums (stats_partial, `count`
 * doubles each) added in replica order, then over the ranks by the
 * communication thread (main thread only, between barriers), into `total`.
 * The order is fixed, so the sums do not depend on timing or on how the
 * batch is split between threads.
 */
static void meet_sums(fr_trainer *trainer, int count, double *total) {
#pragma omp barrier
#pragma omp master
    {
        for (int k = 0; k < count; k++) {
            double sum = 0.0;
            for (int t = 0; t < trainer->threads; t++)
                sum += trainer->stats_partial[(size_t)t * (size_t)trainer->stats_max + (size_t)k];
            total[k] = sum;
        }
        long ticket;
        if (fr_comm_size() > 1 && trainer->stats_status == FR_OK &&
            (fr_comm_start_sum_doubles(total, count, &ticket, &trainer->stats_err) != FR_OK ||
             fr_comm_finish_sum(ticket, &trainer->stats_err) != FR_OK))
            trainer->stats_status = trainer->stats_err.status ? trainer->stats_err.status : FR_ECOMM;
    }
#pragma omp barrier
}

/* Whether layer i gathers batch statistics in this step (every thread meets
 * in its forward and backward). */
static bool gathers_stats(const fr_trainer *trainer, int i) {
    const fr_layer *l = &trainer->model->layers[i];
    return l->training && l->ops->stats_count;
}

/* Layer i's forward with the global batch's statistics (every thread calls
 * it; a replica without rows adds nothing); the main thread moves the
 * layer's buffers once. */
static void forward_batch_stats(fr_trainer *trainer, replica *r, const float *x, int rows, int i) {
    const fr_layer *l = &trainer->model->layers[i];
    int count = l->ops->stats_count(l);
    double *mine = trainer->stats_partial + (size_t)omp_get_thread_num() * (size_t)trainer->stats_max;
    double *total = trainer->stats_saved + trainer->stats_offset[i];
    const float *in = layer_input(trainer, r, x, i);
    if (rows > 0)
        l->ops->forward_sums(l, in, rows, mine);
    else
        memset(mine, 0, (size_t)count * sizeof *mine);
    meet_sums(trainer, count, total);
#pragma omp master
    l->ops->commit(l, total);
    if (rows > 0)
        l->ops->forward_with(l, in, (float *)layer_output(trainer, r, x, i), rows, total,
                             r->scratch[i]);
}

/* Layers [from, to) of this replica's rows.  Every thread of the team calls
 * it when a layer gathers batch statistics (those meet), with rows = 0 if it
 * has none. */
static void forward(fr_trainer *trainer, replica *r, const float *x, int rows, int from, int to) {
    const fr_model *model = trainer->model;
    for (int i = from; i < to; i++) {
        const fr_layer *l = &model->layers[i];
        if (l->ops->alias || relu_fused_into(model, i))
            continue;
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        if (gathers_stats(trainer, i)) {
            forward_batch_stats(trainer, r, x, rows, i);
            fr_trace_add(omp_get_thread_num(), l->name, "forward", -1, t0, 0);
            continue;
        }
        if (rows == 0)
            continue;
        /* An in-place layer writes over its input, a buffer this replica owns. */
        float *out = (float *)layer_output(trainer, r, x, i);
        if (l->ops->join)
            fr_add_arrays(out, layer_input(trainer, r, x, i), output_of(trainer, r, x, l->shortcut),
                          (size_t)rows * fr_shape_numel(l->out));
        else if (l->training && l->ops->forward_at)
            l->ops->forward_at(l, layer_input(trainer, r, x, i), out, rows, r->scratch[i],
                               trainer->config.seed, trainer->steps_done, r->first_row);
        else
            l->ops->forward(l, layer_input(trainer, r, x, i), out, rows, r->scratch[i]);
        fr_trace_add(omp_get_thread_num(), l->name, "forward", -1, t0, 0);
    }
}

/* What a layer's backward computes: its parameters' gradients, the
 * gradient for the layer below, or both. */
enum { GRAD_WEIGHTS = 1, GRAD_INPUT = 2, GRAD_BOTH = 3 };

/* The gradient at layer i's output, NULL where none is needed. */
static float *output_grad(const fr_trainer *trainer, const replica *r, int i) {
    return trainer->needs_grad[i] ? r->grads[trainer->grad_slot[i]] : NULL;
}

/* The backward of layer i, from the gradient at its output (the slots are
 * planned by plan_gradients).  Its GRAD_INPUT part leaves the gradient at its
 * input(s) in their slots; nothing is computed where nothing trainable lies
 * behind (the frozen prefix, a frozen branch). */
static void backward_layer(const fr_trainer *trainer, replica *r, const float *x, int rows, int i,
                           int parts) {
    const fr_model *model = trainer->model;
    const fr_layer *l = &model->layers[i];
    float *dout = output_grad(trainer, r, i);
    if (!dout)
        return;
    if (l->ops->alias || l->ops->join) {
        /* Same gradient for each input: shared slots, or added to another
         * reader's share. */
        for (int k = 0; k < 2 && (parts & GRAD_INPUT); k++)
            if (trainer->grad_adds[i] & (1u << k))
                fr_add_into(r->grads[trainer->grad_slot[input_of(l, k)]], dout,
                            (size_t)rows * fr_shape_numel(l->out));
        return;
    }
    float *din = NULL, *dweight = NULL, *dbias = NULL;
    if ((parts & GRAD_INPUT) && trainer->din_slot[i] >= 0)
        din = r->grads[trainer->din_slot[i]];
    if ((parts & GRAD_WEIGHTS) && l->weight >= 0 && model->params[l->weight].requires_grad &&
        !trainer->split_weight[i])
        dweight = r->slab + trainer->slab_offsets[l->weight];
    if ((parts & GRAD_WEIGHTS) && l->bias >= 0 && model->params[l->bias].requires_grad)
        dbias = r->slab + trainer->slab_offsets[l->bias];
    if (parts & GRAD_WEIGHTS)
        r->backward_calls[i]++;
    if (din || dweight || dbias || parts == GRAD_BOTH) {
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        l->ops->backward(l, layer_input(trainer, r, x, i), layer_output(trainer, r, x, i), dout,
                         din, dweight, dbias, rows, r->scratch[i]);
        fr_trace_add(omp_get_thread_num(), l->name, parts == GRAD_INPUT ? "input-grad" : "backward",
                     -1, t0, 0);
    }
    if (din && (trainer->grad_adds[i] & 1u))
        fr_add_into(r->grads[trainer->grad_slot[l->input]], din,
                    (size_t)rows * fr_shape_numel(l->in));
}

static const void *target_rows(const fr_trainer *trainer, const void *targets, int first) {
    if (trainer->config.loss == FR_MSE)
        return (const float *)targets + (size_t)first * fr_model_output_numel(trainer->model);
    return (const int32_t *)targets + first;
}

/* The cache serves rows when the prefix is frozen and every row is in it. */
static bool rows_cached(const fr_trainer *trainer, const int *ids, int rows) {
    const feature_cache *c = &trainer->cache;
    if (c->layer < 0 || c->layer != trainer->first_trainable - 1 || !c->data)
        return false;
    for (int i = 0; i < rows; i++)
        if (ids[i] >= c->samples)
            return false;
    return true;
}

/*
 * Point the replica at its rows.  From a dataset it gathers them (or, when
 * the cache has them all, copies their prefix features into the prefix's
 * output buffer) and returns the layer forward starts at.
 */
static int take_rows(fr_trainer *trainer, replica *r, const batch_source *src, int first,
                     int rows) {
    const fr_model *model = trainer->model;
    if (!src->data) {
        r->x = src->x + (size_t)first * fr_model_input_numel(model);
        r->targets = target_rows(trainer, src->targets, first);
        return 0;
    }
    const int *ids = src->ids + first;
    const fr_dataset *data = src->data;
    size_t numel = fr_shape_numel(data->shape);
    for (int i = 0; i < rows; i++)
        r->gathered_labels[i] = data->labels[ids[i]];
    r->x = r->gathered_x;
    r->targets = r->gathered_labels;
    const feature_cache *c = &trainer->cache;
    if (rows_cached(trainer, ids, rows)) {
        float *features = (float *)layer_output(trainer, r, r->x, c->layer);
        for (int i = 0; i < rows; i++)
            memcpy(features + (size_t)i * c->numel, c->features + (size_t)ids[i] * c->numel,
                   c->numel * sizeof(float));
        return c->layer + 1;
    }
    for (int i = 0; i < rows; i++)
        memcpy(r->gathered_x + (size_t)i * numel, data->x + (size_t)ids[i] * numel,
               numel * sizeof(float));
    return 0;
}

/* Start a replica's share of a step: its rows taken, the layer its forward
 * starts at returned; -1 when it has no rows. */
static int replica_begin(fr_trainer *trainer, replica *r, const batch_source *src, int first,
                         int rows) {
    r->loss_sum = 0.0;
    r->correct = 0;
    r->bad_label = -1;
    r->step_rows = rows;
    r->first_row = first;
    return rows > 0 ? take_rows(trainer, r, src, first, rows) : -1;
}

/* After its forward: the replica's loss on its rows; returns whether it must
 * run backward (it has rows, a trainable parameter and valid labels).  A
 * replica without rows adds nothing to the slab backward overwrites. */
static bool replica_loss(fr_trainer *trainer, replica *r, int first, int batch, bool train) {
    const fr_model *model = trainer->model;
    int rows = r->step_rows, k = fr_model_output_numel(model);
    if (rows == 0) {
        if (train)
            memset(r->slab, 0, trainer->trainable_count * sizeof(float));
        return false;
    }
    const float *logits = layer_output(trainer, r, r->x, model->layer_count - 1);
    bool run_backward = train && trainer->first_trainable < model->layer_count;
    r->loss_sum = fr_loss(trainer->config.loss, logits, r->targets, rows, k, 1.0f / (float)batch,
                          run_backward ? output_grad(trainer, r, model->layer_count - 1) : NULL,
                          &r->correct, &r->bad_label);
    if (r->bad_label >= 0) {
        r->bad_label += first;
        return false;
    }
    return run_backward;
}

/* One replica's share of a step up to the loss (replica_loss's answer). */
static bool replica_forward(fr_trainer *trainer, replica *r, const batch_source *src, int first,
                            int rows, int batch, bool train) {
    int from = replica_begin(trainer, r, src, first, rows);
    forward(trainer, r, r->x, rows, from >= 0 ? from : 0, trainer->model->layer_count);
    return replica_loss(trainer, r, first, batch, train);
}

/*
 * Thread t's share of rows [row_lo, row_hi) of layer i's split weight
 * gradient: summed over the
 * replicas in replica order straight into replica 0's slab (the GEMM adds
 * each replica's product onto the rows).  The order is fixed, so the result
 * does not depend on timing; it can differ from adding whole per-replica
 * copies in the last bit of some values.
 */
static void split_weight_grad(const fr_trainer *trainer, int i, int t, int row_lo, int row_hi) {
    const fr_layer *l = &trainer->model->layers[i];
    const fr_param *p = &trainer->model->params[l->weight];
    int rows = row_hi - row_lo;
    size_t row_len = p->numel / (size_t)p->shape[0];
    /* Whole cache lines per thread where the rows allow it. */
    int per = (rows + trainer->threads - 1) / trainer->threads;
    while (per < rows && (size_t)per * row_len % SLAB_CHUNK_ALIGN)
        per++;
    int begin = row_lo + (t * per < rows ? t * per : rows);
    int end = begin + per < row_hi ? begin + per : row_hi;
    if (begin >= end)
        return;
    float *dweight = trainer->replicas[0].slab + trainer->slab_offsets[l->weight];
    bool written = false;
    for (int s = 0; s < trainer->threads; s++) {
        const replica *r = &trainer->replicas[s];
        if (!r->layer_dout)
            continue;
        l->ops->weight_grad_rows(l, layer_input(trainer, r, r->x, i), r->layer_dout, r->step_rows,
                                 dweight, begin, end, written);
        written = true;
    }
    if (!written)
        memset(dweight + (size_t)begin * row_len, 0, (size_t)(end - begin) * row_len * sizeof(float));
}

/*
 * Backward of layer i that gathered batch statistics (every thread calls it):
 * each replica's sums give its share of the parameters' gradients, and the
 * gradient at the input needs them summed over the whole batch.
 */
static void backward_batch_stats(fr_trainer *trainer, replica *r, bool active, int i, int parts) {
    const fr_model *model = trainer->model;
    const fr_layer *l = &model->layers[i];
    float *dout = output_grad(trainer, r, i);
    if (!trainer->needs_grad[i])
        return;
    int count = l->ops->stats_count(l);
    double *mine = trainer->stats_partial + (size_t)omp_get_thread_num() * (size_t)trainer->stats_max;
    const double *forward_sums = trainer->stats_saved + trainer->stats_offset[i];
    float *dweight = NULL, *dbias = NULL;
    if ((parts & GRAD_WEIGHTS) && l->weight >= 0 && model->params[l->weight].requires_grad)
        dweight = r->slab + trainer->slab_offsets[l->weight];
    if ((parts & GRAD_WEIGHTS) && l->bias >= 0 && model->params[l->bias].requires_grad)
        dbias = r->slab + trainer->slab_offsets[l->bias];
    const float *in = layer_input(trainer, r, r->x, i);
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    if (active) {
        if (parts & GRAD_WEIGHTS)
            r->backward_calls[i]++;
        l->ops->backward_sums(l, in, dout, r->step_rows, mine, dweight, dbias, forward_sums);
    } else {
        memset(mine, 0, (size_t)count * sizeof *mine);
    }
    if ((parts & GRAD_INPUT) && trainer->din_slot[i] >= 0) {
        meet_sums(trainer, count, trainer->stats_total);
        if (active) {
            float *din = r->grads[trainer->din_slot[i]];
            l->ops->backward_with(l, in, dout, din, r->step_rows, trainer->stats_total,
                                  forward_sums);
            if (trainer->grad_adds[i] & 1u)
                fr_add_into(r->grads[trainer->grad_slot[l->input]], din,
                            (size_t)r->step_rows * fr_shape_numel(l->in));
        }
    }
    fr_trace_add(omp_get_thread_num(), l->name, "backward", -1, t0, 0);
}

/*
 * Layer i's backward on every thread in step (every thread calls it, active
 * or not).  For a split weight gradient the threads meet once the gradient at
 * the layer's output is ready everywhere, each computes its rows, and they
 * meet again before any of them overwrites that gradient with the next
 * layer's.
 */
static void backward_in_step(fr_trainer *trainer, replica *r, bool active, int i, int parts) {
    if (parts & GRAD_WEIGHTS)
        r->layer_dout = active ? output_grad(trainer, r, i) : NULL;
    if (gathers_stats(trainer, i)) {
        backward_batch_stats(trainer, r, active, i, parts);
        return;
    }
    if (active)
        backward_layer(trainer, r, r->x, r->step_rows, i, parts);
    if (trainer->split_weight[i] && (parts & GRAD_WEIGHTS)) {
#pragma omp barrier
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        split_weight_grad(trainer, i, omp_get_thread_num(), 0,
                          trainer->model->params[trainer->model->layers[i].weight].shape[0]);
        fr_trace_add(omp_get_thread_num(), trainer->model->layers[i].name, "weight-grad", -1, t0, 0);
#pragma omp barrier
    }
}

/* ---------------------------------------------------------- optimizer */

/* The part [*lo, *hi) of slab range [begin, end) that segment seg covers;
 * false when they do not meet. */
static bool segment_part(const slab_segment *seg, size_t begin, size_t end, size_t *lo,
                         size_t *hi) {
    *lo = seg->slab_offset > begin ? seg->slab_offset : begin;
    *hi = seg->slab_offset + seg->numel < end ? seg->slab_offset + seg->numel : end;
    return *lo < *hi;
}

/* Apply the optimizer to slab range [begin, end); grad[0] is the gradient at
 * slab index `begin`.  `ahead` is 1 within the step (the parameters' step
 * counts are raised after it), 0 for the last step's pieces applied later. */
static void update_range(fr_trainer *trainer, const fr_train_config *config, const float *grad,
                         size_t begin, size_t end, long ahead) {
    fr_model *model = trainer->model;
    for (int s = 0; s < trainer->segment_count; s++) {
        const slab_segment *seg = &trainer->segments[s];
        size_t lo, hi;
        if (!segment_part(seg, begin, end, &lo, &hi))
            continue;
        fr_param *p = &model->params[seg->param];
        size_t within = lo - seg->slab_offset;
        fr_optim_update(config, trainer->param_steps[seg->param] + ahead, p->data + within,
                        grad + (lo - begin), trainer->state_m ? trainer->state_m + lo : NULL,
                        trainer->state_v ? trainer->state_v + lo : NULL, hi - lo);
    }
}

/* sum[0 .. end-begin) = the replicas' slabs over [begin, end), added in
 * replica order so the result does not depend on timing.  Split weight
 * gradients are already summed in replica 0's slab. */
static void reduce_range(const fr_trainer *trainer, float *sum, size_t begin, size_t end) {
    const float *first = trainer->replicas[0].slab;
    if (sum != first + begin)
        memcpy(sum, first + begin, (end - begin) * sizeof(float));
    for (int s = 0; s < trainer->segment_count; s++) {
        const slab_segment *seg = &trainer->segments[s];
        size_t lo, hi;
        if (seg->split || !segment_part(seg, begin, end, &lo, &hi))
            continue;
        float *to = sum + (lo - begin);
        for (int t = 1; t < trainer->threads; t++) {
            const float *part = trainer->replicas[t].slab + lo;
#pragma omp simd
            for (size_t j = 0; j < hi - lo; j++)
                to[j] += part[j];
        }
    }
}

/* On one rank: reduce and update a chunk block by block, the summed gradient
 * staying in cache between the two and never written back to a slab. */
#define FUSED_BLOCK 2048
static void reduce_and_update(fr_trainer *trainer, size_t begin, size_t end) {
    float block[FUSED_BLOCK];
    for (size_t lo = begin; lo < end; lo += FUSED_BLOCK) {
        size_t hi = lo + FUSED_BLOCK < end ? lo + FUSED_BLOCK : end;
        reduce_range(trainer, block, lo, hi);
        update_range(trainer, &trainer->config, block, lo, hi, 1);
    }
}

/* Thread t's chunk of slab range [from, to): whole cache lines each, so
 * threads never write the same line. */
static void chunk_of(const fr_trainer *trainer, int t, size_t from, size_t to, size_t *begin,
                     size_t *end) {
    size_t threads = (size_t)trainer->threads;
    size_t chunk = round_up((to - from + threads - 1) / threads, SLAB_CHUNK_ALIGN);
    *begin = from + chunk * (size_t)t;
    *end = *begin + chunk;
    if (*begin > to)
        *begin = to;
    if (*end > to)
        *end = to;
}

/* ---------------------------------------------------------------- step */

static int check_batch(const fr_trainer *trainer, const void *x, const void *targets, int batch,
                       fr_error *err) {
    if (!x || !targets)
        return fr_fail(err, FR_EINVAL, "step: no input or targets");
    if (batch <= 0 || batch > trainer->config.max_batch)
        return fr_fail(err, FR_EINVAL, "step: batch of %d samples, the trainer was made for 1 to %d",
                       batch, trainer->config.max_batch);
    return FR_OK;
}

static void local_loss_totals(const fr_trainer *trainer, double *totals) {
    for (int k = 0; k < LOSS_TOTALS; k++)
        totals[k] = 0.0;
    totals[3] = trainer->stop_flag && *trainer->stop_flag ? 1.0 : 0.0;
    if (trainer->check_replicas) {
        /* The weights as this step runs them: every update applied. */
        uint64_t hash = fr_model_checksum(trainer->model);
        for (int k = 0; k < CHECK_PARTS; k++) {
            double part = (double)((hash >> (CHECK_BITS * k)) & ((1u << CHECK_BITS) - 1));
            totals[CHECK_AT + k] = part;
            totals[CHECK_AT + CHECK_PARTS + k] = part * part;
        }
    }
    for (int t = 0; t < trainer->threads; t++) {
        totals[0] += trainer->replicas[t].loss_sum;
        totals[1] += (double)trainer->replicas[t].correct;
        totals[2] += trainer->replicas[t].bad_label >= 0;
    }
}

/* The totals over every rank: the mean loss and correct count, or which
 * sample had a bad label. */
static int check_loss_totals(fr_trainer *trainer, const double *totals, int batch,
                             double *loss, long *correct, fr_error *err) {
    trainer->stop_agreed = trainer->stop_agreed || totals[3] > 0;
    if (trainer->check_replicas) {
        trainer->check_replicas = false;
        double n = fr_comm_size();
        for (int k = 0; k < CHECK_PARTS; k++) {
            double sum = totals[CHECK_AT + k], squares = totals[CHECK_AT + CHECK_PARTS + k];
            if (n * squares != sum * sum)
                return fr_fail(err, FR_ECOMM,
                               "the ranks' weights differ at step %ld (checked as it started); every rank must run the same command, and a rank may not change its weights alone",
                               trainer->steps_done + 1);
        }
    }
    if (totals[2] > 0) {
        for (int t = 0; t < trainer->threads; t++)
            if (trainer->replicas[t].bad_label >= 0)
                return fr_fail(err, FR_EINVAL, "sample %d of the batch has a label outside [0, %d)",
                               trainer->replicas[t].bad_label,
                               fr_model_output_numel(trainer->model));
        return fr_fail(err, FR_EINVAL, "a sample of another rank's rows has a label outside [0, %d)",
                       fr_model_output_numel(trainer->model));
    }
    if (loss)
        *loss = totals[0] / batch;
    if (correct)
        *correct = (long)totals[1];
    return FR_OK;
}

static int check_finite_loss(const fr_trainer *trainer, double loss, fr_error *err) {
    if (isfinite(loss))
        return FR_OK;
    return fr_fail(err, FR_ENONFINITE, "the loss is %g at step %ld", loss, trainer->steps_done + 1);
}

/* Sum the replicas' loss and correct counts, then over ranks. */
static int total_loss(fr_trainer *trainer, int batch, double *loss, long *correct,
                      fr_error *err) {
    double totals[LOSS_TOTALS];
    local_loss_totals(trainer, totals);
    int rc = fr_comm_allreduce_doubles(totals, LOSS_TOTALS, err);
    if (rc != FR_OK)
        return rc;
    return check_loss_totals(trainer, totals, batch, loss, correct, err);
}

/* Train mode (batch statistics, dropout masks) for the layers that have one
 * and are not frozen: a frozen layer, like the frozen prefix, computes what
 * it computes in evaluation, so its buffers never change. */
static void set_modes(fr_trainer *trainer, bool train) {
    fr_model *model = trainer->model;
    for (int i = 0; i < model->layer_count; i++) {
        fr_layer *l = &model->layers[i];
        l->training = train && (l->ops->stats_count || l->ops->forward_at) &&
                      !fr_model_layer_frozen(model, i);
    }
    trainer->stats_status = FR_OK;
}

/* A valid batch, the updates of another trainer of the model applied, and
 * the slab laid out for the current frozen set (this trainer's updates in
 * flight applied first, with the plan they were made with). */
static int prepare_step(fr_trainer *trainer, const void *x, const void *targets, int batch,
                        bool train, fr_error *err) {
    int rc = check_batch(trainer, x, targets, batch, err);
    if (rc == FR_OK && trainer->model->in_flight && trainer->model->in_flight != trainer)
        rc = fr_trainer_sync(trainer->model->in_flight, err);
    if (rc == FR_OK && frozen_set_changed(trainer))
        rc = fr_trainer_sync_plan(trainer, err);
    set_modes(trainer, train);
    return rc;
}

/* After the step's backward: the replicas' loss totals, checked finite. */
static int finish_loss(fr_trainer *trainer, int batch, double *loss, long *correct,
                       fr_error *err) {
    int status = total_loss(trainer, batch, loss, correct, err);
    return status == FR_OK ? check_finite_loss(trainer, *loss, err) : status;
}

/*
 * One rank: every replica runs forward and backward, then each thread sums its
 * chunk of the slabs and updates the parameters under it, fused.
 */
static int step_one_rank(fr_trainer *trainer, const batch_source *src, int batch, double *loss,
                         long *correct, fr_error *err) {
    int status = FR_OK;
#pragma omp parallel num_threads(trainer->threads)
    {
        int t = omp_get_thread_num(), first, rows;
        split_rows(batch, trainer->threads, t, &first, &rows);
        replica *r = &trainer->replicas[t];
        bool active = replica_forward(trainer, r, src, first, rows, batch, true);
#pragma omp barrier
#pragma omp single
        status = finish_loss(trainer, batch, loss, correct, err);
        /* (the single's barrier: every thread sees the status) */
        for (int i = trainer->model->layer_count - 1;
             status == FR_OK && i >= trainer->first_trainable; i--)
            backward_in_step(trainer, r, active, i, GRAD_BOTH);
#pragma omp barrier
        size_t begin, end;
        chunk_of(trainer, t, 0, trainer->trainable_count, &begin, &end);
        if (status == FR_OK) {
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            reduce_and_update(trainer, begin, end);
            fr_trace_add(t, "slab", "reduce+update", -1, t0, 0);
        }
    }
    return status;
}

/* ------------------------------------------------- updates in flight */

/* Start the sum of piece k (main thread). */
static int start_piece(fr_trainer *trainer, int k, fr_error *err) {
    bool bf16 = trainer->config.grad_dtype == FR_GRAD_BF16;
    piece *p = &trainer->pieces[k];
    trainer->bytes_sent += (p->end - p->begin) * (bf16 ? sizeof(uint16_t) : sizeof(float));
    return fr_comm_start_sum(trainer->replicas[0].slab + p->begin, p->end - p->begin, bf16, k,
                             &p->ticket, err);
}

/* Piece k is complete (main thread): an early piece goes now; after the
 * step's last piece the others go, the last buckets' first. */
static int piece_complete(fr_trainer *trainer, int k, fr_error *err) {
    int rc = trainer->pieces[k].early ? start_piece(trainer, k, err) : FR_OK;
    if (rc != FR_OK || k != trainer->buckets[trainer->bucket_count - 1].first_piece +
                                 trainer->buckets[trainer->bucket_count - 1].pieces - 1)
        return rc;
    for (int b = trainer->bucket_count - 2; b >= 0 && rc == FR_OK; b--)
        for (int j = 0; j < trainer->buckets[b].pieces && rc == FR_OK; j++)
            if (!trainer->pieces[trainer->buckets[b].first_piece + j].early)
                rc = start_piece(trainer, trainer->buckets[b].first_piece + j, err);
    return rc;
}

/*
 * Apply the last step's pieces for `layer` and `block` (every thread calls
 * it, in step): the main thread waits for each sum, then each thread updates
 * its chunk.  The closing barrier keeps every thread from reading the
 * parameters before they are updated.
 */
static void apply_pieces(fr_trainer *trainer, int layer, int block, int *status, fr_error *err) {
    int t = omp_get_thread_num();
    for (int k = 0; k < trainer->piece_count; k++) {
        const piece *p = &trainer->pieces[k];
        if (p->layer != layer || p->block != block)
            continue;
#pragma omp master
        {
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            if (fr_comm_finish_sum(p->ticket, err) != FR_OK && *status == FR_OK)
                *status = err ? err->status : FR_ECOMM;
            fr_trace_add(t, "bucket", "wait", k, t0, 0);
        }
#pragma omp barrier
        size_t begin, end;
        chunk_of(trainer, t, p->begin, p->end, &begin, &end);
        if (*status == FR_OK) {
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            /* Applied within its own step (sync_updates), the step counts
             * are not raised yet. */
            long ahead = trainer->steps_done < trainer->in_flight_step ? 1 : 0;
            update_range(trainer, &trainer->in_flight_config, trainer->replicas[0].slab + begin,
                         begin, end, ahead);
            fr_trace_add(t, "bucket", "update", k, t0, 0);
        }
    }
#pragma omp barrier
}

/* Wait for every piece in flight without applying it (a failed step). */
static void drop_in_flight(fr_trainer *trainer) {
    for (int k = 0; k < trainer->piece_count; k++)
        fr_comm_finish_sum(trainer->pieces[k].ticket, NULL);
    trainer->in_flight = false;
    if (trainer->model->in_flight == trainer)
        trainer->model->in_flight = NULL;
}

int fr_trainer_sync(fr_trainer *trainer, fr_error *err) {
    if (!trainer || !trainer->in_flight)
        return FR_OK;
    int status = FR_OK;
    fr_error local = {0};
    if (trainer->model->in_flight == trainer)
        trainer->model->in_flight = NULL;
    trainer->in_flight = false;
#pragma omp parallel num_threads(trainer->threads)
    for (int i = trainer->first_trainable; i < trainer->model->layer_count; i++)
        for (int j = -1; j < trainer->row_blocks[i]; j++)
            apply_pieces(trainer, i, j, &status, &local);
    if (status != FR_OK && err)
        *err = local;
    return status;
}

/*
 * Several ranks, layers [from, to) of the forward: each layer (or block of a
 * blocked layer's outputs) runs once the last step's pieces it needs are
 * applied, so forward starts while the last pieces are still on the wire.
 * Every thread calls it; one without rows (from < 0) only meets the
 * barriers.  Blocked layers always run by blocks, in flight or not, so the
 * arithmetic does not depend on it.
 */
static void forward_applying(fr_trainer *trainer, replica *r, int from, bool applying,
                             int *status, fr_error *err) {
    const fr_model *model = trainer->model;
    /* A thread without rows still meets the others at batch statistics. */
    int at = from >= 0 ? from : 0, rows = r->step_rows;
    for (int i = trainer->first_trainable; i < model->layer_count; i++) {
        int blocks = trainer->row_blocks[i];
        bool waits = false;
        for (int k = 0; applying && k < trainer->piece_count && !waits; k++)
            waits = trainer->pieces[k].layer == i;
        if (!waits && blocks == 0)
            continue;
        if (at < i) {
            forward(trainer, r, r->x, rows, at, i);
            at = i;
        }
        if (blocks == 0) {
            apply_pieces(trainer, i, -1, status, err);
            continue;
        }
        const fr_layer *l = &model->layers[i];
        for (int j = 0; j < blocks; j++) {
            if (applying)
                apply_pieces(trainer, i, j, status, err);
            int lo, hi;
            block_rows(trainer, i, j, &lo, &hi);
            if (rows > 0) {
                double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
                l->ops->forward_rows(l, layer_input(trainer, r, r->x, i),
                                     (float *)layer_output(trainer, r, r->x, i), rows, lo, hi);
                fr_trace_add(omp_get_thread_num(), l->name, "forward", j, t0, 0);
            }
        }
        at = i + 1;
    }
    if (at < model->layer_count)
        forward(trainer, r, r->x, rows, at, model->layer_count);
}

/*
 * Several ranks, the gradients of layer i's parameters when it closes
 * bucket k, and the bucket's pieces as they complete: a blocked weight row
 * block by row block (the threads split each block's rows, summing over
 * every replica into replica 0's slab), each block's piece reduced and sent
 * before the next block is computed; otherwise the whole layer, then its
 * pieces.  Every thread calls it.
 */
static void weights_and_pieces(fr_trainer *trainer, replica *r, bool active, int i, int k,
                               int *status, fr_error *err) {
    const bucket *b = &trainer->buckets[k];
    float *reduced = trainer->replicas[0].slab;
    int t = omp_get_thread_num(), blocks = trainer->row_blocks[i];
    if (blocks == 0) {
        backward_in_step(trainer, r, active, i, GRAD_WEIGHTS);
    } else {
        /* The bias (the weight is computed by rows below). */
        r->layer_dout = active ? output_grad(trainer, r, i) : NULL;
        if (active)
            backward_layer(trainer, r, r->x, r->step_rows, i, GRAD_WEIGHTS);
    }
    for (int j = 0; j < b->pieces; j++) {
        const piece *p = &trainer->pieces[b->first_piece + j];
#pragma omp barrier
        if (blocks > 0) {
            int lo, hi;
            block_rows(trainer, i, j, &lo, &hi);
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            split_weight_grad(trainer, i, t, lo, hi);
            fr_trace_add(t, trainer->model->layers[i].name, "weight-grad", j, t0, 0);
#pragma omp barrier
        }
        /* Pieces of a bucket that is not blocked are all complete now; the
         * others become complete block by block. */
        size_t begin, end;
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        chunk_of(trainer, t, p->begin, p->end, &begin, &end);
        reduce_range(trainer, reduced + begin, begin, end);
        fr_trace_add(t, "bucket", "reduce", b->first_piece + j, t0, 0);
#pragma omp barrier
#pragma omp master
        if (*status == FR_OK && piece_complete(trainer, b->first_piece + j, err) != FR_OK)
            *status = err ? err->status : FR_ECOMM;
    }
}

/*
 * Several ranks.  Forward first applies the last step's updates, each just
 * before the first layer (or block of outputs) that needs it, so it starts
 * while the last pieces are still on the wire.  The loss totals go to the
 * communication thread as soon as forward is done.  Backward runs layer by
 * layer in step on every thread; when it has passed the layer that
 * completes a bucket, the threads sum that bucket's pieces of their slabs
 * into replica 0's and the main thread hands them to the communication
 * thread (allreduce.c), which sends them while backward goes on.  The step
 * returns once its loss is known; its updates stay in flight.  The workers
 * never call MPI themselves; every thread meets every barrier.
 */
static int step_many_ranks(fr_trainer *trainer, const batch_source *src, int batch, double *loss,
                           long *correct, fr_error *err) {
    int rank_first, rank_rows, status = FR_OK;
    fr_trainer_rank_rows(trainer, batch, &rank_first, &rank_rows);
    double *totals = trainer->loss_totals;
    long loss_ticket = -1;
    bool applying = trainer->in_flight;
    if (trainer->model->in_flight == trainer)
        trainer->model->in_flight = NULL;
    trainer->in_flight = false;
#pragma omp parallel num_threads(trainer->threads)
    {
        int t = omp_get_thread_num(), first, rows;
        split_rows(rank_rows, trainer->threads, t, &first, &rows);
        first += rank_first;
        replica *r = &trainer->replicas[t];
        int from = replica_begin(trainer, r, src, first, rows);
        forward_applying(trainer, r, from, applying, &status, err);
        bool active = replica_loss(trainer, r, first, batch, true);
#pragma omp barrier
#pragma omp master
        {
            local_loss_totals(trainer, totals);
            if (status == FR_OK &&
                fr_comm_start_sum_doubles(totals, LOSS_TOTALS, &loss_ticket, err) != FR_OK)
                status = err ? err->status : FR_ECOMM;
        }
        int next = 0;
        for (int i = trainer->model->layer_count - 1; i >= trainer->first_trainable; i--) {
            /* A layer that completes a bucket computes its parameters'
             * gradients first, so the bucket leaves before the (as costly)
             * gradient for the layer below is computed. */
            if (next < trainer->bucket_count && trainer->buckets[next].ready_after_layer == i) {
                weights_and_pieces(trainer, r, active, i, next, &status, err);
                next++;
                backward_in_step(trainer, r, active, i, GRAD_INPUT);
            } else {
                backward_in_step(trainer, r, active, i, GRAD_BOTH);
            }
        }
    }
    if (status == FR_OK && trainer->stats_status != FR_OK) {
        status = trainer->stats_status;
        if (err)
            *err = trainer->stats_err;
    }
    /* The loss is summed ahead of the pieces, so this wait is short. */
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    if (loss_ticket >= 0 && fr_comm_finish_sum(loss_ticket, err) != FR_OK && status == FR_OK)
        status = err ? err->status : FR_ECOMM;
    fr_trace_add(0, "loss", "wait", -1, t0, 0);
    if (status == FR_OK)
        status = check_loss_totals(trainer, totals, batch, loss, correct, err);
    if (status == FR_OK)
        status = check_finite_loss(trainer, *loss, err);
    if (status != FR_OK) {
        drop_in_flight(trainer);
        return status;
    }
    trainer->in_flight = trainer->piece_count > 0;
    trainer->in_flight_config = trainer->config;
    trainer->in_flight_step = trainer->steps_done + 1;
    if (trainer->in_flight) {
        trainer->model->in_flight = trainer;
        trainer->model->sync_in_flight = fr_trainer_sync;
    }
    return trainer->config.sync_updates ? fr_trainer_sync(trainer, err) : FR_OK;
}

static int run_step(fr_trainer *trainer, const batch_source *src, int batch, double *loss,
                    long *correct, fr_error *err) {
    double step_loss = 0.0;
    long step_correct = 0;
    fr_error step_err = {0};
    fr_trace_set_step(trainer->steps_done);
    int rc = fr_comm_size() == 1
                 ? step_one_rank(trainer, src, batch, &step_loss, &step_correct, &step_err)
                 : step_many_ranks(trainer, src, batch, &step_loss, &step_correct, &step_err);
    if (rc != FR_OK) {
        if (err)
            *err = step_err;
        return rc;
    }
    for (int i = 0; i < trainer->model->param_count; i++)
        if (trainer->model->params[i].requires_grad)
            trainer->param_steps[i]++;
    trainer->steps_done++;
    if (loss)
        *loss = step_loss;
    if (correct)
        *correct = step_correct;
    return FR_OK;
}

int fr_trainer_step(fr_trainer *trainer, const float *x, const void *targets, int batch,
                    double *loss, long *correct, fr_error *err) {
    int rc = prepare_step(trainer, x, targets, batch, true, err);
    if (rc != FR_OK)
        return rc;
    batch_source src = {.x = x, .targets = targets};
    return run_step(trainer, &src, batch, loss, correct, err);
}

/*
 * Fill the cache in fixed chunks of the dataset, in index order: a sample's
 * features then depend only on its chunk, never on the batch or epoch that
 * first met it, so a resumed run sees exactly the features the uninterrupted
 * run used.
 */
static void fill_cache(fr_trainer *trainer, const fr_dataset *data) {
    feature_cache *c = &trainer->cache;
    int chunk = trainer->replicas[0].rows_cap < 32 ? trainer->replicas[0].rows_cap : 32;
    int chunks = (c->samples + chunk - 1) / chunk;
    size_t sample_numel = fr_shape_numel(data->shape);
#pragma omp parallel for num_threads(trainer->threads) schedule(static)
    for (int k = 0; k < chunks; k++) {
        replica *r = &trainer->replicas[omp_get_thread_num()];
        int first = k * chunk, rows = c->samples - first < chunk ? c->samples - first : chunk;
        memcpy(r->gathered_x, data->x + (size_t)first * sample_numel,
               (size_t)rows * sample_numel * sizeof(float));
        forward(trainer, r, r->gathered_x, rows, 0, c->layer + 1);
        memcpy(c->features + (size_t)first * c->numel,
               layer_output(trainer, r, r->gathered_x, c->layer),
               (size_t)rows * c->numel * sizeof(float));
    }
    c->data = data;
}

/*
 * Size the feature cache for this dataset and frozen prefix (as many samples
 * as the budget holds, from index 0) and fill it.  Nothing is cached when the
 * prefix is empty, moves no data (a lone flatten), or ends inside a residual
 * block.
 */
static int plan_cache(fr_trainer *trainer, const fr_dataset *data, fr_error *err) {
    feature_cache *c = &trainer->cache;
    int layer = trainer->first_trainable - 1;
    if (!c->enabled || layer < 0 || trainer->first_trainable >= trainer->model->layer_count) {
        c->layer = -1;
        return FR_OK;
    }
    bool moves_data = false;
    for (int i = 0; i <= layer; i++)
        moves_data |= !trainer->shares_input[i];
    /* The suffix must need nothing of the prefix but its last output: a cut
     * through a residual block (a trainable shortcut reading the block's
     * input, say) caches nothing. */
    bool clean_cut = true;
    for (int i = trainer->first_trainable; i < trainer->model->layer_count; i++)
        for (int k = 0; k < 2; k++) {
            int in = input_of(&trainer->model->layers[i], k);
            clean_cut = clean_cut && (in == -2 || in >= layer);
        }
    size_t numel = fr_shape_numel(trainer->model->layers[layer].out);
    size_t samples = numel ? c->budget_bytes / (numel * sizeof(float)) : 0;
    if (samples > (size_t)data->n)
        samples = (size_t)data->n;
    if (!moves_data || !clean_cut || samples == 0) {
        c->layer = -1;
        return FR_OK;
    }
    if (c->layer == layer && c->numel == numel && c->samples == (int)samples) {
        if (c->data != data)
            fill_cache(trainer, data);
        return FR_OK;
    }
    fr_free(c->features);
    c->data = NULL;
    c->features = fr_alloc(samples * numel * sizeof(float));
    if (!c->features) {
        c->layer = -1;
        return fr_fail(err, FR_ENOMEM, "out of memory for a feature cache of %zu MB",
                       samples * numel * sizeof(float) >> 20);
    }
    c->layer = layer;
    c->numel = numel;
    c->samples = (int)samples;
    fill_cache(trainer, data);
    return FR_OK;
}

int fr_trainer_step_samples(fr_trainer *trainer, const fr_dataset *data, const int *ids,
                            int batch, double *loss, long *correct, fr_error *err) {
    int rc = prepare_step(trainer, data, ids, batch, true, err);
    if (rc != FR_OK)
        return rc;
    if (fr_dataset_sample_numel(data) != fr_model_input_numel(trainer->model))
        return fr_fail(err, FR_ESHAPE, "step: samples have %d values, the model takes %d",
                       fr_dataset_sample_numel(data), fr_model_input_numel(trainer->model));
    for (int i = 0; i < batch; i++)
        if (ids[i] < 0 || ids[i] >= data->n)
            return fr_fail(err, FR_EINVAL, "step: sample index %d outside the dataset of %d",
                           ids[i], data->n);
    if (trainer->cache.enabled && (rc = plan_cache(trainer, data, err)) != FR_OK)
        return rc;
    batch_source src = {.data = data, .ids = ids};
    return run_step(trainer, &src, batch, loss, correct, err);
}

size_t fr_trainer_cache_bytes(const fr_trainer *trainer) {
    const feature_cache *c = &trainer->cache;
    return c->layer >= 0 ? (size_t)c->samples * c->numel * sizeof(float) : 0;
}

int fr_trainer_evaluate(fr_trainer *trainer, const float *x, const void *targets, int batch,
                        double *loss, long *correct, fr_error *err) {
    int rc = prepare_step(trainer, x, targets, batch, false, err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(trainer, err);
    if (rc != FR_OK)
        return rc;
    int rank_first, rank_rows;
    fr_trainer_rank_rows(trainer, batch, &rank_first, &rank_rows);
    batch_source src = {.x = x, .targets = targets};
#pragma omp parallel num_threads(trainer->threads)
    {
        int t = omp_get_thread_num(), first, rows;
        split_rows(rank_rows, trainer->threads, t, &first, &rows);
        replica_forward(trainer, &trainer->replicas[t], &src, rank_first + first, rows, batch,
                        false);
    }
    return total_loss(trainer, batch, loss, correct, err);
}

/* ----------------------------------------------------------- reporting */

long fr_trainer_steps_done(const fr_trainer *trainer) { return trainer->steps_done; }
int fr_trainer_threads(const fr_trainer *trainer) { return trainer->threads; }

size_t fr_trainer_gradient_bytes(const fr_trainer *trainer) {
    return (size_t)trainer->threads * trainer->trainable_count * sizeof(float);
}

size_t fr_trainer_optimizer_bytes(const fr_trainer *trainer) {
    return (size_t)fr_optim_state_per_value(&trainer->config) * trainer->trainable_count *
           sizeof(float);
}

size_t fr_trainer_allreduce_bytes(const fr_trainer *trainer) {
    size_t element = trainer->config.grad_dtype == FR_GRAD_BF16 ? sizeof(uint16_t) : sizeof(float);
    return fr_model_trainable_numel(trainer->model) * element;
}

size_t fr_trainer_bytes_sent(const fr_trainer *trainer) { return trainer->bytes_sent; }

long fr_trainer_layer_backward_calls(const fr_trainer *trainer, int layer) {
    if (layer < 0 || layer >= trainer->model->layer_count)
        return 0;
    long total = 0;
    for (int t = 0; t < trainer->threads; t++)
        total += trainer->replicas[t].backward_calls[layer];
    return total;
}

/* ------------------------------------------------- state for checkpoints */

float *fr_trainer_param_state(fr_trainer *trainer, int which, int param) {
    float *state = which == 0 ? trainer->state_m : trainer->state_v;
    if (!state || param < 0 || param >= trainer->model->param_count ||
        !trainer->planned_requires_grad[param])
        return NULL;
    return state + trainer->slab_offsets[param];
}

/* The update in flight applied (with the plan it was made with), then the
 * slab laid out for the current frozen set. */
int fr_trainer_sync_plan(fr_trainer *trainer, fr_error *err) {
    int rc = fr_trainer_sync(trainer, err);
    if (rc == FR_OK && frozen_set_changed(trainer))
        rc = plan(trainer, err);
    return rc;
}

void fr_trainer_check_replicas(fr_trainer *trainer) { trainer->check_replicas = true; }

void fr_trainer_watch_stop(fr_trainer *trainer, const volatile sig_atomic_t *flag) {
    trainer->stop_flag = flag;
}
bool fr_trainer_stop_requested(const fr_trainer *trainer) { return trainer->stop_agreed; }
long *fr_trainer_param_steps(fr_trainer *trainer) { return trainer->param_steps; }
void fr_trainer_set_steps_done(fr_trainer *trainer, long steps) { trainer->steps_done = steps; }
const fr_train_config *fr_trainer_config(const fr_trainer *trainer) { return &trainer->config; }
fr_model *fr_trainer_model(const fr_trainer *trainer) { return trainer->model; }
