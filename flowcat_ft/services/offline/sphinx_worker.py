"""The PocketSphinx worker: speech recognition in a process of its own, on the GIL twin.

PocketSphinx's extension does not declare free-threading support, so importing it would
turn the GIL back on for the whole server process. The server runs this file instead, as
a script, with the GIL build's python (see :mod:`flowcat_ft.services.offline.sphinx_stt`),
and talks to it over its stdin and stdout.

The file is standalone: the standard library, plus ``pocketsphinx`` once :func:`main`
runs. The server imports it only for the protocol, which is Sans-I/O:

- a **message** is an 8-byte prefix (two big-endian unsigned 32-bit lengths), a JSON
  object of the first length (UTF-8), and a binary body of the second (often empty):
  :func:`pack` makes one, a :class:`MessageParser` takes bytes as they come and hands back
  whole messages;
- the worker sends ``{"op": "ready", "pid": ..., "version": ...}`` once its model is
  loaded, then answers each request in turn, echoing its ``id``:

  - ``{"op": "grammar", "id", "name", "phrases"}`` is answered by ``{"id", "ok": true,
    "skipped", "unknown"}``: the phrases left out, and the words in them that the
    dictionary lacks;
  - ``{"op": "recognize", "id", "rate", "grammar"}`` with 16 kHz PCM16 as its body, by
    ``{"id", "text", "score", "partial", "decode_ms"}``: ``text`` is "" when no sentence
    of the grammar fits (``partial`` is then the best path, which stopped short of one);
  - ``{"op": "ping", "id"}``, by ``{"id", "op": "pong"}``.

  A request that fails gets ``{"id", "error": "..."}``; the worker goes on. It exits when
  its stdin closes.

Grammars: a ``grammar`` request makes a JSGF grammar (:func:`jsgf`) whose sentences are
the phrases, and the decoder keeps it as a search under ``name``; ``recognize`` then
decodes with that search, or with free dictation (the default language model) when
``grammar`` is null.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import struct
import sys
import time
from array import array
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

PREFIX = struct.Struct(">II")
MAX_HEADER = 1 << 20
"""Largest JSON header accepted (bytes)."""
MAX_BODY = 64 << 20
"""Largest body accepted (bytes): over half an hour of 16 kHz PCM16."""

SAMPLE_RATE = 16000
"""The rate of the acoustic model shipped in the pocketsphinx wheel."""
NOISE_RMS = 30
"""A faint noise floor (about -60 dBFS) added to every segment before decoding: measured
here, stretches of digital silence (as in a TTS's output) upset the decoder's feature
normalisation, and a grammar that recognises every phrase over a real noise floor misses
half of them over pure zeros."""

Message = tuple[dict[str, Any], bytes]


class ProtocolError(ValueError):
    """The bytes on the pipe are not a well-formed message."""


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    """Encode one message."""
    data = json.dumps(header, separators=(",", ":")).encode()
    if len(data) > MAX_HEADER or len(body) > MAX_BODY:
        raise ProtocolError(f"message too large: {len(data)}-byte header, {len(body)}-byte body")
    return PREFIX.pack(len(data), len(body)) + data + body


class MessageParser:
    """Whole messages out of a byte stream fed in pieces of any size.

    One stream's state; use it from one thread at a time.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Take the next bytes of the stream; return the messages they complete."""
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= PREFIX.size:
            header_len, body_len = PREFIX.unpack_from(buffer)
            if header_len > MAX_HEADER or body_len > MAX_BODY:
                raise ProtocolError(f"message too large: {header_len} + {body_len} bytes")
            end = PREFIX.size + header_len + body_len
            if len(buffer) < end:
                break
            try:
                header = json.loads(buffer[PREFIX.size : PREFIX.size + header_len])
            except ValueError as error:
                raise ProtocolError(f"header is not JSON: {error}") from None
            if not isinstance(header, dict):
                raise ProtocolError(f"header is not a JSON object: {header!r}")
            messages.append((header, bytes(buffer[PREFIX.size + header_len : end])))
            del buffer[:end]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buffer)


# -- grammars -------------------------------------------------------------------------------

_NOT_SPOKEN = re.compile(r"[^a-z0-9' ]+")


def words(phrase: str) -> list[str]:
    """The words of *phrase* as the dictionary spells them: lower case, no punctuation."""
    return _NOT_SPOKEN.sub(" ", phrase.lower().replace("-", " ")).split()


