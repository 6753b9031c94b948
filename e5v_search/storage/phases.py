"""What long index work says while it runs: each phase of a build (sampling, training, adding,
merging) named as it starts and timed as it ends, and the adding's progress with the time
left. The storage layer never prints: it calls `say(line)`, and the CLI prints the lines on
stderr. Without `say` the phases are still timed (a build's stats report them).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

EVERY = 10.0  # seconds between two progress lines of one phase


class Phases:
    def __init__(self, say=None, every: float = EVERY, clock=time.perf_counter):
        self.say, self.every, self.clock = say, every, clock
        self.seconds: dict[str, float] = {}
        self._began = self._told = 0.0

    @contextmanager
    def phase(self, name: str, what: str):
        """Say `what ...`, run the block, then say how long it took; the time is added to
        `seconds[name]`. A block that raises says nothing more (its error will)."""
        self._tell(f"{what} ...")
        self._began = self._told = self.clock()
        yield
        took = self.clock() - self._began
        self.seconds[name] = self.seconds.get(name, 0.0) + took
        self._tell(f"{what}: done in {duration(took)}")

    def progress(self, what: str, done: int, total: int) -> None:
        """Inside a phase: `what: done/total (percent), elapsed, about N left`, at most once
        every `every` seconds (and not at the end: the phase's own line says that)."""
        now = self.clock()
        if self.say is None or done >= total or now - self._told < self.every or not done:
            return
        self._told = now
        elapsed = now - self._began
        left = elapsed * (total - done) / done
        self._tell(
            f"{what}: {done:,}/{total:,} ({100 * done / total:.0f}%), {duration(elapsed)}, "
            f"about {duration(left)} left"
        )

    def counted(self, chunks, what: str, total: int):
        """The (ids, vectors) chunks, progress said as each one is done with."""
        done = 0
        for ids, vectors in chunks:
            yield ids, vectors
            done += len(ids)
            self.progress(what, done, total)

    def _tell(self, line: str) -> None:
        if self.say is not None:
            self.say(line)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"
