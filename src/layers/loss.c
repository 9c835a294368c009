/*
 * loss.c - the losses, one table entry each (fr_loss_kinds), as the layers
 * are: what targets a loss takes for a model's output, and one pass over the
 * output computing its value and its gradient.
 *
 *   cross_entropy  softmax cross-entropy over class indices, nn.CrossEntropyLoss:
 *                  one class id per sample for an output [K] (or any shape
 *                  but [T, K], read flat), one per position for an output
 *                  [T, K] (next-token prediction), where -100 is ignored
 *                  (ignore_index) and the mean is over the targets not ignored
 *   mse            mean squared error over every element, nn.MSELoss; float
 *                  targets shaped as the output
 *
 * The trainer never switches on a loss: it asks the table how many targets
 * a sample has and of which dtype, gathers them as bytes, and divides by the
 * count the loss gives for the global batch.
 */
#include "internal.h"

#include <math.h>

static int argmax(const float *row, int k) {
    int best = 0;
    for (int j = 1; j < k; j++)
        if (row[j] > row[best])
            best = j;
    return best;
}

/* ------------------------------------------------------ cross-entropy */

/* Per-position targets for an output [T, K]; else one per sample. */
static void cross_entropy_rows(fr_shape output, int *positions, int *classes) {
    if (output.ndim == 2) {
        *positions = output.d[0];
        *classes = output.d[1];
    } else {
        *positions = 1;
        *classes = (int)fr_shape_numel(output);
    }
}

static long cross_entropy_count(fr_shape output, const void *targets, long samples) {
    int positions, classes;
    cross_entropy_rows(output, &positions, &classes);
    const int32_t *labels = targets;
    long count = 0;
    for (long i = 0; i < samples * positions; i++)
        count += labels[i] != FR_IGNORE_INDEX;
    return count;
}

static double cross_entropy(fr_shape output_shape, const float *output, const void *targets,
                            int n, float scale, float *doutput, long *correct, long *bad_row) {
    int positions, k;
    cross_entropy_rows(output_shape, &positions, &k);
    const int32_t *labels = targets;
    double total = 0.0;
    for (long i = 0; i < (long)n * positions; i++) {
        const float *row = output + (size_t)i * k;
        float *drow = doutput ? doutput + (size_t)i * k : NULL;
        int label = labels[i];
        if (label == FR_IGNORE_INDEX && positions > 1) {
            if (drow)
                memset(drow, 0, (size_t)k * sizeof *drow);
            continue;
        }
        if (label < 0 || label >= k) {
            *bad_row = i / positions;
            continue;
        }
        /* log-sum-exp around the row's maximum: stable for any logits. */
        int best = argmax(row, k);
        float max = row[best];
        double sum = 0.0;
        for (int j = 0; j < k; j++)
            sum += exp((double)row[j] - max);
        double log_sum = log(sum) + max;
        total += log_sum - row[label];
        if (correct && best == label)
            (*correct)++;
        if (drow) {
            for (int j = 0; j < k; j++)
                drow[j] = (float)exp((double)row[j] - log_sum) * scale;
            drow[label] -= scale;
        }
    }
    return total;
}

static bool cross_entropy_label_ok(fr_shape output, int32_t label) {
    int positions, classes;
    cross_entropy_rows(output, &positions, &classes);
    return (label >= 0 && label < classes) || (positions > 1 && label == FR_IGNORE_INDEX);
}

/* -------------------------------------------------------------- MSE */

static long mse_count(fr_shape output, const void *targets, long samples) {
    (void)output, (void)targets;
    return samples;
}

static double mean_squared_error(fr_shape output_shape, const float *output, const void *targets,
                                 int n, float scale, float *doutput, long *correct,
                                 long *bad_row) {
    (void)bad_row;
    int k = (int)fr_shape_numel(output_shape);
    const float *target = targets;
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *row = output + (size_t)i * k, *want = target + (size_t)i * k;
        double row_sum = 0.0;
        for (int j = 0; j < k; j++) {
            float diff = row[j] - want[j];
            row_sum += (double)diff * diff;
            if (doutput)
                doutput[(size_t)i * k + j] = 2.0f * diff / (float)k * scale;
        }
        /* nn.MSELoss averages over all n*k elements: per sample that is the
         * row mean, and the caller divides the sum of rows by the batch. */
        total += row_sum / k;
        if (correct && argmax(row, k) == argmax(want, k))
            (*correct)++;
    }
    return total;
}

/* ------------------------------------------------------------ table */

static int cross_entropy_targets(fr_shape output) {
    int positions, classes;
    cross_entropy_rows(output, &positions, &classes);
    return positions;
}

static int mse_targets(fr_shape output) { return (int)fr_shape_numel(output); }

static const fr_loss_ops cross_entropy_ops = {
    .name = "cross_entropy",
    .target_dtype = FR_I32,
    .targets_per_sample = cross_entropy_targets,
    .count = cross_entropy_count,
    .compute = cross_entropy,
    .label_ok = cross_entropy_label_ok,
};

static const fr_loss_ops mse_ops = {
    .name = "mse",
    .target_dtype = FR_F32,
    .targets_per_sample = mse_targets,
    .count = mse_count,
    .compute = mean_squared_error,
};

/* Indexed by fr_loss_kind. */
static const fr_loss_ops *const loss_kinds[] = {&cross_entropy_ops, &mse_ops};

const fr_loss_ops *fr_loss_kind_ops(fr_loss_kind kind) {
    return kind == FR_MSE ? loss_kinds[FR_MSE] : loss_kinds[FR_CROSS_ENTROPY];
}

double fr_loss(fr_loss_kind kind, const float *output, const void *targets, int n, int k,
               float scale, float *doutput, long *correct, int *bad_label) {
    long bad = -1;
    double total = fr_loss_kind_ops(kind)->compute(fr_shape_vector(k), output, targets, n, scale,
                                                   doutput, correct, &bad);
    if (bad >= 0)
        *bad_label = (int)bad;
    return total;
}
