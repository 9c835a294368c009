/*
 * plan.c - the trainer's plan, and making and freeing trainers.
 *
 * The plan is laid out for the current frozen set and redone when it
 * changes: the gradient slab (trainable parameters only, in the order
 * backward produces them, last layer first; the optimizer state uses the
 * same layout, so frozen parameters cost neither), its buckets and the
 * pieces several ranks send them in, which outputs share or keep their
 * buffers and which relus fuse into the layer before, backward's gradient
 * slots, the rank-wide activations each thread's replica has a slice of, and
 * each replica's scratch and slab.
 * Everything a step needs is allocated here, when the trainer is made or
 * when the frozen set changes.  The plan is the trainer's own: two trainers
 * on one model do not share it.
 */
#include "trainer.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ planning */


void fr_trainer_rank_rows(const fr_trainer *trainer, int batch, int *first, int *count) {
    (void)trainer;
    split_rows(batch, fr_comm_size(), fr_comm_rank(), first, count);
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
        trainer->needs_grad[i] = fr_layer_trains(model, l);
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
    free(r->scratch);
    free(r->backward_calls);
    free(r->feature_split_calls);
    memset(r, 0, sizeof *r);
}

/*
 * The rank-wide activations, room for rows_cap rows per thread: the kept
 * outputs, two transient outputs and the gradient slots (rows of the widest
 * layer), the gathered rows and labels.  Forward walks the layers; an output
 * not kept goes to whichever transient buffer does not hold the layer's
 * input (an output not kept is read only by the next layer, so that is the
 * last one written).
 */
static int plan_activations(fr_trainer *trainer, int rows_cap, const bool *kept) {
    const fr_model *model = trainer->model;
    int layers = model->layer_count, slots = trainer->grad_slot_count;
    size_t rows = (size_t)rows_cap * (size_t)trainer->threads, act = max_activation_numel(model);
    size_t input_numel = fr_shape_numel(model->input);
    trainer->output_base = calloc((size_t)layers + 1, sizeof *trainer->output_base);
    trainer->output_width = calloc((size_t)layers + 1, sizeof *trainer->output_width);
    trainer->output_transient = calloc((size_t)layers + 1, sizeof *trainer->output_transient);
    trainer->grad_base = calloc((size_t)slots + 1, sizeof *trainer->grad_base);
    if (!trainer->output_base || !trainer->output_width || !trainer->output_transient ||
        !trainer->grad_base)
        return FR_ENOMEM;
    size_t buffer = round_up(act * rows, SLAB_CHUNK_ALIGN);
    size_t targets = rows * (size_t)trainer->target_width;
    size_t floats = (2 + (size_t)slots) * buffer + round_up(input_numel * rows, SLAB_CHUNK_ALIGN) +
                    round_up(targets, SLAB_CHUNK_ALIGN);
    for (int i = 0; i < layers; i++)
        if (!trainer->shares_input[i] && kept[i])
            floats += round_up(layer_out_numel(model, i) * rows, SLAB_CHUNK_ALIGN);
    trainer->activations = fr_alloc(floats * sizeof(float));
    if (!trainer->activations)
        return FR_ENOMEM;
    float *next = trainer->activations, *transient[2];
    for (int k = 0; k < 2; k++, next += buffer)
        transient[k] = next;
    for (int k = 0; k < slots; k++, next += buffer)
        trainer->grad_base[k] = next;
    trainer->grad_width = act;
    trainer->gathered_x_base = next;
    next += round_up(input_numel * rows, SLAB_CHUNK_ALIGN);
    trainer->gathered_labels_base = (int32_t *)(void *)next;
    next += round_up(targets, SLAB_CHUNK_ALIGN);
    int input_in = -1; /* which transient buffer holds the current input */
    for (int i = 0; i < layers; i++) {
        if (trainer->shares_input[i]) {
            trainer->output_base[i] = NULL;
        } else if (kept[i]) {
            trainer->output_base[i] = next;
            trainer->output_width[i] = layer_out_numel(model, i);
            next += round_up(layer_out_numel(model, i) * rows, SLAB_CHUNK_ALIGN);
            input_in = -1;
        } else {
            int use = input_in == 0 ? 1 : 0;
            trainer->output_base[i] = transient[use];
            trainer->output_width[i] = act;
            trainer->output_transient[i] = true;
            input_in = use;
        }
    }
    return FR_OK;
}

/*
 * Size and carve one replica's own buffers: per-layer scratch and the slab
 * (the whole slab for replica 0, the compact one and the stage for the
 * others).  Called by the thread that owns the replica, so its pages are
 * first touched there.
 */
