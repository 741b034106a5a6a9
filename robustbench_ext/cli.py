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
        except SystemExit:
            raise
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
    set_quiet(False)


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


def quiet_option(f):
    """``--quiet/-q``: no progress lines and no bar (warnings and errors still show)."""
    return click.option("-q", "--quiet", is_flag=True, help="No progress lines or bars on stderr.")(f)


def _show_bar(progress: bool | None, quiet: bool) -> bool:
    return False if quiet else (progress if progress is not None else sys.stderr.isatty())


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
@click.option("--eps-sweep", default=None, metavar="F1,F2,...",
              help="Also evaluate each threat model at eps times these factors (e.g. 0.25,0.5,2), for eps plots.")
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
@click.option("--shards", default=None, metavar="DIR|GLOB",
              help="Stream over .npz shards instead of --dataset (constant memory, resumable per shard).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Precision of the attack search; successes are always re-verified in float32.")
@click.option("--channels-last", is_flag=True, help="channels_last memory format for the search.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model for the search.")
@quiet_option
def run_cmd(model_spec, arch, normalize, dataset_spec, suite_spec, threat_specs, attack_specs, union_specs, eps_sweep,
            n_examples, batch_size, device, seed, results_dir, as_json, progress, resume, shards, precision,
            channels_last, compile_, quiet) -> None:
    """Evaluate a model: clean accuracy, robust accuracy per threat model, and union robust accuracy.

    Under torchrun (WORLD_SIZE > 1) the work is split over the processes (see README, "Scaling").
    """
    from .acceleration import SearchOptions
    from .distributed import init_from_env
    from .data import check_n_examples
    from .models import load_model, parse_normalization
    from .records import ensure_writable
    from .registry import DATASETS, MODELS
    from .runner import evaluate, resolve_device
    from .suites import AttackSpec, ThreatSpec, build_union, load_suite
    from .threat import ThreatModel

    set_quiet(quiet)
    # Everything that can be checked cheaply is checked before any model, data or file is touched.
    if n_examples is not None:
        check_n_examples(n_examples, sys.maxsize, "the dataset")
    if batch_size < 1:
        raise RbxError(f"--batch-size must be a positive integer, got {batch_size}")
    factors = _parse_factors(eps_sweep) if eps_sweep else ()
    search = SearchOptions(precision, channels_last, compile_)
    if shards and (dataset_spec or n_examples is not None or factors):
        raise RbxError("--shards replaces --dataset and --n-examples, and streams have no --eps-sweep")
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
    if shards:
        from .streaming import list_shards

        list_shards(shards)
    results_dir = ensure_writable(results_dir)

    dist, device = init_from_env(device)
    model = load_model(model_spec, arch=arch, normalize=normalize)
    show = _show_bar(progress, quiet) and dist.is_main
    # A suite whose threats or attacks were replaced is a custom run, not that suite.
    suite_name = suite.name if suite and not threat_specs and not attack_specs and not union_specs else None
    if shards:
        from .streaming import stream_evaluate

        out = stream_evaluate(model, shards, threats, union_attacks=union, suite=suite_name, seed=seed,
                              batch_size=batch_size, device=device, results_dir=results_dir, progress=show,
                              search=search, dist=dist)
        if out is None:  # not rank 0: rank 0 merges and reports
            return
        ev, path = out
    else:
        data = DATASETS.create(dataset_name, n_examples=n_examples)
        ev = evaluate(model, data, threats, union_attacks=union, suite=suite_name, seed=seed, batch_size=batch_size,
                      device=device, progress=show, checkpoint_dir=results_dir / CHECKPOINT_DIR, resume=resume,
                      eps_sweep=factors, search=search, dist=dist)
        if not dist.is_main:
            return
        path = ev.write(results_dir)
    if as_json:
        click.echo(json.dumps(json.loads(path.read_text()), indent=2))
    else:
        click.echo(format_table(ev.record))
        click.echo(f"record: {path}")


