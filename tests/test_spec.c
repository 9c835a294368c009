/*
 * test_spec.c - model descriptions (src/model/spec.c): the DESIGN.md example, inline
 * specs with ';', index names, the implied input, keyword arguments, every
 * kind of mistake reported on the right line, hostile input that must not
 * crash, and fr_model_load on files, missing paths and inline text.  The
 * fr_model_add_* functions check arguments and names as the parser does (one
 * schema per kind, one name limit), and describe layers as a file writes them.
 * The transformer's syntax (input T tokens / T C / F, block NAME { }, anonymous
 * residual { }, tie NAME TO, choice arguments) is checked with kinds of this
 * test's own through fr_model_parse_with_kinds, the registry having none yet.
 */
#define _POSIX_C_SOURCE 200809L
#include "frost.h"
#include "internal.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

static const char *const design_example =
    "input 1 28 28\n"
    "conv1 = conv2d(1, 32, 3)        # in, out, kernel[, stride[, padding]]\n"
    "relu\n"
    "conv2 = conv2d(32, 64, 3)\n"
    "relu\n"
    "maxpool2d(2)\n"
    "flatten\n"
    "fc1 = linear(9216, 128)\n"
    "relu\n"
    "fc2 = linear(128, 10)\n";

static const char *const design_inline =
    "input 1 28 28; conv1 = conv2d(1, 32, 3); relu; conv2 = conv2d(32, 64, 3); relu; "
    "maxpool2d(2); flatten; fc1 = linear(9216, 128); relu; fc2 = linear(128, 10)";

/* A model, or NULL with the reason printed as a diagnostic. */
static fr_model *parse(const char *text) {
    fr_model *model = NULL;
    fr_error err = {0};
    if (fr_model_parse(text, "model.txt", &model, &err) != FR_OK) {
        tap_diag("unexpected error: %s", err.msg);
        return NULL;
    }
    return model;
}

/* Does param `index` have this name and shape?  `dims` ends with 0. */
static bool param_is(fr_model *model, size_t index, const char *name, const int *dims) {
    fr_param *param = fr_model_param(model, index);
    if (!param || strcmp(fr_param_name(param), name) != 0)
        return false;
    int ndim = 0;
    while (dims[ndim])
        ndim++;
    if (fr_param_ndim(param) != ndim)
        return false;
    for (int d = 0; d < ndim; d++)
        if (fr_param_dim(param, d) != dims[d])
            return false;
    return true;
}

static void check_design_model(fr_model *model, const char *how) {
    if (!tap_ok(model != NULL, "%s: the DESIGN.md example parses", how))
        return;
    tap_ok(fr_model_layer_count(model) == 9, "%s: it has 9 layers (input is not a layer)", how);
    tap_ok(fr_model_input_numel(model) == 784, "%s: its input is 1x28x28", how);
    tap_ok(fr_model_output_numel(model) == 10, "%s: its output has 10 values", how);
    tap_ok(fr_model_param_count(model) == 8, "%s: it has 8 parameters", how);
    tap_ok(param_is(model, 0, "conv1.weight", (int[]){32, 1, 3, 3, 0}),
           "%s: conv1.weight is [32, 1, 3, 3]", how);
    tap_ok(param_is(model, 1, "conv1.bias", (int[]){32, 0}), "%s: conv1.bias is [32]", how);
    tap_ok(param_is(model, 2, "conv2.weight", (int[]){64, 32, 3, 3, 0}),
           "%s: conv2.weight is [64, 32, 3, 3]", how);
    tap_ok(param_is(model, 4, "fc1.weight", (int[]){128, 9216, 0}),
           "%s: fc1.weight is [128, 9216]", how);
    tap_ok(param_is(model, 6, "fc2.weight", (int[]){10, 128, 0}),
           "%s: fc2.weight is [10, 128]", how);
    tap_ok(param_is(model, 7, "fc2.bias", (int[]){10, 0}), "%s: fc2.bias is [10]", how);
    tap_ok(strcmp(fr_model_layer_name(model, 4), "4") == 0 &&
               strcmp(fr_model_layer_kind(model, 4), "maxpool2d") == 0,
           "%s: the unnamed maxpool2d is layer '4'", how);
}

static void test_design_example(void) {
    fr_model *model = parse(design_example);
    check_design_model(model, "file text");
    fr_model_free(model);

    model = parse(design_inline);
    check_design_model(model, "inline with ';'");
    fr_model_free(model);

    model = parse("input 1 28 28; conv1 = conv2d(1, 32, 3); relu\n"
                  "conv2 = conv2d(32, 64, 3)\nrelu; maxpool2d(2)\nflatten;\n"
                  "fc1 = linear(9216, 128); relu; fc2 = linear(128, 10);");
    check_design_model(model, "newlines and ';' mixed");
    fr_model_free(model);
}

static void test_index_names(void) {
    fr_model *model = parse("linear(4, 3)\nrelu\nlinear(3, 2)");
    if (!tap_ok(model != NULL, "unnamed layers parse"))
        return;
    tap_ok(param_is(model, 0, "0.weight", (int[]){3, 4, 0}),
           "an unnamed first linear layer's weight is '0.weight' [3, 4]");
    tap_ok(param_is(model, 1, "0.bias", (int[]){3, 0}), "its bias is '0.bias'");
    tap_ok(param_is(model, 2, "2.weight", (int[]){2, 3, 0}),
           "the third layer's weight is '2.weight'");
    tap_ok(strcmp(fr_model_layer_name(model, 1), "1") == 0, "the relu is named '1'");
    fr_model_free(model);

    model = parse("a = linear(4, 3); relu; b = linear(3, 2)");
    tap_ok(model && fr_model_find_param(model, "a.weight") && fr_model_find_param(model, "b.bias"),
           "named and unnamed layers mix");
    fr_model_free(model);
}

static void test_implied_input(void) {
    fr_model *model = parse("conv1 = conv2d(3, 8, 3)");
    tap_ok(model && fr_model_input_numel(model) == 3 * 28 * 28,
           "a first conv2d implies an input of in_channels x 28 x 28");
    tap_ok(model && fr_model_output_numel(model) == 8 * 26 * 26,
           "and its output is 8x26x26");
    fr_model_free(model);

    model = parse("fc = linear(20, 5)");
    tap_ok(model && fr_model_input_numel(model) == 20,
           "a first linear layer implies an input of in_features");
    fr_model_free(model);

    model = parse("input 2 5 7; flatten; linear(70, 3)");
    tap_ok(model && fr_model_input_numel(model) == 70 && fr_model_output_numel(model) == 3,
           "an input line sets any shape");
    fr_model_free(model);
}

