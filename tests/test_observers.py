"""Observers see every push of every processor of the calls they are attached to."""

from __future__ import annotations

import threading
from collections import Counter

from processors import Echo, Tag

from flowcat_ft import Direction, Pipeline, TextFrame
from flowcat_ft.observers import Observed, Observer


class CountPushes(Observer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pushes: Counter[tuple[str, str, Direction]] = Counter()
        self.calls: set[int] = set()

    def on_push(self, call, source, frame, direction) -> None:
        with self.lock:
            self.pushes[(source.name, type(frame).__name__, direction)] += 1
            self.calls.add(call.id)


def test_observers_see_each_push_in_both_directions(runtime):
    observer = CountPushes()
    pipeline = Pipeline([Tag, Echo, Tag], threads=2)
    call = runtime.open_call(pipeline, lambda f, d: None, observers=[observer])
    for i in range(10):
        call.push(TextFrame(str(i)))
    call.end()
    assert call.wait(5)
    down = Direction.DOWNSTREAM
    assert observer.pushes[("Tag", "TextFrame", down)] == 20  # both Tags
    assert observer.pushes[("Echo", "TextFrame", Direction.UPSTREAM)] == 10
    assert observer.pushes[("Tag", "StartFrame", down)] == 2
    assert observer.calls == {call.id}


def test_calls_without_observers_are_not_wrapped(runtime):
    call = runtime.open_call(Pipeline([Tag, Tag]), lambda f, d: None)
    links = [link for p in call.processors for link in (p._down, p._up)]
    assert not any(isinstance(link, Observed) for link in links)
    call.close()
