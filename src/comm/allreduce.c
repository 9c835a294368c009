/*
 * allreduce.c - the gradient allreduce: a chunked ring on MPI point-to-point,
 * run by a communication thread of frost's own.
 *
 * Why not MPI_Iallreduce.  On an emulated 1 Gbit/s link (two network
 * namespaces, issue 9) Open MPI's allreduces summed one 11.65 MB bucket in
 * 122-207 ms where the ring's ideal is 98 ms, and Open MPI has no
 * asynchronous progress over TCP: a nonblocking allreduce moves only while
 * its caller is inside MPI, so buckets started during backward mostly waited
 * for the end of it.  Here a thread does nothing but the step's sums, calling
 * MPI all the while, so communication runs while the workers compute.
 *
 * The ring (as Horovod, gloo and NCCL do it): a bucket is cut into one
 * segment per rank.  In n-1 reduce-scatter steps each rank sends a segment to
 * its right neighbour and adds the one arriving from its left; rank r then
 * holds the complete sum of segment r+1.  In n-1 allgather steps the complete
 * segments go round.  Each rank sends 2(n-1)/n of the bucket, the least an
 * allreduce can, and every link carries data both ways at once.  A step's
 * segment moves as chunks of CHUNK_BYTES, all posted at once, and each chunk
 * is added as it arrives, so the adds hide behind the transfer.  A small
 * bucket on 2, 4, 8, ... ranks goes by recursive doubling instead: log2(n)
 * latencies, not 2(n-1) (one exchange on two ranks); a float32 one of 32 to
 * 64 KB on 4 or more ranks by recursive halving and doubling (fewer bytes,
 * 2 log2(n) latencies).
 *
 * Every sum is formed once, in a fixed order, and copied to the other ranks,
 * so every rank ends with the same bits, and they depend on the rank count
 * only, not on timing or on which hosts the ranks run.
 *
 * bfloat16 on the wire: values are rounded to bfloat16 to be sent and added
 * in float32 on arrival; the rank that completes a segment's sum keeps the
 * bfloat16-rounded value it sends, so the ranks still agree bit for bit.
 */
#define _GNU_SOURCE /* pthread, prctl */
#include "config.h"

#ifdef HAVE_MPI
#include <mpi.h>
#define FR_HAVE_MPI_TYPES
#include "internal.h"
#include "command.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Under Open MPI's TCP eager limit (64 KB with its header), so a chunk goes
 * out at once, with no rendezvous round trip before its data. */
#define CHUNK_BYTES (48 * 1024)
/* Buckets up to this size go by recursive doubling on 2, 4, 8, ... ranks
 * (float32 ones over HALVING_BYTES on 4 or more by halving and doubling). */
#define EXCHANGE_BYTES (64 * 1024)

typedef struct sum_job {
    void *buf;
    size_t count;
    bool doubles; /* the step's loss totals */
    bool bf16;
    int label;    /* the trace's number for it (the trainer's piece) */
    long step;    /* the step that started it, for the trace */
} sum_job;

static struct {
    bool started;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, finished;
    /* Jobs are numbered (their tickets) from 0 for the whole run; jobs[k]
     * holds ticket base + k, and the array starts over whenever the thread
     * has caught up, so it holds only what is in flight. */
    sum_job *jobs;
    long capacity;
    long base;
    long posted, done; /* tickets [0, posted) posted, [0, done) finished */
    bool running;      /* a thread is running job `done` (the engine's or a waiter) */
    long run_by_waiters; /* jobs a waiting thread ran itself (tests) */
    bool stop;
    int status; /* the first failure; it stays: MPI cannot be trusted after it */
    fr_error err;
    /* The thread's own buffers, grown to the largest bucket seen. */
    void *incoming, *wire;
    size_t incoming_bytes, wire_bytes;
    MPI_Request *requests;
    int request_capacity;
    char scheduling[96]; /* how the thread runs, once it has started */
} engine = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .finished = PTHREAD_COND_INITIALIZER,
};

