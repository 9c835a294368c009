/*
 * cache.c - the frozen-prefix feature cache: when layers [0, first_trainable)
 * hold no trainable parameter, their output for a sample never changes, so
 * it is computed once per sample and every step runs only the trainable
 * suffix (take_rows in train.c copies the features in).
 */
#include "trainer.h"

#include <omp.h>
#include <string.h>

/* The cache serves rows when the prefix is frozen and every row is in it. */
bool fr_cache_has_rows(const fr_trainer *trainer, const int *ids, int rows) {
    const feature_cache *c = &trainer->cache;
    if (c->layer < 0 || c->layer != trainer->first_trainable - 1 || !c->data)
        return false;
    for (int i = 0; i < rows; i++)
        if (ids[i] >= c->samples)
            return false;
    return true;
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
    size_t sample_bytes = fr_shape_numel(data->shape) * fr_dtype_size(data->x_dtype);
    /* Each replica in a region of its own, as in a step not split by features. */
    trainer->feature_split = false;
#pragma omp parallel for num_threads(trainer->threads) schedule(static)
    for (int k = 0; k < chunks; k++) {
        replica *r = &trainer->replicas[omp_get_thread_num()];
        fr_step_place(trainer, r, 0);
        int first = k * chunk, rows = c->samples - first < chunk ? c->samples - first : chunk;
        memcpy(r->gathered_x, (const char *)data->x + (size_t)first * sample_bytes,
               (size_t)rows * sample_bytes);
        fr_step_forward(trainer, r, r->gathered_x, rows, 0, c->layer + 1);
        memcpy(c->features + (size_t)first * c->numel,
               fr_step_output(trainer, r, r->gathered_x, c->layer),
               (size_t)rows * c->numel * sizeof(float));
    }
    c->data = data;
}

/* Nothing cached, and no memory held for it. */
static void drop_cache(feature_cache *c) {
    fr_free(c->features);
    c->features = NULL;
    c->data = NULL;
    c->layer = -1;
}

/*
 * Size the feature cache for this dataset and frozen prefix (as many samples
 * as the budget holds, from index 0) and fill it.  Nothing is cached when the
 * prefix is empty, moves no data (a lone flatten), or ends inside a residual
 * block.
 */
int fr_cache_plan(fr_trainer *trainer, const fr_dataset *data, fr_error *err) {
    feature_cache *c = &trainer->cache;
    int layer = trainer->first_trainable - 1;
    if (!c->enabled || layer < 0 || trainer->first_trainable >= trainer->model->layer_count) {
        drop_cache(c);
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
    /* What the whole dataset would take, for the caller to say when the
     * budget holds less. */
    c->wanted_bytes = moves_data && clean_cut ? (size_t)data->n * numel * sizeof(float) : 0;
    c->wanted_samples = moves_data && clean_cut ? data->n : 0;
    if (!moves_data || !clean_cut || samples == 0) {
        drop_cache(c);
        return FR_OK;
    }
    if (c->layer == layer && c->numel == numel && c->samples == (int)samples) {
        if (c->data != data)
            fill_cache(trainer, data);
        return FR_OK;
    }
    drop_cache(c);
    c->features = fr_alloc(samples * numel * sizeof(float));
    if (!c->features)
        return fr_fail(err, FR_ENOMEM, "out of memory for a feature cache of %zu MB",
                       samples * numel * sizeof(float) >> 20);
    c->layer = layer;
    c->numel = numel;
    c->samples = (int)samples;
    fill_cache(trainer, data);
    return FR_OK;
}

size_t fr_trainer_cache_bytes(const fr_trainer *trainer) {
    return fr_alloc_size(trainer->cache.features);
}

int fr_trainer_cache_samples(const fr_trainer *trainer, int *wanted, size_t *wanted_bytes) {
    const feature_cache *c = &trainer->cache;
    if (wanted)
        *wanted = c->wanted_samples;
    if (wanted_bytes)
        *wanted_bytes = c->wanted_bytes;
    return c->features && c->data ? c->samples : 0;
}

int fr_trainer_cache_layer(const fr_trainer *trainer) {
    return trainer->cache.layer >= 0 && trainer->cache.data ? trainer->cache.layer : -1;
}
