/*
 * conv_dnnl.c - resnet18's convolutions through Debian's oneDNN (libdnnl-dev 2.6), as frost would
 * call it: NCHW float32 images and OIHW weights in and out, each product's reorders to and from
 * oneDNN's chosen layouts timed with it, on one core.  Next to bench/conv_shapes.c (OpenBLAS) it
 * says what oneDNN as a dependency would give frost's conv2d.
 *
 *   cc -O2 bench/conv_dnnl.c -o conv_dnnl -ldnnl
 *   OMP_NUM_THREADS=1 ./conv_dnnl 112 8 [reps]   # image side, samples per thread
 *
 * Per convolution: forward over the n samples in one call (mb = n) and one sample per call
 * (mb = 1, n calls: a sample's bits then do not depend on its company, which frost's feature
 * cache needs), backward data and backward weights over the n samples; GFLOP/s of the thread's
 * CPU time, best of `reps` (5), and the implementation oneDNN chose.
 */
#define _POSIX_C_SOURCE 200809L
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        dnnl_status_t status_ = (call);                                                  \
        if (status_ != dnnl_success) {                                                   \
            fprintf(stderr, "conv_dnnl: %s failed (%d)\n", #call, (int)status_);         \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* A tensor in frost's layout (plain) and, when oneDNN wants another, its copy in that one and
 * the reorder between them (to: plain -> chosen; from: chosen -> plain). */
typedef struct tensor {
    dnnl_memory_t plain, chosen;
    dnnl_primitive_t to, from;
} tensor;

static tensor tensor_of(const dnnl_memory_desc_t *plain_md, const dnnl_memory_desc_t *chosen_md) {
    tensor t = {0};
    CHECK(dnnl_memory_create(&t.plain, plain_md, engine, DNNL_MEMORY_ALLOCATE));
    float *data;
    CHECK(dnnl_memory_get_data_handle(t.plain, (void **)&data));
    for (size_t i = 0; i < dnnl_memory_desc_get_size(plain_md) / sizeof(float); i++)
        data[i] = (float)rand() / RAND_MAX - 0.5f;
    if (dnnl_memory_desc_equal(plain_md, chosen_md)) {
        t.chosen = t.plain;
        return t;
    }
    CHECK(dnnl_memory_create(&t.chosen, chosen_md, engine, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_reorder_primitive_desc_create(&pd, plain_md, engine, chosen_md, engine, NULL));
    CHECK(dnnl_primitive_create(&t.to, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
    CHECK(dnnl_reorder_primitive_desc_create(&pd, chosen_md, engine, plain_md, engine, NULL));
    CHECK(dnnl_primitive_create(&t.from, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
    return t;
}

static void reorder(dnnl_primitive_t r, dnnl_memory_t from, dnnl_memory_t to) {
    if (!r)
        return;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    CHECK(dnnl_primitive_execute(r, stream, 2, args));
}

static const dnnl_memory_desc_t *md_of(dnnl_primitive_desc_t pd, dnnl_query_t what) {
    return dnnl_primitive_desc_query_md(pd, what, 0);
}

static const char *impl_of(dnnl_primitive_desc_t pd) {
    const char *name = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
    return name;
}

/* One convolution: the best CPU seconds of forward (mb = n), forward one sample per call,
 * backward data and backward weights, reorders included. */
static void time_conv(int n, int cin, int cout, int k, int stride, int pad, int h, int reps,
                      double best[4], const char *impl[4]) {
    int oh = (h + 2 * pad - k) / stride + 1;
    dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
    dnnl_memory_desc_t any_src, any_wei, any_dst, src_md, wei_md, dst_md, src1_md, dst1_md,
        any_src1, any_dst1;
    dnnl_dims_t src_dims = {n, cin, h, h}, wei_dims = {cout, cin, k, k}, dst_dims = {n, cout, oh, oh};
    dnnl_dims_t src1_dims = {1, cin, h, h}, dst1_dims = {1, cout, oh, oh};
    CHECK(dnnl_memory_desc_init_by_tag(&src_md, 4, src_dims, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&wei_md, 4, wei_dims, dnnl_f32, dnnl_oihw));
    CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 4, dst_dims, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&src1_md, 4, src1_dims, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&dst1_md, 4, dst1_dims, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&any_src, 4, src_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&any_wei, 4, wei_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&any_dst, 4, dst_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&any_src1, 4, src1_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&any_dst1, 4, dst1_dims, dnnl_f32, dnnl_format_tag_any));

    dnnl_convolution_desc_t fwd_d, fwd1_d, bwd_data_d, bwd_wei_d;
    CHECK(dnnl_convolution_forward_desc_init(&fwd_d, dnnl_forward_training, dnnl_convolution_direct,
                                             &any_src, &any_wei, NULL, &any_dst, strides, padding,
                                             padding));
    CHECK(dnnl_convolution_forward_desc_init(&fwd1_d, dnnl_forward_training,
                                             dnnl_convolution_direct, &any_src1, &any_wei, NULL,
                                             &any_dst1, strides, padding, padding));
    CHECK(dnnl_convolution_backward_data_desc_init(&bwd_data_d, dnnl_convolution_direct, &any_src,
                                                   &any_wei, &any_dst, strides, padding, padding));
    CHECK(dnnl_convolution_backward_weights_desc_init(&bwd_wei_d, dnnl_convolution_direct,
                                                      &any_src, &any_wei, NULL, &any_dst, strides,
                                                      padding, padding));
    dnnl_primitive_desc_t fwd_pd, fwd1_pd, data_pd, wei_pd;
    CHECK(dnnl_primitive_desc_create(&fwd_pd, &fwd_d, NULL, engine, NULL));
    CHECK(dnnl_primitive_desc_create(&fwd1_pd, &fwd1_d, NULL, engine, NULL));
    CHECK(dnnl_primitive_desc_create(&data_pd, &bwd_data_d, NULL, engine, fwd_pd));
    CHECK(dnnl_primitive_desc_create(&wei_pd, &bwd_wei_d, NULL, engine, fwd_pd));
    dnnl_primitive_desc_t pds[4] = {fwd_pd, fwd1_pd, data_pd, wei_pd};
    dnnl_primitive_t prim[4];
    for (int i = 0; i < 4; i++) {
        CHECK(dnnl_primitive_create(&prim[i], pds[i]));
        impl[i] = impl_of(pds[i]);
    }
    /* Each product's operands in frost's layout and in the one its primitive chose. */
    tensor f_src = tensor_of(&src_md, md_of(fwd_pd, dnnl_query_src_md));
    tensor f_wei = tensor_of(&wei_md, md_of(fwd_pd, dnnl_query_weights_md));
    tensor f_dst = tensor_of(&dst_md, md_of(fwd_pd, dnnl_query_dst_md));
    tensor o_src = tensor_of(&src1_md, md_of(fwd1_pd, dnnl_query_src_md));
    tensor o_wei = tensor_of(&wei_md, md_of(fwd1_pd, dnnl_query_weights_md));
    tensor o_dst = tensor_of(&dst1_md, md_of(fwd1_pd, dnnl_query_dst_md));
    tensor d_dsrc = tensor_of(&src_md, md_of(data_pd, dnnl_query_diff_src_md));
    tensor d_wei = tensor_of(&wei_md, md_of(data_pd, dnnl_query_weights_md));
    tensor d_ddst = tensor_of(&dst_md, md_of(data_pd, dnnl_query_diff_dst_md));
    tensor w_src = tensor_of(&src_md, md_of(wei_pd, dnnl_query_src_md));
    tensor w_dwei = tensor_of(&wei_md, md_of(wei_pd, dnnl_query_diff_weights_md));
    tensor w_ddst = tensor_of(&dst_md, md_of(wei_pd, dnnl_query_diff_dst_md));
    for (int i = 0; i < 4; i++)
        best[i] = 1e9;
    for (int r = 0; r < reps; r++) {
        double t[5];
        t[0] = cpu_now();
        reorder(f_wei.to, f_wei.plain, f_wei.chosen);
        reorder(f_src.to, f_src.plain, f_src.chosen);
        dnnl_exec_arg_t fa[] = {{DNNL_ARG_SRC, f_src.chosen}, {DNNL_ARG_WEIGHTS, f_wei.chosen},
                                {DNNL_ARG_DST, f_dst.chosen}};
        CHECK(dnnl_primitive_execute(prim[0], stream, 3, fa));
        reorder(f_dst.from, f_dst.chosen, f_dst.plain);
        CHECK(dnnl_stream_wait(stream));
        t[1] = cpu_now();
        reorder(o_wei.to, o_wei.plain, o_wei.chosen);
        for (int s = 0; s < n; s++) { /* the same sample's buffers: the work is what is timed */
            reorder(o_src.to, o_src.plain, o_src.chosen);
            dnnl_exec_arg_t oa[] = {{DNNL_ARG_SRC, o_src.chosen}, {DNNL_ARG_WEIGHTS, o_wei.chosen},
                                    {DNNL_ARG_DST, o_dst.chosen}};
            CHECK(dnnl_primitive_execute(prim[1], stream, 3, oa));
            reorder(o_dst.from, o_dst.chosen, o_dst.plain);
        }
        CHECK(dnnl_stream_wait(stream));
        t[2] = cpu_now();
        reorder(d_wei.to, d_wei.plain, d_wei.chosen);
        reorder(d_ddst.to, d_ddst.plain, d_ddst.chosen);
        dnnl_exec_arg_t da[] = {{DNNL_ARG_DIFF_DST, d_ddst.chosen}, {DNNL_ARG_WEIGHTS, d_wei.chosen},
                                {DNNL_ARG_DIFF_SRC, d_dsrc.chosen}};
        CHECK(dnnl_primitive_execute(prim[2], stream, 3, da));
        reorder(d_dsrc.from, d_dsrc.chosen, d_dsrc.plain);
        CHECK(dnnl_stream_wait(stream));
        t[3] = cpu_now();
        reorder(w_src.to, w_src.plain, w_src.chosen);
        reorder(w_ddst.to, w_ddst.plain, w_ddst.chosen);
        dnnl_exec_arg_t wa[] = {{DNNL_ARG_SRC, w_src.chosen}, {DNNL_ARG_DIFF_DST, w_ddst.chosen},
                                {DNNL_ARG_DIFF_WEIGHTS, w_dwei.chosen}};
        CHECK(dnnl_primitive_execute(prim[3], stream, 3, wa));
        reorder(w_dwei.from, w_dwei.chosen, w_dwei.plain);
        CHECK(dnnl_stream_wait(stream));
        t[4] = cpu_now();
        for (int i = 0; i < 4; i++)
            if (t[i + 1] - t[i] < best[i])
                best[i] = t[i + 1] - t[i];
    }
    /* The memory and primitives stay until exit: a benchmark's few. */
}

int main(int argc, char **argv) {
    int side = argc > 1 ? atoi(argv[1]) : 112, n = argc > 2 ? atoi(argv[2]) : 8;
    int reps = argc > 3 ? atoi(argv[3]) : 5;
    CHECK(dnnl_engine_create(&engine, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    int h = (side + 6 - 7) / 2 + 1, p1 = (h + 2 - 3) / 2 + 1;
    int p2 = (p1 + 2 - 3) / 2 + 1, p3 = (p2 + 2 - 3) / 2 + 1;
    struct { const char *name; int cin, cout, k, stride, pad, h; } convs[] = {
        {"conv1 7x7/2", 3, 64, 7, 2, 3, side},   {"layer1 3x3", 64, 64, 3, 1, 1, p1},
        {"layer2.0.conv1 3x3/2", 64, 128, 3, 2, 1, p1}, {"layer2 3x3", 128, 128, 3, 1, 1, p2},
        {"layer3.0.conv1 3x3/2", 128, 256, 3, 2, 1, p2}, {"layer3 3x3", 256, 256, 3, 1, 1, p3},
        {"layer4.0.conv1 3x3/2", 256, 512, 3, 2, 1, p3}, {"layer4 3x3", 512, 512, 3, 1, 1, (p3 + 1) / 2},
    };
    const dnnl_version_t *v = dnnl_version();
    printf("oneDNN %d.%d.%d, resnet18 on %dx%d, %d samples per thread, GFLOP/s of one core's "
           "CPU time (reorders from and to NCHW/OIHW included), best of %d\n",
           v->major, v->minor, v->patch, side, side, n, reps);
    printf("| conv | forward, mb %d | forward, mb 1 x %d | backward data | backward weights | "
           "implementations |\n|---|---:|---:|---:|---:|---|\n", n, n);
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        double best[4];
        const char *impl[4];
        time_conv(n, convs[i].cin, convs[i].cout, convs[i].k, convs[i].stride, convs[i].pad,
                  convs[i].h, reps, best, impl);
        int oh = (convs[i].h + 2 * convs[i].pad - convs[i].k) / convs[i].stride + 1;
        double flops = 2.0 * convs[i].cin * convs[i].k * convs[i].k * convs[i].cout * oh * oh * n;
        printf("| %s | %.1f | %.1f | %.1f | %.1f | %s, %s, %s |\n", convs[i].name,
               flops / best[0] * 1e-9, flops / best[1] * 1e-9, flops / best[2] * 1e-9,
               flops / best[3] * 1e-9, impl[0], impl[2], impl[3]);
    }
    return 0;
}
