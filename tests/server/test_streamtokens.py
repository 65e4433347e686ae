"""Stream tokens as pure functions: issued, checked, refused with a reason."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers

from flowcat_ft.serializers import StreamStarted
from flowcat_ft.server.streamtokens import StreamGrant, StreamTokenError, StreamTokens
from flowcat_ft.transports.http import HttpRequest


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tokens(clock: Clock, key: bytes = b"k" * 32) -> StreamTokens:
    return StreamTokens(key, ttl=120, clock=clock)


def test_a_token_admits_its_carrier_and_call_until_it_expires():
    clock = Clock()
    token = tokens(clock).issue("twilio", "CA9")
    assert tokens(clock).check("twilio", token) == StreamGrant("twilio", "CA9", 1_800_000_120)
    clock.now += 120
    assert tokens(clock).check("twilio", token).call_id == "CA9"
    clock.now += 1
    with pytest.raises(StreamTokenError, match=r"^the stream token has expired$"):
        tokens(clock).check("twilio", token)


def test_a_token_for_another_carrier_is_refused():
    clock = Clock()
    token = tokens(clock).issue("plivo", "u1")
    with pytest.raises(StreamTokenError, match=r"^the stream token is for plivo, not twilio$"):
        tokens(clock).check("twilio", token)
    forged = token.replace("plivo.", "twilio.", 1)
    with pytest.raises(StreamTokenError, match="signature is wrong"):
        tokens(clock).check("twilio", forged)


def test_tampered_and_foreign_tokens_are_refused():
    clock = Clock()
    carrier, expires, call, mac = tokens(clock).issue("telnyx", "v3:abc").split(".")
    other_call = tokens(clock).issue("telnyx", "v3:xyz").split(".")[2]
    for forged in (
        f"{carrier}.{int(expires) + 3600}.{call}.{mac}",  # a longer life
        f"{carrier}.{expires}.{other_call}.{mac}",  # another call
        f"{carrier}.{expires}.{call}.{mac[:-2]}AA",
    ):
        with pytest.raises(StreamTokenError, match="signature is wrong"):
            tokens(clock).check("telnyx", forged)
    with pytest.raises(StreamTokenError, match="signature is wrong"):
        tokens(clock, key=b"another key").check("telnyx", ".".join((carrier, expires, call, mac)))
    for malformed in ("", "abc", "telnyx.soon.x.y", "a.b.c.d.e", "telnyx.1.%%%.!!", "t" * 600):
        with pytest.raises(StreamTokenError, match=r"^malformed stream token$"):
            tokens(clock).check("telnyx", malformed)


def test_a_process_without_a_key_signs_with_its_own_random_one():
    first, second = StreamTokens(), StreamTokens()
    token = first.issue("exotel", "c1")
    assert first.check("exotel", token).call_id == "c1"
    with pytest.raises(StreamTokenError, match="signature is wrong"):
        second.check("exotel", token)


def request(path: str) -> HttpRequest:
    return HttpRequest("GET", path, {}, Headers(Upgrade="websocket"), target=path)


def test_the_guard_refuses_a_missing_or_bad_token_with_its_reason():
    clock = Clock()
    guard = tokens(clock).guards(["twilio", "vonage"])["/twilio"]
    assert guard(request(f"/twilio/{tokens(clock).issue('twilio', 'CA1')}")) is None
    missing = guard(request("/twilio"))
    assert missing.status == 403
    assert missing.body == (
        "a twilio stream needs a token: connect to the stream URL that /twilio/answer gave, "
        "/twilio/<token>\n"
    )
    wrong = guard(request(f"/twilio/{tokens(clock).issue('vonage', 'v1')}"))
    assert (wrong.status, wrong.body) == (403, "the stream token is for vonage, not twilio\n")


def started(call_id: str) -> StreamStarted:
    return StreamStarted(call_id, "s1", 8000, "mulaw", 1, {})


def test_the_start_check_refuses_a_stream_for_another_call():
    clock = Clock()
    check = tokens(clock).start_checks(["twilio"])["/twilio"]
    target = f"/twilio/{tokens(clock).issue('twilio', 'CA1')}"
    assert check(target, started("CA1")) is None
    assert check(target, started("CA2")) == "the stream token is for another call"
    assert check(target, started("")) is None  # a start that names no call (Vonage)
    clock.now += 3600  # expired since its handshake: the call is still the one it names
    assert check(target, started("CA1")) is None
    anyone = f"/twilio/{tokens(clock).issue('twilio', ttl=30 * 86400)}"
    assert check(anyone, started("CA2")) is None  # a carrier-wide token