static void test_arguments(void) {
    fr_model *model = parse("input 1 28 28; c = conv2d(1, 4, 3, stride=2, padding=1)");
    tap_ok(model && fr_model_output_numel(model) == 4 * 14 * 14,
           "conv2d takes stride= and padding= keywords");
    fr_model_free(model);

    model = parse("input 1 28 28; c = conv2d(1, 4, 3, 2, 1)");
    tap_ok(model && fr_model_output_numel(model) == 4 * 14 * 14,
           "conv2d takes stride and padding positionally");
    fr_model_free(model);

    model = parse("input 1 28 28; c = conv2d(1, 4, 3, padding=1)");
    tap_ok(model && fr_model_output_numel(model) == 4 * 28 * 28,
           "padding alone by keyword leaves stride at 1");
    fr_model_free(model);

    model = parse("input 1 28 28; c = conv2d(in_channels=1, out_channels=4, kernel_size=5)");
    tap_ok(model && fr_model_output_numel(model) == 4 * 24 * 24,
           "every conv2d argument may be a keyword (PyTorch's names)");
    fr_model_free(model);

    model = parse("input 1 28 28; maxpool2d(2)");
    tap_ok(model && fr_model_output_numel(model) == 14 * 14,
           "maxpool2d's stride defaults to its kernel");
    fr_model_free(model);

    model = parse("input 1 28 28; maxpool2d(2, stride=1)");
    tap_ok(model && fr_model_output_numel(model) == 27 * 27, "maxpool2d takes stride=");
    fr_model_free(model);

    model = parse("input 1 28 28; maxpool2d(2, 1)");
    tap_ok(model && fr_model_output_numel(model) == 27 * 27, "maxpool2d takes stride positionally");
    fr_model_free(model);

    model = parse("input 1 28 28; c = conv2d(1, 4, 3, padding=1, bias=False)");
    char line[96] = "";
    if (model)
        fr_model_layer_describe(model, 0, line, sizeof line);
    tap_ok(model && fr_model_param_count(model) == 1 &&
               strcmp(line, "c conv2d(1, 4, 3, 1, 1, bias=False) -> 4x28x28") == 0,
           "conv2d takes bias=False (keyword only): a weight and no bias (%s)", line);
    fr_model_free(model);

    model = parse("input 1 28 28; maxpool2d(3, 2, 1)");
    tap_ok(model && fr_model_output_numel(model) == 14 * 14,
           "maxpool2d takes padding (3, 2, 1 on 28x28: 14x14)");
    fr_model_free(model);

    model = parse("input 2 28 28; avgpool2d(3, padding=1); AvgPool2d(2); adaptive_avgpool2d(1)");
    tap_ok(model && fr_model_layer_count(model) == 3 && fr_model_output_numel(model) == 2,
           "avgpool2d (stride defaults to the kernel) and adaptive_avgpool2d(1): 2x1x1");
    fr_model_free(model);

    model = parse("input 1 4 4; relu(); flatten(); Linear(16, 2, )");
    tap_ok(model && fr_model_layer_count(model) == 3 && fr_model_output_numel(model) == 2,
           "relu() and flatten() take empty parentheses; kinds are case-insensitive; a "
           "trailing comma is fine");
    fr_model_free(model);
}

static void test_layout(void) {
    const char *text = "# a model file\n"
                       "\n"
                       "   input\t1 28 28   # the image\r\n"
                       "\t# nothing here; not even after a ';' in a comment\n"
                       "conv1=conv2d( 1 ,32,3 )\r\n"
                       "   \n"
                       "relu;;  ;\n"
                       "flatten  # done\n";
    fr_model *model = parse(text);
    tap_ok(model && fr_model_layer_count(model) == 3 &&
               fr_model_output_numel(model) == 32 * 26 * 26,
           "comments, blank lines, empty ';' pieces, tabs, CRLF and free spacing are fine");
    fr_model_free(model);
}

/* Parsing `text` fails with `status` and a message containing every string in
 * `wants` (NULL-terminated); the model pointer is NULL afterwards. */
static void check_error(const char *what, const char *text, int status, const char *const *wants) {
    fr_model *model = (fr_model *)&model; /* not NULL, to see it cleared */
    fr_error err = {0};
    int rc = fr_model_parse(text, "model.txt", &model, &err);
    bool ok = rc == status && err.status == status && model == NULL;
    for (int i = 0; wants[i]; i++)
        ok = ok && strstr(err.msg, wants[i]) != NULL;
    if (!tap_ok(ok, "%s is refused", what))
        tap_diag("status %d, message: %s", rc, err.msg);
    if (rc == FR_OK && model)
        fr_model_free(model);
    else if (ok && strchr(err.msg, '\n'))
        tap_ok(0, "%s: the message is one line", what);
}