static const char *const WHAT = "the gradient allreduce";

/* ------------------------------------------------------------ buffers */

static bool reserve(void **buffer, size_t *have, size_t bytes) {
    if (bytes <= *have)
        return true;
    void *grown = realloc(*buffer, bytes);
    if (!grown)
        return false;
    *buffer = grown;
    *have = bytes;
    return true;
}

static bool reserve_requests(int count) {
    if (count <= engine.request_capacity)
        return true;
    MPI_Request *grown = realloc(engine.requests, (size_t)count * sizeof *grown);
    if (!grown)
        return false;
    engine.requests = grown;
    engine.request_capacity = count;
    return true;
}

/* Segment k of n over `count` values: [*begin, *begin + *length). */
static void segment(size_t count, int n, int k, size_t *begin, size_t *length) {
    size_t base = count / (size_t)n, extra = count % (size_t)n, kk = (size_t)k;
    *begin = kk * base + (kk < extra ? kk : extra);
    *length = base + (kk < extra ? 1 : 0);
}

/* ------------------------------------------------------------ transfer */

/* What to do with received values [lo, hi) of a segment (element indices). */
typedef void (*on_arrival)(void *context, size_t lo, size_t hi);

/*
 * Send `send_count` elements to `right` and receive `recv_count` from `left`,
 * both in chunks posted at once; `arrived` runs on each received chunk in
 * order, while later chunks are still on the way.
 */
static int transfer(const void *send, size_t send_count, void *recv, size_t recv_count,
                    size_t element_bytes, int left, int right, on_arrival arrived,
                    void *context, fr_error *err) {
    MPI_Comm comm = fr_comm_gradients();
    size_t chunk = CHUNK_BYTES / element_bytes;
    int recv_chunks = (int)((recv_count + chunk - 1) / chunk);
    int send_chunks = (int)((send_count + chunk - 1) / chunk);
    if (!reserve_requests(recv_chunks + send_chunks + 1))
        return fr_fail(err, FR_ENOMEM, "out of memory for the allreduce's requests");
    MPI_Request *recv_requests = engine.requests, *send_requests = engine.requests + recv_chunks;
    for (int c = 0; c < recv_chunks; c++) {
        size_t lo = (size_t)c * chunk, n = recv_count - lo < chunk ? recv_count - lo : chunk;
        int rc = MPI_Irecv((char *)recv + lo * element_bytes, (int)(n * element_bytes), MPI_BYTE,
                           left, 0, comm, &recv_requests[c]);
        if (rc != MPI_SUCCESS)
            return fr_fail(err, FR_ECOMM, "%s: MPI_Irecv failed", WHAT);
    }
    for (int c = 0; c < send_chunks; c++) {
        size_t lo = (size_t)c * chunk, n = send_count - lo < chunk ? send_count - lo : chunk;
        int rc = MPI_Isend((const char *)send + lo * element_bytes, (int)(n * element_bytes),
                           MPI_BYTE, right, 0, comm, &send_requests[c]);
        if (rc != MPI_SUCCESS)
            return fr_fail(err, FR_ECOMM, "%s: MPI_Isend failed", WHAT);
    }
    /* A small segment arrives in microseconds: poll without sleeping for a
     * while, or each of a small bucket's 2(n-1) steps would cost a sleep. */
    double spin_s = (recv_count + send_count) * element_bytes <= EXCHANGE_BYTES ? 500e-6 : 20e-6;
    for (int c = 0; c < recv_chunks; c++) {
        int rc = fr_comm_wait_spinning(&recv_requests[c], WHAT, left, spin_s, err);
        if (rc != FR_OK)
            return rc;
        size_t lo = (size_t)c * chunk, hi = lo + chunk < recv_count ? lo + chunk : recv_count;
        if (arrived)
            arrived(context, lo, hi);
    }
    for (int c = 0; c < send_chunks; c++) {
        int rc = fr_comm_wait_spinning(&send_requests[c], WHAT, right, spin_s, err);
        if (rc != FR_OK)
            return rc;
    }
    return FR_OK;
}

