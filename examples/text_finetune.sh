#!/bin/sh
# text_finetune.sh - a small byte-level GPT on real text (Debian's fortunes),
# pretrained and then fine-tuned with parts of it frozen, in minutes on 2 cores.
#
#   1. pretrain a GPT (bytes, LAYERS blocks of WIDTH, HEADS heads) as a
#      language model on a few fortune topics (PRETRAIN_TOPICS);
#   2a. classify which topic a quotation comes from (CLASS_TOPICS, one class
#      a file, frost tokenize --label-per-file): the pretrained trunk, its
#      final layer norm, the mean over positions (pool_sequence) and a new
#      linear head, trained three ways for CLASS_STEPS steps:
#        head only        everything frozen but the head;
#        last block+head  the last block, ln_f and the head train;
#        everything       nothing frozen;
#        LoRA + head      rank-8 LoRA adapters on every block's c_attn, c_proj
#                         and c_fc (PEFT's semantics: the base frozen), the
#                         new head trained fully beside them;
#        ... bf16 base    the same with the frozen base kept in bf16
#                         (--frozen-dtype bf16);
#   2b. fine-tune the language model on one more topic (LM_TOPIC) with wte (so
#      the tied lm_head), wpe and every block but the last frozen; the test
#      loss on that topic before (frost eval) and after, and a sample of each
#      (frost generate);
#   3. print a table of the five classification runs (test accuracy, time,
#      trainable parameters, allreduce bytes per step) and 2b's losses.
#
# The topics of the three steps are disjoint by default, so neither the
# classifier's test quotations nor 2b's test text were seen in pretraining.
# The classes differ in form as well as in subject (definitions are
# 'word, n.: ...', Zippy the Pinhead's lines are his own); topics that differ
# in subject only (art politics science work) stay near the largest class's
# share at this size and step count (bench/README.md).
#
# The language model is built from a Hugging Face config.json, which frost
# initialises as Hugging Face does (N(0, 0.02)); a model text would start wte,
# and so the tied head, at nn.Embedding's N(0, 1), an initial loss near 85
# instead of ln 256 = 5.5.  The classifier is a model text: the same trunk
# under the same names, then pool_sequence and the head.
#
# The pretrained file has no head: `--init pre.safetensors --init-new head`
# takes every other parameter from it and leaves the head at its seeded
# initialisation (PyTorch's model.load_state_dict(pretrained, strict=False)).
#
# Usage: sh examples/text_finetune.sh [NAME=VALUE]...  (or set them in the environment)
#   FROST           the frost binary (default: src/frost of this tree, else frost on PATH)
#   FORTUNES        the fortune files (default /usr/share/games/fortunes; Debian's fortunes)
#   PRETRAIN_TOPICS topics of the language model (default 'computers people songs-poems wisdom')
#   CLASS_TOPICS    the classes of 2a (default 'definitions science work zippy')
#   LM_TOPIC        the topic of 2b (default startrek)
#   LAYERS WIDTH HEADS   the GPT (default 3, 128, 4)
#   SEQ             bytes per language-model window (default 64)
#   CLASS_SEQ       bytes of each quotation the classifier reads, cut or padded (default 128)
#   PRETRAIN_STEPS  (default 400)   CLASS_STEPS (default 100)   LM_STEPS (default 100)
#   BATCH           global batch size (default 32)
#   LR              AdamW's rate for pretraining (default 2e-3)
#   CLASS_LR        for the classifier (default 1e-3)   LM_LR for 2b (default 3e-3)
#                   (every run: a tenth of its steps of warmup, then cosine; gradient
#                   norm clipped to 1: at 2e-3 without it the loss stays near the
#                   bytes' unigram entropy, 3.3, for the 300 steps)
#   PROMPT          the start of 2b's samples (default 'The ')
#   TOKENS          bytes each sample adds (default 200)
#   THREADS         threads of each run (default OMP_NUM_THREADS, else 2)
#   QUICK           1: a tiny model and a few steps each, to check the script (well under a minute)
#   OUT             directory for data, weights and logs (default: a temporary one, removed)
set -eu