#define WANT(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_errors(void) {
    check_error("an unknown kind",
                "input 1 28 28\nconv1 = conv2d(1, 32, 3)\nrelu\nc3 = conv3d(32, 64, 3)\n",
                FR_EFORMAT,
                WANT("model.txt:4: unknown layer kind 'conv3d'",
                     "linear, conv2d, relu, maxpool2d, flatten"));
    check_error("a missing ')'", "input 1 28 28\n\nconv1 = conv2d(1, 32, 3\nrelu\n", FR_EFORMAT,
                WANT("model.txt:3: expected ')'"));
    check_error("a conv2d with 2 arguments", "linear(4, 4)\nconv2d(1, 32)\n", FR_EFORMAT,
                WANT("model.txt:2: conv2d takes 3 to 5 arguments, got 2"));
    check_error("a linear with 3 arguments", "fc = linear(1, 2, 3)", FR_EFORMAT,
                WANT("model.txt:1: linear takes 2 arguments, got 3"));
    check_error("relu with an argument", "linear(4, 4)\nrelu(1)", FR_EFORMAT,
                WANT("model.txt:2: relu takes no arguments, got 1"));
    check_error("a non-integer argument", "linear(4, 4)\n\nfc = linear(4, 1.5)", FR_EFORMAT,
                WANT("model.txt:3:", "out_features must be an integer, got '1.5'"));
    check_error("a word as argument", "conv2d(1, 32, three)", FR_EFORMAT,
                WANT("model.txt:1:", "kernel_size must be an integer, got 'three'"));
    check_error("a zero size", "linear(4, 4)\nlinear(4, 0)", FR_EFORMAT,
                WANT("model.txt:2:", "out_features must be positive, got 0"));
    check_error("a negative size", "conv2d(1, -32, 3)", FR_EFORMAT,
                WANT("model.txt:1:", "out_channels must be positive, got -32"));
    check_error("a negative padding", "conv2d(1, 32, 3, padding=-1)", FR_EFORMAT,
                WANT("model.txt:1:", "padding must be 0 or more"));
    check_error("a zero stride", "input 1 28 28\nmaxpool2d(2, stride=0)", FR_EFORMAT,
                WANT("model.txt:2:", "stride must be positive"));
    check_error("a size over 1,000,000", "linear(4, 1000001)", FR_EFORMAT,
                WANT("model.txt:1:", "too large"));
    check_error("a size that overflows", "linear(4, 99999999999999999999999999)", FR_EFORMAT,
                WANT("model.txt:1:", "too large"));
    check_error("an unknown keyword", "conv2d(1, 32, 3, dilation=2)", FR_EFORMAT,
                WANT("model.txt:1:", "no argument 'dilation'"));
    check_error("a positional argument after a keyword", "conv2d(1, 32, kernel_size=3, 1)",
                FR_EFORMAT, WANT("model.txt:1:", "positional argument after a keyword"));
    check_error("an argument given twice", "conv2d(1, 32, 3, 2, stride=2)", FR_EFORMAT,
                WANT("model.txt:1:", "'stride' is given twice"));
    check_error("a required argument missing", "conv2d(1, 32, stride=2)", FR_EFORMAT,
                WANT("model.txt:1:", "missing argument 'kernel_size'"));
    check_error("a bias that is not True or False", "conv2d(1, 2, 3, bias=0.5)", FR_EFORMAT,
                WANT("model.txt:1:", "conv2d: bias must be True or False, got '0.5'"));
    check_error("bias by position (PyTorch has dilation there)", "conv2d(1, 2, 3, 1, 0, False)",
                FR_EFORMAT, WANT("model.txt:1: conv2d takes 3 to 5 arguments, got 6"));
    check_error("a maxpool2d padding over half its kernel", "input 1 8 8; maxpool2d(2, 2, 2)",
                FR_EINVAL, WANT("model.txt:2:", "padding 2 is more than half the kernel size 2"));
    check_error("an adaptive_avgpool2d of size 0", "input 1 8 8; adaptive_avgpool2d(0)", FR_EFORMAT,
                WANT("model.txt:2:", "output_size must be positive, got 0"));
    check_error("a duplicate layer name",
                "input 1 28 28\nfc = conv2d(1, 2, 3)\nrelu\nfc = conv2d(2, 2, 3)", FR_EINVAL,
                WANT("model.txt:4:", "'fc'", "twice"));
    check_error("an input line after a layer", "linear(4, 4)\ninput 1 2 2", FR_EFORMAT,
                WANT("model.txt:2: 'input' must come before the first layer"));
    check_error("a second input line", "input 1 28 28\n# again\ninput 1 28 28\nrelu",
                FR_EFORMAT, WANT("model.txt:3:", "'input' given twice"));
    check_error("an input line with four sizes", "input 1 28 28 2; relu", FR_EFORMAT,
                WANT("model.txt:1:", "'input' takes 1 to 3 sizes"));
    check_error("an input line with a zero size", "input 1 0 28; relu", FR_EFORMAT,
                WANT("model.txt:1:", "input H must be positive"));
    check_error("junk after ')'", "input 1 28 28\nconv1 = conv2d(1, 32, 3) relu", FR_EFORMAT,
                WANT("model.txt:2: unexpected 'relu' after ')'"));
    check_error("junk after a bare kind", "linear(2, 2)\nrelu 3", FR_EFORMAT,
                WANT("model.txt:2: unexpected '3' after 'relu'"));
    check_error("a shape mismatch after a flatten",
                "input 1 28 28\nconv1 = conv2d(1, 32, 3)\nrelu\nconv2 = conv2d(32, 64, 3)\n"
                "relu\nmaxpool2d(2)\nflat = flatten\nfc1 = linear(100, 10)\n",
                FR_ESHAPE, WANT("model.txt:8:", "fc1", "'flat'", "9216"));
    check_error("a linear straight after a conv of the wrong size",
                "input 1 14 14; conv1 = conv2d(1, 64, 3); fc1 = linear(100, 10)",
                FR_ESHAPE, WANT("model.txt:3:", "fc1", "'conv1'", "9216"));
    check_error("an unnamed layer that does not fit", "linear(4, 3); linear(4, 2)", FR_ESHAPE,
                WANT("model.txt:2:", "1: linear(4, 2)", "'0'"));
    /* The layer's own arguments are wrong; what comes before it is fine, so
     * the message says nothing about it. */
    fr_model *model = NULL;
    fr_error err = {0};
    int rc = fr_model_parse("fc1 = linear(784, 100000)\nrelu\nfc2 = linear(100000, 100000)\n",
                            "model.txt", &model, &err);
    tap_ok(rc == FR_EINVAL && model == NULL &&
               strcmp(err.msg, "model.txt:3: fc2: linear(100000, 100000) has too many weights") == 0,
           "a linear with too many weights after layers that fit is refused naming only it: %s",
           err.msg);
    check_error("an empty model", "", FR_EFORMAT, WANT("model.txt: no layers"));
    check_error("a model of comments", "# nothing\n\n  # still nothing\n;;", FR_EFORMAT,
                WANT("model.txt: no layers"));
    check_error("a model with only an input line", "input 1 28 28\n", FR_EFORMAT,
                WANT("model.txt: no layers"));
    check_error("a name with nothing after '='", "linear(4, 4)\nfc1 = \n", FR_EFORMAT,
                WANT("model.txt:2:", "expected a layer kind"));
    check_error("a name with '..'", "fc..1 = linear(4, 4)", FR_EINVAL,
                WANT("model.txt:1:", "invalid layer name 'fc..1'"));
    check_error("an '=' with no name", "linear(4, 4)\n = relu", FR_EFORMAT,
                WANT("model.txt:2:", "expected a layer name"));
    check_error("a first layer that implies no input", "relu\nlinear(4, 4)", FR_EFORMAT,
                WANT("model.txt:1:", "needs an 'input C H W' line"));
    check_error("a conv2d kernel larger than the implied input", "conv2d(1, 2, 29)", FR_ESHAPE,
                WANT("model.txt:1:"));
    check_error("stray punctuation", "linear(4, 4)\n(1, 2)", FR_EFORMAT,
                WANT("model.txt:2: expected a layer, got '('"));
    check_error("an inline spec's third piece", "input 1 28 28; relu; conv2d(1, 32)", FR_EFORMAT,
                WANT("model.txt:3: conv2d takes 3 to 5 arguments, got 2"));
}

