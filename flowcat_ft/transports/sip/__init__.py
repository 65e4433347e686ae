"""SIP trunking: a SIP user agent (UDP, TCP, TLS) and its RTP media plane, on the runtime.

- :mod:`~flowcat_ft.transports.sip.endpoint`: sockets, framing, the transaction layer;
- :mod:`~flowcat_ft.transports.sip.dialog`: one call's dialog (answering, BYE, CANCEL,
  re-INVITE/UPDATE, session timers);
- :mod:`~flowcat_ft.transports.sip.media`: one call's RTP and RTCP;
- :mod:`~flowcat_ft.transports.sip.registration`: REGISTER with a trunk, kept alive;
- :mod:`~flowcat_ft.transports.sip.server`: :class:`SipServer`, what an application starts;
- :mod:`~flowcat_ft.transports.sip.pages`: HTTP endpoints that place calls.

The protocols themselves (messages, SDP, RTP packets, transactions) are Sans-I/O, in
:mod:`flowcat_ft.sip`.
"""

from flowcat_ft.transports.sip.registration import Trunk
from flowcat_ft.transports.sip.server import CallFailed, SipOptions, SipServer

__all__ = ["CallFailed", "SipOptions", "SipServer", "Trunk"]
