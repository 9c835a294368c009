#!/bin/sh
# docs.sh - the documentation says what the command does.  Every option a
# command accepts is in its manual page and every option a page documents is
# accepted (the parser itself is asked); frost-model(5) covers the layer
# registry and its examples build; `frost help`, `--version`, "did you mean"
# and the closest names for a freeze pattern; the warning about a rank
# bound to a small share of its node; the bash completion knows what the help
# knows; the pages render without a warning; README.md stays a front page
# (short, nothing dated but its results stamp, links that resolve, its C
# calls made by examples/freeze_api.c, the two commands of its quick start).
. "$TOP_SRCDIR/tests/common.sh"
plan 43

MAN="$TOP_SRCDIR/man"
COMMANDS="train eval inspect generate merge tokenize"
CNN="$TOP_SRCDIR/examples/cnn.txt"
# One process, no mpirun: tell Open MPI (ignored elsewhere) to start no
# runtime daemon, as tests/errors.sh does, so the many short runs are quick.
quick() {
    OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self OMPI_MCA_mtl=^ofi \
        OMPI_MCA_osc=^ucx "$FROST" "$@"
}

# The options `frost help COMMAND` lists, and those the OPTIONS section of
# man/frost-COMMAND.1 gives a paragraph (.TP) each; one a line, sorted.
help_options() { quick help "$1" | sed -n 's/^  \(--[a-z0-9-]*\).*/\1/p' | sort -u; }
man_options() {
    awk '/^\.SH/ { in_options = ($2 == "OPTIONS") }
         in_options && previous == ".TP" && match($0, /\\-\\-([a-z0-9]|\\-)+/) {
             print substr($0, RSTART, RLENGTH) }
         { previous = $0 }' "$MAN/frost-$1.1" | sed 's/\\//g' | sort -u
}

# ---- every option in its page, every documented option accepted
for c in $COMMANDS; do
    help_options "$c" > "$WORK/help-$c"
    man_options "$c" > "$WORK/man-$c"
    missing=$(comm -23 "$WORK/help-$c" "$WORK/man-$c" | tr '\n' ' ')
    extra=$(comm -13 "$WORK/help-$c" "$WORK/man-$c" | tr '\n' ' ')
    [ -s "$WORK/help-$c" ] && [ -z "$missing$extra" ]
    ok $? "frost-$c(1) documents the $(wc -l < "$WORK/help-$c") options of 'frost help $c'${missing:+; not in the page: $missing}${extra:+; not in the help: $extra}"
    unknown=
    while read -r option; do
        quick "$c" "$option" < /dev/null > /dev/null 2> "$WORK/probe"
        grep -Eq "unknown option|does not take" "$WORK/probe" && unknown="$unknown $option"
    done < "$WORK/man-$c"
    [ -z "$unknown" ]
    ok $? "'frost $c' accepts every option frost-$c(1) documents${unknown:+; refused:$unknown}"
done

# ---- the pages: listed for installation, rendered without a warning
pages=$(cd "$MAN" && ls | sort | tr '\n' ' ')
listed=$(sed -n '/^dist_man_MANS/,/[^\\]$/p' "$TOP_SRCDIR/Makefile.am" | tr ' \\\t' '\n\n\n' |
    sed -n 's|^man/||p' | sort | tr '\n' ' ')
[ "$pages" = "$listed" ]
ok $? "Makefile.am installs every page of man/ ($listed)"
see_also=
for page in $COMMANDS; do
    grep -q "^\.BR frost-$page (1)" "$MAN/frost.1" || see_also="$see_also frost-$page(1)"
