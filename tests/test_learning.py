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
from tests.toy_models import TOY_PREPROCESSING, TinyClassifier, TinyFeatures

SIZE, OBJECT = 32, 8
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


def synthetic_batch(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey noise with one coloured square at a random place; the colour is the class."""
    images = 0.35 + 0.15 * torch.rand(count, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, len(COLOURS), (count,), generator=generator)
    where = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    corners = torch.randint(0, SIZE - OBJECT + 1, (count, 2), generator=generator)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + OBJECT, left : left + OBJECT] = COLOURS[labels[i]].view(3, 1, 1)
        where[i, top : top + OBJECT, left : left + OBJECT] = True
    return images, labels, where


_TRAINED: dict[tuple[bytes, str], tuple[dict[str, torch.Tensor], torch.Tensor]] = {}  # (generator state, pooling)


def trained_backbone(generator: torch.Generator, pooling: str = "max") -> TinyClassifier:
    """The toy classifier trained on the synthetic task with batches drawn from ``generator``, in eval mode;
    ``pooling="average"`` puts a global average pooling module (``pool``) before its classifier, the GAP that
    CA-Stream replaces. Trained once per process for a given generator state and pooling (the head's, RISE's and
    CA-Stream's tests share it); every call returns a new network and leaves ``generator`` and torch's global
    generator where training leaves them."""
    key = (generator.get_state().numpy().tobytes(), pooling)
    torch.manual_seed(0)
    network = TinyClassifier(num_classes=len(COLOURS), pooling=pooling)
    if key in _TRAINED:
        weights, after = _TRAINED[key]
        network.load_state_dict(weights)
        generator.set_state(after)
        return network.eval()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(100):
        images, labels, _ = synthetic_batch(64, generator)
        loss = F.cross_entropy(network((images - 0.5) / 0.25), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _TRAINED[key] = ({name: value.clone() for name, value in network.state_dict().items()}, generator.get_state())
    return network.eval()


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
