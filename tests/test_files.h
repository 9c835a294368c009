/*
 * test_files.h - what the C tests that write files share: a private
 * directory under /tmp for them (made with make_test_dir, removed with
 * remove_test_dir), paths in it, and a copy of a model's weights.
 * Included after frost.h and tap.h.
 */
#ifndef FROST_TEST_FILES_H
#define FROST_TEST_FILES_H

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char test_dir[64];

/* Whether int32 labels equal byte labels, one by one. */
static bool labels_equal(const int32_t *got, const unsigned char *want, size_t n)
    __attribute__((unused));
static bool labels_equal(const int32_t *got, const unsigned char *want, size_t n) {
    for (size_t i = 0; got && i < n; i++)
        if (got[i] != want[i])
            return false;
    return got != NULL;
}

/* /tmp/frost-NAME-XXXXXX, or a TAP "Bail out!" and false. */
static bool make_test_dir(const char *name) __attribute__((unused));
static bool make_test_dir(const char *name) {
    snprintf(test_dir, sizeof test_dir, "/tmp/frost-%s-XXXXXX", name);
    if (mkdtemp(test_dir))
        return true;
    printf("Bail out! mkdtemp: %s\n", strerror(errno));
    return false;
}

/* TEST_DIR/name; the last 8 results stay valid. */
static const char *in_test_dir(const char *name) __attribute__((unused));
static const char *in_test_dir(const char *name) {
    static char paths[8][256];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, sizeof paths[0], "%s/%s", test_dir, name);
    return path;
}

/* The files in it, the one empty directory a test may make, and itself. */
static void remove_test_dir(void) __attribute__((unused));
static void remove_test_dir(void) {
    DIR *dir = opendir(test_dir);
    struct dirent *entry;
    char path[512];
    while (dir && (entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", test_dir, entry->d_name);
        remove(path);
    }
    if (dir)
        closedir(dir);
    rmdir(test_dir);
}

/* Every parameter of `model`, in order, into `out` (room for `capacity`
 * floats); the count, or 0 if they do not fit. */
static size_t copy_weights(fr_model *model, float *out, size_t capacity) __attribute__((unused));
static size_t copy_weights(fr_model *model, float *out, size_t capacity) {
    size_t used = 0;
    for (size_t i = 0; i < fr_model_param_count(model); i++) {
        fr_param *param = fr_model_param(model, i);
        size_t count = fr_param_numel(param);
        if (used + count > capacity)
            return 0;
        memcpy(out + used, fr_param_data(param), count * sizeof *out);
        used += count;
    }
    return used;
}

#endif
