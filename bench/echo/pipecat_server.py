"""pipecat's echo servers for the benchmark, one worker process per core behind SO_REUSEPORT.

Two shapes, each a pipeline of 7 processors like flowcat-ft's:

``--shape websockets``, as the published comparison ran pipecat: each worker serves
``websockets`` with ``reuse_port=True`` (pipecat's own websocket server transport takes one
client only) and builds, per connection, a ``PipelineWorker`` run by a ``WorkerRunner``
(RTVI and turn tracking off, no idle timeout) over: µ-law decode into
``InputAudioRawFrame`` → 4 pass-through processors → echo as ``OutputAudioRawFrame`` → a
sink that encodes µ-law and sends it. Binary µ-law messages, on any path.

``--shape fastapi``, pipecat's realistic telephony shape: uvicorn serves a FastAPI app whose
``/twilio`` websocket runs ``FastAPIWebsocketTransport`` with ``TwilioFrameSerializer``:
transport input (decodes) → 4 pass-through processors → echo → transport output (encodes,
sends; it paces audio as a sound card would, in 20 ms chunks here). Twilio JSON messages.

Run by the kit in ``.venv-pipecat`` (GIL CPython: pipecat's numba has no cp313t wheel).
pipecat logs at DEBUG by default; here only warnings are logged, as in production.
"""

# No `from __future__ import annotations`: FastAPI reads the websocket handler's annotation
# at run time, and WebSocket is imported inside serve_fastapi, out of the module's reach.

import asyncio
import multiprocessing
import socket
import sys
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any

from bench.echo._serving import arguments, name_threads, raise_fd_limit, serve_until_stopped

if TYPE_CHECKING:
    from pipecat.pipeline.worker import PipelineWorker

PASS_THROUGH = 4  # + decode, echo and encode-and-send (or the transport's in and out): 7
RATE = 8000


def worker(shape: str, port: int, ready: Event) -> None:
    """One worker process: serve ``shape`` on ``port`` until terminated."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    raise_fd_limit()
    name_threads(multiprocessing.current_process().name)
    serve = serve_websockets if shape == "websockets" else serve_fastapi
    asyncio.run(serve(port, ready))


def pipecat_parts() -> tuple[type, type, type]:
    """The classes both shapes share: pass-through, echo, and a frame for µ-law messages
    (defined here, in the worker, once pipecat is imported)."""
    from pipecat.frames.frames import (
        Frame,
        InputAudioRawFrame,
        OutputAudioRawFrame,
        SystemFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class PassThrough(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    class Echo(FrameProcessor):
        """The caller's audio becomes output audio."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                frame = OutputAudioRawFrame(frame.audio, frame.sample_rate, frame.num_channels)
            await self.push_frame(frame, direction)

    @dataclass
    class MulawFrame(SystemFrame):
        """A µ-law message as it came off the socket (a system frame, as input audio is)."""

        payload: bytes

    return PassThrough, Echo, MulawFrame


def pipeline_worker(processors: list[Any]) -> "PipelineWorker":
    """A PipelineWorker over ``processors`` with RTVI, turn tracking and idle timeout off."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker

    return PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
    )


async def serve_websockets(port: int, ready: Event) -> None:
    """The published comparison's shape: websockets, a pipeline per connection."""
    from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw, ulaw_to_pcm
    from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner
    from websockets.asyncio.server import ServerConnection, serve

    pass_through, echo, mulaw_frame = pipecat_parts()

    class MulawDecoder(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self._resampler = create_stream_resampler()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, mulaw_frame):
                pcm = await ulaw_to_pcm(frame.payload, RATE, RATE, self._resampler)
                frame = InputAudioRawFrame(pcm, RATE, 1)
            await self.push_frame(frame, direction)

    class EncodeAndSend(FrameProcessor):
        def __init__(self, ws: ServerConnection) -> None:
            super().__init__()
            self._ws = ws
            self._resampler = create_stream_resampler()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputAudioRawFrame):
                await self._ws.send(await pcm_to_ulaw(frame.audio, RATE, RATE, self._resampler))
            else:
                await self.push_frame(frame, direction)

    async def handler(ws: ServerConnection) -> None:
        passes = [pass_through() for _ in range(PASS_THROUGH)]
        task = pipeline_worker([MulawDecoder(), *passes, echo(), EncodeAndSend(ws)])
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        running = asyncio.create_task(runner.run())
        try:
            async for message in ws:
                await task.queue_frame(mulaw_frame(payload=message))
        finally:
            await task.cancel()
            await running

    async with serve(handler, "127.0.0.1", port, reuse_port=True, compression=None):
        ready.set()
        await asyncio.Future()


async def serve_fastapi(port: int, ready: Event) -> None:
    """pipecat's telephony shape: FastAPI, its websocket transport, its Twilio serializer."""
    import uvicorn
    from fastapi import FastAPI, WebSocket
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )
    from pipecat.workers.runner import WorkerRunner

    pass_through, echo, _ = pipecat_parts()
    app = FastAPI()

    @app.websocket("/twilio")
    async def twilio(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call = await parse_telephony_websocket(websocket)
        serializer = TwilioFrameSerializer(
            stream_sid=call["stream_id"],
            call_sid=call["call_id"],
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                audio_out_10ms_chunks=2,  # 20 ms, the size of the frames it echoes
                add_wav_header=False,
                serializer=serializer,
            ),
        )
        passes = [pass_through() for _ in range(PASS_THROUGH)]
        task = pipeline_worker([transport.input(), *passes, echo(), transport.output()])

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport: object, client: object) -> None:
            await task.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    ready.set()
    await serving


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--shape", choices=("websockets", "fastapi"), default="websockets")
    p.add_argument("--workers", type=int, default=None, help="processes (one per core)")
    args = p.parse_args()
    count = args.workers or multiprocessing.cpu_count()
    context = multiprocessing.get_context("spawn")
    readies = [context.Event() for _ in range(count)]
    procs = [
        context.Process(target=worker, args=(args.shape, args.port, ready), name=f"pipecat-{i}")
        for i, ready in enumerate(readies)
    ]
    for proc in procs:
        proc.start()
    try:
        for ready in readies:
            if not ready.wait(60):
                raise SystemExit("a pipecat worker did not start within 60 s")
        serve_until_stopped(f"pipecat {args.shape} {count} workers")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)


if __name__ == "__main__":
    main()
