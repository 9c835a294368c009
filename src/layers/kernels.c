/*
 * kernels.c - the numerical building blocks the layers share: the affine map
 * behind linear layers, im2col/col2im that turn a convolution into one GEMM
 * per sample, the bias broadcasts and reductions for both layouts, the
 * pooling layers' windows (their shape rule, the one loop over them, the
 * average pools), and the small helpers every shape rule uses.
 *
 * Every kernel is single-threaded and allocates nothing: the trainer runs one
 * replica per OpenMP thread (and keeps OpenBLAS itself to one thread) and hands
 * each layer its own scratch, so parallelism and memory are decided above this
 * file.  Layouts are PyTorch's: row-major, NCHW, Linear weight [out, in],
 * Conv2d weight [out, in, k, k].
 */
#include "kernels.h"

#include <cblas.h>
#include <stdarg.h>
#include <string.h>

/* ------------------------------------------------------------ GEMM */

void fr_gemm_affine(const float *in, const float *weight, const float *bias,
                    float *out, int n, int k, int m, bool relu) {
    if (n <= 0 || m <= 0)
        return;
    /* The bias goes in first and the GEMM adds onto it (beta = 1), which is
     * PyTorch's order (addmm): the same rounding keeps relu masks and maxpool
     * choices identical, so frost and PyTorch stay within 1e-6 over a run. */
    float beta = 0.0f;
    if (bias) {
        for (int row = 0; row < n; row++)
            memcpy(out + (size_t)row * m, bias, (size_t)m * sizeof *bias);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, in, k,
                weight, k, beta, out, m);
    if (relu)
        fr_relu_inplace(out, (size_t)n * m);
}

void fr_gemm_affine_cols(const float *in, const float *weight, const float *bias, float *out,
                         int n, int k, int m, int col_begin, int col_end, bool relu) {
    int cols = col_end - col_begin;
    if (n <= 0 || cols <= 0)
        return;
    float beta = 0.0f;
    float *block = out + col_begin;
    if (bias) {
        for (int row = 0; row < n; row++)
            memcpy(block + (size_t)row * m, bias + col_begin, (size_t)cols * sizeof *bias);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, cols, k, 1.0f, in, k,
                weight + (size_t)col_begin * k, k, beta, block, m);
    if (relu)
        for (int row = 0; row < n; row++)
            fr_relu_inplace(block + (size_t)row * m, (size_t)cols);
}

void fr_relu_inplace(float *values, size_t count) {
    /* "negative -> 0", so a NaN passes through as in PyTorch. */
#pragma omp simd
    for (size_t i = 0; i < count; i++)
        values[i] = values[i] < 0.0f ? 0.0f : values[i];
}

void fr_bias_set_channels(float *out, const float *bias, int channels, int plane) {
    for (int ch = 0; ch < channels; ch++) {
        float *dst = out + (size_t)ch * plane;
#pragma omp simd
        for (int i = 0; i < plane; i++)
            dst[i] = bias[ch];
    }
}

/* ------------------------------------------------------- im2col */

/*
 * The output positions o in [*first, *last) whose input coordinate
 * o * stride + offset falls inside [0, size).  Computing the range once per
 * row keeps the bounds tests out of the inner loops of im2col and col2im.
 */
static void inside_range(int size, int offset, int stride, int count,
                         int *first, int *last) {
    int lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    int hi = size - 1 - offset < 0 ? 0 : (size - 1 - offset) / stride + 1;
    if (hi > count)
        hi = count;
    if (lo > hi)
        lo = hi;
    *first = lo;
    *last = hi;
}

/*
 * A stride-1 convolution whose output has the input's size ("same" padding,
 * 2 * pad = k - 1: ResNet's 3x3 convolutions) sees, for kernel tap (ki, kj),
 * the whole image shifted by (ki - pad) * w + (kj - pad) in flat order: row
 * (ci, ki, kj) of col is one contiguous copy of the plane, except that the
 * columns the tap pushes past the left or right edge read the neighbouring
 * row and must be zero instead (a position whose column is inside reads the
 * right row, or one outside the plane, which is zero too).  One long copy and
 * a few zeros per row instead of h short copies: the rows are 7-28 values
 * long here.
 */
