#!/bin/sh
# placement.sh - where frost's threads run.  Each thread gets one CPU of the
# process's affinity mask (as taskset or mpirun set it); ranks of a node that
# share a mask split it; a lone process with spare CPUs, OMP_PROC_BIND and
# --no-pin leave placement alone; more threads than CPUs is a warning that
# names the fix.  Without --threads and OMP_NUM_THREADS a rank runs one
# thread per CPU of its mask, its share when ranks share it.  What the
# threads really got is read from /proc while the run is going.
. "$TOP_SRCDIR/tests/common.sh"

if ! command -v taskset > /dev/null 2>&1; then
    skip "no taskset (util-linux)"
    done_testing
fi
DATA=$WORK/data
mkdir -p "$DATA"
make_idx "$DATA" 256 5
MODEL='fc1 = linear(784, 64); relu; fc2 = linear(64, 10)'
FLAGS="--data $DATA --batch-size 32 --log-every 1000000"
# Our own mask's CPUs: how many, the first, the second and the last.
set -- $("$PYTHON3" -c 'import os; c = sorted(os.sched_getaffinity(0)); print(len(c), c[0], c[1 % len(c)], c[-1])')
cpus=$1 first=$2 second=$3 last=$4

# pinned_cpus PID: the CPUs of the process's threads that are bound to a
# single CPU, sorted (other threads, such as OpenBLAS's idle pool, keep the
# whole mask).
pinned_cpus() {
    for status in /proc/"$1"/task/*/status; do
        sed -n 's/^Cpus_allowed_list:[[:space:]]*\([0-9]*\)$/\1/p' "$status"
    done | sort -n | tr '\n' ' '
}

# while_training NAME COMMAND...: start a long run in the background, wait for
# its header (setup, pinning included, is done), run `look` on it, stop it.
while_training() {
    name=$1
    shift
    "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" &
    pid=$!
    for _ in $(seq 1 300); do
        grep -q '^threads:' "$WORK/$name.out" 2> /dev/null && break
        kill -0 $pid 2> /dev/null || break
        sleep 0.1
    done
    look $pid
    kill -TERM $pid 2> /dev/null
    wait $pid 2> /dev/null
}

# Without --threads and OMP_NUM_THREADS (make check sets it to 1), a lone
# process runs one thread per CPU of its mask, and the header says why.
env -u OMP_NUM_THREADS taskset -c $first "$FROST" train --model "$MODEL" $FLAGS --steps 2 \
    > "$WORK/default1.out" 2> "$WORK/default1.err"
status=$?
[ $status -eq 0 ] || sed "s/^/#   /" "$WORK/default1.err"
grep -q '^frost .*: 1 rank x 1 thread,' "$WORK/default1.out" &&
    grep -q "^threads: 1 (the process's CPUs $first), pinned to CPU $first\$" "$WORK/default1.out"
ok $((status + $?)) "no --threads, no OMP_NUM_THREADS, one CPU: $(grep '^threads:' "$WORK/default1.out")"

# Two threads on a one-CPU mask: not pinned, and a warning saying so.
taskset -c $first "$FROST" train --model "$MODEL" $FLAGS --steps 2 --threads 2 > "$WORK/one.out" 2> "$WORK/one.err"
status=$?
[ $status -eq 0 ] || sed "s/^/#   /" "$WORK/one.err"
ok $status "two threads on one CPU still train"
grep -q "^threads: not pinned: 2 threads (1 rank x 2) for 1 CPU ($first)\$" "$WORK/one.out"
ok $? "the header says the threads are not pinned and why"
grep -q "^frost: warning: threads not pinned: 2 threads (1 rank x 2) for 1 CPU ($first), so they take turns; give each rank its own cores (mpirun --map-by slot:PE=2) or use fewer --threads\$" "$WORK/one.err"
ok $? "more threads than CPUs is a one-line warning that names the fix"

if [ "$cpus" -lt 2 ]; then
    skip "one CPU: nothing to pin two threads to"
    done_testing
fi
look() { seen=$(pinned_cpus "$1"); }

while_training pin2 taskset -c $first,$last "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --threads 2
if [ "$last" -eq $((first + 1)) ]; then pair=$first-$last; else pair=$first,$last; fi
grep -q "^threads: pinned to CPUs $pair\$" "$WORK/pin2.out"
ok $? "two threads on CPUs $first and $last: the header names them"
[ "$seen" = "$first $last " ]
ok $? "each thread runs on its own CPU (single-CPU threads: '$seen')"
! grep -q warning "$WORK/pin2.err"
ok $? "no warning when every thread has a CPU"

while_training default2 env -u OMP_NUM_THREADS taskset -c $first,$last "$FROST" train --model "$MODEL" $FLAGS --steps 100000000
grep -q '^frost .*: 1 rank x 2 threads,' "$WORK/default2.out" &&
    grep -q "^threads: 2 (the process's CPUs $pair), pinned to CPUs $pair\$" "$WORK/default2.out" &&
    [ "$seen" = "$first $last " ]
ok $? "no --threads, no OMP_NUM_THREADS, CPUs $first and $last: a thread on each: $(grep '^threads:' "$WORK/default2.out")"

while_training one1 taskset -c $last "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --threads 1
grep -q "^threads: pinned to CPU $last\$" "$WORK/one1.out"
ok $? "one thread in a one-CPU mask: pinned to that CPU"

while_training spare taskset -c $first,$last "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --threads 1
grep -q "^threads: not pinned: 1 thread for 2 CPUs ($pair), free to move\$" "$WORK/spare.out" && [ -z "$seen" ]
ok $? "a lone process with a spare CPU pins nothing: another process may share the mask ('$seen')"

while_training nopin taskset -c $first,$last "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --threads 2 --no-pin
grep -q '^threads: not pinned (--no-pin)$' "$WORK/nopin.out" && [ -z "$seen" ]
ok $? "--no-pin leaves every thread on the whole mask (single-CPU threads: '$seen')"

while_training bind env OMP_PROC_BIND=false taskset -c $first,$last "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --threads 2
grep -q '^threads: not pinned: OMP_PROC_BIND is set$' "$WORK/bind.out" && [ -z "$seen" ]
ok $? "OMP_PROC_BIND set by the user: frost pins nothing (single-CPU threads: '$seen')"

if [ -z "${MPIRUN:-}" ]; then
    skip "frost was built without MPI"
    done_testing
fi
# Unbound ranks share the node's mask and take a CPU each; the default binding
# with more threads than a rank's one core warns on every rank.
# The ranks of one run are found by its own metrics file: a run before it
# may still be exiting (slowly, under the sanitizers).
look() {
    seen=""
    for p in $(pgrep -f -- "--metrics $WORK/$metrics"); do
        grep -q frost "/proc/$p/comm" 2> /dev/null && seen="$seen$(pinned_cpus "$p")"
    done
    seen=$(echo $seen | tr ' ' '\n' | sort -n | tr '\n' ' ')
}
metrics=ranks.csv
while_training ranks timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none \
    -np 2 -x OMP_NUM_THREADS=1 "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --threads 1 \
    --metrics "$WORK/$metrics"
[ "$seen" = "$first $second " ]
ok $? "2 unbound ranks x 1 thread: the ranks take CPUs $first and $second, one each ('$seen')"
# Without --threads and OMP_NUM_THREADS, 2 unbound ranks split the node's
# mask: each runs half of its CPUs (at least one) instead of all of them.
share=$((cpus / 2))
metrics=default-ranks.csv
while_training ranks env -u OMP_NUM_THREADS timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe \
    --bind-to none -np 2 "$FROST" train --model "$MODEL" $FLAGS --steps 100000000 --metrics "$WORK/$metrics"
count=$(echo $seen | wc -w)
grep -q "^frost .*: 2 ranks x $share thread" "$WORK/ranks.out" &&
    grep -q "^threads: $share (the rank's share of CPUs [0-9,-]*), pinned to CPU" "$WORK/ranks.out" &&
    [ "$count" -eq $((2 * share)) ] && ! grep -q warning "$WORK/ranks.err"
ok $? "2 unbound ranks, no --threads: $share thread(s) each on its own CPU ($count pinned), no warning: $(grep '^threads:' "$WORK/ranks.out")"
timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to core -np 2 \
    "$FROST" train --model "$MODEL" $FLAGS --steps 2 --threads 2 > "$WORK/bound.out" 2> "$WORK/bound.err"
ok $? "2 ranks bound to a core each, 2 threads each, still train"
grep -q '^frost: warning: rank 0: threads not pinned: 2 threads (1 rank x 2) for 1 CPU' "$WORK/bound.err" &&
    grep -q '^frost: warning: rank 1: threads not pinned: 2 threads (1 rank x 2) for 1 CPU' "$WORK/bound.err"
ok $? "each rank bound to one core with 2 threads warns, naming its rank"
# The communication thread runs real-time only where the ranks' threads fit
# the machine's CPUs (real-time threads of one priority do not take turns).
grep -q '^communication thread: ' "$WORK/bound.out" && ! grep -q 'not real-time' "$WORK/bound.out"
ok $? "ranks bound to a core each: their communication threads may run real-time ($(grep '^communication' "$WORK/bound.out"))"
timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1 \
    "$FROST" train --model "$MODEL" $FLAGS --steps 2 --threads 1 > "$WORK/four.out" 2> "$WORK/four.err"
line=$(grep '^communication thread: ' "$WORK/four.out")
if [ "$cpus" -lt 4 ]; then
    echo "$line" | grep -Eq "^communication thread: (nice -10|as the workers), not real-time: 4 ranks share $cpus CPUs?\$"
else
    [ -n "$line" ] && ! echo "$line" | grep -q 'not real-time'
fi
ok $? "4 unbound ranks on $cpus CPUs: the communication thread is real-time only if 4 fit ('$line')"
! grep -q '^communication thread' "$WORK/default1.out"
ok $? "one process has no communication thread, and no line for it"
done_testing
