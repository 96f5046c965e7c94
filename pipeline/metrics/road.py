"""ROAD (RemOve And Debias, Rong et al. 2022) without retraining: MoRF and LeRF accuracy curves.

Pixels are removed in saliency order, imputed (noisy linear imputation as in the ROAD paper, or
OpenCV's Telea inpainting as in the P-TAME paper's Table 1), and the classifier's accuracy against
its own clean prediction is measured per removed percentage. The AUC is the
trapezoid over [0, p1, ..., pk, 1] with the endpoints 1 (nothing removed) and 0 (all removed).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from pipeline import config as configs
from pipeline.config import EvalConfig
from pipeline.metrics.imputation import noisy_linear_impute
from pipeline.metrics.inpainting import telea_impute

# (images [B, C, H, W], removed [B, H, W] bool) -> imputed images
Imputer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
IMPUTERS = typing.get_args(configs.Imputer)

ORDERS = ("morf", "lerf")
DEFAULT_PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)
# Images whose masks and imputations are built together (all percentages and both orders): few on
# the CPU, where the imputer's chunks stay in cache; many on an accelerator, where every op of the
# imputer costs a launch whatever its size, so larger chunks mean fewer launches per image.
_IMAGES_PER_CHUNK = 8
_ACCELERATOR_IMAGES_PER_CHUNK = 64


def _ranking(maps: torch.Tensor, order: str) -> torch.Tensor:
    """[B, H*W] flat pixel indices of each map in removal order: "morf" most relevant first, "lerf" least relevant
    first; ties go to the lower flat index (stable sort), so masks are deterministic."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return torch.sort(maps.flatten(1), dim=1, descending=order == "morf", stable=True).indices


