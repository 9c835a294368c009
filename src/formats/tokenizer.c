/*
 * tokenizer.c - text to token ids and back: bytes, and GPT-2's byte-level
 * BPE (tokenizer.h says what each gives).
 *
 * GPT-2's BPE, as OpenAI's encoder.py and the npm package gpt-3-encoder run it:
 *   1. the text is cut into pieces by a regex (fr_gpt2_piece_end, written
 *      out by hand on UTF-8 below; letters, numbers and whitespace are
 *      Unicode's, unicode.c);
 *   2. each piece's bytes become one token each: GPT-2 names byte b by a
 *      printable character (bytes_to_unicode: '!'..'~', U+00A1..U+00AC and
 *      U+00AE..U+00FF stand for themselves, the other 68 bytes for U+0100
 *      onwards in order), so encoder.json and vocab.bpe are text;
 *   3. within a piece, the adjacent pair of lowest rank (its line in
 *      vocab.bpe) is merged everywhere it occurs, left to right, and again
 *      until no adjacent pair has a rank; the tokens left are the ids.
 * Step 3 here keeps a heap of adjacent pairs ordered by (rank, position) and
 * takes all the pairs of one rank at a time, so a long piece costs n log n,
 * not encoder.py's n^2, for the same result: a merge makes a token that is
 * in no pair of its own rank, so taking one rank's pairs left to right is
 * encoder.py's "every occurrence, left to right".
 *
 * Tokens are held as their bytes (what decode gives), and merges as pairs of
 * ids; text is never looked up as text once the files are read.  Text that is
 * not UTF-8 still encodes: a byte that does not start a valid UTF-8 sequence
 * is one character that is neither a letter, a number nor a space.
 */
#include "tokenizer.h"
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

/* encoder.json is 1 MB and vocab.bpe 0.5 MB; far larger ones are not vocabularies. */
#define VOCAB_FILE_LIMIT ((size_t)256 << 20)
#define END_OF_TEXT "<|endoftext|>"

/* ------------------------------------------------------------ id lists */

bool fr_token_list_append(fr_token_list *list, int32_t id) {
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 1024;
        int32_t *grown = capacity > SIZE_MAX / sizeof *grown
                             ? NULL
                             : realloc(list->ids, capacity * sizeof *grown);
        if (!grown)
            return false;
        list->ids = grown;
        list->capacity = capacity;
    }
    list->ids[list->count++] = id;
    return true;
}

void fr_token_list_release(fr_token_list *list) {
    free(list->ids);
    memset(list, 0, sizeof *list);
}

/* ------------------------------------------------- GPT-2's byte characters */

/*
 * bytes_to_unicode: the character GPT-2 writes for byte b.  The printable
 * bytes stand for themselves; the other 68 (0x00-0x20, 0x7F-0xA0 and 0xAD)
 * take U+0100 onwards in order.
 */
static bool byte_is_printable(uint32_t b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t character_of_byte(unsigned char b) {
    if (byte_is_printable(b))
        return b;
    if (b <= 0x20)
        return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0)
        return 0x121 + (b - 0x7Fu);
    return 0x143; /* 0xAD */
}

/* The byte character c names, or -1. */
static int byte_of_character(uint32_t c) {
    if (c < 0x100)
        return byte_is_printable(c) ? (int)c : -1;
    if (c <= 0x120)
        return (int)(c - 0x100);
    if (c <= 0x142)
        return (int)(c - 0x121 + 0x7F);
    return c == 0x143 ? 0xAD : -1;
}

/* ------------------------------------------------------------- UTF-8 */

/* The code point of the valid UTF-8 sequence at text[pos] and the byte after
 * it; a byte that starts no valid sequence is returned alone as
 * INVALID_CHARACTER. */
#define INVALID_CHARACTER 0xFFFFFFFFu

static uint32_t decode_character(const unsigned char *text, size_t length, size_t pos,
                                 size_t *next) {
    uint32_t c;
    size_t count = fr_utf8_decode(text + pos, length - pos, &c);
    *next = pos + (count ? count : 1);
    return count ? c : INVALID_CHARACTER;
}

