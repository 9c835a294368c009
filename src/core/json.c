/*
 * json.c - the JSON reader and writer (json.h says what they accept).
 *
 * Their input comes from files users and other programs give frost, so
 * nothing is trusted: every read is bounded by the text's length, nesting by
 * a depth limit, and a string is decoded into a buffer sized from its JSON
 * form, which is never shorter.
 */
#include "json.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- UTF-8 */

size_t fr_utf8_decode(const unsigned char *s, size_t available, uint32_t *code_point_out) {
    unsigned char lead = s[0];
    size_t length;
    uint32_t code_point;
    if (lead < 0x80) {
        *code_point_out = lead;
        return 1;
    }
    if (lead >= 0xc2 && lead <= 0xdf) {
        length = 2;
        code_point = lead & 0x1f;
    } else if ((lead & 0xf0) == 0xe0) {
        length = 3;
        code_point = lead & 0x0f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        length = 4;
        code_point = lead & 0x07;
    } else {
        return 0;
    }
    if (length > available)
        return 0;
    for (size_t i = 1; i < length; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        code_point = code_point << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, UTF-16 surrogates and values past Unicode are invalid. */
    if (length == 3 && (code_point < 0x800 || (code_point >= 0xd800 && code_point <= 0xdfff)))
        return 0;
    if (length == 4 && (code_point < 0x10000 || code_point > 0x10ffff))
        return 0;
    *code_point_out = code_point;
    return length;
}

bool fr_json_is_utf8(const char *text) {
    size_t remaining = strlen(text);
    const unsigned char *s = (const unsigned char *)text;
    while (remaining) {
        uint32_t code_point;
        size_t length = fr_utf8_decode(s, remaining, &code_point);
        if (!length)
            return false;
        s += length;
        remaining -= length;
    }
    return true;
}

size_t fr_utf8_encode(uint32_t code_point, char *out) {
    if (code_point < 0x80) {
        out[0] = (char)code_point;
        return 1;
    }
    if (code_point < 0x800) {
        out[0] = (char)(0xc0 | code_point >> 6);
        out[1] = (char)(0x80 | (code_point & 0x3f));
        return 2;
    }
    if (code_point < 0x10000) {
        out[0] = (char)(0xe0 | code_point >> 12);
        out[1] = (char)(0x80 | (code_point >> 6 & 0x3f));
        out[2] = (char)(0x80 | (code_point & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | code_point >> 18);
    out[1] = (char)(0x80 | (code_point >> 12 & 0x3f));
    out[2] = (char)(0x80 | (code_point >> 6 & 0x3f));
    out[3] = (char)(0x80 | (code_point & 0x3f));
    return 4;
}

/* ------------------------------------------------------------ reader */

int fr_json_syntax_error(fr_json_reader *r, const char *problem) {
    return fr_fail(r->err, FR_EFORMAT, "%s: invalid JSON in %s at byte %zu: %s", r->source,
                   r->what, r->pos, problem);
}

int fr_json_out_of_memory(fr_json_reader *r) {
    return fr_fail(r->err, FR_ENOMEM, "%s: out of memory reading %s", r->source, r->what);
}

int fr_json_peek(const fr_json_reader *r) { return r->pos < r->length ? r->text[r->pos] : -1; }

void fr_json_skip_whitespace(fr_json_reader *r) {
    int c;
    while ((c = fr_json_peek(r)) == ' ' || c == '\t' || c == '\n' || c == '\r')
        r->pos++;
}

static int parse_hex4(fr_json_reader *r, size_t end, uint32_t *value) {
    *value = 0;
    if (end - r->pos < 4)
        return fr_json_syntax_error(r, "\\u needs four hex digits");
    for (int i = 0; i < 4; i++) {
        int c = r->text[r->pos + (size_t)i], digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if (c >= 'a' && c <= 'f')
            digit = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            digit = c - 'A' + 10;
        else
            return fr_json_syntax_error(r, "\\u needs four hex digits");
        *value = *value << 4 | (uint32_t)digit;
    }
    r->pos += 4;
    return FR_OK;
}

/* One escape sequence after its backslash, appended to `out`. */
static int decode_escape(fr_json_reader *r, size_t end, char *out, size_t *out_length) {
    char simple = 0;
    switch (r->text[r->pos++]) {
    case '"': simple = '"'; break;
    case '\\': simple = '\\'; break;
    case '/': simple = '/'; break;
    case 'b': simple = '\b'; break;
    case 'f': simple = '\f'; break;
    case 'n': simple = '\n'; break;
    case 'r': simple = '\r'; break;
    case 't': simple = '\t'; break;
    case 'u': break;
    default:
        r->pos--;
        return fr_json_syntax_error(r, "invalid escape sequence");
    }
    if (simple) {
        out[(*out_length)++] = simple;
        return FR_OK;
    }
    uint32_t code_point;
    int status = parse_hex4(r, end, &code_point);
    if (status)
        return status;
    if (code_point >= 0xdc00 && code_point <= 0xdfff)
        return fr_json_syntax_error(r, "unpaired UTF-16 surrogate in \\u escape");
    if (code_point >= 0xd800 && code_point <= 0xdbff) {
        /* Characters beyond the BMP arrive as a \uD8xx\uDCxx pair. */
        uint32_t low;
        if (end - r->pos < 2 || r->text[r->pos] != '\\' || r->text[r->pos + 1] != 'u')
            return fr_json_syntax_error(r, "unpaired UTF-16 surrogate in \\u escape");
        r->pos += 2;
        if ((status = parse_hex4(r, end, &low)) != FR_OK)
            return status;
        if (low < 0xdc00 || low > 0xdfff)
            return fr_json_syntax_error(r, "unpaired UTF-16 surrogate in \\u escape");
        code_point = 0x10000 + ((code_point - 0xd800) << 10) + (low - 0xdc00);
    }
    /* Names and values are C strings here. */
    if (code_point == 0)
        return fr_json_syntax_error(r, "NUL character in a string");
    *out_length += fr_utf8_encode(code_point, out + *out_length);
    return FR_OK;
}

/* A JSON string, decoded into a fresh NUL-terminated fr_alloc'd copy. */
int fr_json_string(fr_json_reader *r, char **out, size_t *out_length) {
    *out = NULL;
    if (fr_json_peek(r) != '"')
        return fr_json_syntax_error(r, "expected a string");
    /* Find the closing quote first: the decoded string is never longer than
     * its JSON form, so it can be allocated once. */
    size_t end = r->pos + 1;
    while (end < r->length && r->text[end] != '"')
        end += r->text[end] == '\\' ? 2 : 1;
    if (end >= r->length)
        return fr_json_syntax_error(r, "unterminated string");
    r->pos++;
    char *decoded = fr_alloc(end - r->pos + 1);
    if (!decoded)
        return fr_json_out_of_memory(r);
    size_t length = 0;
    int status = FR_OK;
    while (r->pos < end && status == FR_OK) {
        unsigned char c = r->text[r->pos];
        if (c < 0x20) {
            status = fr_json_syntax_error(r, "control character in a string");
        } else if (c == '\\') {
            r->pos++;
            status = decode_escape(r, end, decoded, &length);
        } else {
            uint32_t code_point;
            size_t sequence = fr_utf8_decode(r->text + r->pos, end - r->pos, &code_point);
            if (!sequence) {
                status = fr_json_syntax_error(r, "invalid UTF-8 in a string");
            } else {
                memcpy(decoded + length, r->text + r->pos, sequence);
                length += sequence;
                r->pos += sequence;
            }
        }
    }
    if (status) {
        fr_free(decoded);
        return status;
    }
    r->pos = end + 1;
    decoded[length] = '\0';
    *out = decoded;
    *out_length = length;
    return FR_OK;
}

/*
 * A JSON number that must be a non-negative integer fitting int64: shapes and
 * offsets are unsigned in the format.  `*negative` tells a leading '-' (even
 * "-0", which the reference reads as a float and refuses) so the caller can
 * say which value was negative.
 */
int fr_json_integer(fr_json_reader *r, int64_t *value, bool *negative) {
    *negative = fr_json_peek(r) == '-';
    if (*negative)
        r->pos++;
    int c = fr_json_peek(r);
    if (c < '0' || c > '9')
        return fr_json_syntax_error(r, "expected an integer");
    uint64_t magnitude = 0;
    if (c == '0') {
        r->pos++;
    } else {
        while ((c = fr_json_peek(r)) >= '0' && c <= '9') {
            unsigned digit = (unsigned)(c - '0');
            if (magnitude > ((uint64_t)INT64_MAX - digit) / 10)
                return fr_fail(r->err, FR_EFORMAT,
                               "%s: the integer at byte %zu of %s is too large "
                               "(over 2^63 - 1)", r->source, r->pos, r->what);
            magnitude = magnitude * 10 + digit;
            r->pos++;
        }
    }
    c = fr_json_peek(r);
    if (c == '.' || c == 'e' || c == 'E')
        return fr_json_syntax_error(r, "expected an integer, not a fraction or exponent");
    if (c >= '0' && c <= '9')
        return fr_json_syntax_error(r, "leading zeros are not allowed");
    *value = *negative ? -(int64_t)magnitude : (int64_t)magnitude;
    return FR_OK;
}

/*
 * Steps through an object whose '{' is consumed: parses the next key and its
 * ':', or consumes the closing '}' and sets *done.  `*first` is true before the
 * first member.
 */
int fr_json_next_key(fr_json_reader *r, bool *first, char **key, size_t *key_length,
                           bool *done) {
    *key = NULL;
    *done = false;
    fr_json_skip_whitespace(r);
    if (fr_json_peek(r) == '}') {
        /* "{"a":1,}" is caught below: after ',' a key must follow. */
        r->pos++;
        *done = true;
        return FR_OK;
    }
    if (!*first) {
        if (fr_json_peek(r) != ',')
            return fr_json_syntax_error(r, "expected ',' or '}'");
        r->pos++;
        fr_json_skip_whitespace(r);
    }
    *first = false;
    int status = fr_json_string(r, key, key_length);
    if (status)
        return status;
    fr_json_skip_whitespace(r);
    if (fr_json_peek(r) != ':') {
        fr_free(*key);
        *key = NULL;
        return fr_json_syntax_error(r, "expected ':'");
    }
    r->pos++;
    fr_json_skip_whitespace(r);
    return FR_OK;
}

/* The same for an array whose '[' is consumed: stops before the next element. */
int fr_json_next_element(fr_json_reader *r, bool *first, bool *done) {
    *done = false;
    fr_json_skip_whitespace(r);
    if (fr_json_peek(r) == ']') {
        r->pos++;
        *done = true;
        return FR_OK;
    }
    if (!*first) {
        if (fr_json_peek(r) != ',')
            return fr_json_syntax_error(r, "expected ',' or ']'");
        r->pos++;
        fr_json_skip_whitespace(r);
        if (fr_json_peek(r) == ']')
            return fr_json_syntax_error(r, "trailing ',' in an array");
    }
    *first = false;
    return FR_OK;
}

/* Consumes `word` (true, false or null) or fails. */
int fr_json_literal(fr_json_reader *r, const char *word) {
    size_t length = strlen(word);
    if (r->length - r->pos < length || memcmp(r->text + r->pos, word, length) != 0)
        return fr_json_syntax_error(r, "expected a value");
    r->pos += length;
    return FR_OK;
}

static void skip_digits(fr_json_reader *r) {
    int c;
    while ((c = fr_json_peek(r)) >= '0' && c <= '9')
        r->pos++;
}

/* Any JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int skip_number(fr_json_reader *r) {
    if (fr_json_peek(r) == '-')
        r->pos++;
    int c = fr_json_peek(r);
    if (c < '0' || c > '9')
        return fr_json_syntax_error(r, "expected a value");
    r->pos++;
    if (c != '0')
        skip_digits(r);
    else if ((c = fr_json_peek(r)) >= '0' && c <= '9')
        return fr_json_syntax_error(r, "leading zeros are not allowed");
    if (fr_json_peek(r) == '.') {
        r->pos++;
        if ((c = fr_json_peek(r)) < '0' || c > '9')
            return fr_json_syntax_error(r, "expected a digit after '.'");
        skip_digits(r);
    }
    if ((c = fr_json_peek(r)) == 'e' || c == 'E') {
        r->pos++;
        if ((c = fr_json_peek(r)) == '+' || c == '-')
            r->pos++;
        if ((c = fr_json_peek(r)) < '0' || c > '9')
            return fr_json_syntax_error(r, "expected a digit in the exponent");
        skip_digits(r);
    }
    return FR_OK;
}

/* serde_json, the reference's parser, refuses deeper nesting; so do we,
 * which also bounds the recursion below. */
#define JSON_DEPTH_LIMIT 128

/*
 * Checks and passes over one JSON value of any kind.  The reference ignores
 * keys it does not know inside a tensor entry, so a file may carry anything
 * there, but it must still be valid JSON.
 */
int fr_json_skip_value(fr_json_reader *r, int depth) {
    if (depth > JSON_DEPTH_LIMIT)
        return fr_json_syntax_error(r, "values nested too deeply");
    fr_json_skip_whitespace(r);
    int c = fr_json_peek(r), status = FR_OK;
    bool first = true, done = false;
    if (c == '{') {
        r->pos++;
        while (status == FR_OK) {
            char *key;
            size_t key_length;
            if ((status = fr_json_next_key(r, &first, &key, &key_length, &done)) != FR_OK || done)
                break;
            fr_free(key);
            status = fr_json_skip_value(r, depth + 1);
        }
        return status;
    }
    if (c == '[') {
        r->pos++;
        while ((status = fr_json_next_element(r, &first, &done)) == FR_OK && !done)
            if ((status = fr_json_skip_value(r, depth + 1)) != FR_OK)
                break;
        return status;
    }
    if (c == '"') {
        char *text;
        size_t text_length;
        if ((status = fr_json_string(r, &text, &text_length)) == FR_OK)
            fr_free(text);
        return status;
    }
    if (c == 't')
        return fr_json_literal(r, "true");
    if (c == 'f')
        return fr_json_literal(r, "false");
    if (c == 'n')
        return fr_json_literal(r, "null");
    return skip_number(r);
}

/* ------------------------------------------------------------ writer */

void fr_json_append_string(fr_text *out, const char *text) {
    fr_text_printf(out, "\"");
    const char *plain = text; /* start of the run not yet appended */
    for (const char *c = text;; c++) {
        unsigned char byte = (unsigned char)*c;
        if (byte != '\0' && byte != '"' && byte != '\\' && byte >= 0x20 && c - plain < 65536)
            continue;
        if (c > plain)
            fr_text_printf(out, "%.*s", (int)(c - plain), plain);
        plain = c;
        if (byte == '\0')
            break;
        if (byte == '"' || byte == '\\') {
            fr_text_printf(out, "\\%c", byte);
            plain = c + 1;
        } else if (byte < 0x20) {
            fr_text_printf(out, "\\u%04x", (unsigned)byte);
            plain = c + 1;
        }
    }
    fr_text_printf(out, "\"");
}

int fr_json_number(fr_json_reader *r, double *value) {
    size_t start = r->pos;
    while (r->pos < r->length && strchr("+-0123456789.eE", r->text[r->pos]))
        r->pos++;
    char text[64];
    size_t len = r->pos - start;
    if (len == 0 || len >= sizeof text)
        return fr_json_syntax_error(r, "expected a number");
    memcpy(text, r->text + start, len);
    text[len] = '\0';
    char *end;
    *value = strtod(text, &end);
    if (*end != '\0' || !isfinite(*value))
        return fr_json_syntax_error(r, "expected a number");
    return FR_OK;
}

int fr_json_bool(fr_json_reader *r, bool *value) {
    *value = fr_json_peek(r) == 't';
    return fr_json_literal(r, *value ? "true" : "false");
}

int fr_json_read_object_file(const char *path, const char *what,
                             int (*member)(fr_json_reader *r, const char *key, void *context),
                             void *context, fr_error *err) {
    unsigned char *bytes = NULL;
    size_t size = 0;
    int rc = fr_read_file(path, 1 << 20, 0, &bytes, &size, err);
    if (rc != FR_OK)
        return rc;
    fr_json_reader r = {.source = path, .what = what, .text = bytes, .length = size, .err = err};
    fr_json_skip_whitespace(&r);
    if (fr_json_peek(&r) != '{')
        rc = fr_json_syntax_error(&r, "expected an object");
    else
        r.pos++;
    bool first = true, done = false;
    while (rc == FR_OK && !done) {
        char *key = NULL;
        size_t len;
        rc = fr_json_next_key(&r, &first, &key, &len, &done);
        if (rc == FR_OK && !done) {
            fr_json_skip_whitespace(&r);
            rc = member(&r, key, context);
        }
        fr_free(key);
    }
    fr_free(bytes);
    return rc;
}
