/*
 * kernels.h - layer helpers shared by more than one file in src/layers/ that
 * internal.h does not already declare (it declares the GEMM, im2col/col2im and
 * row-bias kernels).  Everything here is implemented once, in kernels.c, so the
 * layers differ only in what makes them different.
 */
#ifndef FROST_KERNELS_H
#define FROST_KERNELS_H

#include "internal.h"

/*
 * Positions a window of `kernel` takes sliding by `stride` over an axis of
 * `size` padded by `pad` on both sides (floor mode, as PyTorch's Conv2d and
 * MaxPool2d); 0 when the window does not fit even once.
 */
int fr_window_count(int size, int kernel, int stride, int pad);

/* dbias[c] += sum of d[c x plane] row c (conv's bias gradient, one sample). */
void fr_bias_grad_channels(const float *d, int channels, int plane,
                           float *dbias);

/* "32x13x13" */
void fr_shape_format(fr_shape shape, char *buf, size_t len);

/*
 * A shape error from infer_shape, prefixed with the layer's name when it has
 * one ("fc1: linear(9216, 128) expects ...").  Returns status.
 */
int fr_layer_fail(const fr_layer *l, fr_error *err, int status,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* scratch_bytes for layers that need none. */
size_t fr_scratch_none(const fr_layer *l, int n);

#endif /* FROST_KERNELS_H */
