"""gs2pose_ros.ros.sync: stamp pairing and the latest-only hand-off (pure Python, no ROS)."""

from __future__ import annotations

import threading
import time

import pytest

from gs2pose_ros.ros.sync import LatestSlot, StampSync

MS = 1_000_000  # ns


def feed(sync, stream, t_ms, tag=None):
    return sync.add(stream, int(t_ms * MS), tag if tag is not None else f"{stream}@{t_ms}", arrival=t_ms / 1000)


def test_exact_stamps_form_a_set_in_any_arrival_order():
    for order in (("image", "depth", "camera_info"), ("camera_info", "depth", "image"), ("depth", "image", "camera_info")):
        sync = StampSync(slop=0.01)
        results = [feed(sync, s, 100) for s in order]
        assert results[:2] == [None, None]
        s = results[2]
        assert s is not None and s.stamp_ns == 100 * MS
        assert (s.image.msg, s.depth.msg, s.info.msg) == ("image@100", "depth@100", "camera_info@100")
        assert sync.stats.emitted == 1 and sync.stats.unmatched == 0


def test_slop_is_honoured_and_closest_wins():
    sync = StampSync(slop=0.005)
    feed(sync, "image", 100)
    feed(sync, "camera_info", 100)
    assert feed(sync, "depth", 106) is None  # 6 ms > 5 ms
    s = feed(sync, "depth", 103)
    assert s is not None and s.depth.msg == "depth@103"
    sync = StampSync(slop=0.01)
    feed(sync, "image", 100)
    feed(sync, "depth", 92)
    feed(sync, "depth", 97)
    assert feed(sync, "camera_info", 100).depth.msg == "depth@97"


def test_latest_complete_set_wins_and_older_are_never_emitted_later():
    sync = StampSync(slop=0.001, queue_size=10)
    for t in (100, 133, 166):
        feed(sync, "image", t)
        feed(sync, "depth", t)
    assert sync.stats.emitted == 0
    s = feed(sync, "camera_info", 166)  # only the newest has its camera_info ...
    assert s.stamp_ns == 166 * MS
    assert feed(sync, "camera_info", 133) is None  # ... and an older set cannot follow it
    assert feed(sync, "camera_info", 100) is None
    assert sync.stats.unmatched == 2  # 100 and 133 discarded
    assert sync.buffered("image") == 0 and sync.buffered("depth") == 0


def test_newest_complete_set_chosen_when_several_are_complete():
    sync = StampSync(slop=0.001)
    for t in (100, 133):
        feed(sync, "image", t)
        feed(sync, "camera_info", t)
    feed(sync, "depth", 100)
    s = feed(sync, "depth", 133)  # 100 was emitted when its depth arrived; now 133
    assert s.stamp_ns == 133 * MS and sync.stats.emitted == 2


def test_rgb_only_mode_ignores_depth():
    sync = StampSync(slop=0.001, use_depth=False)
    assert feed(sync, "depth", 100) is None
    feed(sync, "image", 100)
    s = feed(sync, "camera_info", 100)
    assert s is not None and s.depth is None
    assert sync.stats.received["depth"] == 0


def test_buffers_are_bounded():
    sync = StampSync(slop=0.001, queue_size=3)
    for t in range(0, 1000, 10):
        feed(sync, "image", t)
        feed(sync, "depth", t + 5)  # never within the slop
    assert sync.buffered("image") == 3 and sync.buffered("depth") == 3
    assert sync.stats.unmatched == 97 and sync.stats.emitted == 0


def test_missing_camera_info_never_emits():
    sync = StampSync(slop=0.01)
    for t in range(0, 300, 33):
        assert feed(sync, "image", t) is None and feed(sync, "depth", t) is None
    assert sync.stats.received == {"image": 10, "depth": 10, "camera_info": 0}


def test_time_jumping_back_restarts():
    sync = StampSync(slop=0.001, jump_back=1.0)
    for stream in ("image", "depth", "camera_info"):
        feed(sync, stream, 50_000)
    assert sync.stats.emitted == 1
    for stream in ("image", "depth"):
        feed(sync, stream, 49_500)  # 0.5 s back: just an old message
    assert feed(sync, "camera_info", 49_500) is None
    for stream in ("image", "depth"):
        feed(sync, stream, 1_000)  # a bag restarted
    assert feed(sync, "camera_info", 1_000).stamp_ns == 1_000 * MS
    assert sync.stats.resets >= 1


def test_slop_setter_and_arguments():
    sync = StampSync(slop=0.02)
    sync.slop = 0.05
    assert sync.slop == pytest.approx(0.05)
    with pytest.raises(ValueError):
        StampSync(slop=-1)
    with pytest.raises(ValueError):
        StampSync(queue_size=0)
    with pytest.raises(ValueError):
        sync.add("rgb", 0, None)


# ---- LatestSlot ----------------------------------------------------------------------------------
class Item:
    def __init__(self, stamp_ns):
        self.stamp_ns = stamp_ns


def test_slot_keeps_only_the_latest_and_counts_drops():
    slot = LatestSlot()
    for t in range(5):
        slot.put(Item(t))
    got = slot.get(timeout=0.1)
    assert got.stamp_ns == 4 and slot.dropped == 4 and slot.taken == 1
    assert slot.get(timeout=0.01) is None


def test_slot_drops_stale_items():
    slot = LatestSlot()
    slot.put(Item(10))
    assert slot.get(timeout=0.1).stamp_ns == 10
    assert slot.put(Item(10)) is False and slot.put(Item(5)) is False
    assert slot.dropped == 2 and slot.get(timeout=0.01) is None
    slot.clear_order()
    assert slot.put(Item(5)) is True


def test_slot_close_wakes_the_worker_and_refuses_items():
    slot = LatestSlot()
    out = []
    t = threading.Thread(target=lambda: out.append(slot.get(timeout=5.0)))
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    slot.close()
    t.join(timeout=2.0)
    assert not t.is_alive() and out == [None] and time.monotonic() - t0 < 1.0
    assert slot.put(Item(1)) is False and slot.closed


def test_slow_worker_never_builds_a_backlog():
    """A producer at ~1 kHz and a worker taking 20 ms per item: the worker always gets the newest."""
    slot = LatestSlot()
    processed = []
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            item = slot.get(timeout=0.05)
            if item is not None:
                processed.append(item.stamp_ns)
                time.sleep(0.02)

    th = threading.Thread(target=worker)
    th.start()
    n = 0
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        n += 1
        slot.put(Item(n))
        time.sleep(0.001)
    time.sleep(0.05)
    stop.set()
    th.join(timeout=2.0)
    assert processed == sorted(processed) and len(set(processed)) == len(processed)
    assert len(processed) <= 0.3 / 0.02 + 3  # no backlog: far fewer than produced
    assert processed[-1] >= n - 30  # the last one processed is (nearly) the newest
    assert slot.taken + slot.dropped == slot.put_count - (1 if slot.get(timeout=0) else 0)
