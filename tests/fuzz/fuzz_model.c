/*
 * fuzz_model.c - libFuzzer target for the model-file parser (spec.c) and what
 * a parsed model offers: fr_model_parse, the layer descriptions, parameter
 * names and shapes, initialisation, and freezing (freeze.c).
 *
 * Input: model text (what a model file or --model holds).  Everything after
 * the first NUL byte, if any, is split at further NULs into patterns and
 * layer names given in turn to fr_model_freeze, fr_model_unfreeze and
 * fr_model_freeze_layer.
 *
 *   make fuzz && tests/fuzz/fuzz_model CORPUS_DIR $(srcdir)/tests/fuzz/corpus/model
 */
#include "fuzz_common.h"

#include <stdint.h>

/* Models with more parameter values than this are parsed and described but
 * not initialised: that would be slow (and large ones need more memory than a
 * fuzzer allows), and small models reach the same code. */
#define INIT_LIMIT ((size_t)1 << 16)
/* glibc's fnmatch is exponential in the number of '*'s; long patterns only
 * make the fuzzer slow, not the parser interesting. */
#define PATTERN_LIMIT 64

static void exercise_model(fr_model *model) {
    char text[256];
    int layers = fr_model_layer_count(model);
    if (layers <= 0)
        fuzz_die("fr_model_parse", "a parsed model has no layers");
    if (fr_model_input_numel(model) <= 0 || fr_model_output_numel(model) <= 0)
        fuzz_die("fr_model_parse", "a parsed model has an empty input or output");
    for (int i = -1; i <= layers; i++) {
        const char *name = fr_model_layer_name(model, i);
        const char *kind = fr_model_layer_kind(model, i);
        if ((i < 0 || i == layers) != (name == NULL) || (name == NULL) != (kind == NULL))
            fuzz_die("fr_model_layer_name", "wrong NULL for a layer index");
        if (name && fr_model_find_layer(model, name) > i)
            fuzz_die("fr_model_find_layer", name);
        fr_model_layer_describe(model, i, text, sizeof text);
        fr_model_layer_describe(model, i, text, 8); /* truncation must be safe */
    }
    size_t total = fr_model_numel(model);
    if (fr_model_trainable_numel(model) != total)
        fuzz_die("fr_model_parse", "a new model has frozen parameters");
    if (total > INIT_LIMIT)
        return;
    fr_error err = {0};
    int status = fr_model_init(model, 1, &err);
    fuzz_check_status(status, &err, "fr_model_init");
    if (status != FR_OK)
        return;
    size_t count = fr_model_param_count(model), seen = 0;
    for (size_t i = 0; i < count; i++) {
        fr_param *param = fr_model_param(model, i);
        if (!param)
            fuzz_die("fr_model_param", "NULL for an index below the count");
        const char *name = fr_param_name(param);
        if (fr_model_find_param(model, name) != param)
            fuzz_die("fr_model_find_param", name);
        size_t numel = 1;
        for (int d = 0; d < fr_param_ndim(param); d++)
            numel *= (size_t)fr_param_dim(param, d);
        if (numel != fr_param_numel(param))
            fuzz_die("fr_param_numel", name);
        fr_param_shape_string(param, text, sizeof text);
        fr_param_shape_string(param, text, 4);
        seen += numel;
    }
    if (seen != total)
        fuzz_die("fr_model_numel", "differs from the sum over the parameters");
    if (fr_model_check_finite(model, &err) != FR_OK)
        fuzz_die("fr_model_init", "made a value that is not finite");
    (void)fr_model_checksum(model);
}

/* Patterns take turns at freeze, unfreeze and freeze-layer, as repeated
 * --freeze/--unfreeze options and the C API would apply them. */
static void apply_patterns(fr_model *model, const char *patterns, const char *end) {
    static const char *const calls[3] = {"fr_model_freeze", "fr_model_unfreeze",
                                         "fr_model_freeze_layer"};
    int turn = 0;
    for (const char *p = patterns; p < end; p += strlen(p) + 1, turn = (turn + 1) % 3) {
        if (strlen(p) > PATTERN_LIMIT)
            continue;
        fr_error err = {0};
        size_t before = fr_model_trainable_numel(model);
        int status = turn == 0   ? fr_model_freeze(model, p, &err)
                     : turn == 1 ? fr_model_unfreeze(model, p, &err)
                                 : fr_model_freeze_layer(model, p, &err);
        fuzz_check_status(status, &err, calls[turn]);
        size_t after = fr_model_trainable_numel(model);
        if (status != FR_OK && after != before)
            fuzz_die(calls[turn], "a refused pattern changed the frozen set");
        if (status == FR_OK && (turn == 1 ? after < before : after > before))
            fuzz_die(calls[turn], "the frozen set moved the wrong way");
    }
    (void)fr_model_frozen_checksum(model);
    fr_model_freeze_all(model);
    if (fr_model_trainable_numel(model) != 0)
        fuzz_die("fr_model_freeze_all", "left a parameter trainable");
    fr_model_unfreeze_all(model);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* NUL-terminated copy with a second NUL after it, so the pattern list
     * always ends in an empty string's terminator. */
    char *text = malloc(size + 2);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = text[size + 1] = '\0';

    fr_model *model = (fr_model *)text; /* must be overwritten */
    fr_error err = {0};
    int status = fr_model_parse(text, "fuzz.txt", &model, &err);
    fuzz_check_status(status, &err, "fr_model_parse");
    if (status != FR_OK) {
        if (model != NULL)
            fuzz_die("fr_model_parse", "failed but left a model in *out");
        free(text);
        return 0;
    }
    if (!model)
        fuzz_die("fr_model_parse", "succeeded without a model");
    exercise_model(model);
    size_t text_len = strlen(text);
    if (text_len < size)
        apply_patterns(model, text + text_len + 1, text + size + 1);
    fr_model_free(model);
    free(text);
    return 0;
}