/* None of these may crash; all must fail cleanly or build a model. */
static void test_hostile_input(void) {
    fr_error err;
    fr_model *model;
    size_t len = 200000;
    char *text = malloc(len + 32);

    strcpy(text, "linear");
    memset(text + 6, '(', len);
    text[len + 6] = '\0';
    model = (fr_model *)&model;
    tap_ok(fr_model_parse(text, "deep", &model, &err) == FR_EFORMAT && model == NULL,
           "200,000 nested '(' are refused");

    memset(text, 'a', len);
    strcpy(text + len, " = relu");
    tap_ok(fr_model_parse(text, "long", &model, &err) == FR_EFORMAT &&
               strstr(err.msg, "too long") && strlen(err.msg) < 200,
           "a 200,000-character name is refused with a short message");

    size_t used = 0;
    for (int i = 0; i < 5000; i++)
        used += (size_t)sprintf(text + used, "relu;");
    text[used] = '\0';
    char *many = malloc(used + 32);
    sprintf(many, "input 1 2 2;%s", text);
    tap_ok(fr_model_parse(many, "many", &model, &err) == FR_EFORMAT &&
               strstr(err.msg, "too many layers"),
           "5000 layers are refused");
    free(many);

    strcpy(text, "linear(4, 4)\nfc = linear(4, 4) # \x01\x7f\xff\n\xc3\xa9t\xe9 = relu");
    tap_ok(fr_model_parse(text, "bytes", &model, &err) == FR_EFORMAT &&
               strstr(err.msg, "bytes:3:") && !strchr(err.msg, '\xe9'),
           "non-ASCII bytes are refused and not echoed raw");

    /* Random texts from grammar-ish pieces and random bytes. */
    static const char *const pieces[] = {
        "input", " 1", " 28", "conv2d", "linear", "relu", "flatten", "maxpool2d", "(", ")",
        ",", "=", ";", "\n", "#", " ", "fc1", "stride", "padding", "-", "3", "9216", "0",
        "1000000", "x", "\t", "\r", ".", "99999999999"};
    uint64_t state = 12345;
    int survived = 0, trials = 3000;
    for (int trial = 0; trial < trials; trial++) {
        used = 0;
        int count = (int)(state % 40);
        for (int i = 0; i < count; i++) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            uint32_t r = (uint32_t)(state >> 33);
            if (r % 8 == 0) {
                char byte = (char)(r >> 8);
                text[used++] = byte ? byte : 'z';
            } else {
                const char *piece = pieces[(r >> 3) % (sizeof pieces / sizeof pieces[0])];
                memcpy(text + used, piece, strlen(piece));
                used += strlen(piece);
            }
        }
        text[used] = '\0';
        model = (fr_model *)&model;
        err.msg[0] = '\0';
        int rc = fr_model_parse(text, "fuzz", &model, &err);
        if (rc == FR_OK && model) {
            fr_model_free(model);
            survived++;
        } else if (rc != FR_OK && model == NULL && err.msg[0] && !strchr(err.msg, '\n')) {
            survived++;
        } else {
            tap_diag("trial %d: rc %d, message %s", trial, rc, err.msg);
        }
    }
    tap_ok(survived == trials, "3000 random texts either build or fail with a one-line message");
    free(text);

    tap_ok(fr_model_parse(NULL, "x", &model, &err) == FR_EINVAL, "NULL text is refused");
    tap_ok(fr_model_parse("relu", NULL, NULL, &err) == FR_EINVAL, "NULL out is refused");
}

static void test_load(void) {
    char path[] = "/tmp/test_spec_XXXXXX";
    int fd = mkstemp(path);
    if (!tap_ok(fd >= 0, "a temporary file can be made"))
        return;
    FILE *file = fdopen(fd, "w");
    fputs(design_example, file);
    fclose(file);

    fr_model *model = NULL;
    fr_error err = {0};
    int rc = fr_model_load(path, &model, &err);
    check_design_model(rc == FR_OK ? model : NULL, "fr_model_load on a file");
    fr_model_free(model);

    file = fopen(path, "w");
    fputs("input 1 28 28\nconv1 = conv2d(1, 32)\n", file);
    fclose(file);
    model = (fr_model *)&model;
    char want[64];
    snprintf(want, sizeof want, "%s:2: conv2d takes", path);
    rc = fr_model_load(path, &model, &err);
    tap_ok(rc == FR_EFORMAT && model == NULL && strstr(err.msg, want),
           "an error in a model file names the file and line");

    /* One byte over 1 MiB of comment. */
    file = fopen(path, "w");
    for (int i = 0; i < 1024 * 1024 / 64; i++)
        fprintf(file, "#%62s\n", "");
    fputs("\n", file);
    fclose(file);
    rc = fr_model_load(path, &model, &err);
    tap_ok(rc != FR_OK && model == NULL && strstr(err.msg, path) &&
               strstr(err.msg, "more than the limit of 1048576"),
           "a model file over 1 MiB is refused, naming the file and the limit");
    unlink(path);

    rc = fr_model_load("/nonexistent/model.txt", &model, &err);
    tap_ok(rc != FR_OK && model == NULL &&
               strstr(err.msg, "/nonexistent/model.txt: no such model file"),
           "a missing path is 'no such model file'");

    rc = fr_model_load("/tmp", &model, &err);
    tap_ok(rc != FR_OK && model == NULL && strstr(err.msg, "/tmp"), "a directory is refused");

    rc = fr_model_load(design_inline, &model, &err);
    check_design_model(rc == FR_OK ? model : NULL, "fr_model_load on an inline spec");
    fr_model_free(model);

    rc = fr_model_load("fc = linear(4, 4); relu; linear(3, 2)", &model, &err);
    tap_ok(rc == FR_ESHAPE && model == NULL && strstr(err.msg, "model text:3:") &&
               !strstr(err.msg, "--model"),
           "an inline spec's errors name 'model text' and the piece, not a flag of the command");

    rc = fr_model_load("fc = linear(4, 4)", &model, &err);
    tap_ok(rc == FR_OK && model && fr_model_layer_count(model) == 1,
           "an inline spec with one layer loads");
    fr_model_free(model);

    model = NULL;
    rc = fr_model_load("relu\nflatten", &model, &err);
    tap_ok(rc == FR_EFORMAT && strstr(err.msg, "model text:1:"),
           "a newline makes an argument inline");
}

/* What the parser refuses, the C API refuses for the same reason, and the
 * other way round. */