static int build_replica(fr_trainer *trainer, replica *r, int index, int rows_cap,
                         bool whole_slab) {
    const fr_model *model = trainer->model;
    int layers = model->layer_count;
    r->index = index;
    r->rows_cap = rows_cap;
    r->scratch = calloc((size_t)layers, sizeof *r->scratch);
    r->backward_calls = calloc((size_t)layers, sizeof *r->backward_calls);
    r->feature_split_calls = calloc((size_t)layers, sizeof *r->feature_split_calls);
    if (!r->scratch || !r->backward_calls || !r->feature_split_calls)
        return FR_ENOMEM;

    size_t floats = 0;
    for (int i = 0; i < layers; i++) {
        const fr_layer *l = &model->layers[i];
        if (l->ops->scratch_bytes)
            floats += round_up((l->ops->scratch_bytes(l, rows_cap) + 3) / 4, SLAB_CHUNK_ALIGN);
    }
    r->owned[0] = fr_alloc(floats * sizeof(float));
    /* The slab gets its own allocation (whole cache lines): it is what other
     * threads read. */
    size_t own = whole_slab ? round_up(trainer->trainable_count, SLAB_CHUNK_ALIGN)
                            : round_up(trainer->own_floats, SLAB_CHUNK_ALIGN);
    r->slab_floats = own + (whole_slab ? 0 : round_up(trainer->stage_floats, SLAB_CHUNK_ALIGN));
    r->owned[1] = fr_alloc(r->slab_floats * sizeof(float));
    if (!r->owned[0] || !r->owned[1])
        return FR_ENOMEM;
    r->slab = r->owned[1];
    r->stage = whole_slab || trainer->stage_floats == 0 ? NULL : r->slab + own;

    float *next = r->owned[0];
    for (int i = 0; i < layers; i++) {
        const fr_layer *l = &model->layers[i];
        if (l->ops->scratch_bytes) {
            r->scratch[i] = next;
            next += round_up((l->ops->scratch_bytes(l, rows_cap) + 3) / 4, SLAB_CHUNK_ALIGN);
        }
    }
    fr_step_place(trainer, r, 0);
    return FR_OK;
}

/* Free a plan's array and forget it. */
#define DROP(p) (free(p), (p) = NULL)
#define DROP_ALIGNED(p) (fr_free(p), (p) = NULL)

static void free_plan(fr_trainer *trainer) {
    if (trainer->replicas)
        for (int t = 0; t < trainer->threads; t++)
            free_replica(&trainer->replicas[t]);
    DROP(trainer->segments);
    trainer->segment_count = 0;
    DROP(trainer->buckets);
    trainer->bucket_count = 0;
    DROP(trainer->pieces);
    trainer->piece_count = 0;
    DROP(trainer->row_blocks);
    DROP(trainer->split_weight);
    DROP(trainer->staged_weight);
    DROP(trainer->grad_accumulate);
    DROP(trainer->segment_of);
    DROP_ALIGNED(trainer->activations);
    DROP(trainer->output_base);
    DROP(trainer->output_width);
    DROP(trainer->output_transient);
    DROP(trainer->grad_base);
}

/* Layer i's weight (slot FR_WEIGHT) when it is trainable and the layer's own,
 * used by no other layer: the one the trainer may split by rows, stage or
 * send in row blocks.  -1 otherwise. */
static int own_trainable_weight(const fr_model *model, int i) {
    int w = model->layers[i].params[FR_WEIGHT];
    if (w < 0 || !model->params[w].requires_grad || model->params[w].layer != i ||
        fr_param_users(model, w, NULL, 0) > 1)
        return -1;
    return w;
}

/* Slot k of layer i holds a trainable parameter that layer i owns (a tied
 * one sits in the slab where its owner, the first layer using it, is). */
static bool owns_trainable(const fr_model *model, int i, int k) {
    int p = model->layers[i].params[k];
    return p >= 0 && model->params[p].requires_grad && model->params[p].layer == i;
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
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++)
            if (owns_trainable(model, i, k) &&
                trainer->slab_offsets[l->params[k]] + model->params[l->params[k]].numel > end)
                end = trainer->slab_offsets[l->params[k]] + model->params[l->params[k]].numel;
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


/* The first layer, in forward order, with a parameter in slab range
 * [begin, end). */
