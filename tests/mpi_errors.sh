#!/bin/sh
# mpi_errors.sh - a failure on one rank ends the whole job quickly, with that
# rank's one-line message from rank 0, a non-zero exit status and no output
# files (DESIGN.md; fr_comm_agree, fr_comm_check_run).  Ranks get different
# command lines through mpirun's MPMD syntax (-np 1 A : -np 1 B).
#
# Built --without-mpi (MPIRUN empty), frost must refuse to run as one of
# several ranks that a launcher started ("built without MPI").
. "$TOP_SRCDIR/tests/common.sh"

# ------------------------------------------------- a build without MPI
# config.h says which build this is; without it, an empty MPIRUN means
# --without-mpi.
config_h=$(dirname "$FROST")/../config.h
if [ -f "$config_h" ]; then
    grep -q '^#define HAVE_MPI 1' "$config_h" && have_mpi=yes || have_mpi=no
else
    [ -n "${MPIRUN:-}" ] && have_mpi=yes || have_mpi=no
fi

if [ $have_mpi = no ]; then
    # refused VAR=VALUE DESCRIPTION: frost inspect under that launcher variable fails.
    refused() {
        env "$1" "$FROST" inspect --model 'fc1 = linear(784, 10)' > "$WORK/nompi.out" 2> "$WORK/nompi.err"
        status=$?
        [ $status -ne 0 ] && grep -q '^frost: .*built without MPI' "$WORK/nompi.err" &&
            [ ! -s "$WORK/nompi.out" ]
        ok $? "without MPI, $2 ($1) is refused: non-zero exit, 'built without MPI' (exit $status, stderr: $(head -n 1 "$WORK/nompi.err"))"
    }
    refused OMPI_COMM_WORLD_SIZE=2 "Open MPI's mpirun starting 2 ranks"
    refused PMI_SIZE=4 "a PMI launcher (srun, mpiexec.hydra) starting 4 ranks"
    refused PMIX_SIZE=3 "a PMIx launcher starting 3 ranks"
    OMPI_COMM_WORLD_SIZE=1 "$FROST" inspect --model 'fc1 = linear(784, 10)' > "$WORK/nompi.out" 2>&1
    ok $? "without MPI, a launcher starting a single rank (OMPI_COMM_WORLD_SIZE=1) is fine"
    # A real mpirun, when one is installed anyway.
    launcher=$(command -v mpirun 2> /dev/null)
    if [ -n "$launcher" ]; then
        timeout -k 10 60 "$launcher" --allow-run-as-root --oversubscribe -np 2 \
            "$FROST" inspect --model 'fc1 = linear(784, 10)' > "$WORK/nompi.out" 2> "$WORK/nompi.err"
        status=$?
        [ $status -ne 0 ] && grep -q '^frost: .*built without MPI' "$WORK/nompi.err"
        ok $? "without MPI, 'mpirun -np 2 frost' is refused: non-zero exit, 'built without MPI' (exit $status)"
    else
        skip "no mpirun on PATH to start a build without MPI under"
    fi
    skip "frost was built without MPI: the multi-rank failure tests need mpirun"
    done_testing
fi
if [ -z "${MPIRUN:-}" ]; then
    skip "frost was built with MPI but configure found no mpirun"
    done_testing
fi
skip "frost was built with MPI: the 'built without MPI' refusal needs a --without-mpi build"

# --------------------------------------------------------- many ranks
cat > "$WORK/model.txt" <<'EOF'
input 1 28 28
conv1 = conv2d(1, 4, 3)
relu
maxpool2d(2)
flatten
fc1 = linear(676, 16)
relu
fc2 = linear(16, 10)
EOF
MODEL=$WORK/model.txt
mkdir -p "$WORK/data" "$WORK/small" "$WORK/empty" "$WORK/out"
make_idx "$WORK/data" 256 5
make_idx "$WORK/small" 200 5
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
COMMON="--model $MODEL --data $WORK/data --batch-size 32 --steps 6 --seed 3 --lr 0.05"
# Seconds a failing job may take; a sanitizer build exits each MPI process
# seconds more slowly (LeakSanitizer's exit scan), and .ci/run says so.
LIMIT=$((20 * ${FROST_TEST_SLOWDOWN:-1}))
TIMEOUT=60  # seconds after which mpirun is killed

# Weights files for --init: two different seeded initialisations.
for seed in 1 2; do
    "$FROST" train --model "$MODEL" --data "$WORK/data" --steps 1 --lr 0 --seed $seed \
        --save "$WORK/init$seed.safetensors" > /dev/null 2>&1
done
[ -f "$WORK/init1.safetensors" ] && [ -f "$WORK/init2.safetensors" ]
ok $? "two initial weights files for --init are written"