static bool same_size(int h, int w, int k, int stride, int pad, int oh, int ow) {
    return stride == 1 && oh == h && ow == w && 2 * pad == k - 1;
}

/* For tap (ki, kj): the flat positions [*first, *last) of the output plane
 * whose shifted input lies inside the plane, the shift, and the columns
 * [*x0, *x1) inside the image (the others are padding). */
static void same_tap(int h, int w, int pad, int ki, int kj, long *shift, size_t *first,
                     size_t *last, int *x0, int *x1) {
    long plane = (long)h * w;
    *shift = (long)(ki - pad) * w + (kj - pad);
    /* A small image may be shifted out entirely: clamp to the plane. */
    long lo = *shift < 0 ? -*shift : 0, hi = *shift > 0 ? plane - *shift : plane;
    lo = lo < plane ? lo : plane;
    hi = hi > lo ? hi : lo;
    *first = (size_t)lo;
    *last = (size_t)hi;
    *x0 = kj < pad ? (pad - kj < w ? pad - kj : w) : 0;
    *x1 = kj > pad ? (kj - pad < w ? w - (kj - pad) : 0) : w;
}

/* Columns [0, x0) and [x1, w) of an h x w plane set to zero, column by
 * column: one or two values a row, which stored row by row would each be a
 * call to memset. */
static void zero_columns(float *plane, int h, int w, int x0, int x1) {
    for (int ox = 0; ox < x0; ox++)
        for (int oy = 0; oy < h; oy++)
            plane[(size_t)oy * w + ox] = 0.0f;
    for (int ox = x1; ox < w; ox++)
        for (int oy = 0; oy < h; oy++)
            plane[(size_t)oy * w + ox] = 0.0f;
}

/* Both directions over every tap (ci, ki, kj) of a same-size convolution:
 * with `img`, its columns into col (im2col); with `add_to`, col folded back
 * and added to it (col2im), each row's padding columns zeroed in col (the
 * scratch it is) so the row adds back in one long loop. */
static void same_size_taps(const float *img, float *add_to, float *col, size_t ld, int c,
                           int h, int w, int k, int pad) {
    size_t plane = (size_t)h * w;
    for (int ci = 0; ci < c; ci++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                float *row = col + ((size_t)(ci * k + ki) * k + kj) * ld;
                long shift;
                size_t first, last;
                int x0, x1;
                same_tap(h, w, pad, ki, kj, &shift, &first, &last, &x0, &x1);
                if (add_to) {
                    zero_columns(row, h, w, x0, x1);
                    float *dst = add_to + (size_t)ci * plane + shift;
#pragma omp simd
                    for (size_t p = first; p < last; p++)
                        dst[p] += row[p];
                    continue;
                }
                const float *src = img + (size_t)ci * plane + shift;
#pragma omp simd
                for (size_t p = 0; p < first; p++)
                    row[p] = 0.0f;
#pragma omp simd
                for (size_t p = first; p < last; p++)
                    row[p] = src[p];
#pragma omp simd
                for (size_t p = last; p < plane; p++)
                    row[p] = 0.0f;
                zero_columns(row, h, w, x0, x1);
            }
}

/*
 * Row (ci, ki, kj) of col holds, for every output position (oy, ox), the input
 * pixel that kernel tap meets there: img[ci][oy*s - p + ki][ox*s - p + kj], or
 * 0 in the padding.  col2im walks the same map backwards, adding.  A row
 * starts ld floats after the one before: oh * ow for one sample's matrix,
 * more when several samples' columns sit side by side in one matrix.
 */
