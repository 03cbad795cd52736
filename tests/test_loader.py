"""The shard index, the epoch batch sampler and the loader built from them."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from shard_tars import class_image, sample, write_shards, write_tar

from liftplus.data.loader import EpochBatchSampler, ShardIndex, index_shard, make_loader
from liftplus.data.transforms import test_transform as eval_transform
from liftplus.data.transforms import train_transform
from liftplus.errors import DataError

NUM_CLASSES, PER_CLASS, PER_SHARD = 4, 12, 20
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_shards(tmp_path_factory.mktemp("shards"), NUM_CLASSES, PER_CLASS, PER_SHARD)


# --- index_shard ---------------------------------------------------------------------------


def test_index_reads_back_keys_labels_and_exact_image_bytes(shards):
    n = 0
    for shard_id, path in enumerate(shards):
        data = path.read_bytes()
        index = index_shard(path, shard_id)
        assert len(index) == min(PER_SHARD, NUM_CLASSES * PER_CLASS - n)
        for s in index:
            assert (s.shard, s.key, s.label, s.ext) == (shard_id, f"train{n:05d}", n % NUM_CLASSES, "png")
            assert data[s.offset : s.offset + s.size] == class_image(n % NUM_CLASSES, n)
            n += 1
    assert n == NUM_CLASSES * PER_CLASS

    dataset = ShardIndex(shards, eval_transform(32, MEAN, STD), num_classes=NUM_CLASSES)
    assert len(dataset) == n
    assert dataset.labels == [i % NUM_CLASSES for i in range(n)]
    assert dataset.read_bytes(27) == class_image(27 % NUM_CLASSES, 27)


def _member_offsets(path: Path) -> list[int]:
    """Where each member's header starts, and (last) where the end-of-archive marker starts."""
    with tarfile.open(path) as tar:
        members = list(tar)
    last = members[-1]
    return [m.offset for m in members] + [last.offset_data + -(-last.size // 512) * 512]


@pytest.mark.parametrize("where", ["half", "between samples", "mid image", "no end marker"])
def test_truncated_tar_is_an_error_naming_the_shard(shards, tmp_path, where):
    data = shards[0].read_bytes()
    first_image = index_shard(shards[0])[0]
    offsets = _member_offsets(shards[0])
    cut = {
        "half": len(data) // 2,
        "between samples": offsets[2 * 5],  # the header of sample 5's first member
        "mid image": first_image.offset + first_image.size // 2,
        "no end marker": offsets[-1],
    }[where]
    truncated = tmp_path / "train-000000.tar"
    truncated.write_bytes(data[:cut])
    with pytest.raises(DataError, match=str(truncated)):
        index_shard(truncated)


def test_garbled_header_mid_shard_is_an_error(shards, tmp_path):
    data = bytearray(shards[0].read_bytes())
    offset = _member_offsets(shards[0])[2 * 3]
    data[offset : offset + 10] = b"not a tar!"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad.tar"):
        index_shard(bad)


def test_image_without_cls_is_an_error_naming_shard_and_key(tmp_path):
    path = write_tar(
        tmp_path / "nolabel.tar",
        [
            sample("a0", 0, class_image(0, 0)),
            sample("a1", None, class_image(1, 1)),
        ],
    )
    with pytest.raises(DataError, match=r"nolabel\.tar: sample a1 has an image but no \.cls"):
        index_shard(path)


@pytest.mark.parametrize("label", [4, -1])
def test_label_outside_classes_is_an_error_naming_shard_and_key(tmp_path, label):
    good = write_tar(tmp_path / "good.tar", [sample("g0", 3, class_image(3, 0))])
    bad = write_tar(tmp_path / "bad.tar", [sample("b0", 0, class_image(0, 0)), sample("b1", label, class_image(0, 1))])
    assert ShardIndex([good], eval_transform(32, MEAN, STD), num_classes=4).labels == [3]
    with pytest.raises(DataError, match=rf"bad\.tar: sample b1 has label {label}, expected 0\.\.3"):
        ShardIndex([good, bad], eval_transform(32, MEAN, STD), num_classes=4)


def test_non_integer_label_and_two_images_for_one_key_are_errors(tmp_path):
    text_label = write_tar(tmp_path / "text.tar", [{"__key__": "k", "png": class_image(0, 0), "cls": b"cat"}])
    with pytest.raises(DataError, match=r"text\.tar: k\.cls is not an integer label"):
        index_shard(text_label)
    two_images = write_tar(tmp_path / "two.tar", [{"__key__": "k", "png": class_image(0, 0), "jpg": b"x", "cls": b"0"}])
    with pytest.raises(DataError, match=r"two\.tar: sample k has more than one image"):
        index_shard(two_images)


def test_undecodable_image_is_an_error_naming_shard_and_key(tmp_path):
    path = write_tar(tmp_path / "broken.tar", [sample("ok", 0, class_image(0, 0)), sample("junk", 1, b"not a png")])
    dataset = ShardIndex([path], eval_transform(32, MEAN, STD), num_classes=2)
    assert dataset[(0, 0)][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"broken\.tar: sample junk does not decode"):
        dataset[(0, 1)]


def test_grayscale_images_become_three_channels(tmp_path):
    paths = write_shards(tmp_path, num_classes=2, per_class=2, size=28, mode="L")
    image, label = ShardIndex(paths, eval_transform(32, MEAN, STD))[(0, 3)]
    assert image.shape == (3, 32, 32) and label == 1
    pixels = image * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-6) and torch.allclose(pixels[0], pixels[2], atol=1e-6)


# --- EpochBatchSampler -----------------------------------------------------------------------


def _indices(sampler: EpochBatchSampler, epoch: int, start_batch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start_batch)
    batches = []
    for batch in sampler:
        assert all(e == epoch for e, _ in batch)
        batches.append([i for _, i in batch])
    return batches


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_every_index_once_per_epoch_in_a_seeded_order():
    sampler = EpochBatchSampler(50, 8, shuffle=True, seed=3)
    epoch0, epoch1 = _indices(sampler, 0), _indices(sampler, 1)
    for batches in (epoch0, epoch1):
        assert sorted(_flat(batches)) == list(range(50))
        assert [len(b) for b in batches] == [8] * 6 + [2] and len(sampler) == 7
    assert _flat(epoch0) != _flat(epoch1)
    assert _flat(epoch0) != list(range(50))
    assert _indices(EpochBatchSampler(50, 8, shuffle=True, seed=3), 1) == epoch1
    assert _flat(_indices(EpochBatchSampler(50, 8, shuffle=True, seed=4), 1)) != _flat(epoch1)
    assert _flat(_indices(EpochBatchSampler(50, 8, shuffle=False), 1)) == list(range(50))


def test_drop_last_drops_the_short_batch():
    sampler = EpochBatchSampler(50, 8, shuffle=True, drop_last=True)
    batches = _indices(sampler, 0)
    assert len(batches) == len(sampler) == 6 and all(len(b) == 8 for b in batches)


@pytest.mark.parametrize("num_samples, world", [(48, 2), (50, 3), (7, 4), (1, 3)])
def test_rank_split_is_disjoint_up_to_padding_and_covers_everything(num_samples, world):
    per_rank = -(-num_samples // world)
    by_rank = []
    for rank in range(world):
        sampler = EpochBatchSampler(num_samples, 4, shuffle=True, seed=1, rank=rank, world=world)
        batches = _indices(sampler, 2)
        assert len(batches) == len(sampler) == -(-per_rank // 4)  # every rank steps the same number of times
        by_rank.append(_flat(batches))
    assert all(len(indices) == per_rank for indices in by_rank)
    counts = Counter(i for indices in by_rank for i in indices)
    assert set(counts) == set(range(num_samples))
    padding = per_rank * world - num_samples
    assert sum(c - 1 for c in counts.values()) == padding
    if padding == 0:
        assert all(c == 1 for c in counts.values())
    # the ranks interleave one shared permutation: rank r takes positions r, r + world, ...
    full = _flat(_indices(EpochBatchSampler(num_samples, 4, shuffle=True, seed=1), 2))
    interleaved = [by_rank[p % world][p // world] for p in range(num_samples)]
    assert interleaved == full


def test_start_batch_skips_exactly_those_batches():
    sampler = EpochBatchSampler(50, 8, shuffle=True, seed=0)
    full = _indices(sampler, 1)
    assert _indices(sampler, 1, start_batch=3) == full[3:]
    assert _indices(sampler, 1, start_batch=len(full)) == []
    assert _indices(sampler, 2) != full and len(_indices(sampler, 2)) == len(full)  # start_batch is per epoch


def test_subset_yields_only_those_indices():
    subset = [40, 3, 17, 8, 25]
    in_order = _flat(_indices(EpochBatchSampler(50, 2, shuffle=False, subset=subset), 0))
    assert in_order == subset
    sampler = EpochBatchSampler(50, 2, shuffle=True, seed=5, subset=subset)
    shuffled = _indices(sampler, 0)
    assert sorted(_flat(shuffled)) == sorted(subset) and len(sampler) == len(shuffled) == 3
    ranks = [
        _flat(_indices(EpochBatchSampler(50, 2, shuffle=True, seed=5, subset=subset, rank=r, world=2), 0))
        for r in range(2)
    ]
    assert set(ranks[0]) | set(ranks[1]) == set(subset) and len(ranks[0]) == len(ranks[1]) == 3


# --- make_loader -----------------------------------------------------------------------------


def _batches(dataset, epoch: int, workers: int, start_batch: int = 0):
    sampler = EpochBatchSampler(len(dataset), 8, shuffle=True, seed=0)
    sampler.set_epoch(epoch, start_batch)
    return list(make_loader(dataset, sampler, workers))


def test_batches_do_not_depend_on_worker_count(shards):
    dataset = ShardIndex(shards, train_transform(32, MEAN, STD, epochs=2), num_classes=NUM_CLASSES, seed=0)
    for epoch in (0, 1):
        serial = _batches(dataset, epoch, workers=0)
        parallel = _batches(dataset, epoch, workers=2)
        assert len(serial) == len(parallel) == 6
        for (x0, y0), (x2, y2) in zip(serial, parallel):
            assert x0.shape == (8, 3, 32, 32) and x0.dtype == torch.float32
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
    # a resumed epoch gets the very same (augmented) images, whatever the worker count
    resumed = _batches(dataset, 1, workers=2, start_batch=4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, serial[4:]))
    assert len(resumed) == 2


def test_augmentation_is_seeded_per_sample_and_epoch(shards):
    dataset = ShardIndex(shards, train_transform(32, MEAN, STD, epochs=3), num_classes=NUM_CLASSES, seed=0)
    assert torch.equal(dataset[(1, 5)][0], dataset[(1, 5)][0])
    assert not torch.equal(dataset[(0, 5)][0], dataset[(1, 5)][0])
    other_seed = ShardIndex(shards, train_transform(32, MEAN, STD, epochs=3), num_classes=NUM_CLASSES, seed=1)
    assert not torch.equal(dataset[(1, 5)][0], other_seed[(1, 5)][0])


def test_loader_leaves_the_global_rng_alone(shards):
    """The model's random stream (dropout) must not depend on how many loaders were iterated (resume)."""
    dataset = ShardIndex(shards, train_transform(32, MEAN, STD, epochs=2), num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _batches(dataset, 0, workers=0)
    assert torch.equal(torch.get_rng_state(), before)
