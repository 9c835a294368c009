#!/bin/sh
# cli.sh - the frost command as a user meets it: inspect's format, a short
# training run whose loss falls, eval of the saved weights, the metrics file,
# and one clear error (and no output file) for each kind of bad input.
. "$TOP_SRCDIR/tests/common.sh"

DATA="$WORK/data"
mkdir -p "$DATA"
make_idx "$DATA" 600 3
MLP='fc1 = linear(784, 32); relu; fc2 = linear(32, 10)'
CNN="$TOP_SRCDIR/examples/cnn.txt" # the DESIGN.md model

# ---- inspect
"$FROST" inspect --model "$CNN" --freeze 'conv*' > "$WORK/inspect.txt" 2>&1
ok $? "inspect of the DESIGN.md model succeeds"
grep -qx 'conv1.weight \[32, 1, 3, 3\] 288 frozen' "$WORK/inspect.txt"
ok $? "inspect: conv1.weight line is 'name shape count frozen'"
grep -qx 'fc1.weight \[128, 9216\] 1179648 trainable' "$WORK/inspect.txt"
ok $? "inspect: fc1.weight is trainable with 1179648 values"
[ "$(grep -cE ' (trainable|frozen)$' "$WORK/inspect.txt")" -eq 8 ]
ok $? "inspect: one line per parameter (8)"
grep -qx 'trainable parameters: 1181066 (98.43%)' "$WORK/inspect.txt"
ok $? "inspect: trainable total"
grep -qx 'allreduce bytes per step: 4724264' "$WORK/inspect.txt"
ok $? "inspect: allreduce bytes = 4 x trainable"
"$FROST" inspect --model "$CNN" --freeze '*' --unfreeze fc2 | grep -qx 'allreduce bytes per step: 5160'
ok $? "inspect: --freeze '*' --unfreeze fc2 applies in order"
"$FROST" inspect --model 'input 1 8 8; conv1 = conv2d(1, 4, 3, bias=False); bn1 = batchnorm2d(4); relu; flatten; fc = linear(144, 2)' > "$WORK/inspect-bn.txt" 2>&1
[ "$(sed -n '5,8p' "$WORK/inspect-bn.txt" | tr '\n' '|')" = 'fc.bias [2] 2 trainable|bn1.running_mean [4] 4 buffer|bn1.running_var [4] 4 buffer|bn1.num_batches_tracked [] 1 buffer|' ]
ok $? "inspect: buffers follow the parameters, 'buffer' the last word ($(sed -n '6,8p' "$WORK/inspect-bn.txt" | tr '\n' '|'))"

# ---- train, metrics, save, eval
"$FROST" train --model "$MLP" --data "$DATA" --steps 60 --batch-size 32 --lr 0.1 \
    --momentum 0.9 --log-every 10 --metrics "$WORK/m.csv" --save "$WORK/w.safetensors" \
    --threads 2 > "$WORK/train.txt" 2>&1
ok $? "frost train runs to the end"
head -1 "$WORK/m.csv" | grep -q '^step,epoch,loss,.*samples_per_s,allreduce_bytes'
ok $? "metrics: header names the contract columns"
[ "$(wc -l < "$WORK/m.csv")" -eq 7 ]
ok $? "metrics: one row per logged step (6) after the header"
awk -F, 'NR == 2 { first = $3 } END { exit !($3 < first * 0.7) }' "$WORK/m.csv"
ok $? "the training loss falls (first logged vs last logged)"
grep -Eq '^epoch [0-9]+ step 10/60 loss [0-9.]+ .*samples/s ETA' "$WORK/train.txt"
ok $? "progress lines show epoch, step, loss, samples/s and ETA"
grep -qx 'frozen parameters: 0' "$WORK/train.txt"
ok $? "the summary reports the frozen-parameter check"
# memory: weights W MB, gradients G MB, ... feature cache C MB; T MB in all, peak resident P MB
awk '/^memory: weights [0-9.]+ MB, gradients [0-9.]+ MB, optimizer state [0-9.]+ MB, activations [0-9.]+ MB, dataset [0-9.]+ MB, feature cache [0-9.]+ MB; [0-9.]+ MB in all, peak resident [0-9]+ MB$/ {
        gsub(/[,;]/, ""); sum = $3 + $6 + $10 + $13 + $16 + $20
        if (sum > $22 - 0.35 && sum < $22 + 0.35 && $22 <= $28) found = 1 }
    END { exit !found }' "$WORK/train.txt"
