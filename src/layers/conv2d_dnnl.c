/*
 * conv2d_dnnl.c - conv2d's products through oneDNN (Debian's libdnnl-dev), when frost is built
 * with it (./configure --with-dnnl, the default when it is installed).
 *
 * oneDNN's convolutions use the processor's widest vectors (AVX-512 where there is one) where
 * OpenBLAS, as it runs here, uses AVX2 (OPENBLAS_CORETYPE=Haswell): on resnet18's shapes they
 * ran at 100-195 GFLOP/s of one core against OpenBLAS's 70-98 (bench/conv_dnnl.c and
 * bench/conv_shapes.c; bench/README.md, *resnet18*).  frost's tensors stay NCHW and OIHW.
 *
 * Backward data and backward weights take all of the thread's n samples at once, in the layouts
 * oneDNN chooses: the operands are reordered into them and the result back.  Forward runs one
 * sample per call (a primitive for a batch of 1), so a sample's output has the same bits
 * whatever samples share the thread's rows, as the feature cache needs (conv2d.c), and on
 * frost's own layouts: with the layouts oneDNN chose forward was faster (25 against 37 ms for
 * one of each of resnet18's shapes on 8 samples) but rounded otherwise, enough to move
 * tests/torch_resnet.sh's weights 1.3e-4 from PyTorch's on one thread (a BatchNorm over 8
 * values, 1x1 planes, amplifies it), where on frost's layouts they stay within 1e-4.
 *
 * A context holds what one thread needs for one shape, one kind of product and one n: the
 * primitive, the reorders and a stream.  Its operands in oneDNN's layouts and its scratchpad
 * live in its thread's workspace, one buffer per thread as large as the largest context needs
 * (a thread runs one product at a time): a buffer per context held 4.2 GB at 224x224, batch 64.
 * Contexts are made on first use under a lock and kept for the life of the process (the
 * primitives are JIT code worth keeping; a shape seen once costs its buffers until exit).
 *
 * oneDNN is built on OpenMP and sizes a primitive for omp_get_max_threads() threads; frost's
 * threads are already the parallelism, so each makes and runs its primitives with its own
 * OpenMP thread count set to 1 (an ICV of its implicit task, restored after).  A primitive
 * made for 2 threads and run inside frost's parallel region, where oneDNN gets one, spun
 * forever in its backward-weights barrier.
 */
/* The fuzz targets compile the library's sources without configure's header:
 * conv2d there runs its own products. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "kernels.h"

#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS };

/* One operand: frost's plain memory (its handle set per call) and, when oneDNN chose another
 * layout, a buffer in that one with the reorder from or to it. */
typedef struct operand {
    dnnl_memory_t plain, chosen;
    dnnl_primitive_t reorder;
    size_t offset; /* of chosen in the thread's workspace, when it is not plain */
} operand;

typedef struct context {
    fr_conv_shape shape;
    int kind, n, thread;
    dnnl_stream_t stream;
    dnnl_primitive_t primitive;
    dnnl_memory_t scratchpad;
    operand src, weights, dst, bias; /* dst is diff_dst backward; src diff_src for data */
    bool has_bias;
    size_t workspace_bytes, scratchpad_offset;
    struct context *next;
} context;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t engine;
static bool engine_failed;
static context *contexts;
/* Each thread's workspace (by omp_get_thread_num()); a thread beyond the table runs OpenBLAS. */
enum { WORKSPACE_THREADS = 1024 };
static struct workspace {
    char *base;
    size_t bytes;
} workspaces[WORKSPACE_THREADS];

static size_t aligned_bytes(size_t bytes) {
    return (bytes + 63) & ~(size_t)63;
}

/* An operand of md (plain) as the primitive wants it (chosen); to_chosen says which way the
 * reorder runs. */
