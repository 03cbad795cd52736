"""Batches from the WebDataset shards for training and evaluation.

The shards are plain WebDataset tars (``{key}.png|jpg`` + ``{key}.cls``). For
training we read them through an index of member offsets rather than as a
stream, because that gives what a streaming shuffle buffer cannot:

* an exact global shuffle per epoch (as the reference's ``shuffle=True``),
* the same batches whatever the number of workers, and a clean split per
  DDP rank (every rank sees ``1/world`` of each epoch),
* per-sample seeded augmentation, so a run resumed mid-way (or run with a
  different worker count) is bitwise identical to an uninterrupted one.

Building the index reads only the 512-byte tar headers and the tiny ``.cls``
members; image bytes are read (and decoded, and augmented) in the workers.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from liftplus.data.images import open_image
from liftplus.data.shard_reader import read_samples
from liftplus.errors import DataError

@dataclass(frozen=True)
class IndexedSample:
    shard: int
    key: str
    offset: int
    size: int
    ext: str
    label: int


def index_shard(path: str | Path, shard_id: int = 0) -> list[IndexedSample]:
    """Offsets of every image in one tar, with its label from ``{key}.cls``."""
    return [IndexedSample(shard_id, s.key, s.offset, s.size, s.ext, s.label) for s in read_samples(path)]


class ShardIndex(Dataset):
    """Map-style view of a list of shards: ``dataset[(epoch, i)]`` → (image tensor, label).

    ``transform`` turns a decoded RGB image into a tensor. A random (training)
    transform has ``set_epoch`` and takes ``generator=``: it gets a generator
    seeded from ``(seed, epoch, i)``, so augmentation does not depend on which
    worker, rank or resume point produced the sample. A
    :class:`~liftplus.data.input_path.WorkerInput` says so with ``random``, and
    one that ``takes_encoded`` gets the stored bytes rather than a decoded image.
    """

    def __init__(
        self,
        shard_paths: Sequence[str | Path],
        transform: Callable[..., torch.Tensor],
        num_classes: int | None = None,
        seed: int = 0,
    ):
        self.paths = [str(p) for p in shard_paths]
        if not self.paths:
            raise DataError("no shards to read")
        self.samples: list[IndexedSample] = []
        for shard_id, path in enumerate(self.paths):
            self.samples.extend(index_shard(path, shard_id))
        if num_classes is not None:
            for s in self.samples:
                if not 0 <= s.label < num_classes:
                    raise DataError(
                        f"{self.paths[s.shard]}: sample {s.key} has label {s.label}, "
                        f"expected 0..{num_classes - 1}"
                    )
        self.transform = transform
        self.seed = seed
        self._files: dict[int, io.BufferedReader] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def read_bytes(self, i: int) -> bytes:
        if self._pid != os.getpid():  # fresh handles in each worker process
            self._files, self._pid = {}, os.getpid()
        s = self.samples[i]
        f = self._files.get(s.shard)
        if f is None:
            f = self._files[s.shard] = open(self.paths[s.shard], "rb")
        f.seek(s.offset)
        return f.read(s.size)

    def undecodable(self, i: int, exc: Exception) -> DataError:
        s = self.samples[i]
        return DataError(f"{self.paths[s.shard]}: sample {s.key} does not decode ({exc})")

    def decode(self, i: int) -> Image.Image:
        try:
            img = open_image(self.read_bytes(i), self.samples[i].ext)
            return img.convert("RGB") if img.mode != "RGB" else img
        except Exception as exc:
            raise self.undecodable(i, exc) from None

    def __getitem__(self, item: tuple[int, int]):
        epoch, i = item
        transform, sample = self.transform, self.samples[i]
        random = getattr(transform, "random", hasattr(transform, "set_epoch"))
        generator = None
        if random:
            transform.set_epoch(epoch)
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, i))
        if getattr(transform, "takes_encoded", False):
            try:
                return transform.encoded(self.read_bytes(i), sample.ext, generator), sample.label
            except Exception as exc:
                raise self.undecodable(i, exc) from None
        image = self.decode(i)
        return (transform(image, generator=generator) if random else transform(image)), sample.label

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, None
        return state


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index & 0x7FFF_FFFF_FFFF_FFFF


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)``: a seeded permutation per epoch, split by rank.

    Like DistributedSampler, each rank takes every ``world``-th index of the
    permutation (padded to a multiple of ``world``). ``start_batch`` skips the
    batches a resumed run has already trained on. ``subset`` restricts it to
    those dataset indices.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        subset: Sequence[int] | None = None,
    ):
        self.subset = list(subset) if subset is not None else None
        self.num_samples = len(self.subset) if subset is not None else num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def rank_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.subset is not None:
            order = [self.subset[i] for i in order]
        if self.world > 1 and order:
            total = math.ceil(self.num_samples / self.world) * self.world
            order = (order * math.ceil(total / len(order)))[:total]  # pad by wrapping around, as DistributedSampler
            order = order[self.rank :: self.world]
        return order

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.rank_indices()
        for b in range(self.start_batch, len(self)):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, i) for i in chunk]

    def __len__(self) -> int:
        n = math.ceil(self.num_samples / self.world) if self.world > 1 else self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def make_loader(
    dataset: ShardIndex,
    batch_sampler: EpochBatchSampler,
    workers: int,
    pin_memory: bool = False,
    prefetch: int = 4,
    persistent: bool = False,
) -> DataLoader:
    """Workers keep ``prefetch`` batches each in flight; ``persistent`` keeps them across epochs."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=getattr(dataset.transform, "collate", None),
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
        # Worker seeds come from here, not from torch's global RNG, which stays the model's
        # alone (dropout), so a run resumed mid-epoch continues the same random stream.
        generator=torch.Generator(),
    )
