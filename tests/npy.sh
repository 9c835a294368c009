#!/bin/sh
# npy.sh - frost train and eval on NumPy .npy data, as a user meets them:
# the same data as .npy (uint8, 3-D and 4-D, gzip'd, float32) trains bit for
# bit as it does as IDX; NHWC data with --data-layout nhwc trains as the NCHW
# copy; --normalize is the arithmetic done beforehand, frozen-prefix feature
# cache included; eval reads the test split; a resume must keep --normalize.
# (Every kind of bad .npy file is a row of tests/errors.sh.)
. "$TOP_SRCDIR/tests/common.sh"

# One process per run: no Open MPI runtime daemon, in-process transport only
# (as tests/errors.sh does; ignored by other MPIs and --without-mpi).
OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self
OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx
export OMPI_MCA_ess_singleton_isolated OMPI_MCA_pml OMPI_MCA_btl OMPI_MCA_mtl OMPI_MCA_osc

plan 22
IDX="$WORK/idx"
mkdir -p "$IDX"
make_idx "$IDX" 300 3
make_npy() { "$PYTHON3" "$TOP_SRCDIR/tests/make_npy.py" "$@"; }
make_npy "$IDX" "$WORK/u8" &&
    make_npy "$IDX" "$WORK/u8_nchw" --layout nchw --version 2 --labels i4 --gzip &&
    make_npy "$IDX" "$WORK/f32" --dtype float32 --version 3 --labels u1 &&
    make_npy "$IDX" "$WORK/f32_norm" --dtype float32 --normalize 0.5,0.25 &&
    make_npy "$IDX" "$WORK/rgb_nchw" --layout nchw --channels 3 &&
    make_npy "$IDX" "$WORK/rgb_nhwc" --layout nhwc --channels 3 --version 2
ok $? "tests/make_npy.py writes the IDX data as .npy files: uint8 3-D and 4-D, float32, normalised, 3 channels NCHW and NHWC"

MLP='fc1 = linear(784, 32); relu; fc2 = linear(32, 10)'
RGB='input 3 28 28; conv1 = conv2d(3, 4, 3); relu; maxpool2d(2); flatten; fc = linear(676, 10)'
# train NAME ARGS...: a short run saving $WORK/NAME.st, its output in $WORK/NAME.out.
train() {
    name=$1
    shift
    "$FROST" train --steps 12 --batch-size 32 --lr 0.1 --momentum 0.9 --seed 5 \
        --save "$WORK/$name.st" "$@" > "$WORK/$name.out" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/$name.out"
    return $status
}
# same A B: the two runs saved the same weights and reported the same test line.
same() {
    cmp -s "$WORK/$1.st" "$WORK/$2.st" &&
        [ "$(grep '^test:' "$WORK/$1.out")" = "$(grep '^test:' "$WORK/$2.out")" ]
}

# ---- the same data as IDX and as .npy: the same run, bit for bit
train idx --model "$MLP" --data "$IDX"
ok $? "the run on IDX data ends"
train u8 --model "$MLP" --data "$WORK/u8"
ok $? "the run on uint8 (N, H, W) .npy files with int64 labels ends"
same idx u8
ok $? "uint8 (N, H, W) .npy trains bit for bit as the same IDX data (weights and test line)"
train u8_nchw --model "$MLP" --data "$WORK/u8_nchw"
same idx u8_nchw
ok $? "uint8 (N, 1, H, W) .npy.gz files (format 2.0, int32 labels) train bit for bit as IDX"
train f32 --model "$MLP" --data "$WORK/f32"
same idx f32
ok $? "float32 images holding p / 255 (format 3.0, uint8 labels) train bit for bit as IDX"
grep -q "^frost .* 300 training samples" "$WORK/u8.out"
ok $? "the header counts the .npy training samples"

# ---- 3 channels: NHWC with --data-layout nhwc is the NCHW data
train rgb_nchw --model "$RGB" --data "$WORK/rgb_nchw"
ok $? "a 3-channel CNN trains on (N, C, H, W) .npy data"
train rgb_nhwc --model "$RGB" --data "$WORK/rgb_nhwc" --data-layout nhwc
same rgb_nchw rgb_nhwc
ok $? "(N, H, W, C) data with --data-layout nhwc trains bit for bit as the (N, C, H, W) copy"
"$FROST" train --model "$RGB" --data "$WORK/rgb_nhwc" --steps 1 --save "$WORK/none.st" \
    > "$WORK/wrong.out" 2> "$WORK/wrong.err"
