/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader
 * (safetensors.c), loading weights into a model (weights.c) and the writer.
 *
 * Input: a whole .safetensors file.  The reader takes a path, so each input
 * is written to a private temporary file (fuzz_common.h says where).
 * Then:
 *   - fr_st_read: on success every tensor's shape, size and data (F32 or
 *     I64) are checked and read in full, names are looked up, metadata keys too;
 *   - fr_model_load_weights into a small fixed model (the seed corpus holds
 *     its weights and a checkpoint of it): a refused file must leave the
 *     model unchanged, an accepted one must have copied every parameter;
 *   - fr_st_write of what was read, read back again: the writer must accept
 *     whatever the reader accepts, and the round trip must keep everything.
 *
 *   make fuzz && tests/fuzz/fuzz_safetensors CORPUS_DIR $(srcdir)/tests/fuzz/corpus/safetensors
 */
#include "fuzz_common.h"

#include <stdint.h>

/* The model whose weights the corpus holds (tests/fuzz/make_corpus.py). */
static const char model_text[] = "input 1 2 2\nfc1 = linear(4, 3)\nrelu\nfc2 = linear(3, 2)\n";

static fr_model *model;
static char input_path[128], output_path[128];

static void setup(void) {
    const char *dir = fuzz_temp_dir();
    snprintf(input_path, sizeof input_path, "%s/input.safetensors", dir);
    snprintf(output_path, sizeof output_path, "%s/output.safetensors", dir);
    fr_error err = {0};
    if (fr_model_parse(model_text, "fuzz", &model, &err) != FR_OK ||
        fr_model_init(model, 7, &err) != FR_OK) {
        fprintf(stderr, "fuzz_safetensors: %s\n", err.msg);
        abort();
    }
}

static void cleanup(void) {
    remove(input_path);
    remove(output_path);
    fr_model_free(model);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    setup();
    atexit(cleanup);
    return 0;
}

/* Everything the reader promises about a file it accepted. */
static uint64_t check_file(const fr_st_file *file) {
    uint64_t hash = FR_HASH_INIT;
    if (file->tensor_count < 0 || file->meta_count < 0)
        fuzz_die("fr_st_read", "negative counts");
    for (int i = 0; i < file->tensor_count; i++) {
        const fr_st_tensor *tensor = &file->tensors[i];
        if (tensor->ndim < 0 || tensor->ndim > FR_MAX_DIMS)
            fuzz_die("fr_st_read", "ndim out of range");
        size_t numel = 1;
        for (int d = 0; d < tensor->ndim; d++) {
            if (tensor->shape[d] < 0)
                fuzz_die("fr_st_read", "negative dimension");
            numel *= (size_t)tensor->shape[d];
        }
        if (numel != tensor->numel)
            fuzz_die("fr_st_read", "numel differs from the shape");
        /* F32 data is used in place, so it must be float-aligned; I64 data
         * (num_batches_tracked) may lie anywhere and is read with memcpy. */
        if (tensor->i64 ? !tensor->data_i64 || tensor->data
                        : !tensor->data || tensor->data_i64 ||
                              (uintptr_t)tensor->data % sizeof(float) != 0)
            fuzz_die("fr_st_read", "tensor data missing, misplaced or misaligned");
        /* Reads every byte: ASan catches data that runs past the buffer. */
        hash = fr_hash_bytes(hash, &tensor->i64, sizeof tensor->i64);
        hash = fr_hash_bytes(hash, tensor->i64 ? tensor->data_i64 : (const void *)tensor->data,
                             numel * (tensor->i64 ? sizeof(int64_t) : sizeof(float)));
        /* An empty name is valid (the reference reader accepts it). */
        if (fr_st_find(file, tensor->name) != tensor)
            fuzz_die("fr_st_find", tensor->name);
    }
    for (int i = 0; i < file->meta_count; i++) {
        if (!file->meta[i].key || !file->meta[i].value)
            fuzz_die("fr_st_read", "metadata entry without key or value");
        if (fr_st_meta_get(file, file->meta[i].key) != file->meta[i].value)
            fuzz_die("fr_st_meta_get", file->meta[i].key);
    }
    (void)fr_st_find(file, "fc1.weight");
    (void)fr_st_meta_get(file, "format");
    return hash;
}

