"""The ``rbx`` commands that train or check a model: ``rbx train`` and ``rbx check``.

Plain click commands that :mod:`robustbench_ext.cli.app` adds to the ``rbx`` group; like every command they
only parse, call the library, and print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import DEFAULT_MODEL, STATE_DIR, _show_bar, parse_arch_kwargs, quiet_option, set_quiet
from ..errors import RbxError
from ..reporting.tables import format_table
from ..evaluation.suites import DEFAULT_SUITE


# ---- rbx train -------------------------------------------------------------------------------------
@click.command("train")
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
@click.option("--resume/--no-resume", default=None, help="Continue the run folder's training checkpoint [default: if there is one].")
@click.option("--progress/--no-progress", default=None)
@quiet_option
def train_cmd(defense_spec, arch, init_spec, dataset_spec, n_train, epochs, batch_size, optimizer, lr, schedule,
              weight_decay, momentum, seed, device, amp, out, name, eval_suite, eval_n, eval_dataset, results_dir, resume, progress,
              quiet) -> None:
    """Adversarial training with a registered defense; checkpoints every epoch, then an rbx evaluation record."""
    from ..paths import ensure_writable
    from ..registry import DATASETS
    from ..evaluation.api import evaluate
    from ..evaluation.suites import load_suite
    from ..training.engine import TrainConfig, Trainer, parse_defense

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
        # the evaluation hook keeps to the training batch size (a user who set it for GPU memory sees no larger batch)
        ev = evaluate(trainer.saved_model(), data, suite.threats, union_attacks=suite.union, suite=suite.name, seed=seed,
                      batch_size=batch_size, device=device, progress=_show_bar(progress, quiet),
                      state_dir=results_dir / STATE_DIR)
        path = ev.write(results_dir)
        click.echo(format_table(ev.record))
        click.echo(f"record: {path}")


# ---- rbx check -------------------------------------------------------------------------------------
@click.command("check")
@click.option("--model", "model_spec", default=None,
              help=f"Model spec, as for rbx run [default: {DEFAULT_MODEL}; where its file is absent, the embedded small CNN "
                   "on the embedded CIFAR-10 slice].")
@click.option("--arch", default=None, help="Architecture of a state-dict model, as for rbx run.")
@click.option("--arch-kwargs", default=None, metavar="K=V,...", help="Keyword arguments for --arch.")
@click.option("--trust-pickle", is_flag=True, help="Let pickle:PATH unpickle a whole model (runs the file's code).")
@click.option("--normalize", default=None)
@click.option("--dataset", "dataset_spec", default=None, help="Dataset [default: cifar10, or cifar10-1k with the embedded model].")
@click.option("--n-examples", type=int, default=100, show_default=True)
@click.option("--threat", "threat_spec", default="Linf:8/255", show_default=True, metavar="NORM:EPS")
@click.option("--attack", "attack_specs", multiple=True, metavar="NAME[:K=V,...]",
              help=f"White-box cascade [default: {DEFAULT_SUITE}'s for the norm].")
@click.option("--black-box", "black_box_spec", default=None,
              help="Black-box attack run after the white-box cascade [default: square:queries=1000 for Linf/L2, "
                   "aa-square:budget=0.2 for L1, sparse-rs:queries=1000 for L0].")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Most images any check passes through the model at once (set it for GPU memory).")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--randomized/--no-randomized", default=None,
              help="Report the spread over draws (draw_spread) [default: when the determinism check fails].")
@click.option("--draws", type=int, default=11, show_default=True, metavar="R", help="Fresh passes for draw_spread.")
@quiet_option
def check_cmd(model_spec, arch, arch_kwargs, trust_pickle, normalize, dataset_spec, n_examples, threat_spec, attack_specs,
              black_box_spec, batch_size, device, as_json, randomized, draws, quiet) -> None:
    """Gradient-masking checks: exit 0 when every check passes, 1 when any flags a problem."""
    from ..evaluation.api import check
    from ..evaluation.request import default_model

    set_quiet(quiet)
    if model_spec is None:
        model_spec, dataset_spec, note = default_model(dataset_spec)
        if note:
            click.echo(f"rbx: {note}", err=True)
    report = check(model_spec, dataset_spec or "cifar10", threat_spec, attacks=attack_specs, black_box=black_box_spec,
                   n_examples=n_examples, normalize=normalize, arch=arch, arch_kwargs=parse_arch_kwargs(arch_kwargs),
                   trust_pickle=trust_pickle, device=device, batch_size=batch_size, randomized=randomized, draws=draws)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else str(report))
    if not report.passed:
        sys.exit(1)
