"""`liftplus predict`: probabilities, top-k, TTE, folders and their CSV/JSON, and one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from typer.testing import CliRunner

from liftplus.cli import app
from liftplus.data.transforms import test_transform as centre_crop_transform
from liftplus.errors import CheckpointError, DataError, OutputError
from liftplus.model.build import ModelConfig, build_model
from liftplus.model.checkpoint import save_checkpoint
from liftplus.predict import collect_images, load_predictor, predict_images, write_predictions

CLASSNAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]
K = len(CLASSNAMES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with every trained tensor moved off its init (so loading them matters), and its checkpoint."""
    model = build_model(ModelConfig(num_classes=K))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    model.eval()
    path = tmp_path_factory.mktemp("model") / "adapter.pt"
    save_checkpoint(path, model, extra={"classnames": CLASSNAMES, "train_counts": [50, 30, 20, 10, 5, 2]})
    return model, path


@pytest.fixture(scope="module")
def predictor(trained):
    return load_predictor(trained[1])


def random_image(seed: int, size=(50, 40), mode: str = "RGB") -> Image.Image:
    """A smooth-ish random image (``size`` is width, height) so crops and resizes change the pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 5, size[0] // 5, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    return image.convert(mode)


def direct_probabilities(model, image: Image.Image) -> torch.Tensor:
    """softmax(model(test-transformed image)), computed without the predict module."""
    pre = model.preprocess
    x = centre_crop_transform(pre.image_size, pre.mean, pre.std)(image.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)[0]


def run(*args: str):
    return CliRunner().invoke(app, ["predict", *args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_probabilities_are_the_softmax_of_the_model_logits(trained, predictor, tmp_path):
    model, _ = trained
    image = random_image(1)
    image.save(tmp_path / "x.png")
    [result] = predict_images(predictor, [tmp_path / "x.png"], k=K)

    expected = direct_probabilities(model, image)
    assert [p.label for p in result.predictions] == expected.argsort(descending=True).tolist()
    got = torch.tensor([p.probability for p in sorted(result.predictions, key=lambda p: p.label)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert sum(p.probability for p in result.predictions) == pytest.approx(1.0, abs=1e-5)
    assert [p.classname for p in result.predictions] == [CLASSNAMES[p.label] for p in result.predictions]
    assert expected.max() - expected.min() > 0.05  # the perturbed model is not uniform: the check has teeth


def test_top_k_keeps_the_k_most_probable_in_order_and_caps_k(predictor, tmp_path):
    random_image(2).save(tmp_path / "x.png")
    [full] = predict_images(predictor, [tmp_path / "x.png"], k=K)
    [three] = predict_images(predictor, [tmp_path / "x.png"], k=3)
    [capped] = predict_images(predictor, [tmp_path / "x.png"], k=100)

    probabilities = [p.probability for p in full.predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert three.predictions == full.predictions[:3]
    assert capped.predictions == full.predictions


def test_tte_is_the_softmax_of_the_mean_five_crop_logits(trained, tmp_path):
    model, path = trained
    image = random_image(3, size=(61, 45))
    image.save(tmp_path / "x.png")
    [result] = predict_images(load_predictor(path, tte=True), [tmp_path / "x.png"], k=K)

    pre = model.preprocess
    resized = TF.resize(image, pre.image_size + 24, interpolation=InterpolationMode.BICUBIC)
    normalise = T.Compose([T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    crops = torch.stack([normalise(crop) for crop in TF.five_crop(resized, pre.image_size)])
    with torch.no_grad():
        logits = model(crops)
    expected = torch.softmax(logits.mean(dim=0), dim=0)
    got = torch.tensor([p.probability for p in sorted(result.predictions, key=lambda p: p.label)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected, direct_probabilities(model, image), atol=1e-3)


def test_grayscale_rgba_cmyk_and_16_bit_images_are_read_as_rgb(trained, predictor, tmp_path):
    model, _ = trained
    gray = random_image(4, mode="L")
    files = {
        "gray.png": gray,
        "rgba.png": random_image(5, mode="RGBA"),
        "cmyk.jpg": random_image(6, mode="CMYK"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(tmp_path / "gray16.png")
    results = predict_images(predictor, [tmp_path / name for name in [*files, "gray16.png"]], k=K)

    decoded = [Image.open(tmp_path / name) for name in files] + [gray]
    for result, image in zip(results, decoded):
        by_label = torch.tensor([p.probability for p in sorted(result.predictions, key=lambda p: p.label)])
        torch.testing.assert_close(by_label, direct_probabilities(model, image), atol=1e-5, rtol=1e-4)


def test_an_exif_rotated_photo_is_classified_upright(trained, predictor, tmp_path):
    model, _ = trained
    image = random_image(7, size=(60, 35))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    image.save(tmp_path / "rotated.jpg", exif=exif)
    [result] = predict_images(predictor, [tmp_path / "rotated.jpg"], k=K)

    stored = Image.open(tmp_path / "rotated.jpg")
    upright = direct_probabilities(model, ImageOps.exif_transpose(stored))
    by_label = torch.tensor([p.probability for p in sorted(result.predictions, key=lambda p: p.label)])
    torch.testing.assert_close(by_label, upright, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(upright, direct_probabilities(model, stored), atol=1e-3)


@pytest.fixture
def folder(tmp_path):
    """Three images (one in a subfolder), plus a text file and a hidden image that are not classified."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    random_image(8).save(root / "b.png")
    random_image(9).convert("RGB").save(root / "a.JPG")
    random_image(10, mode="L").save(root / "sub" / "c.png")
    random_image(11).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_classified_recursively_in_sorted_order(folder):
    assert collect_images([folder]) == [folder / "a.JPG", folder / "b.png", folder / "sub" / "c.png"]


