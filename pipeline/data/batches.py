"""Training batches: PIL views from the CPU loader, or views decoded and augmented on the GPU.

On the GPU path (``data.decode``) the loader workers only read file bytes. A background thread of the main
process decodes each batch with nvJPEG (one batched ``decode_jpeg`` call) on its own CUDA stream, hands
whatever nvJPEG cannot decode (PNG content behind a ``.JPEG`` name, CMYK, lossless or arithmetic-coded
JPEGs, anything it refuses) to the CPU decoders, and makes the paper's training view of every image on the
GPU: shorter side to ``size / 0.875``, a random ``size`` crop and a random horizontal flip, drawn per image
from a seeded generator. It prepares the next batches while the training step runs. The same code runs on
the CPU device, where every image takes the CPU decoders.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from pipeline.config import ExperimentConfig
from pipeline.data.sources import ImageFiles, dataset_size, files_of, read_image
from pipeline.errors import UserError

# Frame types nvJPEG decodes: baseline, extended sequential and progressive Huffman JPEGs, of 8-bit samples.
_NVJPEG_FRAMES = {0xC0, 0xC1, 0xC2}
_NVJPEG_PRECISION = 8
_NVJPEG_COMPONENTS = {1, 3}  # grayscale and YCbCr; CMYK/YCCK (4) fail on the GPU
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}  # markers without a length field
_BATCHES_AHEAD = 2


class JpegFrame(NamedTuple):
    """What a JPEG's frame header (SOF segment) says about how it is coded."""

    marker: int
    precision: int  # bits per sample
    components: int


def jpeg_frame(content: bytes | memoryview) -> JpegFrame | None:
    """The frame header of a JPEG, or None when ``content`` is not a JPEG with a frame header."""
    if bytes(content[:2]) != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(content):
        if content[at] != 0xFF:
            return None
        marker = content[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
        elif marker in _STANDALONE_MARKERS:
            at += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return JpegFrame(marker, content[at + 4], content[at + 9]) if at + 10 <= len(content) else None
        elif marker == 0xDA:  # scan data before any frame header
            return None
        else:
            at += 2 + int.from_bytes(content[at + 2 : at + 4], "big")
    return None


def nvjpeg_can_decode(content: torch.Tensor) -> bool:
    """True for file bytes nvJPEG decodes, judged by content (never by file name)."""
    # numpy's stubs declare ndarray's buffer protocol (__buffer__) for Python >= 3.12 only; 3.11 has it too.
    frame = jpeg_frame(memoryview(content.numpy()))  # type: ignore[arg-type]
    return (
        frame is not None
        and frame.marker in _NVJPEG_FRAMES
        and frame.precision == _NVJPEG_PRECISION
        and frame.components in _NVJPEG_COMPONENTS
    )


def decode_on_cpu(content: torch.Tensor, path: str) -> torch.Tensor:
    """uint8 RGB ``[3, H, W]``: torchvision for JPEG/PNG/GIF/WebP, PIL for other formats; a file that neither
    reads (truncated, corrupt) is a UserError naming it. Like PIL, an animation gives its first frame and
    16-bit samples are scaled to 8 bits."""
    try:
        image = decode_image(content, mode=ImageReadMode.RGB)
    except RuntimeError:
        image = read_image(Path(path), content.numpy().tobytes())
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)
    if image.dim() == 4:  # frames of an animated GIF or WebP
        image = image[0]
    return TF.to_dtype(image, torch.uint8, scale=True)


