/*
 * train.c - the training step: DESIGN.md's data path, top to bottom.
 *
 *   global batch B ──► this rank's rows ──► one contiguous slice per thread
 *   each thread (a replica): forward with the shared weights, loss on its
 *       slice, backward down to the first layer with a trainable parameter,
 *       weight gradients of trainable parameters into its own slab.  With
 *       fewer than FEATURE_SPLIT_ROWS rows per thread, a linear layer's
 *       forward and input gradient are split by features instead: the
 *       replicas' slices of the rank-wide activations are then one matrix,
 *       and each thread computes a block of features for all the rank's rows,
 *       between two meetings (plan_step_rows, forward_by_features,
 *       input_grad_by_features)
 *   threads: the slabs are summed in parallel, each thread one chunk.  A
 *       linear layer's weight gradient is instead split by rows: the threads
 *       meet after the layer's backward and each sums its rows over all
 *       replicas into replica 0's slab (one pass less over the largest
 *       gradients, and no whole copy per thread to write).  A large weight
 *       gradient that cannot be split (conv2d's) is staged: summed into
 *       replica 0's slab right after its layer, so the other replicas need
 *       room for one such weight, not all.  Only replica 0 has a whole slab
 *       (plan.c, plan_replica_slabs)
 *   ranks:   the slab in buckets, summed by the communication thread
 *            (allreduce.c) while backward goes on (trainable only)
 *   optimizer: trainable parameters only, over the same chunks; on several
 *            ranks during the next step's forward (updates in flight); each
 *            parameter at its step's rate (lr_schedule.c); with gradient
 *            clipping only once the whole sum and its norm are known
 *
 * One pipeline (step_pipeline) runs a step on one rank and on many, and
 * checks the loss at the same moment in both.  On one rank the thread
 * reduction and the optimizer are fused: a thread sums its chunk of the slabs
 * and updates the parameters under it at once.
 *
 * The gradient slab holds the trainable parameters' gradients in the order
 * backward produces them (last layer first); the optimizer state arrays use
 * the same layout, so frozen parameters cost neither.  Its layout, and
 * everything else a step needs, is planned and allocated by plan.c when the
 * trainer is made or when the frozen set changes; cache.c keeps the frozen
 * prefix's features.
 */
#include "trainer.h"

#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------- forward, backward */

/* Every thread of the step's team waits here for the others (barrier.c:
 * OpenMP's barrier spins long enough to take a shared core from the thread
 * it waits for). */
static void meet(fr_trainer *trainer) {
    fr_barrier_wait(&trainer->barrier, omp_get_num_threads());
}

/*
 * Where replica r's rows start in a rank-wide buffer (trainer.h, replica)
 * holding rows of `width` floats, `buffer_width` those of its widest user.
 * Split by features, the replicas' slices of a layer's buffer are one matrix
 * over the rank's rows; otherwise each replica keeps to a region of its own,
 * so that a thread ahead of the others, writing the next layer's rows of
 * another width into a buffer that layers share, never overwrites theirs.
 */
static size_t slice_offset(const fr_trainer *trainer, const replica *r, size_t width,
                           size_t buffer_width) {
    if (trainer->feature_split)
        return (size_t)r->local_first * width;
    return (size_t)r->index * (size_t)r->rows_cap * buffer_width;
}

void fr_step_place(const fr_trainer *trainer, replica *r, int local_first) {
    size_t numel = fr_shape_numel(trainer->model->input);
    r->local_first = local_first;
    r->gathered_x = trainer->gathered_x_base + slice_offset(trainer, r, numel, numel);
    size_t targets = (size_t)trainer->target_width;
    r->gathered_labels = trainer->gathered_labels_base + slice_offset(trainer, r, targets, targets);
}

/* The buffer holding layer j's output (-1: the input rows x): sharing
 * layers are walked back to the one that holds the data. */
static const float *output_of(const fr_trainer *trainer, const replica *r, const float *x, int j) {
    while (j >= 0 && trainer->shares_input[j])
        j = trainer->model->layers[j].input;
    if (j < 0)
        return x;
    size_t width = fr_shape_numel(trainer->model->layers[j].out);
    return trainer->output_base[j] + slice_offset(trainer, r, width, trainer->output_width[j]);
}

/* Replica r's rows of gradient slot `slot`, holding a gradient of `width`
 * floats per row. */
static float *slot_rows(const fr_trainer *trainer, const replica *r, int slot, size_t width) {
    return trainer->grad_base[slot] + slice_offset(trainer, r, width, trainer->grad_width);
}

/* The rank's whole matrix that replica r's slice `rows` (of `width` floats
 * per row) belongs to, split by features. */
static float *rank_matrix(const replica *r, const float *rows, size_t width) {
    return (float *)rows - (size_t)r->local_first * width;
}

static const float *layer_input(const fr_trainer *trainer, const replica *r, const float *x,
                                int i) {
    return output_of(trainer, r, x, trainer->model->layers[i].input);
}

const float *fr_step_output(const fr_trainer *trainer, const replica *r, const float *x, int i) {
    return output_of(trainer, r, x, i);
}

/*
 * Thread t's place for layer i's meeting in forward or in backward: its
 * partial sums, or its copy of the batch's sums (those of forward are kept
 * for the layer's backward).  Every meeting of a step has places of its own,
 * so a thread that has gone on to the next meeting never overwrites partial
 * sums a slower one is still adding.
 */
enum { FORWARD_MEETING, BACKWARD_MEETING };
enum { PARTIAL_SUMS, BATCH_SUMS };

/* Thread t's block [*begin, *end) of features [lo, hi) in a split by
 * features: whole cache lines of each row where the features allow. */
static void feature_block(const fr_trainer *trainer, int t, int lo, int hi, int *begin, int *end) {
    int per = (int)round_up((size_t)((hi - lo + trainer->threads - 1) / trainer->threads),
                            SLAB_CHUNK_ALIGN);
    *begin = lo + t * per < hi ? lo + t * per : hi;
    *end = *begin + per < hi ? *begin + per : hi;
}

/* Whether layer i's forward, or the gradient at its input, runs split by
 * features in this step: the layer has the operations, and enough features
 * for a cache line per thread. */
static bool splits_forward(const fr_trainer *trainer, int i) {
    const fr_layer *l = &trainer->model->layers[i];
    return trainer->feature_split && fr_layer_runs_by_rows(l) && l->ops->input_grad_cols &&
           l->out.ndim == 1 &&
           fr_shape_numel(l->out) >= (size_t)SLAB_CHUNK_ALIGN * (size_t)trainer->threads;
}

