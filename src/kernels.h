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

/*
 * The shape rule of a pooling window (maxpool2d, avgpool2d): a kernel x kernel
 * window sliding by `stride` over the input padded by `pad`, which PyTorch
 * allows up to half the kernel; floor mode.  Sets l->out (the channels kept)
 * and no parameters; `self` names the layer in messages.
 */
int fr_pool_infer_shape(fr_layer *l, const char *self, int kernel, int stride, int pad,
                        fr_error *err);

/* The part of a window starting at `first` (negative in the padding) with
 * `size` positions that lies inside [0, limit): [*begin, *end). */
void fr_window_clip(int first, int size, int limit, int *begin, int *end);

/* Sum of plane[y0..y1) x [x0..x1) (rows of `width`), and its adjoint: `value`
 * added to each of those elements.  The average pools' two loops. */
float fr_window_sum(const float *plane, int width, int y0, int y1, int x0, int x1);
void fr_window_add(float *plane, int width, int y0, int y1, int x0, int x1, float value);

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
