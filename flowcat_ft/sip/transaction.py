"""SIP transactions (RFC 3261 section 17): retransmissions and timeouts, Sans-I/O.

A transaction sends through a ``send(bytes)`` callable and keeps time through a
:class:`Timers` object (an asyncio loop is one: ``call_later(delay, callback)``), so tests
drive it with a clock of their own. Over UDP a request or response is sent again at T1,
2·T1, 4·T1... (capped at T2 but for an INVITE's) until it is answered; over TCP it is sent
once. The timers by their RFC names:

- client INVITE: A (send again) and B (give up after 64·T1, the request timed out);
- client non-INVITE: E and F, the same for BYE, OPTIONS, REGISTER...;
- server INVITE: G (send the final response again until the ACK comes) and H (give up
  after 64·T1 without an ACK); here a 2xx is sent again the same way, which RFC 3261
  leaves to the dialog (section 13.3.1.4) and RFC 6026 to the transaction; the ACK of a
  2xx, which has a branch of its own, reaches the transaction through the dialog;
- server non-INVITE: a repeated request gets the last response again, for 64·T1 (J).

A client INVITE answered with a failure sends its ACK itself (section 17.1.1.3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flowcat_ft.sip.message import Headers, Request, Response

__all__ = ["T1", "T2", "T4", "ClientTransaction", "ServerTransaction", "Timers"]

T1 = 0.5
T2 = 4.0
T4 = 5.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What transactions need of a clock: an asyncio event loop has it."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle: ...


class _Repeat:
    """Send ``data`` now, and over UDP again after T1, 2·T1, ... (capped at ``cap``);
    call ``expired`` ``timeout`` seconds after the first send unless stopped first."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        timers: Timers,
        data: bytes,
        *,
        reliable: bool,
        cap: float | None,
        expired: Callable[[], None] | None,
        timeout: float = 64 * T1,
    ) -> None:
        self._send, self._timers, self.data, self._cap = send, timers, data, cap
        self._interval = T1
        self._resend: TimerHandle | None = None
        self._expiry = timers.call_later(timeout, expired) if expired is not None else None
        send(data)
        if not reliable:
            self._resend = timers.call_later(T1, self._again)

    def _again(self) -> None:
        self._send(self.data)
        self._interval = self._interval * 2
        if self._cap is not None:
            self._interval = min(self._interval, self._cap)
        self._resend = self._timers.call_later(self._interval, self._again)

    def stop_resending(self) -> None:
        if self._resend is not None:
            self._resend.cancel()
            self._resend = None

    def stop(self) -> None:
        self.stop_resending()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


class ClientTransaction:
    """One request we sent, until its final response (or its timeout).

    ``on_response`` gets each provisional response and the final one (for an INVITE, a
    repeated 2xx too, so that the dialog sends its ACK again); ``on_timeout`` is called if
    no final response came within 64·T1 (timer B or F). ``on_done`` is called once the
    transaction is over, for whoever keeps it in a table.
    """

    def __init__(
        self,
        request: Request,
        send: Callable[[bytes], None],
        timers: Timers,
        *,
        reliable: bool,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
        on_done: Callable[[ClientTransaction], None] = lambda t: None,
    ) -> None:
        self.request = request
        self.key = (request.branch, request.method)
        self._send, self._timers, self._reliable = send, timers, reliable
        self._on_response, self._on_timeout, self._on_done = on_response, on_timeout, on_done
        self.final: Response | None = None
        self._ack: bytes | None = None
        self._linger: TimerHandle | None = None
        invite = request.method == "INVITE"
        self._repeat = _Repeat(
            send,
            timers,
            bytes(request),
            reliable=reliable,
            cap=None if invite else T2,
            expired=self._timed_out,
        )

    def receive(self, response: Response) -> None:
        if self.final is not None:  # a repeated final response
            if self._ack is not None:
                self._send(self._ack)
            elif response.status < 300 and self.request.method == "INVITE":
                self._on_response(response)
            return
        if response.status < 200:
            if self.request.method == "INVITE":
                self._repeat.stop_resending()  # Proceeding: no more INVITEs (timer B stays)
            self._on_response(response)
            return
        self.final = response
        self._repeat.stop()
        if self.request.method == "INVITE" and response.status >= 300:
            self._ack = bytes(self._failure_ack(response))
            self._send(self._ack)
        # Completed: absorb repeated final responses for a while (timers D and K).
        linger = 0 if self._reliable else (64 * T1 if self.request.method == "INVITE" else T4)
        self._linger = self._timers.call_later(linger, self._finish)
        self._on_response(response)

    def _failure_ack(self, response: Response) -> Request:
        request = self.request
        headers = Headers()
        headers.add("Via", request.headers.get("Via"))
        for name in ("Route", "From"):
            for value in request.headers.values(name):
                headers.add(name, value)
        headers.add("To", response.headers.get("To"))
        headers.add("Call-ID", request.call_id)
        headers.add("CSeq", f"{request.cseq.number} ACK")
        headers.add("Max-Forwards", "70")
        return Request("ACK", request.uri, headers)

    def _timed_out(self) -> None:
        if self.final is None:
            on_timeout = self._on_timeout
            self._finish()
            on_timeout()

    def _finish(self) -> None:
        self.cancel_timers()
        self._on_response, self._on_timeout = _ignore, _nothing
        self._on_done(self)

    def cancel_timers(self) -> None:
        """Stop every timer (the transaction is over, or the endpoint is shutting down).
        A handle that has fired is cancelled too: that drops its callback, a bound method
        of this transaction, which would otherwise hold it in a cycle for the collector."""
        self._repeat.stop()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None


