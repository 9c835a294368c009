/*
 * tap.h - a minimal TAP producer for the C tests.  Each check is one line,
 * "ok N - what should hold" or "not ok N - ...".  The plan comes first
 * (tap_plan): a test that stops early, or a loop that runs fewer times than
 * it should, then runs fewer checks than it declared, and fails, instead of
 * passing with whatever it happened to count.
 */
#ifndef FROST_TAP_H
#define FROST_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_count, tap_failed, tap_planned = -1;

/* Declares how many checks the test will run; call it before the first. */
static void tap_plan(int count) __attribute__((unused));
static void tap_plan(int count) {
    tap_planned = count;
    printf("1..%d\n", count);
    fflush(stdout);
}

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

/* The exit status: 0 only if the plan was declared, every check passed and
 * exactly the planned number ran. */
static int tap_done(void) __attribute__((unused));
static int tap_done(void) {
    if (tap_planned < 0) {
        printf("not ok %d - the test declares its plan with tap_plan() before its first check\n",
               ++tap_count);
        printf("1..%d\n", tap_count);
        return 1;
    }
    if (tap_count != tap_planned) {
        printf("# planned %d checks but ran %d\n", tap_planned, tap_count);
        return 1;
    }
    return tap_failed ? 1 : 0;
}

#endif