/* ---------------------------------------------------------------- ring */

/* The segment being reduced: buf + begin, the values arriving, and for
 * bfloat16 the wire copy of the bucket. */
typedef struct arrival {
    float *sum;              /* buf + segment begin */
    const float *incoming;   /* float32 arrivals */
    const uint16_t *incoming16;
    uint16_t *wire;          /* wire + segment begin */
} arrival;

static void add_floats(void *context, size_t lo, size_t hi) {
    const arrival *a = context;
#pragma omp simd
    for (size_t i = lo; i < hi; i++)
        a->sum[i] += a->incoming[i];
}

/* Add bfloat16 arrivals in float32 and round the partial sum for sending on. */
static void add_bf16(void *context, size_t lo, size_t hi) {
    const arrival *a = context;
    float *restrict sum = a->sum;
    const uint16_t *restrict incoming = a->incoming16;
    uint16_t *restrict wire = a->wire;
#pragma omp simd
    for (size_t i = lo; i < hi; i++) {
        float total = sum[i] + fr_from_bf16(incoming[i]);
        sum[i] = total;
        wire[i] = fr_to_bf16(total);
    }
}

/* Complete bfloat16 segments arrive in `wire`; widen them into the bucket. */
static void widen_bf16(void *context, size_t lo, size_t hi) {
    const arrival *a = context;
    float *restrict sum = a->sum;
    const uint16_t *restrict wire = a->wire;
#pragma omp simd
    for (size_t i = lo; i < hi; i++)
        sum[i] = fr_from_bf16(wire[i]);
}

static void round_to_wire(const float *restrict values, uint16_t *restrict wire, size_t count) {
#pragma omp simd
    for (size_t i = 0; i < count; i++)
        wire[i] = fr_to_bf16(values[i]);
}

static int ring(float *buf, size_t count, bool bf16, fr_error *err) {
    int n = fr_comm_size(), r = fr_comm_rank();
    int left = (r + n - 1) % n, right = (r + 1) % n;
    size_t element = bf16 ? sizeof(uint16_t) : sizeof(float);
    size_t largest = count / (size_t)n + 1;
    if (!reserve(&engine.incoming, &engine.incoming_bytes, largest * element) ||
        (bf16 && !reserve(&engine.wire, &engine.wire_bytes, count * element)))
        return fr_fail(err, FR_ENOMEM, "out of memory for the allreduce's buffers");
    uint16_t *wire = engine.wire;
    size_t begin, length;
    if (bf16) {
        segment(count, n, r, &begin, &length);
        round_to_wire(buf + begin, wire + begin, length);
    }
    /* Reduce-scatter: send what was completed last step, add what arrives. */
    for (int s = 0; s < n - 1; s++) {
        size_t send_begin, send_length;
        segment(count, n, (r - s + n) % n, &send_begin, &send_length);
        segment(count, n, (r - s - 1 + 2 * n) % n, &begin, &length);
        arrival a = {.sum = buf + begin,
                     .incoming = engine.incoming,
                     .incoming16 = engine.incoming,
                     .wire = bf16 ? wire + begin : NULL};
        const void *send = bf16 ? (const void *)(wire + send_begin) : (const void *)(buf + send_begin);
        int rc = transfer(send, send_length, engine.incoming, length, element, left, right,
                          bf16 ? add_bf16 : add_floats, &a, err);
        if (rc != FR_OK)
            return rc;
    }
    /* The segment this rank completed: with bfloat16 it keeps the rounded
     * values it is about to send, as every other rank will have them. */
    if (bf16) {
        segment(count, n, (r + 1) % n, &begin, &length);
        arrival a = {.sum = buf + begin, .wire = wire + begin};
        widen_bf16(&a, 0, length);
    }
    /* Allgather: pass the completed segments round. */
    for (int s = 0; s < n - 1; s++) {
        size_t send_begin, send_length;
        segment(count, n, (r + 1 - s + n) % n, &send_begin, &send_length);
        segment(count, n, (r - s + n) % n, &begin, &length);
        int rc;
        if (bf16) {
            arrival a = {.sum = buf + begin, .wire = wire + begin};
            rc = transfer(wire + send_begin, send_length, wire + begin, length, element, left,
                          right, widen_bf16, &a, err);
        } else {
            rc = transfer(buf + send_begin, send_length, buf + begin, length, element, left, right,
                          NULL, NULL, err);
        }
        if (rc != FR_OK)
            return rc;
    }
    return FR_OK;
}