static int piece_layer(const fr_trainer *trainer, size_t begin, size_t end) {
    const fr_model *model = trainer->model;
    for (int i = trainer->first_trainable; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            int p = l->params[k];
            if (p < 0 || !model->params[p].requires_grad)
                continue;
            size_t lo = trainer->slab_offsets[p], hi = lo + model->params[p].numel;
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
        int w = own_trainable_weight(model, i);
        size_t numel = w >= 0 ? model->params[w].numel : 0;
        if (l->ops->weight_grad_rows && fr_layer_runs_by_rows(l) && numel >= 2 * ROW_BLOCK_FLOATS) {
            int blocks = (int)(numel / ROW_BLOCK_FLOATS);
            if (blocks > MAX_ROW_BLOCKS)
                blocks = MAX_ROW_BLOCKS;
            if (blocks > model->params[w].shape[0])
                blocks = model->params[w].shape[0];
            trainer->row_blocks[i] = blocks;
            trainer->split_weight[i] = true;
            for (int s = 0; s < trainer->segment_count; s++)
                if (trainer->segments[s].param == w)
                    trainer->segments[s].split = true;
            size_t weight = trainer->slab_offsets[w],
                   row_len = numel / (size_t)model->params[w].shape[0];
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
 * Which segments the replicas other than 0 hold, and where.  A split weight
 * is summed by rows straight into replica 0's slab and needs no copy; a large
 * weight without row operations (conv2d's) is staged: each replica computes
 * its whole gradient into its stage, and the threads add the stages into
 * replica 0's slab as soon as the layer's backward is done, so the stage
 * holds one such weight at a time.  The rest (biases, small weights,
 * batchnorm2d's parameters) is summed at the end of backward from the compact
 * slabs, each segment at an offset with the same place in its cache line as
 * in the whole slab, so the kernels writing it see the same alignment on
 * every replica.  On one thread there are no other replicas.
 */
static void plan_replica_slabs(fr_trainer *trainer) {
    const fr_model *model = trainer->model;
    trainer->own_floats = trainer->stage_floats = 0;
    for (int i = 0; i < model->layer_count; i++) {
        int w = own_trainable_weight(model, i);
        trainer->staged_weight[i] = false;
        if (trainer->threads == 1 || w < 0 || trainer->split_weight[i] ||
            model->params[w].numel < STAGE_GRAD_FLOATS)
            continue;
        trainer->staged_weight[i] = true;
        trainer->segments[trainer->segment_of[w]].staged = true;
        if (model->params[w].numel > trainer->stage_floats)
            trainer->stage_floats = model->params[w].numel;
    }
    if (trainer->threads == 1)
        return;
    size_t own = 0;
    for (int s = 0; s < trainer->segment_count; s++) {
        slab_segment *seg = &trainer->segments[s];
        if (seg->split || seg->staged)
            continue;
        own += (seg->slab_offset - own) % SLAB_CHUNK_ALIGN;
        seg->own_offset = own;
        own += seg->numel;
    }
    trainer->own_floats = own;
}

/*
 * Lay out the slab for the current frozen set: trainable parameters in the
 * order backward produces them, last layer first.  Optimizer state follows
 * the parameters that stay trainable; parameters that became trainable start
 * fresh.
 */
int fr_plan_layout(fr_trainer *trainer, fr_error *err) {
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
    trainer->segment_of = malloc(((size_t)params + 1) * sizeof *trainer->segment_of);
    trainer->split_weight = calloc((size_t)model->layer_count + 1, sizeof *trainer->split_weight);
    trainer->staged_weight = calloc((size_t)model->layer_count + 1, sizeof *trainer->staged_weight);
    trainer->grad_accumulate = calloc((size_t)model->layer_count + 1,
                                      sizeof *trainer->grad_accumulate);
    if (!trainer->segments || !trainer->segment_of || !trainer->split_weight ||
        !trainer->staged_weight || !trainer->grad_accumulate)
        goto oom;
    for (int i = 0; i < params; i++)
        trainer->segment_of[i] = -1;
    size_t offset = 0;
    for (int layer = model->layer_count - 1; layer >= 0; layer--) {
        const fr_layer *l = &model->layers[layer];
        int weight = own_trainable_weight(model, layer);
        trainer->split_weight[layer] = trainer->threads > 1 && weight >= 0 &&
                                       l->ops->weight_grad_rows;
        /* The bias first: a layer's first piece then carries its bias, which
         * every block of its outputs needs; then the weight, then the rest. */
        static const int slot_order[FR_LAYER_PARAMS_MAX] = {FR_BIAS, FR_WEIGHT, 2, 3};
        for (int j = 0; j < FR_LAYER_PARAMS_MAX; j++) {
            int k = slot_order[j], id = l->params[k];
            if (!owns_trainable(model, layer, k))
                continue;
            fr_param *p = &model->params[id];
            trainer->slab_offsets[id] = offset;
            trainer->segment_of[id] = trainer->segment_count;
            trainer->segments[trainer->segment_count++] =
                (slab_segment){.slab_offset = offset, .numel = p->numel, .param = id,
                               .split = id == weight && trainer->split_weight[layer]};
            offset += p->numel;
        }
    }
    trainer->trainable_count = offset;
    trainer->first_trainable = fr_model_first_trainable_layer(model);
    /* A parameter several layers use: the last of them (the first backward
     * reaches) writes its gradient, the others add to it. */
    for (int layer = 0; layer < model->layer_count; layer++)
        for (int k = 0; k < FR_LAYER_PARAMS_MAX; k++) {
            int id = model->layers[layer].params[k], users[8];
            if (id < 0 || !model->params[id].requires_grad)
                continue;
            int count = fr_param_users(model, id, users, 8);
            if (count > 1 && users[count < 8 ? count - 1 : 7] != layer)
                trainer->grad_accumulate[layer] |= 1u << k;
        }
    if (plan_buckets(trainer) != FR_OK || plan_pieces(trainer) != FR_OK)
        goto oom;
    plan_replica_slabs(trainer);
    for (int i = 0; i < params; i++)
        trainer->planned_requires_grad[i] = model->params[i].requires_grad;

    /* Optimizer state: carry each still-trainable parameter's over. */
    int per_value = fr_optim_state_per_value(&trainer->config);
    float *old_state[2] = {trainer->state_m, trainer->state_v};
    float *new_state[2] = {NULL, NULL};
    for (int k = 0; k < per_value; k++) {
        new_state[k] = fr_alloc(offset * sizeof(float));
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
    int rank_first, rank_rows, first, rows_cap;
    split_rows(trainer->config.max_batch, fr_comm_size(), 0, &rank_first, &rank_rows);
    split_rows(rank_rows, trainer->threads, 0, &first, &rows_cap);
    if (rows_cap < 1)
        rows_cap = 1;
    int failed = plan_activations(trainer, rows_cap, kept) != FR_OK;
    free(kept);
    trainer->feature_split = false;
    if (!failed) {
#pragma omp parallel num_threads(trainer->threads) reduction(+ : failed)
        {
            int t = omp_get_thread_num();
            if (build_replica(trainer, &trainer->replicas[t], t, rows_cap, t == 0) != FR_OK)
                failed++;
        }
    }
    if (failed)
        return fr_fail(err, FR_ENOMEM, "out of memory allocating replica workspaces for batch %d",
                       trainer->config.max_batch);
    return FR_OK;
oom:
    free(old_offsets);
    free(was_trainable);
    return fr_fail(err, FR_ENOMEM, "out of memory planning the gradient slab");
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
    size_t size = 0;
    trainer->stats_offset = malloc(((size_t)model->layer_count + 1) * sizeof(long));
    if (!trainer->stats_offset)
        return fr_fail(err, FR_ENOMEM, "out of memory creating the trainer");
    for (int i = 0; i < model->layer_count; i++) {
        const fr_layer *l = &model->layers[i];
        trainer->stats_offset[i] = -1;
        if (!l->ops->stats_count)
            continue;
        trainer->stats_offset[i] = (long)size;
        size += (size_t)l->ops->stats_count(l);
    }
    trainer->stats_size = size;
    if (size == 0)
        return FR_OK;
    trainer->stats = calloc((size_t)trainer->threads * 4 * size, sizeof(double));
    if (!trainer->stats)
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
    trainer->loss = fr_loss_kind_ops(config->loss);
    trainer->target_width =
        trainer->loss->targets_per_sample(model->layers[model->layer_count - 1].out);
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
    if ((rc = fr_plan_layout(trainer, err)) != FR_OK || (rc = plan_batch_stats(trainer, err)) != FR_OK) {
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
    free(trainer->stats);
    free(trainer->stats_offset);
    free(trainer->param_lr);
    free(trainer->clip_partial);
    free(trainer);
}

bool fr_plan_changed(const fr_trainer *trainer) {
    for (int i = 0; i < trainer->model->param_count; i++)
        if (trainer->model->params[i].requires_grad != trainer->planned_requires_grad[i])
            return true;
    return false;
}

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
    if (rc == FR_OK && fr_plan_changed(trainer))
        rc = fr_plan_layout(trainer, err);
    return rc;
}