def _first_removed(ranking: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool [B, H*W], True at the first round(fraction * H * W) pixels of each ``ranking``."""
    removed = torch.zeros(ranking.shape, dtype=torch.bool, device=ranking.device)
    return removed.scatter_(1, ranking[:, : round(fraction * ranking.shape[1])], True)


def removal_masks(maps: torch.Tensor, fraction: float, order: str) -> torch.Tensor:
    """Bool [B, H, W], True at the round(fraction * H * W) removed pixels of each map [B, H, W].

    "morf" removes the most relevant pixels first, "lerf" the least relevant; ties go to the
    lower flat index (stable sort), so masks are deterministic.
    """
    return _first_removed(_ranking(maps, order), fraction).view_as(maps)


def road_masks(maps: torch.Tensor, percentages: Sequence[int]) -> torch.Tensor:
    """Bool [orders, percentages, B, H, W]: ``removal_masks`` of ``maps`` for every order and percentage (one sort
    per order)."""
    rankings = [_ranking(maps, order) for order in ORDERS]
    return torch.stack(
        [torch.stack([_first_removed(ranking, p / 100) for p in percentages]) for ranking in rankings]
    ).view(len(ORDERS), len(percentages), *maps.shape)


def road_auc(percentages: Sequence[int], scores: Sequence[float]) -> float:
    """Trapezoid AUC over x = [0, p1/100, ..., pk/100, 1] and y = [1, s1, ..., sk, 0]."""
    xs = [0.0, *(p / 100 for p in percentages), 1.0]
    ys = [1.0, *scores, 0.0]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


@dataclass(frozen=True)
class RoadProtocol:
    """What a ROAD score is measured with: the removed percentages (both orders, MoRF and LeRF, at each) and the
    imputer, with its noise when it is "noisy_linear". One object, passed whole and named in every output
    (``describe``)."""

    percentages: tuple[int, ...] = DEFAULT_PERCENTAGES
    imputer: str | Imputer = "noisy_linear"
    noise: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "percentages", tuple(int(p) for p in self.percentages))

    @classmethod
    def of(cls, eval_config: EvalConfig) -> RoadProtocol:
        """The protocol an experiment config's ``evaluation`` section scores with."""
        return cls(tuple(eval_config.percentages), eval_config.imputer, eval_config.noise)

    def describe(self) -> str:
        """E.g. "telea imputation, 10/30/50/70 % removed"."""
        imputer = self.imputer
        name = imputer if isinstance(imputer, str) else getattr(imputer, "__name__", type(imputer).__name__)
        if name == "noisy_linear":
            name += f" (noise {self.noise:g})"
        return f"{name} imputation, {'/'.join(map(str, self.percentages))} % removed"

    def imputer_drawing_from(self, generator: torch.Generator | None) -> Imputer:
        """The imputer as a callable; "noisy_linear" draws its noise from ``generator``."""
        if callable(self.imputer):
            return self.imputer
        if self.imputer == "noisy_linear":
            return partial(noisy_linear_impute, noise=self.noise, generator=generator)
        if self.imputer == "telea":
            return telea_impute
        raise ValueError(f"imputer must be one of {', '.join(IMPUTERS)} or a callable, got {self.imputer!r}")


def road_protocol_of(eval_config: EvalConfig) -> str:
    """The ROAD protocol an experiment config's ``evaluation`` section scores with, in words."""
    return RoadProtocol.of(eval_config).describe()


def images_per_chunk(device: torch.device) -> int:
    """Images whose masks and imputations ``road_correct`` builds together on ``device``."""
    return _IMAGES_PER_CHUNK if device.type == "cpu" else _ACCELERATOR_IMAGES_PER_CHUNK


@dataclass
class RoadResult:
    """Accuracy per removed percentage for both orders, their AUCs, and the protocol (`RoadProtocol.describe`)."""

    percentages: list[int]
    morf: list[float]
    lerf: list[float]
    morf_auc: float
    lerf_auc: float
    protocol: str

    def metrics(self) -> dict[str, float]:
        """Flat metric names: road_morf_auc, road_lerf_auc, road_morf_10, road_lerf_10, ..."""
        flat = {"road_morf_auc": self.morf_auc, "road_lerf_auc": self.lerf_auc}
        for percentage, morf, lerf in zip(self.percentages, self.morf, self.lerf):
            flat[f"road_morf_{percentage}"] = morf
            flat[f"road_lerf_{percentage}"] = lerf
        return flat


def road_correct(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    protocol: RoadProtocol = RoadProtocol(),
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Bool [orders, percentages, B] on the CPU: whether ``classify`` (pixel-space images -> logits) still predicts
    ``targets`` [B] on ``images`` [B, C, H, W] with the pixels ranked by ``maps`` [B, H, W] removed and imputed.

    ``generator`` feeds the noise of a "noisy_linear" ``protocol``. The noise is drawn chunk by chunk, in the
    images' order, so a split scored in blocks of whole chunks with one generator draws what the whole split scored
    at once draws. ``progress``, if given, is called with the number of images finished after every chunk.
    """
    percentages = protocol.percentages
    impute = protocol.imputer_drawing_from(generator)
    per_chunk = images_per_chunk(images.device)
    variants = len(ORDERS) * len(percentages)
    parts = [torch.zeros(len(ORDERS), len(percentages), 0, dtype=torch.bool)]
    with torch.inference_mode():
        for start in range(0, images.shape[0], per_chunk):
            chunk = slice(start, start + per_chunk)
            chunk_images, chunk_maps, chunk_targets = images[chunk], maps[chunk], targets[chunk]
            masks = road_masks(chunk_maps, percentages)
            repeated = chunk_images.expand(variants, *chunk_images.shape).flatten(0, 1)
            imputed = impute(repeated, masks.flatten(0, 2))
            predictions = torch.cat([classify(part).argmax(dim=1) for part in imputed.split(batch_size)])
            parts.append((predictions.view(*masks.shape[:3]) == chunk_targets.to(predictions.device)).cpu())
            if progress is not None:
                progress(min(start + per_chunk, images.shape[0]))
    return torch.cat(parts, dim=2)


def road_result(protocol: RoadProtocol, correct: torch.Tensor) -> RoadResult:
    """Accuracy per order and percentage of ``correct`` [orders, percentages, N] (``road_correct`` of a whole
    split, in any batches), and the AUCs."""
    percentages = list(protocol.percentages)
    morf, lerf = (correct.sum(dim=2).double() / correct.shape[2]).tolist()
    return RoadResult(
        percentages, morf, lerf, road_auc(percentages, morf), road_auc(percentages, lerf), protocol.describe()
    )


def road(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    protocol: RoadProtocol = RoadProtocol(),
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> RoadResult:
    """MoRF/LeRF accuracy of ``classify`` on ``images`` imputed where ``maps`` rank them (``road_correct``).

    ``maps`` [N, H, W] are saliency maps at image resolution, ``targets`` [N] the classifier's
    predictions on the clean images.
    """
    correct = road_correct(classify, images, maps, targets, protocol, batch_size, generator, progress)
    return road_result(protocol, correct)
