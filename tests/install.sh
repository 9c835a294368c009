#!/bin/sh
# install.sh - `make install DESTDIR=...` as a packager runs it: the program,
# the library, its header and frost.pc, the manual and the bash completion
# land in place; the installed frost runs and its pages open with man; a
# program outside the tree (examples/freeze_api.c) builds against the
# installed library with `pkg-config --cflags --libs frost` and runs; and
# `make uninstall` takes every file away again.
. "$TOP_SRCDIR/tests/common.sh"
plan 9

ROOT="$WORK/root"
: "${TOP_BUILDDIR:=$(dirname "$(dirname "$FROST")")}"
: "${MAKE:=make}"
$MAKE -C "$TOP_BUILDDIR" install DESTDIR="$ROOT" > "$WORK/install.log" 2>&1
status=$?
[ $status -eq 0 ] || tail -n 20 "$WORK/install.log" | sed 's/^/#   /'
ok $status "make install DESTDIR=... succeeds"

# Where configure put things, found under the staging root.
installed() { find "$ROOT" \( -type f -o -type l \) -path "*/$1" | head -n 1; }
BIN=$(installed bin/frost)
PC=$(installed pkgconfig/frost.pc)
LIBDIR=$(dirname "$(dirname "$PC")")
missing=
for file in bin/frost include/frost.h pkgconfig/frost.pc "libfrost.so*"; do
    [ -n "$(installed "$file")" ] || missing="$missing $file"
done
[ -z "$missing" ]
ok $? "the program, the header, frost.pc and the library are installed${missing:+; missing:$missing}"
pages=
for page in man1/frost.1 man1/frost-train.1 man1/frost-eval.1 man1/frost-inspect.1 \
    man1/frost-generate.1 man1/frost-tokenize.1 man5/frost-model.5; do
    [ -n "$(installed "man/$page")" ] || pages="$pages $page"
done
[ -z "$pages" ]
ok $? "the manual is installed: frost(1), a page per command and frost-model(5)${pages:+; missing:$pages}"
COMPLETION=$(installed bash-completion/completions/frost)
[ -n "$COMPLETION" ] && bash -c '. "$1"; COMP_WORDS=(frost train --fre); COMP_CWORD=2; _frost
    [ "${COMPREPLY[*]}" = "--freeze --freeze-at" ]' completion "$COMPLETION"
ok $? "the bash completion is installed where bash-completion loads it, and completes ($COMPLETION)"

LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version > "$WORK/version" 2>&1
ok $? "the installed frost runs: $(head -n 1 "$WORK/version")"
if command -v man > /dev/null 2>&1; then
    MANDIR=$(dirname "$(dirname "$(installed man/man1/frost-train.1)")")
    MANPAGER=cat PAGER=cat man -M "$MANDIR" frost-train 2> /dev/null | grep -q 'frost-train  *-  *train' &&
        MANPAGER=cat PAGER=cat man -M "$MANDIR" 5 frost-model 2> /dev/null | grep -q 'frost-model  *-  *frost'
    ok $? "man frost-train and man 5 frost-model open the installed pages"
else
    skip "man is not installed"
fi

# A program of one's own, built as README.md says.
if command -v pkg-config > /dev/null 2>&1; then
    cc=cc
    command -v cc > /dev/null 2>&1 || cc=${CC:-gcc}
    flags=$(PKG_CONFIG_PATH="$(dirname "$PC")" PKG_CONFIG_SYSROOT_DIR="$ROOT" \
        pkg-config --cflags --libs frost)
    # With the build's own CFLAGS and LDFLAGS: a library built with the
    # sanitizers needs a program built with them.
    # shellcheck disable=SC2086
    $cc -std=c11 -Wall -Wextra -Werror ${BUILD_CFLAGS:-} "$TOP_SRCDIR/examples/freeze_api.c" \
        $flags ${BUILD_LDFLAGS:-} -o "$WORK/freeze_api" > "$WORK/cc.log" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/cc.log"
    ok $status "examples/freeze_api.c builds with $cc \$(pkg-config --cflags --libs frost): $flags"
    (cd "$WORK" && LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ./freeze_api) \
        > "$WORK/api.out" 2>&1 && [ "$(tail -n 1 "$WORK/api.out")" = "conv1 unchanged; tuned.safetensors written" ] &&
        grep -q "^--freeze 'conv\*': *fc1.weight fc1.bias fc2.weight fc2.bias" "$WORK/api.out"
    ok $? "it freezes three ways, trains, keeps the frozen layer's bits: $(tr '\n' '|' < "$WORK/api.out" | head -c 200)"
else
    skip "no pkg-config"; skip "no pkg-config"
fi

$MAKE -C "$TOP_BUILDDIR" uninstall DESTDIR="$ROOT" > "$WORK/uninstall.log" 2>&1 &&
    [ -z "$(find "$ROOT" -type f)" ]
ok $? "make uninstall removes every installed file"

done_testing