for arg in "$@"; do
    case $arg in
    FROST=* | FORTUNES=* | PRETRAIN_TOPICS=* | CLASS_TOPICS=* | LM_TOPIC=* | LAYERS=* | \
        WIDTH=* | HEADS=* | SEQ=* | CLASS_SEQ=* | PRETRAIN_STEPS=* | CLASS_STEPS=* | \
        LM_STEPS=* | BATCH=* | LR=* | CLASS_LR=* | LM_LR=* | PROMPT=* | TOKENS=* | \
        THREADS=* | QUICK=* | OUT=*)
        export "${arg%%=*}=${arg#*=}"
        ;;
    *)
        echo "text_finetune.sh: unknown argument '$arg' (expected NAME=VALUE; see the top of $0)" >&2
        exit 2
        ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${FROST:-}" ]; then
    if [ -x "$here/../src/frost" ]; then
        FROST="$here/../src/frost"
    elif command -v frost > /dev/null 2>&1; then
        FROST=frost
    else
        echo "text_finetune.sh: no frost in ./src or on PATH; set FROST=/path/to/frost" >&2
        exit 2
    fi
fi
if [ "${QUICK:-0}" = 1 ]; then
    # The same steps on a tiny model: a check of the script, not a result.
    : "${LAYERS:=2}" "${WIDTH:=32}" "${SEQ:=32}" "${CLASS_SEQ:=32}" "${BATCH:=16}"
    : "${PRETRAIN_STEPS:=4}" "${CLASS_STEPS:=3}" "${LM_STEPS:=3}" "${TOKENS:=20}"
fi
FORTUNES=${FORTUNES:-/usr/share/games/fortunes}
PRETRAIN_TOPICS=${PRETRAIN_TOPICS:-computers people songs-poems wisdom}
CLASS_TOPICS=${CLASS_TOPICS:-definitions science work zippy}
LM_TOPIC=${LM_TOPIC:-startrek}
LAYERS=${LAYERS:-3}
WIDTH=${WIDTH:-128}
HEADS=${HEADS:-4}
SEQ=${SEQ:-64}
CLASS_SEQ=${CLASS_SEQ:-128}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-400}
CLASS_STEPS=${CLASS_STEPS:-100}
LM_STEPS=${LM_STEPS:-100}
BATCH=${BATCH:-32}
LR=${LR:-2e-3}
CLASS_LR=${CLASS_LR:-1e-3}
LM_LR=${LM_LR:-3e-3}
PROMPT=${PROMPT:-The }
TOKENS=${TOKENS:-200}
THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}

