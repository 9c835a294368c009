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

#endif /* FROST_FUZZ_COMMON_H */