def _decode_on_gpu(contents: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """One batched nvJPEG call; if nvJPEG refuses the batch (it fails as a whole), one call per file, with None
    for each file it refuses."""
    try:
        return list(decode_jpeg(contents, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        decoded: list[torch.Tensor | None] = []
        for content in contents:
            try:
                decoded.append(decode_jpeg([content], mode=ImageReadMode.RGB, device=device)[0])
            except RuntimeError:
                decoded.append(None)
        return decoded


def decode_batch(contents: Sequence[torch.Tensor], paths: Sequence[str], device: torch.device) -> list[torch.Tensor]:
    """Decode file bytes to uint8 RGB ``[3, H, W]`` tensors on ``device``: nvJPEG on CUDA for the JPEGs it
    supports, the CPU decoders for everything else."""
    images: list[torch.Tensor | None] = [None] * len(contents)
    on_gpu = [i for i, content in enumerate(contents) if nvjpeg_can_decode(content)] if device.type == "cuda" else []
    if on_gpu:
        for i, image in zip(on_gpu, _decode_on_gpu([contents[i] for i in on_gpu], device)):
            images[i] = image
    return [
        image if image is not None else decode_on_cpu(content, path).to(device)
        for image, content, path in zip(images, contents, paths)
    ]


def train_views(images: Sequence[torch.Tensor], size: int, generator: torch.Generator) -> torch.Tensor:
    """The paper's training view of each uint8 image, on the images' device: shorter side resized to
    ``round(size / 0.875)``, a random ``size`` crop and a random horizontal flip, drawn per image from
    ``generator`` (a CPU generator). Returns float ``[B, 3, size, size]`` in [0, 1]."""
    shorter = round(size / 0.875)
    views = []
    for image in images:
        resized = TF.resize(image.float(), [shorter], antialias=True)
        height, width = resized.shape[-2:]
        top = int(torch.randint(height - size + 1, (1,), generator=generator))
        left = int(torch.randint(width - size + 1, (1,), generator=generator))
        view = resized[:, top : top + size, left : left + size]
        if float(torch.rand(1, generator=generator)) < 0.5:
            view = view.flip(-1)
        views.append(view)
    return torch.stack(views).div_(255).clamp_(0, 1)


class EncodedFiles(Dataset):
    """The bytes of image files, unread by any decoder: ``(uint8 [N], label, path)``."""

    def __init__(self, files: ImageFiles):
        self.paths, self.labels = [str(p) for p in files.paths], list(files.labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path = self.paths[index]
        try:
            content = Path(path).read_bytes()
        except OSError as error:
            raise UserError(f"cannot read image {path!r} ({error}); remove or replace the file") from None
        return torch.frombuffer(bytearray(content), dtype=torch.uint8), self.labels[index], path


def _collate(items: list[tuple[torch.Tensor, int, str]]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    contents, labels, paths = zip(*items)
    return list(contents), torch.tensor(labels), list(paths)


_END = object()


class DeviceBatches:
    """Shuffled training batches ``(views [B, 3, size, size], labels)`` decoded and augmented on ``device``.

    A background thread prepares up to two batches ahead on a side CUDA stream; the training stream waits for
    each batch's event before using it. Crops and flips are drawn from a generator seeded with ``seed``, the
    order from another, so the same seed gives the same views.
    """

    def __init__(
        self,
        files: ImageFiles,
        batch_size: int,
        size: int,
        device: torch.device,
        seed: int,
        num_workers: int = 0,
        drop_last: bool = False,
    ):
        self.loader = DataLoader(
            EncodedFiles(files),
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            drop_last=drop_last,
            collate_fn=_collate,
            generator=torch.Generator().manual_seed(seed),
        )
        self.views = torch.Generator().manual_seed(seed + 1)
        self.size, self.device = size, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ready: queue.Queue = queue.Queue(maxsize=_BATCHES_AHEAD)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(ready, stop), name="device-batches", daemon=True)
        producer.start()
        try:
            while (item := ready.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                images, labels, event = item
                if event is not None:
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(event)
                    images.record_stream(stream)
                yield images, labels
        finally:
            stop.set()
            producer.join()

    def _produce(self, ready: queue.Queue, stop: threading.Event) -> None:
        try:
            side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            with torch.cuda.stream(side) if side is not None else nullcontext():
                for contents, labels, paths in self.loader:
                    if stop.is_set():
                        return
                    if side is not None:
                        # nvJPEG writes on a stream of its own that ignores this one's order: nothing queued here
                        # may still read memory the allocator could hand to the decoder (the H100 corruption bug).
                        side.synchronize()
                    images = train_views(decode_batch(contents, paths, self.device), self.size, self.views)
                    event = None
                    if side is not None:
                        images = images.contiguous(memory_format=torch.channels_last)
                        event = torch.cuda.Event()
                        event.record(side)
                    if not _offer(ready, (images, labels, event), stop):
                        return
            _offer(ready, _END, stop)
        except BaseException as error:  # handed to the training thread, which raises it
            _offer(ready, error, stop)


def _offer(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer stopped; False when it did."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def decodes_on_device(config: ExperimentConfig, device: torch.device, files: ImageFiles | None) -> bool:
    """Whether training views come from `DeviceBatches` under ``data.decode``, for the split's image ``files``
    (None: held in memory); ``gpu`` where it cannot apply is a UserError."""
    decode = config.data.decode
    if decode == "gpu" and device.type != "cuda":
        raise UserError(
            f"data.decode = 'gpu' needs a CUDA device, but training runs on {device}; "
            "use data.decode=auto (the GPU when there is one) or data.decode=cpu"
        )
    if decode == "gpu" and files is None:
        raise UserError(
            "data.decode = 'gpu' decodes image files, but this dataset is held in memory (the demo); "
            "use data.decode=auto"
        )
    return decode != "cpu" and device.type == "cuda" and files is not None


def training_batches(
    dataset: Dataset, config: ExperimentConfig, size: int, device: torch.device
) -> DataLoader | DeviceBatches:
    """Shuffled training batches of ``dataset`` (seeded with ``train.seed``), the last short one dropped
    unless the split holds a single batch."""
    batch_size, workers, seed = config.train.batch_size, config.data.num_workers, config.train.seed
    drop_last = dataset_size(dataset) > batch_size
    files = files_of(dataset)
    if decodes_on_device(config, device, files) and files is not None:  # (it is False without files)
        return DeviceBatches(files, batch_size, size, device, seed, workers, drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
