"""The ``rbx`` commands that work on records, not models: leaderboard, report, export, shards, regress.

They are plain click commands that :mod:`robustbench_ext.cli.app` adds to the ``rbx`` group; like every
command they only parse, call the library, and print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import RbxError
from ..evaluation.suites import DEFAULT_SUITE


@click.command("leaderboard")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--readme", type=click.Path(path_type=Path), default=None,
              help="Also write the board of --readme-suite between the README's leaderboard markers.")
@click.option("--readme-suite", default=DEFAULT_SUITE, show_default=True)
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="A record of the individually trained reference models (their strength curves merged in one "
                   "record, as `rbx report --multirobust --reference` takes): the boards' CR_ind-avg, CR_ind-worst "
                   "and SC (MultiRobustBench) are then against it [default: none; SC n/a].")
@click.option("--seen", "seen", multiple=True, metavar="MODEL=THREAT",
              help="With --reference: a threat model MODEL (its name on the boards) was trained on, e.g. "
                   "cifar10-smallcnn-linf-at=Linf:8/255 ('MODEL=clean': clean training only); repeatable. A model "
                   "without one takes what its record says of a model `rbx train` made from scratch, else its SC is n/a.")
def leaderboard_cmd(results_dir: Path, readme: Path | None, readme_suite: str, reference: Path | None,
                    seen: tuple[str, ...]) -> None:
    """Write leaderboard.md, .csv, .html and plots/ in RESULTS_DIR from every record there (one board per suite and
    image set; the default suite's board on its largest image set first)."""
    from ..reporting.boards import MultiRobustReference, embed_in_readme, write_all
    from ..paths import ensure_writable

    if not results_dir.is_dir():
        raise RbxError(f"no results directory {results_dir}: run `rbx run` first or pass --results-dir")
    if seen and reference is None:
        raise RbxError("--seen needs --reference (the stability constant compares with reference models)")
    mrb = MultiRobustReference.read(reference, seen) if reference is not None else None
    ensure_writable(results_dir)
    paths = write_all(results_dir, main_suite=DEFAULT_SUITE, multirobust=mrb)
    for p in paths[:3]:
        click.echo(f"leaderboard: {p}")
    click.echo(f"plots: {len(paths) - 3} in {results_dir / 'plots'}")
    if readme is not None:
        embed_in_readme(readme, results_dir, readme_suite, multirobust=mrb)
        click.echo(f"readme: {readme}")


@click.command("report")
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the report and its plots [default: <record folder>/../reports/<run>].")
@click.option("--multirobust", is_flag=True, default=False,
              help="Also MultiRobustBench's metrics (robust accuracy vs strength, CR_ind-avg, CR_ind-worst, stability "
                   "constant) "
                   "and a strength-curve plot.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="With --multirobust: a record of the individually trained reference models (default: none, a "
                   "perfect reference).")
@click.option("--seen", "seen", multiple=True, metavar="THREAT",
              help="With --reference: a threat model the model was trained on (e.g. Linf:8/255; 'clean' for clean "
                   "training only), for the stability constant's seen points; repeatable [default: what the record "
                   "says of a model `rbx train` made from scratch, else SC is n/a].")
def report_cmd(record: Path, out: Path | None, multirobust: bool, reference: Path | None, seen: tuple[str, ...]) -> None:
    """One run's report: prints its table; writes it with its plots (per-class accuracy, attribution, loss curves,
    eps sweep) as Markdown into the report's own folder."""
    from ..reporting.tables import write_report

    if not record.is_file():
        raise RbxError(f"no such record: {record}")
    if reference is not None and not (multirobust and reference.is_file()):
        raise RbxError(f"--reference needs --multirobust and an existing record, got {reference}")
    if seen and reference is None:
        raise RbxError("--seen needs --multirobust --reference (the stability constant compares with reference models)")
    from ..records.multirobust import parse_seen

    trained = parse_seen(seen) if seen else None
    table, path = write_report(record, out)
    click.echo(table)
    click.echo(f"report: {path}")
    if multirobust:
        from ..records.multirobust import metrics_table
        from ..records.store import read_record
        from ..reporting.plots import strength_curves

        rec = read_record(record)
        try:
            text = metrics_table([rec], read_record(reference) if reference is not None else None, trained)
        except ValueError as exc:
            raise RbxError(f"MultiRobustBench metrics: {exc}") from None
        click.echo(text)
        png = strength_curves([rec])
        folder = Path(path).parent
        (folder / "multirobust.md").write_text(text + ("\n![strength curves](strength_curves.png)\n" if png else ""))
        if png:
            (folder / "strength_curves.png").write_bytes(png)
        click.echo(f"multirobust: {folder / 'multirobust.md'}")


@click.command("export")
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
    from ..records.store import read_record
    from ..reporting.export import export, left_out

    if not record.is_file():
        raise RbxError(f"no such record: {record}")
    meta_d = {}
    if meta is not None:
        try:
            meta_d = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RbxError(f"cannot read --meta {meta}: {exc}") from None
    aa = read_record(autoattack_record) if autoattack_record else None
    rec = read_record(record)
    for p in export(rec, out, model_id, meta_d, aa):
        click.echo(f"exported: {p}")
    dropped = left_out(rec, meta_d)
    if dropped:
        click.echo(f"rbx: note: not in the export (RobustBench has no place for them): {'; '.join(dropped)}", err=True)


@click.command("shards")
@click.option("--dataset", "dataset_spec", default="cifar10", show_default=True, help="Dataset to pack (see `rbx list datasets`).")
@click.option("--n-examples", type=int, default=None, help="Pack the first N images [default: all].")
@click.option("--shard-size", type=int, default=10000, show_default=True, help="Images per shard.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the shards.")
def shards_cmd(dataset_spec: str, n_examples: int | None, shard_size: int, out: Path) -> None:
    """Pack a dataset into .npz shards (uint8 images, labels, global index) for `rbx run --shards`."""
    from ..data.datasets import check_n_examples
    from ..errors import DataError
    from ..registry import DATASETS
    from ..data.shards import pack_shards

    if n_examples is not None:
        check_n_examples(n_examples, sys.maxsize, "the dataset")
    if shard_size < 1:
        raise DataError(f"--shard-size must be a positive integer, got {shard_size}")
    DATASETS.get(dataset_spec)
    if out.exists() and any(out.glob("*.npz")):
        raise RbxError(f"{out} already holds .npz files; give an empty or new folder")
    paths = pack_shards(DATASETS.create(dataset_spec, n_examples=n_examples), out, shard_size)
    click.echo(f"wrote {len(paths)} shards to {out}")


@click.command("regress")
@click.option("--baseline", type=click.Path(path_type=Path), required=True, help="Baseline record (or results directory).")
@click.option("--candidate", type=click.Path(path_type=Path), required=True, help="Candidate record (or results directory).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Family-wise significance level of the gate.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--only", "only", multiple=True, metavar="THREAT|union",
              help="Gate only these comparisons (repeatable), e.g. --only union for a union-only run; a threat model "
                   "a union-only run did not measure is refused.")
@click.option("--allow-different-attacks", is_flag=True,
              help="Compare runs made with different attacks or seeds anyway (the report warns; the verdict then "
                   "says little about the model).")
def regress_cmd(baseline: Path, candidate: Path, alpha: float, as_json: bool, only: tuple[str, ...],
                allow_different_attacks: bool) -> None:
    """Regression gate: exit 1 if robust accuracy (any threat model or the union) changed significantly, 0 if not,
    2 if the runs cannot be compared."""
    import dataclasses as dc

    from ..reporting.regress import compare, resolve_pairs

    results = [compare(b, c, alpha, allow_different_attacks, only) for b, c in resolve_pairs(baseline, candidate)]
    if as_json:
        click.echo(json.dumps([{**dc.asdict(r), "failed": r.failed} for r in results], indent=2))
    else:
        click.echo("\n\n".join(r.report() for r in results))
    if any(r.failed for r in results):
        sys.exit(1)
