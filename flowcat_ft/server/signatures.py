"""How each carrier signs its webhooks, as pure functions: a request in, its verdict out.

Each ``verify_*`` function returns if the request is the carrier's and raises
:class:`SignatureError` saying what is wrong otherwise, in words that may be sent to the
peer; :mod:`~flowcat_ft.server.carrierauth` applies them to requests. Each follows the
carrier's documentation, and the tests check it against the carrier's own examples:

- Twilio: ``X-Twilio-Signature``, base64 HMAC-SHA1 (key: the auth token) of the URL it
  requested followed by a POST's form fields sorted by name, each name then value.
- Plivo: ``X-Plivo-Signature-V3`` (one or more, comma-separated), base64 HMAC-SHA256 (key:
  the auth token) of the URL without its query, then ``?`` and the query's parameters
  sorted (a GET), or for a POST the sorted query, a ``.`` if both are there, and the form
  fields sorted, each name then value; then ``.`` and ``X-Plivo-Signature-V3-Nonce``.
- Telnyx: ``telnyx-signature-ed25519``, a base64 Ed25519 signature of
  ``<telnyx-timestamp>|<body>`` by the account's key (its public half in the portal),
  refused once the timestamp is older than the tolerance. Ed25519 is ``ecdsa``'s: pure
  Python, maintained, so it installs on 3.13t and keeps the GIL off (``cryptography`` and
  PyNaCl have no cp313t wheel). A verification costs about 4 ms of CPU.
- Vonage: ``Authorization: Bearer <JWT>``, HS256 with the account's signature secret, whose
  ``iat`` must be within the tolerance and whose ``payload_hash`` is the hex SHA-256 of the
  body (a POST) or of the query's parameters as compact JSON, in order (a GET). The JWT is
  PyJWT's.
- Exotel: signs nothing; it offers HTTP basic auth (credentials in the URL given to it,
  sent as ``Authorization: Basic``) and an allow-list of its addresses.

Twilio's and Plivo's signatures carry no time: a repeat of one is caught only by
remembering it (:class:`ReplayMemory`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from ecdsa import BadSignatureError, Ed25519, MalformedPointError, VerifyingKey

__all__ = [
    "ReplayMemory",
    "SignatureError",
    "address_allowed",
    "ed25519_public_key",
    "plivo_signature",
    "telnyx_timestamp",
    "twilio_signature",
    "verify_basic_auth",
    "verify_plivo",
    "verify_telnyx",
    "verify_twilio",
    "verify_vonage",
    "vonage_claims",
    "vonage_payload_hash",
]


class SignatureError(ValueError):
    """Why a request is not the carrier's, in words that may be sent to the peer."""


# -- Twilio ---------------------------------------------------------------------------------


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """What Twilio sends as ``X-Twilio-Signature`` for a request to ``url`` with the form
    fields ``params`` (none for a GET or a WebSocket handshake)."""
    signed = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify_twilio(auth_token: str, url: str, params: Mapping[str, str], signature: str) -> None:
    if not signature:
        raise SignatureError("missing X-Twilio-Signature")
    if not hmac.compare_digest(twilio_signature(auth_token, url, params), signature):
        raise SignatureError("wrong X-Twilio-Signature")


# -- Plivo ----------------------------------------------------------------------------------


def plivo_signature(
    auth_token: str, method: str, url: str, params: Mapping[str, str], nonce: str
) -> str:
    """What Plivo sends as ``X-Plivo-Signature-V3`` for a ``method`` request to ``url``
    (with its query) with the form fields ``params`` (a POST's)."""
    parts = urlsplit(url)
    signed = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if method == "GET":
        pairs = sorted([*query, *params.items()])
        if pairs:
            signed += "?" + "&".join(f"{name}={value}" for name, value in pairs)
    else:
        sorted_query = "&".join(f"{name}={value}" for name, value in sorted(query))
        if sorted_query or params:
            signed += "?" + sorted_query
        if sorted_query and params:
            signed += "."
        signed += "".join(name + params[name] for name in sorted(params))
    signed += "." + nonce
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_plivo(
    auth_token: str,
    method: str,
    url: str,
    params: Mapping[str, str],
    nonce: str,
    signatures: str,
) -> None:
    """``signatures``: the ``X-Plivo-Signature-V3`` header (one per auth token the
    account has, comma-separated); ``nonce``: ``X-Plivo-Signature-V3-Nonce``."""
    if not signatures or not nonce:
        raise SignatureError("missing X-Plivo-Signature-V3 or X-Plivo-Signature-V3-Nonce")
    expected = plivo_signature(auth_token, method, url, params, nonce)
    if not any(hmac.compare_digest(expected, sent.strip()) for sent in signatures.split(",")):
        raise SignatureError("wrong X-Plivo-Signature-V3")


# -- Telnyx ---------------------------------------------------------------------------------


