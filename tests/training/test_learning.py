"""The whole training path learns: on a task with known evidence, the mass of a head's map and of a CA-Stream's
last-stage attention lands on the evidence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import CAStreamConfig, LossConfig, TrainConfig
from pipeline.models.auxiliary import FeatureExtractor
from pipeline.models.castream_model import CAStreamModel, StreamLayout
from pipeline.models.classifiers import Classifier
from pipeline.models.explainer import Explainer
from pipeline.models.head import AttentionHead
from pipeline.training.castream_training import StreamSummary, fit_stream
from pipeline.training.loop import train
from tests.toy_models import COLOURS, OBJECT, SIZE, TOY_PREPROCESSING, TinyFeatures, synthetic_batch, trained_backbone


@pytest.mark.slow  # trains the synthetic task's backbone, then the head: 7 s
def test_head_puts_at_least_twice_the_object_share_of_its_mass_on_the_object():
    generator = torch.Generator().manual_seed(0)
    classifier = Classifier("synthetic", trained_backbone(generator), TOY_PREPROCESSING)
    images, labels, where = synthetic_batch(256, generator)
    with torch.no_grad():
        accuracy = (classifier(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95, f"the synthetic backbone did not learn the task ({accuracy:.2f})"

    torch.manual_seed(1)
    auxiliary = FeatureExtractor("tiny", TinyFeatures(), TOY_PREPROCESSING, ["stage1", "stage2", "stage3"])
    head = AttentionHead(auxiliary.channels(SIZE), num_classes=len(COLOURS))
    explainer = Explainer(classifier, auxiliary, head)
    batches = [synthetic_batch(32, generator)[:2] for _ in range(60)]
    loss = LossConfig(lambda1=0.6, lambda2=0.35, lambda_area=1.0, lambda_rand=len(COLOURS))
    train(explainer, batches, len(batches), loss, TrainConfig(max_lr=1e-2), torch.device("cpu"), progress=False)

    saliency = explainer.explain(images).saliency
    on_object = (saliency * where).flatten(1).sum(1) / saliency.flatten(1).sum(1).clamp_min(1e-8)
    ratio = on_object.mean().item() / (OBJECT * OBJECT / (SIZE * SIZE))
    print(f"mass on object / object area share = {ratio:.2f}x (uniform = 1x)")
    assert ratio >= 2.0


def share_on_object(maps: torch.Tensor, where: torch.Tensor) -> float:
    """Mean share of each map's mass inside the object, over the object's share of the image (1 = uniform)."""
    maps = F.interpolate(maps[:, None], size=where.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    on_object = (maps * where).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1e-8)
    return on_object.mean().item() / (OBJECT * OBJECT / (SIZE * SIZE))


@pytest.mark.slow  # trains the synthetic task's backbone first (about 25 s on a busy 2-core CPU)
def test_a_trained_stream_puts_at_least_twice_the_object_share_of_its_last_attention_on_the_object():
    generator = torch.Generator().manual_seed(0)
    classifier = Classifier("synthetic-gap", trained_backbone(generator, pooling="average"), TOY_PREPROCESSING)
    model = CAStreamModel(classifier, StreamLayout(("features.2", "features.5"), "pool"))
    images, labels, where = synthetic_batch(256, generator)
    with torch.no_grad():
        before = model.run(images, original=True)
    assert (before.original.argmax(1) == labels).float().mean() > 0.95, "the synthetic backbone did not learn"
    assert share_on_object(before.attentions[-1], where) == pytest.approx(1.0, abs=0.01)  # GAP: uniform

    batches = [synthetic_batch(32, generator)[:2] for _ in range(60)]  # labels unused: distillation
    fit_stream(model, batches, len(batches), CAStreamConfig(lr=1e-3), "prediction", StreamSummary(), progress=False)
    with torch.no_grad():
        after = model.run(images, original=True)
    ratio = share_on_object(after.attentions[-1], where)
    print(f"last-stage attention on object / object area share = {ratio:.2f}x (uniform = 1x)")
    assert ratio >= 2.0
    assert (after.logits.argmax(1) == after.original.argmax(1)).float().mean() > 0.95