/*
 * A small bucket on a power-of-two number of ranks: recursive doubling.  In
 * round k each rank swaps its whole running sum with the rank whose number
 * differs in bit k and adds; log2(n) latencies instead of the ring's 2(n-1)
 * (one exchange on two ranks).  Partners add the same two values (a + b ==
 * b + a), so every rank ends with the same bits.  With bfloat16 each sends
 * its running sum rounded, and both add the two rounded values.
 */
static int recursive_doubling(float *buf, size_t count, bool bf16, fr_error *err) {
    int n = fr_comm_size(), r = fr_comm_rank();
    size_t element = bf16 ? sizeof(uint16_t) : sizeof(float);
    if (!reserve(&engine.incoming, &engine.incoming_bytes, count * element) ||
        (bf16 && !reserve(&engine.wire, &engine.wire_bytes, count * element)))
        return fr_fail(err, FR_ENOMEM, "out of memory for the allreduce's buffers");
    for (int distance = 1; distance < n; distance *= 2) {
        int peer = r ^ distance;
        const void *send = buf;
        if (bf16) {
            round_to_wire(buf, engine.wire, count);
            send = engine.wire;
        }
        int rc = transfer(send, count, engine.incoming, count, element, peer, peer, NULL, NULL,
                          err);
        if (rc != FR_OK)
            return rc;
        if (bf16) {
            const uint16_t *restrict mine = engine.wire, *restrict theirs = engine.incoming;
#pragma omp simd
            for (size_t i = 0; i < count; i++)
                buf[i] = fr_from_bf16(mine[i]) + fr_from_bf16(theirs[i]);
        } else {
            arrival a = {.sum = buf, .incoming = engine.incoming};
            add_floats(&a, 0, count);
        }
    }
    return FR_OK;
}

/*
 * A small float32 bucket on 4, 8, ... ranks: recursive halving, then
 * doubling (Rabenseifner's).  In round k each rank keeps half of the range
 * it holds and sends the other half to the rank whose number differs in bit
 * k, adding the half that arrives; after log2(n) rounds it holds the sum of
 * 1/n of the bucket, and the rounds run backwards to pass the sums round.
 * Each rank sends 2(n-1)/n of the bucket, as in the ring, in 2 log2(n)
 * exchanges instead of the ring's 2(n-1), where recursive doubling sends
 * log2(n) whole buckets.  The sums are those of recursive doubling, added in
 * the same order (round k adds two partial sums over 2^k ranks each), so the
 * bits are the same.
 */
