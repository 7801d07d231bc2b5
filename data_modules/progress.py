"""Progress of a long phase (data generation, preprocessing, face pretraining, the audit): a
bar in a terminal, and otherwise, as in a job's log, a line every tenth of the way."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """Counts `total` units of work. `total=None` (not known ahead): a line every `every`
    units off a terminal. No line in the first `quiet_s` seconds, so a phase that ends
    quickly (an audit that reuses its fitted attackers) logs nothing. Use as a context
    manager, or call `close`."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every: int = 100,
                 logger: logging.Logger = log, quiet_s: float = 5.0):
        from tqdm import tqdm

        self.total, self.desc, self.unit, self.log = total, desc, unit, logger
        self.done = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False,
                        disable=not sys.stderr.isatty())
        self.every = every
        self.quiet_s = quiet_s

    def update(self, n: int = 1, note: str = "") -> None:
        before, self.done = self.done, self.done + n
        self.bar.update(n)
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        elapsed = time.perf_counter() - self.t0
        if self.bar.disable and elapsed >= self.quiet_s and self._tick(before):
            of = f"/{self.total}" if self.total else ""
            pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            self.log.info("%s: %d%s %s%s, %.0fs%s", self.desc, self.done, of, self.unit, pct,
                          elapsed, f" [{note}]" if note else "")

    def _tick(self, before: int) -> bool:
        """Whether this update crossed a tenth of the total (or `every` units, unknown total)."""
        if not self.total:
            return self.done // self.every > before // self.every
        return (10 * self.done // self.total > 10 * before // self.total
                or self.done == self.total)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
