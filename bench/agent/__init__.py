"""The agent benchmark: phone conversations with a talking agent, timed at the caller.

See ``bench/agent/README.md``; run ``python -m bench.agent --quick``.
"""
