"""The slab pool: fixed size, a counted drop or back-pressure when empty, any-thread use."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import wait_until

from flowcat_ft import InputAudioRawFrame, PoolExhaustedError, SlabPool, SlabReleasedError


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


def test_each_thread_keeps_a_few_slabs_of_its_own():
    pool = SlabPool(1024, slab_bytes=64, cache=8)
    taken = [pool.take() for _ in range(3)]
    assert pool.in_use == 3 and len(pool._free) == 1024 - 8  # one refill of 8
    for slab in taken:
        slab.release()
    assert pool.in_use == 0 and len(pool._free) == 1024 - 8  # back in this thread's cache
    many = [pool.take() for _ in range(40)]
    for slab in many:
        slab.release()
    assert pool.in_use == 0 and len(pool._free) >= 1024 - 2 * 8  # spilled past 16


def test_a_thread_that_ends_gives_its_cached_slabs_back():
    pool = SlabPool(256, slab_bytes=64, cache=8)

    def work() -> None:
        slabs = [pool.take() for _ in range(5)]
        for slab in slabs:
            slab.release()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    del thread
    assert pool.in_use == 0 and len(pool._free) == 256 and pool._caches == []


def test_an_empty_shared_list_takes_from_other_threads_caches():
    pool = SlabPool(16, slab_bytes=64, cache=4)
    parked = threading.Event()
    done = threading.Event()

    def hoard() -> None:  # leaves 4 slabs in its cache and stays alive
        held = [pool.take() for _ in range(4)]
        for slab in held:
            slab.release()
        parked.set()
        done.wait(5)

    thread = threading.Thread(target=hoard)
    thread.start()
    assert parked.wait(5)
    mine = [pool.take() for _ in range(16)]  # 12 from the shared list, 4 stolen
    assert len({id(s) for s in mine}) == 16 and pool.in_use == 16
    with pytest.raises(PoolExhaustedError):
        pool.take()
    done.set()
    thread.join()
    del mine


def test_threads_never_get_the_same_slab():
    pool = SlabPool(256, slab_bytes=64, cache=8)
    held: set[int] = set()
    clashes: list[int] = []
    lock = threading.Lock()

    def churn(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine: list = []
        for _ in range(20000):
            if len(mine) < 40 and rng.random() < 0.55:
                slab = pool.take(wait=1)
                with lock:
                    if slab.index in held:
                        clashes.append(slab.index)
                    held.add(slab.index)
                mine.append(slab)
            elif mine:
                slab = mine.pop(int(rng.integers(len(mine))))
                with lock:
                    held.discard(slab.index)
                slab.release()
        for slab in mine:
            with lock:
                held.discard(slab.index)
            slab.release()

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    del threads
    assert pool.in_use == 0 and pool.drops == 0


def test_a_slab_released_twice_is_a_clear_error_and_lent_once():
    pool = SlabPool(2, slab_bytes=64)
    slab = pool.take()
    slab.release()
    with pytest.raises(SlabReleasedError, match=f"slab {slab.index} was released twice"):
        slab.release()
    assert pool.available == 2  # in the pool once, not twice
    assert {pool.take().index, pool.take().index} == {0, 1}


def test_a_slab_of_another_pool_is_refused():
    pool, other = SlabPool(1, slab_bytes=64), SlabPool(1, slab_bytes=64)
    with pytest.raises(SlabReleasedError, match="another pool"):
        pool.release(other.take())


def test_a_frame_released_by_hand_gives_its_slab_back_once():
    pool = SlabPool(2)
    frame = InputAudioRawFrame.from_bytes(pool, b"\x01\x00" * 160, 8000)
    frame.release()
    assert pool.in_use == 0
    with pytest.raises(ValueError, match="no audio any more"):
        frame.samples  # noqa: B018
    frame.release()  # nothing left to give back
    del frame
    assert pool.in_use == 0 and pool.available == 2


def test_a_frame_freed_while_its_thread_holds_the_pool_lock_gives_its_slab_back():
    """On 3.13t a thread frees what other threads let go of when it next runs Python code,
    which may be inside the pool's own condition wait: a release that then needs the lock
    (here, to spill a full cache) must not deadlock."""
    pool = SlabPool(256)  # caches of 2: a thread's cache spills past 4
    finished = threading.Event()

    def free_under_the_lock() -> None:
        frames = [InputAudioRawFrame.from_bytes(pool, b"\x00\x00" * 160, 8000) for _ in range(10)]
        with pool._lock:  # as a waiter in take(wait=...) holds it when woken
            frames.clear()  # the frames' finalizers release their slabs, and spill, here
        finished.set()

    threading.Thread(target=free_under_the_lock, daemon=True).start()
    assert finished.wait(5), "releasing a slab under the pool's lock deadlocked"
    # As the thread ends its cache goes back to the shared list, one slab at a time.
    assert wait_until(lambda: pool.in_use == 0)
