/*
 * loss.c - the two losses, each computing its value and its gradient in one
 * pass over the output: softmax cross-entropy over class indices (mean over
 * the batch, as nn.CrossEntropyLoss) and mean squared error (mean over every
 * element, as nn.MSELoss).
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

static double cross_entropy(const float *output, const int32_t *labels, int n, int k,
                            float scale, float *doutput, long *correct, int *bad_label) {
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *row = output + (size_t)i * k;
        int label = labels[i];
        if (label < 0 || label >= k) {
            *bad_label = i;
            continue;
        }
        /* log-sum-exp around the row's maximum: stable for any logits. */
        float max = row[argmax(row, k)];
        double sum = 0.0;
        for (int j = 0; j < k; j++)
            sum += exp((double)row[j] - max);
        double log_sum = log(sum) + max;
        total += log_sum - row[label];
        if (correct && argmax(row, k) == label)
            (*correct)++;
        if (doutput) {
            float *drow = doutput + (size_t)i * k;
            for (int j = 0; j < k; j++)
                drow[j] = (float)exp((double)row[j] - log_sum) * scale;
            drow[label] -= scale;
        }
    }
    return total;
}

static double mean_squared_error(const float *output, const float *target, int n, int k,
                                 float scale, float *doutput, long *correct) {
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

double fr_loss(fr_loss_kind kind, const float *output, const void *targets, int n, int k,
               float scale, float *doutput, long *correct, int *bad_label) {
    if (kind == FR_MSE)
        return mean_squared_error(output, targets, n, k, scale, doutput, correct);
    return cross_entropy(output, targets, n, k, scale, doutput, correct, bad_label);
}
