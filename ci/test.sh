#!/usr/bin/env bash
# The whole test suite: ruff, then pytest on free-threaded 3.13t (in parallel with
# pytest-xdist), then the same suite on the GIL twin. Fails if any part fails.
set -uo pipefail
cd "$(dirname "$0")/.."
ci/system-packages.sh || exit 1
ci/venvs.sh || exit 1

# A test whose peer (a Debian program, the GIL twin's python) is missing fails here rather
# than skipping (tests/peers.py), so a machine without one cannot pass by skipping.
export FLOWCAT_REQUIRE_PEERS=1

status=0
run_pytest() {  # run_pytest VENV ARGS...: pytest's exit 5 (no tests collected) is a failure too
    local venv=$1; shift
    echo "=== pytest on $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0], "free-threaded" if not sys._is_gil_enabled() else "GIL")')"
    "$venv/bin/python" -m pytest "$@"
    local rc=$?
    [ $rc -eq 5 ] && echo "test: no tests were collected in $venv" >&2
    [ $rc -eq 0 ] || status=1
}

echo "=== ruff"
.venv-ft/bin/ruff check . || status=1
.venv-ft/bin/ruff format --check . || status=1
run_pytest .venv-ft -n auto --dist loadgroup -p no:cacheprovider
run_pytest .venv-gil -n auto --dist loadgroup -p no:cacheprovider
[ $status -eq 0 ] && echo "test: all parts passed" || echo "test: FAILED" >&2
exit $status