#define MAX_HALVINGS 31
static int halving_doubling(float *buf, size_t count, fr_error *err) {
    int n = fr_comm_size(), r = fr_comm_rank(), rounds = 0;
    size_t lo[MAX_HALVINGS + 1], len[MAX_HALVINGS + 1];
    if (!reserve(&engine.incoming, &engine.incoming_bytes, (count / 2 + 1) * sizeof(float)))
        return fr_fail(err, FR_ENOMEM, "out of memory for the allreduce's buffers");
    lo[0] = 0;
    len[0] = count;
    for (int mask = 1; mask < n; mask *= 2, rounds++) {
        size_t half = len[rounds] / 2, keep_lo, keep_len, send_lo, send_len;
        if (r & mask) {
            keep_lo = lo[rounds] + half, keep_len = len[rounds] - half;
            send_lo = lo[rounds], send_len = half;
        } else {
            keep_lo = lo[rounds], keep_len = half;
            send_lo = lo[rounds] + half, send_len = len[rounds] - half;
        }
        arrival a = {.sum = buf + keep_lo, .incoming = engine.incoming};
        int rc = transfer(buf + send_lo, send_len, engine.incoming, keep_len, sizeof(float),
                          r ^ mask, r ^ mask, add_floats, &a, err);
        if (rc != FR_OK)
            return rc;
        lo[rounds + 1] = keep_lo;
        len[rounds + 1] = keep_len;
    }
    /* Backwards: send the range held, receive the partner's, the other half
     * of the range held the round before. */
    for (int k = rounds - 1, mask = n / 2; k >= 0; k--, mask /= 2) {
        size_t other_lo = lo[k + 1] == lo[k] ? lo[k] + len[k + 1] : lo[k];
        size_t other_len = len[k] - len[k + 1];
        int rc = transfer(buf + lo[k + 1], len[k + 1], buf + other_lo, other_len, sizeof(float),
                          r ^ mask, r ^ mask, NULL, NULL, err);
        if (rc != FR_OK)
            return rc;
    }
    return FR_OK;
}

/* Up to this, recursive doubling's fewer exchanges win over halving's fewer
 * bytes.  Measured on 4 emulated 1 Gbit/s nodes (bench/cluster_allreduce.sh
 * --nodes 4 --reps 100, the caller running the sum): 24,000 bytes 0.16-0.18
 * ms by doubling, 0.24-0.27 by halving; 32,000 bytes 0.23-0.32 and 0.24-0.27;
 * 41,000 bytes 0.50 by doubling (one 41 KB message each way per round),
 * 0.25-0.28 by halving. */
#define HALVING_BYTES (32 * 1024)

static int sum_floats(float *buf, size_t count, bool bf16, fr_error *err) {
    size_t element = bf16 ? sizeof(uint16_t) : sizeof(float);
    int n = fr_comm_size();
    bool power_of_two = (n & (n - 1)) == 0;
    if (power_of_two && n >= 4 && !bf16 && count * element > HALVING_BYTES &&
        count * element <= EXCHANGE_BYTES)
        return halving_doubling(buf, count, err);
    if (power_of_two && count * element <= EXCHANGE_BYTES)
        return recursive_doubling(buf, count, bf16, err);
    return ring(buf, count, bf16, err);
}

/*
 * The step's loss totals and batch statistics, a few doubles: every rank sends its own to every
 * other at once and adds all of them in rank order, so the sum takes one
 * network latency (a tree or ring would take several) and every rank gets
 * the same bits.  The values travel on tag 1, apart from the buckets.
 */