/* ------------------------------------------------- pre-tokenization */

typedef enum character_class { LETTER, NUMBER, SPACE, OTHER } character_class;

static character_class class_at(const unsigned char *text, size_t length, size_t pos,
                                size_t *next) {
    uint32_t c = decode_character(text, length, pos, next);
    if (c == INVALID_CHARACTER)
        return OTHER;
    if (fr_unicode_is_letter(c))
        return LETTER;
    if (fr_unicode_is_number(c))
        return NUMBER;
    return fr_unicode_is_space(c) ? SPACE : OTHER;
}

/*
 * The regex's alternatives in order; the first that matches at `start` wins:
 *   's 't 're 've 'm 'll 'd   (the ASCII apostrophe, lower case only)
 *   ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'  (an optional U+0020, then a
 *                             run of one class: letters, numbers or others)
 *   '\s+(?!\S)'               a whitespace run up to the end of the text, or
 *                             all of it but its last character, which then
 *                             goes with the piece after it (" world")
 *   '\s+'                     a lone whitespace character before a non-space
 */
size_t fr_gpt2_piece_end(const unsigned char *text, size_t length, size_t start) {
    if (text[start] == '\'' && length - start >= 2) {
        unsigned char c1 = text[start + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
            return start + 2;
        if (length - start >= 3) {
            unsigned char c2 = text[start + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return start + 3;
        }
    }
    size_t pos;
    character_class run = class_at(text, length, start, &pos);
    if (text[start] == ' ' && pos < length) {
        size_t after;
        character_class second = class_at(text, length, pos, &after);
        if (second != SPACE) {
            run = second;
            pos = after;
        }
    }
    if (run != SPACE) {
        size_t next;
        while (pos < length && class_at(text, length, pos, &next) == run)
            pos = next;
        return pos;
    }
    size_t last_start = start, next;
    while (pos < length && class_at(text, length, pos, &next) == SPACE) {
        last_start = pos;
        pos = next;
    }
    if (pos == length || last_start == start)
        return pos;
    return last_start;
}

/* ------------------------------------------------------------ merges */

/* (left id, right id) -> the merge's rank and the id of the token it makes:
 * open addressing, a free slot has rank -1. */
typedef struct merge_slot {
    uint64_t pair;
    int32_t rank, merged;
} merge_slot;

typedef struct merge_table {
    merge_slot *slots;
    size_t mask; /* slots - 1, a power of two less one */
} merge_table;

static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

static size_t pair_slot(const merge_table *table, uint64_t pair) {
    return (size_t)((pair * 0x9E3779B97F4A7C15ull) >> 20) & table->mask;
}

static bool merge_table_init(merge_table *table, size_t merges) {
    size_t slots = 16;
    while (slots / 2 < merges)
        slots *= 2;
    table->slots = malloc(slots * sizeof *table->slots);
    if (!table->slots)
        return false;
    for (size_t i = 0; i < slots; i++)
        table->slots[i].rank = -1;
    table->mask = slots - 1;
    return true;
}

/* A pair listed again takes its later rank, as encoder.py's dict does. */
static void merge_table_put(merge_table *table, int32_t left, int32_t right, int32_t rank,
                            int32_t merged) {
    uint64_t pair = pair_key(left, right);
    size_t i = pair_slot(table, pair);
    while (table->slots[i].rank >= 0 && table->slots[i].pair != pair)
        i = (i + 1) & table->mask;
    table->slots[i] = (merge_slot){pair, rank, merged};
}

static const merge_slot *merge_table_find(const merge_table *table, int32_t left, int32_t right) {
    uint64_t pair = pair_key(left, right);
    for (size_t i = pair_slot(table, pair);; i = (i + 1) & table->mask) {
        if (table->slots[i].rank < 0)
            return NULL;
        if (table->slots[i].pair == pair)
            return &table->slots[i];
    }
}

/* -------------------------------------------------------- the tokenizer */

struct fr_tokenizer {
    bool gpt2;
    int32_t vocab_size; /* the largest id + 1 */
    int32_t end_of_text; /* -1: none */
    /* GPT-2: each id's bytes (token_length 0: no token has that id), the id
     * of each byte alone, and the merges. */
    unsigned char *token_bytes;
    size_t *token_start;
    uint32_t *token_length;
    int32_t byte_ids[256];
    merge_table merges;
    /* While the files are read: bytes -> id, open addressing, a free slot
     * holds -1. */
    int32_t *lookup;
    size_t lookup_mask;
};

int fr_tokenizer_bytes(fr_tokenizer **out, fr_error *err) {
    *out = calloc(1, sizeof **out);
    if (!*out)
        return fr_fail(err, FR_ENOMEM, "out of memory for the byte tokenizer");
    (*out)->vocab_size = 256;
    (*out)->end_of_text = -1;
    return FR_OK;
}

void fr_tokenizer_free(fr_tokenizer *tokenizer) {
    if (!tokenizer)
        return;
    free(tokenizer->token_bytes);
    free(tokenizer->token_start);
    free(tokenizer->token_length);
    free(tokenizer->merges.slots);
    free(tokenizer->lookup);
    free(tokenizer);
}

const char *fr_tokenizer_name(const fr_tokenizer *tokenizer) {
    return tokenizer->gpt2 ? "gpt2" : "byte";
}
int32_t fr_tokenizer_vocab_size(const fr_tokenizer *tokenizer) { return tokenizer->vocab_size; }
int32_t fr_tokenizer_end_of_text(const fr_tokenizer *tokenizer) { return tokenizer->end_of_text; }
int32_t fr_tokenizer_pad(const fr_tokenizer *tokenizer) {
    return tokenizer->gpt2 ? tokenizer->end_of_text : 0;
}

/* ------------------------------------------------ reading encoder.json */

/* A token for a message: bytes as GPT-2's files write them when `as_file`
 * (each byte's character), else as they are; at most 40 bytes of UTF-8, a
 * control character or byte that is not UTF-8 shown as '?'. */
static const char *shown_token(const unsigned char *bytes, size_t length, bool as_file,
                               char *shown, size_t shown_size) {
    size_t used = 0;
    for (size_t i = 0; i < length; i++) {
        char character[4];
        size_t width, next;
        if (as_file) {
            width = fr_utf8_encode(character_of_byte(bytes[i]), character);
        } else {
            uint32_t c = decode_character(bytes, length, i, &next);
            width = next - i;
            if (c == INVALID_CHARACTER || c < 0x20 || c == 0x7F) {
                character[0] = '?';
                width = 1;
            } else {
                memcpy(character, bytes + i, width);
            }
            i = next - 1;
        }
        if (used + width + 4 > shown_size || used + width > 40) {
            memcpy(shown + used, "...", 3);
            used += 3;
            break;
        }
        memcpy(shown + used, character, width);
        used += width;
    }
    shown[used] = '\0';
    return shown;
}

/* The bytes a token written in GPT-2's characters stands for, into `out`
 * (room for `length` bytes); false when a character names no byte. */
static bool token_to_bytes(const unsigned char *text, size_t length, unsigned char *out,
                           size_t *out_length) {
    size_t next;
    /* Checked first, so that `out` may be `text` and a failure leaves it whole. */
    for (size_t pos = 0; pos < length; pos = next)
        if (byte_of_character(decode_character(text, length, pos, &next)) < 0)
            return false;
    size_t used = 0;
    for (size_t pos = 0; pos < length; pos = next)
        out[used++] = (unsigned char)byte_of_character(decode_character(text, length, pos, &next));
    *out_length = used;
    return true;
}

static size_t bytes_slot(const fr_tokenizer *t, const unsigned char *bytes, size_t length) {
    return (size_t)fr_hash_bytes(FR_HASH_INIT, bytes, length) & t->lookup_mask;
}

/* The id of the token with these bytes, or -1. */
static int32_t find_token(const fr_tokenizer *t, const unsigned char *bytes, size_t length) {
    for (size_t i = bytes_slot(t, bytes, length);; i = (i + 1) & t->lookup_mask) {
        int32_t id = t->lookup[i];
        if (id < 0)
            return -1;
        if (t->token_length[id] == length &&
            memcmp(t->token_bytes + t->token_start[id], bytes, length) == 0)
            return id;
    }
}

/* One entry of encoder.json as it is read: where its bytes are, its id. */
typedef struct vocab_entry {
    size_t start;
    uint32_t length;
    int32_t id;
} vocab_entry;

typedef struct vocab_reading {
    vocab_entry *entries;
    size_t count, capacity;
    unsigned char *bytes;
    size_t bytes_used, bytes_capacity;
} vocab_reading;

static bool add_entry(vocab_reading *v, const unsigned char *bytes, size_t length, int32_t id) {
    if (v->count == v->capacity) {
        size_t capacity = v->capacity ? v->capacity * 2 : 1024;
        vocab_entry *grown = realloc(v->entries, capacity * sizeof *grown);
        if (!grown)
            return false;
        v->entries = grown;
        v->capacity = capacity;
    }
    if (v->bytes_capacity - v->bytes_used < length) {
        size_t capacity = v->bytes_capacity ? v->bytes_capacity : 4096;
        while (capacity - v->bytes_used < length)
            capacity *= 2;
        unsigned char *grown = realloc(v->bytes, capacity);
        if (!grown)
            return false;
        v->bytes = grown;
        v->bytes_capacity = capacity;
    }
    memcpy(v->bytes + v->bytes_used, bytes, length);
    v->entries[v->count++] = (vocab_entry){v->bytes_used, (uint32_t)length, id};
    v->bytes_used += length;
    return true;
}

/* The JSON object of encoder.json: token (in GPT-2's characters) -> id. */
static int read_encoder_entries(const char *path, const unsigned char *text, size_t length,
                                vocab_reading *v, fr_error *err) {
    fr_json_reader r = {path, "the token table", text, length, 0, err};
    fr_json_skip_whitespace(&r);
    if (fr_json_peek(&r) != '{')
        return fr_json_syntax_error(&r, "expected an object of token: id");
    r.pos++;
    bool first = true, done = false;
    char shown[64];
    for (;;) {
        char *key;
        size_t key_length;
        int status = fr_json_next_key(&r, &first, &key, &key_length, &done);
        if (status != FR_OK)
            return status;
        if (done)
            break;
        size_t key_pos = r.pos;
        int64_t id;
        bool negative;
        status = fr_json_integer(&r, &id, &negative);
        unsigned char *bytes = (unsigned char *)key; /* decoded in place: never longer */
        size_t byte_count = 0;
        if (status == FR_OK && (negative || id > FR_TOKENIZER_MAX_ID))
            status = fr_fail(err, FR_EFORMAT,
                             "%s: token \"%s\" has id %s%lld; ids run from 0 to %d", path,
                             shown_token((unsigned char *)key, key_length, false, shown,
                                         sizeof shown),
                             negative && id == 0 ? "-" : "", (long long)id,
                             FR_TOKENIZER_MAX_ID);
        else if (status == FR_OK && key_length == 0)
            status = fr_fail(err, FR_EFORMAT, "%s: an empty token (id %lld) at byte %zu", path,
                             (long long)id, key_pos);
        else if (status == FR_OK &&
                 !token_to_bytes((unsigned char *)key, key_length, bytes, &byte_count))
            status = fr_fail(err, FR_EFORMAT,
                             "%s: token \"%s\" (id %lld) has a character that is not one of "
                             "GPT-2's 256 byte characters",
                             path,
                             shown_token((unsigned char *)key, key_length, false, shown,
                                         sizeof shown),
                             (long long)id);
        else if (status == FR_OK && !add_entry(v, bytes, byte_count, (int32_t)id))
            status = fr_json_out_of_memory(&r);
        fr_free(key);
        if (status != FR_OK)
            return status;
    }
    fr_json_skip_whitespace(&r);
    if (r.pos != r.length)
        return fr_json_syntax_error(&r, "unexpected text after the object");
    if (v->count == 0)
        return fr_fail(err, FR_EFORMAT, "%s: the token table is empty", path);
    return FR_OK;
}

/* Each id's bytes and the bytes -> id lookup from what encoder.json gave;
 * two tokens with one id, or one token twice, is an error. */
static int index_tokens(fr_tokenizer *t, const char *path, vocab_reading *v, fr_error *err) {
    int32_t largest = 0;
    for (size_t i = 0; i < v->count; i++)
        largest = v->entries[i].id > largest ? v->entries[i].id : largest;
    t->vocab_size = largest + 1;
    size_t slots = 16;
    while (slots / 2 < v->count)
        slots *= 2;
    t->token_start = calloc((size_t)t->vocab_size, sizeof *t->token_start);
    t->token_length = calloc((size_t)t->vocab_size, sizeof *t->token_length);
    t->lookup = malloc(slots * sizeof *t->lookup);
    if (!t->token_start || !t->token_length || !t->lookup)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory for %zu tokens", path, v->count);
    t->lookup_mask = slots - 1;
    for (size_t i = 0; i < slots; i++)
        t->lookup[i] = -1;
    t->token_bytes = v->bytes;
    v->bytes = NULL;
    char shown[64], other[64];
    for (size_t i = 0; i < v->count; i++) {
        const vocab_entry *e = &v->entries[i];
        const unsigned char *bytes = t->token_bytes + e->start;
        if (t->token_length[e->id] != 0)
            return fr_fail(err, FR_EFORMAT, "%s: id %d is given to two tokens, \"%s\" and \"%s\"",
                           path, (int)e->id,
                           shown_token(t->token_bytes + t->token_start[e->id],
                                       t->token_length[e->id], true, other, sizeof other),
                           shown_token(bytes, e->length, true, shown, sizeof shown));
        int32_t same = find_token(t, bytes, e->length);
        if (same >= 0)
            return fr_fail(err, FR_EFORMAT, "%s: token \"%s\" is listed twice (ids %d and %d)",
                           path, shown_token(bytes, e->length, true, shown, sizeof shown),
                           (int)same, (int)e->id);
        t->token_start[e->id] = e->start;
        t->token_length[e->id] = e->length;
        size_t slot = bytes_slot(t, bytes, e->length);
        while (t->lookup[slot] >= 0)
            slot = (slot + 1) & t->lookup_mask;
        t->lookup[slot] = e->id;
    }
    for (int b = 0; b < 256; b++) {
        unsigned char byte = (unsigned char)b;
        if ((t->byte_ids[b] = find_token(t, &byte, 1)) < 0)
            return fr_fail(err, FR_EFORMAT,
                           "%s: no token for the byte 0x%02x (\"%s\"); every byte needs one",
                           path, b, shown_token(&byte, 1, true, shown, sizeof shown));
    }
    t->end_of_text = find_token(t, (const unsigned char *)END_OF_TEXT, strlen(END_OF_TEXT));
    if (t->end_of_text < 0)
        return fr_fail(err, FR_EFORMAT, "%s: no \"" END_OF_TEXT "\" token", path);
    return FR_OK;
}

static int read_encoder(fr_tokenizer *t, const char *path, fr_error *err) {
    unsigned char *text;
    size_t length;
    int status = fr_read_file(path, VOCAB_FILE_LIMIT, 0, &text, &length, err);
    if (status != FR_OK)
        return status;
    vocab_reading v = {0};
    status = read_encoder_entries(path, text, length, &v, err);
    fr_free(text);
    if (status == FR_OK)
        status = index_tokens(t, path, &v, err);
    free(v.entries);
    free(v.bytes);
    return status;
}

/* --------------------------------------------------- reading vocab.bpe */

/* One token of a merges line, as bytes; the message names the line. */
static int merge_token(const fr_tokenizer *t, const char *path, const char *encoder_path,
                       size_t line_number, const unsigned char *text, size_t length,
                       unsigned char *scratch, int32_t *id, fr_error *err) {
    size_t byte_count;
    *id = token_to_bytes(text, length, scratch, &byte_count)
              ? find_token(t, scratch, byte_count)
              : -1;
    if (*id >= 0)
        return FR_OK;
    char shown[64];
    return fr_fail(err, FR_EFORMAT, "%s: line %zu: token \"%s\" is not in %s", path, line_number,
                   shown_token(text, length, false, shown, sizeof shown), encoder_path);
}

/*
 * vocab.bpe: a first line "#version: 0.2" (any first line starting with '#'
 * is passed over), then one merge per line, "LEFT RIGHT" in GPT-2's
 * characters, the line's position its rank (from 0).  Both tokens and the
 * one they make must be in encoder.json.  The file may end with or without a
 * newline; an empty line elsewhere is an error.
 */
static int read_merges(fr_tokenizer *t, const char *path, const char *encoder_path,
                       fr_error *err) {
    unsigned char *text;
    size_t length;
    int status = fr_read_file(path, VOCAB_FILE_LIMIT, 0, &text, &length, err);
    if (status != FR_OK)
        return status;
    size_t lines = 1;
    for (size_t i = 0; i < length; i++)
        lines += text[i] == '\n';
    /* Room for a line's two tokens as bytes and the token they make. */
    unsigned char *scratch = malloc(length + 1);
    if (!scratch || !merge_table_init(&t->merges, lines)) {
        free(scratch);
        fr_free(text);
        return fr_fail(err, FR_ENOMEM, "%s: out of memory for %zu merges", path, lines);
    }
    size_t line_number = 0;
    int32_t rank = 0;
    for (size_t pos = 0; pos < length && status == FR_OK;) {
        const unsigned char *newline = memchr(text + pos, '\n', length - pos);
        size_t line_end = newline ? (size_t)(newline - text) : length;
        size_t begin = pos, end = line_end;
        pos = line_end + 1;
        line_number++;
        if (end > begin && text[end - 1] == '\r')
            end--;
        if (line_number == 1 && end > begin && text[begin] == '#')
            continue;
        /* The fields between runs of spaces and tabs. */
        size_t field_start[3], field_end[3], fields = 0;
        for (size_t i = begin; i < end;) {
            while (i < end && (text[i] == ' ' || text[i] == '\t'))
                i++;
            if (i == end)
                break;
            size_t start = i;
            while (i < end && text[i] != ' ' && text[i] != '\t')
                i++;
            if (fields < 3) {
                field_start[fields] = start;
                field_end[fields] = i;
            }
            fields++;
        }
        if (fields != 2) {
            status = fr_fail(err, FR_EFORMAT,
                             "%s: line %zu: expected a merge, two tokens separated by a space; "
                             "found %zu token%s",
                             path, line_number, fields, fields == 1 ? "" : "s");
            break;
        }
        int32_t left, right;
        status = merge_token(t, path, encoder_path, line_number, text + field_start[0],
                             field_end[0] - field_start[0], scratch, &left, err);
        if (status == FR_OK)
            status = merge_token(t, path, encoder_path, line_number, text + field_start[1],
                                 field_end[1] - field_start[1], scratch, &right, err);
        if (status != FR_OK)
            break;
        size_t left_length = t->token_length[left], right_length = t->token_length[right];
        memcpy(scratch, t->token_bytes + t->token_start[left], left_length);
        memcpy(scratch + left_length, t->token_bytes + t->token_start[right], right_length);
        int32_t merged = find_token(t, scratch, left_length + right_length);
        if (merged < 0) {
            char shown[64];
            status = fr_fail(err, FR_EFORMAT, "%s: line %zu: the merged token \"%s\" is not in %s",
                             path, line_number,
                             shown_token(scratch, left_length + right_length, true, shown,
                                         sizeof shown),
                             encoder_path);
            break;
        }
        merge_table_put(&t->merges, left, right, rank++, merged);
    }
    free(scratch);
    fr_free(text);
    return status;
}

int fr_tokenizer_load_gpt2(const char *encoder_path, const char *merges_path,
                           fr_tokenizer **out, fr_error *err) {
    *out = NULL;
    fr_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return fr_fail(err, FR_ENOMEM, "%s: out of memory for the tokenizer", encoder_path);
    t->gpt2 = true;
    int status = read_encoder(t, encoder_path, err);
    if (status == FR_OK)
        status = read_merges(t, merges_path, encoder_path, err);
    free(t->lookup); /* only reading needs text -> id */
    t->lookup = NULL;
    if (status != FR_OK) {
        fr_tokenizer_free(t);
        return status;
    }
    *out = t;
    return FR_OK;
}

/* ---------------------------------------------------------- encoding */

/* A pair of adjacent tokens that a merge could join: the left one's position
 * in the piece and both ids as they were when the pair was found (a merge
 * since then makes it stale). */
typedef struct pair_entry {
    int32_t rank, position, left, right;
} pair_entry;

/* The buffers of one encode call, grown to the longest piece. */
typedef struct bpe_work {
    int32_t *ids;  /* per position: its token, -1 once merged into the one on its left */
    int32_t *next, *previous;
    pair_entry *heap, *batch;
    size_t heap_count, capacity;
} bpe_work;

static bool pair_before(const pair_entry *a, const pair_entry *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->position < b->position;
}

static void heap_push(bpe_work *w, pair_entry entry) {
    size_t i = w->heap_count++;
    while (i > 0 && pair_before(&entry, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = entry;
}

static pair_entry heap_pop(bpe_work *w) {
    pair_entry top = w->heap[0], last = w->heap[--w->heap_count];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= w->heap_count)
            break;
        if (child + 1 < w->heap_count && pair_before(&w->heap[child + 1], &w->heap[child]))
            child++;
        if (!pair_before(&w->heap[child], &last))
            break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (w->heap_count > 0)
        w->heap[i] = last;
    return top;
}

static void push_pair(const fr_tokenizer *t, bpe_work *w, int32_t position) {
    int32_t next = w->next[position];
    if (next < 0)
        return;
    const merge_slot *merge = merge_table_find(&t->merges, w->ids[position], w->ids[next]);
    if (merge)
        heap_push(w, (pair_entry){merge->rank, position, w->ids[position], w->ids[next]});
}

static bool work_reserve(bpe_work *w, size_t length) {
    /* Each merge adds at most two pairs to the length - 1 there are at first. */
    if (length <= w->capacity)
        return true;
    if (length > (size_t)INT32_MAX / 3)
        return false;
    size_t capacity = length < 64 ? 64 : length;
    int32_t *ids = realloc(w->ids, capacity * sizeof *ids);
    if (ids)
        w->ids = ids;
    int32_t *next = realloc(w->next, capacity * sizeof *next);
    if (next)
        w->next = next;
    int32_t *previous = realloc(w->previous, capacity * sizeof *previous);
    if (previous)
        w->previous = previous;
    pair_entry *heap = realloc(w->heap, 3 * capacity * sizeof *heap);
    if (heap)
        w->heap = heap;
    pair_entry *batch = realloc(w->batch, 3 * capacity * sizeof *batch);
    if (batch)
        w->batch = batch;
    if (!ids || !next || !previous || !heap || !batch)
        return false;
    w->capacity = capacity;
    return true;
}

/* One piece's tokens, appended to `out`. */
static bool encode_piece(const fr_tokenizer *t, bpe_work *w, const unsigned char *piece,
                         size_t length, fr_token_list *out) {
    if (length == 1)
        return fr_token_list_append(out, t->byte_ids[piece[0]]);
    if (!work_reserve(w, length))
        return false;
    int32_t n = (int32_t)length;
    for (int32_t i = 0; i < n; i++) {
        w->ids[i] = t->byte_ids[piece[i]];
        w->previous[i] = i - 1;
        w->next[i] = i + 1 < n ? i + 1 : -1;
    }
    w->heap_count = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(t, w, i);
    while (w->heap_count > 0) {
        /* Every pair of the lowest rank there is, left to right. */
        size_t batch_count = 0;
        int32_t rank = w->heap[0].rank;
        while (w->heap_count > 0 && w->heap[0].rank == rank)
            w->batch[batch_count++] = heap_pop(w);
        for (size_t k = 0; k < batch_count; k++) {
            const pair_entry *pair = &w->batch[k];
            int32_t position = pair->position, right = w->next[position];
            if (w->ids[position] != pair->left || right < 0 || w->ids[right] != pair->right)
                continue; /* an earlier merge took one of its tokens */
            w->ids[position] = merge_table_find(&t->merges, pair->left, pair->right)->merged;
            w->ids[right] = -1;
            w->next[position] = w->next[right];
            if (w->next[right] >= 0)
                w->previous[w->next[right]] = position;
            if (w->previous[position] >= 0)
                push_pair(t, w, w->previous[position]);
            push_pair(t, w, position);
        }
    }
    for (int32_t i = 0; i >= 0; i = w->next[i])
        if (!fr_token_list_append(out, w->ids[i]))
            return false;
    return true;
}

int fr_tokenizer_encode(const fr_tokenizer *tokenizer, const void *text, size_t length,
                        fr_token_list *out, const char *source, fr_error *err) {
    const unsigned char *bytes = text;
    size_t count_before = out->count;
    bool enough_memory = true;
    if (!tokenizer->gpt2) {
        for (size_t i = 0; i < length && enough_memory; i++)
            enough_memory = fr_token_list_append(out, bytes[i]);
    } else {
        bpe_work work = {0};
        for (size_t start = 0; start < length && enough_memory;) {
            size_t end = fr_gpt2_piece_end(bytes, length, start);
            enough_memory = encode_piece(tokenizer, &work, bytes + start, end - start, out);
            start = end;
        }
        free(work.ids);
        free(work.next);
        free(work.previous);
        free(work.heap);
        free(work.batch);
    }
    if (!enough_memory) {
        out->count = count_before;
        return fr_fail(err, FR_ENOMEM, "%s: out of memory for its tokens", source);
    }
    return FR_OK;
}

/* ---------------------------------------------------------- decoding */

static bool known_id(const fr_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->vocab_size)
        return false;
    return !t->gpt2 || t->token_length[id] > 0;
}

int fr_tokenizer_decode(const fr_tokenizer *tokenizer, const int32_t *ids, size_t count,
                        unsigned char **text, size_t *length, fr_error *err) {
    *text = NULL;
    *length = 0;
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        if (!known_id(tokenizer, ids[i]))
            return fr_fail(err, FR_EINVAL,
                           "token %zu: id %d is not in the vocabulary (%s: ids 0 to %d)", i,
                           (int)ids[i], fr_tokenizer_name(tokenizer),
                           (int)tokenizer->vocab_size - 1);
        total += tokenizer->gpt2 ? tokenizer->token_length[ids[i]] : 1;
    }
    unsigned char *bytes = malloc(total + 1);
    if (!bytes)
        return fr_fail(err, FR_ENOMEM, "out of memory for %zu bytes of decoded text", total);
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        if (!tokenizer->gpt2) {
            bytes[used++] = (unsigned char)ids[i];
            continue;
        }
        memcpy(bytes + used, tokenizer->token_bytes + tokenizer->token_start[ids[i]],
               tokenizer->token_length[ids[i]]);
        used += tokenizer->token_length[ids[i]];
    }
    bytes[used] = '\0';
    *text = bytes;
    *length = used;
    return FR_OK;
}
