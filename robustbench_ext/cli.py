"""The ``rbx`` command line (click).

Every user error (unknown name, bad eps, bad n, unwritable results directory, ...) ends in one line
on stderr, ``rbx: error: ...``, and exit code 2, before anything is written.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .errors import RbxError

log = logging.getLogger("rbx")

DEFAULT_MODEL = "cifar10-resnet18-linf-at"
DEFAULT_SUITE = "cifar10-union"
KINDS = ("attacks", "defenses", "models", "datasets", "suites", "architectures")
#: Where a running evaluation keeps its checkpoint, inside the results directory (removed when the run ends).
CHECKPOINT_DIR = ".rbx-partial"


class RbxGroup(click.Group):
    """A click group whose errors are one line (``rbx: error: ...``) with a meaningful exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            rv = super().main(args, prog_name or "rbx", complete_var, standalone_mode=False, **extra)
        except RbxError as exc:
            click.echo(f"rbx: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"rbx: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("rbx: aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("rbx: interrupted; nothing was written (a checkpoint, if any, lets the same command resume)", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug in rbx or in a plugin: still one line, unless asked for the traceback
            if _VERBOSITY[0] >= 2:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"rbx: internal error: {type(exc).__name__}: {first} (rerun with -vv for the traceback)", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=RbxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rbx")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """rbx: adversarial-robustness benchmarking for PyTorch."""
    _VERBOSITY[0] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    for name in ("robustbench_ext", "attacks", "defenses", "rbx"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, _ClickHandler)] + [_ClickHandler()]
        logger.setLevel(level)
        logger.propagate = False


class _ClickHandler(logging.Handler):
    """Log records as ``rbx: warning: ...`` lines on the stderr click is writing to right now."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"rbx: {record.levelname.lower()}: {record.getMessage()}", err=True)


_VERBOSITY = [0]


# ---- rbx list --------------------------------------------------------------------------------------
@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS))
def list_cmd(kind: str) -> None:
    """List registered attacks, defenses, models, datasets, suites or architectures."""
    from .registry import REGISTRIES

    entries = REGISTRIES[kind].entries()
    if not entries:
        click.echo(f"(no {kind} registered yet)")
        return
    width = max(len(e.display) for e in entries)
    for e in entries:
        click.echo(f"{e.display:<{width}}  {e.summary}".rstrip())


# ---- rbx run ---------------------------------------------------------------------------------------
@cli.command("run")
@click.option("--model", "model_spec", default=DEFAULT_MODEL, show_default=True,
              help="Registered model, robustbench:ID or file:PATH (see `rbx list models`).")
@click.option("--arch", default=None, help="Architecture for file:PATH models (see `rbx list architectures`).")
@click.option("--normalize", default=None, help="Wrap the model with input normalization: cifar10, imagenet or MEAN,../STD,...")
@click.option("--dataset", "dataset_spec", default=None, help="Dataset (default: the suite's); see `rbx list datasets`.")
@click.option("--suite", "suite_spec", default=None, help=f"Suite name or .toml path [default: {DEFAULT_SUITE} unless --threat is given].")
@click.option("--threat", "threat_specs", multiple=True, metavar="NORM:EPS",
              help="Threat model, e.g. Linf:8/255, L2:0.5, L1:12 (repeatable; replaces the suite's).")
@click.option("--attack", "attack_specs", multiple=True, metavar="NAME[:K=V,...]",
              help="Attack cascade for every threat model, in order (repeatable), e.g. pgd:steps=50,restarts=2.")
@click.option("--union-attack", "union_specs", multiple=True, metavar="NAME[:K=V,...]",
              help="Multi-threat attack run last on union-robust points, e.g. union-worst:attack=apgd-ce (repeatable).")
@click.option("--n-examples", type=int, default=None, help="Evaluate the first N examples [default: all].")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON instead of the table.")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: when stderr is a terminal].")
@click.option("--resume/--no-resume", default=None,
              help="Continue a killed run from its checkpoint (--resume: require one; --no-resume: start over) "
                   "[default: continue if the same run left one].")
