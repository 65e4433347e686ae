"""A real WebRTC client peer (aiortc) that calls a flowcat-ft server, for tests and benches.

Run with a python where aiortc imports (the GIL venv)::

    .venv-gil/bin/python tests/transports/webrtc_peer.py \\
        --offer http://127.0.0.1:8765/webrtc/offer --wav speech.wav --seconds 6 --out out/peer

Each of ``--peers`` calls makes an offer with an audio track (the WAV, 16-bit mono, then
silence; or ``--clicks``: a 10 ms tone burst every second) and an ``events`` data channel,
POSTs it, and runs for ``--seconds`` after connecting; then it hangs up. It writes what it
heard to ``PREFIX-i.wav`` (16 kHz PCM16 mono) and its data-channel messages and figures to
``PREFIX-i.json``; the last line on stdout is one JSON object: every peer's figures and this
process's CPU time. ``--send SECONDS:TEXT`` sends TEXT on the data channel that long after
connecting. ``--ws URL`` makes the same calls over the raw WebSocket protocol instead
(PCM16 at 16 kHz, no data channel), to compare.

Round trips (with ``--clicks``): each click's send time is when its 20 ms frame left the
track; its return is when the frame holding the echo's onset arrived (``echoed_at``: those
times, ``time.monotonic()``, which other processes on the machine share).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from flowcat_ft.transports.webrtc.media import PcmTrack, pcm_frames

RATE = 16000  # what is recorded, and the rate of --clicks and of the --ws stream
FRAME = RATE // 50
CLICK_EVERY = 1.0
CLICK_LEVEL = 12000


class TimedTrack(PcmTrack):
    """A :class:`PcmTrack` that notes when each frame leaves."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate, max_queued=None, trim=False)
        self.sent_at: list[float] = []

    async def next_pcm(self) -> bytes:
        pcm = await super().next_pcm()
        self.sent_at.append(time.monotonic())
        return pcm


class Recording:
    """What one call heard, frame by frame, and when."""

    def __init__(self) -> None:
        self.pcm = bytearray()
        self.ends: list[int] = []  # where each frame ends, in samples
        self.arrived_at: list[float] = []

    def add(self, frame: bytes) -> None:
        self.pcm += frame
        self.ends.append(len(self.pcm) // 2)
        self.arrived_at.append(time.monotonic())

    def arrival(self, sample: int) -> float | None:
        """When the frame holding ``sample`` arrived."""
        frame = bisect.bisect_right(self.ends, sample)
        return self.arrived_at[frame] if frame < len(self.arrived_at) else None


def read_wav(path: str) -> tuple[bytes, int]:
    with wave.open(path) as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise SystemExit(f"{path}: expected 16-bit mono")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm)