static bool splits_input_grad(const fr_trainer *trainer, int i) {
    const fr_layer *l = &trainer->model->layers[i];
    return trainer->feature_split && fr_layer_runs_by_rows(l) && l->ops->input_grad_cols &&
           l->out.ndim == 1 &&
           fr_shape_numel(l->in) >= (size_t)SLAB_CHUNK_ALIGN * (size_t)trainer->threads;
}

/* Thread t's block of outputs [lo, hi) of layer i, for all the rank's rows
 * (every thread calls it between two meetings: every replica's input rows
 * are written, and nobody reads the outputs until all are). */
static void forward_by_features(fr_trainer *trainer, replica *r, const float *x, int i, int lo,
                                int hi) {
    const fr_layer *l = &trainer->model->layers[i];
    int begin, end;
    feature_block(trainer, omp_get_thread_num(), lo, hi, &begin, &end);
    if (begin >= end || trainer->rank_rows == 0)
        return;
    const float *in = rank_matrix(r, layer_input(trainer, r, x, i), fr_shape_numel(l->in));
    float *out = rank_matrix(r, fr_step_output(trainer, r, x, i), fr_shape_numel(l->out));
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    l->ops->forward_rows(l, in, out, trainer->rank_rows, begin, end);
    fr_trace_add(omp_get_thread_num(), l->name, "forward", -1, t0, 0);
    r->feature_split_calls[i]++;
}

static double *stats_at(const fr_trainer *trainer, int t, int i, int meeting, int what) {
    size_t region = (size_t)t * 4 + (size_t)what * 2 + (size_t)meeting;
    return trainer->stats + region * trainer->stats_size + (size_t)trainer->stats_offset[i];
}

/*
 * Every thread in step, at layer i's meeting: the replicas' partial sums
 * added in replica order into this thread's copy of the batch's sums, which
 * it returns.  On one rank that takes one barrier.  On several the main
 * thread's copy is summed over the ranks by the communication thread, and
 * after a second barrier the others copy it.  The order is fixed, so every
 * thread has the same bits, whatever the timing or the split of the batch.
 */
static const double *meet_sums(fr_trainer *trainer, int i, int meeting) {
    const fr_layer *l = &trainer->model->layers[i];
    int count = l->ops->stats_count(l), me = omp_get_thread_num();
    double *total = stats_at(trainer, me, i, meeting, BATCH_SUMS);
    meet(trainer);
    for (int k = 0; k < count; k++) {
        double sum = 0.0;
        for (int t = 0; t < trainer->threads; t++)
            sum += stats_at(trainer, t, i, meeting, PARTIAL_SUMS)[k];
        total[k] = sum;
    }
    if (fr_comm_size() > 1) {
#pragma omp master
        {
            if (trainer->stats_status == FR_OK &&
                fr_comm_sum_doubles(total, count, &trainer->stats_err) != FR_OK)
                trainer->stats_status =
                    trainer->stats_err.status ? trainer->stats_err.status : FR_ECOMM;
        }
        meet(trainer);
        if (me != 0)
            memcpy(total, stats_at(trainer, 0, i, meeting, BATCH_SUMS),
                   (size_t)count * sizeof *total);
    }
    return total;
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
    double *mine = stats_at(trainer, omp_get_thread_num(), i, FORWARD_MEETING, PARTIAL_SUMS);
    const float *in = layer_input(trainer, r, x, i);
    if (rows > 0)
        l->ops->forward_sums(l, in, rows, mine);
    else
        memset(mine, 0, (size_t)count * sizeof *mine);
    const double *total = meet_sums(trainer, i, FORWARD_MEETING);
#pragma omp master
    l->ops->commit(l, total);
    if (rows > 0)
        l->ops->forward_with(l, in, (float *)fr_step_output(trainer, r, x, i), rows, total,
                             r->scratch[i]);
}

/*
 * Layers [from, to) of this replica's rows.  Every thread of the team calls
 * it when a layer gathers batch statistics (those meet) or the step is split
 * by features, with rows = 0 if it has none.  Split by features, the threads
 * meet around each layer that runs so (each computes a block of its outputs
 * for all the rank's rows), and before each layer that writes a transient
 * buffer: its slices of the layer's width overlap another thread's slices
 * of the layer two before.
 */
void fr_step_forward(fr_trainer *trainer, replica *r, const float *x, int rows, int from, int to) {
    const fr_model *model = trainer->model;
    for (int i = from; i < to; i++) {
        const fr_layer *l = &model->layers[i];
        if (l->ops->alias || relu_fused_into(model, i))
            continue;
        if (splits_forward(trainer, i)) {
            meet(trainer);
            forward_by_features(trainer, r, x, i, 0, (int)fr_shape_numel(l->out));
            meet(trainer);
            continue;
        }
        if (trainer->feature_split && trainer->output_transient[i])
            meet(trainer);
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        if (gathers_stats(trainer, i)) {
            forward_batch_stats(trainer, r, x, rows, i);
            fr_trace_add(omp_get_thread_num(), l->name, "forward", -1, t0, 0);
            continue;
        }
        if (rows == 0)
            continue;
        /* An in-place layer writes over its input, a buffer this replica owns. */
        float *out = (float *)fr_step_output(trainer, r, x, i);
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
    if (!trainer->needs_grad[i])
        return NULL;
    return slot_rows(trainer, r, trainer->grad_slot[i], fr_shape_numel(trainer->model->layers[i].out));
}

/* The slot the gradient at layer i's input goes to (din_slot; -1: none). */
static float *input_grad(const fr_trainer *trainer, const replica *r, int i) {
    return trainer->din_slot[i] >= 0 ? slot_rows(trainer, r, trainer->din_slot[i],
                                                  fr_shape_numel(trainer->model->layers[i].in))
                                     : NULL;
}

/* The slot holding the gradient at layer i's input k (added into). */
static float *input_slot(const fr_trainer *trainer, const replica *r, int i, int k) {
    int in = input_of(&trainer->model->layers[i], k);
    size_t width = fr_shape_numel(trainer->model->layers[in].out);
    return slot_rows(trainer, r, trainer->grad_slot[in], width);
}

/* Where replica r's backward of layer i writes its trainable parameters'
 * gradients (not a weight split by rows, which backward does not write), and
 * which of them it adds to a tied user's; whether it writes any. */
static bool param_grads(const fr_trainer *trainer, const replica *r, int i, int parts,
                        fr_param_grads *grads) {
    const fr_model *model = trainer->model;
    const fr_layer *l = &model->layers[i];
    bool any = false;
    grads->accumulate = trainer->grad_accumulate[i];
    for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
        int p = l->params[k];
        grads->grad[k] = NULL;
        if (!(parts & GRAD_WEIGHTS) || p < 0 || !model->params[p].requires_grad ||
            (k == FR_WEIGHT && trainer->split_weight[i]))
            continue;
        grads->grad[k] = replica_grad(trainer, r, p);
        any = true;
    }
    return any;
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
                fr_add_into(input_slot(trainer, r, i, k), dout,
                            (size_t)rows * fr_shape_numel(l->out));
        return;
    }
    float *din = NULL;
    if (parts & GRAD_INPUT)
        din = input_grad(trainer, r, i);
    fr_param_grads grads;
    bool wanted = param_grads(trainer, r, i, parts, &grads);
    if (parts & GRAD_WEIGHTS)
        r->backward_calls[i]++;
    if (din || wanted || parts == GRAD_BOTH) {
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        l->ops->backward(l, layer_input(trainer, r, x, i), fr_step_output(trainer, r, x, i), dout,
                         din, &grads, rows, r->scratch[i]);
        fr_trace_add(omp_get_thread_num(), l->name, parts == GRAD_INPUT ? "input-grad" : "backward",
                     -1, t0, 0);
    }
    if (din && (trainer->grad_adds[i] & 1u))
        fr_add_into(input_slot(trainer, r, i, 0), din, (size_t)rows * fr_shape_numel(l->in));
}

