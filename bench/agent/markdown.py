"""The agent benchmark's report as markdown, beside its JSON and plot."""

from __future__ import annotations

from typing import Any

from bench.agent import report
from bench.agent.report import markdown_table


def document(result: dict[str, Any], plot_name: str | None) -> str:
    """The whole report: what ran, the conversations table, the plot, CPU by kind and by
    part, and (cloud agent) the fake providers' own time."""
    barge = (
        f"goodbye said {result['barge_in']:g} s into the reply to the last question (a barge-in)"
        if result["barge_in"] is not None
        else "goodbye said after the last reply"
    )
    lines = [
        f"# Agent benchmark, {result['date']}, {result['machine_cores']} cores"
        + (" (quick)" if result["quick"] else ""),
        "",
        f"`{result['command']}`: `flowcat-ft serve {result['config']}` ({result['agent']} "
        f"agent); per point, calls open over up to {result['period']:g} s, greet, then "
        f"{result['warmup']:g} s of warm-up and a {result['seconds']:g} s window whose "
        f"questions are measured; a question every {result['period']:g} s per call "
        f"({', '.join(result['questions'])}), then {barge}. Twilio Media Streams, µ-law "
        "8 kHz, line noise between utterances; everything timed at the caller by the "
        "native load generator, which shares the machine (its CPU, and other processes', "
        "in the last columns). Definitions: `bench/agent/report.py`.",
        "",
        "## Conversations",
        "",
        markdown_table(report.HEADERS, report.rows(result["runs"])),
    ]
    if plot_name:
        lines += ["", f"![reply latency against simultaneous conversations]({plot_name})"]
    headers, body = report.kind_rows(result["runs"])
    lines += [
        "",
        "## Server CPU per conversation, by kind of part (µs of CPU per call per second)",
        "",
        markdown_table(headers, body),
        "",
        "## Server CPU by part",
        "",
        markdown_table(report.PART_HEADERS, report.part_rows(result["runs"])),
    ]
    if result.get("providers"):
        headers, body = report.provider_rows(result["providers"])
        lines += [
            "",
            "## The fake providers' own time",
            "",
            "What the providers took of each reply (over the whole run, every point).",
            "",
            markdown_table(headers, body),
        ]
        floor = report.floor_ms(result["providers"], result["turn_timeout_s"])
        if floor is not None:
            lines += [
                "",
                "## The runtime's share of the reply latency",
                "",
                f"The floor, {floor:.0f} ms, is what a reply takes were the runtime free: the "
                f"turn ends {result['turn_timeout_s']:g} s after the question (the turn "
                "timeout; the STT's final comes before it), then the LLM's reply to its "
                "last token (one sentence, which the TTS is sent whole), then the TTS's "
                "first audio (`bench.agent.report.floor_ms`). The rest is the runtime's: "
                "VAD, the hops between services, pacing, the network on loopback, and "
                "waiting for a core.",
                "",
                markdown_table(report.SHARE_HEADERS, report.share_rows(result["runs"], floor)),
                "",
                *(f"- {verdict}" for verdict in report.share_target(result["runs"], floor)),
            ]
    return "\n".join(lines) + "\n"
