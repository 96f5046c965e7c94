"""Search P-TAME's loss weights with Ax/BoTorch: ``python -m pipeline.search --backbone vgg16 --trials 20``.

Each trial trains a head for one epoch and is scored by ROAD MoRF (minimise) and LeRF (maximise) on the
validation split; everything is logged to MLflow. Then the chosen Pareto point trains the final head,
which is evaluated on the test split, registered and exported as ``best.yaml``. Rerunning the same
command (same ``--name``) resumes the search. ``--parallel N`` runs up to N trials at once on Ray
workers (`pipeline.hpo.trials.ray_pool`); this process alone talks to Ax.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import cli
from pipeline import config as configs
from pipeline.data.imagenet_root import find_imagenet
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.outputs.folder import DEFAULT_ROOT, check_search_name, search_name
from pipeline.hpo.trials.trial_configs import check_space_fits
from pipeline.resources import DEFAULT_SEARCH_SPACE, EXPERIMENTS, PACKAGE, experiment_file, search_space_file
from pipeline.tracking.stores import check_tracking_server


def base_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment dict shared by every trial: --experiment, then --backbone/--aux/--data, then --set.

    Without --experiment, a backbone with a paper setup (``experiments/<backbone>.yaml``) starts from it when
    ImageNet is found; with no data at all, the search runs on the offline demo photos and says so."""
    values = configs.read_yaml(experiment_file(args.experiment)) if args.experiment else {}
    shortcuts = []
    paper = EXPERIMENTS / f"{args.backbone}.yaml"
    imagenet = find_imagenet(args.data) if args.data != "demo" else None
    if args.experiment is None and args.backbone and paper.is_file() and imagenet is not None:
        values = configs.read_yaml(paper)
        shortcuts.append(f"data.root={imagenet}")
        print(f"using the paper's setup for {args.backbone} ({paper.relative_to(PACKAGE)}) on ImageNet at {imagenet}")
    elif args.data and args.data != "demo":
        root = Path(args.data).expanduser()
        shortcuts += [f"data.dataset={'imagenet' if imagenet else 'folder'}", f"data.root={root}"]
    elif args.data == "demo":
        shortcuts.append("data.dataset=demo")
    elif args.experiment is None:
        print(
            "no --data and no ImageNet found ($IMAGENET_ROOT, data/ImageNet): running on the offline demo photos "
            "(9 bundled photos, a smoke test, not a real search); point it at your images with --data "
            "/path/to/imagenet or --data /path/to/image_folder"
        )
    if args.backbone:
        shortcuts.append(f"model.backbone={args.backbone}")
    if args.aux:
        shortcuts.append(f"model.auxiliary={args.aux}")
    if args.early_stop:
        shortcuts.append("checkpoints.early_stop=true")
    merged = configs.apply_overrides(values, shortcuts + list(args.overrides))
    if "name" not in merged:
        merged["name"] = "search"
    configs.from_dict(merged)  # fail fast on a bad config
    return merged


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help="classifier to explain (vgg16, resnet50, vit_b_16, timm:<name>, ...)")
    parser.add_argument("--aux", help="auxiliary feature network (default resnet18; 'backbone' for T-TAME mode)")
    parser.add_argument("--data", help="'demo' or a folder (ImageNet layout or an ImageFolder)")
    parser.add_argument("--trials", type=int, default=20, help="completed trials to reach (default 20)")
    cli.add_config_arguments(parser)
    parser.add_argument(
        "--space",
        type=Path,
        default=DEFAULT_SEARCH_SPACE,
        help="search space YAML, or a packaged one: ptame (default), reference",
    )
    parser.add_argument(
        "--name", help="search name, a folder under --out (default: derived from the setup; same name = resume)"
    )
    parser.add_argument("--seed", type=int, help="search seed (default: the space's seed)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_ROOT, help=f"folder for all searches (default {DEFAULT_ROOT})"
    )
    parser.add_argument(
        "--early-stop",
        action="store_true",
        help="stop a trial at a checkpoint where enough completed trials beat it on every objective "
        "by more than the noise (the config key checkpoints.early_stop)",
    )
    parser.add_argument("--select", type=int, metavar="TRIAL", help="train the final head with this trial")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parallel = parser.add_argument_group("parallel trials (Ray)")
    parallel.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="run up to N trials at once on Ray workers (default 1: one at a time, no Ray)",
    )
    parallel.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: start Ray on this machine)",
    )
    parallel.add_argument(
        "--gpus-per-trial",
        type=float,
        metavar="G",
        help="GPU share of a trial, at most 1 (a trial trains on one GPU): 0.5 packs two trials "
        "on a GPU; 0: CPU cores only (default: 1 when the cluster has GPUs, else CPU cores)",
    )
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: give the number of trials to run at once, at least 1")
    gpus = args.gpus_per_trial
    if gpus is not None and not 0 <= gpus <= 1:
        raise UserError(
            f"--gpus-per-trial {gpus:g}: a trial trains on one GPU; give 1, a fraction (0.5 packs two "
            "trials on a GPU) or 0 (CPU cores only), and use more GPUs with --parallel N (N trials at "
            "once, one GPU each)"
        )
    if gpus is not None and args.parallel == 1 and args.ray_address is None:
        raise UserError(
            f"--gpus-per-trial {gpus:g} sizes Ray workers; add --parallel N (N > 1) or --ray-address, or leave it out"
        )
    if args.name is not None:
        check_search_name(args.name)
    check_tracking_server(args.tracking_uri)
    if args.ray_address is not None:
        from pipeline.hpo.trials.ray_pool import check_reachable

        check_reachable(args.ray_address)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Loaded once the arguments and the tracking server have passed, so those fail within seconds (torch, Ax).
    from pipeline.hpo.driver import Search, SearchOptions

    base = base_experiment(args)
    space_path = search_space_file(args.space)
    space = load_search_space(space_path)
    check_space_fits(base, space)
    name = args.name or search_name(configs.from_dict(base), space)
    options = SearchOptions(
        name=name,
        trials=args.trials,
        base=base,
        space=space,
        space_path=space_path,
        seed=space.seed if args.seed is None else args.seed,
        directory=args.out / name,
        tracking_uri=args.tracking_uri,
        select=args.select,
        progress=not args.no_progress,
        parallel=args.parallel,
        ray_address=args.ray_address,
        gpus_per_trial=args.gpus_per_trial,
    )
    print(f"search {name!r}: {args.trials} trials, state in {options.directory}")
    Search(options).run()
    return 0


if __name__ == "__main__":
    cli.run(main)
