#!/bin/sh
# resume.sh - checkpoints continue a run exactly.
#
#   - N steps straight and N/2 steps + --resume to N give bit-identical
#     weights: SGD with momentum and shuffling, Adam with a frozen layer,
#     2 threads, 2 MPI ranks (when MPIRUN is set);
#   - resuming on another number of threads or ranks matches within float
#     rounding;
#   - --checkpoint-every writes mid-run checkpoints; a run resumed at or past
#     its last step finishes at once and still writes --save;
#   - a checkpoint of another model, another frozen set, batch size or seed is
#     refused; --allow-freeze-change allows staged fine-tuning;
#   - a checkpoint is a weights file for --init and frost eval;
#   - SIGTERM, SIGINT and the --stop-signal (USR1) stop a run with exit
#     status 75 and a checkpoint that resumes bit-identically, on one process
#     and on every MPI rank at the same step; a bad signal name is refused;
#   - --resume-if-exists starts afresh without the --checkpoint file and
#     resumes from it when it is there.
#   - the test's watchdog is ended without running the test's EXIT trap.
. "$TOP_SRCDIR/tests/common.sh"

D="$WORK/data"
mkdir -p "$D"
make_idx "$D" 400 5 # 13 batches of 32 per epoch (the last one 16): resumes land mid-epoch
MLP='fc1 = linear(784, 32); relu; fc2 = linear(32, 10)'
COMMON="--batch-size 32 --seed 3 --log-every 1000" # with --data "$D"

