import io
import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from fake_raw_data import make_cifar
from liftplus.data.sources import open_source
from liftplus.errors import DataError


def decode(record) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record.image)))


@pytest.mark.parametrize("protocol", ["py2", 2, pickle.HIGHEST_PROTOCOL])
def test_reads_release_and_subsamples_train(tmp_path, data_params, protocol):
    arrays = make_cifar(tmp_path, num_classes=5, per_class=20, test_per_class=4, protocol=protocol)
    source = open_source(data_params(source="cifar100", root=str(tmp_path), imbalance_ratio=10))
    assert source.classnames == [f"class_{i}" for i in range(5)]
    train = list(source.splits["train"]())
    assert np.bincount([r.label for r in train]).tolist() == [
        int(20 * 0.1 ** (i / 4)) for i in range(5)
    ]
    data, labels = arrays["train"]
    for record in train:
        index = int(record.source.split("#")[1])
        assert labels[index] == record.label
        expected = data[index].reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(decode(record), expected)
    test = list(source.splits["test"]())
    assert [r.label for r in test] == arrays["test"][1].tolist()
    assert decode(test[0]).shape == (32, 32, 3)


def test_accepts_the_release_folder_under_root(tmp_path, data_params):
    make_cifar(tmp_path / "cifar-100-python")
    source = open_source(data_params(source="cifar100", root=str(tmp_path), imbalance_ratio=1))
    assert len(list(source.splits["train"]())) == 100


def test_missing_root_and_missing_files(tmp_path, data_params):
    with pytest.raises(DataError, match=r"data\.root .*missing"):
        open_source(data_params(source="cifar100", root=str(tmp_path / "missing")))
    make_cifar(tmp_path)
    (tmp_path / "meta").unlink()
    with pytest.raises(DataError, match=r"data\.root .*no train, test and meta"):
        open_source(data_params(source="cifar100", root=str(tmp_path)))


class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("victim", ["train", "meta"])
def test_code_execution_payload_is_refused_and_never_runs(tmp_path, data_params, victim):
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0],
               b"fine_label_names": [b"a"], b"x": _SystemCall(f"touch {marker}")}
    (tmp_path / victim).write_bytes(pickle.dumps(payload, protocol=2))
    expected = rf"{re.escape(str(tmp_path / victim))}: refused .*'(posix|os)\.system'"
    with pytest.raises(DataError, match=expected):
        open_source(data_params(source="cifar100", root=str(tmp_path)))
    assert not marker.exists()


def test_object_arrays_and_other_codecs_are_refused(tmp_path, data_params):
    make_cifar(tmp_path)
    objects = {b"data": np.array([{"a": 1}], dtype=object), b"fine_labels": [0]}
    (tmp_path / "train").write_bytes(pickle.dumps(objects, protocol=2))
    with pytest.raises(DataError, match=r"train: refused .*object arrays"):
        open_source(data_params(source="cifar100", root=str(tmp_path)))


def test_truncated_pickle(tmp_path, data_params):
    make_cifar(tmp_path)
    path = tmp_path / "test"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: refused or unreadable"):
        open_source(data_params(source="cifar100", root=str(tmp_path)))


def test_label_out_of_range(tmp_path, data_params):
    make_cifar(tmp_path, num_classes=5)
    bad = {b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 5, 1]}
    (tmp_path / "test").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"test#1: label 5 outside \[0, 5\)"):
        open_source(data_params(source="cifar100", root=str(tmp_path)))


def test_duplicate_class_names(tmp_path, data_params):
    make_cifar(tmp_path, num_classes=3)
    meta = {b"fine_label_names": [b"apple", b"pear", b"apple"]}
    (tmp_path / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(DataError, match="meta: fine_label_names has duplicates"):
        open_source(data_params(source="cifar100", root=str(tmp_path)))
