"""The ``rbx`` command line (click).

Every user error (unknown name, bad eps, bad n, unwritable results directory, ...) ends in one line
on stderr, ``rbx: error: ...``, and exit code 2, before anything is written.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

from .._version import __version__
from .common import _ClickHandler, set_quiet
from .signals import as_entry_point, exit_interrupted, run_as_entry_point
from .model import check_cmd, train_cmd
from .run import run_cmd
from .results import export_cmd, leaderboard_cmd, regress_cmd, report_cmd, shards_cmd
from ..errors import RbxError

log = logging.getLogger("rbx")

KINDS = ("attacks", "defenses", "models", "datasets", "suites", "architectures")


class _Interrupted(Exception):
    """A ``KeyboardInterrupt`` carried past click (which would print a blank line and call it an abort)."""

    def __init__(self, original: KeyboardInterrupt) -> None:
        super().__init__()
        self.original = original


class RbxGroup(click.Group):
    """A click group whose errors are one line (``rbx: error: ...``) with a meaningful exit code.

    Interruptions (Ctrl-C, SIGTERM): as the ``rbx`` command (:mod:`robustbench_ext.cli.signals`) one line that
    says how to resume, exit 130 / 143; invoked by a host program (``CliRunner`` in tests, a notebook) the
    ``KeyboardInterrupt`` is re-raised, so that Ctrl-C reaches the host.
    """

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted(exc) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            rv = super().main(args, prog_name or "rbx", complete_var, standalone_mode=False, **extra)
        except _Interrupted as exc:
            _interrupted(exc.original)
        except RbxError as exc:
            click.echo(f"rbx: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except SystemExit:
            raise
        except click.ClickException as exc:
            click.echo(f"rbx: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            # click turns EOFError as well as Ctrl-C into Abort: only Ctrl-C is an interruption (exit 130)
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, KeyboardInterrupt):
                _interrupted(cause)
            if cause is not None:
                if _VERBOSITY[0] >= 2:
                    raise
                click.echo(f"rbx: internal error: {type(cause).__name__}: {str(cause).strip()[:200]} "
                           "(rerun with -vv for the traceback)", err=True)
                sys.exit(1)
            click.echo("rbx: aborted", err=True)  # a plain click.Abort: neither a signal nor an error of the user's
            sys.exit(1)
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except Exception as exc:  # a bug in rbx or in a plugin: still one line, unless asked for the traceback
            if _VERBOSITY[0] >= 2:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"rbx: internal error: {type(exc).__name__}: {first} (rerun with -vv for the traceback)", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """As the ``rbx`` command: one line and exit 130 (Ctrl-C) or 143 (SIGTERM). Inside a host program: re-raised."""
    if not as_entry_point():
        raise exc
    exit_interrupted(exc)


@click.group(cls=RbxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rbx")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """rbx: adversarial-robustness benchmarking for PyTorch."""
    _VERBOSITY[0] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    for name in ("robustbench_ext", "rbx"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, _ClickHandler)] + [_ClickHandler()]
        logger.setLevel(level)
        logger.propagate = False
    set_quiet(False)


_VERBOSITY = [0]


# ---- rbx list --------------------------------------------------------------------------------------
@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS))
def list_cmd(kind: str) -> None:
    """List registered attacks, defenses, models, datasets, suites or architectures."""
    from ..registry import REGISTRIES

    entries = REGISTRIES[kind].entries()
    if not entries:
        click.echo(f"(no {kind} registered yet)")
        return
    width = max(len(e.display) for e in entries)
    for e in entries:
        click.echo(f"{e.display:<{width}}  {e.summary}".rstrip())


# ---- rbx run (cli.run), train / check (cli.model) and leaderboard / report / export / shards / regress (cli.results) ----
for _cmd in (run_cmd, train_cmd, check_cmd, leaderboard_cmd, report_cmd, export_cmd, shards_cmd, regress_cmd):
    cli.add_command(_cmd)


def main() -> None:
    """The ``rbx`` console script (kept under this name for installs made before :mod:`robustbench_ext.cli.entry`)."""
    run_as_entry_point(lambda: cli)


if __name__ == "__main__":  # pragma: no cover
    main()
