"""Training batches decoded on the device (run here on the CPU device), and the compiled classifier."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from pipeline import config as configs
from pipeline.config import ModelConfig, TrainConfig
from pipeline.data import batches as batches_module
from pipeline.data.batches import (
    DeviceBatches,
    decode_batch,
    decodes_on_device,
    jpeg_frame,
    nvjpeg_can_decode,
    train_views,
    training_batches,
)
from pipeline.data.sources import DemoViews, files_of, image_folder, train_transform
from pipeline.errors import UserError
from pipeline.models.loading import build_explainer, load_models
from pipeline.training import compiled as compiled_module
from pipeline.training.compiled import CompiledNetwork
from pipeline.training.loop import train
from tests.toy_models import TOY_MODEL, tiny_classifier

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


def photo(seed: int, height: int = 45, width: int = 60) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def as_tensor(content: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(content), dtype=torch.uint8)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """ImageNet-like ``.JPEG`` files in two classes: plain, progressive, grayscale and CMYK JPEGs and a PNG."""
    kinds = [
        ("JPEG", "RGB", {}),
        ("PNG", "RGB", {}),
        ("JPEG", "CMYK", {}),
        ("JPEG", "L", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("JPEG", "RGB", {"exif": b"Exif\x00\x00" + bytes(2000)}),
    ]
    for index, (fmt, mode, options) in enumerate(kinds * 2):
        folder = tmp_path / f"n0{index % 2}"
        folder.mkdir(exist_ok=True)
        (folder / f"image_{index}.JPEG").write_bytes(encoded(photo(index).convert(mode), fmt, **options))
    return tmp_path


def test_nvjpeg_eligibility_is_read_from_the_content_not_the_name(odd_folder):
    verdicts = {}
    for path in sorted(odd_folder.rglob("*.JPEG")):
        content = path.read_bytes()
        with Image.open(path) as image:
            verdicts[(image.format, image.mode, "progressive" in image.info)] = nvjpeg_can_decode(as_tensor(content))
    assert verdicts == {
        ("JPEG", "RGB", False): True,
        ("JPEG", "RGB", True): True,
        ("JPEG", "L", False): True,
        ("JPEG", "CMYK", False): False,
        ("PNG", "RGB", False): False,
    }
    assert jpeg_frame(encoded(photo(0).convert("CMYK"), "JPEG")) == (0xC0, 8, 4)
    assert jpeg_frame(b"\xff\xd8\xff") is None and jpeg_frame(b"GIF89a") is None


def test_views_have_the_input_size_and_range_and_come_from_the_resized_image():
    size, shorter = 32, round(32 / 0.875)
    image = torch.from_numpy(np.array(photo(1))).permute(2, 0, 1)
    views = train_views([image] * 24, size, torch.Generator().manual_seed(0))
    assert views.shape == (24, 3, size, size) and views.dtype == torch.float32
    assert 0.0 <= float(views.min()) and float(views.max()) <= 1.0
    resized = TF.resize(image.float(), [shorter], antialias=True) / 255
    assert resized.shape[-2] == shorter
    offsets, flips = set(), 0
    for view in views:
        found = [
            (top, left, flip)
            for top in range(resized.shape[-2] - size + 1)
            for left in range(resized.shape[-1] - size + 1)
            for flip in (False, True)
            if torch.allclose(
                (view.flip(-1) if flip else view), resized[:, top : top + size, left : left + size], atol=1e-6
            )
        ]
        assert len(found) == 1, "every view is one crop (maybe flipped) of the resized image"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 12, "crops are drawn per image, not once per batch"
    assert 4 <= flips <= 20, "flips are drawn per image"


def test_same_seed_same_views_other_seed_other_views():
    images = [torch.from_numpy(np.array(photo(seed))).permute(2, 0, 1) for seed in range(6)]
    first, again, other = (train_views(images, 32, torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_device_batches_cover_the_split_once_per_epoch_with_labels_and_repeat_per_seed_with_any_workers(odd_folder):
    files = image_folder(odd_folder, train_transform(32))
    loaded = DeviceBatches(files, batch_size=4, size=32, device=CPU, seed=7)
    batches = list(loaded)
    assert len(batches) == len(loaded) == 3
    views = torch.cat([v for v, _ in batches])
    assert views.shape == (12, 3, 32, 32)
    assert sorted(torch.cat([labels for _, labels in batches]).tolist()) == sorted(files.labels)
    read_by_workers = torch.cat([v for v, _ in DeviceBatches(files, 4, 32, CPU, seed=7, num_workers=2)])
    assert torch.equal(views, read_by_workers)
    assert not torch.equal(views, torch.cat([v for v, _ in DeviceBatches(files, 4, 32, CPU, seed=8)]))


def test_decoded_pixels_equal_pil_for_every_kind_of_file(odd_folder):
    paths = sorted(odd_folder.rglob("*.JPEG"))
    images = decode_batch([as_tensor(p.read_bytes()) for p in paths], [str(p) for p in paths], CPU)
    for path, image in zip(paths, images):
        with Image.open(path) as reference:
            expected = torch.from_numpy(np.array(reference.convert("RGB"))).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and image.shape == expected.shape
        assert (image.int() - expected.int()).abs().float().mean() < 1.0, path.name


def png_16_bit(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of ``pixels`` (uint16 [H, W, 3]); PIL writes no such file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16_bit_pngs_and_animations_decode_to_8_bit_first_frames_like_pil(tmp_path):
    deep = (np.random.default_rng(0).random((20, 30, 3)) * 65535).astype(np.uint16)
    frames = [photo(seed, 20, 30) for seed in (1, 2)]
    files = {
        "deep.png": png_16_bit(deep),
        "moving.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        (image,) = decode_batch([as_tensor(content)], [str(tmp_path / name)], CPU)
        with Image.open(tmp_path / name) as reference:
            expected = torch.from_numpy(np.array(reference.convert("RGB"))).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and image.shape == expected.shape == (3, 20, 30), name
        assert (image.int() - expected.int()).abs().max() <= 1, name


def test_12_bit_jpegs_are_not_sent_to_nvjpeg():
    content = bytearray(encoded(photo(0), "JPEG"))
    frame_at = content.index(b"\xff\xc0")
    assert jpeg_frame(bytes(content)) == (0xC0, 8, 3) and nvjpeg_can_decode(as_tensor(bytes(content)))
    content[frame_at + 1], content[frame_at + 4] = 0xC1, 12  # extended sequential, 12-bit samples
    assert jpeg_frame(bytes(content)) == (0xC1, 12, 3) and not nvjpeg_can_decode(as_tensor(bytes(content)))


def test_a_batch_nvjpeg_refuses_is_retried_per_file_and_the_refused_file_goes_to_the_cpu(monkeypatch):
    good, bad = as_tensor(encoded(photo(0), "JPEG")), as_tensor(encoded(photo(1), "JPEG"))
    calls = []

    def fake_nvjpeg(contents, mode, device):
        calls.append(len(contents))
        if any(content is bad for content in contents):
            raise RuntimeError("Failed to decode jpeg stream: 2")
        return [torch.zeros(3, 4, 4, dtype=torch.uint8) for _ in contents]

    monkeypatch.setattr(batches_module, "decode_jpeg", fake_nvjpeg)
    decoded = batches_module._decode_on_gpu([good, bad, good], CPU)
    assert calls == [3, 1, 1, 1]
    assert decoded[0] is not None and decoded[1] is None and decoded[2] is not None


def test_a_truncated_jpeg_stops_training_with_one_line_naming_the_file(odd_folder):
    broken = odd_folder / "n00" / "image_0.JPEG"
    broken.write_bytes(broken.read_bytes()[:700])
    files = image_folder(odd_folder, train_transform(32))
    with pytest.raises(UserError, match="image_0.JPEG") as caught:
        list(DeviceBatches(files, 4, 32, CPU, seed=0))
    assert "\n" not in str(caught.value) and "remove or replace the file" in str(caught.value)


@pytest.mark.system
def test_a_truncated_jpeg_read_by_loader_workers_is_still_one_line_from_the_cli(odd_folder, tmp_path):
    for broken in odd_folder.rglob("*.JPEG"):
        broken.write_bytes(broken.read_bytes()[:700])
    model = [f"--set=model.{key}={value}" for key, value in TOY_MODEL.items()]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.train",
            *model,
            "--set=data.dataset=folder",
            f"--set=data.root={odd_folder}",
            "--set=data.num_workers=2",
            "--set=train.batch_size=2",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot read image '{odd_folder}/n0") and line.endswith("remove or replace the file")


@pytest.fixture
def toy_models():
    return load_models(ModelConfig(**TOY_MODEL), CPU)


def test_a_folder_of_png_cmyk_and_grayscale_files_named_jpeg_trains_on_the_device_path(odd_folder, toy_models):
    explainer = build_explainer(toy_models, ModelConfig(**TOY_MODEL), seed=0)
    before = [p.detach().clone() for p in explainer.head.parameters()]
    loaded = DeviceBatches(image_folder(odd_folder, train_transform(32)), 4, 32, CPU, seed=0)
    summary = train(
        explainer, loaded, len(loaded), configs.LossConfig(), TrainConfig(compile=False), CPU, progress=False
    )
    assert summary.steps == 3 and summary.images == 12 and np.isfinite(summary.last["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, explainer.head.parameters()))


def test_decode_setting_chooses_the_path_and_rejects_gpu_where_it_cannot_apply(odd_folder):
    files = image_folder(odd_folder, train_transform(32))
    demo = files_of(DemoViews(32, 4, seed=0))
    cuda = torch.device("cuda")

    def config(decode):
        return configs.load(overrides=[f"data.decode={decode}"])

    assert decodes_on_device(config("auto"), cuda, files) and not decodes_on_device(config("auto"), CPU, files)
    assert not decodes_on_device(config("cpu"), cuda, files)
    assert not decodes_on_device(config("auto"), cuda, demo)
    with pytest.raises(UserError, match="needs a CUDA device.*data.decode=auto"):
        decodes_on_device(config("gpu"), CPU, files)
    with pytest.raises(UserError, match="held in memory"):
        decodes_on_device(config("gpu"), cuda, demo)
    assert isinstance(training_batches(files, config("auto"), 32, CPU), torch.utils.data.DataLoader)
    with pytest.raises(UserError, match="data.decode: 'gpux' is not one of 'auto', 'cpu', 'gpu'"):
        config("gpux")
    with pytest.raises(UserError, match="train.compile: expected bool or 'auto', got 'maybe'"):
        configs.load(overrides=["train.compile=maybe"])


class Recording(torch.nn.Module):
    """Stands in for a compiled network: records the batch sizes it was called with."""

    def __init__(self, network, fail: bool = False):
        super().__init__()
        self.network, self.fail, self.sizes = network, fail, []

    def forward(self, images):
        if self.fail:
            raise RuntimeError("InductorError: C++ compile error\nlong compiler output")
        self.sizes.append(images.shape[0])
        return self.network(images)


def test_compiled_network_runs_only_full_batches_compiled(monkeypatch):
    network = tiny_classifier().eval()
    monkeypatch.setattr(compiled_module.torch, "compile", lambda module, dynamic: Recording(module))
    wrapped = CompiledNetwork(network, batch_size=4)
    for size in (4, 4, 3):
        assert torch.equal(wrapped(torch.ones(size, 3, 32, 32)), network(torch.ones(size, 3, 32, 32)))
    with torch.no_grad():
        wrapped(torch.ones(4, 3, 32, 32))
    assert wrapped.compiled.sizes == [4, 4, 4], "the short batch ran eagerly"
    assert wrapped.compile_seconds > 0


def test_a_failing_compile_warns_once_and_training_goes_on_eagerly(monkeypatch, capsys):
    network = tiny_classifier().eval()
    monkeypatch.setattr(compiled_module.torch, "compile", lambda module, dynamic: Recording(module, fail=True))
    wrapped = CompiledNetwork(network, batch_size=2)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(wrapped(images), network(images))
    assert torch.equal(wrapped(images), network(images))
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "torch.compile of TinyClassifier failed (RuntimeError: InductorError" in warning
    assert "train.compile=false" in warning


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, outputs):
        return outputs.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("BackendCompilerFailed: backward graph")


class BackwardFails(torch.nn.Module):
    """Stands in for a compiled network whose backward graph fails to compile (at its first backward)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, images):
        return _FailingBackward.apply(self.network(images))


