# common.sh - shared by the shell tests: TAP output, temp dirs, small data.
#
# Sourced by tests/*.sh.  The environment (Makefile.am's AM_TESTS_ENVIRONMENT)
# gives FROST, EXAMPLES, TOP_SRCDIR, MPIRUN and PYTHON3.
set -u
: "${FROST:=$(pwd)/src/frost}"
: "${TOP_SRCDIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${PYTHON3:=python3}"
tap_n=0
tap_failed=0
tap_planned=
# plan N: declares, before the first check, how many checks the test runs; a
# test that stops early or a loop that runs fewer times than it should then
# fails instead of passing with what it happened to count.
plan() { tap_planned=$1; echo "1..$1"; }
ok() { # ok CONDITION-EXIT-STATUS MESSAGE
    tap_n=$((tap_n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $tap_n - $2"; else echo "not ok $tap_n - $2"; tap_failed=$((tap_failed + 1)); fi
}
skip() { tap_n=$((tap_n + 1)); echo "ok $tap_n # SKIP $1"; }
diag() { echo "# $*"; }
# done_testing: exit 0 only if every check passed, as many as planned (without
# a plan: at least one; the plan is then printed here).
done_testing() {
    if [ -n "$tap_planned" ]; then
        if [ "$tap_n" -ne "$tap_planned" ]; then
            diag "planned $tap_planned checks but ran $tap_n"
            exit 1
        fi
    else
        [ "$tap_n" -gt 0 ] || ok 1 "the test ran at least one check"
        echo "1..$tap_n"
    fi
    [ "$tap_failed" -eq 0 ]
    exit $?
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/frost-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Open MPI's session directories (a singleton's too) under this test's own
# directory: tests running side by side (make -j2 check) then never meet in
# /tmp/ompi.HOST.UID, where one job's cleanup could remove the directory
# another was creating a job's subdirectory in.
OMPI_MCA_orte_tmpdir_base=$WORK
export OMPI_MCA_orte_tmpdir_base
# make_idx DIR N [SEED] [CLASSES]: a small Fashion-MNIST-shaped dataset (28x28,
# labels 0..CLASSES-1) whose classes are learnable, train and t10k pairs, gzip'd.
make_idx() { "$PYTHON3" "$TOP_SRCDIR/tests/make_idx.py" "$@"; }
# layout_fixture: what the layout tests (threads.sh, mpi_layouts.sh) share:
# MODEL (tests/layout_model.txt), 502 samples in $WORK/data (10 batches of 50
# and one of 2 per epoch) and the seeded initial weights in
# $WORK/init.safetensors, checked as one TAP line.
layout_fixture() {
    MODEL=$TOP_SRCDIR/tests/layout_model.txt
    mkdir -p "$WORK/data"
    make_idx "$WORK/data" 502 5
    # The seeded initial weights (a run that does not move them).
    "$FROST" train --model "$MODEL" --data "$WORK/data" --steps 1 --lr 0 --seed 11 \
        --save "$WORK/init.safetensors" > "$WORK/init.out" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/init.out"
    ok $status "the test model trains; a run with --lr 0 writes the seeded initial weights"
}
# Format-1.0 .npy files (what frost tokenize writes) read with od alone:
# npy_header_bytes FILE: the bytes before the data; npy_dict FILE: the header's
# dict, padding left out; npy_ids FILE OD_TYPE (d4, u2, d8): the data, one
# value a line.
npy_header_bytes() { echo $((10 + $(od -An -t u2 -j 8 -N 2 "$1" | tr -d ' '))); }
npy_dict() { head -c "$(npy_header_bytes "$1")" "$1" | tail -c +11 | tr -d '\n' | sed 's/ *$//'; }
npy_ids() { od -An -v -t "$2" -j "$(npy_header_bytes "$1")" "$1" | tr -s ' ' '\n' | sed '/^$/d'; }

# PY: a Python with torch and numpy (Debian's python3-torch is /usr/bin/python3's,
# tried first, then $PYTHON3); without one every one of the $CHECKS checks is
# skipped and the test ends.
torch_python_or_skip_all() {
    PY=
    for candidate in /usr/bin/python3 "$PYTHON3"; do
        if [ -n "$candidate" ] && "$candidate" -c 'import torch, numpy' >/dev/null 2>&1; then
            PY=$candidate
            return 0
        fi
    done
    i=0
    while [ $i -lt "$CHECKS" ]; do skip "torch or numpy not installed"; i=$((i + 1)); done
    done_testing
}
