"""WebRTC calls, terminated by aiortc in a companion process (see :mod:`.gateway`).

Only the gateway is imported here: the companion and its media helpers import aiortc,
which the free-threaded server cannot.
"""

from flowcat_ft.transports.webrtc.gateway import WebRTCGateway

__all__ = ["WebRTCGateway"]
