/*
 * test_tokenizer.c - the tokenizers (src/formats/tokenizer.c) and the .npy writer
 * (src/formats/npy.c) as a specification:
 *   - bytes: each byte is its id, and back;
 *   - GPT-2's pre-tokenization cuts text where GPT-2's regex does (the
 *     expected pieces are what node's regex engine gives for the same
 *     pattern);
 *   - BPE on a tiny encoder.json/vocab.bpe written here: merges go by rank,
 *     not by where they occur, every occurrence left to right, never across
 *     pieces; decode(encode(s)) == s for ASCII, accented, Greek, Cyrillic and
 *     CJK text and for bytes that are not UTF-8;
 *   - every kind of bad vocabulary file fails with one line that names it;
 *   - fr_npy_write writes numpy.save's header, and fr_npy_parse reads back
 *     what it wrote, and what `frost tokenize` wrote (when $FROST is set).
 * The real GPT-2 vocabulary is tests/tokenize_gpt2.sh's.
 */
#define _POSIX_C_SOURCE 200809L

#include "formats/tokenizer.h"
#include "core/json.h"
#include "tap.h"
#include "test_files.h"

#include <stdlib.h>

/* ------------------------------------------------------------ helpers */

static void write_text(const char *path, const char *text) {
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(text, 1, strlen(text), file) != strlen(text) || fclose(file) != 0) {
        printf("Bail out! cannot write %s\n", path);
        exit(2);
    }
}

/* GPT-2's bytes_to_unicode, written out from encoder.py's description
 * independently of tokenizer.c: the printable bytes stand for themselves,
 * the others take U+0100 onwards in byte order.  Returns the UTF-8 bytes. */
static const char *byte_character(int b, char out[4]) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    int code_point = b;
    if (!printable) {
        code_point = 0x100;
        for (int below = 0; below < b; below++)
            code_point += !((below >= '!' && below <= '~') || (below >= 0xA1 && below <= 0xAC) ||
                            below >= 0xAE);
    }
    if (code_point < 0x80) {
        out[0] = (char)code_point;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | code_point >> 6);
        out[1] = (char)(0x80 | (code_point & 0x3F));
        out[2] = '\0';
    }
    return out;
}

/*
 * The tiny vocabulary: ids 0-255 are the bytes (id = byte value), then
 * "lo" 256, "he" 257, "ll" 258, "aa" 259, "hel" 260, "oĠ" 261 and <|endoftext|>
 * 262;
 * `extra` is appended to the object's members (",\"x\": 5") or NULL.
 * The merges, by rank: l o, h e, l l, a a, o Ġ (which would join across
 * pieces), he l.
 */
static const char *const tiny_merges = "#version: 0.2\nl o\nh e\nl l\na a\no \xC4\xA0\nhe l\n";

static char *tiny_encoder(const char *extra, int skip_byte) {
    fr_text json = {0};
    fr_text_printf(&json, "{");
    for (int b = 0; b < 256; b++) {
        if (b == skip_byte)
            continue;
        char character[4];
        fr_json_append_string(&json, byte_character(b, character));
        fr_text_printf(&json, ": %d, ", b);
    }
    fr_text_printf(&json, "\"lo\": 256, \"he\": 257, \"ll\": 258, \"aa\": 259, \"hel\": 260, "
                          "\"o\xC4\xA0\": 261, \"<|endoftext|>\": 262%s}\n",
                   extra ? extra : "");
    return json.data;
}

static fr_tokenizer *load_tiny(void) {
    char *encoder = tiny_encoder(NULL, -1);
    write_text(in_test_dir("encoder.json"), encoder);
    write_text(in_test_dir("vocab.bpe"), tiny_merges);
    free(encoder);
    fr_error err = {0};
    fr_tokenizer *tokenizer = NULL;
    if (fr_tokenizer_load_gpt2(in_test_dir("encoder.json"), in_test_dir("vocab.bpe"), &tokenizer,
                               &err) != FR_OK)
        tap_diag("loading the tiny vocabulary: %s", err.msg);
    return tokenizer;
}

