"""The slab pool: fixed size, a counted drop or back-pressure when empty, any-thread use."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flowcat_ft import InputAudioRawFrame, PoolExhaustedError, SlabPool


def test_take_and_release_reuse_the_same_buffers():
    pool = SlabPool(4, slab_bytes=64)
    slabs = [pool.take() for _ in range(4)]
    assert pool.available == 0 and pool.in_use == 4
    memory = {s.u8.ctypes.data for s in slabs}
    for s in slabs:
        s.release()
    again = {pool.take().u8.ctypes.data for _ in range(4)}
    assert again == memory


def test_exhaustion_raises_counts_and_never_grows():
    pool = SlabPool(2, slab_bytes=64)
    held = [pool.take(), pool.take()]
    with pytest.raises(PoolExhaustedError, match="all 2 slabs"):
        pool.take()
    assert pool.drops == 1
    assert pool.capacity == 2 and pool.available == 0
    del held


def test_wait_is_back_pressure_until_a_slab_returns():
    pool = SlabPool(1, slab_bytes=64)
    slab = pool.take()
    threading.Timer(0.05, slab.release).start()
    start = time.monotonic()
    assert pool.take(wait=5) is slab
    assert 0.03 < time.monotonic() - start < 4
    assert pool.waits == 1


def test_wait_gives_up_after_its_timeout():
    pool = SlabPool(1, slab_bytes=64)
    held = pool.take()
    with pytest.raises(PoolExhaustedError):
        pool.take(wait=0.02)
    del held


def test_frame_returns_its_slab_when_freed():
    pool = SlabPool(2)
    frame = InputAudioRawFrame.from_bytes(pool, b"\x01\x00" * 160, 8000)
    assert pool.in_use == 1
    assert frame.samples.dtype == np.int16 and frame.samples[:2].tolist() == [1, 1]
    assert frame.audio == b"\x01\x00" * 160
    del frame
    assert pool.in_use == 0


def test_from_bytes_rejects_bad_audio():
    pool = SlabPool(2, slab_bytes=64)
    with pytest.raises(ValueError, match="whole number"):
        InputAudioRawFrame.from_bytes(pool, b"\x00" * 3, 8000)
    with pytest.raises(ValueError, match="unknown codec"):
        InputAudioRawFrame.from_bytes(pool, b"\x00" * 4, 8000, codec="opus")
    with pytest.raises(ValueError, match="do not fit"):
        InputAudioRawFrame.from_bytes(pool, b"\x00" * 66, 8000)
    assert pool.in_use == 0


def test_many_threads_take_and_release():
    pool = SlabPool(64, slab_bytes=64)

    def churn() -> None:
        for _ in range(5000):
            pool.take(wait=1).release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pool.available == 64
    assert len({id(s) for s in pool._free}) == 64
