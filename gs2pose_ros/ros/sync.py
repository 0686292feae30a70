"""Pairing colour, depth and camera_info by stamp, and a latest-only hand-off to a worker thread.

Pure Python (no rclpy): the node feeds :class:`StampSync` from its subscription callbacks and
puts each complete set into a :class:`LatestSlot`, from which its worker takes the newest one.
A slow estimator therefore never builds a backlog: sets that arrive while it is busy replace
the waiting one and are counted as dropped.

Matching policy of :class:`StampSync` (approximate time, colour as the pivot):

* each stream keeps a bounded buffer (``queue_size`` newest messages);
* after every arrival, the newest colour message for which every other stream has a message
  within ``slop`` seconds (the closest one) forms the set: *the latest complete set wins*;
* the set's messages and everything older than its colour stamp are then discarded, so an
  older set is never emitted after a newer one; colour messages discarded unmatched are counted;
* a message stamped more than ``jump_back`` seconds before the last emitted set (a bag or a
  replay restarted, a camera re-opened) clears the buffers and starts again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stamped", "SyncedSet", "StampSync", "LatestSlot"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class Stamped:
    """One message with its stamp (ns) and arrival time (``time.monotonic()`` seconds)."""

    stamp_ns: int
    msg: Any
    arrival: float


@dataclass(frozen=True)
class SyncedSet:
    """A colour message with its depth (None in RGB-only mode) and camera_info."""

    stamp_ns: int
    image: Stamped
    depth: Stamped | None
    info: Stamped

    @property
    def arrival(self) -> float:
        """When the colour message arrived (the frame's arrival at the node)."""
        return self.image.arrival

    @property
    def completed(self) -> float:
        """When the last message of the set arrived."""
        return max(s.arrival for s in (self.image, self.depth, self.info) if s is not None)


@dataclass
class SyncStats:
    received: dict = field(default_factory=lambda: {"image": 0, "depth": 0, "camera_info": 0})
    emitted: int = 0
    unmatched: int = 0  # colour messages discarded without forming a set
    resets: int = 0  # time jumped back


class StampSync:
    """Approximate-time synchroniser of colour (+ depth) + camera_info; see the module docstring."""

    STREAMS = ("image", "depth", "camera_info")

    def __init__(self, slop: float = 0.02, queue_size: int = 10, use_depth: bool = True, jump_back: float = 1.0):
        if not slop >= 0:
            raise ValueError(f"StampSync: slop must be >= 0 seconds, got {slop!r}")
        if int(queue_size) < 1:
            raise ValueError(f"StampSync: queue_size must be >= 1, got {queue_size!r}")
        self.slop = float(slop)
        self.queue_size = int(queue_size)
        self.use_depth = bool(use_depth)
        self.jump_back = float(jump_back)
        self._buf = {s: deque(maxlen=self.queue_size) for s in self.STREAMS}
        self._last_emitted: int | None = None
        self.stats = SyncStats()

    @property
    def slop(self) -> float:
        return self._slop_ns / _NS

    @slop.setter
    def slop(self, value: float) -> None:
        self._slop_ns = int(round(float(value) * _NS))

    def reset(self) -> None:
        for b in self._buf.values():
            b.clear()
        self._last_emitted = None

    def buffered(self, stream: str) -> int:
        return len(self._buf[stream])

    # ---- input -----------------------------------------------------------------------------
    def add_image(self, stamp_ns: int, msg: Any, arrival: float | None = None) -> SyncedSet | None:
        return self.add("image", stamp_ns, msg, arrival)

    def add_depth(self, stamp_ns: int, msg: Any, arrival: float | None = None) -> SyncedSet | None:
        return self.add("depth", stamp_ns, msg, arrival)

    def add_info(self, stamp_ns: int, msg: Any, arrival: float | None = None) -> SyncedSet | None:
        return self.add("camera_info", stamp_ns, msg, arrival)

    def add(self, stream: str, stamp_ns: int, msg: Any, arrival: float | None = None) -> SyncedSet | None:
        """Buffer one message; returns the newest complete set it made possible, if any."""
        if stream not in self._buf:
            raise ValueError(f"StampSync: unknown stream {stream!r}; one of {self.STREAMS}")
        if stream == "depth" and not self.use_depth:
            return None
        self.stats.received[stream] += 1
        stamp_ns = int(stamp_ns)
        if self._last_emitted is not None and stamp_ns < self._last_emitted - self.jump_back * _NS:
            self.stats.resets += 1
            self.reset()
        buf = self._buf[stream]
        if stream == "image" and len(buf) == buf.maxlen:
            self.stats.unmatched += 1  # the oldest colour message falls out unmatched
        buf.append(Stamped(stamp_ns, msg, time.monotonic() if arrival is None else float(arrival)))
        return self._match()

    # ---- matching --------------------------------------------------------------------------
    def _closest(self, stream: str, stamp_ns: int) -> Stamped | None:
        best, best_dt = None, None
        for s in self._buf[stream]:
            dt = abs(s.stamp_ns - stamp_ns)
            if dt <= self._slop_ns and (best_dt is None or dt < best_dt):
                best, best_dt = s, dt
        return best

    def _match(self) -> SyncedSet | None:
        images = self._buf["image"]
        if not images or not self._buf["camera_info"] or (self.use_depth and not self._buf["depth"]):
            return None
        for img in sorted(images, key=lambda s: s.stamp_ns, reverse=True):
            if self._last_emitted is not None and img.stamp_ns <= self._last_emitted:
                continue
            info = self._closest("camera_info", img.stamp_ns)
            if info is None:
                continue
            depth = None
            if self.use_depth:
                depth = self._closest("depth", img.stamp_ns)
                if depth is None:
                    continue
            self._emit(img, depth, info)
            return SyncedSet(img.stamp_ns, img, depth, info)
        return None

    def _emit(self, img: Stamped, depth: Stamped | None, info: Stamped) -> None:
        cut = img.stamp_ns
        used = {id(img), id(depth), id(info)}
        for stream, buf in self._buf.items():
            keep = [s for s in buf if s.stamp_ns > cut and id(s) not in used]
            if stream == "image":
                self.stats.unmatched += len(buf) - len(keep) - 1
            buf.clear()
            buf.extend(keep)
        self._last_emitted = cut
        self.stats.emitted += 1


class LatestSlot:
    """A one-item, thread-safe hand-off: :meth:`put` replaces what waits, :meth:`get` takes it.

    ``dropped`` counts items replaced before a consumer took them, and items older than (or as
    old as) the last one taken (``key`` gives the ordering, default the item's ``stamp_ns``).
    """

    def __init__(self, key=lambda item: getattr(item, "stamp_ns", None)):
        self._cond = threading.Condition()
        self._item = None
        self._has = False
        self._closed = False
        self._key = key
        self._last_key = None
        self.put_count = 0
        self.taken = 0
        self.dropped = 0

    def put(self, item) -> bool:
        """Offer ``item``; returns False when it was dropped at once (stale, or the slot is closed)."""
        with self._cond:
            if self._closed:
                return False
            self.put_count += 1
            k = self._key(item)
            if k is not None and self._last_key is not None and k <= self._last_key:
                self.dropped += 1
                return False
            if self._has:
                self.dropped += 1
            self._item, self._has = item, True
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None):
        """The newest item, waiting up to ``timeout`` seconds; None on timeout or when closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._has and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if not self._has:
                return None
            item, self._item, self._has = self._item, None, False
            k = self._key(item)
            if k is not None:
                self._last_key = k
            self.taken += 1
            return item

    def clear_order(self) -> None:
        """Forget the last key taken (after a reset or a time jump back)."""
        with self._cond:
            self._last_key = None

    def close(self) -> None:
        """Wake every waiting :meth:`get` (it returns None) and refuse further items."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