/* The loss totals, and a BatchNorm layer's statistics (2 per channel). */
#define MAX_DOUBLES (1 << 20)
static int sum_doubles(double *buf, int count, fr_error *err) {
    int n = fr_comm_size(), r = fr_comm_rank();
    if (count > MAX_DOUBLES)
        return fr_fail(err, FR_EINVAL, "%s: %d doubles, at most %d", WHAT, count, MAX_DOUBLES);
    double *all = malloc((size_t)n * (size_t)count * sizeof *all);
    if (!all || !reserve_requests(2 * n))
        return free(all), fr_fail(err, FR_ENOMEM, "out of memory summing the loss");
    MPI_Comm comm = fr_comm_gradients();
    int posted = 0, rc = FR_OK;
    memcpy(all + (size_t)r * (size_t)count, buf, (size_t)count * sizeof *buf);
    for (int peer = 0; peer < n && rc == FR_OK; peer++) {
        if (peer == r)
            continue;
        if (MPI_Irecv(all + (size_t)peer * (size_t)count, count, MPI_DOUBLE, peer, 1, comm,
                      &engine.requests[posted++]) != MPI_SUCCESS ||
            MPI_Isend(buf, count, MPI_DOUBLE, peer, 1, comm, &engine.requests[posted++]) !=
                MPI_SUCCESS)
            rc = fr_fail(err, FR_ECOMM, "%s: sending the loss failed", WHAT);
    }
    for (int i = 0; i < posted && rc == FR_OK; i++)
        rc = fr_comm_wait_spinning(&engine.requests[i], "summing the loss", -1, 500e-6, err);
    if (rc == FR_OK)
        for (int k = 0; k < count; k++) {
            double total = 0.0;
            for (int peer = 0; peer < n; peer++)
                total += all[(size_t)peer * (size_t)count + (size_t)k];
            buf[k] = total;
        }
    free(all);
    return rc;
}

static int run_job(const sum_job *job, fr_error *err) {
    double begin = fr_trace_now();
    int rc;
    if (job->doubles) {
        rc = sum_doubles(job->buf, (int)job->count, err);
        fr_trace_add_at(job->step, fr_trace_comm_slot(), "loss", "allreduce", -1, begin, 0);
    } else {
        rc = sum_floats(job->buf, job->count, job->bf16, err);
        fr_trace_add_at(job->step, fr_trace_comm_slot(), "bucket", "allreduce", job->label, begin,
                        job->count * (job->bf16 ? sizeof(uint16_t) : sizeof(float)));
    }
    return rc;
}

/* -------------------------------------------------------------- thread */

/*
 * Runs the next job, entered and left with engine.lock held.  The jobs run
 * one at a time and in order, by the communication thread or by a worker
 * waiting for one of them (fr_comm_finish_sum): a worker that would only
 * sleep until the thread had woken, run the job and woken it again runs the
 * job itself, so a small sum waited for at once (the last bucket, the loss)
 * costs no hand-over.  MPI_THREAD_SERIALIZED allows that: the lock and
 * engine.running keep the two from calling MPI at once.
 */
static void run_next_locked(void) {
    sum_job job = engine.jobs[engine.done - engine.base];
    bool failed = engine.status != FR_OK;
    engine.running = true;
    pthread_mutex_unlock(&engine.lock);
    fr_error err = {0};
    int rc = failed ? FR_OK : run_job(&job, &err);
    pthread_mutex_lock(&engine.lock);
    if (rc != FR_OK && engine.status == FR_OK) {
        engine.status = rc;
        engine.err = err;
    }
    engine.done++;
    engine.running = false;
    pthread_cond_broadcast(&engine.finished);
    if (engine.done < engine.posted || engine.stop)
        pthread_cond_signal(&engine.wake);
}

static void *communication_thread(void *unused) {
    (void)unused;
    /* It sleeps between polls of the network; let those sleeps be short. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    /* A bucket handed over must start moving at once, not when the
     * scheduler next takes a core from a worker (milliseconds when every
     * core computes).  The thread sleeps between polls, so a real-time
     * priority costs the workers little; without the privilege for it a
     * higher nice weight helps some, and failing both it runs as it is.
     * Real-time threads of one priority do not take turns: where more
     * ranks' threads than CPUs share a machine (4 ranks on 2 cores), one
     * spinning on a small bucket keeps the core from the peer it waits for
     * until it sleeps, and the emulated 4-node cluster ran 10% slower with
     * them (bench/cluster.sh); there the nice weight is used instead. */
    int sharing = 1, cpus = 1;
    bool realtime = fr_comm_thread_may_be_realtime(&sharing, &cpus);
    struct sched_param priority = {.sched_priority = 1};
    const char *how;
    if (realtime && pthread_setschedparam(pthread_self(), SCHED_FIFO, &priority) == 0)
        how = "real-time (SCHED_FIFO)";
    else if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10) == 0)
        how = "nice -10";
    else
        how = "as the workers";
    pthread_mutex_lock(&engine.lock);
    if (realtime)
        snprintf(engine.scheduling, sizeof engine.scheduling, "%s", how);
    else
        snprintf(engine.scheduling, sizeof engine.scheduling,
                 "%s, not real-time: %d ranks share %d CPU%s", how, sharing, cpus,
                 cpus == 1 ? "" : "s");
    pthread_cond_broadcast(&engine.finished);
    for (;;) {
        while ((!engine.stop && engine.done == engine.posted) || engine.running)
            pthread_cond_wait(&engine.wake, &engine.lock);
        if (engine.done == engine.posted)
            break; /* stopping, nothing left */
        run_next_locked();
    }
    pthread_mutex_unlock(&engine.lock);
    return NULL;
}

