"""What every ``rbx`` command module shares: the default model, the evaluation-state folder, progress
lines on stderr (``--quiet``) and when to show a bar."""

from __future__ import annotations

import logging

import click

from ..evaluation.request import DEFAULT_MODEL, STATE_DIR  # noqa: F401  (the commands' defaults are the request's)


class _ClickHandler(logging.Handler):
    """Log records as ``rbx: warning: ...`` lines on the stderr click is writing to right now."""

    def __init__(self, plain: bool = False) -> None:
        super().__init__()
        self.plain = plain

    def emit(self, record: logging.LogRecord) -> None:
        if self.plain:  # progress lines: "rbx: Linf:8/255 pma: broke ..."
            click.echo(f"rbx: {record.getMessage()}", err=True)
        else:
            click.echo(f"rbx: {record.levelname.lower()}: {record.getMessage()}", err=True)


def set_quiet(quiet: bool) -> None:
    """Progress lines (one per finished stage, check or epoch) on stderr, unless ``quiet``."""
    logger = logging.getLogger("robustbench_ext.progress")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _ClickHandler)] + [_ClickHandler(plain=True)]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class LazyHelpOption(click.Option):
    """An option whose help names what the registries hold, filled in only when help is shown (importing the
    registries' plugins at every ``rbx`` start would cost the commands that never show it): ``help`` is a format
    string, ``help_fields`` maps its fields to functions returning the text."""

    def __init__(self, *args, help_fields: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help_fields = help_fields or {}

    def get_help_record(self, ctx: click.Context):
        template = self.help
        if template is not None:
            self.help = template.format(**{k: fn() for k, fn in self.help_fields.items()})
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


def minimum_norm_names() -> str:
    """The registered minimum-norm attacks (those ``--curve`` takes), comma-separated."""
    from ..attack.min_norm import minimum_norm_attacks

    return ", ".join(minimum_norm_attacks())


def quiet_option(f):
    """``--quiet/-q``: no progress lines and no bar (warnings and errors still show)."""
    return click.option("-q", "--quiet", is_flag=True, help="No progress lines or bars on stderr.")(f)


def parse_arch_kwargs(text: str | None) -> dict:
    """``--arch-kwargs depth=28,width=10`` as a dict (values are TOML literals: numbers, true/false, quoted strings)."""
    from ..errors import RbxError
    from ..specs import parse_params

    try:
        return parse_params(text, f"--arch-kwargs {text}") if text else {}
    except RbxError:
        raise RbxError(f"--arch-kwargs takes KEY=VALUE,KEY=VALUE (e.g. depth=28,width=10); got '{text}'") from None


def _show_bar(progress: bool | None, quiet: bool) -> bool:
    """The CLI's bar rule: none with ``--quiet``, else :func:`robustbench_ext.progress.show_bars`."""
    from ..progress import show_bars

    return False if quiet else show_bars(progress)
