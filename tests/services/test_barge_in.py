"""BargeInGate on its own, fed the frames a turn detector, an STT and a playout send: what
the caller says over the bot is held until the words decide; an interruption goes out
ahead of the turn that caused it; a turn that does not interrupt follows the bot's end."""

from __future__ import annotations

import pytest
from helpers import wait_until

from flowcat_ft import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    EndFrame,
    InterimTranscriptionFrame,
    Pipeline,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from flowcat_ft.services.barge_in import BargeInGate


def gate_call(runtime, **options):
    out = []
    call = runtime.open_call(
        Pipeline([lambda: BargeInGate(**options)]),
        lambda f, d: out.append(f) if d is Direction.DOWNSTREAM else None,
    )
    return call, out


def names(out):
    return [
        f"{type(f).__name__}:{f.text}" if isinstance(f, TranscriptionFrame) else type(f).__name__
        for f in out
        if not isinstance(f, StartFrame)
    ]


def test_words_that_do_not_interrupt_wait_for_the_bot_to_finish(runtime):
    call, out = gate_call(runtime)
    for frame in [
        BotStartedSpeakingFrame(),
        UserStartedSpeakingFrame(),
        InterimTranscriptionFrame("thanks"),
        UserStoppedSpeakingFrame(),
        TranscriptionFrame("thanks"),
    ]:
        call.push(frame)
    assert wait_until(lambda: len(out) == 2)  # StartFrame, BotStartedSpeakingFrame
    call.push(BotStoppedSpeakingFrame())
    call.push(UserStartedSpeakingFrame())  # the bot silent: a turn goes straight on
    assert wait_until(lambda: len(out) == 8)
    assert names(out) == [
        "BotStartedSpeakingFrame",
        "UserStartedSpeakingFrame",
        "InterimTranscriptionFrame:thanks",
        "UserStoppedSpeakingFrame",
        "TranscriptionFrame:thanks",
        "BotStoppedSpeakingFrame",
        "UserStartedSpeakingFrame",
    ]
    gate = call.processors[0]
    assert (gate.deferred, gate.interruptions) == (1, 0)
    call.close()


@pytest.mark.parametrize("said", ["what time", "goodbye", "please stop", "help me now"])
def test_two_words_or_a_phrase_that_always_interrupts_cut_the_bot_off(runtime, said):
    call, out = gate_call(runtime)
    for frame in [
        BotStartedSpeakingFrame(),
        UserStartedSpeakingFrame(),
        InterimTranscriptionFrame(said.split()[0]),
        InterimTranscriptionFrame(said),
        UserStoppedSpeakingFrame(),
    ]:
        call.push(frame)
    assert wait_until(lambda: "UserStoppedSpeakingFrame" in names(out))
    assert names(out) == [
        "BotStartedSpeakingFrame",
        "InterruptionFrame",  # ahead of the words that caused it, which the LLM answers
        "UserStartedSpeakingFrame",
        f"InterimTranscriptionFrame:{said.split()[0]}",
        f"InterimTranscriptionFrame:{said}",
        "UserStoppedSpeakingFrame",
    ]
    assert call.processors[0].interruptions == 1
    call.close()


def test_a_final_transcript_decides_too_and_the_graphs_phrases_interrupt(runtime):
    call, out = gate_call(runtime, min_words=3, phrases=["help"])
    for said, bot_stops in [("what time", True), ("help", False)]:
        call.push(BotStartedSpeakingFrame())
        call.push(UserStartedSpeakingFrame())
        call.push(UserStoppedSpeakingFrame())
        call.push(TranscriptionFrame(said))
        if bot_stops:
            call.push(BotStoppedSpeakingFrame())
    assert wait_until(lambda: "TranscriptionFrame:help" in names(out))
    assert names(out)[1:] == [
        "UserStartedSpeakingFrame",  # two words of three: held until the bot stopped
        "UserStoppedSpeakingFrame",
        "TranscriptionFrame:what time",
        "BotStoppedSpeakingFrame",
        "BotStartedSpeakingFrame",
        "InterruptionFrame",  # one word, but the graph's: it interrupts
        "UserStartedSpeakingFrame",
        "UserStoppedSpeakingFrame",
        "TranscriptionFrame:help",
    ]
    call.close()


def test_a_held_turn_goes_on_ahead_of_the_end_of_the_call(runtime):
    call, out = gate_call(runtime)
    for frame in [BotStartedSpeakingFrame(), UserStartedSpeakingFrame(), TranscriptionFrame("hi")]:
        call.push(frame)
    call.end()
    assert call.wait(5)
    assert names(out)[-3:] == ["UserStartedSpeakingFrame", "TranscriptionFrame:hi", "EndFrame"]
    assert isinstance(out[-1], EndFrame)