def run_cmd(model_spec, arch, normalize, dataset_spec, suite_spec, threat_specs, attack_specs, union_specs, n_examples,
            batch_size, device, seed, results_dir, as_json, progress, resume) -> None:
    """Evaluate a model: clean accuracy, robust accuracy per threat model, and union robust accuracy."""
    from .data import check_n_examples
    from .models import load_model, parse_normalization
    from .records import ensure_writable
    from .registry import DATASETS, MODELS
    from .runner import evaluate, resolve_device
    from .suites import AttackSpec, ThreatSpec, build_union, load_suite
    from .threat import ThreatModel

    # Everything that can be checked cheaply is checked before any model, data or file is touched.
    if n_examples is not None:
        check_n_examples(n_examples, sys.maxsize, "the dataset")
    if batch_size < 1:
        raise RbxError(f"--batch-size must be a positive integer, got {batch_size}")
    resolve_device(device)
    if normalize:
        parse_normalization(normalize)
    MODELS.get(model_spec)
    suite = load_suite(suite_spec or DEFAULT_SUITE) if (suite_spec or not threat_specs) else None
    attacks = tuple(AttackSpec.parse(a) for a in attack_specs)
    if threat_specs:
        threats = []
        for text in threat_specs:
            tm = ThreatModel.parse(text)
            default = (suite.attacks_for(tm.norm) if suite else None) or load_suite(DEFAULT_SUITE).attacks_for(tm.norm)
            threats.append(ThreatSpec(tm, attacks or default or (AttackSpec("pgd"),)))
    else:
        assert suite is not None
        threats = [ThreatSpec(t.threat, attacks or t.attacks) for t in suite.threats]
    union = tuple(AttackSpec.parse(a) for a in union_specs) if union_specs else (suite.union if suite and not threat_specs else ())
    for t in threats:
        t.build()  # unknown attacks, bad parameters, unsupported norms
    build_union(union)
    dataset_name = dataset_spec or (suite.dataset if suite else "cifar10")
    DATASETS.get(dataset_name)
    results_dir = ensure_writable(results_dir)

    model = load_model(model_spec, arch=arch, normalize=normalize)
    data = DATASETS.create(dataset_name, n_examples=n_examples)
    show = progress if progress is not None else sys.stderr.isatty()
    # A suite whose threats or attacks were replaced is a custom run, not that suite.
    suite_name = suite.name if suite and not threat_specs and not attack_specs and not union_specs else None
    ev = evaluate(model, data, threats, union_attacks=union, suite=suite_name, seed=seed, batch_size=batch_size,
                  device=device, progress=show, checkpoint_dir=results_dir / CHECKPOINT_DIR, resume=resume)
    path = ev.write(results_dir)
    if as_json:
        click.echo(json.dumps(json.loads(path.read_text()), indent=2))
    else:
        click.echo(format_table(ev.record))
        click.echo(f"record: {path}")


def format_table(record) -> str:
    """The run as a small text table: clean, each threat model, union, with intervals and seconds."""
    def row(label: str, acc, seconds: str = "", note: str = "") -> str:
        lo, hi = acc.ci95
        return f"{label:<14} {100 * acc.accuracy:6.2f}   [{100 * lo:5.1f}, {100 * hi:5.1f}]   {seconds:>8}  {note}".rstrip()

    prov = record.provenance
    lines = [
        f"model    {record.model['name']} ({record.model['architecture']})",
        f"dataset  {record.dataset['source']}, first {record.n}",
        f"suite    {record.suite_label}",
        f"device   {prov['device_name']}, seed {prov['seed']}",
        "",
        f"{'':<14} {'acc %':>6}   {'95% CI':^14}   {'seconds':>8}  attacks (points broken)",
        row("clean", record.clean),
    ]
    for t in record.threats:
        note = ", ".join(f"{a.attack} ({a.n_broken})" for a in t.attacks)
        lines.append(row(t.threat, t.robust, f"{t.seconds:.1f}", note))
    for a in record.union_attacks:
        lines.append(f"{'+ ' + a.attack:<14} {'':>6}   {'':^14}   {a.seconds:>8.1f}  union stage: broke {a.n_broken} "
                     f"of {a.n_attacked} union-robust points")
    lines.append(row("union", record.union, f"{prov['wall_seconds']:.1f}", "all threat models"))
    return "\n".join(lines)


