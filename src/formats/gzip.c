/*
 * gzip.c - fr_read_file_gunzip: a whole file (fileio.c's reader), gunzipped
 * when it starts with the gzip magic (every member of a multi-member file, as
 * gzip -d does), within a limit on the decompressed size, so a small hostile
 * file cannot make frost allocate without bound.  Every data format frost
 * reads from disk (IDX, .npy) goes through it.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ------------------------------------------------------------ gzip */

static bool starts_with_gzip_magic(const unsigned char *bytes, size_t size) {
    return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

/*
 * The gzip trailer ends with the uncompressed size mod 2^32: a good first
 * guess for the output buffer.  It is only a hint (it can lie, and covers only
 * the last member), so it is capped by deflate's best possible ratio (~1032:1)
 * and by the limit.
 */
static size_t gzip_size_hint(const unsigned char *compressed, size_t compressed_bytes,
                             size_t limit) {
    size_t hint = 0;
    if (compressed_bytes >= 18) {
        const unsigned char *trailer = compressed + compressed_bytes - 4;
        hint = (size_t)trailer[0] | (size_t)trailer[1] << 8 | (size_t)trailer[2] << 16 |
               (size_t)trailer[3] << 24;
    }
    size_t ratio_cap;
    if (!fr_mul_size(compressed_bytes, 1032, &ratio_cap))
        ratio_cap = SIZE_MAX;
    if (hint > ratio_cap)
        hint = ratio_cap;
    if (hint > limit)
        hint = limit;
    return hint < 4096 ? 4096 : hint;
}

/* Replace *buffer by one of new_capacity bytes holding its first `used` bytes. */
static bool grow_buffer(unsigned char **buffer, size_t used, size_t new_capacity) {
    unsigned char *bigger = fr_alloc(new_capacity);
    if (!bigger)
        return false;
    memcpy(bigger, *buffer, used);
    fr_free(*buffer);
    *buffer = bigger;
    return true;
}

/*
 * Inflate a whole gzip file held in memory.  The output buffer may hold one
 * byte more than `limit`: producing that byte is how an oversized stream is
 * recognised without a second pass.  Concatenated gzip members (what `cat a.gz
 * b.gz` makes) are decoded one after the other, as gzip(1) does.
 */
static int gunzip_buffer(const char *path, const unsigned char *compressed,
                         size_t compressed_bytes, size_t limit, unsigned char **out,
                         size_t *size, fr_error *err) {
    if (limit > SIZE_MAX / 2)
        limit = SIZE_MAX / 2;
    size_t capacity = gzip_size_hint(compressed, compressed_bytes, limit);
    if (capacity > limit)
        capacity = limit;
    capacity += 1;
    unsigned char *output = fr_alloc(capacity);
    if (!output)
        return fr_fail(err, FR_ENOMEM, "%s: cannot allocate %zu bytes to decompress it", path,
                       capacity);

    z_stream stream;
    memset(&stream, 0, sizeof stream);
    /* 15 + 32: the largest window, and accept (only) gzip or zlib headers. */
    if (inflateInit2(&stream, 15 + 32) != Z_OK) {
        fr_free(output);
        return fr_fail(err, FR_ENOMEM, "%s: cannot start zlib", path);
    }

    size_t consumed = 0, produced = 0;
    int status = FR_OK;
    for (;;) {
        /* zlib counts in uInt, so huge buffers are handed over in pieces. */
        if (stream.avail_in == 0 && consumed < compressed_bytes) {
            size_t piece = compressed_bytes - consumed;
            stream.next_in = (unsigned char *)compressed + consumed;
            stream.avail_in = piece > UINT_MAX ? UINT_MAX : (uInt)piece;
        }
        if (produced == capacity) {
            size_t new_capacity = capacity > (limit + 1) / 2 ? limit + 1 : capacity * 2;
            if (!grow_buffer(&output, produced, new_capacity)) {
                status = fr_fail(err, FR_ENOMEM,
                                 "%s: cannot allocate %zu bytes to decompress it", path,
                                 new_capacity);
                break;
            }
            capacity = new_capacity;
        }
        size_t room = capacity - produced;
        stream.next_out = output + produced;
        stream.avail_out = room > UINT_MAX ? UINT_MAX : (uInt)room;
        uInt offered_in = stream.avail_in, offered_out = stream.avail_out;

        int ret = inflate(&stream, Z_NO_FLUSH);
        consumed += offered_in - stream.avail_in;
        produced += offered_out - stream.avail_out;

        if (produced > limit) {
            status = fr_fail(err, FR_EFORMAT,
                             "%s: decompresses to more than the limit of %zu bytes", path,
                             limit);
            break;
        }
        bool input_exhausted = stream.avail_in == 0 && consumed == compressed_bytes;
        if (ret == Z_STREAM_END) {
            if (consumed == compressed_bytes)
                break;
            size_t left = compressed_bytes - consumed;
            if (starts_with_gzip_magic(compressed + consumed, left)) {
                inflateReset(&stream);
                continue;
            }
            status = fr_fail(err, FR_EFORMAT,
                             "%s: corrupt gzip data: %zu stray bytes after the compressed stream",
                             path, left);
            break;
        }
        if (ret == Z_OK) {
            /* inflate stopped with room left and nothing more to read: it needed more input. */
            if (input_exhausted && stream.avail_out > 0) {
                status = fr_fail(err, FR_EFORMAT, "%s: truncated gzip data", path);
                break;
            }
            continue;
        }
        if (ret == Z_BUF_ERROR && input_exhausted) {
            status = fr_fail(err, FR_EFORMAT, "%s: truncated gzip data", path);
        } else if (ret == Z_MEM_ERROR) {
            status = fr_fail(err, FR_ENOMEM, "%s: out of memory while decompressing", path);
        } else if (ret == Z_NEED_DICT) {
            status = fr_fail(err, FR_EFORMAT,
                             "%s: corrupt gzip data: stream needs a preset dictionary", path);
        } else {
            status = fr_fail(err, FR_EFORMAT, "%s: corrupt gzip data: %s", path,
                             stream.msg ? stream.msg : zError(ret));
        }
        break;
    }
    inflateEnd(&stream);
    if (status != FR_OK) {
        fr_free(output);
        return status;
    }
    *out = output;
    *size = produced;
    return FR_OK;
}

int fr_read_file_gunzip(const char *path, size_t limit, unsigned char **out, size_t *size,
                        fr_error *err) {
    unsigned char *bytes = NULL;
    size_t byte_count = 0;
    if (limit > SIZE_MAX / 2)
        limit = SIZE_MAX / 2;
    /* The limit bounds the content; gzip's framing may add a little on top of it. */
    size_t gzip_slack = limit / 64 + 65536;
    int status = fr_read_file(path, limit + gzip_slack, 0, &bytes, &byte_count, err);
    if (status != FR_OK)
        return status;
    if (!starts_with_gzip_magic(bytes, byte_count)) {
        if (byte_count > limit) {
            fr_free(bytes);
            return fr_fail(err, FR_EFORMAT, "%s: file is %zu bytes, more than the limit of %zu",
                           path, byte_count, limit);
        }
        *out = bytes;
        *size = byte_count;
        return FR_OK;
    }
    status = gunzip_buffer(path, bytes, byte_count, limit, out, size, err);
    fr_free(bytes);
    return status;
}
