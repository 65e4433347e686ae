"""The agent benchmark's arithmetic: from the load generator's record of every utterance
and the server's CPU by part, the figures of one point; and its tables.

Definitions (all at the caller, on the load generator's clock):

- *reply latency*: from the last frame of a question sent to the first audible frame of
  the agent's reply (a sample at or above 500 of 32767), for the questions that ended in
  the measured window. A question said while an earlier reply was still arriving
  (*overlapped*) has no clean reply to time and is counted apart; one with no audible
  reply before the caller's next utterance counts as *no reply* (not heard, or not
  answered).
- *audible length*: from the reply's first audible frame to its last, in 20 ms frames;
  *cut short*: under :data:`SHORT` of the median length of replies to the same question in
  the same run, where the caller did not barge in.
- *lag*: how far the reply's frames fell behind a real-time playout clock started at its
  first audible frame (frame k due 20·k ms after it), the most over the reply; an
  *underrun* is a reply whose lag passed :data:`UNDERRUN_MS` (a carrier with one frame of
  buffer would have played a gap); *gap*: the longest wait between two of its frames.
- *ended by the agent*: the server closed the call (or sent a Twilio ``stop``) after the
  caller began saying goodbye; *dropped*: it ended the call before.
- *barge-in*: a goodbye said over a reply; *clear*: from its first frame to the carrier's
  ``clear``, that is from the caller's speech onset (the clips are trimmed of the silence
  before the words: :mod:`bench.agent.speech`); *acted on*: a clear came and the agent
  ended the call.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bench._common import percentile

UNDERRUN_MS = 20.0
SHORT = 0.8
FRAME_MS = 20.0


def records(result: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """The load generator's ``utterances`` or ``call_ends``, as dicts of their fields."""
    fields = result["utterance_fields" if what == "utterances" else "call_fields"]
    return [dict(zip(fields, row, strict=True)) for row in result[what]]


