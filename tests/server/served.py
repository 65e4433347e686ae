"""The served agent the server's tests start: the echo agent's configuration on loopback."""

from __future__ import annotations

import json

from flowcat_ft.server.config import Config, load_config


def echo_config(tmp_path, rest: str = "", **server) -> Config:
    """A configuration of the echo agent on 127.0.0.1, any free port, WebRTC off, written
    to ``tmp_path/agent.yaml`` and loaded: ``server`` fields override those, ``rest`` is
    more YAML (other sections)."""
    fields = {"host": "127.0.0.1", "port": 0, "webrtc": False, **server}
    path = tmp_path / "agent.yaml"
    path.write_text(f"server: {json.dumps(fields)}\nagent: {{kind: echo}}\n{rest}")
    return load_config(path)
