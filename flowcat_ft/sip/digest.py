"""HTTP digest authentication for SIP (RFC 3261 section 22, RFC 7616, RFC 8760), client side.

A registrar or proxy answers ``401`` with ``WWW-Authenticate`` (or ``407`` with
``Proxy-Authenticate``); :func:`authorization` answers the strongest challenge we can
(SHA-256 before MD5, ``-sess`` variants too) with ``qop=auth`` where it is offered, as
the value of ``Authorization`` (or ``Proxy-Authorization``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from flowcat_ft.sip.message import split_list

__all__ = ["Challenge", "DigestError", "authorization", "parse_challenge"]

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")


class DigestError(ValueError):
    """A challenge we cannot answer (another scheme, an unknown algorithm, qop without
    ``auth``); the message says which."""


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    """One ``WWW-Authenticate`` / ``Proxy-Authenticate`` value."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"the {scheme} scheme is not digest")
    params: dict[str, str] = {}
    for part in split_list(rest):
        name, _, raw = part.partition("=")
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
        params[name.strip().lower()] = raw
    if "realm" not in params or "nonce" not in params:
        raise DigestError("a digest challenge without realm or nonce")
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _PREFERENCE:
        raise DigestError(f"unknown digest algorithm {algorithm}")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    if qop and "auth" not in qop:
        raise DigestError(f"qop {','.join(qop)} offers no plain auth")
    return Challenge(
        params["realm"],
        params["nonce"],
        algorithm,
        qop,
        params.get("opaque"),
        params.get("stale", "").lower() == "true",
    )


def strongest(values: list[str]) -> Challenge:
    """The challenge to answer among several (a server may offer SHA-256 and MD5)."""
    challenges, problems = [], []
    for value in values:
        try:
            challenges.append(parse_challenge(value))
        except DigestError as error:
            problems.append(str(error))
    if not challenges:
        raise DigestError("; ".join(problems) or "no challenge")
    return min(challenges, key=lambda c: _PREFERENCE.index(c.algorithm))


def authorization(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The ``Authorization`` value that answers ``challenge`` for ``method`` ``uri``."""
    algorithm = challenge.algorithm
    digest = _HASHES[algorithm.removesuffix("-SESS")]

    def h(text: str) -> str:
        return digest(text.encode()).hexdigest()

    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{username}:{challenge.realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    fields = [
        f'username="{username}"',
        f'realm="{challenge.realm}"',
        f'nonce="{challenge.nonce}"',
        f'uri="{uri}"',
    ]
    if challenge.qop:
        count = f"{nc:08x}"
        response = h(f"{ha1}:{challenge.nonce}:{count}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', f"algorithm={algorithm}"]
        fields += [f'cnonce="{cnonce}"', "qop=auth", f"nc={count}"]
    else:
        response = h(f"{ha1}:{challenge.nonce}:{ha2}")
        fields += [f'response="{response}"', f"algorithm={algorithm}"]
    if challenge.opaque is not None:
        fields.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(fields)
