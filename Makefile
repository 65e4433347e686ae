# The two commands README.md opens with. Both set up everything they need on first use:
# the free-threaded and GIL interpreters (ci/interpreters.sh) and the venvs (ci/venvs.sh).
# make serve ARGS="--agent echo" passes options to flowcat-ft serve.
.PHONY: serve test venvs

serve: venvs
	ci/system-packages.sh serve
	.venv-ft/bin/flowcat-ft serve $(ARGS)

test:
	ci/test.sh

venvs:
	ci/venvs.sh
