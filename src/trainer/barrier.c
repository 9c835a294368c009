/*
 * barrier.c - where the threads of a training step wait for each other.
 *
 * A step meets many times (twice per trained BatchNorm, around the loss and
 * the update).  OpenMP's own barrier waits by spinning, in libgomp for up to
 * 300,000 rounds unless OMP_WAIT_POLICY says otherwise; on cores shared with
 * other processes (a busy machine, the vCPUs of a VM) the spinning thread
 * holds a core that the thread it waits for, or the processes crowding that
 * thread's core, could use.  Measured on this project's 2-vCPU machine with
 * other builds running: 2,000 meetings of 2 threads between 50 us pieces of
 * work took 350-1,200 ms with OpenMP's barrier against 130 ms with this one;
 * examples/resnet_small.txt trained on 2 threads at 640-670 samples/s with
 * OpenMP's barrier and 1,150-1,180 with this one (load average 7).
 *
 * So the waiting threads spin only briefly (a few microseconds, long enough
 * when both arrive together) and then sleep in the kernel (a futex on Linux,
 * sched_yield elsewhere) until the last one arrives and wakes them.  The
 * atomics are sequentially consistent, so whatever a thread wrote before
 * the barrier is seen by every thread after it, as with OpenMP's.
 */
#define _GNU_SOURCE /* syscall */
#include "internal.h"

#include <limits.h>
#include <sched.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

/* Rounds of looking before sleeping: about 5 us. */
#define SPIN_ROUNDS 4000

static void sleep_while(atomic_uint *word, unsigned value) {
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void)word, (void)value;
    sched_yield();
#endif
}

static void wake_all(atomic_uint *word) {
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

void fr_barrier_wait(fr_barrier *barrier, int threads) {
    unsigned generation = atomic_load(&barrier->generation);
    if (atomic_fetch_add(&barrier->arrived, 1) + 1 >= (unsigned)threads) {
        /* The last one in: nobody touches `arrived` again until they have
         * seen the new generation. */
        atomic_store(&barrier->arrived, 0);
        atomic_fetch_add(&barrier->generation, 1);
        wake_all(&barrier->generation);
        return;
    }
    for (int round = 0; round < SPIN_ROUNDS; round++)
        if (atomic_load(&barrier->generation) != generation)
            return;
    while (atomic_load(&barrier->generation) == generation)
        sleep_while(&barrier->generation, generation);
}