def test_folder_results_go_to_csv_with_one_row_per_image_and_rank(trained, folder, tmp_path):
    model, path = trained
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "predictions.csv"
    result = run(str(folder), "--model", str(path), "--top-k", "2", "--batch-size", "2", "--output", str(out))
    assert result.exit_code == 0, result.output

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "rank", "class", "label", "probability"]
    images = [folder / "a.JPG", folder / "b.png", folder / "sub" / "c.png"]
    assert [(r["path"], r["rank"]) for r in rows] == [(str(p), str(rank)) for p in images for rank in (1, 2)]
    for image_path, pair in zip(images, (rows[0:2], rows[2:4], rows[4:6])):
        expected = direct_probabilities(model, Image.open(image_path))
        top = expected.argsort(descending=True)[:2].tolist()
        assert [int(r["label"]) for r in pair] == top
        assert [r["class"] for r in pair] == [CLASSNAMES[k] for k in top]
        assert [float(r["probability"]) for r in pair] == pytest.approx(expected[top].tolist(), abs=1e-5)


def test_folder_results_go_to_json_with_one_object_per_image(predictor, folder, tmp_path):
    out = tmp_path / "predictions.json"
    results = predict_images(predictor, collect_images([folder]), k=3)
    write_predictions(out, results)

    written = json.loads(out.read_text())
    assert [item["path"] for item in written] == [str(folder / "a.JPG"), str(folder / "b.png"), str(folder / "sub" / "c.png")]
    for item, result in zip(written, results):
        assert [set(p) for p in item["predictions"]] == [{"class", "label", "probability"}] * 3
        assert [(p["class"], p["label"], p["probability"]) for p in item["predictions"]] == [
            (p.classname, p.label, p.probability) for p in result.predictions
        ]


def test_cli_prints_a_table_of_the_top_k_classes(trained, tmp_path, monkeypatch):
    model, path = trained
    image = random_image(12)
    image.save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    result = run("photo.png", "--model", str(path), "--top-k", "3")
    assert result.exit_code == 0, result.output

    expected = direct_probabilities(model, image)
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[-1:] and _is_probability(line.split()[-1])]
    assert len(rows) == 3
    top = expected.argsort(descending=True)[:3].tolist()
    assert [row[-3] for row in rows] == [CLASSNAMES[k] for k in top]
    assert [float(row[-1]) for row in rows] == pytest.approx(expected[top].tolist(), abs=1e-4)
    assert rows[0][0] == "photo.png"