void fr_im2col(const float *img, int c, int h, int w, int k, int stride,
               int pad, int oh, int ow, float *col, size_t ld) {
    if (same_size(h, w, k, stride, pad, oh, ow)) {
        same_size_taps(img, NULL, col, ld, c, h, w, k, pad);
        return;
    }
    for (int ci = 0; ci < c; ci++) {
        const float *channel = img + (size_t)ci * h * w;
        for (int ki = 0; ki < k; ki++) {
            int y0, y1;
            inside_range(h, ki - pad, stride, oh, &y0, &y1);
            for (int kj = 0; kj < k; kj++) {
                float *row = col + ((size_t)(ci * k + ki) * k + kj) * ld;
                int x0, x1;
                inside_range(w, kj - pad, stride, ow, &x0, &x1);
                for (int oy = 0; oy < oh; oy++) {
                    float *dst = row + (size_t)oy * ow;
                    if (oy < y0 || oy >= y1) {
                        memset(dst, 0, (size_t)ow * sizeof *dst);
                        continue;
                    }
                    const float *src =
                        channel + (size_t)(oy * stride + ki - pad) * w + kj - pad;
                    for (int ox = 0; ox < x0; ox++)
                        dst[ox] = 0.0f;
                    if (stride == 1)
                        memcpy(dst + x0, src + x0, (size_t)(x1 - x0) * sizeof *dst);
                    else
                        for (int ox = x0; ox < x1; ox++)
                            dst[ox] = src[ox * stride];
                    for (int ox = x1; ox < ow; ox++)
                        dst[ox] = 0.0f;
                }
            }
        }
    }
}

