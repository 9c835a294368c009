#!/bin/sh
# trace.sh - `frost train --trace FILE.json` writes a Chrome trace-event file
# (Perfetto, chrome://tracing): valid JSON, one process per rank and one
# thread per worker plus the communication thread, a forward and a backward
# event for every trained layer on every thread in every step, and under MPI
# an allreduce event for every bucket of every step, each waited for by the
# next step's forward (updates in flight).  Structure only: no timing is
# checked.
. "$TOP_SRCDIR/tests/common.sh"

DATA="$WORK/data"
mkdir -p "$DATA"
make_idx "$DATA" 200 3
MODEL='input 1 28 28; flatten; fc1 = linear(784, 32); relu; fc2 = linear(32, 16); relu; fc3 = linear(16, 10)'
STEPS=5
plan 5
check() { # check FILE RANKS THREADS BUCKETS_PER_STEP
    "$PYTHON3" - "$@" <<'PY'
import json, sys
path, ranks, threads, buckets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps = 5
problems = []
doc = json.load(open(path))
events = doc["traceEvents"]
complete = [e for e in events if e.get("ph") == "X"]
for e in complete:
    for key in ("name", "cat", "pid", "tid", "ts", "dur"):
        if key not in e:
            problems.append("an event lacks %s: %r" % (key, e))
            break
    else:
        if e["dur"] < 0:
            problems.append("negative duration: %r" % e)
names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
         if e.get("ph") == "M" and e.get("name") == "thread_name"}
procs = {e["pid"]: e["args"]["name"] for e in events
         if e.get("ph") == "M" and e.get("name") == "process_name"}
if sorted(procs) != list(range(ranks)):
    problems.append("process names for ranks %s, expected 0..%d" % (sorted(procs), ranks - 1))
for rank in range(ranks):
    for t in range(threads):
        if names.get((rank, t)) != "thread %d" % t:
            problems.append("rank %d thread %d is not named" % (rank, t))
        for layer in ("fc1", "fc2", "fc3"):
            for what in ("forward", "backward"):
                got = sorted(e["args"]["step"] for e in complete
                             if e["pid"] == rank and e["tid"] == t and e["name"] == layer + " " + what)
                if got != list(range(1, steps + 1)):
                    problems.append("rank %d thread %d: %s %s in steps %s" % (rank, t, layer, what, got))
    comm = [e for e in complete if e["pid"] == rank and e["cat"] == "allreduce"
            and names.get((rank, e["tid"])) == "communication"]
    per_step = {}
    for e in comm:
        if e["name"].startswith("bucket "):
            per_step.setdefault(e["args"]["step"], []).append(e)
    want = {s: buckets for s in range(1, steps + 1)} if buckets else {}
    if {s: len(v) for s, v in per_step.items()} != want:
        problems.append("rank %d: allreduce buckets per step %s, expected %s" % (
            rank, {s: len(v) for s, v in per_step.items()}, want))
    if buckets and any(e["args"].get("bytes", 0) <= 0 for v in per_step.values() for e in v):
        problems.append("rank %d: a bucket's allreduce carries no bytes" % rank)
    # A step's update stays in flight: the next step's forward waits for each
    # piece, so step 1 waits for none and every later step for its
    # predecessor's (the run's end may add the last step's to step 5).
    waits = {}
    for e in complete:
        if (e["pid"] == rank and e["tid"] == 0 and e["name"].startswith("bucket ")
                and e["name"].endswith(" wait")):
            waits[e["args"]["step"]] = waits.get(e["args"]["step"], 0) + 1
    if buckets and (waits.get(1, 0) != 0 or any(waits.get(s, 0) < buckets for s in range(2, steps + 1))):
        problems.append("rank %d: bucket waits per step %s: expected none in step 1 and %d or more in each later one" % (
            rank, dict(sorted(waits.items())), buckets))
print("; ".join(problems[:5]) if problems else "%d events" % len(complete))
sys.exit(1 if problems else 0)
PY
}

"$FROST" train --model "$MODEL" --data "$DATA" --steps $STEPS --batch-size 40 --threads 2 \
    --trace "$WORK/t2.json" > "$WORK/t2.out" 2>&1
ok $? "1 rank x 2 threads trains with --trace"
result=$(check "$WORK/t2.json" 1 2 0)
ok $? "its trace: every layer's forward and backward on both threads in every step ($result)"

"$FROST" train --model "$MODEL" --data "$DATA" --steps $STEPS --batch-size 40 \
    --trace "$WORK/missing/t.json" > "$WORK/bad.out" 2>&1
[ $? -ne 0 ] && grep -q "^frost: --trace $WORK/missing/t.json: directory" "$WORK/bad.out" &&
    ! grep -q '^epoch' "$WORK/bad.out"
ok $? "a --trace path that cannot be written is an error before training starts"

if [ -n "${MPIRUN:-}" ]; then
    timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 \
        "$FROST" train --model "$MODEL" --data "$DATA" --steps $STEPS --batch-size 40 \
        --bucket-mb 0.001 --trace "$WORK/mpi.json" > "$WORK/mpi.out" 2>&1
    ok $? "2 ranks x 1 thread train with --trace and 1 KB buckets"
    # fc3 and fc2 (2,792 bytes) close the first bucket, fc1 is the second.
    result=$(check "$WORK/mpi.json" 2 1 2)
    ok $? "its trace: both ranks, every layer on each, two bucket allreduces per step on each rank's communication thread ($result)"
else
    skip "frost was built without MPI"
    skip "frost was built without MPI"
fi
done_testing