static void check_load_weights(const fr_st_file *file) {
    uint64_t before = fr_model_checksum(model);
    fr_error err = {0};
    int status = fr_model_load_weights(model, input_path, &err);
    fuzz_check_status(status, &err, "fr_model_load_weights");
    if (status != FR_OK) {
        if (fr_model_checksum(model) != before)
            fuzz_die("fr_model_load_weights", "a refused file changed the model");
        return;
    }
    for (size_t i = 0; i < fr_model_param_count(model); i++) {
        fr_param *param = fr_model_param(model, i);
        const fr_st_tensor *tensor = fr_st_find(file, fr_param_name(param));
        if (!tensor || tensor->numel != fr_param_numel(param) ||
            memcmp(tensor->data, fr_param_data(param), tensor->numel * sizeof(float)) != 0)
            fuzz_die("fr_model_load_weights", fr_param_name(param));
    }
}

/* Write what was read, read it back: the same tensors, data and metadata. */
static void check_round_trip(const fr_st_file *file, uint64_t hash) {
    fr_st_out *tensors = calloc((size_t)file->tensor_count + 1, sizeof *tensors);
    if (!tensors)
        return;
    for (int i = 0; i < file->tensor_count; i++) {
        tensors[i].name = file->tensors[i].name;
        tensors[i].ndim = file->tensors[i].ndim;
        memcpy(tensors[i].shape, file->tensors[i].shape, sizeof tensors[i].shape);
        tensors[i].i64 = file->tensors[i].i64;
        tensors[i].data = file->tensors[i].i64 ? file->tensors[i].data_i64
                                               : (const void *)file->tensors[i].data;
    }
    fr_error err = {0};
    int status = fr_st_write(output_path, tensors, file->tensor_count, file->meta,
                             file->meta_count, &err);
    free(tensors);
    fuzz_check_status(status, &err, "fr_st_write");
    if (status != FR_OK)
        fuzz_die("fr_st_write refused what fr_st_read accepted", err.msg);
    fr_st_file *again = NULL;
    status = fr_st_read(output_path, &again, &err);
    fuzz_check_status(status, &err, "fr_st_read");
    if (status != FR_OK)
        fuzz_die("fr_st_read refused what fr_st_write wrote", err.msg);
    if (again->tensor_count != file->tensor_count || again->meta_count != file->meta_count ||
        check_file(again) != hash)
        fuzz_die("round trip", "tensors differ");
    for (int i = 0; i < file->tensor_count; i++) {
        const fr_st_tensor *a = &file->tensors[i], *b = &again->tensors[i];
        if (strcmp(a->name, b->name) != 0 || a->ndim != b->ndim || a->i64 != b->i64 ||
            memcmp(a->shape, b->shape, sizeof a->shape) != 0)
            fuzz_die("round trip", a->name);
    }
    for (int i = 0; i < file->meta_count; i++) {
        const char *value = fr_st_meta_get(again, file->meta[i].key);
        if (!value || strcmp(value, file->meta[i].value) != 0)
            fuzz_die("round trip", file->meta[i].key);
    }
    fr_st_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write_file(input_path, data, size);
    fr_st_file *file = (fr_st_file *)input_path; /* must be overwritten */
    fr_error err = {0};
    int status = fr_st_read(input_path, &file, &err);
    fuzz_check_status(status, &err, "fr_st_read");
    if (status != FR_OK) {
        if (file != NULL)
            fuzz_die("fr_st_read", "failed but left a file in *out");
        return 0;
    }
    uint64_t hash = check_file(file);
    check_load_weights(file);
    check_round_trip(file, hash);
    fr_st_free(file);
    return 0;
}
