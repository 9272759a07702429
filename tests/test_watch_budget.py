"""Batches per tick follow the backlog: a tick opens batches until its time budget is spent (read from
an injected clock, so no test depends on how fast this machine writes), never fewer than the floor
and never more than the ceiling, and the next tick carries on where it stopped."""

import os
import time
from pathlib import Path

from medvec.ingest.batches import list_batches, load_manifest
from medvec.ingest.watch import WatchCursor, WatchOptions, watch_source
from medvec.sources import LocalFolderSource


class SteppingClock:
    """Each reading is `step` seconds after the last: work that reads the clock more often uses more time."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _backlog(folder: Path, count: int) -> list[str]:
    stamp = time.time() - 300
    uris = []
    for i in range(count):
        path = folder / f"p{i // 10}" / f"{i:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM")
        os.utime(path, (stamp, stamp))
        uris.append(str(path))
    return uris


def _tick(folder, home, cursor, options, clock):
    return watch_source(LocalFolderSource(folder), home, cursor, options, launcher="test", clock=clock)


def _options(**kw) -> WatchOptions:
    return WatchOptions(batch_size=3, batches_per_tick=2, settle_margin_s=0, **kw)


def _opened_files(home) -> list[str]:
    return [f.uri for b in list_batches(home) for f in load_manifest(home, b).files]


def test_a_tick_with_time_to_spare_opens_the_whole_backlog(tmp_path):
    uris = _backlog(tmp_path / "in", 30)
    tick = _tick(tmp_path / "in", tmp_path / "home", WatchCursor(previous_pass_started=time.time()),
                 _options(tick_budget_s=20), SteppingClock(0.0))
    assert len(tick.opened) == 10 and tick.cursor.resume_after is None
    assert sorted(_opened_files(tmp_path / "home")) == uris


def test_a_slow_tick_opens_the_floor_and_the_next_tick_carries_on(tmp_path):
    uris = _backlog(tmp_path / "in", 30)
    home = tmp_path / "home"
    options = _options(tick_budget_s=5)
    first = _tick(tmp_path / "in", home, WatchCursor(previous_pass_started=time.time()), options, SteppingClock(100.0))
    assert [len(m.files) for m in first.opened] == [3, 3]  # the budget was gone after listing: the floor only
    assert first.cursor.resume_after == uris[5]
    cursor, ticks = first.cursor, 1
    while cursor.resume_after is not None:
        cursor = _tick(tmp_path / "in", home, cursor, options, SteppingClock(1.0)).cursor
        ticks += 1
    opened = _opened_files(home)
    assert sorted(opened) == uris and len(opened) == len(set(opened))
    assert 2 < ticks < 5  # more than the floor per tick once the clock leaves time: 2 batches a tick would take 5


def test_the_ceiling_bounds_a_tick_however_much_time_is_left(tmp_path):
    _backlog(tmp_path / "in", 30)
    tick = _tick(tmp_path / "in", tmp_path / "home", WatchCursor(previous_pass_started=time.time()),
                 _options(tick_budget_s=20, max_batches_per_tick=4), SteppingClock(0.0))
    assert len(tick.opened) == 4 and tick.cursor.resume_after is not None


def test_runs_requested_keep_up_with_batches_opened():
    assert WatchOptions(runs_per_tick=8).runs_for(0) == 8
    assert WatchOptions(runs_per_tick=8).runs_for(50) == 50