def _parse_factors(text: str) -> tuple[float, ...]:
    try:
        factors = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RbxError(f"--eps-sweep takes comma-separated positive factors such as 0.25,0.5,2; got '{text}'") from None
    if not factors or any(not (f > 0 and f < float("inf")) for f in factors):
        raise RbxError(f"--eps-sweep takes comma-separated positive factors such as 0.25,0.5,2; got '{text}'")
    return factors


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
    for sw in record.sweeps:
        pts = ", ".join(f"{p['label'].split(':', 1)[1]}: {100 * p['robust']['accuracy']:.1f}" for p in sw["points"])
        lines.append(f"eps sweep {sw['threat']}: {pts}")
    return "\n".join(lines)


# ---- rbx train -------------------------------------------------------------------------------------
@cli.command("train")
@click.option("--defense", "defense_spec", required=True, metavar="NAME[:K=V,...]",
              help="Defense or baseline, e.g. ramp, sovr:M=0.4, ltd:tau_teacher=0.5 (see `rbx list defenses`).")
@click.option("--arch", default=None, help="Architecture to train from scratch (see `rbx list architectures`).")
@click.option("--init", "init_spec", default=None, help="Model to start from (fine-tuning), e.g. cifar10-resnet18-linf-at.")
@click.option("--dataset", "dataset_spec", default="cifar10-train", show_default=True)
@click.option("--n-train", type=int, default=None, help="Train on the first N images [default: all].")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--optimizer", default=None, metavar="sgd|adamw",
              help="[default: the defense's recipe: sgd, adamw for adaptive-smoothing]")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: the defense's recipe, 0.1 for SGD].")
@click.option("--schedule", type=click.Choice(["onecycle", "piecewise", "cosine", "constant"]), default=None,
              help="Learning-rate schedule, stepped per batch [default: the defense's recipe, onecycle for SGD].")