# mpmd NAME "RANK 0 FLAGS" "RANK 1 FLAGS": 2 ranks, every one with --save and
# --metrics into $WORK/out; sets status and elapsed.  (Flags are split on
# spaces: none of the paths here has one.)
mpmd() {
    rm -f "$WORK/out/"*
    began=$(date +%s)
    timeout -k 5 $TIMEOUT "$MPIRUN" $MPI_FLAGS \
        -np 1 "$FROST" train $COMMON --save "$WORK/out/w.safetensors" --metrics "$WORK/out/m.csv" $2 : \
        -np 1 "$FROST" train $COMMON --save "$WORK/out/w.safetensors" --metrics "$WORK/out/m.csv" $3 \
        > "$WORK/$1.out" 2> "$WORK/$1.err"
    status=$?
    elapsed=$(($(date +%s) - began))
}

# fails NAME DESCRIPTION 'EXPECTED MESSAGE (grep -E)' "RANK 0 FLAGS" "RANK 1 FLAGS"
# The job must end with a non-zero exit (not killed) within $LIMIT s, rank 0
# must print exactly one 'frost: ...' line holding the message, there must be
# no 'done:' summary and no --save or --metrics file.
fails() {
    name=$1 what=$2 message=$3
    mpmd "$name" "$4" "$5"
    line=$(grep '^frost: ' "$WORK/$name.err" | head -n 1)
    files=$(ls -A "$WORK/out" | tr '\n' ' ')
    [ $status -ne 0 ] && [ $status -ne 124 ] && [ $status -ne 137 ] && [ $elapsed -lt $LIMIT ]
    ended=$?
    printf '%s\n' "$line" | grep -q -E -e "$message"
    said=$?
    [ "$(grep -c '^frost: ' "$WORK/$name.err")" -eq 1 ] &&
        ! grep -q '^done: ' "$WORK/$name.out" && [ -z "$files" ]
    clean=$?
    ok $ended "$what: the job ends with a non-zero exit within $LIMIT s (exit $status after $elapsed s)"
    [ $ended -eq 0 ] || sed 's/^/#   /' "$WORK/$name.err" | head -n 20
    ok $said "$what: rank 0 reports '$message' (got: ${line:-nothing})"
    ok $clean "$what: exactly one 'frost:' error line, no 'done:' summary, no --save or --metrics file written (files: '$files')"
}

# First, the same command on both ranks works and writes its files once.
mpmd good "" ""
[ $status -eq 0 ] && [ -f "$WORK/out/w.safetensors" ] && [ -f "$WORK/out/m.csv" ]
ok $? "2 ranks with the same command train and write --save and --metrics (exit $status)"
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/good.err"
[ "$(grep -c '^done: ' "$WORK/good.out")" -eq 1 ] && [ "$(grep -c '^test: ' "$WORK/good.out")" -eq 1 ]
ok $? "with 2 ranks only rank 0 prints: exactly one 'done:' and one 'test:' line"

fails freeze "a rank with another frozen set (--freeze fc1 on rank 0 only)" \
    "ranks disagree on the frozen set" "--freeze fc1" ""
fails lr "a rank with another --lr" "ranks disagree on the hyper-parameters" "" "--lr 0.1"
fails momentum "a rank with another --momentum" "ranks disagree on the hyper-parameters" \
    "--momentum 0.9" ""
fails steps "a rank with another --steps" "ranks disagree on the hyper-parameters" "" "--steps 7"
fails size "a rank with a dataset of another size" "ranks disagree on the (dataset|training set) size" \
    "" "--data $WORK/small"
fails nodata "rank 1 with a --data directory that has no files" \
    "rank 1: $WORK/empty/train-images-idx3-ubyte" "" "--data $WORK/empty"
fails badflag "rank 1 with an unparsable option" "rank 1: --lr 'abc': expected a number" "" "--lr abc"
fails pattern "rank 1 with a freeze pattern that matches nothing" \
    "rank 1: --freeze pattern 'fc9' matches no parameter" "" "--freeze fc9"
fails noinit "rank 1 with a missing --init file" "rank 1: $WORK/nothing.safetensors" \
    "--init $WORK/init1.safetensors" "--init $WORK/nothing.safetensors"
fails otherinit "ranks with different --init weights" "ranks disagree on the --init weights" \
    "--init $WORK/init1.safetensors" "--init $WORK/init2.safetensors"
fails savedir "rank 0 with a --save directory that does not exist" \
    "$WORK/missing/w.safetensors: directory $WORK/missing does not exist" \
    "--save $WORK/missing/w.safetensors" ""

# Settings that decide which collectives a rank calls must be compared before
# the first of them: otherwise the ranks hang, or a short MPI_Bcast of the
# weights into another model corrupts memory.
fails model "a rank with another model" "ranks disagree on the model \(parameter names and shapes\)" \
    "" "--model fc1=linear(784,10)"
fails logevery "a rank with another --log-every (when weights are checked)" "ranks disagree on the " \
    "--log-every 1" "--log-every 3"
fails initone "--init on rank 0 only (rank 1 would wait for a broadcast)" "ranks disagree on the " \
    "--init $WORK/init1.safetensors" ""

done_testing
