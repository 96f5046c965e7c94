"""Peak memory of an evaluation against the size of the split (RSS on the CPU): blockwise, and held in memory.

    python tests/benchmarks/eval_memory.py [--counts 500 5000] [--in-memory 500 5000] [--percentages 50]
                                           [--maps center|random] [--imputer noisy_linear|telea]

Writes an ImageNet-shaped folder (500x375 JPEGs in 16 class folders), then evaluates the first N images of it
in a fresh process per row: the split classified once (`prepare_eval_set`), then ROAD and AD/IC of reference maps
(`evaluate_maps`), with a tiny CNN at 224 px (the images are ImageNet-sized after the evaluation transform; the
CNN is one strided conv, so the time goes to reading the images and imputing, as memory does).
Each process reports its RSS before the evaluation and its peak RSS (``ru_maxrss``). ``--in-memory`` rows hold
the whole split and its maps in memory and score them in one call, as evaluation did before it went blockwise.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from pipeline.config import EvalConfig
from pipeline.data.sources import plain_images
from pipeline.evaluation.scoring import evaluate_maps, prepare_eval_set, reference_maker, reference_maps
from pipeline.metrics.adic import ad_ic
from pipeline.metrics.road import RoadProtocol, road
from pipeline.models.classifiers import Classifier, Preprocessing
from tests.benchmarks.gpu_trial import synthetic_photo

CLASSES = 16
DISTINCT = 64  # distinct photos; the folder repeats their bytes under other names
SIZE = 224


def write_folder(root: Path, count: int) -> Path:
    """``root/n<class>/val_<i>.JPEG``: ``count`` ImageNet-sized JPEGs in class folders."""
    contents = []
    for seed in range(DISTINCT):
        path = root / f"photo_{seed}.JPEG"
        synthetic_photo(seed).save(path, "JPEG", quality=90)
        contents.append(path.read_bytes())
        path.unlink()
    for index in range(count):
        folder = root / f"n{index % CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"val_{index:06d}.JPEG").write_bytes(contents[index % DISTINCT])
    return root


def rss_mib() -> float:
    """This process's resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def evaluate(folder: Path, count: int, in_memory: bool, options: argparse.Namespace) -> dict:
    """One evaluation of the first ``count`` images of ``folder``, in this process."""
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    classifier = Classifier("tiny", network, Preprocessing(SIZE))
    settings = EvalConfig(percentages=options.percentages, imputer=options.imputer)
    dataset = plain_images([folder], SIZE)
    before = rss_mib()
    started = time.perf_counter()
    evalset = prepare_eval_set(classifier, dataset, settings.batch_size, limit=count)
    if in_memory:
        images = evalset.first_images(count)
        maps = reference_maps(options.maps, count, evalset.size, settings.seed)
        metrics = road(
            classifier,
            images,
            maps,
            evalset.targets,
            RoadProtocol.of(settings),
            settings.batch_size,
            torch.Generator().manual_seed(settings.seed),
        ).metrics()
        metrics |= ad_ic(
            classifier, images, maps, evalset.targets, evalset.probabilities, batch_size=settings.batch_size
        ).metrics()
    else:
        metrics = evaluate_maps(classifier, evalset, reference_maker(options.maps, settings.seed), settings)[
            0
        ].metrics()
    return {
        "images": len(evalset),
        "size": list(evalset.size),
        "before_mib": before,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - started,
        "morf": metrics["road_morf_auc"],
        "ad_100": metrics["ad_100"],
    }


def row(folder: Path, count: int, in_memory: bool, options: argparse.Namespace) -> dict:
    """``evaluate`` in a fresh process, so its peak RSS is this evaluation's alone."""
    command = [
        sys.executable,
        __file__,
        "--child",
        str(folder),
        "--counts",
        str(count),
        "--maps",
        options.maps,
        "--imputer",
        options.imputer,
        "--percentages",
        *map(str, options.percentages),
        *(["--in-memory", str(count)] if in_memory else []),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000], help="images per evaluation")
    parser.add_argument("--in-memory", type=int, nargs="*", default=[], help="counts to also score held in memory")
    parser.add_argument("--percentages", type=int, nargs="+", default=[50], help="ROAD percentages removed")
    parser.add_argument("--maps", choices=["center", "random"], default="center", help="reference maps scored")
    parser.add_argument("--imputer", choices=["noisy_linear", "telea"], default="noisy_linear")
    parser.add_argument("--folder", type=Path, help="an existing folder written by this script")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(evaluate(args.child, args.counts[0], bool(args.in_memory), args)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or write_folder(Path(scratch), max(args.counts + args.in_memory))
        print(
            f"{max(args.counts + args.in_memory)} JPEGs (500x375) in {CLASSES} class folders; tiny CNN at {SIZE} px, "
            f"{args.maps} maps, ROAD {args.percentages} % removed ({args.imputer}), AD/IC; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(
            f"{'path':<16} {'images':>7} {'RSS before MiB':>15} {'peak RSS MiB':>13} {'peak - before':>14} "
            f"{'seconds':>8} {'MoRF AUC':>9}"
        )
        rows = [("blockwise", count, False) for count in args.counts]
        rows += [("in memory", count, True) for count in args.in_memory]
        for label, count, in_memory in rows:
            result = row(folder, count, in_memory, args)
            print(
                f"{label:<16} {result['images']:>7} "
                f"{result['before_mib']:>15.0f} {result['peak_mib']:>13.0f} "
                f"{result['peak_mib'] - result['before_mib']:>14.0f} {result['seconds']:>8.1f} "
                f"{result['morf']:>9.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
