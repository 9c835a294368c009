/*
 * fileio.c - the library's one whole-file reader and one atomic file writer.
 *
 * Every file frost reads whole (safetensors weights and checkpoints, IDX
 * data) comes through fr_read_file: a regular file, checked against a size
 * limit before anything is allocated, read into one aligned buffer.  The
 * callers parse that buffer; none of them opens a file itself.
 *
 * Every file frost writes (weights, checkpoints, traces, and through the
 * public fr_atomic_* the frost command's metrics) is written to PATH.tmp.PID
 * beside PATH, synced and renamed over PATH, then the directory is synced: a
 * crash or a full disk leaves either the old file or the new one, never a
 * partial one.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ read */

int fr_read_file(const char *path, size_t limit, size_t spare, unsigned char **out,
                 size_t *size, fr_error *err) {
    *out = NULL;
    *size = 0;
    FILE *file = fopen(path, "rb");
    if (!file) {
        if (errno == ENOENT)
            return fr_fail(err, FR_EIO, "%s: no such file", path);
        return fr_fail(err, FR_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat info;
    int status = FR_OK;
    if (fstat(fileno(file), &info) != 0)
        status = fr_fail(err, FR_EIO, "%s: cannot stat: %s", path, strerror(errno));
    else if (S_ISDIR(info.st_mode))
        status = fr_fail(err, FR_EIO, "%s: is a directory, not a file", path);
    else if (!S_ISREG(info.st_mode))
        status = fr_fail(err, FR_EIO, "%s: not a regular file", path);
    else if ((uintmax_t)info.st_size > limit)
        status = fr_fail(err, FR_EFORMAT, "%s: file is %jd bytes, more than the limit of %zu",
                         path, (intmax_t)info.st_size, limit);
    else if ((uintmax_t)info.st_size > SIZE_MAX - spare)
        status = fr_fail(err, FR_ENOMEM, "%s: file too large to read", path);
    if (status != FR_OK) {
        fclose(file);
        return status;
    }

    size_t file_bytes = (size_t)info.st_size;
    unsigned char *bytes = fr_alloc(file_bytes + spare);
    if (!bytes) {
        fclose(file);
        return fr_fail(err, FR_ENOMEM, "%s: cannot allocate %zu bytes to read it", path,
                       file_bytes);
    }
    /* A file that shrank since fstat just yields fewer bytes; the parsers check sizes. */
    size_t got = fread(bytes, 1, file_bytes, file);
    if (got < file_bytes && ferror(file)) {
        status = fr_fail(err, FR_EIO, "%s: read error: %s", path, strerror(errno));
        fclose(file);
        fr_free(bytes);
        return status;
    }
    fclose(file);
    *out = bytes;
    *size = got;
    return FR_OK;
}

/* ----------------------------------------------------------------- write */

/* A rename is durable only once its directory is on disk.  Failing here loses
 * durability, not data, so it is not reported. */
static void sync_parent_directory(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t length = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *directory = malloc(length + 1);
    if (!directory)
        return;
    if (!slash)
        memcpy(directory, ".", 2);
    else if (slash == path)
        memcpy(directory, "/", 2);
    else {
        memcpy(directory, path, length);
        directory[length] = '\0';
    }
    int fd = open(directory, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(directory);
}

struct fr_atomic_file {
    char *path, *temp_path;
    FILE *stream;
};

static void free_atomic_file(fr_atomic_file *file) {
    free(file->path);
    free(file->temp_path);
    free(file);
}

int fr_atomic_open(const char *path, fr_atomic_file **out, fr_error *err) {
    *out = NULL;
    size_t temp_size = strlen(path) + 32;
    fr_atomic_file *file = calloc(1, sizeof *file);
    if (!file || !(file->path = strdup(path)) || !(file->temp_path = malloc(temp_size))) {
        if (file)
            free_atomic_file(file);
        return fr_fail(err, FR_ENOMEM, "%s: out of memory", path);
    }
    snprintf(file->temp_path, temp_size, "%s.tmp.%ld", path, (long)getpid());
    file->stream = fopen(file->temp_path, "wb");
    if (!file->stream) {
        int status = fr_fail(err, FR_EIO, "%s: cannot create the temporary file %s: %s", path,
                             file->temp_path, strerror(errno));
        free_atomic_file(file);
        return status;
    }
    *out = file;
    return FR_OK;
}

void fr_atomic_printf(fr_atomic_file *file, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vfprintf(file->stream, fmt, args); /* an error sticks to the stream: commit sees it */
    va_end(args);
}

/* Sync, close and rename over the path, or remove the temporary file when
 * `written` is false (errno then `write_errno`, 0 for unknown); releases the file. */
static int finish(fr_atomic_file *file, bool written, int write_errno, fr_error *err) {
    int status = FR_OK;
    if (written) {
        errno = 0;
        written = !ferror(file->stream) && fflush(file->stream) == 0 &&
                  fsync(fileno(file->stream)) == 0;
        write_errno = errno;
    }
    if (fclose(file->stream) != 0 && written) {
        written = false;
        write_errno = errno;
    }
    if (!written) {
        status = fr_fail(err, FR_EIO, "%s: cannot write: %s", file->path,
                         strerror(write_errno ? write_errno : EIO));
        remove(file->temp_path);
    } else if (rename(file->temp_path, file->path) != 0) {
        status = fr_fail(err, FR_EIO, "%s: cannot replace it with %s: %s", file->path,
                         file->temp_path, strerror(errno));
        remove(file->temp_path);
    } else {
        sync_parent_directory(file->path);
    }
    free_atomic_file(file);
    return status;
}

int fr_atomic_commit(fr_atomic_file *file, fr_error *err) {
    return file ? finish(file, true, 0, err) : FR_OK;
}

void fr_atomic_discard(fr_atomic_file *file) {
    if (!file)
        return;
    fclose(file->stream);
    remove(file->temp_path);
    free_atomic_file(file);
}

int fr_write_atomic(const char *path, bool (*write_contents)(FILE *stream, void *context),
                    void *context, fr_error *err) {
    fr_atomic_file *file;
    int status = fr_atomic_open(path, &file, err);
    if (status != FR_OK)
        return status;
    errno = 0;
    bool written = write_contents(file->stream, context);
    return finish(file, written, errno, err);
}

typedef struct bytes_to_write {
    const void *data;
    size_t length;
} bytes_to_write;

static bool write_bytes(FILE *stream, void *context) {
    const bytes_to_write *b = context;
    return b->length == 0 || fwrite(b->data, 1, b->length, stream) == b->length;
}

int fr_write_file_atomic(const char *path, const void *data, size_t length, fr_error *err) {
    bytes_to_write b = {data, length};
    return fr_write_atomic(path, write_bytes, &b, err);
}
