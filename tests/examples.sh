#!/bin/sh
# examples.sh - the three freezing examples (examples/freeze_*.c) run to the
# end, report requires_grad for every parameter in named_parameters() order
# exactly as PyTorch would print it, and confirm that training left the frozen
# parameters bit-identical and moved the trainable ones; and
# examples/resnet_finetune.sh and examples/staged_finetune.sh, with a few
# steps on a small dataset, run to their tables.
. "$TOP_SRCDIR/tests/common.sh"
plan 14

# check_example NAME 'EXPECTED REQUIRES_GRAD LINES' 'EXPECTED FINAL LINE'
check_example() {
    name=$1 expected=$2 final=$3
    # `make` builds the examples: one missing is a failure, not a skip.
    if [ ! -x "$EXAMPLES/$name" ]; then
        ok 1 "$name exits with status 0 ($EXAMPLES/$name was not built)"
        ok 1 "$name prints requires_grad for every parameter (not built)"
        ok 1 "$name ends with '$final' (not built)"
        return
    fi
    "$EXAMPLES/$name" > "$WORK/$name.out" 2> "$WORK/$name.err"
    status=$?
    ok $status "$name exits with status 0"
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/$name.err"
    grep ' requires_grad: ' "$WORK/$name.out" > "$WORK/$name.grad"
    printf '%s\n' "$expected" | cmp -s - "$WORK/$name.grad"
    ok $? "$name prints requires_grad for every parameter, in order: $(printf '%s' "$expected" |
        sed 's/ requires_grad: /=/' | tr '\n' ' ')"
    [ "$(tail -n 1 "$WORK/$name.out")" = "$final" ]
    ok $? "$name ends with '$final'"
}

check_example freeze_all \
'fc1.weight requires_grad: False
fc1.bias requires_grad: False
fc2.weight requires_grad: False
fc2.bias requires_grad: False' \
'frozen parameters unchanged, no trainable parameters'

# With nothing to train a step is forward only, so the loss cannot move.
[ -s "$WORK/freeze_all.out" ] &&
    [ "$(sed -n 's/^step [0-9]* loss //p' "$WORK/freeze_all.out" | sort -u | wc -l)" -eq 1 ]
ok $? "freeze_all: a fully frozen model gives the same loss at every step"

check_example freeze_layer \
'fc1.weight requires_grad: False
fc1.bias requires_grad: False
fc2.weight requires_grad: True
fc2.bias requires_grad: True' \
'frozen parameters unchanged, trainable parameters changed'

check_example freeze_pattern \
'conv1.weight requires_grad: False
conv1.bias requires_grad: False
conv2.weight requires_grad: False
conv2.bias requires_grad: False
fc1.weight requires_grad: True
fc1.bias requires_grad: True
fc2.weight requires_grad: True
fc2.bias requires_grad: True' \
'frozen parameters unchanged, trainable parameters changed'

# resnet_finetune.sh: pretrain on 0-4, fine-tune with the trunk frozen, from
# scratch, evaluate: a few steps each on make_idx's data.
mkdir -p "$WORK/data" && make_idx "$WORK/data" 200 3
FROST="$FROST" DATA="$WORK/data" STEPS=4 PRETRAIN_STEPS=4 BATCH=16 THREADS=2 \
    sh "$TOP_SRCDIR/examples/resnet_finetune.sh" > "$WORK/resnet.out" 2> "$WORK/resnet.err"
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/resnet.err"
ok $status "resnet_finetune.sh exits with status 0"
# The fine-tuning row: 4 steps, conv1, bn1 and layer1.0 (4,848 parameters) frozen.
grep -Eq '^fine-tune on 5-9, conv1 bn1 layer1\* frozen +4 +14858 +[0-9.]+ +[0-9.]+% \(5-9\)$' \
    "$WORK/resnet.out"
ok $? "resnet_finetune.sh prints the fine-tuning row: $(grep '^fine-tune' "$WORK/resnet.out")"

# staged_finetune.sh: 3 steps a stage, under mpirun -np 2 when there is one:
# the staged row shows each phase's bytes per step (4 x 330, 14858, 19706).
if [ -n "${MPIRUN:-}" ]; then ranks=2 bytes='1320 / 59432 / 78824'; else ranks=1 bytes=0; fi
FROST="$FROST" DATA="$WORK/data" STAGE_STEPS=3 PRETRAIN_STEPS=4 BATCH=16 RANKS=$ranks \
    MPIRUN="${MPIRUN:-mpirun}" sh "$TOP_SRCDIR/examples/staged_finetune.sh" \
    > "$WORK/staged.out" 2> "$WORK/staged.err"
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/staged.err"
ok $status "staged_finetune.sh exits with status 0 ($ranks rank(s))"
grep -Eq "^staged: fc, \+layer2.0 after 3, \+all after 6 +9 +330->19706 +[0-9.]+ +$bytes +[0-9.]+%$" \
    "$WORK/staged.out"
ok $? "staged_finetune.sh prints the staged row, bytes per step by phase '$bytes': $(grep '^staged' "$WORK/staged.out")"

done_testing
