"""The PocketSphinx worker: speech recognition in a process of its own, on the GIL twin.

PocketSphinx's extension does not declare free-threading support, so importing it would
turn the GIL back on for the whole server process. The server runs this file instead, as
a script, with the GIL build's python (see :mod:`flowcat_ft.services.offline.sphinx_pool`),
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
  - an utterance comes as a **stream**, named by the client, in pieces of 16 kHz PCM16:
    ``{"op": "start", "id", "stream", "rate", "grammar"}`` opens it, constrained by a
    grammar sent before, or in free dictation when ``grammar`` is null (``{"id", "ok":
    true}``); each ``{"op": "audio", "id", "stream"}`` with a piece as its body is
    answered by ``{"id", "hyp", "decoded"}``: what the decoder has heard so far (the best
    path, which may still change; always "" in free dictation, decoded at the end), and
    the samples it decoded; ``{"op": "end", "id", "stream"}``, with the
    last piece as its body (or none), closes it and is answered by ``{"id", "text",
    "score", "partial", "decode_ms", "decoded"}``: ``text`` is "" when no sentence of the
    grammar fits (``partial`` is then the best path, which stopped short of one);
    ``{"op": "cancel", "id", "stream"}`` drops it (``{"id", "ok": true, "decoded"}``);
  - ``{"op": "ping", "id"}``, by ``{"id", "op": "pong"}``.

  A request that fails gets ``{"id", "error": "..."}`` (and drops its stream, if it has
  one); the worker goes on. It exits when its stdin closes.

Decoders: a stream on a grammar is decoded as its pieces come, by a decoder of its own:
one made of the grammar's words (in the JSGF grammar of :func:`jsgf`, with their
pronunciations from the full dictionary) and no language model, about 6 MB and 20 ms to
make against 95 MB for the full one, and kept for the grammar's next stream once this
one ends. So one worker decodes many calls' utterances at once, each as it is spoken, and
an utterance's end waits only for its last piece. Decoding as the audio comes, the
decoder normalises each frame by a running cepstral mean, so where that mean starts
matters: each stream starts from the mean its worker's last utterance ended with, the
first from :data:`INITIAL_CMN`. Measured here on espeak-ng phrases of the default agent
after a second of a line's noise: 46 of 55 heard exactly, against 47 when each was decoded
whole by the full decoder as before; a worker's first utterances, 50 of 50 from
:data:`INITIAL_CMN` against 32 of 50 from PocketSphinx's default mean. A stream in free
dictation is kept until its end and decoded then, whole, by the full decoder (the
dictionary and the default language model).
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
from dataclasses import dataclass, field
from typing import Any, BinaryIO

PREFIX = struct.Struct(">II")
MAX_HEADER = 1 << 20
"""Largest JSON header accepted (bytes)."""
MAX_BODY = 64 << 20
"""Largest body accepted (bytes): over half an hour of 16 kHz PCM16."""

SAMPLE_RATE = 16000
"""The rate of the acoustic model shipped in the pocketsphinx wheel."""
NOISE_RMS = 30
"""A faint noise floor (about -60 dBFS) added to all audio before decoding: measured
here, stretches of digital silence (as in a TTS's output) upset the decoder's feature
normalisation, and a grammar that recognises every phrase over a real noise floor misses
half of them over pure zeros."""

INITIAL_CMN = "48.28,-8.88,-5.75,-1.97,-8.06,-1.65,0.91,-6.97,-3.08,-2.94,0.74,-2.55,-3.55"
"""Where a worker's first utterance starts its cepstral mean (later ones start from where
the last one ended): the mean of speech over a line's noise, measured on espeak-ng saying
the default agent's replies after a second of -55 dBFS noise. PocketSphinx's own default
(``40,3,-1``) is far from it: first utterances decoded from there were often misheard."""

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


@dataclass(slots=True)
class _Grammar:
    """A grammar the worker holds: its sentences, what its stream decoders are made of
    (the JSGF text, and each word's pronunciation), and those decoders not in use."""

    sentences: set[str]
    jsgf: str
    pronunciations: dict[str, str]
    idle: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Stream:
    """An utterance coming in pieces: its grammar's decoder, or (in free dictation) its
    audio so far; where in the noise floor its next sample falls; its decoding time."""

    grammar: str | None
    decoder: Any = None
    pieces: list[bytes] = field(default_factory=list)
    noise_at: int = 0
    decode_secs: float = 0.0


class Worker:
    """The decoders and the requests they serve; runs in the worker process only."""

    def __init__(self) -> None:
        import importlib.metadata

        import pocketsphinx  # here, not at the top: the server imports this module

        self.version = importlib.metadata.version("pocketsphinx")
        self._pocketsphinx = pocketsphinx
        # The full decoder: the whole dictionary, and the default language model.
        self.decoder = pocketsphinx.Decoder(logfn=os.devnull)
        self.grammars: dict[str, _Grammar] = {}
        self.streams: dict[str, _Stream] = {}
        self.cmn = INITIAL_CMN  # the cepstral mean the last utterance ended with
        rng = random.Random(0)
        self.noise = array("h", (round(rng.gauss(0, NOISE_RMS)) for _ in range(SAMPLE_RATE)))

    def handle(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        op = header.get("op")
        if op == "grammar":
            return self.grammar(str(header["name"]), header["phrases"])
        if op == "ping":
            return {"op": "pong"}
        name = str(header.get("stream"))
        if op == "start":
            return self.start(name, header.get("grammar"), header.get("rate"))
        if op == "cancel":
            return self.cancel(name)
        if op not in ("audio", "end"):
            raise ValueError(f"unknown op {op!r}")
        try:
            return self.audio(name, body) if op == "audio" else self.end(name, body)
        except Exception:
            self.cancel(name)  # a stream whose piece fails is dropped
            raise

    def grammar(self, name: str, phrases: list[str]) -> dict[str, Any]:
        lookup = self.decoder.lookup_word
        unknown = sorted({w for p in phrases for w in words(p) if lookup(w) is None})
        kept = [p for p in phrases if not set(words(p)) & set(unknown)]
        skipped = [p for p in phrases if p not in kept]
        pronunciations = {w: lookup(w) for p in kept for w in words(p)}
        sentences = {" ".join(words(p)) for p in kept}
        self.grammars[name] = _Grammar(sentences, jsgf(kept, name), pronunciations)
        return {"ok": True, "skipped": skipped, "unknown": unknown}

    def start(self, name: str, grammar: str | None, rate: object) -> dict[str, Any]:
        _check_audio(rate, b"")
        if name in self.streams:
            raise ValueError(f"stream {name!r} is already open")
        stream = _Stream(grammar)
        if grammar is not None:
            held = self.grammars.get(grammar)
            if held is None:
                raise KeyError(f"no grammar {grammar!r} was sent")
            stream.decoder = held.idle.pop() if held.idle else self._stream_decoder(held)
            stream.decoder.set_cmn(self.cmn)
            stream.decoder.start_utt()
        self.streams[name] = stream
        return {"ok": True}

    def _stream_decoder(self, grammar: _Grammar) -> Any:
        pocketsphinx = self._pocketsphinx
        # An empty dictionary, then the grammar's words: no file to write or clean up.
        config = pocketsphinx.Config(logfn=os.devnull, lm=None, dict=os.devnull)
        decoder = pocketsphinx.Decoder(config)
        last = len(grammar.pronunciations) - 1
        for i, (word, phones) in enumerate(grammar.pronunciations.items()):
            decoder.add_word(word, phones, i == last)  # update the search once, at the end
        decoder.add_jsgf_string("grammar", grammar.jsgf)
        decoder.activate_search("grammar")
        return decoder

    def audio(self, name: str, body: bytes) -> dict[str, Any]:
        stream = self._stream(name)
        _check_audio(SAMPLE_RATE, body)
        if stream.decoder is None:
            stream.pieces.append(body)
            return {"hyp": "", "decoded": 0}
        self._decode(stream, body)
        hyp = stream.decoder.hyp()
        return {"hyp": hyp.hypstr if hyp is not None else "", "decoded": len(body) // 2}

    def end(self, name: str, body: bytes) -> dict[str, Any]:
        stream = self._stream(name)
        _check_audio(SAMPLE_RATE, body)
        if stream.decoder is None:
            del self.streams[name]
            return self._dictation(b"".join(stream.pieces) + body)
        decoder = stream.decoder
        self._decode(stream, body)
        started = time.perf_counter()
        decoder.end_utt()
        stream.decode_secs += time.perf_counter() - started
        del self.streams[name]
        self.grammars[stream.grammar].idle.append(decoder)
        self.cmn = decoder.get_cmn()
        return self._result(decoder, stream.grammar, stream.decode_secs, len(body) // 2)

    def _dictation(self, body: bytes) -> dict[str, Any]:
        """Decode a whole utterance in free dictation, with the full decoder."""
        started = time.perf_counter()
        decoder = self.decoder
        decoder.start_utt()
        decoder.process_raw(self._with_noise_floor(body), full_utt=True)
        decoder.end_utt()
        return self._result(decoder, None, time.perf_counter() - started, len(body) // 2)

    def _result(
        self, decoder: Any, grammar: str | None, decode_secs: float, decoded: int
    ) -> dict[str, Any]:
        hyp = decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        partial = ""
        if grammar is not None and text not in self.grammars[grammar].sentences:
            # The search found no whole sentence and gave its best path so far.
            text, partial = "", text
        return {
            "text": text,
            "score": hyp.score if hyp is not None else None,
            "partial": partial,
            "decode_ms": round(decode_secs * 1000, 2),
            "decoded": decoded,
        }

    def cancel(self, name: str) -> dict[str, Any]:
        stream = self.streams.pop(name, None)
        if stream is None:
            return {"ok": True, "decoded": 0}
        if stream.decoder is None:  # nothing of it was decoded: the rest is settled here
            return {"ok": True, "decoded": sum(len(piece) for piece in stream.pieces) // 2}
        stream.decoder.end_utt()
        self.grammars[stream.grammar].idle.append(stream.decoder)
        return {"ok": True, "decoded": 0}

    def _stream(self, name: str) -> _Stream:
        stream = self.streams.get(name)
        if stream is None:
            raise KeyError(f"no stream {name!r} is open")
        return stream

    def _decode(self, stream: _Stream, body: bytes) -> None:
        if body:
            started = time.perf_counter()
            stream.decoder.process_raw(self._with_noise_floor(body, stream.noise_at))
            stream.decode_secs += time.perf_counter() - started
            stream.noise_at += len(body) // 2

    def _with_noise_floor(self, body: bytes, at: int = 0) -> bytes:
        """*body* with the noise floor added, the noise starting at its sample *at*."""
        samples = array("h", body)
        if sys.byteorder == "big":
            samples.byteswap()
        noise, n = self.noise, len(self.noise)
        start = 0
        while start < len(samples):
            offset = (at + start) % n
            end = min(len(samples), start + n - offset)
            samples[start:end] = array(
                "h",
                (
                    max(-32768, min(32767, a + b))
                    for a, b in zip(samples[start:end], noise[offset:], strict=False)
                ),
            )
            start = end
        if sys.byteorder == "big":
            samples.byteswap()
        return samples.tobytes()


def _check_audio(rate: object, body: bytes) -> None:
    if rate != SAMPLE_RATE:
        raise ValueError(f"audio must be {SAMPLE_RATE} Hz PCM16, not {rate!r} Hz")
    if len(body) % 2:
        raise ValueError("audio has an odd number of bytes")


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