/* The ids of `text` as "1 2 3". */
static const char *ids_of(const fr_tokenizer *tokenizer, const char *text) {
    static char shown[1024];
    fr_token_list ids = {0};
    fr_error err = {0};
    if (fr_tokenizer_encode(tokenizer, text, strlen(text), &ids, "the test", &err) != FR_OK) {
        snprintf(shown, sizeof shown, "error: %s", err.msg);
        return shown;
    }
    size_t used = 0;
    shown[0] = '\0';
    for (size_t i = 0; i < ids.count && used < sizeof shown - 16; i++)
        used += (size_t)snprintf(shown + used, sizeof shown - used, "%s%d", i ? " " : "",
                                 (int)ids.ids[i]);
    fr_token_list_release(&ids);
    return shown;
}

/* Whether decode(encode(text)) gives the same `length` bytes back. */
static bool round_trips(const fr_tokenizer *tokenizer, const char *text, size_t length) {
    fr_token_list ids = {0};
    fr_error err = {0};
    unsigned char *back = NULL;
    size_t back_length = 0;
    bool same = fr_tokenizer_encode(tokenizer, text, length, &ids, "the test", &err) == FR_OK &&
                fr_tokenizer_decode(tokenizer, ids.ids, ids.count, &back, &back_length, &err) ==
                    FR_OK &&
                back_length == length && memcmp(back, text, length) == 0;
    if (!same && err.msg[0])
        tap_diag("%s", err.msg);
    free(back);
    fr_token_list_release(&ids);
    return same;
}

/* The pieces GPT-2's regex cuts `text` into, joined by '|'. */
static const char *pieces_of(const char *text) {
    static char joined[512];
    size_t length = strlen(text), used = 0;
    for (size_t start = 0; start < length;) {
        size_t end = fr_gpt2_piece_end((const unsigned char *)text, length, start);
        if (end <= start || end > length)
            return "(no progress)";
        used += (size_t)snprintf(joined + used, sizeof joined - used, "%s%.*s",
                                 start ? "|" : "", (int)(end - start), text + start);
        start = end;
    }
    joined[used] = '\0';
    return joined;
}

/* ---------------------------------------------------------- the tests */

static const char utf8_text[] =
    "Café naïve résumé — Ελληνικά κείμενο, кириллица и ёж; 中文字符 日本語のテキスト 한국어.\n"
    "  two  spaces\tand a tab, don't we'll they're 3.14159 1,000,000 ½ ² ٣ 😀!\n\n";

static void test_bytes(void) {
    fr_tokenizer *bytes;
    fr_error err = {0};
    int status = fr_tokenizer_bytes(&bytes, &err);
    tap_ok(status == FR_OK && fr_tokenizer_vocab_size(bytes) == 256 &&
               fr_tokenizer_end_of_text(bytes) == -1 && fr_tokenizer_pad(bytes) == 0 &&
               strcmp(fr_tokenizer_name(bytes), "byte") == 0,
           "the byte tokenizer: vocabulary 256, no end-of-text token, padding id 0");
    const char text[] = "A\x00\xff\n\xc3\xa9";
    tap_ok(strcmp(ids_of(bytes, "Az\n\xc3\xa9"), "65 122 10 195 169") == 0,
           "bytes: each byte is its own id (\"Az\\né\" -> 65 122 10 195 169)");
    tap_ok(round_trips(bytes, text, sizeof text - 1) &&
               round_trips(bytes, utf8_text, sizeof utf8_text - 1),
           "bytes: decode(encode(s)) == s, NUL, 0xff and UTF-8 included");
    int32_t bad[2] = {65, 256};
    unsigned char *back = NULL;
    size_t back_length;
    status = fr_tokenizer_decode(bytes, bad, 2, &back, &back_length, &err);
    tap_ok(status != FR_OK && !back && strstr(err.msg, "id 256 is not in the vocabulary"),
           "bytes: decoding id 256 fails, naming it (%s)", err.msg);
    fr_tokenizer_free(bytes);
}

