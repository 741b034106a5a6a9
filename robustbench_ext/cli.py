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

from ._version import __version__
from .cli_common import DEFAULT_MODEL, STATE_DIR, _ClickHandler, _show_bar, quiet_option, set_quiet
from .cli_model import check_cmd, train_cmd
from .cli_results import export_cmd, leaderboard_cmd, regress_cmd, report_cmd, shards_cmd
from .errors import RbxError
from .report import format_table
from .suites import DEFAULT_SUITE

log = logging.getLogger("rbx")

KINDS = ("attacks", "defenses", "models", "datasets", "suites", "architectures")


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
        except click.Abort as exc:
            # click turns EOFError as well as Ctrl-C into Abort: only Ctrl-C is an interruption (exit 130)
            cause = exc.__cause__ or exc.__context__
            if cause is not None and not isinstance(cause, KeyboardInterrupt):
                if _VERBOSITY[0] >= 2:
                    raise
                click.echo(f"rbx: internal error: {type(cause).__name__}: {str(cause).strip()[:200]} "
                           "(rerun with -vv for the traceback)", err=True)
                sys.exit(1)
            click.echo("rbx: interrupted; nothing was written (a checkpoint, if any, lets the same command resume)", err=True)
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
@click.option("--suite", "suite_spec", default=None, help=f"Suite name or .toml path [default: the dataset's DATASET-union suite, else {DEFAULT_SUITE}; none with --threat].")
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
@click.option("--num-classes", type=int, default=None, help="Class count of a file: checkpoint [default: read from its last layer].")
@click.option("--output", default=None, metavar="KEY|INDEX",
              help="Which entry of a model's tuple/dict/object output holds the logits [default: the first tensor, or 'logits'].")
@click.option("--allow-class-subset", is_flag=True,
              help="Evaluate data whose classes are a subset of the model's (labels must be model class indices).")
@click.option("--skip-stage", "skip_stages", multiple=True, metavar="'THREAT ATTACK'",
              help="Resume a run without a stage that failed, as its error names it (the record says so).")
@click.option("--randomized/--no-randomized", default=None,
              help="The model is randomized: judge every point by majority over --draws fresh passes "
                   "[default: when the determinism pre-check finds two passes that differ].")
@click.option("--draws", type=int, default=None, metavar="R",
              help="Fresh forward passes per re-check of a randomized model [default: 11].")
@click.option("--curve", is_flag=True,
              help="With a minimum-norm attack (fmn, cw, deepfool): robust accuracy vs eps from one run, in the record, "
                   "checked against the fixed-eps cascade at each threat model's eps.")
@click.option("--union-only", is_flag=True, default=None,
              help="Only union robust accuracy counts (a CI gate): threat models run in the suite's measured "
                   "union_order and each attacks only points robust under all before it. Same union flags as a full "
                   "run; per-norm accuracy only for the first threat model (the others are 'n/m', not measured).")