def _is_probability(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0 and "." in text
    except ValueError:
        return False


def test_a_registered_version_is_resolved_through_the_registry(trained, tmp_path, monkeypatch):
    import liftplus.registry

    asked = []

    def fake_resolve(reference, repo="."):
        asked.append(reference)
        return trained[1]

    monkeypatch.setattr(liftplus.registry, "resolve_model", fake_resolve)
    random_image(13).save(tmp_path / "x.png")
    result = run(str(tmp_path / "x.png"), "--model", "liftplus-classifier@v0.0.1", "--top-k", "1")
    assert result.exit_code == 0, result.output
    assert asked == ["liftplus-classifier@v0.0.1"]


def test_a_missing_image_is_one_line(trained, tmp_path):
    assert_one_line_error(run(str(tmp_path / "nope.png"), "--model", str(trained[1])), "nope.png", "no such image")


def test_an_undecodable_image_in_a_folder_is_named_and_nothing_is_written(trained, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "predictions.csv"
    result = run(str(folder), "--model", str(trained[1]), "--output", str(out))
    assert_one_line_error(result, str(folder / "broken.png"), "not a readable image")
    assert not out.exists()


def test_an_empty_folder_is_one_line(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert_one_line_error(run(str(tmp_path / "empty"), "--model", str(trained[1])), "empty", "no images")


def test_checkpoint_problems_are_one_line(trained, tmp_path):
    random_image(14).save(tmp_path / "x.png")
    missing = tmp_path / "missing.pt"
    assert_one_line_error(run(str(tmp_path / "x.png"), "--model", str(missing)), str(missing), "not found")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained[1].read_bytes()[:3000])
    assert_one_line_error(run(str(tmp_path / "x.png"), "--model", str(truncated)), str(truncated), "corrupt")


def test_a_checkpoint_of_text_is_one_line(tmp_path):
    random_image(16).save(tmp_path / "x.png")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is no checkpoint")
    assert_one_line_error(run(str(tmp_path / "x.png"), "--model", str(garbage)), str(garbage))


def test_a_checkpoint_whose_class_names_do_not_fit_is_refused(tmp_path):
    model = build_model(ModelConfig(num_classes=3))
    path = tmp_path / "adapter.pt"
    save_checkpoint(path, model, extra={"classnames": ["a", "b"], "train_counts": [1, 1, 1]})
    with pytest.raises(CheckpointError, match="2 class names for a 3-class model"):
        load_predictor(path)


def test_an_unknown_output_format_is_refused_before_any_work(tmp_path):
    random_image(15).save(tmp_path / "x.png")
    result = run(str(tmp_path / "x.png"), "--model", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "p.xlsx"))
    assert_one_line_error(result, "p.xlsx", ".csv or .json")
    with pytest.raises(DataError, match="no such image"):
        collect_images([tmp_path / "x.png", tmp_path / "gone.jpg"])
    with pytest.raises(OutputError):
        write_predictions(tmp_path / "p.txt", [])


def test_an_output_in_a_missing_folder_is_refused_before_any_work(trained, tmp_path):
    """A typo in -o used to create the whole folder tree it named."""
    random_image(17).save(tmp_path / "x.png")
    out = tmp_path / "typo" / "deeper" / "predictions.csv"
    result = run(str(tmp_path / "x.png"), "--model", str(trained[1]), "-o", str(out))
    assert_one_line_error(result, f"{out}: folder {out.parent} not found")
    assert not (tmp_path / "typo").exists()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels but holds a few bytes of them: a bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_budget_is_refused_before_decoding(trained, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(10_000, 10_000))  # 100 MP: over the 50 MP default, under PIL's hard limit
    result = run(str(bomb), "--model", str(trained[1]))
    assert_one_line_error(result, f"{bomb}: too large: 10000x10000 is 100.0 MP, over the 50 MP budget")

    small = tmp_path / "small.png"
    random_image(18, size=(100, 80)).save(small)
    result = run(str(small), "--model", str(trained[1]), "--max-pixels", "7999")
    assert_one_line_error(result, f"{small}: too large: 100x80 is 0.0 MP, over the 0.007999 MP budget")
    assert run(str(small), "--model", str(trained[1]), "--max-pixels", "8000").exit_code == 0


def test_an_image_over_pils_own_limit_is_one_line_whatever_the_budget(trained, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))
    result = run(str(bomb), "--model", str(trained[1]), "--max-pixels", str(10**11))
    assert_one_line_error(result, f"{bomb}: too large (")


def test_folders_are_searched_for_the_image_names_the_shard_stage_reads(tmp_path):
    """One list for both (liftplus.data.images.IMAGE_EXTENSIONS): .ppm and .pgm were left out here."""
    root = tmp_path / "photos"
    root.mkdir()
    for name, mode in (("a.ppm", "RGB"), ("b.PGM", "L"), ("c.gif", "P"), ("d.webp", "RGB")):
        random_image(19, mode=mode).save(root / name, format=name.rsplit(".", 1)[1].upper().replace("PGM", "PPM"))
    (root / "e.svg").write_text("<svg/>")
    assert collect_images([root]) == [root / "a.ppm", root / "b.PGM", root / "c.gif", root / "d.webp"]