static void test_add_functions(void) {
    char longest[49], too_long[50], weight_name[64];
    memset(longest, 'a', 48);
    longest[48] = '\0';
    memset(too_long, 'b', 49);
    too_long[49] = '\0';
    snprintf(weight_name, sizeof weight_name, "%s.weight", longest);
    fr_error err = {0};
    fr_model *model = fr_model_new(1, 4, 4);
    tap_ok(model && fr_model_add_linear(model, longest, 16, 2, &err) == FR_OK &&
               fr_model_find_param(model, weight_name),
           "a 48-character layer name is accepted and its weight named NAME.weight whole");
    int rc = fr_model_add_relu(model, too_long, &err);
    tap_ok(rc == FR_EINVAL && strstr(err.msg, "is too long (at most 48 characters)"),
           "fr_model_add_* refuses a 49-character layer name as too long: %s", err.msg);
    fr_model_free(model);

    /* The parser took names of up to 55 characters that the model then
     * refused as invalid; both now stop at 48, for that reason. */
    char text[128];
    snprintf(text, sizeof text, "%s = linear(4, 2)", longest);
    model = parse(text);
    tap_ok(model != NULL, "a model file's 48-character layer name is accepted");
    fr_model_free(model);
    for (int length = 49; length <= 55; length += 6) {
        snprintf(text, sizeof text, "%.*s = linear(4, 2)", length,
                 "ccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
        model = NULL;
        rc = fr_model_parse(text, "model.txt", &model, &err);
        tap_ok(rc == FR_EFORMAT && model == NULL && strstr(err.msg, "model.txt:1: layer name") &&
                   strstr(err.msg, "is too long (at most 48 characters)"),
               "a model file's %d-character layer name is refused as too long: %s", length,
               err.msg);
    }

    model = fr_model_new(1, 4, 4);
    rc = fr_model_add_conv2d(model, "c", 1, 2, 3, 0, 0, &err);
    tap_ok(rc == FR_EINVAL && strcmp(err.msg, "conv2d: stride must be positive, got 0") == 0,
           "fr_model_add_conv2d refuses stride 0 as the parser does: %s", err.msg);
    rc = fr_model_add_conv2d(model, "c", 1, 2, 3, 1, -1, &err);
    tap_ok(rc == FR_EINVAL && strcmp(err.msg, "conv2d: padding must be 0 or more, got -1") == 0,
           "fr_model_add_conv2d refuses padding -1: %s", err.msg);
    rc = fr_model_add_linear(model, "fc", 16, 1000001, &err);
    tap_ok(rc == FR_EINVAL && strstr(err.msg, "linear: out_features is too large"),
           "fr_model_add_linear refuses a size over 1,000,000 as the parser does: %s", err.msg);
    rc = fr_model_add_maxpool2d(model, "p", 2, -1, &err);
    tap_ok(rc == FR_EINVAL && strcmp(err.msg, "maxpool2d: stride must be positive, got -1") == 0,
           "fr_model_add_maxpool2d refuses stride -1: %s", err.msg);
    tap_ok(fr_model_layer_count(model) == 0, "and no refused layer was added");
    char line[128];
    rc = fr_model_add_maxpool2d(model, NULL, 2, 0, &err);
    fr_model_layer_describe(model, 0, line, sizeof line);
    tap_ok(rc == FR_OK && strcmp(line, "0 maxpool2d(2) -> 1x2x2") == 0,
           "fr_model_add_maxpool2d's stride 0 is the kernel size: %s", line);
    fr_model_free(model);

    model = parse("input 1 28 28; conv1 = conv2d(1, 8, 3, stride=2); relu; maxpool2d(2); "
                  "pool = maxpool2d(kernel=3, stride=1); flatten; fc = linear(128, 10)");
    static const char *const described[] = {
        "conv1 conv2d(1, 8, 3, 2) -> 8x13x13", "1 relu -> 8x13x13", "2 maxpool2d(2) -> 8x6x6",
        "pool maxpool2d(3, 1) -> 8x4x4",        "4 flatten -> 128",   "fc linear(128, 10) -> 10",
    };
    bool all = model != NULL;
    for (int i = 0; all && i < 6; i++) {
        fr_model_layer_describe(model, i, line, sizeof line);
        if (strcmp(line, described[i]) != 0) {
            tap_diag("layer %d: '%s', expected '%s'", i, line, described[i]);
            all = false;
        }
    }
    tap_ok(all, "fr_model_layer_describe writes each layer as a model file would, defaults left out");
    fr_model_free(model);
}


/* ------------------------------------------------------ residual blocks */

/* torchvision's BasicBlock with a downsampling shortcut, then one with the
 * identity and a nested block, as a file and inline. */
static const char *const residual_file =
    "input 8 6 6\n"
    "residual layer1.0 {                 # output = body(x) + shortcut(x)\n"
    "    conv1 = conv2d(8, 16, 3, stride=2, padding=1, bias=False)\n"
    "    relu\n"
    "    conv2 = conv2d(16, 16, 3, padding=1, bias=False)\n"
    "    shortcut {\n"
    "        downsample.0 = conv2d(8, 16, 1, stride=2, bias=False)\n"
    "    }\n"
    "}\n"
    "relu\n"
    "residual layer1.1 {\n"
    "    conv1 = conv2d(16, 16, 3, padding=1)\n"
    "    residual inner { conv = conv2d(16, 16, 1) }\n"
    "}\n"
    "flatten\n"
    "fc = linear(144, 10)\n";

static const char *const residual_inline =
    "input 8 6 6; residual layer1.0 { conv1 = conv2d(8, 16, 3, stride=2, padding=1, bias=False);"
    " relu; conv2 = conv2d(16, 16, 3, padding=1, bias=False); shortcut {"
    " downsample.0 = conv2d(8, 16, 1, stride=2, bias=False) } }; relu;"
    " residual layer1.1 { conv1 = conv2d(16, 16, 3, padding=1); residual inner {"
    " conv = conv2d(16, 16, 1) } }; flatten; fc = linear(144, 10)";

static void check_residual_model(fr_model *model, const char *how) {
    if (!tap_ok(model != NULL, "%s: a model with residual blocks parses", how))
        return;
    tap_ok(fr_model_param_count(model) == 9 && fr_model_output_numel(model) == 10,
           "%s: it has 9 parameters and 10 outputs", how);
    tap_ok(param_is(model, 0, "layer1.0.conv1.weight", (int[]){16, 8, 3, 3, 0}) &&
               param_is(model, 1, "layer1.0.conv2.weight", (int[]){16, 16, 3, 3, 0}),
           "%s: the body's names have the block's in front (layer1.0.conv1.weight, ...)", how);
    tap_ok(param_is(model, 2, "layer1.0.downsample.0.weight", (int[]){16, 8, 1, 1, 0}),
           "%s: the shortcut's too: layer1.0.downsample.0.weight [16, 8, 1, 1]", how);
    tap_ok(param_is(model, 5, "layer1.1.inner.conv.weight", (int[]){16, 16, 1, 1, 0}) &&
               param_is(model, 6, "layer1.1.inner.conv.bias", (int[]){16, 0}),
           "%s: nested blocks nest the names (layer1.1.inner.conv.weight)", how);
    tap_ok(param_is(model, 7, "fc.weight", (int[]){10, 144, 0}),
           "%s: after the blocks names are plain again (fc.weight)", how);
    int join = -1;
    for (int i = 0; i < fr_model_layer_count(model); i++)
        if (strcmp(fr_model_layer_name(model, i), "layer1.0") == 0)
            join = i;
    tap_ok(join >= 0 && strcmp(fr_model_layer_kind(model, join), "residual") == 0,
           "%s: the block's sum is a layer named as the block", how);
}

static void test_residual_blocks(void) {
    fr_model *model = parse(residual_file);
    check_residual_model(model, "file text");
    fr_model_free(model);
    model = parse(residual_inline);
    check_residual_model(model, "inline with ';'");
    fr_model_free(model);
    model = parse("input 4 3 3; residual b { relu }; residual c { shortcut2 = relu }");
    tap_ok(model && fr_model_layer_count(model) == 4 &&
               strcmp(fr_model_layer_name(model, 0), "b.0") == 0,
           "identity shortcuts; an unnamed layer in a block is named by its index after the "
           "block's name (b.0)");
    fr_model_free(model);

    check_error("an unclosed block", "input 4 3 3\nrelu\nresidual b {\n  relu\n", FR_EFORMAT,
                WANT("model.txt:3: residual block 'b' is not closed (missing '}')"));
    check_error("an unclosed shortcut",
                "input 4 3 3; residual b { relu; shortcut { relu", FR_EFORMAT,
                WANT("model.txt:3: the shortcut of residual block 'b' is not closed"));
    check_error("a '}' with no block", "input 4 3 3\nrelu\n}\n", FR_EFORMAT,
                WANT("model.txt:3: unexpected '}' (no block is open)"));
    check_error("a residual without '{'", "input 4 3 3\nresidual b\n{ relu }", FR_EFORMAT,
                WANT("model.txt:2: expected '{' after 'residual NAME'"));
    check_error("a '{' with no block word", "input 4 3 3\n{ relu }", FR_EFORMAT,
                WANT("model.txt:2: expected 'residual [NAME]', 'block NAME' or 'shortcut' "
                     "before '{'"));
    check_error("an empty block", "input 4 3 3\nresidual b {\n}", FR_EFORMAT,
                WANT("model.txt:3: residual block 'b' has no layers"));
    check_error("a shortcut outside a block", "input 4 3 3\nshortcut { relu }", FR_EFORMAT,
                WANT("model.txt:2: 'shortcut {' outside a residual block"));
    check_error("a second shortcut",
                "input 4 3 3; residual b { relu; shortcut { relu }; shortcut { relu } }",
                FR_EFORMAT, WANT("model.txt:4: residual block 'b' has a second shortcut"));
    check_error("a layer after the shortcut",
                "input 4 3 3; residual b { relu; shortcut { relu }; relu }", FR_EFORMAT,
                WANT("model.txt:4: a layer after the shortcut of residual block 'b'"));
    check_error("a body and shortcut of different shapes",
                "input 4 6 6\nrelu\nresidual layer1.0 {\n  conv1 = conv2d(4, 8, 3, stride=2, padding=1)\n"
                "  shortcut {\n    downsample.0 = conv2d(4, 8, 1)\n  }\n}\n",
                FR_ESHAPE,
                WANT("model.txt:3: residual block 'layer1.0'", "body gives 8x3x3",
                     "shortcut gives 8x6x6"));
    check_error("an identity shortcut that does not fit the body",
                "input 4 6 6; residual b { c = conv2d(4, 8, 3, padding=1) }", FR_ESHAPE,
                WANT("model.txt:2: residual block 'b'", "body gives 8x6x6",
                     "shortcut gives 4x6x6 (the block's input)"));
    check_error("a layer in a block that does not fit its input",
                "input 4 6 6\nresidual b {\n  c = conv2d(3, 8, 3)\n}", FR_ESHAPE,
                WANT("model.txt:3:", "b.c"));
    check_error("a block named twice", "input 4 3 3; residual b { relu }; residual b { relu }",
                FR_EINVAL, WANT("model.txt:3:", "'b' is used twice"));
    check_error("a prefixed name too long",
                "input 4 3 3; residual abcdefghijklmnopqrstuvwxyz0123456789 {"
                " abcdefghijklmnop = conv2d(4, 4, 1) }", FR_EINVAL,
                WANT("model.txt:2:", "too long"));
}

/* ------------------------------------- the transformer's syntax, with fake kinds */

/* Kinds of this test's own, parsed through fr_model_parse_with_kinds beside
 * the registry's linear and relu: fakeact has a choice argument (as gelu's
 * approximate=), fakenorm a size, two reals, a boolean and a positional
 * choice, fakeembed reads token ids (as embedding does). */
static const char *const approximations[] = {"none", "tanh", NULL};
static const char *const reductions[] = {"mean", "sum", NULL};

static int fake_same_shape(fr_layer *l, fr_error *err) {
    (void)err;
    l->out = l->in;
    return FR_OK;
}

static int fake_norm_shape(fr_layer *l, fr_error *err) {
    if (fr_shape_last(l->in) != l->args[0])
        return fr_fail(err, FR_ESHAPE, "fakenorm(%d) expects %d features", l->args[0],
                       l->args[0]);
    l->out = l->in;
    l->param_ndim[FR_WEIGHT] = 1;
    l->param_shape[FR_WEIGHT][0] = l->args[0];
    return FR_OK;
}

static int fake_embed_shape(fr_layer *l, fr_error *err) {
    if (l->in.ndim != 1)
        return fr_fail(err, FR_ESHAPE, "fakeembed reads a sequence of token ids");
    l->out = fr_shape_2d(l->in.d[0], l->args[1]);
    l->param_ndim[FR_WEIGHT] = 2;
    l->param_shape[FR_WEIGHT][0] = l->args[0];
    l->param_shape[FR_WEIGHT][1] = l->args[1];
    l->fan_in = l->args[0];
    return FR_OK;
}

static const fr_layer_ops fake_act_ops = {
    .kind = "fakeact",
    .input_dtype = FR_F32,
    .args = {{"approximate", .optional = true, .default_value = 0, .keyword_only = true,
              .choices = approximations}},
    .infer_shape = fake_same_shape,
};

static const fr_layer_ops fake_norm_ops = {
    .kind = "fakenorm",
    .params = {{"weight", FR_INIT_ONES}},
    .input_dtype = FR_F32,
    .args = {{"normalized_shape", .minimum = 1},
             {"eps", .minimum = 1, .optional = true, .default_value = 10000, .real = true},
             {"p", .minimum = 0, .optional = true, .default_value = 500000000, .real = true},
             {"affine", .optional = true, .default_value = 1, .boolean = true},
             {"reduction", .optional = true, .default_value = 0, .choices = reductions}},
    .infer_shape = fake_norm_shape,
};

static const fr_layer_ops fake_embed_ops = {
    .kind = "fakeembed",
    .params = {{"weight", FR_INIT_NORMAL}},
    .input_dtype = FR_I32,
    .accumulates = true,
    .args = {{"num_embeddings", .minimum = 1}, {"embedding_dim", .minimum = 1}},
    .infer_shape = fake_embed_shape,
};

static const fr_layer_ops *const fake_kinds[] = {&fr_linear_ops, &fr_relu_ops, &fake_act_ops,
                                                 &fake_norm_ops, &fake_embed_ops};
#define FAKE_KIND_COUNT ((int)(sizeof fake_kinds / sizeof fake_kinds[0]))

static fr_model *parse_fake(const char *text) {
    fr_model *model = NULL;
    fr_error err = {0};
    if (fr_model_parse_with_kinds(text, "model.txt", fake_kinds, FAKE_KIND_COUNT, &model,
                                  &err) != FR_OK) {
        tap_diag("unexpected error: %s", err.msg);
        return NULL;
    }
    return model;
}

/* As check_error, with the fake kinds. */
static void check_fake_error(const char *what, const char *text, int status,
                             const char *const *wants) {
    fr_model *model = (fr_model *)&model;
    fr_error err = {0};
    int rc = fr_model_parse_with_kinds(text, "model.txt", fake_kinds, FAKE_KIND_COUNT, &model,
                                       &err);
    bool ok = rc == status && err.status == status && model == NULL && !strchr(err.msg, '\n');
    for (int i = 0; wants[i]; i++)
        ok = ok && strstr(err.msg, wants[i]) != NULL;
    if (!tap_ok(ok, "%s is refused", what))
        tap_diag("status %d, message: %s", rc, err.msg);
    if (rc == FR_OK && model)
        fr_model_free(model);
}

static bool dims_are(int ndim, const int *dims, int want_ndim, const int *want) {
    if (ndim != want_ndim)
        return false;
    for (int i = 0; i < ndim; i++)
        if (dims[i] != want[i])
            return false;
    return true;
}

static int layer_index(const fr_model *model, const char *name) {
    for (int i = 0; i < fr_model_layer_count(model); i++)
        if (strcmp(fr_model_layer_name(model, i), name) == 0)
            return i;
    return -1;
}

/* GPT-2's shape in miniature: token ids, an embedding, a named block of
 * anonymous residual blocks, a head tied to the embedding. */
static const char *const gpt_file =
    "input 8 tokens\n"
    "wte = fakeembed(16, 4)\n"
    "block h.0 {\n"
    "    residual {\n"
    "        ln_1 = fakenorm(4, eps=1e-5)\n"
    "        act = fakeact(approximate='tanh')\n"
    "    }\n"
    "    residual {\n"
    "        ln_2 = fakenorm(4, p=0.0, affine=false)\n"
    "        fc = linear(4, 4)\n"
    "        shortcut { proj = linear(4, 4, bias=False) }\n"
    "    }\n"
    "}\n"
    "ln_f = fakenorm(4)\n"
    "lm_head = linear(4, 16, bias=False)\n"
    "tie lm_head.weight wte.weight\n";

static const char *const gpt_inline =
    "input 8 tokens; wte = fakeembed(16, 4); block h.0 { residual { ln_1 = fakenorm(4, "
    "eps=1e-5); act = fakeact(approximate=\"tanh\") }; residual { ln_2 = fakenorm(4, p=0.0, "
    "affine=false); fc = linear(4, 4); shortcut { proj = linear(4, 4, bias=False) } } }; "
    "ln_f = fakenorm(4); lm_head = linear(4, 16, bias=False); tie lm_head.weight wte.weight";

static void check_gpt_model(fr_model *model, const char *how) {
    if (!tap_ok(model != NULL, "%s: token ids, blocks, anonymous residuals and a tie parse", how))
        return;
    int dims[FR_MAX_DIMS];
    int ndim = fr_model_input_dims(model, dims);
    tap_ok(fr_model_input_dtype(model) == FR_I32 && dims_are(ndim, dims, 1, (int[]){8}),
           "%s: 'input 8 tokens' is a sequence of 8 int32 token ids", how);
    ndim = fr_model_output_dims(model, dims);
    tap_ok(dims_are(ndim, dims, 2, (int[]){8, 16}), "%s: the output is [8, 16]", how);
    int ln_1 = layer_index(model, "h.0.ln_1"), join1 = layer_index(model, "h.0.3");
    tap_ok(ln_1 == 1 && join1 == 3 && strcmp(fr_model_layer_kind(model, join1), "residual") == 0,
           "%s: the block names its layers (h.0.ln_1) and an anonymous residual's sum by its "
           "index (h.0.3)", how);
    int proj = layer_index(model, "h.0.proj"), join2 = layer_index(model, "h.0.7");
    tap_ok(proj == 6 && join2 == 7 && strcmp(fr_model_layer_kind(model, join2), "residual") == 0 &&
               fr_model_find_param(model, "h.0.proj.weight") != NULL,
           "%s: a shortcut in an anonymous residual block (h.0.proj, sum h.0.7)", how);
    tap_ok(layer_index(model, "ln_f") == 8 && layer_index(model, "lm_head") == 9,
           "%s: after the block names are plain again", how);
    /* wte, ln_1, ln_2, fc (2), proj, ln_f; lm_head.weight is wte.weight. */
    tap_ok(fr_model_param_count(model) == 7 && !fr_model_find_param(model, "lm_head.weight") &&
               model->layers[9].params[FR_WEIGHT] == model->layers[0].params[FR_WEIGHT],
           "%s: the tie leaves 7 parameters, lm_head using wte.weight", how);
    const fr_layer *l1 = &model->layers[1], *act = &model->layers[2], *l2 = &model->layers[4];
    tap_ok(l1->args[1] == 10000 && l1->args[2] == 500000000 && l1->args[3] == 1 &&
               l1->args[4] == 0,
           "%s: eps=1e-5 is held as 10000 units of 1e-9, the rest at their defaults", how);
    tap_ok(l2->args[1] == 10000 && l2->args[2] == 0 && l2->args[3] == 0,
           "%s: p=0.0 is 0 and affine=false is False", how);
    tap_ok(act->args[0] == 1, "%s: approximate='tanh' is choice 1", how);
}

static void test_transformer_syntax(void) {
    fr_model *model = parse_fake(gpt_file);
    check_gpt_model(model, "file text");
    fr_model_free(model);
    model = parse_fake(gpt_inline);
    check_gpt_model(model, "inline with ';'");
    fr_model_free(model);

    int dims[FR_MAX_DIMS];
    model = parse("input 12; linear(12, 3)");
    tap_ok(model && fr_model_input_dtype(model) == FR_F32 &&
               dims_are(fr_model_input_dims(model, dims), dims, 1, (int[]){12}) &&
               fr_model_output_numel(model) == 3,
           "'input 12' is a vector of 12 floats");
    fr_model_free(model);
    model = parse("input 3, 4; fc = linear(4, 5)");
    tap_ok(model && fr_model_input_dtype(model) == FR_F32 &&
               dims_are(fr_model_input_dims(model, dims), dims, 2, (int[]){3, 4}) &&
               dims_are(fr_model_output_dims(model, dims), dims, 2, (int[]){3, 5}),
           "'input 3 4' is a [3, 4] float input, and linear acts on each row");
    fr_model_free(model);

    model = parse("input 4; block h.0 { residual { ln_1 = relu } }");
    tap_ok(model && fr_model_layer_count(model) == 2 &&
               strcmp(fr_model_layer_name(model, 0), "h.0.ln_1") == 0 &&
               strcmp(fr_model_layer_name(model, 1), "h.0.1") == 0 &&
               strcmp(fr_model_layer_kind(model, 1), "residual") == 0,
           "block h.0 { residual { ln_1 = relu } }: h.0.ln_1 and the sum h.0.1");
    fr_model_free(model);
    model = parse("input 4\nresidual r {\n  block b {\n    x = relu\n  }\n}\n");
    tap_ok(model && fr_model_layer_count(model) == 2 &&
               strcmp(fr_model_layer_name(model, 0), "r.b.x") == 0 &&
               strcmp(fr_model_layer_name(model, 1), "r") == 0,
           "a block inside a residual block: r.b.x, the sum r");
    fr_model_free(model);
    model = parse("input 4; residual { a = linear(4, 4); shortcut { s = linear(4, 4) } }; relu");
    tap_ok(model && fr_model_layer_count(model) == 4 && fr_model_find_param(model, "a.weight") &&
               fr_model_find_param(model, "s.bias") &&
               strcmp(fr_model_layer_name(model, 2), "2") == 0 &&
               strcmp(fr_model_layer_kind(model, 2), "residual") == 0,
           "an anonymous residual block at the top: plain names, its sum named by its index");
    fr_model_free(model);

    model = parse("a = linear(4, 4, bias=False); b = linear(4, 4, bias=False)");
    size_t untied = model ? fr_model_param_count(model) : 0;
    fr_model_free(model);
    model = parse("a = linear(4, 4, bias=False)\nb = linear(4, 4, bias=False)\n"
                  "tie b.weight a.weight\n");
    tap_ok(untied == 2 && model && fr_model_param_count(model) == 1 &&
               fr_model_find_param(model, "a.weight") && !fr_model_find_param(model, "b.weight"),
           "tie b.weight a.weight: one parameter fewer, a.weight shared");
    fr_model_free(model);
    model = parse("a = linear(4, 4, bias=False); b = linear(4, 4, bias=False); tie b.weight "
                  "a.weight; relu");
    tap_ok(model && fr_model_param_count(model) == 1 && fr_model_layer_count(model) == 3,
           "tie between ';' with layers after it");
    fr_model_free(model);

    model = parse_fake("input 4; a = fakeact(approximate=tanh); b = fakeact(approximate=\"none\"); "
                       "c = fakeact(); d = fakenorm(4, 1e-5, 0.5, True, 'sum'); e = fakenorm(4)");
    char lines[5][96] = {{0}};
    for (int i = 0; model && i < 5; i++)
        fr_model_layer_describe(model, i, lines[i], sizeof lines[i]);
    tap_ok(model && model->layers[0].args[0] == 1 && model->layers[1].args[0] == 0 &&
               model->layers[3].args[4] == 1,
           "choices bare, in double and in single quotes, by keyword and by position");
    tap_ok(strstr(lines[0], "fakeact(approximate='tanh')") && strstr(lines[1], "fakeact()") &&
               strstr(lines[2], "fakeact()") && strstr(lines[3], "fakenorm(4, 1e-05, 0.5, True, 'sum')") &&
               strstr(lines[4], "fakenorm(4)"),
           "a choice is written back quoted, as Python writes it, and left out at its default "
           "(%s | %s | %s)", lines[0], lines[1], lines[3]);
    fr_model_free(model);
    model = parse_fake("input 4; fakenorm(4, affine=true); fakenorm(4, affine=False); "
                       "fakenorm(4, affine=TRUE)");
    tap_ok(model && model->layers[0].args[3] == 1 && model->layers[1].args[3] == 0 &&
               model->layers[2].args[3] == 1,
           "booleans: True, true, False and TRUE");
    fr_model_free(model);

    model = fr_model_new_shape(FR_F32, 1, (int[]){4});
    fr_error err = {0};
    int rc = model ? fr_model_add_layer(model, &fake_act_ops, "x", (int[]){2}, &err) : -1;
    tap_ok(rc == FR_EINVAL && strstr(err.msg, "fakeact: approximate must be one of 'none', 'tanh'"),
           "fr_layer_check_arg refuses a choice index out of range: %s", err.msg);
    fr_model_free(model);

    check_fake_error("an unknown choice", "input 4\nfakeact(approximate='fast')", FR_EFORMAT,
                     WANT("model.txt:2: fakeact: approximate must be one of 'none', 'tanh', "
                          "got 'fast'"));
    check_fake_error("a choice in the wrong case", "input 4; fakeact(approximate=Tanh)",
                     FR_EFORMAT, WANT("model.txt:2:", "got 'Tanh'"));
    check_error("a tie of a missing parameter",
                "a = linear(4, 4)\nb = linear(4, 4)\ntie c.weight a.weight\n", FR_ENOMATCH,
                WANT("model.txt:3: tie: no layer has a parameter called 'c.weight'"));
    check_error("a tie to a missing parameter", "a = linear(4, 4); tie a.weight z.weight",
                FR_ENOMATCH, WANT("model.txt:2: tie: there is no parameter 'z.weight'"));
    check_error("a tie of parameters of different shapes",
                "a = linear(4, 4, bias=False)\nb = linear(4, 3, bias=False)\n"
                "tie b.weight a.weight\n",
                FR_ESHAPE, WANT("model.txt:3: tie: 'b.weight' is", "but 'a.weight' is"));
    check_error("a tie with one name", "a = linear(4, 4)\ntie a.weight", FR_EFORMAT,
                WANT("model.txt:2: 'tie' takes two parameter names (tie NAME TO)"));
    check_error("a tie inside a block", "input 4; block b { a = linear(4, 4); tie a.weight "
                "a.bias }", FR_EFORMAT, WANT("model.txt:3: 'tie' inside block 'b'"));
    check_error("a block without a name", "input 4\nblock { relu }", FR_EFORMAT,
                WANT("model.txt:2: 'block' needs a name"));
    check_error("a block without '{'", "input 4\nblock b\n{ relu }", FR_EFORMAT,
                WANT("model.txt:2: expected '{' after 'block NAME'"));
    check_error("an empty block", "input 4; block b { }", FR_EFORMAT,
                WANT("model.txt:2: block 'b' has no layers"));
    check_error("a '}' that closed the residual block, leaving its shortcut in a plain block",
                "input 4\nblock b {\n  residual { relu }\n  shortcut { relu }\n}", FR_EFORMAT,
                WANT("model.txt:4: 'shortcut {' directly inside block 'b'"));
    check_error("a '}' too many after nested blocks",
                "input 4; block b { residual { relu } } }", FR_EFORMAT,
                WANT("model.txt:2: unexpected '}' (no block is open)"));
    check_error("an unclosed anonymous residual block", "input 4\nblock b {\n  residual {\n relu",
                FR_EFORMAT, WANT("model.txt:3: the unnamed residual block of line 3 is not closed"));
    check_error("an empty anonymous residual block", "input 4\nresidual {\n}", FR_EFORMAT,
                WANT("model.txt:3: the unnamed residual block of line 2 has no layers"));
    check_error("input 0 tokens", "input 0 tokens; relu", FR_EFORMAT,
                WANT("model.txt:1: input T must be positive, got 0"));
    check_error("tokens after two sizes", "input 8 4 tokens; relu", FR_EFORMAT,
                WANT("model.txt:1: 'input T tokens' takes one size"));
    check_error("a linear reading token ids", "input 8 tokens\nfc = linear(8, 4)", FR_ESHAPE,
                WANT("model.txt:2:", "linear cannot read the model input, which is token ids"));
    check_fake_error("an embedding without an input line", "wte = fakeembed(16, 4)", FR_EFORMAT,
                     WANT("model.txt:1:", "needs an 'input T tokens' line"));
    check_fake_error("an embedding reading floats", "input 8\nwte = fakeembed(16, 4)", FR_ESHAPE,
                     WANT("model.txt:2:", "fakeembed reads token ids"));
    check_error("a model of only a tie", "tie a.weight b.weight", FR_EFORMAT,
                WANT("model.txt: no layers"));
}

int main(void) {
    tap_plan(232); /* every check below, counted: fewer or more fails the test */
    size_t bytes_before = fr_allocated_bytes();
    test_design_example();
    test_index_names();
    test_implied_input();
    test_arguments();
    test_layout();
    test_errors();
    test_hostile_input();
    test_load();
    test_add_functions();
    test_residual_blocks();
    test_transformer_syntax();
    tap_ok(fr_allocated_bytes() == bytes_before, "every model was freed");
    return tap_done();
}
