/*
 * json.h - the library's JSON reader and writer (json.c), for the one JSON
 * documents frost reads and writes: a safetensors header (safetensors.c),
 * Hugging Face's config.json (gpt2.c) and PEFT's adapter_config.json (adapter.c).
 *
 * The reader is a cursor over text that is not NUL-terminated; the caller
 * walks the document it expects (objects key by key, arrays element by
 * element) and passes over any value it does not need with
 * fr_json_skip_value, which still checks it.  It follows RFC 8259 as
 * serde_json (the reference safetensors reader's parser) does, with two
 * restrictions the callers need: strings are decoded into NUL-terminated
 * copies, so a NUL character is refused, and integers are non-negative
 * int64 values.  Every failure is one line through `err`:
 *   "SOURCE: invalid JSON in WHAT at byte N: PROBLEM".
 *
 * The writer appends JSON strings and integers to an fr_text.
 */
#ifndef FROST_JSON_H
#define FROST_JSON_H

#include "internal.h"

typedef struct fr_json_reader {
    const char *source;         /* the file, for messages */
    const char *what;           /* the document, for messages: "the header" */
    const unsigned char *text;  /* not NUL-terminated */
    size_t length;
    size_t pos;                 /* bytes from text; messages give it */
    fr_error *err;
} fr_json_reader;

/* A syntax error at the cursor, or running out of memory; both return the status. */
int fr_json_syntax_error(fr_json_reader *r, const char *problem);
int fr_json_out_of_memory(fr_json_reader *r);

/* The byte at the cursor, -1 at the end. */
int fr_json_peek(const fr_json_reader *r);
void fr_json_skip_whitespace(fr_json_reader *r);

/* A string, decoded into a fresh NUL-terminated copy (release with fr_free);
 * *out is NULL on failure. */
int fr_json_string(fr_json_reader *r, char **out, size_t *out_length);

/* A number that must be an integer of magnitude at most INT64_MAX.
 * `*negative` tells a leading '-' (even "-0") so the caller can refuse it
 * with its own message. */
int fr_json_integer(fr_json_reader *r, int64_t *value, bool *negative);

/*
 * Steps through an object whose '{' is consumed: parses the next key and its
 * ':', or consumes the closing '}' and sets *done.  `*first` is true before
 * the first member.  *key is fr_alloc'd (NULL when done or on failure).
 */
int fr_json_next_key(fr_json_reader *r, bool *first, char **key, size_t *key_length, bool *done);

/* The same for an array whose '[' is consumed: stops before the next element. */
int fr_json_next_element(fr_json_reader *r, bool *first, bool *done);

/* A number of any form JSON allows (a config's floats), finite. */
int fr_json_number(fr_json_reader *r, double *value);
/* true or false. */
int fr_json_bool(fr_json_reader *r, bool *value);

/*
 * The JSON object that the file at `path` holds (at most 1 MiB; `what` names
 * the document in messages): member(r, key, context) for each key, with the
 * cursor at its value, which member must consume (fr_json_skip_value for one
 * it does not need).  Hugging Face's config.json and PEFT's
 * adapter_config.json are read with it.
 */
int fr_json_read_object_file(const char *path, const char *what,
                             int (*member)(fr_json_reader *r, const char *key, void *context),
                             void *context, fr_error *err);

/* Consumes `word` (true, false or null) or fails. */
int fr_json_literal(fr_json_reader *r, const char *word);

/* Checks and passes over one value of any kind, nested at most 128 deep
 * (serde_json's limit) counting from `depth`. */
int fr_json_skip_value(fr_json_reader *r, int depth);

/* Whether a NUL-terminated string is valid UTF-8 (no overlong forms, no
 * surrogates, nothing past U+10FFFF). */
bool fr_json_is_utf8(const char *text);
/* The valid UTF-8 sequence at `s` (at most `available` bytes, at least 1):
 * its length, and its code point in *code_point; 0 when it is not valid
 * UTF-8 (*code_point is then left alone).  The tokenizer reads text with it
 * too. */
size_t fr_utf8_decode(const unsigned char *s, size_t available, uint32_t *code_point);
/* `code_point` (at most U+10FFFF) as UTF-8 into `out` (room for 4 bytes);
 * returns the length. */
size_t fr_utf8_encode(uint32_t code_point, char *out);

/* Appends `text` as a JSON string (quoted; '"', '\\' and control characters
 * escaped, everything else as it is). */
void fr_json_append_string(fr_text *out, const char *text);

#endif /* FROST_JSON_H */
