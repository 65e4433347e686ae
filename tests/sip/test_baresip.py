"""baresip, a real SIP phone, calls the agent: speech both ways, RFC 4733 DTMF both ways.

baresip plays espeak-ng's speech from a file (its aufile module), records what it hears
(sndfile), takes commands on its control socket (ctrl_tcp, netstrings of JSON) and key
presses on its console socket (cons: a digit in a call is sent as DTMF)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from helpers import self_signed_certificate, wait_until
from peers import need_program
from sip_helpers import Heard, free_port, listening

from flowcat_ft.transports.sip import CallFailed


def speech(folder, rate: int) -> str:
    """Two seconds of espeak-ng's speech, then three of silence, as ``rate`` Hz 16-bit WAV
    (baresip's aufile plays a file only at the codec's rate: 8 kHz for G.711, 48 kHz for
    Opus; another rate fails the call with "No such device")."""
    spoken, path = folder / "spoken.wav", folder / "say.wav"
    espeak, sox = need_program("espeak-ng"), need_program("sox")
    subprocess.run([espeak, "-w", spoken, "hello agent, this is a test"], check=True)
    convert = [sox, spoken, "-r", str(rate), "-c", "1", "-b", "16", path, "pad", "0", "3"]
    subprocess.run(convert, check=True)
    return str(path)


class Baresip:
    """baresip in ``folder``; ``config``: more lines of its config; ``account``: its
    accounts line's parameters (after the address of record); ``rate``: its speech file's
    sample rate (the codec's)."""

    def __init__(
        self, folder, config: str = "", account: str = ";regint=0", rate: int = 8000
    ) -> None:
        self.folder = folder
        self.config = config
        self.account = account
        self.events: list[tuple[str, str]] = []
        self._data = b""
        say = speech(folder, rate)
        for _ in range(3):  # ports picked free may be taken by the time it binds them
            if self._start(say):
                return
        raise RuntimeError("baresip did not start (its ports were taken three times)")

    def _start(self, say: str) -> bool:
        """Start baresip on free ports; True once its control socket answers."""
        sip, self.ctrl, self.cons = free_port(), free_port(socket.SOCK_STREAM), free_port()
        self.sip_port = sip
        rtp = free_port(even=True)
        folder = self.folder
        (folder / "accounts").write_text(f"<sip:phone@127.0.0.1>{self.account}\n")
        (folder / "config").write_text(
            f"poll_method epoll\nsip_listen 127.0.0.1:{sip}\nrtp_ports {rtp}-{rtp + 10}\n"
            f"audio_source aufile,{say}\naudio_player aubridge,nowhere\n"
            "audio_alert aubridge,nowhere\nmodule_path /usr/lib/baresip/modules\n"
            "module g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n"
            f"snd_path {folder}\nmodule cons.so\ncons_listen 127.0.0.1:{self.cons}\n"
            "module_app menu.so\nmodule_app account.so\nmodule_app ctrl_tcp.so\n"
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl}\n{self.config}"
        )
        self.process = subprocess.Popen(
            [need_program("baresip"), "-f", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                self.control = socket.create_connection(("127.0.0.1", self.ctrl), timeout=1)
                return True
            except OSError:
                time.sleep(0.05)
        self.process.kill()
        self.process.wait()
        return False

    def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        self.control.sendall(b"%d:%s," % (len(body), body))

    def press(self, key: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as console:
            console.sendto(key.encode(), ("127.0.0.1", self.cons))

    def wait_for(self, event: str, timeout: float = 10) -> str:
        """The param of the first ``event`` (its type, as baresip names it)."""
        deadline = time.monotonic() + timeout
        self.control.settimeout(0.1)
        while time.monotonic() < deadline:
            for kind, param in self.events:
                if kind == event:
                    return param
            try:
                self._data += self.control.recv(65536)
            except TimeoutError:
                continue
            found = re.findall(rb'"type":"([A-Z_]+)"[^}]*?"param":"([^"]*)"', self._data)
            self.events = [(kind.decode(), param.decode()) for kind, param in found]
        raise TimeoutError(f"baresip did not report {event}: {self.events}")

    def heard(self) -> np.ndarray:
        """What baresip decoded from our RTP (sndfile's recording)."""
        (path,) = self.folder.glob("dump-*-dec.wav")
        with wave.open(str(path)) as recording:
            return np.frombuffer(recording.readframes(recording.getnframes()), "<i2")

    def stop(self) -> None:
        self.control.close()
        self.process.terminate()
        self.process.wait(5)


OPUS = "module opus.so\nopus_stereo no\nopus_sprop_stereo no\n"
"""baresip's config lines that add Opus to its offer (after G.711: we prefer Opus)."""


@pytest.mark.parametrize(
    ("codec", "codecs", "config", "rate"),
    [("PCMU", ("PCMU", "PCMA"), "", 8000), ("opus", ("OPUS", "PCMU", "PCMA"), OPUS, 48000)],
)
def test_baresip_calls_speaks_hears_the_echo_and_dtmf_goes_both_ways(
    sip_server, tmp_path, codec, codecs, config, rate
):
    heard = Heard()
    server = sip_server(listening(heard), codecs=codecs)
    phone = Baresip(tmp_path, config, rate=rate)
    try:
        phone.command("dial", f"sip:agent@127.0.0.1:{server.port}")
        phone.wait_for("CALL_ESTABLISHED")
        assert wait_until(lambda: heard.frames > 10)
        for _ in range(3):  # RFC 4733 to us; the agent presses "1" back
            phone.press("1")  # (again, if a loaded machine lost the console's datagram)
            if wait_until(lambda: heard.digits, 5):
                break
        assert heard.digits and set(heard.digits) == {"1"}
        assert phone.wait_for("CALL_DTMF_START") == "1"
        phone.wait_for("CALL_CLOSED", 15)  # its file ends: it hangs up
    finally:
        phone.stop()
    assert heard.loud > 20  # espeak-ng's words reached the agent
    echo = phone.heard().astype(float)
    assert np.sqrt(np.mean(echo**2)) > 500  # and came back: baresip heard them
    assert wait_until(lambda: server.ended)
    call = server.ended[-1]
    assert call.end_reason == "the caller hung up"
    assert call.media.negotiated.codec.name == codec
    assert call.media.rtcp_in >= 1 and call.media.rtcp_out >= 1  # its reports read, ours sent
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_baresip_calls_over_tls(sip_server, tmp_path):
    """Signalling over TLS only, with a certificate made for the test (baresip 1.0 does
    not check it; our client side checks baresip's, below)."""
    certificate = self_signed_certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*certificate)
    heard = Heard()
    server = sip_server(listening(heard), transports=("tls",), tls=tls, tls_port=0)
    assert server.uri == f"sip:agent@127.0.0.1:{server.endpoint.tls_port};transport=tls"
    phone = Baresip(tmp_path)
    try:
        phone.command("dial", server.uri)
        phone.wait_for("CALL_ESTABLISHED")
        assert wait_until(lambda: heard.frames > 10)
        phone.wait_for("CALL_CLOSED", 15)  # its file ends: it hangs up over TLS
    finally:
        phone.stop()
    assert heard.loud > 20
    assert wait_until(lambda: server.ended)
    call = server.ended[-1]
    assert call.end_reason == "the caller hung up" and call.peer.transport == "TLS"
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_the_agent_calls_baresip_over_tls_with_srtp_and_checks_its_certificate(
    sip_server, tmp_path
):
    cert, key = self_signed_certificate(tmp_path)
    (tmp_path / "both.pem").write_text(Path(cert).read_text() + Path(key).read_text())
    phone = Baresip(
        tmp_path,
        config=f"sip_certificate {tmp_path / 'both.pem'}\nmodule srtp.so\n",
        account=";regint=0;answermode=auto;mediaenc=srtp-mand",
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    options = {"transports": ("udp", "tls"), "tls": tls, "tls_port": 0}
    try:
        uri = f"sip:phone@127.0.0.1:{phone.sip_port + 1};transport=tls"  # baresip's TLS port
        untrusting = sip_server(listening(Heard()), **options)
        with pytest.raises(CallFailed) as raised:
            untrusting.dial(uri).result(15)
        assert "CERTIFICATE_VERIFY_FAILED" in raised.value.reason
        heard = Heard()
        trusting = ssl.create_default_context(cafile=cert)
        server = sip_server(listening(heard), tls_client=trusting, srtp="required", **options)
        call = server.dial(uri).result(15)
        assert call.peer.transport == "TLS" and call.media.negotiated.srtp is not None
        assert wait_until(lambda: heard.loud > 20)  # baresip's speech, over the TLS call
        server.hang_up(call.call_id)
        phone.wait_for("CALL_CLOSED")
    finally:
        phone.stop()
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_baresip_calls_with_srtp_over_tls_both_ways_heard(sip_server, tmp_path):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*self_signed_certificate(tmp_path))
    heard = Heard()
    options = {"transports": ("tls",), "tls": tls, "tls_port": 0, "srtp": "required"}
    server = sip_server(listening(heard), **options)
    phone = Baresip(tmp_path, config="module srtp.so\n", account=";regint=0;mediaenc=srtp-mand")
    try:
        phone.command("dial", server.uri)
        phone.wait_for("CALL_ESTABLISHED")
        assert wait_until(lambda: heard.frames > 10)
        phone.wait_for("CALL_CLOSED", 15)
    finally:
        phone.stop()
    assert heard.loud > 20  # baresip's SRTP decrypted: espeak-ng's words reached the agent
    echo = phone.heard().astype(float)
    assert np.sqrt(np.mean(echo**2)) > 500  # ours decrypted by baresip: it heard them back
    call = server.ended[-1]
    assert call.media.negotiated.srtp.suite == "AES_CM_128_HMAC_SHA1_80"
    assert call.media.rtcp_in >= 1  # its SRTCP reports checked and read
    # (baresip 1.0 sends two RTCP packets in the clear, an APP before its SRTP starts and
    # its BYE as it hangs up: those are dropped as unauthenticated.)
    assert call.media.unauthenticated <= 2
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
