"""The floor: a bare ``websockets`` echo that does only the wire and codec work.

Each message goes through the same Sans-I/O serializer as flowcat-ft's server (picked by
the URL path: ``/raw?codec=mulaw&sample_rate=8000``, ``/twilio``), its µ-law is decoded
to PCM16 and encoded back with flowcat-ft's G.711 kernels, and the reply is sent with
``await ws.send()``: no runtime, no pipeline, no stage threads. Connections are spread over
``--loops`` event-loop threads, each with its own ``SO_REUSEPORT`` listener. Run by the
kit in ``.venv-ft`` (the published Rust figure was measured on such a bare harness).
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from bench.echo._serving import arguments, name_threads, raise_fd_limit, serve_until_stopped
from flowcat_ft.audio.g711 import ulaw_decode, ulaw_encode
from flowcat_ft.serializers import AudioIn, ProtocolError
from flowcat_ft.transports.server import default_routes

ROUTES = default_routes()


async def echo(ws: ServerConnection) -> None:
    """Decode each audio message's µ-law and send it back encoded again."""
    url = urlsplit(ws.request.path)
    serializer = ROUTES[url.path](dict(parse_qsl(url.query)))
    pcm = np.empty(8000, dtype=np.int16)
    async for message in ws:
        try:
            events = serializer.receive(message)
        except ProtocolError as error:
            await ws.close(error.close_code, str(error))
            return
        for event in events:
            if isinstance(event, AudioIn):
                codes = np.frombuffer(event.payload, dtype=np.uint8)
                n = ulaw_decode(codes, pcm)
                out = np.empty(n, dtype=np.uint8)
                ulaw_encode(pcm[:n], out)
                await ws.send(serializer.send_audio(out.tobytes()))


def listen(port: int, started: threading.Barrier) -> None:
    """Serve on this thread's own event loop until the process exits."""

    async def run() -> None:
        async with serve(echo, "127.0.0.1", port, reuse_port=True, compression=None):
            started.wait()
            await asyncio.Future()

    asyncio.run(run())


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--loops", type=int, default=2, help="event-loop threads (2)")
    args = p.parse_args()
    raise_fd_limit()
    name_threads()
    started = threading.Barrier(args.loops + 1)
    for i in range(args.loops):
        threading.Thread(
            target=listen, args=(args.port, started), name=f"floor-{i}", daemon=True
        ).start()
    started.wait(30)
    serve_until_stopped(f"floor {args.loops} loops")


if __name__ == "__main__":
    main()
