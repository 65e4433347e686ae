"""Each carrier's signature checked against the carrier's own examples, then refused when
tampered with, expired or missing."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json

import jwt
import pytest
from ecdsa import BadSignatureError, Ed25519, SigningKey

from flowcat_ft.server.signatures import (
    ReplayMemory,
    SignatureError,
    address_allowed,
    ed25519_public_key,
    plivo_signature,
    verify_basic_auth,
    verify_plivo,
    verify_telnyx,
    verify_twilio,
    verify_vonage,
    vonage_claims,
    vonage_payload_hash,
)

# -- Twilio (its example: https://www.twilio.com/docs/usage/security) -----------------------

TWILIO_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"


def test_twilio_accepts_its_documented_example_and_refuses_changes():
    verify_twilio("12345", TWILIO_URL, TWILIO_PARAMS, "GvWf1cFY/Q7PnoempGyD5oXAezc=")
    for token, url, params, signature, reason in [
        ("12345", TWILIO_URL, {**TWILIO_PARAMS, "Digits": "1235"}, None, "wrong"),
        ("12345", TWILIO_URL.replace("foo=1", "foo=2"), TWILIO_PARAMS, None, "wrong"),
        ("54321", TWILIO_URL, TWILIO_PARAMS, None, "wrong"),
        ("12345", TWILIO_URL, TWILIO_PARAMS, "", "missing"),
    ]:
        sent = "GvWf1cFY/Q7PnoempGyD5oXAezc=" if signature is None else signature
        with pytest.raises(SignatureError, match=f"^{reason} X-Twilio-Signature$"):
            verify_twilio(token, url, params, sent)


# -- Plivo (the V3 examples in Plivo's Go SDK's tests, plivo-go utils_test.go) ---------------

PLIVO_TOKEN = "Y2Q2ZDgxZmY5YWRiOTI5YmQ1Njg0MTAxZWIyOTc4"
PLIVO_NONCE = "31627761595286130198"
PLIVO_URL = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml"
PLIVO_PARAMS = {
    "Direction": "outbound",
    "From": "19792014278",
    "ALegUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "CallStatus": "in-progress",
    "BillRate": "0.002",
    "ParentAuthID": "MANWVLYTK4ZWU1YTY4QA",
    "To": "sip:PlivoSignature382029104058171078704104@phone-qa.voice.plivodev.com",
    "ALegRequestUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "CallUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "RequestUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "SIP-H-To": "<sip:PlivoSignature382029104058171078704104@52.9.11.55;transport=udp>;tag=1",
    "SessionStart": "2020-04-08 11:34:33.238707",
    "Event": "StartApp",
}


@pytest.mark.parametrize(
    ("method", "url", "signature"),
    [
        ("POST", PLIVO_URL + "/?a=b&c=d", "k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c="),
        ("GET", PLIVO_URL + "/?a=b&c=d", "UBq8jAtd32wR8EK9VgxbBn4n5rpI/l1H9iN4WfSEHFQ="),
        ("POST", PLIVO_URL, "iAjE5QqI37mbkYe4w3jTMudqEzbDufdqi7sYwTu64e0="),
        ("GET", PLIVO_URL, "i/MQsaQSAd6fiKhOh2qeeeLHZ9faldADSb3/7+Akfbc="),
    ],
)
def test_plivo_v3_matches_plivos_own_examples(method, url, signature):
    assert plivo_signature(PLIVO_TOKEN, method, url, PLIVO_PARAMS, PLIVO_NONCE) == signature
    verify_plivo(PLIVO_TOKEN, method, url, PLIVO_PARAMS, PLIVO_NONCE, f"other=,{signature}")


def test_plivo_v3_refuses_a_changed_field_nonce_or_url_and_a_missing_header():
    signature = "iAjE5QqI37mbkYe4w3jTMudqEzbDufdqi7sYwTu64e0="
    for url, params, nonce in [
        (PLIVO_URL, {**PLIVO_PARAMS, "To": "+15550000000"}, PLIVO_NONCE),
        (PLIVO_URL, PLIVO_PARAMS, "31627761595286130199"),
        (PLIVO_URL + "?x=1", PLIVO_PARAMS, PLIVO_NONCE),
    ]:
        with pytest.raises(SignatureError, match=r"^wrong X-Plivo-Signature-V3$"):
            verify_plivo(PLIVO_TOKEN, "POST", url, params, nonce, signature)
    with pytest.raises(SignatureError, match=r"^missing X-Plivo-Signature-V3"):
        verify_plivo(PLIVO_TOKEN, "POST", PLIVO_URL, PLIVO_PARAMS, "", signature)


# -- Telnyx: Ed25519 (RFC 8032 section 7.1's test vectors), then Telnyx's framing ------------

RFC8032 = [  # (public key, message, signature): TEST 1, 2 and 3
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
        "39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f"
        "3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f7"
        "60984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032)
def test_ed25519_verifies_rfc_8032s_vectors_and_refuses_changes(public, message, signature):
    key = ed25519_public_key(base64.b64encode(bytes.fromhex(public)).decode())
    sig, msg = bytes.fromhex(signature), bytes.fromhex(message)
    assert key.verify(sig, msg)
    for forged_sig, forged_msg in [
        (sig, msg + b"\x00"),
        (sig[:-1] + bytes([sig[-1] ^ 1]), msg),
        # The same signature with S + L: valid arithmetic, refused as RFC 8032 requires.
        (
            sig[:32] + (int.from_bytes(sig[32:], "little") + ED25519_ORDER).to_bytes(32, "little"),
            msg,
        ),
    ]:
        with pytest.raises(BadSignatureError):
            key.verify(forged_sig, forged_msg)


def test_ed25519_public_keys_must_be_32_bytes_of_base64():
    for bad in ("", "not base64!", base64.b64encode(b"\x01" * 31).decode()):
        with pytest.raises(ValueError, match="expected a base64 Ed25519 public key"):
            ed25519_public_key(bad)


TELNYX_KEY = SigningKey.from_string(b"\x07" * 32, curve=Ed25519)
TELNYX_PUBLIC = ed25519_public_key(
    base64.b64encode(TELNYX_KEY.get_verifying_key().to_string()).decode()
)
BODY = b"AccountSid=a1&CallSid=v3%3Aabc&From=%2B15550001111&To=%2B15550002222"
NOW = 1_800_000_000


def telnyx_signature(timestamp: str, body: bytes) -> str:
    """What Telnyx sends: base64 Ed25519 of ``timestamp|body``."""
    return base64.b64encode(TELNYX_KEY.sign(timestamp.encode() + b"|" + body)).decode()


def test_telnyx_signs_the_timestamp_and_the_body():
    signature = telnyx_signature(str(NOW), BODY)
    verify_telnyx(TELNYX_PUBLIC, str(NOW), BODY, signature, NOW + 299, 300)
    cases = [
        (str(NOW), BODY + b"&x=1", signature, NOW, "^wrong telnyx-signature-ed25519$"),
        (str(NOW + 1), BODY, signature, NOW, "^wrong telnyx-signature-ed25519$"),
        (str(NOW), BODY, "not base64", NOW, "^wrong telnyx-signature-ed25519$"),
        (str(NOW), BODY, "", NOW, "^missing telnyx-signature-ed25519$"),
        ("", BODY, signature, NOW, "^missing telnyx-timestamp$"),
        ("soon", BODY, signature, NOW, "^malformed telnyx-timestamp$"),
        (str(NOW), BODY, signature, NOW + 301, r"older than 300 s \(expired\)"),
        (str(NOW), BODY, signature, NOW - 301, "more than 300 s ahead"),
    ]
    for timestamp, body, sent, now, reason in cases:
        with pytest.raises(SignatureError, match=reason):
            verify_telnyx(TELNYX_PUBLIC, timestamp, body, sent, now, 300)


# -- Vonage (the example in Vonage's Python SDK's tests, vonage_jwt test_verify_jwt.py) ------

VONAGE_SDK_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJPbmxpbmUgSldUIEJ1aWxkZXIiLCJpYXQiOjE2OTc2Mz"
    "Q2ODAsImV4cCI6MzMyNTQ1NDA4MjgsImF1ZCI6IiIsInN1YiI6IiJ9.88vJc3I2HhuqEDixHXVhc9R30tA6U_HQHZTC2"
    "9y6CGM"
)
VONAGE_SECRET = "qwertyuiopasdfghjklzxcvbnm123456"


def test_vonage_jwts_are_checked_as_vonages_sdk_checks_them():
    assert vonage_claims(VONAGE_SECRET, VONAGE_SDK_TOKEN)["iat"] == 1697634680
    with pytest.raises(SignatureError, match=r"^wrong signature on the Vonage JWT$"):
        vonage_claims("a" * 32, VONAGE_SDK_TOKEN)
    with pytest.raises(SignatureError, match=r"^malformed Vonage JWT$"):
        vonage_claims(VONAGE_SECRET, "asdf")


def vonage_jwt(payload_hash: str | None, iat: int = NOW, secret: str = VONAGE_SECRET) -> str:
    claims = {"iat": iat, "jti": "j1", "iss": "Vonage", "api_key": "k1", "application_id": "a1"}
    if payload_hash is not None:
        claims["payload_hash"] = payload_hash
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


def test_vonage_signs_the_payload_hash_and_the_time():
    query = [("uuid", "v1"), ("from", "447700900000"), ("to", "447700900001")]
    get_hash = vonage_payload_hash("GET", query, b"")
    compact = b'{"uuid":"v1","from":"447700900000","to":"447700900001"}'
    assert get_hash == hashlib.sha256(compact).hexdigest()
    body = json.dumps(dict(query)).encode()
    assert vonage_payload_hash("POST", [], body) == hashlib.sha256(body).hexdigest()
    assert (
        verify_vonage(VONAGE_SECRET, vonage_jwt(get_hash), get_hash, NOW + 299, 300)["jti"] == "j1"
    )
    other_hash = vonage_payload_hash("GET", [*query[:2], ("to", "1")], b"")
    cases = [
        (vonage_jwt(get_hash), other_hash, NOW, "^the body does not match the Vonage JWT's"),
        (vonage_jwt(get_hash, secret="x" * 32), get_hash, NOW, "^wrong signature"),
        (vonage_jwt(None), get_hash, NOW, "^the Vonage JWT has no payload_hash$"),
        (vonage_jwt(get_hash), get_hash, NOW + 301, r"older than 300 s \(expired\)"),
        (vonage_jwt(get_hash), get_hash, NOW - 301, "more than 300 s ahead"),
        ("", get_hash, NOW, "^missing Authorization: Bearer"),
        ("Basic abc", get_hash, NOW, "^missing Authorization: Bearer"),
    ]
    for authorization, payload_hash, now, reason in cases:
        with pytest.raises(SignatureError, match=reason):
            verify_vonage(VONAGE_SECRET, authorization, payload_hash, now, 300)


# -- Exotel: basic auth, and its addresses --------------------------------------------------


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


def test_basic_auth_needs_both_credentials_right():
    verify_basic_auth(basic(b"key:token"), "key", "token")
    for header, reason in [
        (basic(b"key:wrong"), "^wrong"),
        (basic(b"other:token"), "^wrong"),
        (basic(b"keytoken"), "^wrong"),
        ("Basic !!", "^malformed"),
        ("", "^missing"),
        ("Bearer key:token", "^missing"),
    ]:
        with pytest.raises(SignatureError, match=reason):
            verify_basic_auth(header, "key", "token")


def test_addresses_are_allowed_by_network():
    networks = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")]
    assert address_allowed("203.0.113.9", networks)
    assert address_allowed("::ffff:203.0.113.9", networks)  # IPv4 on a dual-stack socket
    assert address_allowed("2001:db8::1", networks)
    assert not address_allowed("198.51.100.1", networks)
    assert not address_allowed("", networks)


# -- replays --------------------------------------------------------------------------------


def test_a_repeat_is_refused_while_it_is_remembered():
    memory = ReplayMemory(capacity=3)
    assert memory.first_time("a", now=0, ttl=10)
    assert not memory.first_time("a", now=9, ttl=10)
    assert memory.first_time("a", now=11, ttl=10)  # forgotten once it could not be accepted
    for key in "bcd":  # full: the oldest goes first
        assert memory.first_time(key, now=12, ttl=10)
    assert memory.first_time("a", now=12, ttl=10)
    assert not memory.first_time("d", now=12, ttl=10)
