"""An event loop's edge: the work its connections share, done once per loop turn.

Incoming audio: every connection on the loop adds the audio payloads it receives; at the
end of the loop turn they become frames together: per wire codec and length, one slab per
payload, all of them written (copied, or G.711-decoded into PCM16) with one numpy call
into the slab arena, then handed to their calls through the loop's
:class:`~flowcat_ft.call.Inbox`, which wakes each shard once.

Outgoing messages: a connection that queued messages asks for a write, and every
connection's write runs in one pass at the end of the loop turn (one callback per turn,
not one per connection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from flowcat_ft.audio import g711
from flowcat_ft.frames import InputAudioRawFrame
from flowcat_ft.serializers import ProtocolError

if TYPE_CHECKING:
    from flowcat_ft.loops import EventLoopThread
    from flowcat_ft.slabs import Slab, SlabPool

Admit = Callable[[InputAudioRawFrame], object]
"""Where a new frame goes (the session's, which resamples it if needed and pushes it)."""


_Key = tuple[str, int, bool]
"""A group of payloads written together: codec, payload length, and whether decoded."""


class LoopEdge:
    """The audio one event loop's connections received in this loop turn, and the
    writes they asked for.

    Threading contract: used only on its loop's thread.
    """

    def __init__(self, io: EventLoopThread, pool: SlabPool) -> None:
        self.io = io
        self.pool = pool
        # (codec, payload length, decode) -> [(admit, slab, payload, sample rate)], and
        # every payload's place (its group's key, its index there), in the order they came.
        self._groups: dict[_Key, list[tuple[Admit, Slab, bytes, int]]] = {}
        self._order: list[tuple[_Key, int]] = []
        self._flushing = False
        self._writes: list[Callable[[], object]] = []

    def write_soon(self, write: Callable[[], object]) -> None:
        """Run ``write`` at the end of this loop turn (once per call of this method)."""
        if not self._writes:
            self.io.loop.call_soon(self._write_all)
        self._writes.append(write)

    def _write_all(self) -> None:
        writes, self._writes = self._writes, []
        for write in writes:
            write()

    def add_audio(
        self, admit: Admit, payload: bytes, sample_rate: int, codec: str, decode: bool
    ) -> None:
        """Queue ``payload`` (``codec`` audio at ``sample_rate``; decoded into PCM16 if
        ``decode`` and it is G.711) to become a frame given to ``admit`` this loop turn.

        Raises :class:`~flowcat_ft.serializers.ProtocolError` for a payload that is not
        whole samples or does not fit a slab, and
        :class:`~flowcat_ft.slabs.PoolExhaustedError` when no slab is free.
        """
        size = len(payload)
        decode = decode and codec in g711.DECODERS
        if codec == "pcm16" and size % 2:
            raise ProtocolError(f"{size}-byte pcm16 audio message is not whole samples", 1007)
        if (2 * size if decode else size) > self.pool.slab_bytes:
            raise ProtocolError(f"{size}-byte audio message is too long", 1009)
        slab = self.pool.take()
        key = (codec, size, decode)
        group = self._groups.setdefault(key, [])
        self._order.append((key, len(group)))
        group.append((admit, slab, payload, sample_rate))
        if not self._flushing:
            self._flushing = True
            self.io.loop.call_soon(self.flush_audio)

    def flush_audio(self) -> None:
        """Write every queued payload into its slab, admit the frames in the order the
        payloads came, and hand them to the stage threads."""
        self._flushing = False
        groups, order = self._groups, self._order
        self._groups, self._order = {}, []
        frames = {key: self._write(*key, items) for key, items in groups.items()}
        for key, index in order:
            admit = groups[key][index][0]
            admit(frames[key][index])
        self.io.inbox.flush()

    def _write(
        self, codec: str, size: int, decode: bool, items: list[tuple[Admit, Slab, bytes, int]]
    ) -> list[InputAudioRawFrame]:
        pool = self.pool
        rows = [slab.index for _, slab, _, _ in items]
        data = np.frombuffer(b"".join([payload for _, _, payload, _ in items]), np.uint8)
        data = data.reshape(len(items), size)
        if decode:
            samples = np.empty((len(items), size), np.int16)
            g711.DECODERS[codec](data, samples)
            pool.pcm[rows, :size] = samples
            count, codec = size, "pcm16"
        else:
            pool.u8[rows, :size] = data
            count = size // 2 if codec == "pcm16" else size
        return [InputAudioRawFrame(slab, count, rate, 1, codec) for _, slab, _, rate in items]
