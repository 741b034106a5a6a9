"""Saying what a long run is doing: a progress bar that counts points, and one line per finished stage.

Two channels, both on stderr:

- the **bar** (tqdm) counts the points of the running stage and moves with every attack step (attacks
  report the fraction of their steps done through :class:`StepReport`), so a 20-point run moves
  smoothly instead of jumping from 0% to 100%. It shows only when asked (the CLI: when stderr is a
  terminal, or ``--progress``);
- one **line per finished stage** (threat model, attack, points attacked and broken, seconds, elapsed
  time and a running ETA, as AutoAttack prints after each attack), logged at INFO on the
  ``robustbench_ext.progress`` logger. The CLI shows these lines whether or not stderr is a terminal;
  ``--quiet`` silences them. Library callers see them once they enable that logger.

Both follow one terminal rule (:func:`show_bars`): a bar is drawn only when asked, and by default only when
stderr is a terminal, in the CLI and the Python API alike. Downloads done by other libraries (torchvision,
robustbench's gdown, the Hugging Face Hub, timm) draw their own bars; :func:`third_party_bars` keeps those out
of a stderr that is not a terminal (a log file) too.

This is a leaf module: it imports nothing from rbx.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger("robustbench_ext.progress")

#: A callback an attack calls with the fraction (0..1) of its work on the current batch that is done.
StepReport = Callable[[float], None]


@contextlib.contextmanager
def resumable(path: "Path | str | None", what: str) -> Iterator[None]:
    """Mark an interruption (Ctrl-C, or SIGTERM as the ``rbx`` entry point raises it) that passes through with where
    the work done so far is saved (``path``, if it exists by then: ``what`` names it), so that the entry point can say
    how to resume. The interruption is re-raised unchanged: a library call never swallows it."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if path is not None and getattr(exc, "rbx_saved", None) is None and Path(path).exists():
            exc.rbx_saved = (str(path), what)  # type: ignore[attr-defined]
        raise
def show_bars(progress: bool | None = None) -> bool:
    """The terminal rule: ``progress`` if given, else whether stderr is a terminal (never into a log file)."""
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class _DropRedraws(io.TextIOBase):
    """A stderr that passes lines through but drops progress-bar redraws (writes holding a carriage return, and the
    bare newline a finished bar leaves), so a log file gets the messages without the bars."""

    def __init__(self, target) -> None:
        super().__init__()
        self._target = target
        self._dropped = False
        self.dropped_chars = 0

    def write(self, text: str) -> int:
        if "\r" in text or (self._dropped and text.strip() == ""):
            self._dropped = "\r" in text or (self._dropped and text == "")
            self.dropped_chars += len(text)
            return len(text)
        self._dropped = False
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")


@contextlib.contextmanager
def third_party_bars(progress: bool | None = None) -> Iterator[None]:
    """Around a call into another library that may draw progress bars (a download): when :func:`show_bars` says no,
    its bar redraws are dropped from stderr (its other messages pass); otherwise nothing changes."""
    if show_bars(progress):
        yield
        return
    original = sys.stderr
    filtered = _DropRedraws(original)
    sys.stderr = filtered
    try:
        yield
    finally:
        if sys.stderr is filtered:
            sys.stderr = original
        if filtered.dropped_chars:
            log.debug("dropped %d characters of progress-bar redraws (stderr is not a terminal)", filtered.dropped_chars)


def fmt_seconds(s: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    s = max(float(s), 0.0)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class PointBar:
    """A bar over the points of one stage; :meth:`batch` gives the callback for one batch of them."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, show: bool = True) -> None:
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="pt", leave=False, disable=not show,
                         dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} pt [{elapsed}<{remaining}]")
        self._pos = float(initial)

    def batch(self, start: int, size: int) -> StepReport:
        """The step callback for a batch of ``size`` points starting after ``start`` points of this stage."""
        def report(fraction: float) -> None:
            self._move(start + size * min(max(fraction, 0.0), 1.0))
        return report

    def _move(self, pos: float) -> None:
        if pos > self._pos:
            self._bar.update(pos - self._pos)
            self._pos = pos

    def done_through(self, pos: int) -> None:
        self._move(float(pos))

    def close(self) -> None:
        self._bar.close()


class RunClock:
    """Elapsed time and a running ETA over ``units`` equal shares of a run (threat models, the union stage, epochs)."""

    def __init__(self, units: int, elapsed: float = 0.0) -> None:
        self.units = max(int(units), 1)
        self._t0 = time.perf_counter() - elapsed

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def eta(self, done: float) -> float | None:
        """Seconds left when ``done`` units of ``units`` are finished (None before anything is)."""
        if done <= 0:
            return None
        return self.elapsed * max(self.units - done, 0.0) / done

    def summary(self, done: float) -> str:
        eta = self.eta(done) if done < self.units else None
        return f"elapsed {fmt_seconds(self.elapsed)}" + ("" if eta is None else f", ETA {fmt_seconds(eta)}")


def stage_line(what: str, attack: str, n_attacked: int, n_broken: int, robust: int, n: int, seconds: float,
               clock: RunClock | None = None, done: float = 0.0) -> str:
    """The line printed when one stage of a cascade finishes."""
    pct = 100.0 * robust / n if n else 0.0
    line = (f"{what} {attack}: broke {n_broken} of {n_attacked} points in {fmt_seconds(seconds)}; "
            f"robust {robust}/{n} ({pct:.1f}%)")
    return line + (f"; {clock.summary(done)}" if clock is not None else "")