/* Sample `first`'s targets (4-byte values, target_width a sample). */
static const void *target_rows(const fr_trainer *trainer, const void *targets, int first) {
    return (const char *)targets + (size_t)first * (size_t)trainer->target_width * 4;
}


/*
 * Point the replica at its rows.  From a dataset it gathers them (or, when
 * the cache has all of the rank's, copies their prefix features into the
 * prefix's output buffer) and returns the layer forward starts at, the same
 * for every replica (a replica without rows too: split by features, every
 * thread meets at the same layers).
 */
static int take_rows(fr_trainer *trainer, replica *r, const batch_source *src, int first,
                     int rows) {
    const fr_model *model = trainer->model;
    /* Inputs and targets move as bytes: floats or token ids alike. */
    size_t input_bytes = fr_shape_numel(model->input) * fr_dtype_size(model->input_dtype);
    if (!src->data) {
        r->x = (const float *)(const void *)((const char *)src->x + (size_t)first * input_bytes);
        r->targets = src->targets ? target_rows(trainer, src->targets, first) : NULL;
        return 0;
    }
    const int *ids = src->ids + first;
    const fr_dataset *data = src->data;
    size_t target_bytes = (size_t)trainer->target_width * sizeof(int32_t);
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    for (int i = 0; i < rows; i++)
        memcpy(r->gathered_labels + (size_t)i * trainer->target_width,
               data->labels + (size_t)ids[i] * trainer->target_width, target_bytes);
    r->x = r->gathered_x;
    r->targets = r->gathered_labels;
    const feature_cache *c = &trainer->cache;
    if (src->cached) {
        float *features = (float *)fr_step_output(trainer, r, r->x, c->layer);
        for (int i = 0; i < rows; i++)
            memcpy(features + (size_t)i * c->numel, c->features + (size_t)ids[i] * c->numel,
                   c->numel * sizeof(float));
        if (rows > 0)
            fr_trace_add(omp_get_thread_num(), "rows", "gather", -1, t0, 0);
        return c->layer + 1;
    }
    for (int i = 0; i < rows; i++)
        memcpy((char *)r->gathered_x + (size_t)i * input_bytes,
               (const char *)data->x + (size_t)ids[i] * input_bytes, input_bytes);
    if (rows > 0)
        fr_trace_add(omp_get_thread_num(), "rows", "gather", -1, t0, 0);
    return 0;
}

/* Start a replica's share of a step, rows [first, first + rows) of the
 * global batch, the rank's from local_first: its rows taken, the layer its
 * forward starts at returned. */
static int replica_begin(fr_trainer *trainer, replica *r, const batch_source *src, int first,
                         int local_first, int rows) {
    r->loss_sum = 0.0;
    r->correct = 0;
    r->bad_label = -1;
    r->step_rows = rows;
    r->first_row = first;
    fr_step_place(trainer, r, local_first);
    return take_rows(trainer, r, src, first, rows);
}

/*
 * This step's (or evaluation's) rows on this rank, and whether it splits the
 * layers that can by features: several threads with fewer than
 * FEATURE_SPLIT_ROWS rows each.  Also whether the cache serves the rank's
 * rows (for all its replicas alike).
 */
static void plan_step_rows(fr_trainer *trainer, batch_source *src, int rank_first, int rank_rows) {
    int most = (rank_rows + trainer->threads - 1) / trainer->threads;
    bool any = false;
    for (int i = 0; i < trainer->model->layer_count; i++)
        any = any || (fr_layer_runs_by_rows(&trainer->model->layers[i]) &&
                      trainer->model->layers[i].ops->input_grad_cols);
    trainer->rank_rows = rank_rows;
    trainer->feature_split = trainer->threads > 1 && rank_rows > 0 &&
                             most < FEATURE_SPLIT_ROWS && any;
    src->cached = src->data && fr_cache_has_rows(trainer, src->ids + rank_first, rank_rows);
}

/* After its forward: the replica's loss on its rows; returns whether it must
 * run backward (it has rows, a trainable parameter and valid labels).  A
 * replica without rows adds nothing to the slab (and stage) backward
 * overwrites. */
static bool replica_loss(fr_trainer *trainer, replica *r, int first, bool train) {
    const fr_model *model = trainer->model;
    int rows = r->step_rows;
    if (rows == 0) {
        if (train)
            memset(r->slab, 0, r->slab_floats * sizeof(float));
        return false;
    }
    const float *logits = fr_step_output(trainer, r, r->x, model->layer_count - 1);
    bool run_backward = train && trainer->first_trainable < model->layer_count;
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    long bad_row = -1;
    r->loss_sum = trainer->loss->compute(model->layers[model->layer_count - 1].out, logits,
                                         r->targets, rows, 1.0f / (float)trainer->step_count,
                                         run_backward ? output_grad(trainer, r,
                                                                    model->layer_count - 1)
                                                      : NULL,
                                         &r->correct, &bad_row);
    fr_trace_add(omp_get_thread_num(), "loss", "compute", -1, t0, 0);
    if (bad_row >= 0) {
        r->bad_label = (int)bad_row + first;
        return false;
    }
    return run_backward;
}

