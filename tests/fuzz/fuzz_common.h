/*
 * fuzz_common.h - what the libFuzzer targets share (tests/fuzz/fuzz_*.c).
 *
 * The targets call libfrost the way the frost command does and check the
 * contracts a caller relies on besides "no crash, no leak, no undefined
 * behaviour" (which AddressSanitizer, LeakSanitizer and UBSan check): a
 * failure returns a negative fr_status and fills `err` with the same status
 * and one non-empty line.  A broken contract aborts, which libFuzzer reports
 * as a finding.
 */
#ifndef FROST_FUZZ_COMMON_H
#define FROST_FUZZ_COMMON_H

#define _POSIX_C_SOURCE 200809L

#include "internal.h" /* frost.h and the internal readers (fr_st_read) */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

__attribute__((noreturn)) static inline void fuzz_die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz contract broken: %s: %s\n", what, detail ? detail : "");
    abort();
}

/* A status from the library: FR_OK, or a known error with a one-line message. */
static inline void fuzz_check_status(int status, const fr_error *err, const char *call) {
    if (status == FR_OK)
        return;
    if (status > 0 || status < FR_EINTERRUPTED)
        fuzz_die(call, "returned a status that is not an fr_status");
    if (err->status != status)
        fuzz_die(call, "err->status differs from the returned status");
    size_t len = strnlen(err->msg, sizeof err->msg);
    if (len == 0)
        fuzz_die(call, "failed with an empty message");
    if (len == sizeof err->msg)
        fuzz_die(call, "message is not NUL-terminated");
    if (strchr(err->msg, '\n') || strchr(err->msg, '\r'))
        fuzz_die(call, err->msg);
}

/*
 * A private directory for the files the readers take by path, made once per
 * process (libFuzzer may run several jobs side by side) and removed at exit:
 * under $TMPDIR if set, else in memory under /dev/shm if there is one, else
 * under /tmp.  Each target removes the files it wrote there.
 */
static char fuzz_dir[64] __attribute__((unused));

static inline void fuzz_remove_dir(void) {
    if (fuzz_dir[0])
        rmdir(fuzz_dir);
}

static inline const char *fuzz_temp_dir(void) {
    if (!fuzz_dir[0]) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base || strlen(base) > 32) {
            struct stat info;
            base = stat("/dev/shm", &info) == 0 && S_ISDIR(info.st_mode) &&
                           access("/dev/shm", W_OK) == 0
                       ? "/dev/shm"
                       : "/tmp";
        }
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/frost-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_remove_dir);
    }
    return fuzz_dir;
}

/* Replace the file at `path` by exactly these bytes. */
static inline void fuzz_write_file(const char *path, const void *data, size_t size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    const unsigned char *bytes = data;
    while (size) {
        ssize_t written = write(fd, bytes, size);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            perror(path);
            abort();
        }
        bytes += written;
        size -= (size_t)written;
    }
    close(fd);
}

/*
 * A dataset of two files in the private directory (the IDX and NumPy
 * targets): fuzz_name_pair names them once and removes them at exit;
 * fuzz_write_pair splits an input as a 2-byte little-endian label length,
 * the labels file's bytes, then the images file's, and writes both.  It
 * returns false for an input too short to split.
 */
static char fuzz_images_path[128] __attribute__((unused));
static char fuzz_labels_path[128] __attribute__((unused));

static inline void fuzz_remove_pair(void) {
    remove(fuzz_images_path);
    remove(fuzz_labels_path);
}

static inline void fuzz_name_pair(const char *images, const char *labels) {
    const char *dir = fuzz_temp_dir();
    snprintf(fuzz_images_path, sizeof fuzz_images_path, "%s/%s", dir, images);
    snprintf(fuzz_labels_path, sizeof fuzz_labels_path, "%s/%s", dir, labels);
    atexit(fuzz_remove_pair); /* runs before fuzz_temp_dir's rmdir */
}

static inline bool fuzz_write_pair(const uint8_t *data, size_t size, const uint8_t **labels,
                                   size_t *label_bytes, const uint8_t **images,
                                   size_t *image_bytes) {
    if (size < 2)
        return false;
    size_t count = (size_t)data[0] | (size_t)data[1] << 8;
    data += 2;
    size -= 2;
    if (count > size)
        count = size;
    *labels = data;
    *label_bytes = count;
    *images = data + count;
    *image_bytes = size - count;
    fuzz_write_file(fuzz_labels_path, *labels, *label_bytes);
    fuzz_write_file(fuzz_images_path, *images, *image_bytes);
    return true;
}

#endif /* FROST_FUZZ_COMMON_H */
