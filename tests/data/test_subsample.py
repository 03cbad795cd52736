"""The CIFAR-LT long-tail rule, checked against the published totals and the reference code."""

import numpy as np
import pytest

from liftplus.data.sources.longtail_subsample import longtail_counts, longtail_indices


def cifar100_train_labels() -> np.ndarray:
    """500 images per class in the shuffled order of a real release (order must not matter)."""
    return np.random.default_rng(7).permutation(np.repeat(np.arange(100), 500))


def reference_selection(labels, imb_factor, seed):
    """A transcription of IMBALANCECIFAR100.gen_imbalanced_data from the reference repository."""
    np.random.seed(seed)
    img_max = len(labels) / 100
    img_num_list = [int(img_max * (imb_factor ** (i / 99.0))) for i in range(100)]
    targets_np = np.array(labels, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_list):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return np.concatenate(selected)


@pytest.mark.parametrize("ratio, total", [(100, 10_847), (50, 12_608), (10, 19_573)])
def test_cifar100_lt_totals_match_the_paper(ratio, total):
    labels = cifar100_train_labels()
    kept = longtail_indices(labels, 100, ratio, seed=0)
    assert len(kept) == total
    assert sum(longtail_counts(len(labels), 100, ratio)) == total
    counts = np.bincount(labels[kept], minlength=100)
    assert counts[0] == 500
    assert counts[99] == int(500 / ratio)
    assert np.all(np.diff(counts) <= 0)


@pytest.mark.parametrize("ratio", [100, 50, 10])
def test_same_images_as_the_reference(ratio):
    labels = cifar100_train_labels()
    ours = longtail_indices(labels, 100, ratio, seed=0)
    assert np.array_equal(ours, reference_selection(labels, 1.0 / ratio, seed=0))


def test_kept_samples_are_ordered_class_by_class_and_unique():
    labels = cifar100_train_labels()
    kept = longtail_indices(labels, 100, 100, seed=0)
    assert np.all(np.diff(labels[kept]) >= 0)
    assert len(np.unique(kept)) == len(kept)


def test_seed_changes_which_images_not_how_many():
    labels = cifar100_train_labels()
    a = longtail_indices(labels, 100, 100, seed=0)
    b = longtail_indices(labels, 100, 100, seed=1)
    assert len(a) == len(b)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, longtail_indices(labels, 100, 100, seed=0))


def test_ratio_one_keeps_everything_in_order():
    labels = cifar100_train_labels()[:1234]
    assert np.array_equal(longtail_indices(labels, 100, 1, seed=0), np.arange(1234))


def test_fashion_mnist_counts_follow_the_formula_with_ten_classes():
    assert longtail_counts(60_000, 10, 100) == [int(6000 * 0.01 ** (i / 9)) for i in range(10)]
    assert longtail_counts(60_000, 10, 100)[9] == 60
