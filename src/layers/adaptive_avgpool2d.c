/*
 * adaptive_avgpool2d.c - PyTorch's nn.AdaptiveAvgPool2d(output_size) for a
 * square output: each output cell averages the input window PyTorch gives it,
 * rows [floor(i*H/out), ceil((i+1)*H/out)) and the same for columns, so the
 * windows cover the input whatever its size (they overlap when it does not
 * divide).  adaptive_avgpool2d(1) is a global average pool: ResNet's head.
 * No scratch: backward spreads each output gradient evenly over its window.
 */
#include "../kernels.h"

#include <string.h>

/* adaptive_avgpool2d(output_size) */
enum { OUTPUT_SIZE };

/* Output cell i's window along an axis of `size` cut into `cells`. */
static void window_of(int i, int size, int cells, int *begin, int *end) {
    *begin = (int)((long long)i * size / cells);
    *end = (int)(((long long)(i + 1) * size + cells - 1) / cells);
}

/* ------------------------------------------------------- shape */

static int adaptive_avgpool2d_infer_shape(fr_layer *l, fr_error *err) {
    int cells = l->args[OUTPUT_SIZE];
    if (cells < 1) {
        char self[64];
        fr_layer_format(l, self, sizeof self);
        return fr_layer_fail(l, err, FR_EINVAL, "%s needs an output size of at least 1", self);
    }
    l->out = (fr_shape){l->in.c, cells, cells};
    l->weight_ndim = 0;
    l->bias_numel = 0;
    l->fan_in = 0;
    return FR_OK;
}

/* ----------------------------------------------------- forward */

static void adaptive_avgpool2d_forward(const fr_layer *l, const float *in, float *out, int n,
                                       void *scratch) {
    (void)scratch;
    int h = l->in.h, w = l->in.w, oh = l->out.h, ow = l->out.w;
    size_t in_plane = (size_t)h * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.c;
    for (size_t p = 0; p < planes; p++) {
        const float *src = in + p * in_plane;
        float *dst = out + p * out_plane;
        for (int oy = 0; oy < oh; oy++) {
            int y0, y1;
            window_of(oy, h, oh, &y0, &y1);
            for (int ox = 0; ox < ow; ox++) {
                int x0, x1;
                window_of(ox, w, ow, &x0, &x1);
                float area = (float)((y1 - y0) * (x1 - x0));
                dst[oy * ow + ox] = fr_window_sum(src, w, y0, y1, x0, x1) / area;
            }
        }
    }
}

/* ---------------------------------------------------- backward */

static void adaptive_avgpool2d_backward(const fr_layer *l, const float *in, const float *out,
                                        const float *dout, float *din, float *dweight,
                                        float *dbias, int n, void *scratch) {
    (void)in;
    (void)out;
    (void)dweight;
    (void)dbias;
    (void)scratch;
    if (!din)
        return;
    int h = l->in.h, w = l->in.w, oh = l->out.h, ow = l->out.w;
    size_t in_plane = (size_t)h * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.c;
    memset(din, 0, planes * in_plane * sizeof *din);
    for (size_t p = 0; p < planes; p++) {
        float *dst = din + p * in_plane;
        const float *grad = dout + p * out_plane;
        for (int oy = 0; oy < oh; oy++) {
            int y0, y1;
            window_of(oy, h, oh, &y0, &y1);
            for (int ox = 0; ox < ow; ox++) {
                int x0, x1;
                window_of(ox, w, ow, &x0, &x1);
                float area = (float)((y1 - y0) * (x1 - x0));
                fr_window_add(dst, w, y0, y1, x0, x1, grad[oy * ow + ox] / area);
            }
        }
    }
}

const fr_layer_ops fr_adaptive_avgpool2d_ops = {
    .kind = "adaptive_avgpool2d",
    .args = {{"output_size", .minimum = 1}},
    .infer_shape = adaptive_avgpool2d_infer_shape,
    .scratch_bytes = fr_scratch_none,
    .forward = adaptive_avgpool2d_forward,
    .backward = adaptive_avgpool2d_backward,
};
