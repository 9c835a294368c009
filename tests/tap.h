/*
 * tap.h - a minimal TAP producer for the C tests.  Each check is one line,
 * "ok N - what should hold" or "not ok N - ...", and the plan comes last.
 */
#ifndef FROST_TAP_H
#define FROST_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_count, tap_failed;

static int tap_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3), unused));
static int tap_ok(int cond, const char *fmt, ...) {
    va_list ap;
    printf("%sok %d - ", cond ? "" : "not ", ++tap_count);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!cond)
        tap_failed++;
    return cond;
}

static void tap_skip(const char *why, ...) __attribute__((unused));
static void tap_skip(const char *why, ...) {
    printf("ok %d # SKIP %s\n", ++tap_count, why);
}

static void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static void tap_diag(const char *fmt, ...) {
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

static int tap_done(void) __attribute__((unused));
static int tap_done(void) {
    printf("1..%d\n", tap_count);
    return tap_failed ? 1 : 0;
}

#endif