static bool operand_make(operand *o, const dnnl_memory_desc_t *plain,
                         const dnnl_memory_desc_t *chosen, bool to_chosen, size_t *workspace) {
    if (dnnl_memory_create(&o->plain, plain, engine, DNNL_MEMORY_NONE) != dnnl_success)
        return false;
    if (dnnl_memory_desc_equal(plain, chosen)) {
        o->chosen = o->plain;
        return true;
    }
    dnnl_primitive_desc_t pd;
    o->offset = *workspace;
    *workspace += aligned_bytes(dnnl_memory_desc_get_size(chosen));
    if (dnnl_memory_create(&o->chosen, chosen, engine, DNNL_MEMORY_NONE) != dnnl_success ||
        dnnl_reorder_primitive_desc_create(&pd, to_chosen ? plain : chosen, engine,
                                           to_chosen ? chosen : plain, engine, NULL) != dnnl_success)
        return false;
    bool ok = dnnl_primitive_create(&o->reorder, pd) == dnnl_success;
    dnnl_primitive_desc_destroy(pd);
    return ok;
}

/* Runs o's reorder (plain -> chosen, or chosen -> plain) after pointing plain at data. */
static void operand_reorder(dnnl_stream_t stream, operand *o, void *data, bool to_chosen) {
    dnnl_memory_set_data_handle(o->plain, data);
    if (!o->reorder)
        return;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, to_chosen ? o->plain : o->chosen},
                              {DNNL_ARG_TO, to_chosen ? o->chosen : o->plain}};
    dnnl_primitive_execute(o->reorder, stream, 2, args);
}

static context *context_make(const fr_conv_shape *s, int kind, int n, bool has_bias, int thread) {
    context *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->shape = *s;
    c->kind = kind;
    c->n = n;
    c->thread = thread;
    c->has_bias = has_bias && kind == FORWARD;
    dnnl_dims_t src_dims = {n, s->in_c, s->h, s->w}, wei_dims = {s->out_c, s->in_c, s->k, s->k};
    dnnl_dims_t dst_dims = {n, s->out_c, s->oh, s->ow}, bias_dims = {s->out_c};
    dnnl_dims_t strides = {s->stride, s->stride}, padding = {s->pad, s->pad};
    dnnl_memory_desc_t src, wei, dst, bias, any_src, any_wei, any_dst;
    dnnl_memory_desc_init_by_tag(&src, 4, src_dims, dnnl_f32, dnnl_nchw);
    dnnl_memory_desc_init_by_tag(&wei, 4, wei_dims, dnnl_f32, dnnl_oihw);
    dnnl_memory_desc_init_by_tag(&dst, 4, dst_dims, dnnl_f32, dnnl_nchw);
    dnnl_memory_desc_init_by_tag(&bias, 1, bias_dims, dnnl_f32, dnnl_x);
    dnnl_memory_desc_init_by_tag(&any_src, 4, src_dims, dnnl_f32, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&any_wei, 4, wei_dims, dnnl_f32, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&any_dst, 4, dst_dims, dnnl_f32, dnnl_format_tag_any);

    dnnl_convolution_desc_t fwd_desc, desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    /* The forward of a backward pair is only the hint: it runs on the layouts oneDNN
     * chooses; the forward that runs keeps frost's (see the top of the file). */
    bool plain = kind == FORWARD;
    bool ok = dnnl_convolution_forward_desc_init(&fwd_desc, dnnl_forward_training,
                                                 dnnl_convolution_direct, plain ? &src : &any_src,
                                                 plain ? &wei : &any_wei,
                                                 c->has_bias ? &bias : NULL,
                                                 plain ? &dst : &any_dst, strides, padding,
                                                 padding) == dnnl_success &&
              dnnl_primitive_attr_create(&attr) == dnnl_success &&
              dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) ==
                  dnnl_success;
    if (ok && kind != FORWARD) {
        ok = dnnl_primitive_desc_create(&hint, &fwd_desc, NULL, engine, NULL) == dnnl_success &&
             (kind == BACKWARD_DATA
                  ? dnnl_convolution_backward_data_desc_init(&desc, dnnl_convolution_direct,
                                                             &any_src, &any_wei, &any_dst,
                                                             strides, padding, padding)
                  : dnnl_convolution_backward_weights_desc_init(
                        &desc, dnnl_convolution_direct, &any_src, &any_wei, NULL, &any_dst,
                        strides, padding, padding)) == dnnl_success;
    }
    ok = ok && dnnl_primitive_desc_create(&pd, kind == FORWARD ? &fwd_desc : &desc, attr, engine,
                                          hint) == dnnl_success;
    if (ok) {
        dnnl_query_t src_q = kind == BACKWARD_DATA ? dnnl_query_diff_src_md : dnnl_query_src_md;
        dnnl_query_t wei_q = kind == BACKWARD_WEIGHTS ? dnnl_query_diff_weights_md
                                                      : dnnl_query_weights_md;
        dnnl_query_t dst_q = kind == FORWARD ? dnnl_query_dst_md : dnnl_query_diff_dst_md;
        size_t *ws = &c->workspace_bytes;
        const dnnl_memory_desc_t *pad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        ok = operand_make(&c->src, &src, dnnl_primitive_desc_query_md(pd, src_q, 0),
                          kind != BACKWARD_DATA, ws) &&
             operand_make(&c->weights, &wei, dnnl_primitive_desc_query_md(pd, wei_q, 0),
                          kind != BACKWARD_WEIGHTS, ws) &&
             operand_make(&c->dst, &dst, dnnl_primitive_desc_query_md(pd, dst_q, 0),
                          kind != FORWARD, ws) &&
             (!c->has_bias || operand_make(&c->bias, &bias, &bias, true, ws)) &&
             dnnl_memory_create(&c->scratchpad, pad, engine, DNNL_MEMORY_NONE) == dnnl_success &&
             dnnl_primitive_create(&c->primitive, pd) == dnnl_success &&
             dnnl_stream_create(&c->stream, engine, dnnl_stream_default_flags) == dnnl_success;
        c->scratchpad_offset = *ws;
        *ws += aligned_bytes(dnnl_memory_desc_get_size(pad));
    }
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (hint)
        dnnl_primitive_desc_destroy(hint);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    if (!ok) {
        /* What was made stays unreferenced: a shape oneDNN refuses costs a few objects once. */
        free(c);
        return NULL;
    }
    return c;
}

