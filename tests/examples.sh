#!/bin/sh
# examples.sh - the three freezing examples (examples/freeze_*.c) run to the
# end, report requires_grad for every parameter in named_parameters() order
# exactly as PyTorch would print it, and confirm that training left the frozen
# parameters bit-identical and moved the trainable ones; and
# examples/resnet_finetune.sh and examples/staged_finetune.sh, with a few
# steps on a small dataset, and examples/text_finetune.sh in its QUICK mode on
# Debian's fortunes, run to their tables.
. "$TOP_SRCDIR/tests/common.sh"
plan 16

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

# text_finetune.sh QUICK=1: a GPT of 2 blocks of 32 pretrained on fortunes for
# 4 steps, the topic classifier three ways and the language model on one topic
# for 3 steps each: the table's rows (trainable parameters, 4 bytes each per
# step: the head 32 x 4 + 4; + h.1 and ln_f; everything) and 2b's losses.
FORTUNES=/usr/share/games/fortunes
if [ ! -f "$FORTUNES/definitions" ] || [ ! -f "$FORTUNES/startrek" ]; then
    skip "no fortune files in $FORTUNES (apt-get install fortunes)"
    skip "no fortune files in $FORTUNES (apt-get install fortunes)"
else
    FROST="$FROST" FORTUNES="$FORTUNES" THREADS=2 QUICK=1 \
        sh "$TOP_SRCDIR/examples/text_finetune.sh" > "$WORK/text.out" 2> "$WORK/text.err"
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/text.err"
    ok $status "text_finetune.sh QUICK=1 exits with status 0 ($(tail -n 1 "$WORK/text.out"))"
    found=0
    for row in '^head only +132 +528 +[0-9.]+ +[0-9]+ +[0-9.]+%$' \
        '^h\.1 \+ ln_f \+ head +12900 +51600 +[0-9.]+ +[0-9]+ +[0-9.]+%$' \
        '^everything +34820 +139280 +[0-9.]+ +[0-9]+ +[0-9.]+%$' \
        '^LoRA r 8 \+ head +8324 +33296 +[0-9.]+ +[0-9]+ +[0-9.]+%$' \
        '^\.\.\. bf16 base +8324 +33296 +[0-9.]+ +[0-9]+ +[0-9.]+%$' \
        '^test loss before [0-9.]+, after [0-9.]+ '; do
        grep -Eq "$row" "$WORK/text.out" && found=$((found + 1))
    done
    [ $found -eq 6 ]
    ok $? "text_finetune.sh prints the five classification rows (LoRA's adapters and head alone on the wire) and the losses before and after: $(grep -E '^(head only|h\.1|everything|LoRA|\.\.\.|test loss before)' "$WORK/text.out" | tr -s ' ' | tr '\n' ';')"
fi

done_testing
