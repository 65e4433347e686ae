#!/usr/bin/env bash
# Find or build the two interpreters flowcat-ft is tested on: free-threaded CPython 3.13
# (python3.13t) and the GIL build of the same source, its "GIL twin".
#
# Prints two shell assignments on stdout, for `eval "$(ci/interpreters.sh)"`:
#   FLOWCAT_PYTHON_FT=/path/to/python3.13t
#   FLOWCAT_PYTHON_GIL=/path/to/python3.13
# Progress goes to stderr.
#
# Lookup order for each interpreter:
#   1. the path in FLOWCAT_PYTHON_FT / FLOWCAT_PYTHON_GIL;
#   2. for the free-threaded one, python3.13t on PATH; for the GIL twin, python3.13 on PATH
#      when it is a GIL build of exactly the same version as the free-threaded one;
#   3. a build cached in ${XDG_CACHE_HOME:-~/.cache}/flowcat-ft/, made from Debian's python3.13
#      source package (the first run takes a few minutes; later runs reuse it).
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/flowcat-ft"
say() { printf 'interpreters: %s\n' "$*" >&2; }
die() { printf 'interpreters: error: %s\n' "$*" >&2; exit 1; }

# "<version> <gil|ft>" for a python executable, or nothing if it does not run.
describe() {
    "$1" -c 'import sys, platform
print(platform.python_version(), "gil" if sys._is_gil_enabled() else "ft")' 2>/dev/null || true
}

require() {  # require PATH KIND: the interpreter at PATH must be CPython 3.13 of KIND
    local desc; desc=$(describe "$1")
    case "$desc" in
        "3.13."*" $2") ;;
        "") die "$1 does not run" ;;
        *) die "$1 is $desc, expected a 3.13 $2 build" ;;
    esac
}

# Download the newest python3.13 source package that the machine's own Debian mirror carries,
# through a private apt configuration so the system's lists stay untouched. Echoes the
# path of the upstream tarball.
fetch_source() {
    local work="$cache/source" uri
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list*; install python3.13t yourself and set FLOWCAT_PYTHON_FT and FLOWCAT_PYTHON_GIL"
    command -v apt-get >/dev/null || die "apt-get not found; install python3.13t and set FLOWCAT_PYTHON_FT and FLOWCAT_PYTHON_GIL"
    mkdir -p "$work/sources.d" "$work/lists/partial" "$work/download"
    cat > "$work/sources.d/trixie-src.sources" <<SRC
Types: deb-src
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    local apt=(apt-get -q -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/sources.d"
               -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
    say "fetching the python3.13 source package from $uri (trixie)"
    "${apt[@]}" update >&2 || die "apt-get update for the trixie source index failed"
    (cd "$work/download" && rm -f ./*.orig.tar.xz && "${apt[@]}" source --download-only python3.13 >&2) \
        || die "apt-get source python3.13 failed"
    ls "$work"/download/python3.13_*.orig.tar.xz | sort -V | tail -n 1
}

# progress KIND PID: while the build PID runs in the current directory, say every 15 s how
# far it got: object files made so far against the C files there are (an estimate).
progress() {
    local total done start=$SECONDS next=$(( SECONDS + 15 ))
    total=$(find Objects Python Parser Modules -name '*.c' | wc -l)
    while kill -0 "$2" 2>/dev/null; do
        sleep 1
        if (( SECONDS >= next )); then
            next=$(( SECONDS + 15 ))
            done=$(find . -name '*.o' | wc -l)
            say "  $1: compiling, $done of ~$total files ($(( done * 100 / total ))%), $(( SECONDS - start )) s"
        fi
    done
}

# build KIND TARBALL: configure, build and install one interpreter into the cache; echo its path.
build() {
    local kind=$1 tarball=$2 version prefix src flags=() exe
    version=$(basename "$tarball" | sed -E 's/^python3\.13_(3\.13\.[0-9]+).*/\1/')
    prefix="$cache/cpython-$version-$kind"
    if [ "$kind" = ft ]; then flags=(--disable-gil); exe="$prefix/bin/python3.13t"; else exe="$prefix/bin/python3.13"; fi
    src=$(mktemp -d "$cache/build-$kind.XXXXXX")
    say "building CPython $version ($kind) into $prefix; this takes a few minutes, log in $src/build.log"
    tar -xJf "$tarball" -C "$src" --strip-components=1
    # (errexit is off inside a subshell that is part of an || list: each step is chained.)
    (
        cd "$src" &&
        ./configure --prefix="$prefix" --with-ensurepip=install "${flags[@]}" > build.log 2>&1 &&
        say "  $kind: configured, compiling" &&
        { make -j"$(nproc)" >> build.log 2>&1 & progress "$kind" $!; wait $!; } &&
        say "  $kind: compiled, installing" &&
        make install >> build.log 2>&1
    ) || { tail -n 30 "$src/build.log" >&2; die "building CPython $version ($kind) failed; see $src/build.log"; }
    rm -rf "$src"
    echo "$exe"
}

# cached KIND VERSION: the interpreter of that kind built earlier into the cache, if it runs.
cached() {
    local exe="$cache/cpython-$2-$1/bin/python3.13"
    [ "$1" = ft ] && exe+=t
    [ -n "$(describe "$exe")" ] && echo "$exe" || true
}
version_of() { describe "$1" | cut -d' ' -f1; }

ft=${FLOWCAT_PYTHON_FT:-}
gil=${FLOWCAT_PYTHON_GIL:-}
[ -n "$ft" ] || ft=$(command -v python3.13t || true)
if [ -z "$ft" ]; then
    newest=$(ls -d "$cache"/cpython-3.13.*-ft 2>/dev/null | sort -V | tail -n 1 || true)
    [ -z "$newest" ] || ft=$(cached ft "$(basename "${newest%-ft}" | cut -d- -f2)")
fi
if [ -n "$ft" ] && [ -z "$gil" ]; then
    require "$ft" ft
    version=$(version_of "$ft")
    candidate=$(command -v python3.13 || true)
    if [ -n "$candidate" ] && [ "$(describe "$candidate")" = "$version gil" ]; then gil=$candidate
    else gil=$(cached gil "$version"); fi
fi

if [ -z "$ft" ] || [ -z "$gil" ]; then
    mkdir -p "$cache"
    tarball=""
    [ -z "$ft" ] || tarball=$(ls "$cache/source/download/python3.13_$(version_of "$ft").orig.tar.xz" 2>/dev/null || true)
    [ -n "$tarball" ] || tarball=$(fetch_source)
    [ -n "$ft" ] || ft=$(build ft "$tarball")
    case "$tarball" in
        *"_$(version_of "$ft").orig.tar.xz") ;;
        *) die "the GIL twin must be built from the source of $ft (CPython $(version_of "$ft")) but the mirror carries $(basename "$tarball"); set FLOWCAT_PYTHON_GIL" ;;
    esac
    [ -n "$gil" ] || gil=$(build gil "$tarball")
fi

require "$ft" ft
require "$gil" gil
[ "$(describe "$ft" | cut -d' ' -f1)" = "$(describe "$gil" | cut -d' ' -f1)" ] \
    || die "$ft and $gil are different CPython versions; the GIL twin must be built from the same source"
say "free-threaded: $ft ($(describe "$ft"))"
say "GIL twin:      $gil ($(describe "$gil"))"
printf 'FLOWCAT_PYTHON_FT=%q\nFLOWCAT_PYTHON_GIL=%q\n' "$ft" "$gil"
