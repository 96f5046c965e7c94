"""AG, Insertion and Deletion against values computed by hand on a toy classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.metrics.faithfulness import average_gain, causal_curve, faithfulness, trapezoid_auc
from tests.toy_models import SCALE, MeanClassifier, sigmoid


def ramp_image(side: int) -> torch.Tensor:
    """[1, 3, side, side]: pixel j (row-major) has the value j / (side² - 1) in every channel."""
    return (
        (torch.arange(side * side, dtype=torch.float32) / (side * side - 1))
        .view(1, 1, side, side)
        .expand(1, 3, side, side)
        .clone()
    )


def hand_blur(image: np.ndarray) -> np.ndarray:
    """Gaussian blur, kernel 11, sigma 5, reflect padding: separable, written out with numpy."""
    offsets = np.arange(11) - 5
    kernel = np.exp(-(offsets**2) / (2 * 5.0**2))
    kernel /= kernel.sum()
    padded = np.pad(image, 5, mode="reflect")
    rows = np.stack([padded[i : i + 11].T @ kernel for i in range(image.shape[0])])
    return np.stack([rows[:, j : j + 11] @ kernel for j in range(image.shape[1])], axis=1)


def trapezoid(fractions: list[float], scores: list[float]) -> float:
    return sum((fractions[i + 1] - fractions[i]) * (scores[i] + scores[i + 1]) / 2 for i in range(len(scores) - 1))


def test_average_gain_matches_hand_computed_values() -> None:
    images = torch.ones(2, 3, 8, 8)
    maps = (torch.arange(64.0).view(1, 8, 8) / 63).expand(2, -1, -1)
    targets = torch.tensor([1, 0])  # masking halves the mean: class 1 loses, class 0 gains
    classifier = MeanClassifier()
    clean = classifier(images).softmax(dim=1).gather(1, targets[:, None])[:, 0]
    result = faithfulness(classifier, images, maps, targets, clean, step=16)
    gain_class_0 = ((1 - sigmoid(SCALE * 0.5)) - (1 - sigmoid(SCALE))) / (1 - (1 - sigmoid(SCALE)))
    assert result.average_gain == pytest.approx((0 + gain_class_0) / 2 * 100, rel=1e-5)
    assert average_gain(torch.tensor([1.0]), torch.tensor([1.0])) == 0.0  # nothing left to gain


@pytest.mark.parametrize("most_salient", ["bright", "dark"])
def test_deletion_blackens_the_most_salient_pixels_first(most_salient: str) -> None:
    image = ramp_image(4)
    values = torch.arange(16.0).view(1, 4, 4)
    maps = values if most_salient == "bright" else 15 - values
    curve = causal_curve(MeanClassifier(), image, maps, torch.tensor([1]), "deletion", step=4)

    def mean_after(k: int) -> float:  # pixel values j/15; the k brightest (or darkest) are black
        kept = range(16 - k) if most_salient == "bright" else range(k, 16)
        return sum(kept) / 15 / 16

    expected = [sigmoid(SCALE * mean_after(k)) for k in (0, 4, 8, 12, 16)]
    assert curve.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.scores == pytest.approx(expected, rel=1e-5)
    assert curve.auc == pytest.approx(trapezoid(curve.fractions, expected), rel=1e-5)


class EnergyClassifier(nn.Module):
    """Logits [0, SCALE * mean squared pixel value]: unlike the mean, the energy drops when the image is blurred."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        energy = images.pow(2).mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(energy), SCALE * energy], dim=1)


def test_insertion_puts_the_most_salient_pixels_back_into_the_blurred_image() -> None:
    side = 12
    image = ramp_image(side)
    maps = torch.arange(float(side * side)).view(1, side, side)  # the brightest pixels are the most salient
    curve = causal_curve(EnergyClassifier(), image, maps, torch.tensor([1]), "insertion", step=36)

    pixels = image[0, 0].numpy().astype(np.float64)
    blurred = hand_blur(pixels).ravel()
    order = np.argsort(-maps.numpy().ravel(), kind="stable")
    expected = []
    for count in (0, 36, 72, 108, 144):
        inserted = blurred.copy()
        inserted[order[:count]] = pixels.ravel()[order[:count]]
        expected.append(sigmoid(SCALE * (inserted**2).mean()))
    assert curve.scores == pytest.approx(expected, rel=1e-5)
    assert curve.auc == pytest.approx(trapezoid([0, 0.25, 0.5, 0.75, 1], expected), rel=1e-5)
    assert curve.scores[0] != pytest.approx(curve.scores[-1])  # the blur changed the score


def test_a_step_that_does_not_divide_the_image_ends_with_a_short_step() -> None:
    curve = causal_curve(MeanClassifier(), ramp_image(4), torch.rand(1, 4, 4), torch.tensor([0]), "deletion", step=5)
    assert curve.fractions == [0.0, 5 / 16, 10 / 16, 15 / 16, 1.0]
    assert len(curve.scores) == 5 and curve.step == 5
    assert curve.auc == pytest.approx(trapezoid_auc(curve.fractions, curve.scores))
    assert trapezoid_auc([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) == 0.5
    assert math.isclose(curve.scores[-1], 0.5)  # everything black: logits 0, 0


def test_the_default_step_is_eight_rows() -> None:
    curve = causal_curve(MeanClassifier(), ramp_image(16), torch.rand(1, 16, 16), torch.tensor([1]), "insertion")
    assert curve.step == 8 * 16 and len(curve.scores) == 3
