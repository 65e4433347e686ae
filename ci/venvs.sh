#!/usr/bin/env bash
# Make (or refresh) the two virtual environments at the repo root:
#   .venv-ft/   free-threaded CPython 3.13t
#   .venv-gil/  the GIL build of the same CPython
# each with flowcat-ft installed editable plus its dev, vad, opus and profile extras (and in
# .venv-gil only, stt and webrtc). A venv is rebuilt when its interpreter, pyproject.toml or this script
# changed since its stamp was written; otherwise this takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(ci/interpreters.sh)"

make_venv() {  # make_venv DIR PYTHON
    local dir=$1 python=$2 stamp="$1/.flowcat-stamp" want
    want="$python $(cat pyproject.toml ci/venvs.sh | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
        return
    fi
    echo "venvs: creating $dir with $python" >&2
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    # rpds-py (under kubernetes-validate) from wheels only: its newest sdists need Rust crates.
    "$dir/bin/python" -m pip install -q --only-binary rpds-py -e ".[dev,vad,opus,profile]"
    # The Silero VAD model ships in this wheel; its own dependency on torch is not needed.
    "$dir/bin/python" -m pip install -q --no-deps silero-vad
    # PocketSphinx runs in a worker process on the GIL twin (it would turn the GIL on here), and
    # so does aiortc, in the WebRTC companion process (it cannot be installed on 3.13t).
    if [ "$dir" = .venv-gil ]; then "$dir/bin/python" -m pip install -q -e ".[stt,webrtc]"; fi
    # websockets' C speedups (frame masking) come only from its sdist on cp313t; they keep
    # the GIL off and cut echo latency tenfold at load (see shared/ENVIRONMENT.md).
    "$dir/bin/python" -m pip install -q --force-reinstall --no-deps --no-binary websockets websockets
    echo "$want" > "$stamp"
}

make_venv .venv-ft "$FLOWCAT_PYTHON_FT"
make_venv .venv-gil "$FLOWCAT_PYTHON_GIL"
