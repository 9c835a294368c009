/*
 * generate.c - `frost generate`: continue a prompt with tokens sampled from a
 * language model (a model whose input is token ids and whose output is
 * logits per position, [T, V]).  The prompt becomes token ids and the ids
 * sampled become text through --tokenizer: bytes (each byte its id, the
 * default) or GPT-2's BPE (a directory with encoder.json and vocab.bpe).
 *
 * Each new token runs the model over its whole context (no cache of keys and
 * values): the context is the model's sequence length T, left-aligned, so the
 * logits at the prompt's last position see only what precedes it (causal
 * attention); once T tokens are there, the oldest are dropped.
 */
#include "run.h"
#include "tokenize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: a small seeded generator, so a seed gives the same text. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The next token from one position's logits: argmax at temperature 0, else
 * softmax(logits / temperature) over the top_k largest (all when 0). */
static int sample(const float *logits, int vocabulary, double temperature, int top_k,
                  uint64_t *state, double *weights) {
    int best = 0;
    for (int j = 1; j < vocabulary; j++)
        if (logits[j] > logits[best])
            best = j;
    if (temperature == 0.0)
        return best;
    /* The k-th largest logit bounds what may be drawn. */
    float floor_logit = -INFINITY;
    if (top_k > 0 && top_k < vocabulary) {
        int above = 0;
        float bound = logits[best];
        while (above < top_k) {
            float next = -INFINITY;
            above = 0;
            for (int j = 0; j < vocabulary; j++) {
                if (logits[j] >= bound)
                    above++;
                else if (logits[j] > next)
                    next = logits[j];
            }
            if (above >= top_k || next == -INFINITY)
                break;
            bound = next;
        }
        floor_logit = bound;
    }
    double total = 0.0;
    for (int j = 0; j < vocabulary; j++) {
        weights[j] = logits[j] >= floor_logit
                         ? exp(((double)logits[j] - logits[best]) / temperature)
                         : 0.0;
        total += weights[j];
    }
    double u = (double)(next_random(state) >> 11) / 9007199254740992.0 * total;
    for (int j = 0; j < vocabulary; j++) {
        u -= weights[j];
        if (u < 0.0 && weights[j] > 0.0)
            return j;
    }
    return best;
}

int frost_generate(const frost_options *opts, fr_error *err) {
    fr_model *model = NULL;
    fr_trainer *trainer = NULL;
    int dims[FR_MAX_DIMS], out_dims[FR_MAX_DIMS];
    int rc = fr_model_load(opts->model, &model, err);
    if (rc != FR_OK) {
        fr_error_prefix(err, "--model: ");
        return rc;
    }
    if ((rc = frost_add_adapters(opts, model, err)) != FR_OK) {
        fr_model_free(model);
        return rc;
    }
    int seq = 0, vocabulary = 0;
    if (fr_model_input_dtype(model) != FR_I32 || fr_model_input_dims(model, dims) != 1 ||
        fr_model_output_dims(model, out_dims) != 2 || out_dims[0] != dims[0])
        rc = fr_fail(err, FR_ESHAPE, "--model: not a language model (token ids [T] in, logits "
                     "[T, V] out)");
    else {
        seq = dims[0];
        vocabulary = out_dims[1];
    }
    fr_tokenizer *tokenizer = NULL;
    if (rc == FR_OK)
        rc = frost_load_tokenizer(opts->tokenizer ? opts->tokenizer : "byte", &tokenizer, err);
    if (rc == FR_OK && fr_tokenizer_vocab_size(tokenizer) > vocabulary)
        rc = fr_fail(err, FR_EINVAL, "--tokenizer %s: %d tokens, more than the model's "
                     "vocabulary of %d", fr_tokenizer_name(tokenizer),
                     (int)fr_tokenizer_vocab_size(tokenizer), vocabulary);
    if (rc == FR_OK && (rc = fr_model_load_weights(model, opts->init, err)) != FR_OK)
        fr_error_prefix(err, "--weights: ");
    if (rc == FR_OK)
        rc = frost_frozen_bf16(opts, model, false, err);
    fr_train_config config;
    fr_train_config_default(&config);
    config.threads = opts->train.threads;
    config.max_batch = 1;
    config.cache_mb = -1;
    if (rc == FR_OK)
        rc = fr_trainer_new(model, &config, &trainer, err);
    size_t prompt_len = strlen(opts->prompt);
    fr_token_list prompt = {0};
    if (rc == FR_OK)
        rc = fr_tokenizer_encode(tokenizer, opts->prompt, prompt_len, &prompt, "--prompt", err);
    if (rc == FR_OK && prompt.count == 0)
        rc = fr_fail(err, FR_EINVAL, "--prompt: empty");
    int32_t *context = calloc((size_t)seq, sizeof *context);
    float *logits = malloc(sizeof(float) * (size_t)seq * (size_t)(vocabulary > 0 ? vocabulary : 1));
    double *weights = malloc(sizeof(double) * (size_t)(vocabulary > 0 ? vocabulary : 1));
    if (rc == FR_OK && (!context || !logits || !weights))
        rc = fr_fail(err, FR_ENOMEM, "out of memory");
    /* The prompt's last `seq` tokens start the context. */
    int used = 0;
    for (size_t i = prompt.count > (size_t)seq ? prompt.count - (size_t)seq : 0;
         context && i < prompt.count; i++)
        context[used++] = prompt.ids[i];
    uint64_t state = (uint64_t)opts->seed;
    if (rc == FR_OK && fr_comm_rank() == 0)
        fwrite(opts->prompt, 1, prompt_len, stdout);
    for (long n = 0; n < opts->tokens && rc == FR_OK; n++) {
        rc = fr_trainer_predict(trainer, context, 1, logits, err);
        if (rc != FR_OK)
            break;
        int token = sample(logits + (size_t)(used - 1) * vocabulary, vocabulary,
                           opts->temperature, opts->top_k, &state, weights);
        if (used == seq) {
            memmove(context, context + 1, sizeof *context * (size_t)(seq - 1));
            used--;
        }
        context[used++] = token;
        unsigned char *text = NULL;
        size_t length = 0;
        /* A sampled id the tokenizer has no text for (the model's vocabulary
         * may be larger) fails here, naming it. */
        rc = fr_tokenizer_decode(tokenizer, &context[used - 1], 1, &text, &length, err);
        if (rc == FR_OK && fr_comm_rank() == 0) {
            fwrite(text, 1, length, stdout);
            fflush(stdout);
        }
        free(text);
    }
    if (rc == FR_OK && fr_comm_rank() == 0)
        putchar('\n');
    fr_token_list_release(&prompt);
    fr_tokenizer_free(tokenizer);
    free(context);
    free(logits);
    free(weights);
    fr_trainer_free(trainer);
    fr_model_free(model);
    return rc;
}
