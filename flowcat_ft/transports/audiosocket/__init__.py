"""Asterisk AudioSocket: a call's audio over TCP, from Asterisk's dialplan to the agent.

:mod:`~flowcat_ft.transports.audiosocket.protocol` is the protocol, Sans-I/O;
:class:`AudioSocketServer` serves it on the runtime.
"""

from flowcat_ft.transports.audiosocket.server import AudioSocketServer, AudioSocketSession

__all__ = ["AudioSocketServer", "AudioSocketSession"]
