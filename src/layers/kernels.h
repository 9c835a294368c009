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
 * The windows of a pooling layer: kernel x kernel sliding by `stride` over the
 * input padded by `pad` (maxpool2d, avgpool2d, whose arguments are
 * FR_POOL_ARGS), or, with kernel 0, PyTorch's adaptive windows, which cover
 * the input whatever its size (adaptive_avgpool2d).
 */
typedef struct fr_pool_window {
    int kernel, stride, pad;
} fr_pool_window;

/* (kernel_size, stride=None, padding=0): stride None is the kernel size. */
#define FR_POOL_ARGS                                                                      \
    {{"kernel_size", "kernel", .minimum = 1},                                              \
     {"stride", .minimum = 1, .optional = true, .default_value = FR_ARG_NONE},             \
     {"padding", .minimum = 0, .optional = true, .default_value = 0}}
fr_pool_window fr_pool_window_of(const fr_layer *l);

/*
 * The shape rule of a FR_POOL_ARGS layer: its window sliding over the input
 * padded by pad, which PyTorch allows up to half the kernel; floor mode.
 * Sets l->out (the channels kept) and no parameters.
 */
int fr_pool_infer_shape(fr_layer *l, fr_error *err);

/* One window: for the output element at `out` (an offset into the layer's
 * output), rows [y0, y1) and columns [x0, x1) of the input plane at
 * `in_plane` (clipped to the plane; rows are `width` long), and `area`, what
 * PyTorch divides an average by (the kernel's, padding counted, or the
 * adaptive window's). */
typedef struct fr_window {
    size_t in_plane, out;
    int y0, y1, x0, x1, width, area;
} fr_window;

/* visit(window, context) for every output element of n samples of layer l,
 * plane by plane, each plane's in row-major order: the pooling layers' one
 * window loop. */
void fr_pool_each_window(const fr_layer *l, fr_pool_window how, int n,
                         void (*visit)(const fr_window *window, void *context), void *context);

/* The average pools (avgpool2d, adaptive_avgpool2d): forward, and backward
 * spreading each output gradient evenly over its window. */
void fr_avgpool_forward(const fr_layer *l, fr_pool_window how, const float *in, float *out, int n);
void fr_avgpool_backward(const fr_layer *l, fr_pool_window how, const float *dout, float *din,
                         int n);

/* dbias[c] += sum of d[c x plane] row c (conv's bias gradient, one sample). */
void fr_bias_grad_channels(const float *d, int channels, int plane,
                           float *dbias);

/*
 * A shape error from infer_shape, prefixed with the layer's name when it has
 * one ("fc1: linear(9216, 128) expects ...").  Returns status.
 */
int fr_layer_fail(const fr_layer *l, fr_error *err, int status,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* scratch_bytes for layers that need none. */
size_t fr_scratch_none(const fr_layer *l, int n);

/* infer_shape for a layer whose output has its input's shape and which has
 * no parameters (relu, dropout, a residual block's join). */
int fr_infer_same_shape(fr_layer *l, fr_error *err);

/* What infer_shape sets for a layer without parameters. */
void fr_layer_no_params(fr_layer *l);
/* infer_shape's word on parameter slot `slot`: it exists, with this shape. */
void fr_layer_param_shape(fr_layer *l, int slot, int ndim, const int *shape);
/* FR_ESHAPE unless the layer's input is an image [C, H, W] (conv2d, pools,
 * batchnorm2d): "conv1: conv2d(1, 32, 3) expects an image [C, H, W], got 784". */
int fr_layer_need_image(const fr_layer *l, fr_error *err);

/* A convolution's sizes, for conv2d_dnnl.c (every field set: contexts are
 * matched by their bytes). */
typedef struct fr_conv_shape {
    int in_c, out_c, k, stride, pad, h, w, oh, ow;
} fr_conv_shape;
/* conv2d through oneDNN (conv2d_dnnl.c): forward of n NCHW samples, one per
 * call, plus the bias; backward over all n, din and dweight written over
 * where not NULL.  false: not built with oneDNN, or it cannot run the shape
 * (the caller then runs its own products). */
bool fr_conv_dnnl_forward(const fr_conv_shape *s, const float *weight, const float *bias,
                          const float *in, float *out, int n);
bool fr_conv_dnnl_backward(const fr_conv_shape *s, const float *weight, const float *in,
                           const float *dout, float *din, float *dweight, int n);

/* ----------------------------------------------------- dropout masks */

/* splitmix64's finalizer: every input bit moves every output bit. */
uint64_t fr_mix64(uint64_t z);
/* The key of a dropout mask at `step` of a run seeded with `seed`, for the
 * layer called `name` (and `what` in it, NULL for the layer's own output):
 * element j of global batch row `row` is kept when
 * fr_mix64(fr_mix64(key ^ row) + j) >> 40 reaches p·2²⁴ (dropout.c, lora.c). */
uint64_t fr_dropout_key(uint64_t seed, long step, const char *name, const char *what);

/* ------------------------------------------------------------- LoRA */

/* Where a train-mode forward's rows sit, for the adapter's dropout mask:
 * GEMM row r is a position of global batch row first_row + r / rows_per_sample. */
typedef struct fr_lora_at {
    uint64_t seed;
    long step;
    int first_row;
    int rows_per_sample;
} fr_lora_at;

/* PEFT's scaling: alpha / rank, or alpha / sqrt(rank) (rslora). */
float fr_lora_scale(int rank, float alpha, bool rslora);
/* infer_shape's part for an adapter: lora_A [rank, in], lora_B [out, rank]
 * when l->lora.rank > 0. */
void fr_lora_param_shapes(fr_layer *l, int in_n, int out_n);
/* Scratch the adapter needs for `rows` GEMM rows (0 without an adapter). */
size_t fr_lora_scratch_bytes(const fr_layer *l, int rows, int in_n);
/* out[rows x out_n] += the adapter's part, from in[rows x in_n]; `at` NULL:
 * no dropout (eval mode).  Keeps what backward needs in scratch. */
void fr_lora_forward(const fr_layer *l, const float *in, float *out, int rows, int in_n,
                     int out_n, void *scratch, const fr_lora_at *at);
/* The adapter's gradients (where grads asks) and its part of din, added to
 * what the base wrote there (din NULL: none wanted). */
void fr_lora_backward(const fr_layer *l, const float *in, const float *dout, float *din,
                      const fr_param_grads *grads, int rows, int in_n, int out_n, void *scratch);

#endif /* FROST_KERNELS_H */