static void test_pieces(void) {
    static const struct {
        const char *text, *pieces, *what;
    } cases[] = {
        {"Hello world's 42 !!", "Hello| world|'s| 42| !!", "words keep the space before them, "
                                                             "'s is its own piece"},
        {"don't I'M they're we'll ''s", "don|'t| I|'|M| they|'re| we|'ll| ''|s",
         "contractions are lower case ASCII only"},
        {"  hello", " | hello", "of two spaces before a word, the last goes with the word"},
        {"x   ", "x|   ", "whitespace at the end is one piece"},
        {"a\n\nb", "a|\n|\n|b", "newlines before a letter: one piece each"},
        {"end.\n", "end|.|\n", "punctuation and a final newline"},
        {" 1.5%", " 1|.|5|%", "numbers and punctuation"},
        {"café naïve", "café| naïve", "accented letters are letters"},
        {"Ελληνικά кириллица 中文字", "Ελληνικά| кириллица| 中文字",
         "Greek, Cyrillic and CJK letters"},
        {"٣½ x²", "٣½| x|²", "Arabic-Indic digits, fractions and superscripts are numbers"},
        {"e\xcc\x81", "e|\xcc\x81", "a combining accent is not a letter (as in \\p{L})"},
        {"x\xc2\xa0y", "x|\xc2\xa0|y", "a no-break space is whitespace"},
        {"x \xe3\x80\x80 y", "x| \xe3\x80\x80| y", "an ideographic space is whitespace"},
        {"a\xff\xfe" "b", "a|\xff\xfe|b", "bytes that are not UTF-8 are neither letters nor "
                                          "spaces"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = pieces_of(cases[i].text);
        tap_ok(strcmp(got, cases[i].pieces) == 0, "pre-tokenization: %s", cases[i].what);
        if (strcmp(got, cases[i].pieces) != 0)
            tap_diag("got \"%s\", expected \"%s\"", got, cases[i].pieces);
    }
}

static void test_bpe(void) {
    fr_tokenizer *tiny = load_tiny();
    tap_ok(tiny != NULL, "the tiny encoder.json and vocab.bpe load");
    if (!tiny) {
        for (int i = 0; i < 7; i++)
            tap_ok(0, "(needs the tiny vocabulary)");
        return;
    }
    tap_ok(fr_tokenizer_vocab_size(tiny) == 263 && fr_tokenizer_end_of_text(tiny) == 262 &&
               fr_tokenizer_pad(tiny) == 262 && strcmp(fr_tokenizer_name(tiny), "gpt2") == 0,
           "GPT-2: vocabulary 263, <|endoftext|> (262) ends texts and pads rows");
    /* h e l l o: "l o" (rank 0) first, then "h e" (1), then "he l" (5); "l l"
     * (2) never: its second l went into "lo".  Leftmost first would give he ll o. */
    tap_ok(strcmp(ids_of(tiny, "hello"), "260 256") == 0,
           "merges go by rank, not by position: hello -> hel lo (%s)", ids_of(tiny, "hello"));
    tap_ok(strcmp(ids_of(tiny, "aaa"), "259 97") == 0 &&
               strcmp(ids_of(tiny, "aaaaa"), "259 259 97") == 0,
           "a merge takes every occurrence left to right: aaa -> aa a, aaaaa -> aa aa a");
    /* "o Ġ" would join hello's o with the next piece's space. */
    tap_ok(strcmp(ids_of(tiny, "hello hello"), "260 256 32 260 256") == 0,
           "no merge crosses pieces: hello hello -> hel lo Ġ hel lo (%s)",
           ids_of(tiny, "hello hello"));
    tap_ok(strcmp(ids_of(tiny, "\xc3\xa9\n"), "195 169 10") == 0,
           "a byte with no merge is its own id (é -> 195 169)");
    const char not_utf8[] = "caf\xe9 \xff\xfe\x00 hello";
    tap_ok(round_trips(tiny, "hello world, hello aaaa!\n", 25) &&
               round_trips(tiny, utf8_text, sizeof utf8_text - 1) &&
               round_trips(tiny, not_utf8, sizeof not_utf8 - 1),
           "GPT-2: decode(encode(s)) == s for ASCII, UTF-8 (accents, Greek, Cyrillic, CJK, "
           "emoji) and bytes that are not UTF-8");
    int32_t unknown = 263;
    unsigned char *back = NULL;
    size_t back_length;
    fr_error err = {0};
    tap_ok(fr_tokenizer_decode(tiny, &unknown, 1, &back, &back_length, &err) != FR_OK && !back &&
               strstr(err.msg, "id 263"),
           "GPT-2: decoding an id outside the vocabulary fails (%s)", err.msg);
    fr_tokenizer_free(tiny);
}

/* Loading fails, with one line naming `named` (a path in the test dir) and
 * holding `words`. */
static void expect_load_error(const char *encoder, const char *merges, const char *named,
                              const char *words, const char *what) {
    write_text(in_test_dir("bad_encoder.json"), encoder);
    write_text(in_test_dir("bad_vocab.bpe"), merges);
    fr_error err = {0};
    fr_tokenizer *tokenizer = NULL;
    int status = fr_tokenizer_load_gpt2(in_test_dir("bad_encoder.json"),
                                        in_test_dir("bad_vocab.bpe"), &tokenizer, &err);
    const char *path = in_test_dir(named);
    bool names_it = strncmp(err.msg, path, strlen(path)) == 0;
    tap_ok(status != FR_OK && !tokenizer && names_it && strstr(err.msg, words) &&
               !strchr(err.msg, '\n'),
           "%s: one line naming %s (%s)", what, named, err.msg);
    fr_tokenizer_free(tokenizer);
}

static void test_errors(void) {
    char *good = tiny_encoder(NULL, -1);
    char *negative = tiny_encoder(", \"xy\": -3", -1);
    char *string_id = tiny_encoder(", \"xy\": \"7\"", -1);
    char *not_bytes = tiny_encoder(", \"\xe4\xb8\xad\": 300", -1); /* 中 names no byte */
    char *same_id = tiny_encoder(", \"xy\": 256", -1);
    char *no_byte = tiny_encoder(NULL, 'q');
    char *trailing = tiny_encoder(NULL, -1);
    trailing[strlen(trailing) - 1] = ',';
    fr_text no_end = {0};
    fr_text_printf(&no_end, "%s", good);
    char *end_of_text = strstr(no_end.data, ", \"<|endoftext|>\": 262");
    memmove(end_of_text, end_of_text + 22, strlen(end_of_text + 22) + 1);

    expect_load_error("{\"a\": 1, ", tiny_merges, "bad_encoder.json", "invalid JSON",
                      "encoder.json cut short");
    expect_load_error("[1, 2]", tiny_merges, "bad_encoder.json", "expected an object",
                      "encoder.json that is not an object");
    expect_load_error(trailing, tiny_merges, "bad_encoder.json", "unexpected text",
                      "encoder.json with text after the object");
    expect_load_error(negative, tiny_merges, "bad_encoder.json", "id -3",
                      "encoder.json with a negative id");
    expect_load_error(string_id, tiny_merges, "bad_encoder.json", "expected an integer",
                      "encoder.json with an id that is a string");
    expect_load_error(not_bytes, tiny_merges, "bad_encoder.json", "256 byte characters",
                      "encoder.json with a token outside GPT-2's byte characters");
    expect_load_error(same_id, tiny_merges, "bad_encoder.json", "id 256 is given to two tokens",
                      "encoder.json giving one id to two tokens");
    expect_load_error(no_byte, tiny_merges, "bad_encoder.json", "no token for the byte 0x71",
                      "encoder.json without a token for each byte");
    expect_load_error(no_end.data, tiny_merges, "bad_encoder.json", "<|endoftext|>",
                      "encoder.json without <|endoftext|>");
    expect_load_error(good, "#version: 0.2\nl o\nh e x\n", "bad_vocab.bpe",
                      "line 3: expected a merge, two tokens separated by a space; found 3",
                      "a merges line of three tokens");
    expect_load_error(good, "#version: 0.2\nl o\nhe\n", "bad_vocab.bpe", "line 3",
                      "a merges line of one token");
    expect_load_error(good, "#version: 0.2\nl o\n\nh e\n", "bad_vocab.bpe", "found 0 tokens",
                      "an empty line among the merges");
    expect_load_error(good, "#version: 0.2\nl o\nxy z\n", "bad_vocab.bpe",
                      "line 3: token \"xy\" is not in",
                      "a token of vocab.bpe missing from encoder.json");
    expect_load_error(good, "#version: 0.2\nl o\nh l\n", "bad_vocab.bpe",
                      "line 3: the merged token \"hl\" is not in",
                      "a merge whose result is missing from encoder.json");

    fr_error err = {0};
    fr_tokenizer *tokenizer = NULL;
    int status = fr_tokenizer_load_gpt2(in_test_dir("missing.json"), in_test_dir("vocab.bpe"),
                                        &tokenizer, &err);
    tap_ok(status != FR_OK && strstr(err.msg, "missing.json: no such file"),
           "a missing encoder.json is named (%s)", err.msg);
    /* A vocab.bpe without its version line or final newline still loads. */
    write_text(in_test_dir("bad_encoder.json"), good);
    write_text(in_test_dir("bad_vocab.bpe"), "l o\nh e");
    status = fr_tokenizer_load_gpt2(in_test_dir("bad_encoder.json"), in_test_dir("bad_vocab.bpe"),
                                    &tokenizer, &err);
    tap_ok(status == FR_OK && strcmp(ids_of(tokenizer, "hello"), "257 108 256") == 0,
           "vocab.bpe without '#version' or a final newline: every line is a merge");
    fr_tokenizer_free(tokenizer);
    free(good);
    free(negative);
    free(string_id);
    free(not_bytes);
    free(same_id);
    free(no_byte);
    free(trailing);
    free(no_end.data);
}

/* fr_npy_write's files as numpy.save writes them, and fr_npy_parse's reading. */
static void test_npy_writer(void) {
    int32_t ids[6] = {1, 2, 3, 50256, 0, 65535};
    uint16_t small[5] = {0, 1, 255, 256, 65535};
    int64_t labels[3] = {0, 1, 7};
    const char *path = in_test_dir("written.npy");
    fr_error err = {0};
    struct {
        const char *descr;
        int ndim;
        uint64_t shape[2];
        const void *data;
        size_t bytes;
        const char *dict;
    } cases[] = {
        {"<i4", 2, {2, 3}, ids, sizeof ids,
         "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }"},
        {"<u2", 1, {5}, small, sizeof small,
         "{'descr': '<u2', 'fortran_order': False, 'shape': (5,), }"},
        {"<i8", 1, {3}, labels, sizeof labels,
         "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }"},
        {"<i4", 2, {0, 129}, ids, 0,
         "{'descr': '<i4', 'fortran_order': False, 'shape': (0, 129), }"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int status = fr_npy_write(path, cases[i].descr, cases[i].ndim, cases[i].shape,
                                  cases[i].data, &err);
        unsigned char *bytes = NULL;
        size_t size = 0;
        fr_npy array;
        if (status == FR_OK)
            status = fr_read_file(path, 1 << 20, 0, &bytes, &size, &err);
        if (status == FR_OK)
            status = fr_npy_parse(path, bytes, size, &array, &err);
        size_t header = size - cases[i].bytes, dict_length = strlen(cases[i].dict);
        bool same_header = status == FR_OK && header % 64 == 0 && bytes[6] == 1 &&
                           bytes[7] == 0 && bytes[header - 1] == '\n' &&
                           (size_t)(bytes[8] | bytes[9] << 8) == header - 10 &&
                           memcmp(bytes + 10, cases[i].dict, dict_length) == 0;
        for (size_t k = 10 + dict_length; same_header && k < header - 1; k++)
            same_header = bytes[k] == ' ';
        bool same_array = status == FR_OK && strcmp(array.descr, cases[i].descr) == 0 &&
                          array.ndim == cases[i].ndim && array.shape[0] == cases[i].shape[0] &&
                          (cases[i].ndim == 1 || array.shape[1] == cases[i].shape[1]) &&
                          (cases[i].bytes == 0 ||
                           memcmp(array.data, cases[i].data, cases[i].bytes) == 0);
        tap_ok(same_header && same_array,
               "fr_npy_write %s %s: numpy.save's header (%s, padded to 64 bytes, '\\n'), "
               "and fr_npy_parse reads the array back",
               cases[i].descr, cases[i].dict + 41, status == FR_OK ? "ok" : err.msg);
        fr_free(bytes);
    }
    remove(path);
}

/* Parses DIR/NAME with fr_npy_parse; *bytes is the file (release with fr_free). */
static bool parse_output(const char *name, fr_npy *array, unsigned char **bytes) {
    size_t size;
    fr_error err = {0};
    *bytes = NULL;
    int status = fr_read_file(in_test_dir(name), 1 << 20, 0, bytes, &size, &err);
    if (status == FR_OK)
        status = fr_npy_parse(in_test_dir(name), *bytes, size, array, &err);
    if (status != FR_OK)
        tap_diag("%s", err.msg);
    return status == FR_OK;
}

/* What `frost tokenize` writes, read by frost's own .npy parser. */
static void test_cli_output(void) {
    const char *frost = getenv("FROST");
    if (!frost) {
        tap_skip("$FROST is not set: the frost command's files are not read back");
        tap_skip("$FROST is not set");
        return;
    }
    write_text(in_test_dir("text.txt"), "abcdefghij");
    write_text(in_test_dir("one.txt"), "first\n%\nsecond\n%\n");
    write_text(in_test_dir("two.txt"), "third\n\nfourth, longer than eight\n");
    char command[2048];
    snprintf(command, sizeof command,
             "'%s' tokenize --out '%s' --seq-len 3 '%s' > /dev/null", frost, test_dir,
             in_test_dir("text.txt"));
    fr_npy array;
    unsigned char *bytes = NULL;
    bool good = system(command) == 0 && parse_output("train_x.npy", &array, &bytes) &&
                strcmp(array.descr, "<i4") == 0 && array.ndim == 2 && array.shape[0] == 2 &&
                array.shape[1] == 4;
    for (int i = 0; good && i < 8; i++) {
        int32_t id;
        memcpy(&id, array.data + 4 * i, 4);
        good = id == "abcdefgh"[i];
    }
    tap_ok(good, "frost tokenize --seq-len 3 on 10 bytes: train_x.npy is int32 (2, 4) holding "
                 "bytes 0-7, read by fr_npy_parse");
    fr_free(bytes);

    snprintf(command, sizeof command,
             "'%s' tokenize --out '%s' --seq-len 8 --label-per-file --dtype uint16 '%s' '%s' "
             "> /dev/null",
             frost, test_dir, in_test_dir("one.txt"), in_test_dir("two.txt"));
    unsigned char *label_bytes = NULL;
    fr_npy labels;
    good = system(command) == 0 && parse_output("train_x.npy", &array, &bytes) &&
           parse_output("train_y.npy", &labels, &label_bytes) &&
           strcmp(array.descr, "<u2") == 0 && array.ndim == 2 && array.shape[0] == 4 &&
           array.shape[1] == 8 && strcmp(labels.descr, "<i8") == 0 && labels.ndim == 1 &&
           labels.shape[0] == 4;
    int64_t label_sum = 0;
    for (int i = 0; good && i < 4; i++) {
        int64_t label;
        memcpy(&label, labels.data + 8 * i, 8);
        label_sum += label;
        good = label == 0 || label == 1;
    }
    tap_ok(good && label_sum == 2,
           "frost tokenize --label-per-file --dtype uint16: train_x.npy uint16 (4, 8) and "
           "train_y.npy int64 (4,), two records of each class, read by fr_npy_parse");
    fr_free(bytes);
    fr_free(label_bytes);
    remove(in_test_dir("train_x.npy"));
    remove(in_test_dir("train_y.npy"));
    remove(in_test_dir("classes.txt"));
}

int main(void) {
    tap_plan(49); /* every check below, counted: fewer or more fails the test */
    if (!make_test_dir("tokenizer"))
        return 2;
    size_t baseline = fr_allocated_bytes();
    test_bytes();
    test_pieces();
    test_bpe();
    test_errors();
    test_npy_writer();
    test_cli_output();
    tap_ok(fr_allocated_bytes() == baseline,
           "every file buffer and JSON string was given back, failures included (%zu bytes held)",
           fr_allocated_bytes() - baseline);
    remove_test_dir();
    return tap_done();
}