done
grep -q '^\.BR frost-model (5)' "$MAN/frost.1" || see_also="$see_also frost-model(5)"
[ -z "$see_also" ]
ok $? "frost(1) points to every page${see_also:+; missing:$see_also}"
warnings=
if command -v man > /dev/null 2>&1 || command -v groff > /dev/null 2>&1; then
    for page in "$MAN"/*.[15]; do
        if command -v man > /dev/null 2>&1; then
            LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 > /dev/null
        else
            groff -man -Tutf8 -ww -z "$page" 2>&1
        fi | grep -q . && warnings="$warnings $(basename "$page")"
    done
    [ -z "$warnings" ]
    ok $? "every page renders without a warning${warnings:+; warnings in:$warnings}"
else
    skip "neither man nor groff is installed"
fi

# ---- frost-model(5): every layer kind of the registry, and only those
quick inspect --model 'no_such_kind; relu' 2>&1 |
    sed -n 's/.*unknown layer kind .no_such_kind. (expected \(.*\))$/\1/p' | tr -d ' ' |
    tr ',' '\n' | sort > "$WORK/kinds"
awk '/^\.SH/ { in_kinds = ($0 ~ /LAYER KINDS/) } in_kinds && previous == ".TP" { print }
     { previous = $0 }' "$MAN/frost-model.5" | sed 's/\\f[RPIB]//g; s/"//g' |
    sed -n 's/^\.BI\{0,1\} \([a-z_0-9]*\)$/\1/p; s/^\.BI\{0,1\} //; s/[^a-z_0-9(]/ /g; p' |
    grep -o '[a-z_0-9]*(\|^[a-z_0-9]*$' | tr -d '(' | grep . | sort -u > "$WORK/documented"
missing=$(comm -23 "$WORK/kinds" "$WORK/documented" | tr '\n' ' ')
extra=$(comm -13 "$WORK/kinds" "$WORK/documented" | tr '\n' ' ')
[ "$(wc -l < "$WORK/kinds")" -ge 10 ] && [ -z "$missing$extra" ]
ok $? "frost-model(5) documents the $(wc -l < "$WORK/kinds") layer kinds frost knows${missing:+; not in the page: $missing}${extra:+; not a kind: $extra}"
# Each model in its EXAMPLES section builds.
awk '/^\.SH/ { in_examples = ($2 == "EXAMPLES") }
     in_examples && /^\.fi/ { keep = 0; n++ }
     in_examples && keep { print > (dir "/example" n ".txt") }
     in_examples && /^\.nf/ { keep = 1 }' dir="$WORK" "$MAN/frost-model.5"
built=0 failed=
for example in "$WORK"/example*.txt; do
    sed -i 's/\\-/-/g; s/\\(aq/'"'"'/g' "$example"
    if quick inspect --model "$example" > "$WORK/example.out" 2>&1; then
        built=$((built + 1))
    else
        failed="$failed $(head -n 1 "$WORK/example.out")"
    fi
done
[ "$built" -ge 2 ] && [ -z "$failed" ]
ok $? "the models of frost-model(5)'s EXAMPLES build ($built)${failed:+:$failed}"

# ---- --version, help
version=$(sed -n 's/^AC_INIT(\[frost\], \[\([^]]*\)\].*/\1/p' "$TOP_SRCDIR/configure.ac")
"$FROST" --version > "$WORK/version" 2>&1 && "$FROST" -V | cmp -s - "$WORK/version"
ok $? "frost --version and frost -V exit 0 and print the same"
[ "$(head -n 1 "$WORK/version")" = "frost $version" ] && grep -q '^MPI: ' "$WORK/version" &&
    grep -q '^OpenMP: ' "$WORK/version" && grep -q '^BLAS: ' "$WORK/version"
ok $? "--version: 'frost $version', then the build's MPI, OpenMP and BLAS ($(sed -n 2p "$WORK/version"))"
# conv2d runs through oneDNN exactly when configure found it (HAVE_DNNL).
if grep -q '^#define HAVE_DNNL 1' "$TOP_BUILDDIR/config.h"; then
    grep -qE '^convolutions: oneDNN [0-9]+\.[0-9]+\.[0-9]+$' "$WORK/version"
else
    grep -qx 'convolutions: OpenBLAS (configured without oneDNN)' "$WORK/version"
fi
ok $? "--version names what runs the convolutions: $(grep '^convolutions: ' "$WORK/version")"
"$FROST" help > "$WORK/help" 2>&1
status=$?
for c in $COMMANDS; do grep -q "^usage: frost $c " "$WORK/help" || status=1; done
ok $status "frost help lists every command with its usage"
quick help train > "$WORK/help-train.txt" && quick train --help | cmp -s - "$WORK/help-train.txt" &&
    grep -q '^  --lr X  *learning rate (default 0.01)$' "$WORK/help-train.txt" &&
    grep -q '^  --epochs N  *passes over the training data (default 1; with$' "$WORK/help-train.txt"
