#!/usr/bin/env bash
# Build KenLM's lmplz and build_binary into VENV_DIR/bin.
#
# The `kenlm` wheel on PyPI ships only the query module; the command-line tools that build
# language models are not packaged anywhere pip can reach. The PyPI sdist, though, carries the
# whole C++ tree, so we fetch it through pip (no other network access needed) and build the two
# targets with cmake against Debian's Boost. Idempotent: does nothing when both tools already run.
#
# Usage: bash scripts/build_kenlm.sh VENV_DIR
set -euo pipefail

die() {
    echo "build_kenlm.sh: error: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: bash scripts/build_kenlm.sh VENV_DIR"
VENV_DIR=$(cd "$1" 2>/dev/null && pwd) || die "VENV_DIR '$1' does not exist (create the venv first)"
PIP="$VENV_DIR/bin/pip"
BIN="$VENV_DIR/bin"
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR="$REPO_ROOT/.kenlm-build"
JOBS=${KENLM_JOBS:-2}

# A tool "runs" if it prints its usage text. The exit status says little (build_binary --help exits 1),
# and the output is captured whole first: `tool | grep -q` would kill the tool with SIGPIPE, which
# pipefail then reports as a failure.
tool_runs() {
    local exe="$1" pattern="$2" usage
    [ -x "$exe" ] || return 1
    usage=$("$exe" --help 2>&1 || true)
    [[ "$usage" == *"$pattern"* ]]
}

if tool_runs "$BIN/lmplz" "Builds unpruned language models" && tool_runs "$BIN/build_binary" "Usage:"; then
    echo "build_kenlm.sh: lmplz and build_binary already in $BIN, nothing to do"
    exit 0
fi

[ -x "$PIP" ] || die "$PIP not found"
for tool in cmake make c++; do
    command -v "$tool" >/dev/null || die "'$tool' not found: install the Debian packages cmake and build-essential"
done
# Boost headers are the usual failure; say so before cmake prints a page of noise.
[ -e /usr/include/boost/program_options.hpp ] || die "Boost headers missing: apt-get install \
libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"

mkdir -p "$BUILD_DIR"
cd "$BUILD_DIR"

# 1. The sdist. --no-build-isolation keeps pip from installing the sdist's build requirements
#    (setuptools, wheel and a cmake wheel) just to read its metadata; fall back to isolation when the
#    venv lacks setuptools.
SDIST=$(ls kenlm-*.tar.gz 2>/dev/null | head -n 1 || true)
if [ -z "$SDIST" ]; then
    echo "build_kenlm.sh: downloading the kenlm sdist through pip"
    "$PIP" download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
        -d "$BUILD_DIR" kenlm \
        || "$PIP" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$BUILD_DIR" kenlm \
        || die "pip could not download the kenlm sdist (is PyPI reachable?)"
    SDIST=$(ls kenlm-*.tar.gz 2>/dev/null | head -n 1 || true)
    [ -n "$SDIST" ] || die "pip download finished but no kenlm-*.tar.gz in $BUILD_DIR"
fi

# 2. Unpack once. The marker file is written last, so a half-unpacked tree from an interrupted run
#    is thrown away and redone, while a complete one is kept and the cmake build below stays incremental.
SRC_DIR="$BUILD_DIR/src"
if [ ! -f "$SRC_DIR/.unpacked" ]; then
    rm -rf "$SRC_DIR"
    mkdir -p "$SRC_DIR"
    tar -xzf "$SDIST" -C "$SRC_DIR" --strip-components=1 || die "could not unpack $SDIST"
    [ -f "$SRC_DIR/lm/builder/lmplz_main.cc" ] || die "$SDIST does not contain the KenLM C++ sources"
    touch "$SRC_DIR/.unpacked"
fi

# 3. Build only the two tools (Release: lmplz is several times slower without optimisation).
echo "build_kenlm.sh: building lmplz and build_binary (about a minute)"
cmake -S "$SRC_DIR" -B "$BUILD_DIR/cmake" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF \
    -DENABLE_PYTHON=OFF >"$BUILD_DIR/cmake.log" 2>&1 \
    || { tail -n 30 "$BUILD_DIR/cmake.log" >&2; die "cmake configure failed (full log: $BUILD_DIR/cmake.log)"; }
cmake --build "$BUILD_DIR/cmake" --target lmplz build_binary -j "$JOBS" >"$BUILD_DIR/make.log" 2>&1 \
    || { tail -n 30 "$BUILD_DIR/make.log" >&2; die "build failed (full log: $BUILD_DIR/make.log)"; }

# 4. Install: copy under a temporary name and rename, so an interrupted copy never leaves a broken tool.
for exe in lmplz build_binary; do
    built="$BUILD_DIR/cmake/bin/$exe"
    [ -x "$built" ] || die "build produced no $built"
    cp "$built" "$BIN/.$exe.tmp.$$"
    mv -f "$BIN/.$exe.tmp.$$" "$BIN/$exe"
done

tool_runs "$BIN/lmplz" "Builds unpruned language models" || die "$BIN/lmplz was installed but does not run"
tool_runs "$BIN/build_binary" "Usage:" || die "$BIN/build_binary was installed but does not run"
echo "build_kenlm.sh: installed lmplz and build_binary into $BIN"
