"""The transports section: how each carrier's requests are verified, and its mistakes."""

from __future__ import annotations

import pytest

from flowcat_ft.server.config import ConfigError, load_config


def load(tmp_path, transports: str):
    path = tmp_path / "agent.yaml"
    path.write_text(f"agent: {{kind: echo}}\ntransports:\n{transports}")
    return load_config(path)


def mistakes(tmp_path, transports: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, transports)
    return [f"{e.field}: {e.message}" for e in raised.value.errors]


def test_every_carrier_is_unverified_until_its_secret_is_named(tmp_path, monkeypatch):
    assert load(tmp_path, "  carriers: [twilio, raw]\n").transports.unverified == ["twilio"]
    monkeypatch.setenv("TEST_PLIVO_TOKEN", "t")
    config = load(
        tmp_path,
        "  carriers: [plivo, exotel, vonage]\n"
        "  plivo: {auth_token_env: TEST_PLIVO_TOKEN}\n"
        "  exotel: {allow_from: [203.0.113.0/24]}\n",
    )
    assert config.transports.unverified == ["vonage"]


def test_secrets_that_are_not_set_or_not_keys_stop_start_up(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_UNSET", raising=False)
    monkeypatch.setenv("TEST_SHORT_KEY", "short")
    monkeypatch.setenv("TEST_NOT_A_KEY", "not a base64 key")
    assert mistakes(
        tmp_path,
        "  stream_token_key_env: TEST_SHORT_KEY\n"
        "  plivo: {auth_token_env: TEST_UNSET}\n"
        "  telnyx: {public_key_env: TEST_NOT_A_KEY}\n"
        "  vonage: {signature_secret_env: not-a-name}\n"
        "  exotel: {username_env: TEST_UNSET, allow_from: [203.0.113.0/24, example.com]}\n",
    ) == [
        "transports.plivo.auth_token_env: the environment variable TEST_UNSET (the Plivo auth "
        "token) is not set",
        "transports.vonage.signature_secret_env: expected the name of an environment variable, "
        "not the Vonage signature secret itself",
        "transports.exotel.username_env: the environment variable TEST_UNSET (the Exotel user "
        "name) is not set",
        "transports.stream_token_key_env: the key in TEST_SHORT_KEY is too short: give at least "
        "32 random characters",
        "transports.telnyx.public_key_env: TEST_NOT_A_KEY: expected a base64 Ed25519 public key "
        "(32 bytes)",
        "transports.exotel: give both username_env and password_env, or neither",
        "transports.exotel.allow_from[1]: expected an IP address or network (203.0.113.0/24), "
        "got 'example.com'",
    ]


def test_a_secret_written_in_place_of_its_variable_is_never_repeated(tmp_path):
    """Every field that names a secret's environment variable refuses the secret itself,
    and the error does not write it into the log."""
    found = mistakes(
        tmp_path,
        "  sip:\n"
        "    dial_token_env: 'dial token 1234'\n"
        "    trunks: [{registrar: 'sip:pbx.example', user: a, password_env: 'hunter2!'}]\n"
        "  twilio: {auth_token_env: 'abc def'}\n",
    )
    assert found == [
        "transports.twilio.auth_token_env: expected the name of an environment variable, not "
        "the Twilio auth token itself",
        "transports.sip.dial_token_env: expected the name of an environment variable, not the "
        "token itself",
        "transports.sip.trunks[0].password_env: expected the name of an environment variable, "
        "not the trunk's password itself",
    ]