ok $? "frost help train is frost train --help: every flag with its meaning and default"
quick help trian > "$WORK/out" 2>&1
[ $? -eq 1 ] && grep -q "^frost: no help on 'trian' (did you mean train?)" "$WORK/out"
ok $? "frost help on an unknown command names the closest: $(cat "$WORK/out")"
if command -v man > /dev/null 2>&1; then
    mkdir -p "$WORK/manpath/man1" && cp "$MAN/frost-train.1" "$WORK/manpath/man1/"
    MANPATH="$WORK/manpath" MANPAGER=cat PAGER=cat "$FROST" help --man train 2>&1 |
        grep -q 'frost-train  *-  *train a network'
    ok $? "frost help --man train shows the manual page frost-train(1)"
else
    skip "man is not installed"
fi

# ---- did you mean, closest names
expect() { # expect DESCRIPTION MESSAGE frost-args...
    what=$1 want=$2
    shift 2
    quick "$@" > /dev/null 2> "$WORK/stderr" < /dev/null
    status=$?
    [ $status -eq 1 ] && [ "$(wc -l < "$WORK/stderr")" -eq 1 ] && grep -qF -- "$want" "$WORK/stderr"
    ok $? "$what: $(cat "$WORK/stderr")"
}
expect "a misspelt option names the closest" "unknown option '--frezee' for 'frost train' (did you mean --freeze?)" \
    train --frezee x
expect "a misspelt command names the closest" "unknown command 'trian' (did you mean train?)" trian
expect "frost tokenize's own parser names the closest option" "(did you mean --seq-len?)" \
    tokenize --out "$WORK/tok" --seq-lenn 8 "$CNN"
expect "a cut-short option names the one it begins" "(did you mean --batch-size?)" \
    train --model "$CNN" --batch 8
expect "a freeze pattern that matches nothing lists the closest names" \
    "--freeze pattern 'fc3' matches no parameter (names look like 'conv1.weight'); closest names: 'fc1', 'fc2'" \
    inspect --model "$CNN" --freeze fc3
expect "a misspelt glob finds the block it meant" "closest names: 'layer1.0', 'layer2.0'" \
    inspect --model "$TOP_SRCDIR/examples/resnet_small.txt" --freeze 'layr1*'

# ---- no silent slow placement: a rank given one CPU of several, no --threads
mkdir -p "$WORK/data" && make_idx "$WORK/data" 128 3
cpus=$(getconf _NPROCESSORS_ONLN 2> /dev/null || echo 1)
if [ -z "${MPIRUN:-}" ]; then
    skip "built without MPI"; skip "built without MPI"; skip "built without MPI"
elif [ "$cpus" -lt 2 ]; then
    skip "one CPU: no rank can have a small share"; skip "one CPU"; skip "one CPU"
else
    bound() { # bound NAME MPIRUN-FLAGS... -- FROST-FLAGS...
        name=$1
        shift
        env -u OMP_NUM_THREADS timeout -k 5 120 "$MPIRUN" --allow-run-as-root -np 1 "$@" \
            > "$WORK/$name.out" 2> "$WORK/$name.err"
    }
    bound one --bind-to core "$FROST" train --model 'fc1 = linear(784, 10)' --data "$WORK/data" --steps 2
    [ $? -eq 0 ] && [ "$(grep -c '^frost: warning: rank 0 runs 1 thread on 1 of this node' "$WORK/one.err")" -eq 1 ] &&
        grep -q "mpirun --bind-to none (or --map-by slot:PE=$cpus), srun --cpus-per-task=$cpus" "$WORK/one.err"
    ok $? "mpirun binding a rank to 1 of $cpus CPUs, no --threads: one warning with the flags that fix it ($(head -c 150 "$WORK/one.err")...)"
    bound asked --bind-to core "$FROST" train --model 'fc1 = linear(784, 10)' --data "$WORK/data" --steps 2 --threads 1
    [ $? -eq 0 ] && ! grep -q warning "$WORK/asked.err"
    ok $? "the same placement asked for with --threads 1: no warning"
    bound free --bind-to none "$FROST" train --model 'fc1 = linear(784, 10)' --data "$WORK/data" --steps 2
    [ $? -eq 0 ] && ! grep -q warning "$WORK/free.err"
    ok $? "mpirun --bind-to none: the rank has the node, no warning ($(grep '^threads:' "$WORK/free.out"))"
fi