/* One replica's share of a step up to the loss (replica_loss's answer). */
static bool replica_forward(fr_trainer *trainer, replica *r, const batch_source *src, int first,
                            int local_first, int rows, bool train) {
    int from = replica_begin(trainer, r, src, first, local_first, rows);
    fr_step_forward(trainer, r, r->x, rows, from, trainer->model->layer_count);
    return replica_loss(trainer, r, first, train);
}

/*
 * Thread t's share of rows [row_lo, row_hi) of layer i's split weight
 * gradient: summed over the replicas in replica order straight into replica
 * 0's slab (the GEMM adds each replica's product onto the rows), or in a step
 * split by features one GEMM over the rank's rows.  The order is fixed, so
 * the result does not depend on timing; it can differ from adding whole
 * per-replica copies in the last bit of some values.
 */
static void split_weight_grad(const fr_trainer *trainer, int i, int t, int row_lo, int row_hi) {
    const fr_layer *l = &trainer->model->layers[i];
    const fr_param *p = &trainer->model->params[l->params[FR_WEIGHT]];
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
    float *dweight = trainer->replicas[0].slab + trainer->slab_offsets[l->params[FR_WEIGHT]];
    /* Split by features, the replicas' rows are one matrix: one GEMM over
     * all of them (replica 0's slices start the rank's), when every replica
     * with rows has its gradient. */
    bool whole = trainer->feature_split && trainer->rank_rows > 0;
    for (int s = 0; s < trainer->threads && whole; s++)
        whole = trainer->replicas[s].step_rows == 0 || trainer->replicas[s].layer_dout;
    if (whole) {
        const replica *first = &trainer->replicas[0];
        l->ops->weight_grad_rows(l, layer_input(trainer, first, first->x, i), first->layer_dout,
                                 trainer->rank_rows, dweight, begin, end, false);
        return;
    }
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
 * Thread t's share of layer i's staged weight gradient: the other replicas'
 * stages added into replica 0's slab, in replica order (a replica without
 * rows has zeros there), exactly the sum the end of backward forms for the
 * other segments, only sooner, so that the next staged layer can reuse the
 * stages.
 */
static void chunk_of(const fr_trainer *trainer, int t, size_t from, size_t to, size_t *begin,
                     size_t *end);

static void staged_weight_grad(const fr_trainer *trainer, int i, int t) {
    int param = trainer->model->layers[i].params[FR_WEIGHT];
    const slab_segment *seg = &trainer->segments[trainer->segment_of[param]];
    size_t begin, end;
    chunk_of(trainer, t, 0, seg->numel, &begin, &end);
    float *sum = trainer->replicas[0].slab + seg->slab_offset;
    for (int s = 1; s < trainer->threads; s++) {
        const float *part = trainer->replicas[s].stage;
#pragma omp simd
        for (size_t j = begin; j < end; j++)
            sum[j] += part[j];
    }
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
    int count = l->ops->stats_count(l), me = omp_get_thread_num();
    double *mine = stats_at(trainer, me, i, BACKWARD_MEETING, PARTIAL_SUMS);
    const double *forward_sums = stats_at(trainer, me, i, FORWARD_MEETING, BATCH_SUMS);
    fr_param_grads grads;
    param_grads(trainer, r, i, parts, &grads);
    const float *in = layer_input(trainer, r, r->x, i);
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    if (active) {
        if (parts & GRAD_WEIGHTS)
            r->backward_calls[i]++;
        l->ops->backward_sums(l, in, dout, r->step_rows, mine, grads.grad[FR_WEIGHT],
                              grads.grad[FR_BIAS], forward_sums);
    } else {
        memset(mine, 0, (size_t)count * sizeof *mine);
    }
    if ((parts & GRAD_INPUT) && trainer->din_slot[i] >= 0) {
        const double *total = meet_sums(trainer, i, BACKWARD_MEETING);
        if (active) {
            float *din = input_grad(trainer, r, i);
            l->ops->backward_with(l, in, dout, din, r->step_rows, total, forward_sums);
            if (trainer->grad_adds[i] & 1u)
                fr_add_into(input_slot(trainer, r, i, 0), din,
                            (size_t)r->step_rows * fr_shape_numel(l->in));
        }
    }
    fr_trace_add(omp_get_thread_num(), l->name, "backward", -1, t0, 0);
}

/*
 * The gradient at layer i's input split by features (every thread calls it):
 * once every replica's gradient at the output is written, each thread
 * computes its block of input features for all the rank's rows, and after
 * a second meeting each replica adds its rows where another reader's share
 * is (grad_adds).  Inactive replicas' rows are computed too; such a step
 * fails (a bad label), or they have no rows.
 */
static void input_grad_by_features(fr_trainer *trainer, replica *r, bool active, int i) {
    const fr_layer *l = &trainer->model->layers[i];
    size_t in_numel = fr_shape_numel(l->in), out_numel = fr_shape_numel(l->out);
    float *din = input_grad(trainer, r, i);
    int t = omp_get_thread_num(), begin, end;
    meet(trainer);
    feature_block(trainer, t, 0, (int)in_numel, &begin, &end);
    if (begin < end && trainer->rank_rows > 0) {
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        l->ops->input_grad_cols(l, rank_matrix(r, output_grad(trainer, r, i), out_numel),
                                rank_matrix(r, din, in_numel), trainer->rank_rows, begin, end);
        fr_trace_add(t, l->name, "input-grad", -1, t0, 0);
        r->feature_split_calls[i]++;
    }
    meet(trainer);
    if (active && (trainer->grad_adds[i] & 1u))
        fr_add_into(input_slot(trainer, r, i, 0), din, (size_t)r->step_rows * in_numel);
}

/*
 * Layer i's backward on every thread in step (every thread calls it, active
 * or not).  For a split weight gradient the threads meet once the gradient at
 * the layer's output is ready everywhere, each computes its rows, and they
 * meet again before any of them overwrites that gradient with the next
 * layer's.  For a staged one they meet once every replica has its copy, each
 * adds its chunk of the copies into replica 0's slab, and they meet again
 * before the next staged layer overwrites the stages.
 */
