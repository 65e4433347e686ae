"""Digest authentication against RFC 7616's worked examples (section 3.9.1)."""

from __future__ import annotations

import pytest

from flowcat_ft.sip.digest import DigestError, authorization, parse_challenge, strongest

CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc_7616_examples(algorithm, response):
    challenge = parse_challenge(CHALLENGE.format(algorithm=algorithm))
    value = authorization(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=CNONCE
    )
    assert f'response="{response}"' in value
    assert "qop=auth, nc=00000001" in value and 'opaque="FQhe' in value


def test_the_strongest_challenge_is_answered_and_others_are_named():
    both = [CHALLENGE.format(algorithm="MD5"), CHALLENGE.format(algorithm="SHA-256")]
    assert strongest(both).algorithm == "SHA-256"
    with pytest.raises(DigestError, match="Basic scheme is not digest"):
        strongest(['Basic realm="x"'])
    with pytest.raises(DigestError, match="unknown digest algorithm"):
        parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-512')
    with pytest.raises(DigestError, match="no plain auth"):
        parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
