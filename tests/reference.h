/*
 * reference.h - what the tests that hold frost's float32 results against a
 * float64 reference share: float and double arrays to fill, and the error
 * they measure, max |f32 - f64| / (max |f64| + 1e-6) (the small term makes an
 * all-zero reference still fail a nonzero result; a NaN is an infinite
 * error).
 */
#ifndef FROST_TESTS_REFERENCE_H
#define FROST_TESTS_REFERENCE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *filled_floats(size_t count, float value) __attribute__((unused));
static float *filled_floats(size_t count, float value) {
    float *values = malloc((count ? count : 1) * sizeof *values);
    for (size_t i = 0; i < count; i++)
        values[i] = value;
    return values;
}

static float *copy_floats(const float *from, size_t count) __attribute__((unused));
static float *copy_floats(const float *from, size_t count) {
    float *values = malloc((count ? count : 1) * sizeof *values);
    memcpy(values, from, count * sizeof *values);
    return values;
}

static double *zeroed_doubles(size_t count) __attribute__((unused));
static double *zeroed_doubles(size_t count) { return calloc(count ? count : 1, sizeof(double)); }

static double relative_error(const float *got, const double *want, size_t count)
    __attribute__((unused));
static double relative_error(const float *got, const double *want, size_t count) {
    double worst_difference = 0.0, largest = 0.0;
    for (size_t i = 0; i < count; i++) {
        if (isnan(got[i]))
            return INFINITY;
        double difference = fabs((double)got[i] - want[i]);
        worst_difference = difference > worst_difference ? difference : worst_difference;
        largest = fabs(want[i]) > largest ? fabs(want[i]) : largest;
    }
    return worst_difference / (largest + 1e-6);
}

#endif