int fr_allreduce_start(fr_error *err) {
    if (engine.started || fr_comm_size() == 1)
        return FR_OK;
    engine.stop = false;
    if (pthread_create(&engine.thread, NULL, communication_thread, NULL) != 0)
        return fr_fail(err, FR_ECOMM, "cannot start the communication thread");
    engine.started = true;
    return FR_OK;
}

void fr_comm_thread_scheduling(char *text, size_t len) {
    if (len == 0)
        return;
    text[0] = '\0';
    if (!engine.started)
        return;
    pthread_mutex_lock(&engine.lock);
    while (!engine.scheduling[0])
        pthread_cond_wait(&engine.finished, &engine.lock);
    snprintf(text, len, "%s", engine.scheduling);
    pthread_mutex_unlock(&engine.lock);
}

void fr_allreduce_shutdown(void) {
    if (engine.started) {
        pthread_mutex_lock(&engine.lock);
        engine.stop = true;
        pthread_cond_signal(&engine.wake);
        pthread_mutex_unlock(&engine.lock);
        pthread_join(engine.thread, NULL);
        engine.started = false;
        engine.scheduling[0] = '\0';
    }
    free(engine.jobs);
    free(engine.incoming);
    free(engine.wire);
    free(engine.requests);
    engine.jobs = NULL;
    engine.incoming = engine.wire = NULL;
    engine.requests = NULL;
    engine.capacity = engine.request_capacity = 0;
    engine.incoming_bytes = engine.wire_bytes = 0;
    engine.posted = engine.done = engine.base = 0;
}

/* Queue a job; every rank posts the same jobs in the same order, and the
 * thread runs them in that order. */
static int post(sum_job job, bool wake, long *ticket, fr_error *err) {
    *ticket = -1;
    if (fr_comm_size() == 1)
        return FR_OK;
    int rc = fr_allreduce_start(err);
    if (rc != FR_OK)
        return rc;
    pthread_mutex_lock(&engine.lock);
    if (engine.done == engine.posted)
        engine.base = engine.posted; /* caught up: start the array over */
    long slot = engine.posted - engine.base;
    if (slot >= engine.capacity) {
        long capacity = slot + 16;
        sum_job *grown = realloc(engine.jobs, (size_t)capacity * sizeof *grown);
        if (grown) {
            engine.jobs = grown;
            engine.capacity = capacity;
        } else {
            rc = fr_fail(err, FR_ENOMEM, "out of memory for allreduce jobs");
        }
    }
    if (rc == FR_OK) {
        job.step = fr_trace_step();
        engine.jobs[slot] = job;
        *ticket = engine.posted++;
        if (wake)
            pthread_cond_signal(&engine.wake);
    }
    pthread_mutex_unlock(&engine.lock);
    return rc;
}

int fr_comm_start_sum(float *buf, size_t count, bool bf16, int label, long *ticket,
                      fr_error *err) {
    return post((sum_job){.buf = buf, .count = count, .bf16 = bf16, .label = label}, true,
                ticket, err);
}