void fr_col2im_add(float *col, int c, int h, int w, int k, int stride,
                   int pad, int oh, int ow, float *img, size_t ld) {
    if (same_size(h, w, k, stride, pad, oh, ow)) {
        same_size_taps(NULL, img, col, ld, c, h, w, k, pad);
        return;
    }
    for (int ci = 0; ci < c; ci++) {
        float *channel = img + (size_t)ci * h * w;
        for (int ki = 0; ki < k; ki++) {
            int y0, y1;
            inside_range(h, ki - pad, stride, oh, &y0, &y1);
            for (int kj = 0; kj < k; kj++) {
                const float *row = col + ((size_t)(ci * k + ki) * k + kj) * ld;
                int x0, x1;
                inside_range(w, kj - pad, stride, ow, &x0, &x1);
                for (int oy = y0; oy < y1; oy++) {
                    const float *src = row + (size_t)oy * ow;
                    float *dst =
                        channel + (size_t)(oy * stride + ki - pad) * w + kj - pad;
                    if (stride == 1) {
#pragma omp simd
                        for (int ox = x0; ox < x1; ox++)
                            dst[ox] += src[ox];
                    } else {
                        for (int ox = x0; ox < x1; ox++)
                            dst[ox * stride] += src[ox];
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------- bias */

/* For linear layers: d is the batch's output gradient [n x out], and the bias
 * gradient is its column sums. */
void fr_bias_grad_rows(const float *d, long rows, int cols, float *dbias, bool accumulate) {
    if (!accumulate)
        for (int j = 0; j < cols; j++)
            dbias[j] = 0.0f;
    for (long row = 0; row < rows; row++) {
        const float *values = d + (size_t)row * cols;
#pragma omp simd
        for (int j = 0; j < cols; j++)
            dbias[j] += values[j];
    }
}

void fr_bias_grad_channels(const float *d, int channels, int plane,
                           float *dbias) {
    for (int ch = 0; ch < channels; ch++) {
        const float *values = d + (size_t)ch * plane;
        float sum = 0.0f;
        /* A vector of partial sums, in a fixed order (the result does not
         * depend on threads or timing); PyTorch's own sum is vectorized too. */
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < plane; i++)
            sum += values[i];
        dbias[ch] += sum;
    }
}

/* --------------------------------------------------------- shapes */

int fr_window_count(int size, int kernel, int stride, int pad) {
    long long span = (long long)size + 2LL * pad - kernel;
    if (span < 0 || stride < 1)
        return 0;
    return (int)(span / stride + 1);
}

/* ------------------------------------------------------- pooling */

/* FR_POOL_ARGS, in the order of the schema. */
enum { POOL_KERNEL, POOL_STRIDE, POOL_PADDING };

fr_pool_window fr_pool_window_of(const fr_layer *l) {
    int kernel = l->args[POOL_KERNEL], stride = l->args[POOL_STRIDE];
    return (fr_pool_window){kernel, stride == FR_ARG_NONE ? kernel : stride, l->args[POOL_PADDING]};
}

int fr_pool_infer_shape(fr_layer *l, fr_error *err) {
    fr_pool_window how = fr_pool_window_of(l);
    int kernel = how.kernel, stride = how.stride, pad = how.pad;
    if (fr_layer_need_image(l, err) != FR_OK)
        return FR_ESHAPE;
    char self[96], shape[64];
    fr_layer_format(l, self, sizeof self);
    fr_shape_format(l->in, shape, sizeof shape);
    if (kernel < 1 || stride < 1 || pad < 0)
        return fr_layer_fail(l, err, FR_EINVAL,
                             "%s needs kernel and stride of at least 1", self);
    if (pad > kernel / 2)
        return fr_layer_fail(l, err, FR_EINVAL,
                             "%s: padding %d is more than half the kernel size %d", self, pad,
                             kernel);
    int oh = fr_window_count(l->in.d[1], kernel, stride, pad);
    int ow = fr_window_count(l->in.d[2], kernel, stride, pad);
    if (oh < 1 || ow < 1) {
        if (pad == 0)
            return fr_layer_fail(l, err, FR_ESHAPE, "%s: window %dx%d is larger than the input %s",
                                 self, kernel, kernel, shape);
        return fr_layer_fail(l, err, FR_ESHAPE,
                             "%s: window %dx%d is larger than the input %s with padding %d", self,
                             kernel, kernel, shape, pad);
    }
    l->out = fr_shape_chw(l->in.d[0], oh, ow);
    fr_layer_no_params(l);
    return FR_OK;
}

/* Output cell i's window along an axis of `size` inputs and `cells`
 * outputs: [*begin, *end), inside the axis. */
static void window_span(fr_pool_window how, int i, int size, int cells, int *begin, int *end) {
    if (how.kernel == 0) { /* adaptive: [floor(i*size/cells), ceil((i+1)*size/cells)) */
        *begin = (int)((long long)i * size / cells);
        *end = (int)(((long long)(i + 1) * size + cells - 1) / cells);
        return;
    }
    int first = i * how.stride - how.pad;
    *begin = first < 0 ? 0 : first;
    *end = first + how.kernel < size ? first + how.kernel : size;
    if (*end < *begin)
        *end = *begin;
}

void fr_pool_each_window(const fr_layer *l, fr_pool_window how, int n,
                         void (*visit)(const fr_window *window, void *context), void *context) {
    int h = l->in.d[1], w = l->in.d[2], oh = l->out.d[1], ow = l->out.d[2];
    size_t in_plane = (size_t)h * w, out_plane = (size_t)oh * ow;
    size_t planes = (size_t)n * l->in.d[0];
    fr_window window = {.width = w, .area = how.kernel * how.kernel};
    for (size_t p = 0; p < planes; p++) {
        window.in_plane = p * in_plane;
        for (int oy = 0; oy < oh; oy++) {
            window_span(how, oy, h, oh, &window.y0, &window.y1);
            for (int ox = 0; ox < ow; ox++) {
                window_span(how, ox, w, ow, &window.x0, &window.x1);
                window.out = p * out_plane + (size_t)oy * ow + ox;
                if (how.kernel == 0)
                    window.area = (window.y1 - window.y0) * (window.x1 - window.x0);
                visit(&window, context);
            }
        }
    }
}

typedef struct average_context {
    const float *from;
    float *to;
} average_context;

static void average_window(const fr_window *window, void *context) {
    const average_context *c = context;
    const float *plane = c->from + window->in_plane;
    float sum = 0.0f;
    for (int y = window->y0; y < window->y1; y++)
        for (int x = window->x0; x < window->x1; x++)
            sum += plane[(size_t)y * window->width + x];
    c->to[window->out] = sum / (float)window->area;
}

/* The adjoint: the output gradient's share added to every input it covers. */
static void spread_window(const fr_window *window, void *context) {
    const average_context *c = context;
    float *plane = c->to + window->in_plane;
    float share = c->from[window->out] / (float)window->area;
    for (int y = window->y0; y < window->y1; y++)
        for (int x = window->x0; x < window->x1; x++)
            plane[(size_t)y * window->width + x] += share;
}

void fr_avgpool_forward(const fr_layer *l, fr_pool_window how, const float *in, float *out,
                        int n) {
    average_context c = {in, out};
    fr_pool_each_window(l, how, n, average_window, &c);
}

void fr_avgpool_backward(const fr_layer *l, fr_pool_window how, const float *dout, float *din,
                         int n) {
    memset(din, 0, (size_t)n * fr_shape_numel(l->in) * sizeof *din);
    average_context c = {dout, din};
    fr_pool_each_window(l, how, n, spread_window, &c);
}

/* --------------------------------------------------------- helpers */

int fr_layer_need_image(const fr_layer *l, fr_error *err) {
    if (l->in.ndim == 3)
        return FR_OK;
    char self[96], shape[64];
    fr_layer_format(l, self, sizeof self);
    fr_shape_format(l->in, shape, sizeof shape);
    return fr_layer_fail(l, err, FR_ESHAPE, "%s expects an image [C, H, W], got %s", self, shape);
}

void fr_layer_param_shape(fr_layer *l, int slot, int ndim, const int *shape) {
    l->param_ndim[slot] = ndim;
    for (int d = 0; d < ndim; d++)
        l->param_shape[slot][d] = shape[d];
}

int fr_layer_fail(const fr_layer *l, fr_error *err, int status,
                  const char *fmt, ...) {
    if (!err)
        return status;
    char what[FR_ERROR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (l->name[0])
        return fr_fail(err, status, "%s: %s", l->name, what);
    return fr_fail(err, status, "%s", what);
}

size_t fr_scratch_none(const fr_layer *l, int n) {
    (void)l;
    (void)n;
    return 0;
}

int fr_infer_same_shape(fr_layer *l, fr_error *err) {
    (void)err;
    l->out = l->in;
    fr_layer_no_params(l);
    return FR_OK;
}

void fr_layer_no_params(fr_layer *l) {
    memset(l->param_ndim, 0, sizeof l->param_ndim);
    l->fan_in = 0;
}

/* ------------------------------------------------------------ sums */

/* A residual block's join: the body's output plus the shortcut's. */
void fr_add_arrays(float *out, const float *a, const float *b, size_t count) {
#pragma omp simd
    for (size_t i = 0; i < count; i++)
        out[i] = a[i] + b[i];
}

/* Backward: the gradients at a block's input from its body and its shortcut. */
void fr_add_into(float *into, const float *from, size_t count) {
#pragma omp simd
    for (size_t i = 0; i < count; i++)
        into[i] += from[i];
}

/* ------------------------------------------------------- dropout masks */

uint64_t fr_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t fr_dropout_key(uint64_t seed, long step, const char *name, const char *what) {
    uint64_t key = fr_mix64(seed ^ fr_mix64((uint64_t)step * 0x9e3779b97f4a7c15ULL));
    for (size_t c = 0; name[c]; c++)
        key = fr_mix64(key ^ (unsigned char)name[c]);
    /* A separator no layer name holds, then the part's name. */
    if (what) {
        key = fr_mix64(key ^ 0x100u);
        for (size_t c = 0; what[c]; c++)
            key = fr_mix64(key ^ (unsigned char)what[c]);
    }
    return key;
}