def clicks(seconds: float) -> np.ndarray:
    """Silence with a 10 ms 1 kHz burst every second, the first at 0.5 s."""
    pcm = np.zeros(int(seconds * RATE), np.int16)
    burst = CLICK_LEVEL * np.sin(2 * np.pi * 1000 * np.arange(RATE // 100) / RATE)
    for start in np.arange(0.5, seconds - 0.5, CLICK_EVERY):
        at = int(start * RATE)
        pcm[at : at + len(burst)] = burst.astype(np.int16)
    return pcm


def round_trips(sent: np.ndarray, track: TimedTrack, heard: Recording) -> list[tuple[float, float]]:
    """When each click's frame left, and when the frame with its echo arrived."""
    got = np.frombuffer(bytes(heard.pcm), np.int16).astype(np.int32)
    loud_sent = np.flatnonzero(np.abs(sent.astype(np.int32)) > CLICK_LEVEL // 4)
    loud_got = np.flatnonzero(np.abs(got) > CLICK_LEVEL // 8)
    onsets = loud_sent[np.insert(np.diff(loud_sent) > RATE // 2, 0, True)]
    times = []
    for onset in onsets:
        frame = onset // FRAME
        later = loud_got[loud_got >= onset]  # an echo comes after what it echoes
        if frame >= len(track.sent_at) or not len(later) or later[0] - onset > RATE // 2:
            continue
        arrived = heard.arrival(int(later[0]))
        if arrived is not None:
            times.append((track.sent_at[frame], arrived))
    return times


async def post_offer(url: str, offer: dict[str, str]) -> tuple[int, dict | str]:
    def post() -> tuple[int, dict | str]:
        body = json.dumps(offer).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    return await asyncio.to_thread(post)


async def webrtc_call(
    url: str, pcm: bytes, rate: int, seconds: float, sends: list[tuple[float, str]]
) -> dict:
    """One WebRTC call: offer, connect, talk for ``seconds``, hang up."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = TimedTrack(rate)
    track.put(pcm)
    pc.addTrack(track)
    channel = pc.createDataChannel("events")
    events: list[str] = []
    channel.on("message", lambda message: events.append(message))
    heard = Recording()
    listening: list[asyncio.Task] = []
    connected = asyncio.Event()

    @pc.on("track")
    def on_track(remote) -> None:
        async def listen() -> None:
            async for frame in pcm_frames(remote, RATE):
                heard.add(frame)

        listening.append(asyncio.ensure_future(listen()))

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    began = time.monotonic()
    await pc.setLocalDescription(await pc.createOffer())
    status, answer = await post_offer(url, {"sdp": pc.localDescription.sdp, "type": "offer"})
    result = {"status": status, "events": events, "track": track, "heard": heard}
    if status != 200:
        result["error"] = answer
        await pc.close()
        return result
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await asyncio.wait_for(connected.wait(), 30)
    result["connect_ms"] = (time.monotonic() - began) * 1000
    for delay, text in sends:
        asyncio.get_running_loop().call_later(delay, channel.send, text)
    await asyncio.sleep(seconds)
    await pc.close()
    for task in listening:
        task.cancel()
    return result


async def ws_call(url: str, pcm: bytes, rate: int, seconds: float) -> dict:
    """The same call over the raw WebSocket protocol (PCM16 at 16 kHz)."""
    if rate != RATE:
        raise SystemExit(f"--ws sends {RATE} Hz audio, not {rate}")
    track = TimedTrack(rate)
    track.put(pcm)
    events: list[str] = []
    heard = Recording()
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"event": "start", "parameters": {"transport": "websocket"}}))

        async def talk() -> None:
            while True:
                await ws.send(await track.next_pcm())

        async def listen() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    heard.add(message)
                else:
                    events.append(message)

        tasks = [asyncio.ensure_future(talk()), asyncio.ensure_future(listen())]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
    return {"status": 101, "events": events, "track": track, "heard": heard}


async def main(args: argparse.Namespace) -> dict:
    if args.clicks:
        sent, rate = clicks(args.seconds), RATE
        pcm = sent.tobytes()
    else:
        pcm, rate = read_wav(args.wav)
        sent = np.frombuffer(pcm, np.int16)
    sends = [(float(at), text) for at, _, text in (s.partition(":") for s in args.send)]
    if args.ws:
        calls = [ws_call(args.ws, pcm, rate, args.seconds) for _ in range(args.peers)]
    else:
        calls = [webrtc_call(args.offer, pcm, rate, args.seconds, sends) for _ in range(args.peers)]
    results = await asyncio.gather(*calls)
    summary = []
    for i, result in enumerate(results):
        track, heard = result.pop("track"), result.pop("heard")
        result["sent_s"] = len(track.sent_at) * 0.02
        result["heard_s"] = len(heard.pcm) / 2 / RATE
        if args.clicks:
            trips = round_trips(sent, track, heard)
            result["round_trip_ms"] = [(back - left) * 1000 for left, back in trips]
            result["echoed_at"] = [back for _, back in trips]
        if args.out:
            prefix = Path(args.out)
            write_wav(prefix.with_name(f"{prefix.name}-{i}.wav"), bytes(heard.pcm))
            prefix.with_name(f"{prefix.name}-{i}.json").write_text(json.dumps(result))
        summary.append(result)
    return {"peers": summary, "cpu_s": time.process_time()}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--offer", help="the server's offer URL (http://HOST:PORT/webrtc/offer)")
    target.add_argument("--ws", help="a raw media route's URL instead (ws://HOST:PORT/raw)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="what to say: a 16-bit mono WAV")
    source.add_argument("--clicks", action="store_true", help="a click every second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to talk")
    parser.add_argument("--peers", type=int, default=1, help="calls at once")
    parser.add_argument("--send", action="append", default=[], metavar="SECONDS:TEXT")
    parser.add_argument("--out", help="write PREFIX-i.wav and PREFIX-i.json per call")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(arguments()))), flush=True)