ok $? "the summary splits memory into weights, gradients, optimizer state, activations, dataset and cache, adding up to the total, within the peak ($(grep '^memory' "$WORK/train.txt"))"
acc=$(sed -n 's/^test: loss [0-9.]* accuracy \([0-9.]*\)%.*/\1/p' "$WORK/train.txt")
awk -v a="$acc" 'BEGIN { exit !(a > 50) }'
ok $? "the trained net classifies the test split well above chance ($acc%)"
"$FROST" eval --model "$MLP" --init "$WORK/w.safetensors" --data "$DATA" > "$WORK/eval.txt" 2>&1
ok $? "frost eval of the saved weights succeeds"
grep -q "accuracy $acc%" "$WORK/eval.txt"
ok $? "eval reports the same test accuracy as the end of training"

# Fine-tuning from saved weights with a frozen layer keeps it bit-identical.
"$FROST" train --model "$MLP" --data "$DATA" --init "$WORK/w.safetensors" --freeze fc1 \
    --steps 10 --save "$WORK/w2.safetensors" > "$WORK/ft.txt" 2>&1
ok $? "fine-tuning with --init and --freeze fc1 runs"
grep -q '^frozen parameters: 25120, unchanged' "$WORK/ft.txt"
ok $? "fine-tuning reports 25120 frozen values unchanged"

# A residual net with its trunk frozen, BatchNorms included: those run on
# their running statistics, so the trunk is a fixed function and, in a run
# longer than an epoch (600 samples, 6 steps), its output is cached.
RESNET="$TOP_SRCDIR/examples/resnet_small.txt"
for cache in cache no-cache; do
    flag=
    [ $cache = no-cache ] && flag=--no-cache
    "$FROST" train --model "$RESNET" --data "$DATA" --batch-size 100 --steps 14 --threads 2 \
        --lr 0.05 --momentum 0.9 --freeze conv1 --freeze bn1 --freeze 'layer1*' $flag \
        --save "$WORK/res-$cache.safetensors" > "$WORK/res-$cache.txt" 2>&1
    ok $? "resnet_small with conv1, bn1 and layer1.0 frozen trains ($cache)"
done
# Every sample's 16x14x14 output of the relu after layer1.0: 600 x 3136 x 4 bytes.
grep -qx 'feature cache: 7.2 MB of frozen-prefix outputs' "$WORK/res-cache.txt" &&
    ! grep -q '^feature cache' "$WORK/res-no-cache.txt"
ok $? "a frozen trunk with BatchNorm is cached: $(grep '^feature cache' "$WORK/res-cache.txt")"
cmp -s "$WORK/res-cache.safetensors" "$WORK/res-no-cache.safetensors"
ok $? "with the cache the residual net trains to the weights and buffers of --no-cache, bit for bit"
grep -q '^frozen parameters: 4848, unchanged' "$WORK/res-cache.txt"
ok $? "the frozen trunk, its BatchNorm buffers included, is unchanged"

