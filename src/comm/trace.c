/*
 * trace.c - a timeline of the training step, as Chrome trace events.
 *
 * With tracing on, each worker thread records when each layer's forward and
 * backward ran, and the communication thread records each bucket's allreduce,
 * so a user can see in Perfetto (or chrome://tracing) whether the allreduce
 * really overlaps backward.  Every thread writes only its own slot, and the
 * slots are allocated when tracing starts, so recording takes no lock and no
 * allocation; a slot that fills up stops recording and the file says so.
 * Writing is collective: every rank formats its events and rank 0 gathers
 * them into one JSON file (pid = rank, tid = thread), written atomically.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct trace_event {
    const char *name; /* a layer's name, or a fixed word */
    const char *what; /* "forward", "allreduce", ... */
    int index;        /* bucket number, or -1 */
    long step;
    double begin_us, duration_us;
    size_t bytes;
} trace_event;

typedef struct trace_slot {
    trace_event *events;
    size_t count;
    bool full;
} trace_slot;

static struct {
    bool on;
    int slots;
    size_t per_slot;
    trace_slot *slot;
    double origin_s;
    long step; /* the step being recorded (set by the trainer) */
} trace;

double fr_trace_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

bool fr_trace_on(void) { return trace.on; }

int fr_trace_comm_slot(void) { return trace.slots - 1; }

void fr_trace_set_step(long step) { trace.step = step; }

static void free_slots(void) {
    for (int i = 0; trace.slot && i < trace.slots; i++)
        free(trace.slot[i].events);
    free(trace.slot);
    trace.slot = NULL;
    trace.slots = 0;
}

int fr_trace_start(int threads, size_t events_per_thread, fr_error *err) {
    fr_trace_stop();
    if (threads < 1 || events_per_thread < 1)
        return fr_fail(err, FR_EINVAL, "trace: %d threads, %zu events each", threads,
                       events_per_thread);
    trace.slots = threads + 1; /* the last one is the communication thread's */
    trace.slot = calloc((size_t)trace.slots, sizeof *trace.slot);
    bool ok = trace.slot != NULL;
    for (int i = 0; ok && i < trace.slots; i++)
        ok = (trace.slot[i].events = malloc(events_per_thread * sizeof(trace_event))) != NULL;
    if (!ok) {
        free_slots();
        return fr_fail(err, FR_ENOMEM, "out of memory for a trace of %zu events per thread",
                       events_per_thread);
    }
    trace.per_slot = events_per_thread;
    /* The ranks leave the barrier within a latency of each other: their
     * clocks start together closely enough to line up on one timeline. */
    int rc = fr_comm_barrier(err);
    if (rc != FR_OK) {
        free_slots();
        return rc;
    }
    trace.origin_s = fr_trace_now();
    trace.step = 0;
    trace.on = true;
    return FR_OK;
}

void fr_trace_stop(void) {
    trace.on = false;
    free_slots();
}

void fr_trace_add(int slot, const char *name, const char *what, int index, double begin_s,
                  size_t bytes) {
    fr_trace_add_at(trace.step, slot, name, what, index, begin_s, bytes);
}

long fr_trace_step(void) { return trace.step; }

void fr_trace_add_at(long step, int slot, const char *name, const char *what, int index,
                     double begin_s, size_t bytes) {
    if (!trace.on || slot < 0 || slot >= trace.slots)
        return;
    double end_s = fr_trace_now();
    trace_slot *s = &trace.slot[slot];
    if (s->count == trace.per_slot) {
        s->full = true;
        return;
    }
    s->events[s->count++] = (trace_event){
        .name = name,
        .what = what,
        .index = index,
        .step = step,
        .begin_us = (begin_s - trace.origin_s) * 1e6,
        .duration_us = (end_s - begin_s) * 1e6,
        .bytes = bytes,
    };
}

/* Names are layer names (letters, digits, '.', '_', '-'); anything else is
 * shown as '?' so the JSON stays valid whatever a model file holds. */
static void append_name(fr_text *t, const char *name) {
    char shown[FR_NAME_MAX * 2];
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof shown; i++) {
        unsigned char c = (unsigned char)name[i];
        shown[i] = c < 0x20 || c >= 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    shown[i] = '\0';
    fr_text_printf(t, "%s", shown);
}

/* This rank's events (and its thread names) as JSON objects, each followed
 * by ",\n". */
static void format_rank(fr_text *t, int rank) {
    fr_text_printf(t, "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":%d,\"args\":{\"name\":\"rank %d\"}},\n",
           rank, rank);
    for (int s = 0; s < trace.slots; s++) {
        if (s == trace.slots - 1)
            fr_text_printf(t, "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%d,\"tid\":%d,"
                      "\"args\":{\"name\":\"communication\"}},\n", rank, s);
        else
            fr_text_printf(t, "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%d,\"tid\":%d,"
                      "\"args\":{\"name\":\"thread %d\"}},\n", rank, s, s);
        const trace_slot *slot = &trace.slot[s];
        for (size_t i = 0; i < slot->count; i++) {
            const trace_event *e = &slot->events[i];
            fr_text_printf(t, "{\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"cat\":\"%s\",\"name\":\"", rank, s,
                   e->what);
            append_name(t, e->name);
            if (e->index >= 0)
                fr_text_printf(t, " %d", e->index);
            fr_text_printf(t, " %s\",\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"step\":%ld", e->what,
                   e->begin_us, e->duration_us, e->step + 1);
            if (e->bytes)
                fr_text_printf(t, ",\"bytes\":%zu", e->bytes);
            fr_text_printf(t, "}},\n");
        }
        if (slot->full)
            fr_text_printf(t, "{\"ph\":\"i\",\"s\":\"t\",\"pid\":%d,\"tid\":%d,\"name\":\"trace full: "
                      "later events of this thread were not recorded\",\"ts\":%.3f},\n",
                   rank, s, slot->count ? slot->events[slot->count - 1].begin_us : 0.0);
    }
}

int fr_trace_write(const char *path, fr_error *err) {
    if (!trace.slot)
        return fr_fail(err, FR_EINVAL, "%s: tracing was not started", path);
    fr_text mine = {0};
    format_rank(&mine, fr_comm_rank());
    int rc = mine.failed ? fr_fail(err, FR_ENOMEM, "out of memory formatting the trace") : FR_OK;
    rc = fr_comm_agree(rc, err);
    char *all = NULL;
    size_t all_length = 0;
    if (rc == FR_OK)
        rc = fr_comm_gather_bytes(mine.data, mine.length, &all, &all_length, err);
    free(mine.data);
    if (rc == FR_OK && fr_comm_rank() == 0) {
        fr_text file = {0};
        fr_text_printf(&file, "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n");
        if (!file.failed && all_length) {
            fr_text_printf(&file, "%.*s", (int)(all_length - 2), all); /* without the last ",\n" */
        }
        fr_text_printf(&file, "\n]}\n");
        rc = file.failed ? fr_fail(err, FR_ENOMEM, "out of memory writing the trace")
                         : fr_write_file_atomic(path, file.data, file.length, err);
        free(file.data);
    }
    free(all);
    return fr_comm_agree(rc, err);
}