/* This thread's context for the shape, kind and n; NULL when oneDNN cannot run it.  The
 * caller has set its OpenMP thread count to 1. */
static context *context_for(const fr_conv_shape *s, int kind, int n, bool has_bias) {
    int thread = omp_get_thread_num();
    if (thread >= WORKSPACE_THREADS)
        return NULL;
    pthread_mutex_lock(&lock);
    context *c = NULL;
    if (!engine && !engine_failed)
        engine_failed = dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success;
    if (!engine_failed) {
        for (c = contexts; c; c = c->next)
            if (c->kind == kind && c->n == n && c->thread == thread &&
                c->has_bias == (has_bias && kind == FORWARD) &&
                memcmp(&c->shape, s, sizeof *s) == 0)
                break;
        if (!c && (c = context_make(s, kind, n, has_bias, thread))) {
            c->next = contexts;
            contexts = c;
        }
        struct workspace *w = &workspaces[thread];
        if (c && w->bytes < c->workspace_bytes) {
            char *grown = aligned_alloc(64, aligned_bytes(c->workspace_bytes));
            if (grown) {
                free(w->base);
                w->base = grown;
                w->bytes = c->workspace_bytes;
            } else {
                c = NULL;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    return c;
}

/* Points c's buffers in oneDNN's layouts and its scratchpad into its thread's workspace: before
 * each use, since another context of the thread may have grown it. */
static void bind(context *c) {
    char *base = workspaces[c->thread].base;
    operand *operands[] = {&c->src, &c->weights, &c->dst};
    for (int i = 0; i < 3; i++)
        if (operands[i]->chosen != operands[i]->plain)
            dnnl_memory_set_data_handle(operands[i]->chosen, base + operands[i]->offset);
    dnnl_memory_set_data_handle(c->scratchpad, base + c->scratchpad_offset);
}

static void run(context *c) {
    dnnl_exec_arg_t args[5];
    int count = 0;
    if (c->kind == FORWARD) {
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, c->src.chosen};
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, c->weights.chosen};
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_DST, c->dst.chosen};
        if (c->has_bias)
            args[count++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, c->bias.chosen};
    } else if (c->kind == BACKWARD_DATA) {
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_DST, c->dst.chosen};
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, c->weights.chosen};
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_SRC, c->src.chosen};
    } else {
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, c->src.chosen};
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_DST, c->dst.chosen};
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_WEIGHTS, c->weights.chosen};
    }
    args[count++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, c->scratchpad};
    dnnl_primitive_execute(c->primitive, c->stream, count, args);
}