# ---- bash completion: the help's options, the commands, the values
COMPLETION="$TOP_SRCDIR/completion/frost"
if command -v bash > /dev/null 2>&1; then
    complete_words() { # complete_words WORD... : what completing the last word offers
        bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _frost
                 printf "%s\n" "${COMPREPLY[@]}" | sort' completion "$COMPLETION" "$@"
    }
    differ=
    for c in $COMMANDS; do
        complete_words frost "$c" -- | cmp -s - "$WORK/help-$c" || differ="$differ $c"
    done
    [ -z "$differ" ]
    ok $? "the completion offers each command's options as frost help lists them${differ:+; differs for:$differ}"
    [ "$(complete_words frost t | tr '\n' ' ')" = "tokenize train " ] &&
        [ "$(complete_words frost help i | tr '\n' ' ')" = "inspect " ]
    ok $? "the completion offers the commands"
    [ "$(complete_words frost train --optimizer ad | tr '\n' ' ')" = "adam adamw " ] &&
        [ "$(complete_words frost train --grad-dtype '' | tr '\n' ' ')" = "bf16 f32 " ]
    ok $? "the completion offers the values of --optimizer and --grad-dtype"
else
    skip "no bash"; skip "no bash"; skip "no bash"
fi

# ---- README.md, the front page
README="$TOP_SRCDIR/README.md"
lines=$(wc -l < "$README")
[ "$lines" -le 300 ]
ok $? "README.md is a front page: $lines lines (at most 300)"
dated=$(grep -cE '20[0-9]{2}-[0-9]{2}-[0-9]{2}|load average' "$README")
[ "$dated" -le 1 ]
ok $? "nothing in README.md is dated but the results table's stamp ($dated line(s) with a date)"
first=$(grep -n -- '--freeze fc1' "$README" | head -n 1 | cut -d: -f1)
[ -n "$first" ] && [ "$first" -le 60 ]
ok $? "how to freeze one layer is on README.md's first screen (line ${first:-none})"
grep -qxF 'apt-get update && apt-get install -y build-essential autoconf automake libtool pkg-config libopenblas-dev libdnnl-dev libopenmpi-dev openmpi-bin zlib1g-dev dataset-fashion-mnist fortunes python3 python3-torch python3-torchvision procps iproute2 && autoreconf -fi && ./configure && make -j"$(nproc)" && examples/finetune.sh' "$README" &&
    grep -qxF 'autoreconf -fi && ./configure && make -j2 check' "$README"
ok $? "README.md's two commands are there as .ci/run and a newcomer run them"
broken=
for file in README.md bench/README.md doc/*.md; do
    [ -f "$TOP_SRCDIR/$file" ] || continue
    dir=$(dirname "$file")
    for target in $(grep -o '](\([^)#]*\)' "$TOP_SRCDIR/$file" | sed 's/^](//' | grep -v '^[a-z]*:'); do
        [ -e "$TOP_SRCDIR/$dir/$target" ] || broken="$broken $file:$target"
    done
done
[ -z "$broken" ]
ok $? "every relative link of README.md, bench/README.md and doc/ resolves${broken:+; broken:$broken}"
# What README.md shows frost inspect printing is what it prints.
awk '/^\$ frost inspect/ { keep = 1; sub(/^\$ frost /, ""); print > (dir "/readme-command"); next }
     keep && /^```/ { exit } keep { print > (dir "/readme-inspect") }' dir="$WORK" "$README"
(cd "$TOP_SRCDIR" && eval "quick $(cat "$WORK/readme-command")") > "$WORK/inspect-now" 2>&1
[ -s "$WORK/readme-inspect" ] && cmp -s "$WORK/readme-inspect" "$WORK/inspect-now"
ok $? "README.md's frost inspect output is what '$(cat "$WORK/readme-command")' prints"
# The C of the README: every fr_ call it shows is made, so checked by the
# compiler, in the example tests/install.sh builds against the installed library.
awk '/^```c/ { keep = 1; next } /^```/ { keep = 0 } keep' "$README" |
    grep -o 'fr_[a-z_]*([^;]*)' > "$WORK/calls"
absent=
while read -r call; do
    grep -qF -- "$call" "$TOP_SRCDIR/examples/freeze_api.c" || absent="$absent $call"
done < "$WORK/calls"
[ "$(wc -l < "$WORK/calls")" -ge 5 ] && [ -z "$absent" ]
ok $? "README.md's C ($(wc -l < "$WORK/calls") calls) is what examples/freeze_api.c runs${absent:+; not there:$absent}"

done_testing
