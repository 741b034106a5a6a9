"""Interruptions of the ``rbx`` command (:mod:`robustbench_ext.cli.entry`): the one place that installs signal handlers.

Library calls (:func:`robustbench_ext.evaluate` inside pytest or a notebook, ``CliRunner`` in tests) never install
handlers and never swallow ``KeyboardInterrupt``: Ctrl-C reaches the host program. Only the console script
(:func:`run_as_entry_point`) turns an interruption into one line and an exit code:

- Ctrl-C (SIGINT): ``rbx: interrupted (Ctrl-C); ...``, exit 130;
- SIGTERM (what schedulers send before they kill a job): raised as :class:`Terminated` wherever the program is
  (a ``KeyboardInterrupt``, so every path that keeps work on Ctrl-C keeps it here too), ``rbx: terminated
  (SIGTERM); ...``, exit 143.

The line says where the work done so far is kept and how to resume (the evaluation state a run saves after
every batch, a training checkpoint after every epoch; :func:`robustbench_ext.progress.resumable` marks the
interruption with it), or that nothing was saved yet. This module imports nothing heavy.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable, NoReturn

#: The exit code of each signal: 128 + its number, the shell's convention.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_ENTRY_POINT = [False]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is when the ``rbx`` entry point receives it (only there)."""

    signum = signal.SIGTERM


def as_entry_point() -> bool:
    """Whether rbx runs as the ``rbx`` command (the console script), not inside a host program."""
    return _ENTRY_POINT[0]


def interruption_line(exc: BaseException) -> str:
    """The one line for an interruption: which signal, and where the saved work is (or that there is none yet)."""
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
    saved = getattr(exc, "rbx_saved", None)
    if saved:
        path, kind = saved
        return f"rbx: {what}; the {kind} is kept in {path}: run the same command again to resume"
    return f"rbx: {what} before any evaluation state was saved: run the command again"


def exit_interrupted(exc: BaseException) -> NoReturn:
    """Print :func:`interruption_line` on stderr and exit with the signal's code (130 for Ctrl-C, 143 for SIGTERM)."""
    if not isinstance(exc, Terminated) and sys.stderr.isatty():
        sys.stderr.write("\n")  # end the terminal's "^C" echo
    sys.stderr.write(interruption_line(exc) + "\n")
    sys.stderr.flush()
    sys.exit(EXIT_CODES[signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT])


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run_as_entry_point(load_cli: Callable[[], Any]) -> None:
    """Run the ``rbx`` command: handlers for SIGINT (Python's own: ``KeyboardInterrupt``) and SIGTERM, then
    ``load_cli()`` (which may import the engine: an interruption then is one line too) and its ``main``."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _ENTRY_POINT[0] = True
    try:
        try:
            cli = load_cli()
        except KeyboardInterrupt as exc:
            exit_interrupted(exc)
        cli.main(prog_name="rbx")
    except KeyboardInterrupt as exc:  # one that slipped past the CLI's own handling (e.g. while it printed)
        exit_interrupted(exc)
    finally:
        _ENTRY_POINT[0] = False
        signal.signal(signal.SIGTERM, previous)