# A single process needs no Open MPI runtime daemon or network transport:
# starting without them saves most of a second per run.  (Only for runs
# without mpirun: the ranks of an mpirun job need their transports.)
solo() {
    OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self \
        OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx "$FROST" "$@"
}
mpi() { $MPIRUN --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$FROST" "$@"; }
: "${MPIRUN:=}"

# st.py: look into safetensors files (python3's standard library only).
#   meta FILE KEY          the __metadata__ value
#   maxdiff A B [NAME...]  largest |a - b| over the named tensors (default:
#                          every tensor of A that is a parameter, not state)
#   maxdiffs A1 B1 A2 B2.. the same for each pair, one line each
# Starting python3 can take a second on a loaded machine, so the checks that
# need no JSON parser read the step with step_of below instead.
cat > "$WORK/st.py" <<'PY'
import json, struct, sys

def load(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        raw = data[8 + n + begin:8 + n + end]
        tensors[name] = struct.unpack("<%df" % (len(raw) // 4), raw)
    return meta, tensors

command, args = sys.argv[1], sys.argv[2:]
if command == "meta":
    print(load(args[0])[0].get(args[1], ""))
elif command == "maxdiff":
    a, b = load(args[0])[1], load(args[1])[1]
    names = args[2:] or [k for k in a if k.endswith(".weight") or k.endswith(".bias")]
    print(max(abs(x - y) for name in names for x, y in zip(a[name], b[name], strict=True)))
elif command == "maxdiffs":  # A1 B1 A2 B2 ...: one line per pair (one python start)
    for a, b in zip(args[0::2], args[1::2]):
        a, b = load(a)[1], load(b)[1]
        names = [k for k in a if k.endswith(".weight") or k.endswith(".bias")]
        print(max(abs(x - y) for name in names for x, y in zip(a[name], b[name], strict=True)))
PY
st() { "$PYTHON3" "$WORK/st.py" "$@"; }
# step_of FILE: a checkpoint's "frost.step" from its (ASCII JSON) header.
step_of() {
    head -c 65536 "$1" | tr -c '[:print:]' '\n' |
        sed -n 's/.*"frost\.step" *: *"\([0-9]*\)".*/\1/p' | head -n 1
}
# below LIMIT X: is the number X (from st maxdiff) below LIMIT?
below() { awk -v x="$2" -v l="$1" 'BEGIN { exit !(x != "" && x + 0 < l + 0) }'; }

# Background runs.  Each gets its own fresh output files: polling a file left
# by an earlier run would signal the new one before it is ready.
# wait_progress FILE: until FILE shows a progress line (60 s at most).
wait_progress() {
    i=0
    until grep -q '^epoch ' "$1" 2> /dev/null || [ $i -ge 600 ]; do
        sleep 0.1
        i=$((i + 1))
    done
}
# finish PID: wait for it, but kill it after 60 s, so that a signal that is
# lost fails the test instead of hanging it; the status is frost's (or 137).
# end_watchdog PID: end the watchdog subshell with SIGKILL, never a signal
# it can catch: when frost has already ended, the watchdog is ended just
# after its fork, while bash in it may still hold this shell's traps, and
# SIGTERM then runs the EXIT trap there, which removes $WORK under the test.
end_watchdog() {
    kill -KILL "$1" 2> /dev/null
    wait "$1" 2> /dev/null
}
finish() {
    (sleep 60 && kill -KILL "$1") > /dev/null 2>&1 &
    watchdog=$!
    wait "$1"
    finish_status=$?
    end_watchdog "$watchdog"
    return $finish_status
}

# ------------------------------------------------- bitwise-equal resumes
# split_equal LABEL LAUNCHER ARGS...: 40 steps in one run, and 20 steps with
# --checkpoint then --resume to 40, must write identical --save files.
split_equal() {
    label=$1 launch=$2
    shift 2
    $launch train --model "$MLP" --data "$D" $COMMON "$@" --steps 40 --save "$WORK/$label-full.st" \
        > "$WORK/$label-full.log" 2>&1 &&
        $launch train --model "$MLP" --data "$D" $COMMON "$@" --steps 20 --checkpoint "$WORK/$label-ck.st" \
            > "$WORK/$label-half.log" 2>&1 &&
        $launch train --model "$MLP" --data "$D" $COMMON "$@" --steps 40 --resume "$WORK/$label-ck.st" \
            --save "$WORK/$label-resumed.st" > "$WORK/$label-resumed.log" 2>&1 &&
        grep -q "^resumed from .*$label-ck.st at step 20" "$WORK/$label-resumed.log" &&
        cmp "$WORK/$label-full.st" "$WORK/$label-resumed.st" > "$WORK/cmp.out" 2>&1
    status=$?
    [ $status -eq 0 ] || tail -n 3 "$WORK/cmp.out" "$WORK/$label"-*.log | sed 's/^/# /'
    return $status
}

split_equal sgd solo --lr 0.05 --momentum 0.9 --threads 1
ok $? "SGD with momentum, shuffled: 20 + 20 resumed steps == 40 steps, bit for bit"
split_equal adam solo --optimizer adam --lr 0.002 --freeze fc1 --threads 1
ok $? "Adam with fc1 frozen: resumed run is bit-identical"
# The same without the frozen-prefix feature cache: if only the line above
# fails, the cache is what makes a resumed run differ.
split_equal adam-nocache solo --optimizer adam --lr 0.002 --freeze fc1 --threads 1 --no-cache
ok $? "Adam with fc1 frozen, --no-cache: resumed run is bit-identical"
split_equal threads solo --lr 0.05 --momentum 0.9 --nesterov --weight-decay 0.001 --threads 2
ok $? "2 threads both halves (Nesterov, weight decay): resumed run is bit-identical"
if [ -n "$MPIRUN" ]; then
    split_equal mpi mpi --lr 0.05 --momentum 0.9
    ok $? "2 MPI ranks both halves: resumed run is bit-identical"
else
    skip "MPI: no mpirun"
fi

# The checkpoint keeps optimizer state per parameter, not in slab layout, so
# a run may continue on another number of threads or ranks; it then ends
# within float rounding of the uninterrupted run (summation order differs).
solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --threads 2 --steps 40 \
    --resume "$WORK/sgd-ck.st" --save "$WORK/sgd-2threads.st" > "$WORK/t2.log" 2>&1
ok $? "a 1-thread checkpoint resumes on 2 threads"
pairs="$WORK/sgd-full.st $WORK/sgd-2threads.st"
if [ -n "$MPIRUN" ]; then
    mpi train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps 40 \
        --resume "$WORK/sgd-ck.st" --save "$WORK/sgd-2ranks.st" > "$WORK/r2.log" 2>&1
    ok $? "a 1-process checkpoint resumes on 2 MPI ranks"
    solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --threads 1 --steps 40 \
        --resume "$WORK/mpi-ck.st" --save "$WORK/mpi-1rank.st" > "$WORK/r1.log" 2>&1
    ok $? "a 2-rank checkpoint resumes on 1 process"
    pairs="$pairs $WORK/sgd-full.st $WORK/sgd-2ranks.st $WORK/mpi-full.st $WORK/mpi-1rank.st"
else
    skip "MPI: no mpirun"
    skip "MPI: no mpirun"
fi
st maxdiffs $pairs > "$WORK/diffs" 2> /dev/null
for what in "1 thread -> 2 threads vs 1 thread" "1 process -> 2 ranks vs 1 process" \
    "2 ranks -> 1 process vs 2 ranks"; do
    diff=$(sed -n 1p "$WORK/diffs") && sed -i 1d "$WORK/diffs"
    if [ -z "$MPIRUN" ] && [ "$what" != "1 thread -> 2 threads vs 1 thread" ]; then
        skip "MPI: no mpirun"
        continue
    fi
    below 1e-4 "$diff"
    ok $? "resumed on $what: max |diff| $diff < 1e-4"
done

# ------------------------------------------------------ checkpoint-every
# A run that will take minutes, with a checkpoint every 2000 steps: the first
# one appears mid-run, and a copy taken then says step 2000.
"$FROST" train --model "$MLP" --data "$D" --batch-size 200 --steps 100000000 --log-every 100000 \
    --checkpoint "$WORK/every.st" --checkpoint-every 2000 > "$WORK/every.log" 2>&1 &
pid=$!
i=0
while [ ! -e "$WORK/every.st" ] && [ $i -lt 1200 ] && kill -0 $pid 2> /dev/null; do
    sleep 0.05
    i=$((i + 1))
done
cp "$WORK/every.st" "$WORK/every-copy.st" 2> /dev/null
kill -0 $pid 2> /dev/null
running=$?
kill -TERM $pid 2> /dev/null
finish $pid
[ $running -eq 0 ] && [ -e "$WORK/every-copy.st" ]
ok $? "--checkpoint-every 2000 writes a checkpoint while the run goes on"
step=$(st meta "$WORK/every-copy.st" frost.step 2> /dev/null)
[ "$step" = 2000 ]
ok $? "... whose metadata says step 2000 (read: '$step')"

# ------------------------------------------------- resuming a finished run
for steps in 20 10; do
    rm -f "$WORK/done.st"
    solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps $steps \
        --resume "$WORK/sgd-ck.st" --save "$WORK/done.st" > "$WORK/done.log" 2>&1 &&
        grep -q '^done: 20 steps, nothing left to train' "$WORK/done.log" && [ -e "$WORK/done.st" ]
    ok $? "resuming a step-20 checkpoint with --steps $steps finishes at once and writes --save"
done
diff=$(st maxdiff "$WORK/done.st" "$WORK/sgd-ck.st")
[ "$diff" = 0.0 ]
ok $? "... the saved weights are the checkpoint's (max |diff| $diff)"

# ------------------------------------------------------------- refusals
refused() { # refused DESCRIPTION PATTERN frost-args...: one-line error, status 1
    desc=$1 pattern=$2
    shift 2
    solo "$@" > "$WORK/stdout" 2> "$WORK/stderr"
    status=$?
    [ $status -eq 1 ] && [ "$(wc -l < "$WORK/stderr")" -eq 1 ] &&
        grep -Eq -- "^frost: .*$pattern" "$WORK/stderr" && [ ! -e "$WORK/refused.st" ]
    ok $? "$desc: $(cat "$WORK/stderr")"
}
refused "resume with another model" "sgd-ck\.st: the checkpoint is of another model: 'fc1\.weight' is \[32, 784\] there, \[16, 784\] here" \
    train --model 'fc1 = linear(784, 16); relu; fc2 = linear(16, 10)' --data "$D" $COMMON --momentum 0.9 \
    --steps 40 --resume "$WORK/sgd-ck.st" --save "$WORK/refused.st"
refused "resume with another frozen set" "sgd-ck\.st: the checkpoint has 'fc1\.weight' trainable, this run freezes it .*--allow-freeze-change" \
    train --model "$MLP" --data "$D" $COMMON --momentum 0.9 --freeze fc1 --steps 40 \
    --resume "$WORK/sgd-ck.st" --save "$WORK/refused.st"
refused "resume with another batch size" "sgd-ck\.st: the checkpoint was written with --batch-size 32, this run has 16" \
    train --model "$MLP" --data "$D" $COMMON --momentum 0.9 --batch-size 16 --steps 40 \
    --resume "$WORK/sgd-ck.st" --save "$WORK/refused.st"
refused "resume with another seed" "sgd-ck\.st: the checkpoint was written with --seed 3, this run has 4" \
    train --model "$MLP" --data "$D" $COMMON --momentum 0.9 --seed 4 --steps 40 \
    --resume "$WORK/sgd-ck.st" --save "$WORK/refused.st"
refused "resume with another optimizer" "sgd-ck\.st: the checkpoint was trained with optimizer sgd, this run uses adam" \
    train --model "$MLP" --data "$D" $COMMON --optimizer adam --steps 40 \
    --resume "$WORK/sgd-ck.st" --save "$WORK/refused.st"

# ------------------------------------------- staged fine-tuning: unfreeze
# Stage 1 trains fc2 with fc1 frozen; stage 2 resumes with everything
# trainable, which --allow-freeze-change permits (fc1 starts fresh state).
solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --freeze fc1 --steps 20 \
    --checkpoint "$WORK/stage1.st" > "$WORK/stage1.log" 2>&1
ok $? "stage 1: fc1 frozen, 20 steps, checkpoint"
solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps 40 --allow-freeze-change \
    --resume "$WORK/stage1.st" --save "$WORK/stage2.st" > "$WORK/stage2.log" 2>&1 &&
    grep -q '^frozen parameters: 0$' "$WORK/stage2.log"
ok $? "stage 2: resumed with nothing frozen and --allow-freeze-change"
diff=$(st maxdiff "$WORK/stage1.st" "$WORK/stage2.st" fc1.weight)
below 1e38 "$diff" && ! below 1e-6 "$diff"
ok $? "... fc1 trains in stage 2 (max |change| $diff)"

# ------------------------------------------ a checkpoint is a weights file
solo eval --model "$MLP" --data "$D" --init "$WORK/sgd-ck.st" > "$WORK/eval-ck.log" 2>&1 &&
    grep -q '^test: loss [0-9.]* accuracy' "$WORK/eval-ck.log"
ok $? "frost eval --init CHECKPOINT works: $(cat "$WORK/eval-ck.log")"
solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --steps 5 --init "$WORK/sgd-ck.st" \
    --save "$WORK/from-ck.st" > "$WORK/init-ck.log" 2>&1
ok $? "frost train --init CHECKPOINT works (fresh optimizer state, step 0)"

refused "--stop-signal with a name that is no stop signal" "--stop-signal 'KILL': expected TERM, INT, HUP, USR1, USR2, QUIT, ALRM or XCPU" \
    train --model "$MLP" --data "$D" $COMMON --stop-signal KILL --save "$WORK/refused.st"
refused "--resume-if-exists without --checkpoint" "--resume-if-exists needs --checkpoint FILE" \
    train --model "$MLP" --data "$D" $COMMON --resume-if-exists --save "$WORK/refused.st"

# ---------------------------------------------------- --resume-if-exists
# No checkpoint file yet: the run starts afresh (the same run as sgd-full);
# then the file is there, and the same command resumes from it.
rm -f "$WORK/rie.st"
solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --threads 1 --steps 40 \
    --checkpoint "$WORK/rie.st" --resume-if-exists --save "$WORK/rie-fresh.st" > "$WORK/rie1.log" 2>&1 &&
    grep -q "^no checkpoint $WORK/rie.st yet: starting afresh" "$WORK/rie1.log" &&
    cmp "$WORK/sgd-full.st" "$WORK/rie-fresh.st" > /dev/null 2>&1
ok $? "--resume-if-exists without the file starts afresh: the same weights as without the flag"
solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --threads 1 --steps 40 \
    --checkpoint "$WORK/sgd-ck.st" --resume-if-exists --save "$WORK/rie-resumed.st" > "$WORK/rie2.log" 2>&1 &&
    grep -q "^resumed from $WORK/sgd-ck.st at step 20" "$WORK/rie2.log" &&
    cmp "$WORK/sgd-full.st" "$WORK/rie-resumed.st" > /dev/null 2>&1
ok $? "--resume-if-exists with the file resumes from it (step 20 -> 40, bit-identical)"

# ------------------------------------------------------- the watchdog
# The moment that once removed $WORK in the middle of the SIGINT checks
# below: a watchdog ended before bash in it has dropped this shell's traps.
# A subshell that keeps them (it sets them again) stands for it, ended as
# finish ends its watchdog; then finish itself on a process that has already
# ended, the case where that moment comes, 50 times.
(eval "$(trap)" && : > "$WORK/traps-set" && sleep 60) > /dev/null 2>&1 &
holder=$!
i=0
while [ ! -e "$WORK/traps-set" ] && [ $i -lt 600 ]; do
    sleep 0.1
    i=$((i + 1))
done
end_watchdog $holder
[ -e "$WORK/traps-set" ] && [ -d "$D" ]
ok $? "a watchdog that still holds the test's EXIT trap is ended without running it"
i=0
while [ $i -lt 50 ]; do
    true &
    finish $!
    i=$((i + 1))
done
[ -d "$D" ]
ok $? "finish on a process that has already ended, 50 times: \$WORK stays"

# ------------------------------------------------ SIGTERM, SIGINT, SIGUSR1
# A long run started directly in the background ($! is frost itself); once
# it prints progress, the signal makes it finish the step, checkpoint and
# exit with status 75; the checkpoint then resumes, and 5 steps later the
# weights are those of a run that was never stopped.  USR1 stops a run that
# names it with --stop-signal (Slurm's --signal=USR1@120).
for sig in TERM INT USR1; do
    ck="$WORK/sig$sig.st"
    out="$WORK/sig$sig.out" err="$WORK/sig$sig.err"
    stop=
    [ $sig = USR1 ] && stop="--stop-signal USR1"
    "$FROST" train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps 100000000 \
        --log-every 100 --checkpoint "$ck" $stop > "$out" 2> "$err" &
    pid=$!
    wait_progress "$out"
    kill -$sig $pid
    finish $pid
    status=$?
    [ $status -eq 75 ]
    ok $? "SIG$sig: exit status 75 (got $status)"
    grep -Eq "^frost: stopped by a signal after step [0-9]+; checkpoint written to $ck" "$err" &&
        [ "$(wc -l < "$err")" -eq 1 ]
    named=$?
    if [ $named -ne 0 ]; then
        # What is needed to tell a lost message from a lost file or a
        # process that has not ended (a --without-mpi run once saw 75 and an
        # empty stderr here: the watchdog had removed $WORK, see end_watchdog).
        diag "stderr $(wc -c < "$err" 2> /dev/null) bytes; frost $(kill -0 $pid 2> /dev/null && echo still running || echo ended)"
        ls -l "$WORK" 2> /dev/null | grep "sig$sig" | sed 's/^/#   /'
        tail -n 3 "$out" 2> /dev/null | sed 's/^/#   stdout: /'
    fi
    ok $named "SIG$sig: one line names the checkpoint: $(tr '\n' ' ' < "$err")"
    step=$(sed -n 's/.*after step \([0-9]*\);.*/\1/p' "$err")
    [ -n "$step" ] && [ "$(step_of "$ck")" = "$step" ]
    ok $? "SIG$sig: the checkpoint holds step $step"
    solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps $((step + 5)) \
        --checkpoint "$ck" --resume-if-exists --save "$WORK/sig-done.st" > "$WORK/sig-resume.log" 2>&1 &&
        grep -q "^done: $((step + 5)) steps" "$WORK/sig-resume.log" &&
        solo train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps $((step + 5)) \
            --save "$WORK/sig-straight.st" > "$WORK/sig-straight.log" 2>&1 &&
        cmp "$WORK/sig-straight.st" "$WORK/sig-done.st" > /dev/null 2>&1
    ok $? "SIG$sig: the checkpoint resumes (--resume-if-exists) and ends bit-identical to a run never stopped"
done

# Under mpirun.  Slurm (--signal=TERM@...) signals every task, so SIGTERM goes
# to the rank processes: to both, or to rank 1 alone (the ranks combine their
# flags each step, so rank 0 stops too).  Every rank stops after the same
# step: one checkpoint at that step, one message, no process left, and the
# job ends within seconds.  Open MPI's mpirun exits with the status of the
# first rank that failed, here 75.  SIGTERM to mpirun itself (what a batch
# shell or `kill` of the launcher does) is forwarded to the ranks, which also
# checkpoint, but mpirun then exits with its own status (1), not 75.
if [ -n "$MPIRUN" ]; then
    ck="$WORK/sigmpi.st"
    marker="$WORK/marker-$$.csv" # a unique word in the ranks' command lines
    for target in ranks rank1 mpirun; do
        rm -f "$ck"
        out="$WORK/sigmpi-$target.out" err="$WORK/sigmpi-$target.err"
        # mpirun itself in the background (not through a function, which
        # would run it in a subshell), so that $! is mpirun.
        $MPIRUN --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 \
            "$FROST" train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps 100000000 \
            --log-every 100 --checkpoint "$ck" --metrics "$marker" > "$out" 2> "$err" &
        pid=$!
        wait_progress "$out"
        # The ranks are mpirun's children (with the marker in their command
        # line); Open MPI puts each one's rank in its environment.
        ranks=$(pgrep -P $pid -f "$marker")
        case $target in
        rank1)
            for p in $ranks; do
                tr '\0' '\n' < /proc/$p/environ 2> /dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1' && ranks=$p
            done ;;
        mpirun) ranks=$pid ;;
        esac
        [ -n "$ranks" ]
        ok $? "MPI, SIGTERM to $target: the process(es) to signal: $(echo $ranks) (mpirun is $pid)"
        start=$(date +%s)
        kill -TERM $ranks
        finish $pid
        status=$?
        elapsed=$(($(date +%s) - start))
        if [ $target = mpirun ]; then
            [ $status -ne 0 ] && [ $status -lt 128 ]
        else
            [ $status -eq 75 ]
        fi && [ $elapsed -le 10 ] && [ -z "$(pgrep -f "$marker")" ]
        ok $? "MPI, SIGTERM to $target: every process ends within $elapsed s, mpirun status $status"
        [ "$(grep -c '^frost: stopped by a signal after step' "$err")" -eq 1 ] &&
            grep -q "checkpoint written to $ck" "$err"
        ok $? "MPI, SIGTERM to $target: one message names the checkpoint"
        step=$(sed -n 's/^frost: stopped by a signal after step \([0-9]*\);.*/\1/p' "$err")
        [ -n "$step" ] && [ "$(step_of "$ck")" = "$step" ] &&
            [ -z "$(find "$WORK" -name 'sigmpi.st.tmp.*')" ]
        ok $? "MPI, SIGTERM to $target: a single checkpoint, at the step the ranks stopped at ($step)"
    done
    mpi train --model "$MLP" --data "$D" $COMMON --lr 0.05 --momentum 0.9 --steps $((step + 5)) \
        --resume "$ck" --save "$WORK/sigmpi-done.st" > "$WORK/sigmpi-resume.log" 2>&1 &&
        grep -q "^done: $((step + 5)) steps" "$WORK/sigmpi-resume.log"
    ok $? "MPI: the checkpoint resumes on 2 ranks and the run completes"
    # --resume-if-exists where rank 0 sees the checkpoint and rank 1 does not
    # (two --checkpoint paths stand for a file on a node-local disk): one
    # message, every rank stops, nobody trains from the wrong start.
    rm -f "$WORK/absent.st"
    timeout 120 $MPIRUN --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 \
        -np 1 "$FROST" train --model "$MLP" --data "$D" $COMMON --steps 40 \
        --checkpoint "$WORK/sgd-ck.st" --resume-if-exists --save "$WORK/refused.st" : \
        -np 1 "$FROST" train --model "$MLP" --data "$D" $COMMON --steps 40 \
        --checkpoint "$WORK/absent.st" --resume-if-exists --save "$WORK/refused.st" \
        > "$WORK/rie-mpi.out" 2> "$WORK/rie-mpi.err"
    status=$?
    [ $status -ne 0 ] && [ $status -lt 124 ] &&
        [ "$(grep -c '^frost: --resume-if-exists: .*sgd-ck.st exists for some ranks and not for others' "$WORK/rie-mpi.err")" -eq 1 ] &&
        [ ! -e "$WORK/refused.st" ]
    ok $? "MPI: ranks that disagree on whether the checkpoint exists stop with one message: $(grep '^frost:' "$WORK/rie-mpi.err" | head -n 1)"
else
    i=0
    while [ $i -lt 14 ]; do skip "MPI: no mpirun"; i=$((i + 1)); done
fi

done_testing