def spread(values: Sequence[float], ps: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ..., "max": ...}`` (None where there are none)."""
    ordered = sorted(values)
    out: dict[str, float | None] = {
        f"p{p:g}": round(percentile(ordered, p), 1) if ordered else None for p in ps
    }
    out["max"] = round(ordered[-1], 1) if ordered else None
    return out


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """One point's figures from the load generator's conversation report."""
    said = records(result, "utterances")
    ends = {c["call"]: c for c in records(result, "call_ends")}
    first, last = result["window_ms"]
    by_call: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for u in said:
        by_call[u["call"]].append(u)
    for utterances in by_call.values():
        utterances.sort(key=lambda u: u["start_ms"])
    barged = {
        id(u): later["over"] == 1
        for utterances in by_call.values()
        for u, later in itertools.pairwise(utterances)
    }

    measured = [
        u
        for u in said
        if u["kind"] == "question" and u["end_ms"] is not None and first <= u["end_ms"] < last
    ]
    clean = [u for u in measured if not u["overlapped"]]
    replied = [u for u in clean if u["reply_ms"] is not None]
    latencies = [u["reply_ms"] - u["end_ms"] for u in replied]
    median_length = {
        clip: statistics.median(u["audible_frames"] for u in group)
        for clip, group in _by(replied, "clip").items()
    }
    short = [
        u
        for u in replied
        if not barged.get(id(u)) and u["audible_frames"] < SHORT * median_length[u["clip"]]
    ]
    greetings = [u for u in said if u["kind"] == "greeting"]
    greeted = [u["reply_ms"] - u["start_ms"] for u in greetings if u["reply_ms"] is not None]
    goodbyes = {u["call"]: u for u in said if u["kind"] == "goodbye" and u["end_ms"] is not None}
    ended = {
        call: g
        for call, g in goodbyes.items()
        if ends[call]["ended_ms"] is not None
        and ends[call]["ended_ms"] >= g["start_ms"]
        and ends[call]["end_code"] in (0, 1000)
    }
    dropped = [
        c
        for c in ends.values()
        if c["ended_ms"] is not None
        and (c["call"] not in goodbyes or c["ended_ms"] < goodbyes[c["call"]]["start_ms"])
    ]
    barge_ins = [g for g in goodbyes.values() if g["over"]]
    clears = [g["clear_ms"] - g["start_ms"] for g in barge_ins if g["clear_ms"] is not None]
    acted_on = [g for g in barge_ins if g["clear_ms"] is not None and g["call"] in ended]
    return {
        "calls": result["calls"],
        "opened": result["opened"],
        "failed": result["failed"],
        "questions": len(measured),
        "replied": len(replied),
        "no_reply": len(clean) - len(replied),
        "overlapped": len(measured) - len(clean),
        "reply_latency_ms": spread(latencies),
        "audible_s": {
            "p50": _round(statistics.median(u["audible_frames"] for u in replied) * FRAME_MS / 1e3)
            if replied
            else None,
        },
        "cut_short": len(short),
        "max_lag_ms": spread([u["max_lag_ms"] for u in replied]),
        "underruns": sum(u["max_lag_ms"] > UNDERRUN_MS for u in replied),
        "max_gap_ms": spread([u["max_gap_ms"] for u in replied]),
        "greeting_ms": spread(greeted),
        "greetings_missing": len(greetings) - len(greeted),
        "goodbyes": len(goodbyes),
        "ended_by_agent": len(ended),
        "hang_up_ms": spread([ends[c]["ended_ms"] - g["end_ms"] for c, g in ended.items()]),
        "dropped": len(dropped),
        "barge_ins": len(barge_ins),
        "barge_ins_acted_on": len(acted_on),
        "clear_ms": spread(clears),
        "loadgen_cpu_percent": result["loadgen_cpu_percent"],
    }


def _by(items: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    grouped: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        grouped[item[key]].append(item)
    return grouped


def _round(value: float) -> float:
    return round(value, 2)


# -- CPU by part ---------------------------------------------------------------------------


def cpu_by_part(
    before: dict[str, Any], after: dict[str, Any], seconds: float, calls: int
) -> list[dict[str, Any]]:
    """What each part of the server (``/status.json``'s ``cpu.parts``, read at the two
    edges of the window) used over ``seconds``: cores, and µs of CPU per call per second;
    the busiest first. A part that started in the window counts from zero; one that
    ended in it is missing (its threads' CPU stays in the process total)."""
    earlier = {p["name"]: p["cpu_s"] for p in before["parts"]}
    parts = []
    for part in after["parts"]:
        used = max(0.0, part["cpu_s"] - earlier.get(part["name"], 0.0))
        parts.append(
            {
                "name": part["name"],
                "kind": part["kind"],
                "cores": round(used / seconds, 3),
                "us_per_call_s": round(used * 1e6 / seconds / calls) if calls else None,
            }
        )
    return sorted(parts, key=lambda p: -p["cores"])


def cpu_totals(
    before: dict[str, Any],
    after: dict[str, Any],
    parts: list[dict[str, Any]],
    seconds: float,
    calls: int,
) -> dict[str, Any]:
    """The server's own process and its workers (live and ended), in cores and µs per call
    per second."""
    process = (after["process"]["cpu_s"] - before["process"]["cpu_s"]) / seconds
    workers = sum(p["cores"] for p in parts if p["kind"] in ("worker", "ended workers"))

    def per_call(cores: float) -> int | None:
        return round(cores * 1e6 / calls) if calls else None

    return {
        "process_cores": round(process, 3),
        "process_us_per_call_s": per_call(process),
        "workers_cores": round(workers, 3),
        "workers_us_per_call_s": per_call(workers),
        "server_cores": round(process + workers, 3),
        "server_us_per_call_s": per_call(process + workers),
    }


# -- tables --------------------------------------------------------------------------------

HEADERS = (
    "python",
    "calls",
    "questions",
    "replied",
    "reply p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "no reply",
    "overlapped",
    "reply s (p50)",
    "cut short",
    "lag p99 ms",
    "underruns",
    "gap max ms",
    "goodbye → ended",
    "dropped",
    "barge-ins acted on",
    "clear p50 ms",
    "server cores",
    "µs/call/s",
    "loadgen %",
    "others cores",
)


def rows(runs: Sequence[dict[str, Any]]) -> list[tuple[object, ...]]:
    """One row per run (interpreter and number of calls)."""
    out = []
    for run in sorted(runs, key=lambda r: (r["calls"], r["python"])):
        s, cpu = run["summary"], run["cpu"]
        latency = s["reply_latency_ms"]
        out.append(
            (
                run["python"],
                run["calls"],
                s["questions"],
                s["replied"],
                *(_ms(latency[p]) for p in ("p50", "p95", "p99", "max")),
                s["no_reply"],
                s["overlapped"],
                _num(s["audible_s"]["p50"], 2),
                s["cut_short"],
                _ms(s["max_lag_ms"]["p99"]),
                s["underruns"],
                _ms(s["max_gap_ms"]["max"]),
                f"{s['ended_by_agent']}/{s['goodbyes']}",
                s["dropped"],
                f"{s['barge_ins_acted_on']}/{s['barge_ins']}" if s["barge_ins"] else "-",
                _ms(s["clear_ms"]["p50"]),
                _num(cpu["server_cores"], 2),
                _num(cpu["server_us_per_call_s"], 0),
                _num(s["loadgen_cpu_percent"], 0),
                _num(run["other_cpu_cores"], 2),
            )
        )
    return out


PART_HEADERS = ("python", "calls", "part", "kind", "cores", "µs CPU per call per s")


def part_rows(runs: Sequence[dict[str, Any]], least: float = 0.005) -> list[tuple[object, ...]]:
    """Where each run's server CPU went, by part (threads, workers), busiest first; parts
    under ``least`` cores are left out; the whole process and its workers last."""
    out = []
    for run in sorted(runs, key=lambda r: (r["calls"], r["python"])):
        first = (run["python"], run["calls"])
        for part in run["parts"]:
            if part["cores"] < least:
                continue
            out.append(
                (
                    *first,
                    part["name"],
                    part["kind"],
                    _num(part["cores"], 3),
                    _num(part["us_per_call_s"], 0),
                )
            )
            first = ("", "")
        cpu = run["cpu"]
        out.append(
            (
                *first,
                "whole server process",
                "total",
                _num(cpu["process_cores"], 3),
                _num(cpu["process_us_per_call_s"], 0),
            )
        )
        out.append(
            (
                "",
                "",
                "worker processes",
                "total",
                _num(cpu["workers_cores"], 3),
                _num(cpu["workers_us_per_call_s"], 0),
            )
        )
    return out


def kind_rows(runs: Sequence[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """µs of CPU per call per second by kind of part (stage threads, event loops, workers,
    ...), one row per run: the table that says what to optimise."""
    kinds = ["stage", "event loop", "native", "other", "worker", "ended workers"]
    out = []
    for run in sorted(runs, key=lambda r: (r["calls"], r["python"])):
        total: dict[str, float] = defaultdict(float)
        for part in run["parts"]:
            total[part["kind"]] += part["us_per_call_s"] or 0.0
        out.append(
            (
                run["python"],
                run["calls"],
                *(_num(total[k], 0) for k in kinds),
                _num(run["cpu"]["server_us_per_call_s"], 0),
            )
        )
    headers = ("python", "calls", *(f"{k} µs" for k in kinds), "server µs/call/s")
    return headers, out


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


# -- the fake providers (cloud agent) ------------------------------------------------------

RUNTIME_SHARE_TARGET_MS, RUNTIME_SHARE_CALLS = 50.0, 200
"""The cloud agent's target: at this many calls, the runtime adds at most this much to the
reply latency's p99 (over the floor, :func:`floor_ms`)."""


def provider_rows(providers: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """The fake providers' own time per step, over the whole run, and their p50s' sum: the
    part of a reply's latency that is the providers', not the runtime's."""
    headers = ("provider step", "count", "p50 ms", "p95 ms", "max ms")
    body: list[tuple[object, ...]] = [
        (step["what"], step["count"], _ms(step["p50"]), _ms(step["p95"]), _ms(step["max"]))
        for step in providers.values()
    ]
    return headers, body


def floor_ms(providers: dict[str, Any], turn_timeout_s: float) -> float | None:
    """The least a reply can take, from the end of the question to the first audio, with
    these providers and this turn-taking, were the runtime free: the turn ends after
    ``turn_timeout_s`` of silence or at the STT's final, whichever is later; the LLM then
    streams its reply, which the TTS is sent sentence by sentence (the fake LLM's reply is
    one sentence, so: request to last token); then the TTS's first audio. p50s of the
    providers' own times (the fakes keep to theirs within a few ms)."""
    steps = [providers[step]["p50"] for step in ("stt_final_s", "llm_last_token_s")]
    tts = providers["tts_first_audio_s"]["p50"]
    if None in steps or tts is None:
        return None
    stt, llm = steps
    return round(max(turn_timeout_s * 1000, stt) + llm + tts, 1)


SHARE_HEADERS = ("python", "calls", "floor ms", "reply p50 ms", "p99 ms", "runtime's share p50 ms",
                 "p99 ms")  # fmt: skip


def share_rows(runs: Sequence[dict[str, Any]], floor: float) -> list[tuple[object, ...]]:
    """Per point, what the runtime added to the floor: the reply latency less it."""
    out = []
    for run in runs:
        latency = run["summary"]["reply_latency_ms"]
        p50, p99 = latency["p50"], latency["p99"]
        out.append(
            (run["python"], run["calls"], _ms(floor), _ms(p50), _ms(p99),
             _ms(None if p50 is None else p50 - floor), _ms(None if p99 is None else p99 - floor))
        )  # fmt: skip
    return out


def share_target(runs: Sequence[dict[str, Any]], floor: float) -> list[str]:
    """The target's verdict per interpreter, at :data:`RUNTIME_SHARE_CALLS` calls."""
    verdicts = []
    for run in runs:
        p99 = run["summary"]["reply_latency_ms"]["p99"]
        if run["calls"] != RUNTIME_SHARE_CALLS or p99 is None:
            continue
        share = p99 - floor
        met = "met" if share <= RUNTIME_SHARE_TARGET_MS else "**missed**"
        verdicts.append(
            f"{run['python']}, {RUNTIME_SHARE_CALLS} calls: the runtime adds {share:.0f} ms to "
            f"the p99 (target ≤ {RUNTIME_SHARE_TARGET_MS:.0f} ms): {met}"
        )
    return verdicts