[ $? -ne 0 ] && [ "$(wc -l < "$WORK/wrong.err")" -eq 1 ] && [ ! -e "$WORK/none.st" ] &&
    grep -q "^frost: .*rgb_nhwc/train_x.npy: images are 28x28x3 (C x H x W), the model's input is 3x28x28 (N, H, W, C data? give --data-layout nhwc)$" "$WORK/wrong.err"
ok $? "NHWC data without --data-layout is refused before training, with the hint: $(cat "$WORK/wrong.err")"

# ---- --normalize: the same arithmetic as normalising beforehand; the
# frozen-prefix feature cache (fc1 frozen, 2 epochs) is built from it
train idx_norm --model "$MLP" --data "$IDX" --normalize 0.5,0.25 --freeze fc1 --epochs 2 --steps 20
ok $? "IDX data with --normalize 0.5,0.25 and a frozen fc1 trains"
train pre_norm --model "$MLP" --data "$WORK/f32_norm" --freeze fc1 --epochs 2 --steps 20
same idx_norm pre_norm
ok $? "--normalize 0.5,0.25 trains bit for bit as float32 .npy data normalised beforehand"
grep -q '^feature cache: ' "$WORK/idx_norm.out" && grep -q '^feature cache: ' "$WORK/pre_norm.out"
ok $? "both runs went through the frozen-prefix feature cache"
! cmp -s "$WORK/idx.st" "$WORK/idx_norm.st"
ok $? "--normalize changes the run"
train rgb_norm --model "$RGB" --data "$WORK/rgb_nhwc" --data-layout nhwc \
    --normalize '0.49,0.25; 0.48,0.24;0.45,0.26'
ok $? "--normalize takes one pair per channel of 3-channel NHWC data"

# ---- eval reads the test split, with the same transformations
"$FROST" eval --model "$MLP" --data "$WORK/u8" --init "$WORK/u8.st" > "$WORK/eval.out" 2>&1
[ "$(grep '^test:' "$WORK/eval.out")" = "$(grep '^test:' "$WORK/u8.out")" ]
ok $? "eval on test_x.npy/test_y.npy reports the test line of the end of training"
"$FROST" eval --model "$MLP" --data "$IDX" --normalize 0.5,0.25 --init "$WORK/idx_norm.st" \
    > "$WORK/eval_norm.out" 2>&1
[ "$(grep '^test:' "$WORK/eval_norm.out")" = "$(grep '^test:' "$WORK/idx_norm.out")" ]
ok $? "eval --normalize reports the test line of the end of the normalised training"
"$FROST" eval --model "$RGB" --data "$WORK/rgb_nhwc" --data-layout nhwc \
    --normalize '0.49,0.25;0.48,0.24;0.45,0.26' --init "$WORK/rgb_norm.st" > "$WORK/eval_rgb.out" 2>&1
[ "$(grep '^test:' "$WORK/eval_rgb.out")" = "$(grep '^test:' "$WORK/rgb_norm.out")" ]
ok $? "eval --data-layout nhwc --normalize (3 pairs) reports the training's test line"

# ---- a checkpoint records --normalize; a resume must give the same values
"$FROST" train --model "$MLP" --data "$WORK/u8" --normalize 0.5,0.25 --steps 4 \
    --checkpoint "$WORK/ck.st" > "$WORK/ck.out" 2>&1
ok $? "a run with --normalize writes a checkpoint"
"$FROST" train --model "$MLP" --data "$WORK/u8" --normalize ' 0.50, 0.250' --steps 6 \
    --resume "$WORK/ck.st" > "$WORK/resumed.out" 2>&1 &&
    grep -q "^resumed from .*ck.st at step 4" "$WORK/resumed.out"
ok $? "the same values written another way resume"
"$FROST" train --model "$MLP" --data "$WORK/u8" --normalize 0.4,0.25 --steps 6 \
    --resume "$WORK/ck.st" > /dev/null 2> "$WORK/other.err"
[ $? -ne 0 ] && grep -q "^frost: .*ck.st: the checkpoint was written with --normalize 0.5,0.25, this run has 0.400000006,0.25$" "$WORK/other.err"
ok $? "other values are refused: $(cat "$WORK/other.err")"
"$FROST" train --model "$MLP" --data "$WORK/u8" --steps 6 --resume "$WORK/ck.st" \
    > /dev/null 2> "$WORK/none.err"
[ $? -ne 0 ] && grep -q "^frost: .*ck.st: the checkpoint was written with --normalize 0.5,0.25, this run has none$" "$WORK/none.err"
ok $? "leaving --normalize out is refused: $(cat "$WORK/none.err")"

done_testing
