"""``flowcat-ft serve`` as the benchmark starts a server: ``python -m bench.agent.serve
--port P [serve's options]`` runs the command line's own ``main(["serve", ...])``."""

from __future__ import annotations

import sys

from flowcat_ft.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
