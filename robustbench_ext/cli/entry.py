"""The ``rbx`` console script (and ``python -m robustbench_ext.cli``).

It imports nothing heavy before the signal handlers are in place (:func:`robustbench_ext.cli.signals.run_as_entry_point`),
so that Ctrl-C or SIGTERM during start-up, while torch and the engine load, is one line and an exit code too.
"""

from __future__ import annotations

from .signals import run_as_entry_point


def _load_cli():
    from .app import cli

    return cli


def main() -> None:
    """The ``rbx`` command (see :mod:`robustbench_ext.cli.signals` for Ctrl-C and SIGTERM)."""
    run_as_entry_point(_load_cli)


if __name__ == "__main__":  # pragma: no cover
    main()