def test_a_failing_backward_compile_is_caught_with_the_forward_and_training_goes_on_eagerly(monkeypatch, capsys):
    network = tiny_classifier().eval()
    monkeypatch.setattr(compiled_module.torch, "compile", lambda module, dynamic: BackwardFails(module))
    wrapped = CompiledNetwork(network, batch_size=2)
    with torch.no_grad():
        wrapped(torch.rand(2, 3, 32, 32))  # gradient-free pass: no backward graph to build
    assert capsys.readouterr().err == "" and wrapped.compiled is not None
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    outputs = wrapped(images)
    outputs.sum().backward()
    assert images.grad is not None and wrapped.compiled is None
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "(RuntimeError: BackendCompilerFailed: backward graph)" in warning


@pytest.mark.system  # the real torch.compile: Inductor writes C++ and runs the compiler
def test_compiled_and_eager_training_give_the_same_loss(toy_models):
    rng = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 3, 32, 32, generator=rng), torch.zeros(4)) for _ in range(3)]
    batches.append((torch.rand(3, 3, 32, 32, generator=rng), torch.zeros(3)))  # a short last batch
    results = {}
    for compile_ in (False, True):
        explainer = build_explainer(toy_models, ModelConfig(**TOY_MODEL), seed=0)
        summary = train(
            explainer, batches, len(batches), configs.LossConfig(), TrainConfig(compile=compile_), CPU, progress=False
        )
        results[compile_] = summary, torch.cat([p.detach().flatten() for p in explainer.head.parameters()])
    (eager, eager_weights), (fast, fast_weights) = results[False], results[True]
    assert fast.compile_seconds > 0 and eager.compile_seconds == 0
    assert fast.last["loss"] == pytest.approx(eager.last["loss"], rel=1e-4)
    torch.testing.assert_close(fast_weights, eager_weights, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_a_batch_with_no_file_for_nvjpeg_decodes_on_the_cpu_and_moves_to_cuda():
    contents = [as_tensor(encoded(photo(0), "PNG")), as_tensor(encoded(photo(1).convert("CMYK"), "JPEG"))]
    decoded = decode_batch(contents, ["a.png", "b.JPEG"], torch.device("cuda"))
    assert [image.device.type for image in decoded] == ["cuda", "cuda"]
    assert all(image.shape == (3, 45, 60) for image in decoded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_gpu_views_match_the_cpu_decoded_views_of_the_same_seed(odd_folder):
    files = image_folder(odd_folder, train_transform(32))
    on_gpu = torch.cat([views.cpu() for views, _ in DeviceBatches(files, 4, 32, torch.device("cuda"), seed=3)])
    on_cpu = torch.cat([views for views, _ in DeviceBatches(files, 4, 32, CPU, seed=3)])
    assert on_gpu.shape == on_cpu.shape
    # Same files, crops and flips. nvJPEG upsamples chroma without interpolation, libjpeg with it: on these
    # pixel-noise photos that is up to ~0.05 on average; another crop of the noise would differ by ~0.33.
    assert (on_gpu - on_cpu).abs().mean() < 0.1
