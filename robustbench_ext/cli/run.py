"""``rbx run``: parse the options into one run request, run it, print the table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..evaluation.suites import DEFAULT_SUITE
from ..reporting.tables import format_table
from .common import DEFAULT_MODEL, LazyHelpOption, minimum_norm_names, parse_arch_kwargs, quiet_option, set_quiet


# ---- rbx run ---------------------------------------------------------------------------------------
@click.command("run")
@click.option("--model", "model_spec", default=None,
              help=f"Registered model or a source: file:PATH, torchscript:PATH, pickle:PATH, hf:ORG/NAME, torchvision:NAME, "
                   f"timm:NAME, robustbench:ID, trained:DIR (see `rbx list models`) [default: {DEFAULT_MODEL}; where its "
                   "file is absent, the embedded small CNN on the embedded CIFAR-10 slice].")
@click.option("--arch", default=None,
              help="Architecture of a state-dict model (file:, hf:): a registered name (`rbx list architectures`), "
                   "torchvision:NAME, timm:NAME, pkg.module:Class or path/to/file.py:Class.")
@click.option("--arch-kwargs", default=None, metavar="K=V,...",
              help="Keyword arguments for --arch, e.g. depth=28,width=10 (values are TOML literals).")
@click.option("--trust-pickle", is_flag=True,
              help="Let pickle:PATH unpickle a whole model. Unpickling runs code named by the file: only for files you trust.")
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
              help="Continue a killed run from its saved evaluation state (--resume: require one; --no-resume: start over) "
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
@click.option("--curve", is_flag=True, cls=LazyHelpOption, help_fields={"attacks": minimum_norm_names},
              help="With a minimum-norm attack ({attacks}): robust accuracy vs eps from one run, in the record, "
                   "checked against the fixed-eps cascade at each threat model's eps.")
@click.option("--label-only", is_flag=True, default=False,
              help="The model is label-only: its outputs are read as predicted labels only, never as scores, and no "
                   "gradient is taken; only decision-based attacks run (e.g. --suite cifar10-labelonly). A labels:MODEL "
                   "model is label-only without it.")
@click.option("--union-only", is_flag=True, default=None,
              help="Only union robust accuracy counts (a CI gate): threat models run in the suite's measured "
                   "union_order and each attacks only points robust under all before it. Same union flags as a full "
                   "run; per-norm accuracy only for the first threat model (the others are 'n/m', not measured).")
@click.option("--allow-meaningless-eps", "allow_meaningless", is_flag=True,
              help="Run a threat model whose ball covers the whole [0, 1] box (e.g. Linf:8, eps without /255) instead of "
                   "refusing it; its table row and record are marked meaningless and leaderboards leave it out.")
@click.option("--audit", type=int, default=None, metavar="K",
              help="After the cascade, AutoAttack standard on K random points left robust per threat model; what it breaks "
                   "counts as broken; the record gets a 95%% upper bound on the cascade's miss rate "
                   "[default: 20 for runs of at least 1,000 images, else 0].")
@click.option("--escalate/--no-escalate", default=True, show_default=True,
              help="When the pre-checks find masking signs (zero gradients, randomness, batch dependence, ...), add a "
                   "black-box stage, EOT or one-image-at-a-time evaluation by itself (the record says what and why).")
@quiet_option
def run_cmd(model_spec, arch, arch_kwargs, trust_pickle, normalize, dataset_spec, suite_spec, threat_specs, attack_specs, union_specs, eps_sweep,
            n_examples, batch_size, device, seed, results_dir, as_json, progress, resume, shards, precision,
            channels_last, compile_, num_classes, output, allow_class_subset, skip_stages, randomized, draws, curve,
            label_only, union_only, allow_meaningless, audit, escalate, quiet) -> None:
    """Evaluate a model: clean accuracy, robust accuracy per threat model, and union robust accuracy.

    Under torchrun (WORLD_SIZE > 1) the work is split over the processes (see the docs, "Scaling").
    """
    from ..attack.search import SearchOptions
    from ..evaluation.api import run
    from ..evaluation.distributed import init_from_env
    from ..evaluation.request import RunRequest, default_model, parse_factors
    from ..paths import ensure_writable

    set_quiet(quiet)
    if model_spec is None:
        model_spec, dataset_spec, note = default_model(dataset_spec, streamed=shards is not None)
        if note:
            click.echo(f"rbx: {note}", err=True)
    # One request: every option checked in its constructor, before any model, data or file is touched.
    request = RunRequest(
        model=model_spec, data=dataset_spec, threats=threat_specs, suite=suite_spec, attacks=attack_specs,
        union_attacks=union_specs, arch=arch, arch_kwargs=parse_arch_kwargs(arch_kwargs), trust_pickle=trust_pickle,
        normalize=normalize, num_classes=num_classes, output=output,
        allow_class_subset=allow_class_subset, n_examples=n_examples, shards=shards, seed=seed, batch_size=batch_size,
        device=device, search=SearchOptions(precision, channels_last, compile_),
        eps_sweep=parse_factors(eps_sweep) if eps_sweep else (), union_only=union_only, randomized=randomized,
        **({"draws": draws} if draws is not None else {}), curve=curve, label_only=label_only, skip_stages=skip_stages,
        allow_meaningless=allow_meaningless, results_dir=results_dir, resume=resume, progress=False if quiet else progress,
        audit=audit, escalate=escalate)
    request.planned  # plan once (suite, threat models, every attack built): errors before anything is loaded
    if request.kind == "stream":
        from ..data.shards import list_shards

        list_shards(shards)
    ensure_writable(results_dir)
    dist, dev = init_from_env(device)
    request = request.with_(dist=dist, device=dev)
    ev = run(request)
    if ev is None or not dist.is_main:  # not rank 0: rank 0 merges and reports
        return
    path = ev.path or ev.write(results_dir)  # (a stream has written its merged record already)
    if as_json:
        click.echo(json.dumps(json.loads(path.read_text()), indent=2))
    else:
        click.echo(format_table(ev.record))
        click.echo(f"record: {path}")