@click.option("--weight-decay", type=float, default=None, help="[default: the defense's recipe, 5e-4 for SGD]")
@click.option("--momentum", type=float, default=None, help="SGD momentum [default: the defense's recipe, 0.9].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA (ignored on CPU).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder [default: results/train/NAME].")
@click.option("--name", default=None, help="Name of the trained model in records [default: the run folder's name].")
@click.option("--eval-suite", default=DEFAULT_SUITE, show_default=True, help="Suite for the evaluation hook.")
@click.option("--eval-n", type=int, default=500, show_default=True, help="Test images for the evaluation hook (0: skip).")
@click.option("--eval-dataset", default=None, help="Dataset of the evaluation hook [default: the --eval-suite's].")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--resume/--no-resume", default=None, help="Continue the run folder's checkpoint [default: if there is one].")
@click.option("--progress/--no-progress", default=None)
@quiet_option
def train_cmd(defense_spec, arch, init_spec, dataset_spec, n_train, epochs, batch_size, optimizer, lr, schedule,
              weight_decay, momentum, seed, device, amp, out, name, eval_suite, eval_n, eval_dataset, results_dir, resume, progress,
              quiet) -> None:
    """Adversarial training with a registered defense; checkpoints every epoch, then an rbx evaluation record."""
    from .records import ensure_writable
    from .registry import DATASETS
    from .runner import evaluate
    from .suites import load_suite
    from .training import TrainConfig, Trainer, parse_defense

    set_quiet(quiet)
    parse_defense(defense_spec)  # bad names and parameters before anything is loaded
    DATASETS.get(dataset_spec)
    if eval_dataset:
        DATASETS.get(eval_dataset)
    suite = load_suite(eval_suite) if eval_n else None
    if eval_n < 0:
        raise RbxError(f"--eval-n must be >= 0, got {eval_n}")
    run_name = name or f"{defense_spec.split(':')[0]}_{arch or init_spec}_e{epochs}_s{seed}".replace("/", "-")
    out = out or results_dir / "train" / run_name
    cfg = TrainConfig(defense=defense_spec, out=str(out), arch=arch, init=init_spec, dataset=dataset_spec, n_train=n_train,
                      epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, schedule=schedule, seed=seed, device=device, amp=amp, name=name or Path(out).name)
    cfg.validate()
    if suite is not None:
        ensure_writable(results_dir)
    trainer = Trainer(cfg, progress=_show_bar(progress, quiet))
    result = trainer.run(resume=resume)
    for row in result.log:
        click.echo("epoch " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch") + f"  [{row['epoch']}/{epochs}]")
    click.echo(f"model: {result.model_path}")
    if suite is not None:
        data = DATASETS.create(eval_dataset or suite.dataset, n_examples=eval_n)
        # The saved weights (fp16 model.pt, through their model source): the record's sha256 is theirs.
        ev = evaluate(trainer.saved_model(), data, suite.threats, union_attacks=suite.union, suite=suite.name, seed=seed,
                      device=device, progress=_show_bar(progress, quiet), checkpoint_dir=results_dir / CHECKPOINT_DIR)
        path = ev.write(results_dir)
        click.echo(format_table(ev.record))
        click.echo(f"record: {path}")


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
@quiet_option
def check_cmd(model_spec, arch, normalize, dataset_spec, n_examples, threat_spec, attack_specs, black_box_spec,
              device, as_json, quiet) -> None:
    """Gradient-masking checks: exit 0 when every check passes, 1 when any flags a problem."""
    from .checks import full_checks, summarize
    from .data import check_n_examples
    from .models import load_model, parse_normalization
    from .registry import DATASETS, MODELS
    from .runner import frozen, resolve_device
    from .suites import AttackSpec, ThreatSpec, load_suite
    from .threat import ThreatModel

    from .progress import RunClock, fmt_seconds, log as progress_log

    set_quiet(quiet)
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
    clock, done = RunClock(7), [0]

    def on_result(r, seconds):
        done[0] += 1
        progress_log.info("check %s: %s in %s; %s", r.name, "ok" if r.passed else "FLAG", fmt_seconds(seconds),
                          clock.summary(done[0]))

    with frozen(net):
        results = full_checks(net, data.x.to(dev), data.y.to(dev), threat, attacks, black_box, on_result)
    if as_json:
        click.echo(json.dumps({"model": model.name, "threat": threat.label, "n": data.n, **summarize(results)}, indent=2))
    else:
        click.echo(f"model {model.name}, {data.source} first {data.n}, {threat.label}")
        for r in results:
            value = "" if r.value is None else f"{r.value:.4g}"
            click.echo(f"{r.name:<15} {'ok' if r.passed else 'FLAG':<5} {value:>8}  {r.message}")
    if not all(r.passed for r in results):
        sys.exit(1)


# ---- rbx leaderboard / report / export / regress ---------------------------------------------------
@cli.command("leaderboard")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--readme", type=click.Path(path_type=Path), default=None,
              help="Also write the board of --readme-suite between the README's leaderboard markers.")
@click.option("--readme-suite", default=DEFAULT_SUITE, show_default=True)
def leaderboard_cmd(results_dir: Path, readme: Path | None, readme_suite: str) -> None:
    """Write leaderboard.md, .csv, .html and plots/ in RESULTS_DIR from every record there (one board per suite)."""
    from .leaderboard import embed_in_readme, write_all
    from .records import ensure_writable

    if not results_dir.is_dir():
        raise RbxError(f"no results directory {results_dir}: run `rbx run` first or pass --results-dir")
    ensure_writable(results_dir)
    paths = write_all(results_dir)
    for p in paths[:3]:
        click.echo(f"leaderboard: {p}")
    click.echo(f"plots: {len(paths) - 3} in {results_dir / 'plots'}")
    if readme is not None:
        embed_in_readme(readme, results_dir, readme_suite)
        click.echo(f"readme: {readme}")