int fr_comm_start_sum_doubles(double *buf, int count, long *ticket, fr_error *err) {
    return post((sum_job){.buf = buf, .count = (size_t)count, .doubles = true, .label = -1},
                true, ticket, err);
}

/*
 * A sum waited for at once.  The job is queued without waking the
 * communication thread: if the thread is running an earlier job it goes on
 * to this one, and if it is idle the caller runs the job itself in
 * fr_comm_finish_sum.  Waking the thread would only have it take a core
 * from a worker (or, on a machine shared by more ranks than cores, from
 * the peer whose data this sum waits for) to find the job taken.
 */
static int sum_now(sum_job job, fr_error *err) {
    long ticket;
    int rc = post(job, false, &ticket, err);
    return rc == FR_OK ? fr_comm_finish_sum(ticket, err) : rc;
}

int fr_comm_sum(float *buf, size_t count, bool bf16, int label, fr_error *err) {
    return sum_now((sum_job){.buf = buf, .count = count, .bf16 = bf16, .label = label}, err);
}

int fr_comm_sum_doubles(double *buf, int count, fr_error *err) {
    return sum_now((sum_job){.buf = buf, .count = (size_t)count, .doubles = true, .label = -1},
                   err);
}

/* A waiter's turn, with engine.lock held: run the next job if nobody is
 * running one, else wait for the one running to finish. */
static void run_or_wait_locked(void) {
    if (engine.running) {
        pthread_cond_wait(&engine.finished, &engine.lock);
        return;
    }
    run_next_locked();
    engine.run_by_waiters++;
}

int fr_comm_finish_sum(long ticket, fr_error *err) {
    if (!engine.started)
        return FR_OK;
    pthread_mutex_lock(&engine.lock);
    while (engine.done <= ticket && ticket < engine.posted && engine.status == FR_OK)
        run_or_wait_locked(); /* this job or one before it */
    int rc = engine.status;
    if (rc != FR_OK && err)
        *err = engine.err;
    pthread_mutex_unlock(&engine.lock);
    return rc;
}

long fr_comm_sums_run_by_waiters(void) {
    pthread_mutex_lock(&engine.lock);
    long count = engine.run_by_waiters;
    pthread_mutex_unlock(&engine.lock);
    return count;
}

void fr_allreduce_quiesce(void) {
    if (!engine.started)
        return;
    pthread_mutex_lock(&engine.lock);
    while (engine.done < engine.posted)
        run_or_wait_locked();
    pthread_mutex_unlock(&engine.lock);
}

#else /* a single process: nothing to sum */
#include "internal.h"

int fr_comm_start_sum(float *buf, size_t count, bool bf16, int label, long *ticket,
                      fr_error *err) {
    (void)buf, (void)count, (void)bf16, (void)label, (void)err;
    *ticket = -1;
    return FR_OK;
}
int fr_comm_start_sum_doubles(double *buf, int count, long *ticket, fr_error *err) {
    (void)buf, (void)count, (void)err;
    *ticket = -1;
    return FR_OK;
}
int fr_comm_finish_sum(long ticket, fr_error *err) {
    (void)ticket, (void)err;
    return FR_OK;
}
int fr_comm_sum(float *buf, size_t count, bool bf16, int label, fr_error *err) {
    (void)buf, (void)count, (void)bf16, (void)label, (void)err;
    return FR_OK;
}
int fr_comm_sum_doubles(double *buf, int count, fr_error *err) {
    (void)buf, (void)count, (void)err;
    return FR_OK;
}
long fr_comm_sums_run_by_waiters(void) { return 0; }
void fr_allreduce_quiesce(void) {}
int fr_allreduce_start(fr_error *err) {
    (void)err;
    return FR_OK;
}
void fr_allreduce_shutdown(void) {}
void fr_comm_thread_scheduling(char *text, size_t len) {
    if (len)
        text[0] = '\0';
}
#endif
