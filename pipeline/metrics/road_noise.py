"""How much a ROAD AUC would move with other images: its standard error over the scored images.

The AUC is a weighted sum of the per-percentage accuracies (the trapezoid's weights), each a mean of hits over
``n`` images with standard error ``sqrt(a·(1 − a) / n)``. The hits of one image at different percentages are
positively correlated (an image still recognised at 50 % removed mostly is at 30 %), so the AUC's standard error is
at most the weighted sum of the per-percentage errors, the value for perfectly correlated hits. That bound is what
`auc_standard_error` returns: it needs only the accuracies a `RoadResult` keeps, no per-image record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.metrics.road import road_auc


def trapezoid_weights(percentages: Sequence[int]) -> list[float]:
    """The weight of each percentage's accuracy in `road_auc` (the endpoints' constant part left out)."""
    return [
        road_auc(percentages, [1.0 if other == index else 0.0 for other in range(len(percentages))])
        - road_auc(percentages, [0.0] * len(percentages))
        for index in range(len(percentages))
    ]


def auc_standard_error(percentages: Sequence[int], accuracies: Sequence[float], images: int) -> float:
    """An upper bound of the standard error of `road_auc` (``percentages``, ``accuracies``) over ``images`` images."""
    return sum(
        weight * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / images)
        for weight, accuracy in zip(trapezoid_weights(percentages), accuracies)
    )