# ---- rbx check -------------------------------------------------------------------------------------
@cli.command("check")
@click.option("--model", "model_spec", default=DEFAULT_MODEL, show_default=True)
@click.option("--arch", default=None)
@click.option("--normalize", default=None)
@click.option("--dataset", "dataset_spec", default="cifar10", show_default=True)
@click.option("--n-examples", type=int, default=100, show_default=True)
@click.option("--threat", "threat_spec", default="Linf:8/255", show_default=True, metavar="NORM:EPS")
@click.option("--attack", "attack_specs", multiple=True, metavar="NAME[:K=V,...]",
              help=f"White-box cascade [default: {DEFAULT_SUITE}'s for the norm].")
@click.option("--black-box", "black_box_spec", default="aa-square:budget=0.2", show_default=True,
              help="Black-box attack run after the white-box cascade.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check_cmd(model_spec, arch, normalize, dataset_spec, n_examples, threat_spec, attack_specs, black_box_spec,
              device, as_json) -> None:
    """Gradient-masking checks: exit 0 when every check passes, 1 when any flags a problem."""
    from .checks import full_checks, summarize
    from .data import check_n_examples
    from .models import load_model, parse_normalization
    from .registry import DATASETS, MODELS
    from .runner import frozen, resolve_device
    from .suites import AttackSpec, ThreatSpec, load_suite
    from .threat import ThreatModel

    check_n_examples(n_examples, sys.maxsize, "the dataset")
    dev = resolve_device(device)
    if normalize:
        parse_normalization(normalize)
    MODELS.get(model_spec)
    DATASETS.get(dataset_spec)
    threat = ThreatModel.parse(threat_spec)
    specs = tuple(AttackSpec.parse(a) for a in attack_specs) or load_suite(DEFAULT_SUITE).attacks_for(threat.norm)
    attacks = [stage.attack for stage in ThreatSpec(threat, specs).build()]
    black_box = ThreatSpec(threat, (AttackSpec.parse(black_box_spec),)).build()[0].attack
    model = load_model(model_spec, arch=arch, normalize=normalize)
    data = DATASETS.create(dataset_spec, n_examples=n_examples)
    net = model.module.to(dev)
    with frozen(net):
        results = full_checks(net, data.x.to(dev), data.y.to(dev), threat, attacks, black_box)
    if as_json:
        click.echo(json.dumps({"model": model.name, "threat": threat.label, "n": data.n, **summarize(results)}, indent=2))
    else:
        click.echo(f"model {model.name}, {data.source} first {data.n}, {threat.label}")
        for r in results:
            value = "" if r.value is None else f"{r.value:.4g}"
            click.echo(f"{r.name:<15} {'ok' if r.passed else 'FLAG':<5} {value:>8}  {r.message}")
    if not all(r.passed for r in results):
        sys.exit(1)


# ---- rbx leaderboard -------------------------------------------------------------------------------
@cli.command("leaderboard")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def leaderboard_cmd(results_dir: Path) -> None:
    """Write RESULTS_DIR/leaderboard.md from every record in RESULTS_DIR (one board per suite)."""
    from .leaderboard import write_leaderboard
    from .records import ensure_writable

    if not results_dir.is_dir():
        raise RbxError(f"no results directory {results_dir}: run `rbx run` first or pass --results-dir")
    ensure_writable(results_dir)
    out = write_leaderboard(results_dir)
    click.echo(f"leaderboard: {out}")


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