# ---- bad input: one line 'frost: ...', exit status non-zero, no output file
expect_error() { # expect_error DESCRIPTION PATTERN frost-args...
    desc=$1 pattern=$2
    shift 2
    rm -f "$WORK/out.safetensors"
    "$FROST" "$@" > "$WORK/stdout" 2> "$WORK/stderr"
    status=$?
    [ $status -ne 0 ] && [ "$(wc -l < "$WORK/stderr")" -eq 1 ] &&
        grep -q "^frost: .*$pattern" "$WORK/stderr" && [ ! -e "$WORK/out.safetensors" ]
    ok $? "$desc: $(cat "$WORK/stderr")"
}
printf 'fc1 = linear(784, 10)\nfc2 = lineer(10, 10)\n' > "$WORK/typo.txt"
printf 'conv1 = conv2d(1, 8, 3)\nflatten\nfc1 = linear(100, 10)\n' > "$WORK/shape.txt"
printf 'not a safetensors file' > "$WORK/bad.safetensors"
expect_error "unknown command" "unknown command" fly
expect_error "unknown flag" "unknown option '--lrate'" train --model "$MLP" --lrate 1
expect_error "flag without value" "--lr needs a value" train --model "$MLP" --lr
expect_error "non-numeric value" "--batch-size 'ten'" train --model "$MLP" --batch-size ten
expect_error "out-of-range value" "--batch-size 0" train --model "$MLP" --batch-size 0
expect_error "missing --model" "needs --model" train --data "$DATA"
expect_error "model file typo names file and line" "typo.txt:2: unknown layer kind 'lineer'" \
    train --model "$WORK/typo.txt" --data "$DATA" --save "$WORK/out.safetensors"
expect_error "shape mismatch names both layers and shapes" "fc1: linear(100, 10) .*5408.*'1' (flatten)" \
    train --model "$WORK/shape.txt" --data "$DATA"
expect_error "missing model file" "nothere.txt: no such model file" inspect --model nothere.txt
expect_error "pattern matching nothing" "--freeze pattern 'conv\*' matches no parameter" \
    train --model "$MLP" --data "$DATA" --freeze 'conv*' --save "$WORK/out.safetensors"
expect_error "corrupt --init file" "bad.safetensors" \
    train --model "$MLP" --data "$DATA" --init "$WORK/bad.safetensors" --save "$WORK/out.safetensors"
expect_error "weights of another model" "fc1.weight" \
    eval --model 'fc1 = linear(784, 16); relu; fc2 = linear(16, 10)' --init "$WORK/w.safetensors" --data "$DATA"
expect_error "missing data directory" "nodata" train --model "$MLP" --data "$WORK/nodata"
expect_error "labels beyond the model's outputs" "out of range" \
    train --model 'fc1 = linear(784, 4)' --data "$DATA" --save "$WORK/out.safetensors"
expect_error "unwritable --save path, before training" "does not exist" \
    train --model "$MLP" --data "$DATA" --save "$WORK/no/such/dir/w.safetensors"
expect_error "eval without --init" "needs --init" eval --model "$MLP" --data "$DATA"
expect_error "unknown optimizer" "expected sgd, adam or adamw" train --model "$MLP" --optimizer rmsprop
expect_error "bad --classes" "--classes: class list '3-x'" train --model "$MLP" --data "$DATA" --classes 3-x

"$FROST" --help | grep -q 'usage: frost train'
ok $? "frost --help prints usage"

# ---- a step that also evaluates logs its own accuracy: the test set's last
# batch (150 = 4 x 32 + 22) must not stand in for the step's 32 samples
for e in eval noeval; do
    flag=
    [ $e = eval ] && flag="--eval-every 2"
    "$FROST" train --model "$MLP" --data "$DATA" --steps 4 --batch-size 32 --log-every 2 $flag \
        --metrics "$WORK/acc-$e.csv" > "$WORK/acc-$e.txt" 2>&1
done
[ "$(cut -d, -f1-4 "$WORK/acc-eval.csv")" = "$(cut -d, -f1-4 "$WORK/acc-noeval.csv")" ] &&
    ! grep -Eq 'acc (1[0-9][0-9]|[2-9][0-9][0-9])\.' "$WORK/acc-eval.txt"
ok $? "with --eval-every the steps that evaluate log the accuracy they logged without ($(grep -o 'acc [0-9.]*%' "$WORK/acc-eval.txt" | tr '\n' ' '))"

done_testing