def test_with_pause_on_speech_the_bot_pauses_at_once_and_resumes_if_not_interrupted(runtime):
    call, out = gate_call(runtime, pause_on_speech=True)
    # "Thanks" over the bot: paused at the start of speech, before any word; resumed at
    # the end of the turn, which waits for the bot to finish.
    call.push(BotStartedSpeakingFrame())
    call.push(UserStartedSpeakingFrame())
    assert wait_until(lambda: "PauseOutputFrame" in names(out))
    for frame in [
        InterimTranscriptionFrame("thanks"),
        UserStoppedSpeakingFrame(),
        TranscriptionFrame("thanks"),
    ]:
        call.push(frame)
    assert wait_until(lambda: "ResumeOutputFrame" in names(out))
    # "What time" over the bot: paused, then the words interrupt; no resume.
    call.push(BotStoppedSpeakingFrame())
    call.push(BotStartedSpeakingFrame())
    call.push(UserStartedSpeakingFrame())
    call.push(InterimTranscriptionFrame("what time"))
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: names(out).count("UserStoppedSpeakingFrame") == 2)
    assert names(out) == [
        "BotStartedSpeakingFrame",
        "PauseOutputFrame",
        "ResumeOutputFrame",
        "UserStartedSpeakingFrame",  # the held turn, once the bot has finished
        "InterimTranscriptionFrame:thanks",
        "UserStoppedSpeakingFrame",
        "TranscriptionFrame:thanks",
        "BotStoppedSpeakingFrame",
        "BotStartedSpeakingFrame",
        "PauseOutputFrame",
        "InterruptionFrame",
        "UserStartedSpeakingFrame",
        "InterimTranscriptionFrame:what time",
        "UserStoppedSpeakingFrame",
    ]
    gate = call.processors[0]
    assert (gate.pauses, gate.interruptions, gate.deferred) == (2, 1, 1)
    call.close()


def test_a_paused_output_resumes_if_the_bot_stops_first_or_the_call_ends(runtime):
    call, out = gate_call(runtime, pause_on_speech=True)
    for frame in [BotStartedSpeakingFrame(), UserStartedSpeakingFrame(), BotStoppedSpeakingFrame()]:
        call.push(frame)
    assert wait_until(lambda: "BotStoppedSpeakingFrame" in names(out))
    assert names(out) == [
        "BotStartedSpeakingFrame",
        "PauseOutputFrame",
        "ResumeOutputFrame",
        "UserStartedSpeakingFrame",
        "BotStoppedSpeakingFrame",
    ]
    for frame in [BotStartedSpeakingFrame(), UserStartedSpeakingFrame()]:
        call.push(frame)
    call.end()
    assert call.wait(5)
    assert names(out)[-4:] == [
        "PauseOutputFrame",
        "ResumeOutputFrame",
        "UserStartedSpeakingFrame",
        "EndFrame",
    ]


def test_the_vads_first_report_of_speech_pauses_the_bot_before_a_turn_starts(runtime):
    call, out = gate_call(runtime, pause_on_speech=True)
    # (Each step waits for the one before: a system frame overtakes the control frames
    # queued ahead of it, as the VAD's reports do, coming long after the bot started.)
    call.push(BotStartedSpeakingFrame())
    assert wait_until(lambda: "BotStartedSpeakingFrame" in names(out))
    # A cough over the bot: paused on the VAD's report, resumed on its end (no turn).
    call.push(VADUserStartedSpeakingFrame())
    assert wait_until(lambda: "PauseOutputFrame" in names(out))
    call.push(VADUserStoppedSpeakingFrame())
    assert wait_until(lambda: "ResumeOutputFrame" in names(out))
    # "Thanks": its turn holds the pause past the VAD's end of speech, to the turn's end.
    call.push(UserStartedSpeakingFrame())
    assert wait_until(lambda: names(out).count("PauseOutputFrame") == 2)
    call.push(VADUserStoppedSpeakingFrame())
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: names(out).count("ResumeOutputFrame") == 2)
    assert names(out) == [
        "BotStartedSpeakingFrame",
        "PauseOutputFrame",
        "VADUserStartedSpeakingFrame",
        "ResumeOutputFrame",
        "VADUserStoppedSpeakingFrame",
        "PauseOutputFrame",
        "VADUserStoppedSpeakingFrame",  # the turn goes on: still paused
        "ResumeOutputFrame",  # at the end of the turn (held, as the bot speaks on)
    ]
    assert call.processors[0].pauses == 2
    call.close()


def test_a_pause_with_no_decision_resumes_after_its_timeout(runtime):
    # Speech over the bot whose turn never ends and whose words never come (endless line
    # noise heard as speech, a stuck recogniser): the bot plays on after the timeout.
    call, out = gate_call(runtime, pause_on_speech=True, pause_timeout_secs=0.05)
    for frame in [BotStartedSpeakingFrame(), UserStartedSpeakingFrame()]:
        call.push(frame)
    assert wait_until(lambda: "ResumeOutputFrame" in names(out))
    gate = call.processors[0]
    assert (gate.pauses, gate.pause_timeouts) == (1, 1)
    # The turn is still held, and its words may still interrupt.
    call.push(InterimTranscriptionFrame("goodbye"))
    assert wait_until(lambda: "InterimTranscriptionFrame:goodbye" in names(out))
    assert names(out) == [
        "BotStartedSpeakingFrame",
        "PauseOutputFrame",
        "ResumeOutputFrame",
        "InterruptionFrame",
        "UserStartedSpeakingFrame",
        "InterimTranscriptionFrame:goodbye",
    ]
    call.close()


def test_the_pause_timeout_must_be_positive():
    with pytest.raises(ValueError, match="pause_timeout_secs"):
        BargeInGate(pause_on_speech=True, pause_timeout_secs=0)