bool fr_conv_dnnl_forward(const fr_conv_shape *s, const float *weight, const float *bias,
                          const float *in, float *out, int n) {
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    context *c = context_for(s, FORWARD, 1, bias != NULL);
    if (!c) {
        omp_set_num_threads(threads);
        return false;
    }
    size_t in_numel = (size_t)s->in_c * s->h * s->w, out_numel = (size_t)s->out_c * s->oh * s->ow;
    bind(c);
    operand_reorder(c->stream, &c->weights, (void *)weight, true);
    if (bias)
        operand_reorder(c->stream, &c->bias, (void *)bias, true);
    for (int i = 0; i < n; i++) {
        operand_reorder(c->stream, &c->src, (void *)(in + i * in_numel), true);
        dnnl_memory_set_data_handle(c->dst.plain, out + i * out_numel);
        run(c);
        operand_reorder(c->stream, &c->dst, out + i * out_numel, false);
    }
    dnnl_stream_wait(c->stream);
    omp_set_num_threads(threads);
    return true;
}

bool fr_conv_dnnl_backward(const fr_conv_shape *s, const float *weight, const float *in,
                           const float *dout, float *din, float *dweight, int n) {
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    context *data = din ? context_for(s, BACKWARD_DATA, n, false) : NULL;
    context *weights = dweight ? context_for(s, BACKWARD_WEIGHTS, n, false) : NULL;
    if ((din && !data) || (dweight && !weights)) {
        omp_set_num_threads(threads);
        return false;
    }
    if (weights) {
        bind(weights);
        operand_reorder(weights->stream, &weights->src, (void *)in, true);
        operand_reorder(weights->stream, &weights->dst, (void *)dout, true);
        dnnl_memory_set_data_handle(weights->weights.plain, dweight);
        run(weights);
        operand_reorder(weights->stream, &weights->weights, dweight, false);
        dnnl_stream_wait(weights->stream);
    }
    if (data) {
        bind(data);
        operand_reorder(data->stream, &data->weights, (void *)weight, true);
        operand_reorder(data->stream, &data->dst, (void *)dout, true);
        dnnl_memory_set_data_handle(data->src.plain, din);
        run(data);
        operand_reorder(data->stream, &data->src, din, false);
        dnnl_stream_wait(data->stream);
    }
    omp_set_num_threads(threads);
    return true;
}

const char *fr_conv_dnnl_version(void) {
    static char text[32];
    const dnnl_version_t *v = dnnl_version();
    snprintf(text, sizeof text, "oneDNN %d.%d.%d", v->major, v->minor, v->patch);
    return text;
}

#else

bool fr_conv_dnnl_forward(const fr_conv_shape *s, const float *weight, const float *bias,
                          const float *in, float *out, int n) {
    (void)s, (void)weight, (void)bias, (void)in, (void)out, (void)n;
    return false;
}

bool fr_conv_dnnl_backward(const fr_conv_shape *s, const float *weight, const float *in,
                           const float *dout, float *din, float *dweight, int n) {
    (void)s, (void)weight, (void)in, (void)dout, (void)din, (void)dweight, (void)n;
    return false;
}

const char *fr_conv_dnnl_version(void) {
    return NULL;
}

#endif