static void backward_in_step(fr_trainer *trainer, replica *r, bool active, int i, int parts) {
    if (parts & GRAD_WEIGHTS)
        r->layer_dout = active ? output_grad(trainer, r, i) : NULL;
    bool input_part = (parts & GRAD_INPUT) && trainer->din_slot[i] >= 0 && trainer->needs_grad[i];
    bool by_features = input_part && splits_input_grad(trainer, i);
    /* Split by features, a gradient slot another thread may still read at
     * another width is written only once every thread is past that layer. */
    if (input_part && trainer->feature_split && !by_features)
        meet(trainer);
    if (by_features)
        parts &= ~GRAD_INPUT;
    if (gathers_stats(trainer, i))
        backward_batch_stats(trainer, r, active, i, parts);
    else if (active && parts)
        backward_layer(trainer, r, r->x, r->step_rows, i, parts);
    if ((trainer->split_weight[i] || trainer->staged_weight[i]) && (parts & GRAD_WEIGHTS)) {
        int t = omp_get_thread_num();
        meet(trainer);
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        if (trainer->split_weight[i])
            split_weight_grad(trainer, i, t, 0,
                              trainer->model->params[trainer->model->layers[i].params[FR_WEIGHT]]
                                  .shape[0]);
        else
            staged_weight_grad(trainer, i, t);
        fr_trace_add(t, trainer->model->layers[i].name,
                     trainer->split_weight[i] ? "weight-grad" : "stage-sum", -1, t0, 0);
        meet(trainer);
    }
    if (by_features)
        input_grad_by_features(trainer, r, active, i);
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
 * slab index `begin`, made by step `step` (from 0) with `config`, whose
 * learning rates it is applied with.  `ahead` is 1 within the step (the
 * parameters' step counts are raised after it), 0 for the last step's pieces
 * applied later. */
static void update_range(fr_trainer *trainer, const fr_train_config *config, long step,
                         const float *grad, size_t begin, size_t end, long ahead) {
    fr_model *model = trainer->model;
    fr_train_config with_lr = *config;
    for (int s = 0; s < trainer->segment_count; s++) {
        const slab_segment *seg = &trainer->segments[s];
        size_t lo, hi;
        if (!segment_part(seg, begin, end, &lo, &hi))
            continue;
        fr_param *p = &model->params[seg->param];
        size_t within = lo - seg->slab_offset;
        with_lr.lr = fr_param_lr(trainer, config, seg->param, step);
        fr_optim_update(&with_lr, trainer->param_steps[seg->param] + ahead, p->data + within,
                        grad + (lo - begin), trainer->state_m ? trainer->state_m + lo : NULL,
                        trainer->state_v ? trainer->state_v + lo : NULL, hi - lo);
    }
}

/* sum[0 .. end-begin) = the replicas' slabs over [begin, end), added in
 * replica order so the result does not depend on timing.  Split and staged
 * weight gradients are already summed in replica 0's slab; the other
 * replicas hold the rest in their compact slabs. */
static void reduce_range(const fr_trainer *trainer, float *sum, size_t begin, size_t end) {
    const float *first = trainer->replicas[0].slab;
    if (sum != first + begin)
        memcpy(sum, first + begin, (end - begin) * sizeof(float));
    for (int s = 0; s < trainer->segment_count; s++) {
        const slab_segment *seg = &trainer->segments[s];
        size_t lo, hi;
        if (seg->split || seg->staged || !segment_part(seg, begin, end, &lo, &hi))
            continue;
        float *to = sum + (lo - begin);
        for (int t = 1; t < trainer->threads; t++) {
            const float *part = trainer->replicas[t].slab + seg->own_offset + (lo - seg->slab_offset);
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
        update_range(trainer, &trainer->config, trainer->steps_done, block, lo, hi, 1);
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

/* ---------------------------------------------------- gradient clipping */

/*
 * torch's clip_grad_norm_(trainable, max_norm) on the summed slab, then the
 * update (every thread calls it, in step): the global L2 norm of the gradient
 * averaged over the global batch, and every gradient scaled by
 * max_norm / (norm + 1e-6) where that is below 1, before anything is
 * applied.  On one rank the threads first reduce their chunks of the slabs
 * into replica 0's (the fused reduce+update becomes reduce, norm, update);
 * on several the pieces were reduced into it before they were sent, and
 * every sum must be back (the sums are the same bits on every rank, so each
 * computes the same norm).  Each thread sums the squares of its chunk in
 * double and the threads' sums are added in thread order, so the norm
 * depends on the layout by rounding only.  A non-finite norm fails the step
 * with nothing applied.
 */
static void clip_and_update(fr_trainer *trainer, int t, bool many_ranks, int *status,
                            fr_error *err) {
    float *sum = trainer->replicas[0].slab;
    size_t begin, end;
    chunk_of(trainer, t, 0, trainer->trainable_count, &begin, &end);
    double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
    if (many_ranks) {
#pragma omp master
        for (int k = 0; k < trainer->piece_count; k++)
            if (fr_comm_finish_sum(trainer->pieces[k].ticket, err) != FR_OK && *status == FR_OK)
                *status = err && err->status ? err->status : FR_ECOMM;
        meet(trainer);
    } else {
        reduce_range(trainer, sum + begin, begin, end);
    }
    double squares = 0.0;
    for (size_t i = begin; i < end; i++)
        squares += (double)sum[i] * (double)sum[i];
    trainer->clip_partial[t] = squares;
    meet(trainer);
#pragma omp master
    {
        double total = 0.0;
        for (int k = 0; k < trainer->threads; k++)
            total += trainer->clip_partial[k];
        trainer->grad_norm = (float)sqrt(total);
        if (*status == FR_OK && !isfinite(trainer->grad_norm))
            *status = fr_fail(err, FR_ENONFINITE, "the gradient norm is %g at step %ld",
                              trainer->grad_norm, trainer->steps_done + 1);
    }
    meet(trainer);
    if (*status != FR_OK)
        return;
    /* torch's norm is a float32 tensor, and so is the coefficient. */
    float norm = (float)trainer->grad_norm;
    float coef = (float)trainer->config.clip_grad_norm / (norm + 1e-6f);
    if (coef < 1.0f)
        for (size_t i = begin; i < end; i++)
            sum[i] *= coef;
    update_range(trainer, &trainer->config, trainer->steps_done, sum + begin, begin, end, 1);
    fr_trace_add(t, "slab", many_ranks ? "clip+update" : "reduce+clip+update", -1, t0, 0);
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

/* A model of token ids: every id of the batch (all of its rows, on every
 * rank alike, so that they agree) below the vocabulary its embedding has. */
static int check_tokens(const fr_trainer *trainer, const batch_source *src, int batch,
                        fr_error *err) {
    const fr_model *model = trainer->model;
    if (model->input_dtype != FR_I32)
        return FR_OK;
    int vocabulary = fr_model_vocab_size(model);
    size_t seq = fr_shape_numel(model->input);
    for (int i = 0; i < batch; i++) {
        const int32_t *row = src->data ? (const int32_t *)src->data->x + (size_t)src->ids[i] * seq
                                       : (const int32_t *)src->x + (size_t)i * seq;
        for (size_t t = 0; t < seq; t++)
            if (row[t] < 0 || row[t] >= vocabulary)
                return fr_fail(err, FR_EINVAL, "step: token %d (sample %d, position %zu) is "
                               "outside the vocabulary of %d", (int)row[t], i, t, vocabulary);
    }
    return FR_OK;
}

/* How many of the global batch's targets the loss's mean is over (every
 * rank counts all of them, so none needs to ask another): the batch, or the
 * positions not ignored.  None counting is refused: the mean would be 0/0. */
static int check_tokens(const fr_trainer *trainer, const batch_source *src, int batch,
                        fr_error *err);

static int count_targets(fr_trainer *trainer, const batch_source *src, int batch,
                         fr_error *err) {
    int rc = check_tokens(trainer, src, batch, err);
    if (rc != FR_OK)
        return rc;
    const fr_shape out = trainer->model->layers[trainer->model->layer_count - 1].out;
    long count = 0;
    if (src->data) {
        size_t width = (size_t)trainer->target_width;
        for (int i = 0; i < batch; i++)
            count += trainer->loss->count(out, src->data->labels + (size_t)src->ids[i] * width, 1);
    } else {
        count = trainer->loss->count(out, src->targets, batch);
    }
    if (count == 0)
        return fr_fail(err, FR_EINVAL, "step: every target of the batch is ignored (%d)",
                       FR_IGNORE_INDEX);
    trainer->step_count = count;
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
static int check_loss_totals(fr_trainer *trainer, const double *totals,
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
        *loss = totals[0] / (double)trainer->step_count;
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
static int total_loss(fr_trainer *trainer, double *loss, long *correct, fr_error *err) {
    double totals[LOSS_TOTALS];
    local_loss_totals(trainer, totals);
    int rc = fr_comm_allreduce_doubles(totals, LOSS_TOTALS, err);
    if (rc != FR_OK)
        return rc;
    return check_loss_totals(trainer, totals, loss, correct, err);
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
    if (rc == FR_OK && fr_plan_changed(trainer))
        rc = fr_trainer_sync_plan(trainer, err);
    set_modes(trainer, train);
    return rc;
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
        meet(trainer);
        size_t begin, end;
        chunk_of(trainer, t, p->begin, p->end, &begin, &end);
        if (*status == FR_OK) {
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            /* Applied within its own step (sync_updates), the step counts
             * are not raised yet. */
            long ahead = trainer->steps_done < trainer->in_flight_step ? 1 : 0;
            update_range(trainer, &trainer->in_flight_config, trainer->in_flight_step - 1,
                         trainer->replicas[0].slab + begin, begin, end, ahead);
            fr_trace_add(t, "bucket", "update", k, t0, 0);
        }
    }
    meet(trainer);
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
 * The forward from layer `from` to the end: on several ranks each layer (or block of a
 * blocked layer's outputs) runs once the last step's pieces it needs are
 * applied, so forward starts while the last pieces are still on the wire.
 * Every thread calls it; one without rows (from < 0) only meets the
 * barriers.  Blocked layers always run by blocks, in flight or not, so the
 * arithmetic does not depend on it.
 */
static void forward_applying(fr_trainer *trainer, replica *r, int from, bool applying,
                             int *status, fr_error *err) {
    const fr_model *model = trainer->model;
    /* A thread without rows still meets the others (batch statistics, splits
     * by features). */
    int at = from, rows = r->step_rows;
    for (int i = trainer->first_trainable; i < model->layer_count; i++) {
        int blocks = trainer->row_blocks[i];
        bool waits = false;
        for (int k = 0; applying && k < trainer->piece_count && !waits; k++)
            waits = trainer->pieces[k].layer == i;
        if (!waits && blocks == 0)
            continue;
        if (at < i) {
            fr_step_forward(trainer, r, r->x, rows, at, i);
            at = i;
        }
        if (blocks == 0) {
            apply_pieces(trainer, i, -1, status, err);
            continue;
        }
        const fr_layer *l = &model->layers[i];
        /* Split by features, each block of outputs is split again between
         * the threads, between a meeting before the first block (the input
         * rows written) and one after the last. */
        bool by_features = splits_forward(trainer, i);
        if (by_features)
            meet(trainer);
        for (int j = 0; j < blocks; j++) {
            if (applying)
                apply_pieces(trainer, i, j, status, err);
            int lo, hi;
            block_rows(trainer, i, j, &lo, &hi);
            if (by_features) {
                forward_by_features(trainer, r, r->x, i, lo, hi);
            } else if (rows > 0) {
                double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
                l->ops->forward_rows(l, layer_input(trainer, r, r->x, i),
                                     (float *)fr_step_output(trainer, r, r->x, i), rows, lo, hi);
                fr_trace_add(omp_get_thread_num(), l->name, "forward", j, t0, 0);
            }
        }
        if (by_features)
            meet(trainer);
        at = i + 1;
    }
    if (at < model->layer_count)
        fr_step_forward(trainer, r, r->x, rows, at, model->layer_count);
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
        meet(trainer);
        if (blocks > 0) {
            int lo, hi;
            block_rows(trainer, i, j, &lo, &hi);
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            split_weight_grad(trainer, i, t, lo, hi);
            fr_trace_add(t, trainer->model->layers[i].name, "weight-grad", j, t0, 0);
            meet(trainer);
        }
        /* Pieces of a bucket that is not blocked are all complete now; the
         * others become complete block by block. */
        size_t begin, end;
        double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
        chunk_of(trainer, t, p->begin, p->end, &begin, &end);
        reduce_range(trainer, reduced + begin, begin, end);
        fr_trace_add(t, "bucket", "reduce", b->first_piece + j, t0, 0);
        meet(trainer);
#pragma omp master
        if (*status == FR_OK && piece_complete(trainer, b->first_piece + j, err) != FR_OK)
            *status = err ? err->status : FR_ECOMM;
    }
}

/*
 * One step, on one rank or many.  Forward first applies the last step's
 * updates still in flight (several ranks), each just before the first layer
 * (or block of outputs) that needs it, so it starts while the last pieces are
 * still on the wire.  The loss totals go to the communication thread as soon
 * as forward is done.  Backward runs layer by layer in step on every thread;
 * on several ranks, when it has passed the layer that completes a bucket, the
 * threads sum that bucket's pieces of their slabs into replica 0's and the
 * main thread hands them to the communication thread (allreduce.c), which
 * sends them while backward goes on.  Then the loss is checked, the same way
 * and at the same moment whatever the layout: a bad label or a non-finite
 * loss fails the step and leaves the weights as they were.  On one rank each
 * thread then sums its chunk of the slabs and updates the parameters under
 * it, fused; on several the step's updates stay in flight until the next
 * forward needs them.  The workers never call MPI themselves; every thread
 * meets every barrier.
 */
static int step_pipeline(fr_trainer *trainer, const batch_source *batch_src, int batch,
                         double *loss, long *correct, fr_error *err) {
    int rank_first, rank_rows, status = FR_OK;
    fr_trainer_rank_rows(trainer, batch, &rank_first, &rank_rows);
    batch_source step_src = *batch_src;
    const batch_source *src = &step_src;
    plan_step_rows(trainer, &step_src, rank_first, rank_rows);
    double *totals = trainer->loss_totals;
    long loss_ticket = -1;
    bool clipping = trainer->config.clip_grad_norm > 0.0;
    if (clipping && !trainer->clip_partial &&
        !(trainer->clip_partial = calloc((size_t)trainer->threads, sizeof(double))))
        return fr_fail(err, FR_ENOMEM, "out of memory for gradient clipping");
    bool applying = trainer->in_flight, many_ranks = fr_comm_size() > 1;
    if (trainer->model->in_flight == trainer)
        trainer->model->in_flight = NULL;
    trainer->in_flight = false;
#pragma omp parallel num_threads(trainer->threads)
    {
        int t = omp_get_thread_num(), local_first, rows;
        split_rows(rank_rows, trainer->threads, t, &local_first, &rows);
        int first = rank_first + local_first;
        replica *r = &trainer->replicas[t];
        int from = replica_begin(trainer, r, src, first, local_first, rows);
        forward_applying(trainer, r, from, applying, &status, err);
        bool active = replica_loss(trainer, r, first, true);
        meet(trainer);
#pragma omp master
        {
            local_loss_totals(trainer, totals);
            if (status == FR_OK &&
                fr_comm_start_sum_doubles(totals, LOSS_TOTALS, &loss_ticket, err) != FR_OK)
                status = err ? err->status : FR_ECOMM;
        }
        int next = 0;
        for (int i = trainer->model->layer_count - 1; i >= trainer->first_trainable; i--) {
            /* A layer that completes a bucket with pieces to send computes
             * its parameters' gradients first, so the bucket leaves before
             * the (as costly) gradient for the layer below is computed. */
            bool closes = next < trainer->bucket_count && trainer->buckets[next].ready_after_layer == i;
            if (closes && trainer->buckets[next].pieces > 0) {
                weights_and_pieces(trainer, r, active, i, next, &status, err);
                backward_in_step(trainer, r, active, i, GRAD_INPUT);
            } else {
                backward_in_step(trainer, r, active, i, GRAD_BOTH);
            }
            next += closes;
        }
        meet(trainer);
#pragma omp master
        {
            if (status == FR_OK && trainer->stats_status != FR_OK) {
                status = trainer->stats_status;
                if (err)
                    *err = trainer->stats_err;
            }
            /* The loss is summed ahead of the pieces, so this wait is short. */
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            if (loss_ticket >= 0 && fr_comm_finish_sum(loss_ticket, err) != FR_OK &&
                status == FR_OK)
                status = err ? err->status : FR_ECOMM;
            fr_trace_add(0, "loss", "wait", -1, t0, 0);
            if (status == FR_OK)
                status = check_loss_totals(trainer, totals, loss, correct, err);
            if (status == FR_OK)
                status = check_finite_loss(trainer, *loss, err);
        }
        meet(trainer);
        if (status == FR_OK && clipping) {
            clip_and_update(trainer, t, many_ranks, &status, err);
        } else if (status == FR_OK && !many_ranks) {
            size_t begin, end;
            chunk_of(trainer, t, 0, trainer->trainable_count, &begin, &end);
            double t0 = fr_trace_on() ? fr_trace_now() : 0.0;
            reduce_and_update(trainer, begin, end);
            fr_trace_add(t, "slab", "reduce+update", -1, t0, 0);
        }
    }
    if (status != FR_OK) {
        drop_in_flight(trainer);
        return status;
    }
    /* Clipped, the update was applied within the step. */
    trainer->in_flight = trainer->piece_count > 0 && !clipping;
    if (clipping)
        trainer->grad_norm_step = trainer->steps_done + 1;
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
    int rc = step_pipeline(trainer, src, batch, &step_loss, &step_correct, &step_err);
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

int fr_trainer_step(fr_trainer *trainer, const void *x, const void *targets, int batch,
                    double *loss, long *correct, fr_error *err) {
    int rc = prepare_step(trainer, x, targets, batch, true, err);
    if (rc != FR_OK)
        return rc;
    batch_source src = {.x = x, .targets = targets};
    if ((rc = count_targets(trainer, &src, batch, err)) != FR_OK)
        return rc;
    return run_step(trainer, &src, batch, loss, correct, err);
}

int fr_trainer_step_samples(fr_trainer *trainer, const fr_dataset *data, const int *ids,
                            int batch, double *loss, long *correct, fr_error *err) {
    int rc = prepare_step(trainer, data, ids, batch, true, err);
    if (rc != FR_OK)
        return rc;
    if (fr_dataset_sample_numel(data) != fr_model_input_numel(trainer->model) ||
        data->x_dtype != trainer->model->input_dtype)
        return fr_fail(err, FR_ESHAPE, "step: samples have %d %s, the model takes %d %s",
                       fr_dataset_sample_numel(data), data->x_dtype == FR_I32 ? "tokens" : "values",
                       fr_model_input_numel(trainer->model),
                       trainer->model->input_dtype == FR_I32 ? "tokens" : "values");
    if (data->target_numel != trainer->target_width || trainer->loss->target_dtype != FR_I32)
        return fr_fail(err, FR_ESHAPE, "step: samples have %d targets each, the model's %s loss "
                       "takes %d %s", data->target_numel, trainer->loss->name,
                       trainer->target_width,
                       trainer->loss->target_dtype == FR_I32 ? "class ids" : "floats");
    for (int i = 0; i < batch; i++)
        if (ids[i] < 0 || ids[i] >= data->n)
            return fr_fail(err, FR_EINVAL, "step: sample index %d outside the dataset of %d",
                           ids[i], data->n);
    if (trainer->cache.enabled && (rc = fr_cache_plan(trainer, data, err)) != FR_OK)
        return rc;
    batch_source src = {.data = data, .ids = ids};
    if ((rc = count_targets(trainer, &src, batch, err)) != FR_OK)
        return rc;
    return run_step(trainer, &src, batch, loss, correct, err);
}

int fr_trainer_evaluate(fr_trainer *trainer, const void *x, const void *targets, int batch,
                        double *loss, long *correct, fr_error *err) {
    int rc = prepare_step(trainer, x, targets, batch, false, err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(trainer, err);
    if (rc != FR_OK)
        return rc;
    int rank_first, rank_rows;
    fr_trainer_rank_rows(trainer, batch, &rank_first, &rank_rows);
    batch_source src = {.x = x, .targets = targets};
    if ((rc = count_targets(trainer, &src, batch, err)) != FR_OK)
        return rc;
    plan_step_rows(trainer, &src, rank_first, rank_rows);
#pragma omp parallel num_threads(trainer->threads)
    {
        int t = omp_get_thread_num(), first, rows;
        split_rows(rank_rows, trainer->threads, t, &first, &rows);
        replica_forward(trainer, &trainer->replicas[t], &src, rank_first + first, first, rows,
                        false);
    }
    return total_loss(trainer, loss, correct, err);
}

int fr_trainer_predict(fr_trainer *trainer, const void *x, int batch, float *out,
                       fr_error *err) {
    if (!out)
        return fr_fail(err, FR_EINVAL, "predict: no output buffer");
    int rc = prepare_step(trainer, x, x, batch, false, err);
    if (rc == FR_OK)
        rc = fr_trainer_sync(trainer, err);
    batch_source src = {.x = x};
    if (rc == FR_OK)
        rc = check_tokens(trainer, &src, batch, err);
    if (rc != FR_OK)
        return rc;
    const fr_model *model = trainer->model;
    size_t width = fr_shape_numel(model->layers[model->layer_count - 1].out);
    int rank_first, rank_rows;
    fr_trainer_rank_rows(trainer, batch, &rank_first, &rank_rows);
    plan_step_rows(trainer, &src, rank_first, rank_rows);
#pragma omp parallel num_threads(trainer->threads)
    {
        int t = omp_get_thread_num(), first, rows;
        split_rows(rank_rows, trainer->threads, t, &first, &rows);
        replica *r = &trainer->replicas[t];
        int from = replica_begin(trainer, r, &src, rank_first + first, first, rows);
        fr_step_forward(trainer, r, r->x, rows, from, model->layer_count);
        if (rows > 0)
            memcpy(out + (size_t)(rank_first + first) * width,
                   fr_step_output(trainer, r, r->x, model->layer_count - 1),
                   (size_t)rows * width * sizeof *out);
    }
    return FR_OK;
}

/* ----------------------------------------------------------- reporting */

long fr_trainer_steps_done(const fr_trainer *trainer) { return trainer->steps_done; }
long fr_trainer_last_count(const fr_trainer *trainer) { return trainer->step_count; }
int fr_trainer_threads(const fr_trainer *trainer) { return trainer->threads; }

/* What is allocated, so that the parts add up to fr_allocated_bytes. */
size_t fr_trainer_gradient_bytes(const fr_trainer *trainer) {
    size_t bytes = 0;
    for (int t = 0; t < trainer->threads; t++)
        bytes += fr_alloc_size(trainer->replicas[t].owned[1]);
    return bytes;
}

size_t fr_trainer_activation_bytes(const fr_trainer *trainer) {
    size_t bytes = fr_alloc_size(trainer->activations);
    for (int t = 0; t < trainer->threads; t++)
        bytes += fr_alloc_size(trainer->replicas[t].owned[0]);
    return bytes;
}

size_t fr_trainer_optimizer_bytes(const fr_trainer *trainer) {
    return fr_alloc_size(trainer->state_m) + fr_alloc_size(trainer->state_v);
}

size_t fr_trainer_allreduce_bytes(const fr_trainer *trainer) {
    size_t element = trainer->config.grad_dtype == FR_GRAD_BF16 ? sizeof(uint16_t) : sizeof(float);
    return fr_model_trainable_numel(trainer->model) * element;
}

size_t fr_trainer_bytes_sent(const fr_trainer *trainer) { return trainer->bytes_sent; }

double fr_trainer_grad_norm(const fr_trainer *trainer) {
    return trainer->grad_norm_step > 0 ? trainer->grad_norm : NAN;
}

/* A per-layer count summed over the replicas: of backward calls, or of
 * GEMMs split by features. */
static long layer_calls(const fr_trainer *trainer, int layer, bool split) {
    if (layer < 0 || layer >= trainer->model->layer_count)
        return 0;
    long total = 0;
    for (int t = 0; t < trainer->threads; t++) {
        const replica *r = &trainer->replicas[t];
        total += split ? r->feature_split_calls[layer] : r->backward_calls[layer];
    }
    return total;
}

long fr_trainer_feature_split_calls(const fr_trainer *trainer, int layer) {
    return layer_calls(trainer, layer, true);
}

long fr_trainer_layer_backward_calls(const fr_trainer *trainer, int layer) {
    return layer_calls(trainer, layer, false);
}

/* ------------------------------------------------- state for checkpoints */



void fr_trainer_check_replicas(fr_trainer *trainer) { trainer->check_replicas = true; }

void fr_trainer_watch_stop(fr_trainer *trainer, const volatile sig_atomic_t *flag) {
    trainer->stop_flag = flag;
}
bool fr_trainer_stop_requested(const fr_trainer *trainer) { return trainer->stop_agreed; }
long *fr_trainer_param_steps(fr_trainer *trainer) { return trainer->param_steps; }
void fr_trainer_set_steps_done(fr_trainer *trainer, long steps) { trainer->steps_done = steps; }
const fr_train_config *fr_trainer_config(const fr_trainer *trainer) { return &trainer->config; }
fr_model *fr_trainer_model(const fr_trainer *trainer) { return trainer->model; }