@quiet_option
def run_cmd(model_spec, arch, normalize, dataset_spec, suite_spec, threat_specs, attack_specs, union_specs, eps_sweep,
            n_examples, batch_size, device, seed, results_dir, as_json, progress, resume, shards, precision,
            channels_last, compile_, num_classes, output, allow_class_subset, skip_stages, randomized, draws, curve,
            union_only, quiet) -> None:
    """Evaluate a model: clean accuracy, robust accuracy per threat model, and union robust accuracy.

    Under torchrun (WORLD_SIZE > 1) the work is split over the processes (see README, "Scaling").
    """
    from .acceleration import SearchOptions
    from .data import check_n_examples
    from .devutils import check_batch_size, resolve_device
    from .distributed import init_from_env
    from .models import parse_normalization
    from .record_io import ensure_writable
    from .registry import DATASETS, MODELS
    from .model_sources import dataset_hint
    from .runner import evaluate
    from .suites import default_suite, plan_benchmark

    set_quiet(quiet)
    # Everything that can be checked cheaply is checked before any model, data or file is touched.
    if n_examples is not None:
        check_n_examples(n_examples, sys.maxsize, "the dataset")
    check_batch_size(batch_size)
    factors = _parse_factors(eps_sweep) if eps_sweep else ()
    search = SearchOptions(precision, channels_last, compile_)
    if shards and (dataset_spec or n_examples is not None or factors):
        raise RbxError("--shards replaces --dataset and --n-examples, and streams have no --eps-sweep")
    if draws is not None and draws < 1:
        raise RbxError(f"--draws must be a positive integer (fresh passes per re-check), got {draws}")
    if shards and (randomized is not None or draws is not None or curve):
        raise RbxError("--randomized, --draws and --curve are not available with --shards; evaluate a --dataset instead")
    if union_only and (shards or factors):
        raise RbxError("--union-only does not go with --shards or --eps-sweep (both measure every threat model on every point)")
    resolve_device(device)
    if normalize:
        parse_normalization(normalize)
    MODELS.get(model_spec)
    if num_classes is not None and num_classes < 2:
        raise RbxError(f"--num-classes must be an integer >= 2, got {num_classes}")
    corruption_suite = _corruption_suite(suite_spec)
    if corruption_suite is not None:  # common corruptions instead of threat models: robustbench_ext.corruptions
        unused = [flag for flag, given in (("--threat", threat_specs), ("--attack", attack_specs), ("--union-attack", union_specs),
                                           ("--eps-sweep", factors), ("--shards", shards), ("--precision", precision != "fp32"),
                                           ("--channels-last", channels_last), ("--compile", compile_), ("--resume", resume),
                                           ("--union-only", union_only)) if given]
        if unused:
            raise RbxError(f"{', '.join(unused)} do not apply to the corruption suite '{corruption_suite.name}' (no attacks run)")
        _run_corruptions(corruption_suite, model_spec, arch, normalize, dataset_spec, n_examples, batch_size, device, seed,
                         results_dir, as_json, _show_bar(progress, quiet))
        return
    dataset_name = dataset_spec or dataset_hint(model_spec)  # a zoo model runs on its own dataset
    if suite_spec is None and not threat_specs:
        suite_spec = default_suite(dataset_name)  # and its dataset's suite: the rule evaluate() follows
    bench = plan_benchmark(suite_spec, threat_specs, attack_specs, union_specs)  # the same plan evaluate() makes
    dataset_name = dataset_name or bench.dataset
    DATASETS.get(dataset_name)
    if shards:
        from .streaming import list_shards

        list_shards(shards)
    results_dir = ensure_writable(results_dir)

    dist, device = init_from_env(device)
    show = _show_bar(progress, quiet) and dist.is_main
    if shards:
        from .models import load_model
        from .streaming import stream_evaluate

        out = stream_evaluate(load_model(model_spec, arch=arch, normalize=normalize, num_classes=num_classes), shards, bench.threats,
                              union_attacks=bench.union, suite=bench.suite, seed=seed, batch_size=batch_size,
                              device=device, results_dir=results_dir, progress=show, search=search, dist=dist)
        if out is None:  # not rank 0: rank 0 merges and reports
            return
        ev, path = out
    else:
        from .models import load_model

        ev = evaluate(load_model(model_spec, arch=arch, normalize=normalize, num_classes=num_classes), dataset_name,
                      threat_specs, suite=suite_spec, attacks=attack_specs, union_attacks=union_specs, n_examples=n_examples,
                      seed=seed, batch_size=batch_size, device=device, progress=show, state_dir=results_dir / STATE_DIR,
                      resume=resume, eps_sweep=factors, search=search, dist=dist, output=output,
                      allow_class_subset=allow_class_subset, skip_stages=skip_stages, randomized=randomized,
                      **({"draws": draws} if draws is not None else {}), curve=curve, union_only=union_only)
        if not dist.is_main:
            return
        path = ev.write(results_dir)
    if as_json:
        click.echo(json.dumps(json.loads(path.read_text()), indent=2))
    else:
        click.echo(format_table(ev.record))
        click.echo(f"record: {path}")


def _corruption_suite(suite_spec: str | None):
    """The suite ``suite_spec`` names if it is a corruption suite (``kind = "corruptions"``), else None."""
    if not suite_spec:
        return None
    from .suites import load_suite

    suite = load_suite(suite_spec)
    return suite if suite.kind == "corruptions" else None


def _run_corruptions(suite, model_spec, arch, normalize, dataset_spec, n_examples, batch_size, device, seed, results_dir,
                     as_json, show) -> None:
    """``rbx run --suite <corruption suite>``: accuracy per corruption and severity (robustbench_ext.corruptions).

    ``--dataset`` may name another corruption set, or plain images to generate the suite's corruptions from.
    """
    from .corruptions import corruption_set, evaluate_corruptions, is_corruption_dataset
    from .models import load_model
    from .record_io import ensure_writable
    from .registry import DATASETS

    DATASETS.get(suite.dataset)
    if dataset_spec:
        DATASETS.get(dataset_spec)
    results_dir = ensure_writable(results_dir)
    if dataset_spec and not is_corruption_dataset(dataset_spec):
        data_c = corruption_set(suite.dataset, n_examples, seed=seed, base=dataset_spec)
    else:
        data_c = corruption_set(dataset_spec or suite.dataset, n_examples, seed=seed)
    ev = evaluate_corruptions(load_model(model_spec, arch=arch, normalize=normalize), data_c,
                              corruptions=suite.corruptions or None, severities=suite.severities or None, suite=suite.name,
                              seed=seed, batch_size=batch_size, device=device, progress=show)
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


# ---- rbx train / check (cli_model) and leaderboard / report / export / shards / regress (cli_results) ----
for _cmd in (train_cmd, check_cmd, leaderboard_cmd, report_cmd, export_cmd, shards_cmd, regress_cmd):
    cli.add_command(_cmd)


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
