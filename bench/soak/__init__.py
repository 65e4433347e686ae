"""The soak benchmark: ``python -m bench.soak`` (see ``bench/soak/__main__.py``)."""
