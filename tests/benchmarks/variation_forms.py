"""Does λ3 act? Demo heads for three λ settings under both variation forms, side by side in one run.

For each loss form (``paper``: eq. 3, a per-element mean; ``reference``: the authors' sum over maps and pixels
with its border penalty) and each (λ1, λ2, λ3) with λ1:λ2 fixed at 0.09:0.91, train a demo head and report
on the validation views: ROAD MoRF/LeRF (the config's protocol), the mean squared neighbour difference of the
min-max maps at head resolution (lower = smoother), and how far the maps moved from the λ3 = 0 head's
(mean |difference|, in % of the [0, 1] range, over the views whose class both heads were trained on).

    python tests/benchmarks/variation_forms.py [--experiment experiments/demo.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse

import torch

from pipeline import config as configs
from pipeline.evaluation.scoring import EvalSet, evaluate_head, prepare_eval_set
from pipeline.models.coverage import ClassCoverage
from pipeline.models.head import minmax
from pipeline.training.head_training import TrainedHead, Workbench, train_head

WEIGHTS = ((0.09, 0.91, 0.0), (0.045, 0.455, 0.5), (0.009, 0.091, 0.9))
FORMS = ("paper", "reference")


@torch.no_grad()
def head_resolution_maps(trained: TrainedHead, evalset: EvalSet, batch_size: int) -> torch.Tensor:
    """Min-max maps of each view's predicted class at the head's own resolution, [N, h, w]."""
    explainer = trained.explainer
    parts = []
    for block in evalset.blocks(batch_size):
        raw = explainer.head(explainer.auxiliary(block.images), block.targets, per_image=True)
        parts.append(minmax(raw)[:, 0])
    return torch.cat(parts)


def neighbour_difference(maps: torch.Tensor) -> float:
    """Mean squared difference of vertically and horizontally adjacent pixels."""
    down = (maps[:, 1:, :] - maps[:, :-1, :]).pow(2)
    right = (maps[:, :, 1:] - maps[:, :, :-1]).pow(2)
    return float(torch.cat([down.flatten(), right.flatten()]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = configs.load(args.experiment, args.overrides)
    bench = Workbench.load(base)
    evalset = prepare_eval_set(bench.models.classifier, bench.splits.val, base.evaluation.batch_size)
    print(
        f"{len(evalset)} validation views; ROAD: {base.evaluation.percentages} % removed, "
        f"imputer {getattr(base.evaluation, 'imputer', 'noisy_linear')}"
    )
    print(
        f"{'form':<10} {'λ1':>6} {'λ2':>6} {'λ3':>4} {'MoRF':>7} {'LeRF':>7} {'nbr diff':>9} "
        f"{'moved %':>8} {'loss_var':>10} {'seconds':>7}"
    )
    for form in FORMS:
        baseline: tuple[torch.Tensor, torch.Tensor] | None = None
        for lambda1, lambda2, lambda3 in WEIGHTS:
            config = configs.load(
                args.experiment,
                [
                    *args.overrides,
                    f"loss.variation={form}",
                    f"loss.lambda1={lambda1}",
                    f"loss.lambda2={lambda2}",
                    f"loss.lambda3={lambda3}",
                ],
            )
            trained = train_head(config, bench, progress=False)
            evaluation, _ = evaluate_head(trained.explainer, evalset, config.evaluation)
            maps = head_resolution_maps(trained, evalset, config.evaluation.batch_size)
            covered = (
                ClassCoverage.of(trained.explainer.head, config.evaluation.min_class_count)
                .covered(evalset.targets)
                .cpu()
            )
            if baseline is None:
                baseline = (maps, covered)
                moved = "-"
            else:
                both = covered & baseline[1]
                moved = f"{100 * float((maps[both] - baseline[0][both]).abs().mean()):.2f}"
            print(
                f"{form:<10} {lambda1:>6g} {lambda2:>6g} {lambda3:>4g} {evaluation.road.morf_auc:>7.4f} "
                f"{evaluation.road.lerf_auc:>7.4f} {neighbour_difference(maps):>9.5f} {moved:>8} "
                f"{trained.summary.last['loss_variation']:>10.4g} {trained.summary.seconds:>7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
