#!/bin/sh
# guides.sh - the guides of doc/ run as written, so they cannot rot.
#
# Each guide's ```sh blocks run in order in one shell (`set -e`: the first
# command that fails fails the guide), from a fresh directory that looks
# like the top of frost's tree (examples/, bench/ and README.md linked in),
# with `frost` on the PATH.  A block's info string says when it runs:
#   ```sh          always
#   ```sh torch    when python3 imports torch (else the test puts in place
#                  what the block would have made: see `fixtures`)
#   ```sh numpy    when python3 imports numpy
#   ```sh mpi      when frost has MPI (mpirun runs as root, oversubscribed)
#   ```sh slurm    when frost has MPI: `srun -n N` is played by a stand-in
#                  that runs `mpirun -np N` (tests/slurm.sh runs srun and
#                  sbatch for real on a private Slurm cluster)
#   ```sh cluster  never: several hosts, a real cluster, a server
#                  (shown, and only counted here)
# The guides' data is small: DATA is a 256-sample Fashion-MNIST-shaped set
# (tests/make_idx.py), and doc/gpt2.md's MODEL and TOKENIZER are a tiny GPT-2
# (12 blocks of width 16) and a byte-level GPT-2 vocabulary with two merges,
# written here as tests/gpt.sh writes its own, instead of a download.
. "$TOP_SRCDIR/tests/common.sh"
GUIDES="pytorch gpt2 clusters checkpoints monitoring"
plan 6

HAVE_TORCH=no HAVE_NUMPY=no
"$PYTHON3" -c 'import torch' > /dev/null 2>&1 && HAVE_TORCH=yes
"$PYTHON3" -c 'import numpy' > /dev/null 2>&1 && HAVE_NUMPY=yes
HAVE_MPI=no
[ -n "${MPIRUN:-}" ] && HAVE_MPI=yes

# What every guide's directory holds, and the stand-ins on its PATH.
BIN="$WORK/bin"
mkdir -p "$BIN" "$WORK/data"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$FROST" > "$BIN/frost"
if [ $HAVE_MPI = yes ]; then
    printf '#!/bin/sh\nexec "%s" --allow-run-as-root --oversubscribe "$@"\n' "$MPIRUN" > "$BIN/mpirun"
    # srun -n N [--flag=value | --flag]... COMMAND...: mpirun -np N COMMAND...
    cat > "$BIN/srun" <<EOF
#!/bin/sh
ranks=1
while [ \$# -gt 0 ]; do
    case \$1 in
        -n) ranks=\$2; shift 2 ;;
        -n*) ranks=\${1#-n}; shift ;;
        -N|-c) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
exec "$BIN/mpirun" -np "\$ranks" "\$@"
EOF
fi
chmod +x "$BIN"/*
make_idx "$WORK/data" 256 3

# doc/gpt2.md's pretrained GPT-2 and its tokenizer.
GPT="$WORK/gpt2"
mkdir -p "$GPT"
printf '{"model_type": "gpt2", "n_layer": 12, "n_embd": 16, "n_head": 2, "n_positions": 64, "vocab_size": 260, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new"}\n' \
    > "$GPT/config.json"
"$PYTHON3" - "$GPT" <<'PY'
import json, sys
gpt = sys.argv[1]
# GPT-2's byte alphabet: printable bytes stand for themselves, the others
# for the characters from U+0100 on, in order.
printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
names, spare = {}, 0
for b in range(256):
    if b in printable:
        names[b] = chr(b)
    else:
        names[b] = chr(0x100 + spare)
        spare += 1
encoder = {names[b]: b for b in range(256)}
encoder["<|endoftext|>"] = 256
encoder["th"] = 257
encoder["the"] = 258
with open(f"{gpt}/encoder.json", "w", encoding="utf-8") as f:
    json.dump(encoder, f)
with open(f"{gpt}/vocab.bpe", "w", encoding="utf-8") as f:
    f.write("#version: 0.2\nt h\nth e\n")
PY
ok $? "fixtures: data, a tiny GPT-2 and its vocabulary"
# Its "pretrained" weights: the seeded initialisation (a run with --lr 0).
sed 's/"attn_pdrop": 0.1/"attn_pdrop": 0.0/' "$GPT/config.json" > "$WORK/gpt2-config.json"
mkdir -p "$WORK/gpt2-init" && "$FROST" tokenize --out "$WORK/gpt2-init" --tokenizer "$GPT" \
    --seq-len 64 --test-fraction 0.1 "$TOP_SRCDIR/README.md" > /dev/null &&
    "$FROST" train --model "$WORK/gpt2-config.json" --data "$WORK/gpt2-init" --steps 1 --lr 0 \
        --save "$GPT/model.safetensors" > /dev/null 2>&1 || echo "# the GPT-2 fixture failed"

# fixtures GUIDE DIR: what a torch block would have made, without torch.
fixtures() {
    if [ "$1" = pytorch ] && [ $HAVE_TORCH = no ]; then
        "$FROST" train --model "$TOP_SRCDIR/examples/cnn.txt" --data "$WORK/data" --steps 1 \
            --lr 0 --save "$2/pretrained.safetensors" > /dev/null 2>&1
    fi
}

# run_guide NAME: its blocks as one script; prints "ran shown" counts.
run_guide() {
    name=$1 dir="$WORK/guide-$1"
    mkdir -p "$dir"
    for link in examples bench README.md; do ln -s "$TOP_SRCDIR/$link" "$dir/$link"; done
    fixtures "$name" "$dir"
    awk -v torch=$HAVE_TORCH -v numpy=$HAVE_NUMPY -v mpi=$HAVE_MPI -v counts="$dir/counts" '
        /^```sh( |$)/ {
            tag = $2; inside = 1; blocks++
            run = tag == "" || (tag == "torch" && torch == "yes") ||
                  (tag == "numpy" && numpy == "yes") ||
                  ((tag == "mpi" || tag == "slurm") && mpi == "yes")
            ran += run
            if (run) printf "echo \"## block %d (%s)\"\n", blocks, tag == "" ? "sh" : tag
            next
        }
        inside && /^```/ { inside = 0; next }
        inside && run { print }
        END { print ran, blocks - ran > counts }' "$TOP_SRCDIR/doc/$name.md" > "$dir/guide.sh"
    (cd "$dir" && PATH="$BIN:$PATH" DATA="$WORK/data" MODEL="$GPT" TOKENIZER="$GPT" \
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        timeout -k 10 600 sh -e guide.sh) > "$dir/out" 2>&1
}

for guide in $GUIDES; do
    run_guide "$guide"
    status=$?
    read -r ran shown < "$WORK/guide-$guide/counts"
    if [ $status -ne 0 ]; then
        tail -n 25 "$WORK/guide-$guide/out" | sed 's/^/#   /'
    fi
    [ "$ran" -gt 0 ]
    ok $((status + $?)) "doc/$guide.md: its commands run ($ran blocks run, $shown shown only)"
done

done_testing