def jsgf(phrases: Iterable[str], name: str = "phrases") -> str:
    """A JSGF grammar whose sentences are *phrases* (normalised by :func:`words`)."""
    sentences = sorted({" ".join(words(p)) for p in phrases} - {""})
    if not sentences:
        raise ValueError("a grammar needs at least one phrase with words in it")
    rule = re.sub(r"\W", "_", name)
    return (
        f"#JSGF V1.0;\ngrammar {rule};\npublic <utterance> = " + "\n    | ".join(sentences) + " ;\n"
    )


# -- the worker -----------------------------------------------------------------------------


class Worker:
    """The decoder and the requests it serves; runs in the worker process only."""

    def __init__(self) -> None:
        import importlib.metadata

        import pocketsphinx  # here, not at the top: the server imports this module

        self.version = importlib.metadata.version("pocketsphinx")
        self.decoder = pocketsphinx.Decoder(logfn=os.devnull)
        self.free = self.decoder.current_search()  # the default language model
        self.sentences: dict[str, set[str]] = {}  # each grammar's sentences, by name
        rng = random.Random(0)
        self.noise = array("h", (round(rng.gauss(0, NOISE_RMS)) for _ in range(SAMPLE_RATE)))

    def handle(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        op = header.get("op")
        if op == "recognize":
            return self.recognize(header.get("grammar"), header.get("rate"), body)
        if op == "grammar":
            return self.grammar(str(header["name"]), header["phrases"])
        if op == "ping":
            return {"op": "pong"}
        raise ValueError(f"unknown op {op!r}")

    def grammar(self, name: str, phrases: list[str]) -> dict[str, Any]:
        decoder = self.decoder
        unknown = sorted({w for p in phrases for w in words(p) if decoder.lookup_word(w) is None})
        kept = [p for p in phrases if not set(words(p)) & set(unknown)]
        skipped = [p for p in phrases if p not in kept]
        decoder.add_jsgf_string(name, jsgf(kept, name))
        self.sentences[name] = {" ".join(words(p)) for p in kept}
        return {"ok": True, "skipped": skipped, "unknown": unknown}

    def recognize(self, grammar: str | None, rate: object, body: bytes) -> dict[str, Any]:
        if rate != SAMPLE_RATE:
            raise ValueError(f"audio must be {SAMPLE_RATE} Hz PCM16, not {rate!r} Hz")
        if len(body) % 2:
            raise ValueError("audio has an odd number of bytes")
        started = time.perf_counter()
        decoder = self.decoder
        search = self.free if grammar is None else grammar
        if decoder.current_search() != search:
            decoder.activate_search(search)  # KeyError for a grammar never sent
        decoder.start_utt()
        decoder.process_raw(self._with_noise_floor(body), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        partial = ""
        if grammar is not None and text not in self.sentences[grammar]:
            # The search found no whole sentence and gave its best path so far.
            text, partial = "", text
        return {
            "text": text,
            "score": hyp.score if hyp is not None else None,
            "partial": partial,
            "decode_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    def _with_noise_floor(self, body: bytes) -> bytes:
        samples = array("h", body)
        if sys.byteorder == "big":
            samples.byteswap()
        noise, n = self.noise, len(self.noise)
        for start in range(0, len(samples), n):
            chunk = samples[start : start + n]
            samples[start : start + n] = array(
                "h", (max(-32768, min(32767, a + b)) for a, b in zip(chunk, noise, strict=False))
            )
        if sys.byteorder == "big":
            samples.byteswap()
        return samples.tobytes()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer requests from *stdin* on *stdout* until *stdin* closes."""
    worker = Worker()

    def send(header: dict[str, Any]) -> None:
        stdout.write(pack(header))
        stdout.flush()

    send({"op": "ready", "pid": os.getpid(), "version": worker.version})
    parser = MessageParser()
    for header, body in _messages(stdin, parser):
        reply: dict[str, Any]
        try:
            reply = worker.handle(header, body)
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        reply["id"] = header.get("id")
        send(reply)


def _messages(stdin: BinaryIO, parser: MessageParser) -> Iterator[Message]:
    while data := stdin.read1(1 << 16):
        yield from parser.feed(data)


def main() -> None:
    # The protocol owns file descriptor 1: anything else that writes to stdout (the C
    # library, a stray print) goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.buffer, protocol)


if __name__ == "__main__":
    main()