def ed25519_public_key(encoded: str) -> VerifyingKey:
    """An Ed25519 public key from its base64 form (as Telnyx's portal shows it); raises
    ``ValueError`` if it is not one."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
        if len(raw) != 32:
            raise ValueError
        return VerifyingKey.from_string(raw, curve=Ed25519)
    except (binascii.Error, ValueError, MalformedPointError):
        raise ValueError("expected a base64 Ed25519 public key (32 bytes)") from None


def telnyx_timestamp(timestamp: str, now: float, tolerance: float) -> int:
    """The ``telnyx-timestamp`` header's time, if it is within ``tolerance`` seconds of
    ``now``: the cheap half of :func:`verify_telnyx`, to do first."""
    if not timestamp:
        raise SignatureError("missing telnyx-timestamp")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError("malformed telnyx-timestamp")
    sent = int(timestamp)
    if sent < now - tolerance:
        raise SignatureError(f"telnyx-timestamp is older than {tolerance:g} s (expired)")
    if sent > now + tolerance:
        raise SignatureError(f"telnyx-timestamp is more than {tolerance:g} s ahead")
    return sent


def verify_telnyx(
    public_key: VerifyingKey,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float,
) -> None:
    telnyx_timestamp(timestamp, now, tolerance)
    if not signature:
        raise SignatureError("missing telnyx-signature-ed25519")
    try:
        public_key.verify(
            base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body
        )
    except (binascii.Error, BadSignatureError):
        raise SignatureError("wrong telnyx-signature-ed25519") from None


# -- Vonage ---------------------------------------------------------------------------------


def vonage_payload_hash(method: str, query: Iterable[tuple[str, str]], body: bytes) -> str:
    """The ``payload_hash`` claim Vonage signs: the hex SHA-256 of a POST's body, or of a
    GET's query parameters as compact JSON, in the order they came."""
    if method == "GET":
        payload = json.dumps(dict(query), separators=(",", ":"), ensure_ascii=False).encode()
    else:
        payload = body
    return hashlib.sha256(payload).hexdigest()


def verify_vonage(
    signature_secret: str,
    authorization: str,
    payload_hash: str,
    now: float,
    tolerance: float,
) -> dict[str, Any]:
    """The claims of the ``Authorization`` header's JWT, once its signature, its age and
    its ``payload_hash`` (against ``payload_hash``, see :func:`vonage_payload_hash`)
    are right."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureError("missing Authorization: Bearer <JWT signed by Vonage>")
    claims = vonage_claims(signature_secret, token.strip())
    issued = claims.get("iat")
    if not isinstance(issued, int | float) or isinstance(issued, bool):
        raise SignatureError("the Vonage JWT has no iat (issued at)")
    if issued < now - tolerance:
        raise SignatureError(f"the Vonage JWT is older than {tolerance:g} s (expired)")
    if issued > now + tolerance:
        raise SignatureError(f"the Vonage JWT was issued more than {tolerance:g} s ahead")
    signed_hash = claims.get("payload_hash")
    if not isinstance(signed_hash, str):
        raise SignatureError("the Vonage JWT has no payload_hash")
    if not hmac.compare_digest(signed_hash.lower(), payload_hash):
        raise SignatureError("the body does not match the Vonage JWT's payload_hash")
    return claims


def vonage_claims(signature_secret: str, token: str) -> dict[str, Any]:
    """The claims of a JWT that is HS256-signed with ``signature_secret``; its times are
    not checked here (Vonage's ``iat`` is, by :func:`verify_vonage`)."""
    try:
        return jwt.decode(
            token,
            signature_secret,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise SignatureError("wrong signature on the Vonage JWT") from None
    except jwt.InvalidTokenError:
        raise SignatureError("malformed Vonage JWT") from None


# -- Exotel ---------------------------------------------------------------------------------


def verify_basic_auth(authorization: str, username: str, password: str) -> None:
    """``Authorization: Basic`` with these credentials (the ones in the URL given to
    Exotel)."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise SignatureError("missing Authorization: Basic credentials")
    try:
        user, colon, secret = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except binascii.Error:
        raise SignatureError("malformed Authorization: Basic credentials") from None
    matches = hmac.compare_digest(user, username.encode())
    matches &= hmac.compare_digest(secret, password.encode())
    if not (colon and matches):
        raise SignatureError("wrong Authorization: Basic credentials")


def address_allowed(
    address: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether ``address`` (an IP address) lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


# -- replays --------------------------------------------------------------------------------


class ReplayMemory:
    """The signed requests seen lately, so that a repeat of one is refused.

    :meth:`first_time` remembers a key (a nonce, a signature) until ``now + ttl``; at
    most ``capacity`` keys, the oldest forgotten first. Only keys of requests whose
    signature was right are remembered, so a flood of forgeries cannot push out real ones.

    Threading contract: guards on every event-loop thread call :meth:`first_time`;
    ``_expiries`` is read and written only under ``_lock``.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._expiries: OrderedDict[str, float] = OrderedDict()  # oldest first

    def first_time(self, key: str, now: float, ttl: float) -> bool:
        """True the first time ``key`` is seen within its ``ttl``; False for a repeat."""
        with self._lock:
            expiries = self._expiries
            while expiries:
                oldest, expiry = next(iter(expiries.items()))
                if expiry > now and len(expiries) < self.capacity:
                    break
                del expiries[oldest]
            if expiries.get(key, 0.0) > now:
                return False
            expiries[key] = now + ttl
            expiries.move_to_end(key)
            return True