# Every topic named must be a fortune file.
topic_files() { # topic_files TOPIC...: the files, or a message and exit 2
    for topic in "$@"; do
        if [ ! -f "$FORTUNES/$topic" ]; then
            echo "text_finetune.sh: no fortune file $FORTUNES/$topic (apt-get install fortunes; or set FORTUNES)" >&2
            exit 2
        fi
        printf '%s\n' "$FORTUNES/$topic"
    done
}
# shellcheck disable=SC2086 # the topic lists are split on purpose
{
    pretrain_files=$(topic_files $PRETRAIN_TOPICS)
    class_files=$(topic_files $CLASS_TOPICS)
    lm_files=$(topic_files $LM_TOPIC)
}
# shellcheck disable=SC2086
CLASSES=$(set -f && set -- $CLASS_TOPICS && echo $#)
POSITIONS=$SEQ
[ "$CLASS_SEQ" -le "$POSITIONS" ] || POSITIONS=$CLASS_SEQ

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tmp=$OUT
else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/frost-text.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
fi
trap 'exit 130' INT TERM
started=$(date +%s)

# run NAME frost-arguments...: run frost, keep its output in $tmp/NAME.log and
# show it indented; on failure show it on stderr and stop.
run() {
    name=$1
    shift
    if ! "$FROST" "$@" > "$tmp/$name.log" 2>&1; then
        cat "$tmp/$name.log" >&2
        echo "text_finetune.sh: frost $1 failed ($name)" >&2
        exit 1
    fi
    sed 's/^/   /' "$tmp/$name.log"
}

# -- 1. the language model
# The windows are SEQ bytes and the next one as the target; the last 5% test.
set -f
# shellcheck disable=SC2086 # one file a line, names without blanks
{
    echo "== tokenize: frost tokenize --out lm --seq-len $SEQ --test-fraction 0.05 $PRETRAIN_TOPICS"
    run tokenize-lm tokenize --out "$tmp/lm" --seq-len "$SEQ" --test-fraction 0.05 $pretrain_files
    echo "== tokenize: frost tokenize --label-per-file --out classes --seq-len $CLASS_SEQ --test-fraction 0.15 $CLASS_TOPICS"
    run tokenize-classes tokenize --label-per-file --out "$tmp/classes" --seq-len "$CLASS_SEQ" \
        --test-fraction 0.15 --seed 1 $class_files
    echo "== tokenize: frost tokenize --out topic --seq-len $SEQ --test-fraction 0.1 $LM_TOPIC"
    run tokenize-topic tokenize --out "$tmp/topic" --seq-len "$SEQ" --test-fraction 0.1 $lm_files
}
set +f

# GPT-2's architecture at this size (its model text would be examples/gpt_bytes.txt's
# with these numbers); the input is as long as the data's rows.
mkdir -p "$tmp/gpt"
GPT="$tmp/gpt/config.json"
printf '{"model_type": "gpt2", "vocab_size": 256, "n_layer": %d, "n_embd": %d, "n_head": %d, "n_positions": %d, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new"}\n' \
    "$LAYERS" "$WIDTH" "$HEADS" "$POSITIONS" > "$GPT"

adamw="--optimizer adamw --weight-decay 0.01 --batch-size $BATCH --threads $THREADS --seed 1"
# schedule STEPS: a tenth of them warmup, then cosine; the gradient clipped.
schedule() { echo "--warmup-steps $(($1 / 10)) --lr-schedule cosine --clip-grad-norm 1"; }
log_every=$((PRETRAIN_STEPS / 5))
[ "$log_every" -gt 0 ] || log_every=1
echo "== pretrain: frost train --model config.json --data lm --steps $PRETRAIN_STEPS --lr $LR $(schedule "$PRETRAIN_STEPS")"
# shellcheck disable=SC2046,SC2086
run pretrain train --model "$GPT" --data "$tmp/lm" $adamw --lr "$LR" --steps "$PRETRAIN_STEPS" \
    $(schedule "$PRETRAIN_STEPS") --log-every "$log_every" --save "$tmp/pre.safetensors"

# -- 2a. topic classification
# The classifier's model text: the trunk under config.json's names, then the
# mean over positions and a new head.
{
    echo "input $CLASS_SEQ tokens"
    echo "wte = embedding(256, $WIDTH)"
    echo "wpe = position_embedding($POSITIONS, $WIDTH)"
    i=0
    while [ "$i" -lt "$LAYERS" ]; do
        echo "block h.$i {"
        echo "    residual { ln_1 = layernorm($WIDTH, eps=1e-5); attn.c_attn = conv1d($((3 * WIDTH)), $WIDTH); attention($HEADS, causal=True); attn.c_proj = conv1d($WIDTH, $WIDTH) }"
        echo "    residual { ln_2 = layernorm($WIDTH, eps=1e-5); mlp.c_fc = conv1d($((4 * WIDTH)), $WIDTH); gelu(approximate='tanh'); mlp.c_proj = conv1d($WIDTH, $((4 * WIDTH))) }"
        echo "}"
        i=$((i + 1))
    done
    echo "ln_f = layernorm($WIDTH, eps=1e-5)"
    echo "pool_sequence(mode='mean')"
    echo "head = linear($WIDTH, $CLASSES)"
} > "$tmp/classifier.txt"
CLASSIFIER="$tmp/classifier.txt"

last=h.$((LAYERS - 1))
classify() {
    name=$1
    shift
    echo "== $name: frost train --model classifier.txt --init pre.safetensors --init-new head --steps $CLASS_STEPS --lr $CLASS_LR $*"
    t0=$(date +%s)
    # shellcheck disable=SC2046,SC2086
    run "$name" train --model "$CLASSIFIER" --data "$tmp/classes" $adamw --lr "$CLASS_LR" \
        --steps "$CLASS_STEPS" $(schedule "$CLASS_STEPS") --log-every "$CLASS_STEPS" \
        --init "$tmp/pre.safetensors" --init-new head --seed 1 "$@"
    echo $(($(date +%s) - t0)) > "$tmp/$name.wall"
}
classify head --freeze '*' --unfreeze head
classify last --freeze '*' --unfreeze "$last" --unfreeze ln_f --unfreeze head
classify everything
classify lora --lora c_attn,c_proj,c_fc --lora-rank 8 --lora-alpha 16 --unfreeze head
classify lora-bf16 --lora c_attn,c_proj,c_fc --lora-rank 8 --lora-alpha 16 --unfreeze head \
    --frozen-dtype bf16

# -- 2b. the language model on one topic, all but the last block frozen
frozen="--freeze wte --freeze wpe" frozen_names="wte wpe"
i=0
while [ "$i" -lt $((LAYERS - 1)) ]; do
    frozen="$frozen --freeze h.$i" frozen_names="$frozen_names h.$i"
    i=$((i + 1))
done
echo "== before: frost eval --model config.json --init pre.safetensors --data topic"
run topic-before eval --model "$GPT" --init "$tmp/pre.safetensors" --data "$tmp/topic" \
    --threads "$THREADS"
echo "== $LM_TOPIC: frost train --model config.json --init pre.safetensors --data topic --steps $LM_STEPS --lr $LM_LR $frozen"
# shellcheck disable=SC2046,SC2086
run topic train --model "$GPT" --data "$tmp/topic" $adamw --lr "$LM_LR" --steps "$LM_STEPS" \
    $(schedule "$LM_STEPS") --log-every "$LM_STEPS" --init "$tmp/pre.safetensors" $frozen \
    --save "$tmp/topic.safetensors"
echo "== after: frost eval --model config.json --init topic.safetensors --data topic"
run topic-after eval --model "$GPT" --init "$tmp/topic.safetensors" --data "$tmp/topic" \
    --threads "$THREADS"
for w in pre topic; do
    echo "== sample ($w): frost generate --model config.json --weights $w.safetensors --prompt '$PROMPT' --tokens $TOKENS --seed 1"
    if ! "$FROST" generate --model "$GPT" --weights "$tmp/$w.safetensors" --prompt "$PROMPT" \
        --tokens "$TOKENS" --seed 1 --threads "$THREADS" > "$tmp/sample-$w.txt" 2> "$tmp/sample-$w.log"; then
        cat "$tmp/sample-$w.log" >&2
        echo "text_finetune.sh: frost generate failed ($w)" >&2
        exit 1
    fi
done

# -- 3. the table
# Numbers from the logs: the train header and summary, the test lines.
accuracy() { sed -n 's/^test: loss [0-9.]* accuracy \([0-9.]*%\).*/\1/p' "$tmp/$1.log"; }
test_loss() { sed -n 's/^test: loss \([0-9.]*\) .*/\1/p' "$tmp/$1.log"; }
trainable() { sed -n 's/^parameters [0-9]*, trainable \([0-9]*\) .*/\1/p' "$tmp/$1.log"; }
total() { sed -n 's/^parameters \([0-9]*\), .*/\1/p' "$tmp/$1.log"; }
bytes() { sed -n 's/^parameters .*; allreduce \([0-9]*\) bytes per step$/\1/p' "$tmp/$1.log"; }
seconds() { sed -n 's/^done: [0-9]* steps in \([0-9.]*\) s,.*/\1/p' "$tmp/$1.log"; }
row() { # row LABEL NAME
    printf '%-28s %10s %14s %8s %8s %9s\n' "$1" "$(trainable "$2")" "$(bytes "$2")" \
        "$(seconds "$2")" "$(cat "$tmp/$2.wall")" "$(accuracy "$2")"
}

echo
echo "pretrained: $LAYERS blocks of $WIDTH, $HEADS heads, $(total pretrain) parameters;" \
    "$PRETRAIN_STEPS steps of $BATCH x $SEQ bytes in $(seconds pretrain) s;" \
    "test loss $(test_loss pretrain) ($PRETRAIN_TOPICS)"
echo
echo "topic of a quotation ($CLASS_TOPICS; $(sed -n 's/.*, \([0-9]*\) records, .*(train \([0-9]*\), test \([0-9]*\)).*/\1 records, \2 train, \3 test/p' "$tmp/tokenize-classes.log")), $CLASS_STEPS steps of $BATCH:"
printf '%-28s %10s %14s %8s %8s %9s\n' run trainable 'allreduce B/st' 'train s' 'wall s' 'test acc'
row 'head only' head
row "$last + ln_f + head" last
row everything everything
row 'LoRA r 8 + head' lora
row '... bf16 base' lora-bf16
echo
echo "language model on $LM_TOPIC, $frozen_names frozen ($(trainable topic) of" \
    "$(total topic) trainable, $(bytes topic) allreduce B/step), $LM_STEPS steps in $(seconds topic) s:"
echo "test loss before $(test_loss topic-before), after $(test_loss topic-after)" \
    "(nats per byte; next-byte accuracy $(accuracy topic-before) -> $(accuracy topic-after))"
echo "sample before ('$PROMPT', seed 1):"
sed 's/^/  | /' "$tmp/sample-pre.txt"
echo
echo "sample after:"
sed 's/^/  | /' "$tmp/sample-topic.txt"
echo
echo "text_finetune.sh: $(($(date +%s) - started)) s in all"