class ServerTransaction:
    """One request we received, until its final response is through.

    :meth:`respond` sends a response; an INVITE's final response is sent again over UDP
    until :meth:`acknowledged` (timer G), and ``on_timeout`` is called if that does not
    happen within 64·T1 (timer H). A repeated request (:meth:`repeated`) gets the last
    response again. ``on_timeout`` may be set by the transaction user once it has one.
    """

    def __init__(
        self,
        request: Request,
        send: Callable[[bytes], None],
        timers: Timers,
        *,
        reliable: bool,
        on_timeout: Callable[[], None] = lambda: None,
        on_done: Callable[[ServerTransaction], None] = lambda t: None,
    ) -> None:
        self.request = request
        self._send, self._timers, self._reliable = send, timers, reliable
        self.on_timeout, self._on_done = on_timeout, on_done
        self.last: Response | None = None
        self._last_bytes: bytes | None = None
        self._repeat: _Repeat | None = None
        self._linger: TimerHandle | None = None
        self.acked = False

    @property
    def final(self) -> bool:
        return self.last is not None and self.last.status >= 200

    def respond(self, response: Response) -> None:
        if self.final:
            raise RuntimeError(f"{self.request.method} already has its final response")
        self.last = response
        self._last_bytes = data = bytes(response)
        if response.status < 200:
            self._send(data)
        elif self.request.method == "INVITE":
            self._repeat = _Repeat(
                self._send,
                self._timers,
                data,
                reliable=self._reliable,
                cap=T2,
                expired=self._timed_out,
            )
        else:
            self._send(data)
            self._linger = self._timers.call_later(0 if self._reliable else 64 * T1, self._finish)

    def repeated(self) -> None:
        """The request came again: the last response goes again (if any was sent)."""
        if self._last_bytes is not None:
            self._send(self._last_bytes)

    def acknowledged(self) -> None:
        """The ACK for the INVITE's final response came."""
        if self.acked:
            return
        self.acked = True
        if self._repeat is not None:
            self._repeat.stop()
        self._linger = self._timers.call_later(0 if self._reliable else T4, self._finish)

    def _timed_out(self) -> None:
        if not self.acked:
            on_timeout = self.on_timeout
            self._finish()
            on_timeout()

    def _finish(self) -> None:
        self.cancel_timers()
        self.on_timeout = _nothing  # often a method of the dialog, which holds us
        self._on_done(self)

    def cancel_timers(self) -> None:
        """Stop every timer (see :meth:`ClientTransaction.cancel_timers`)."""
        if self._repeat is not None:
            self._repeat.stop()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None


def _nothing() -> None:
    """A finished transaction's timeout callback."""


def _ignore(response: Response) -> None:
    """A finished client transaction's response callback."""
