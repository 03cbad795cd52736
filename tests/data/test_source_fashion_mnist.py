import gzip
import io

import numpy as np
import pytest
from PIL import Image

from fake_raw_data import make_fashion_mnist, write_idx
from liftplus.data.sources import open_source
from liftplus.data.sources.fashion_mnist import CLASSNAMES
from liftplus.errors import DataError


def decode(record) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record.image)))


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_gzip_or_plain(tmp_path, data_params, gz):
    arrays = make_fashion_mnist(tmp_path, per_class=3, test_per_class=2, gz=gz)
    source = open_source(data_params(root=str(tmp_path), imbalance_ratio=1))
    assert source.classnames == CLASSNAMES
    assert set(source.splits) == {"train", "test"}
    test = list(source.splits["test"]())
    images, labels = arrays["t10k"]
    assert [r.label for r in test] == labels.tolist()
    assert all(np.array_equal(decode(r), images[i]) for i, r in enumerate(test))
    suffix = ".gz" if gz else ""
    assert test[5].source == f"t10k-images-idx3-ubyte{suffix}#5"
    assert test[5].key == "test-00000005" and test[5].ext == "png"


def test_train_is_long_tailed_test_stays_balanced(tmp_path, data_params):
    arrays = make_fashion_mnist(tmp_path, per_class=20, test_per_class=3)
    source = open_source(data_params(root=str(tmp_path), imbalance_ratio=10, seed=0))
    train = list(source.splits["train"]())
    counts = np.bincount([r.label for r in train], minlength=10)
    assert counts.tolist() == [int(20 * 0.1 ** (i / 9)) for i in range(10)]
    assert np.bincount([r.label for r in source.splits["test"]()]).tolist() == [3] * 10
    images, labels = arrays["train"]
    for record in train[:5] + train[-5:]:
        index = int(record.source.rsplit("#", 1)[1])
        assert labels[index] == record.label
        assert np.array_equal(decode(record), images[index])
    assert len({r.key for r in train}) == len(train)


def test_missing_root_names_the_param(tmp_path, data_params):
    with pytest.raises(DataError, match=r"data\.root .*nowhere"):
        open_source(data_params(root=str(tmp_path / "nowhere")))


def test_missing_file_is_named(tmp_path, data_params):
    make_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        open_source(data_params(root=str(tmp_path)))


def test_truncated_plain_idx_file(tmp_path, data_params):
    make_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated"):
        open_source(data_params(root=str(tmp_path)))


def test_truncated_gzip_idx_file(tmp_path, data_params):
    make_fashion_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: .*truncated"):
        open_source(data_params(root=str(tmp_path)))


def test_not_an_idx_file(tmp_path, data_params):
    make_fashion_mnist(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: not an idx1-ubyte file"):
        open_source(data_params(root=str(tmp_path)))


def test_label_out_of_range(tmp_path, data_params):
    make_fashion_mnist(tmp_path, gz=False, test_per_class=2)
    labels = np.tile(np.arange(10, dtype=np.uint8), 2)
    labels[13] = 10
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte#13: label 10 outside \[0, 10\)"):
        open_source(data_params(root=str(tmp_path)))


def test_label_count_must_match_image_count(tmp_path, data_params):
    make_fashion_mnist(tmp_path, gz=False, test_per_class=2)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match="7 labels for 20 images"):
        open_source(data_params(root=str(tmp_path)))