@cli.command("report")
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for the report [default: beside the record].")
def report_cmd(record: Path, out: Path | None) -> None:
    """One run's report: its table and plots (per-class accuracy, attribution, loss curves, eps sweep) as Markdown."""
    from . import plots
    from .records import atomic_write_bytes, atomic_write_text, read_flags, read_record

    if not record.is_file():
        raise RbxError(f"no such record: {record}")
    rec = read_record(record)
    flags = read_flags(record, rec)
    out = out or record.parent
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# rbx report: {rec.model['name']} on {rec.dataset['source']}", "", "```", format_table(rec), "```", ""]
    figures = [("per_class", plots.per_class(rec, flags), "Per-class accuracy"),
               ("attribution", plots.attribution(rec, flags), "Which attack broke how many points"),
               ("loss", plots.loss_curves(rec), "Attack loss curves")]
    figures += [(f"eps_{n}", plots.eps_sweep([rec], n), f"Robust accuracy vs eps ({n})") for n in sorted({t.norm for t in rec.threats})]
    for key, png, caption in figures:
        if png is None:
            continue
        name = f"{record.stem}_{key}.png"
        atomic_write_bytes(out / name, png)
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = out / f"{record.stem}_report.md"
    atomic_write_text(path, "\n".join(lines))
    click.echo(f"report: {path}")


@cli.command("export")
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["robustbench"]), default="robustbench", show_default=True)
@click.option("--model-id", required=True, help="RobustBench-style id, e.g. Doe2026Union_RN18 (the file name).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("model_info"), show_default=True)
@click.option("--meta", type=click.Path(path_type=Path), default=None,
              help="JSON with link, name, authors, venue, additional_data, reported, ... (RobustBench keys).")
@click.option("--autoattack-record", type=click.Path(path_type=Path), default=None,
              help="A record of the same model and images evaluated with --attack autoattack.")
def export_cmd(record: Path, fmt: str, model_id: str, out: Path, meta: Path | None, autoattack_record: Path | None) -> None:
    """Export a record as RobustBench leaderboard entries (model_info/<dataset>/<Linf|L2>/<id>.json)."""
    from .records import read_record
    from .robustbench_export import export

    if not record.is_file():
        raise RbxError(f"no such record: {record}")
    meta_d = {}
    if meta is not None:
        try:
            meta_d = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RbxError(f"cannot read --meta {meta}: {exc}") from None
    aa = read_record(autoattack_record) if autoattack_record else None
    for p in export(read_record(record), out, model_id, meta_d, aa):
        click.echo(f"exported: {p}")


@cli.command("shards")
@click.option("--dataset", "dataset_spec", default="cifar10", show_default=True, help="Dataset to pack (see `rbx list datasets`).")
@click.option("--n-examples", type=int, default=None, help="Pack the first N images [default: all].")
@click.option("--shard-size", type=int, default=10000, show_default=True, help="Images per shard.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the shards.")
def shards_cmd(dataset_spec: str, n_examples: int | None, shard_size: int, out: Path) -> None:
    """Pack a dataset into .npz shards (uint8 images, labels, global index) for `rbx run --shards`."""
    from .data import check_n_examples
    from .errors import DataError
    from .registry import DATASETS
    from .streaming import pack_shards

    if n_examples is not None:
        check_n_examples(n_examples, sys.maxsize, "the dataset")
    if shard_size < 1:
        raise DataError(f"--shard-size must be a positive integer, got {shard_size}")
    DATASETS.get(dataset_spec)
    if out.exists() and any(out.glob("*.npz")):
        raise RbxError(f"{out} already holds .npz files; give an empty or new folder")
    paths = pack_shards(DATASETS.create(dataset_spec, n_examples=n_examples), out, shard_size)
    click.echo(f"wrote {len(paths)} shards to {out}")


@cli.command("regress")
@click.option("--baseline", type=click.Path(path_type=Path), required=True, help="Baseline record (or results directory).")
@click.option("--candidate", type=click.Path(path_type=Path), required=True, help="Candidate record (or results directory).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Family-wise significance level of the gate.")
@click.option("--json", "as_json", is_flag=True)
def regress_cmd(baseline: Path, candidate: Path, alpha: float, as_json: bool) -> None:
    """Regression gate: exit 1 if robust accuracy (any threat model or the union) changed significantly, 0 if not,
    2 if the runs cannot be compared."""
    import dataclasses as dc

    from .regress import compare, resolve_pairs

    results = [compare(b, c, alpha) for b, c in resolve_pairs(baseline, candidate)]
    if as_json:
        click.echo(json.dumps([{**dc.asdict(r), "failed": r.failed} for r in results], indent=2))
    else:
        click.echo("\n\n".join(r.report() for r in results))
    if any(r.failed for r in results):
        sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
