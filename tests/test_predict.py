"""`liftplus predict`: probabilities, top-k, TTE as evaluated, folders and their CSV/JSON, unreadable
images skipped or refused, registered versions and stages, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from typer.testing import CliRunner

from liftplus.cli import app
from liftplus.data.transforms import test_transform as centre_crop_transform
from liftplus.errors import CheckpointError, DataError, OutputError
from liftplus.evaluation.predict import collect_images, load_predictor, predict_images, write_predictions
from liftplus.model.build import ModelConfig, build_model
from liftplus.model.checkpoint import save_checkpoint
from liftplus.registry import ModelVersion

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAME = "liftplus-classifier"
EVAL_METRICS = {"acc": 50.0, "acc_mean_class": 40.0, "acc_many": 60.0, "acc_medium": 30.0, "acc_few": None}
"""eval.json's ``test`` section, as the evaluate stage writes it."""

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
    return CliRunner().invoke(app, ["predict", *args], env={"COLUMNS": "200"})


def title_of(result) -> str:
    """The table's title: the first line of the output that is not blank."""
    return next(line.strip() for line in result.stdout.splitlines() if line.strip())


def csv_probabilities(path: Path) -> dict[str, torch.Tensor]:
    """Each image's probabilities by label, from a CSV written with ``--top-k`` the number of classes."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_image: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: int(r["label"])):
        by_image.setdefault(row["path"], []).append(float(row["probability"]))
    return {image: torch.tensor(values) for image, values in by_image.items()}


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


def five_crop_probabilities(model, image: Image.Image, short_side: int) -> torch.Tensor:
    """softmax(mean logits of the five crops after a bicubic resize to ``short_side``), by hand."""
    pre = model.preprocess
    resized = TF.resize(image, short_side, interpolation=InterpolationMode.BICUBIC)
    normalise = T.Compose([T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    crops = torch.stack([normalise(crop) for crop in TF.five_crop(resized, pre.image_size)])
    with torch.no_grad():
        logits = model(crops)
    return torch.softmax(logits.mean(dim=0), dim=0)


@pytest.mark.parametrize("expand, short_side", [(None, 35), (24, 56)])
def test_tte_is_the_softmax_of_the_mean_five_crop_logits(trained, tmp_path, expand, short_side):
    """The reference's TTE: resize to res + expand, five crops, logits averaged (expand None: 3 at 32 px)."""
    model, path = trained
    image = random_image(3, size=(61, 45))
    image.save(tmp_path / "x.png")
    predictor = load_predictor(path, tte=True, expand=expand)
    [result] = predict_images(predictor, [tmp_path / "x.png"], k=K)

    assert (predictor.short_side, predictor.mode) == (short_side, f"TTE, 5 crops, resize {short_side}")
    expected = five_crop_probabilities(model, image, short_side)
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
    result = run(
        str(folder), "--model", str(path), "--top-k", "2", "--batch-size", "2", "--no-tte", "--output", str(out)
    )
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
    assert [item["path"] for item in written] == [
        str(folder / "a.JPG"),
        str(folder / "b.png"),
        str(folder / "sub" / "c.png"),
    ]
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
    result = run("photo.png", "--model", str(path), "--top-k", "3", "--no-tte")
    assert result.exit_code == 0, result.output
    assert title_of(result) == f"{path} (centre crop, resize 36)"

    expected = direct_probabilities(model, image)
    rows = [
        line.split() for line in result.stdout.splitlines() if line.split()[-1:] and _is_probability(line.split()[-1])
    ]
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


def fake_version(version: str = "v0.0.1", stages=(), **metrics) -> ModelVersion:
    return ModelVersion(
        name=NAME,
        version=version,
        tag=f"{NAME}@{version}",
        commit="0" * 40,
        created_at="2025-01-01T00:00:00",
        stages=list(stages),
        md5="0" * 32,
        path="data/model/adapter.pt",
        metrics=metrics,
    )


@pytest.fixture
def registry(trained, monkeypatch):
    """The registry answers every reference with ``fake.version`` and its file the trained checkpoint."""
    import liftplus.registry

    asked = []
    fake = type("Fake", (), {"version": fake_version(stages=["prod"], acc=50.0, tte=False)})

    def fake_resolve(reference, repo=".", name=None):
        asked.append(reference)
        return trained[1], fake.version

    monkeypatch.setattr(liftplus.registry, "resolve_version", fake_resolve)
    fake.asked = asked
    return fake


@pytest.mark.parametrize(
    "reference, title",
    [
        ("v0.0.1", f"{NAME}@v0.0.1"),
        (f"{NAME}@v0.0.1", f"{NAME}@v0.0.1"),
        ("prod", f"{NAME}#prod → v0.0.1"),
        (f"{NAME}#prod", f"{NAME}#prod → v0.0.1"),
        ("latest", f"{NAME}@latest → v0.0.1"),
    ],
)
def test_a_registered_version_is_resolved_and_named_in_the_title(registry, tmp_path, monkeypatch, reference, title):
    """The title names the version (and the stage it was asked by), never the DVC cache file it resolved to;
    the version's recorded ``tte: false`` makes it a centre crop."""
    monkeypatch.chdir(tmp_path)
    random_image(13).save(tmp_path / "x.png")
    result = run("x.png", "--model", reference, "--top-k", "1")
    assert result.exit_code == 0, result.output
    assert registry.asked == [reference]
    assert title_of(result) == f"{title} (centre crop, resize 36)"


def test_a_version_is_predicted_as_its_registration_recorded(registry, trained, tmp_path, monkeypatch):
    """The tag's ``tte`` wins over params.yaml's; its ``tte_expand``, when recorded, too."""
    monkeypatch.chdir(tmp_path)
    random_image(13).save(tmp_path / "x.png")
    write_evaluate(tmp_path / "params.yaml", tte=False, tte_expand=8)
    registry.version = fake_version(acc=50.0, tte=True)
    assert title_of(run("x.png", "-m", "v0.0.1")) == f"{NAME}@v0.0.1 (TTE, 5 crops, resize 40)"
    registry.version = fake_version(acc=50.0, tte=True, tte_expand=24)
    assert title_of(run("x.png", "-m", "v0.0.1")) == f"{NAME}@v0.0.1 (TTE, 5 crops, resize 56)"
    registry.version = fake_version(acc=50.0)  # registered before tte was recorded: params.yaml
    assert title_of(run("x.png", "-m", "v0.0.1")) == f"{NAME}@v0.0.1 (centre crop, resize 40)"
    (tmp_path / "params.yaml").unlink()  # and without params either: the reference's TTE
    assert title_of(run("x.png", "-m", "v0.0.1")) == f"{NAME}@v0.0.1 (TTE, 5 crops, resize 35)"
    assert title_of(run("x.png", "-m", "v0.0.1", "--no-tte")) == f"{NAME}@v0.0.1 (centre crop, resize 36)"


# --- TTE as the model was evaluated ---------------------------------------------------------------


def write_evaluate(path: Path, **evaluate) -> None:
    path.write_text(yaml.safe_dump({"evaluate": evaluate}, sort_keys=False))


@pytest.fixture
def project(trained, tmp_path, monkeypatch):
    """A project folder (the working directory) with the trained model at data/model/adapter.pt and two photos."""
    (tmp_path / "data" / "model").mkdir(parents=True)
    (tmp_path / "data" / "model" / "adapter.pt").write_bytes(trained[1].read_bytes())
    (tmp_path / "photos").mkdir()
    random_image(21, size=(61, 45)).save(tmp_path / "photos" / "a.png")
    random_image(22, size=(45, 70)).save(tmp_path / "photos" / "b.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_params_with_tte_make_the_project_model_predict_with_five_crops(trained, project):
    """evaluate.tte: true → predict's default is TTE (its title says so), the same numbers as --tte;
    --no-tte → the centre crop."""
    write_evaluate(project / "params.yaml", tte=True, tte_expand=None)
    default = run("photos", "-k", str(K))
    assert default.exit_code == 0, default.output
    assert title_of(default) == "data/model/adapter.pt (TTE, 5 crops, resize 35)"

    assert run("photos", "-k", str(K), "-o", "default.csv").exit_code == 0
    assert run("photos", "-k", str(K), "--tte", "-o", "tte.csv").exit_code == 0
    assert run("photos", "-k", str(K), "--no-tte", "-o", "centre.csv").exit_code == 0
    default, tte, centre = (csv_probabilities(project / name) for name in ("default.csv", "tte.csv", "centre.csv"))
    assert list(default) == ["photos/a.png", "photos/b.png"]
    model = trained[0]
    for image in default:
        torch.testing.assert_close(default[image], tte[image], atol=0, rtol=0)
        by_hand = five_crop_probabilities(model, Image.open(image).convert("RGB"), 35)
        torch.testing.assert_close(default[image], by_hand, atol=1e-5, rtol=1e-4)
        centre_by_hand = direct_probabilities(model, Image.open(image))
        torch.testing.assert_close(centre[image], centre_by_hand, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(default[image], centre[image], atol=1e-3)
    assert title_of(run("photos", "--no-tte")) == "data/model/adapter.pt (centre crop, resize 36)"


def test_params_without_tte_make_the_centre_crop_the_default(project):
    write_evaluate(project / "params.yaml", tte=False, tte_expand=None)
    assert title_of(run("photos")) == "data/model/adapter.pt (centre crop, resize 36)"
    assert title_of(run("photos", "--tte")) == "data/model/adapter.pt (TTE, 5 crops, resize 35)"
    write_evaluate(project / "params.yaml", tte=False, tte_expand=8)  # an explicit expand holds in both modes
    assert title_of(run("photos")) == "data/model/adapter.pt (centre crop, resize 40)"
    assert title_of(run("photos", "--tte")) == "data/model/adapter.pt (TTE, 5 crops, resize 40)"
    assert title_of(run("photos", "-m", "./data/model/../model/adapter.pt")).endswith("(centre crop, resize 40)")


def test_without_params_or_for_another_checkpoint_the_reference_tte_is_the_default(trained, project):
    assert title_of(run("photos")) == "data/model/adapter.pt (TTE, 5 crops, resize 35)"
    write_evaluate(project / "params.yaml", tte=False, tte_expand=8)
    other = str(trained[1])  # not the project's model: params.yaml does not describe it...
    assert title_of(run("photos", "-m", other)) == f"{other} (TTE, 5 crops, resize 35)"
    write_evaluate(project / "other.yaml", tte=False, tte_expand=None)  # ...unless named with --params
    assert title_of(run("photos", "-m", other, "--params", "other.yaml")) == f"{other} (centre crop, resize 36)"


def test_a_bad_or_missing_params_file_is_one_line(project):
    assert_one_line_error(run("photos", "--params", "missing.yaml"), "missing.yaml: params file not found")
    write_evaluate(project / "params.yaml", tte=True, tte_expand=-1)
    assert_one_line_error(run("photos"), "'evaluate.tte_expand' is -1")


# --- the README's `--model prod`, with a real registry ------------------------------------------


def git(args: list[str], cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


@pytest.mark.slow
def test_predict_with_the_model_in_stage_prod(trained, tmp_path, monkeypatch):
    """The README's `liftplus predict photos/ --model prod --tte -o predictions.csv`, after the register
    stage and `gto assign liftplus-classifier --version v0.0.1 --stage prod`, in a fresh git repo."""
    repo = tmp_path / "project"
    (repo / "data" / "model").mkdir(parents=True)
    (repo / "data" / "metrics").mkdir()
    (repo / "data" / "model" / "adapter.pt").write_bytes(trained[1].read_bytes())
    (repo / "data" / "metrics" / "eval.json").write_text(json.dumps({"test": EVAL_METRICS, "tte": True}))
    params = {"evaluate": {"tte": False, "tte_expand": None}, "register": {"name": NAME, "stage": None}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "photos").mkdir()
    for name, seed in (("a.png", 31), ("b.png", 32)):
        random_image(seed).save(repo / "photos" / name)
    (repo / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    git(["init", "-q", "-b", "main"], repo)
    for key, value in (
        ("user.name", "liftplus tests"),
        ("user.email", "tests@liftplus.invalid"),
        ("tag.gpgsign", "false"),
        ("commit.gpgsign", "false"),
    ):
        git(["config", key, value], repo)
    git(["add", "-A"], repo)
    git(["commit", "-q", "-m", "project"], repo)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))
    registered = subprocess.run(
        [sys.executable, "-m", "stages.register"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert registered.returncode == 0, registered.stderr
    gto = Path(sys.executable).parent / "gto"
    promoted = subprocess.run(
        [str(gto), "assign", NAME, "--version", "v0.0.1", "--stage", "prod"], cwd=repo, capture_output=True, text=True
    )  # the README's line (`--stage`: gto wants the option)
    assert promoted.returncode == 0, promoted.stderr

    monkeypatch.chdir(repo)
    result = run("photos/", "--model", "prod", "--tte", "-o", "predictions.csv")  # the README's line
    assert result.exit_code == 0, result.output
    warning, summary = result.stderr.splitlines()
    assert warning.startswith("warning: photos/broken.jpg: not a readable image (") and warning.endswith("); skipped")
    assert summary == (
        f"predict: {NAME}#prod → v0.0.1 (TTE, 5 crops, resize 35): 2 image(s) → predictions.csv; "
        "1 unreadable image(s) skipped"
    )
    with open(repo / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["rank"]) for r in rows] == [
        (p, str(k)) for p in ("photos/a.png", "photos/b.png") for k in range(1, 6)
    ]
    for image in ("photos/a.png", "photos/b.png"):
        by_hand = five_crop_probabilities(trained[0], Image.open(image).convert("RGB"), 35)
        top = by_hand.argsort(descending=True)[:5].tolist()
        mine = [r for r in rows if r["path"] == image]
        assert [int(r["label"]) for r in mine] == top and [r["class"] for r in mine] == [CLASSNAMES[k] for k in top]
        assert [float(r["probability"]) for r in mine] == pytest.approx(by_hand[top].tolist(), abs=1e-5)

    # without --tte: as the version was evaluated, which its tag records (tte: true; params.yaml now says false)
    table = run("photos/a.png", "--model", "prod")
    assert table.exit_code == 0, table.output
    assert title_of(table) == f"{NAME}#prod → v0.0.1 (TTE, 5 crops, resize 35)"
    assert title_of(run("photos/a.png", "--model", "v0.0.1", "--no-tte")) == f"{NAME}@v0.0.1 (centre crop, resize 36)"


def test_a_missing_image_is_one_line(trained, tmp_path):
    assert_one_line_error(run(str(tmp_path / "nope.png"), "--model", str(trained[1])), "nope.png", "no such image")


def test_an_undecodable_image_in_a_folder_is_reported_and_skipped(trained, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "sub" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "predictions.csv"
    result = run(str(folder), "--model", str(trained[1]), "--no-tte", "-k", "1", "--batch-size", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {folder / 'broken.png'}: not a readable image (cannot identify image file); skipped",
        f"warning: {folder / 'sub' / 'empty.jpg'}: not a readable image (cannot identify image file); skipped",
        f"predict: {trained[1]} (centre crop, resize 36): 3 image(s) → {out}; 2 unreadable image(s) skipped",
    ]
    with open(out, newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [
            str(folder / "a.JPG"),
            str(folder / "b.png"),
            str(folder / "sub" / "c.png"),
        ]

    table = run(str(folder), "--model", str(trained[1]), "-k", "1")
    assert table.exit_code == 0, table.output
    assert str(folder / "a.JPG") in table.stdout and "broken.png" not in table.stdout
    assert table.stderr.splitlines()[-1].endswith(": 3 image(s); 2 unreadable image(s) skipped")


def test_strict_stops_at_an_undecodable_image_and_writes_nothing(trained, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "predictions.csv"
    result = run(str(folder), "--model", str(trained[1]), "--strict", "--output", str(out))
    assert_one_line_error(result, f"{folder / 'broken.png'}: not a readable image (cannot identify image file)")
    assert not out.exists()


def test_an_undecodable_image_named_on_the_command_line_is_an_error(trained, folder, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "predictions.csv"
    result = run(str(tmp_path / "broken.png"), "--model", str(trained[1]))
    assert_one_line_error(result, f"{tmp_path / 'broken.png'}: not a readable image")
    result = run(str(folder), str(tmp_path / "broken.png"), "--model", str(trained[1]), "-o", str(out))
    assert_one_line_error(result, f"{tmp_path / 'broken.png'}: not a readable image")
    assert not out.exists()


def test_a_folder_of_nothing_readable_is_one_line(trained, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"not a png")
    result = run(str(tmp_path / "photos"), "--model", str(trained[1]), "-o", str(tmp_path / "p.csv"))
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == "error: none of the 1 image(s) could be read (1 skipped); nothing written"
    assert not (tmp_path / "p.csv").exists()


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
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


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
    assert_one_line_error(result, f"{bomb}: too large: Image size (10000000000 pixels) exceeds limit")


def test_an_image_over_the_budget_in_a_folder_is_skipped_as_unreadable(trained, folder):
    (folder / "bomb.png").write_bytes(png_header(10_000, 10_000))
    result = run(str(folder), "--model", str(trained[1]))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        f"warning: {folder / 'bomb.png'}: too large: 10000x10000 is 100.0 MP, over the 50 MP budget "
        "(see --max-pixels); skipped"
    )
    assert result.stderr.splitlines()[-1].endswith("; 1 unreadable image(s) skipped")
    assert_one_line_error(run(str(folder), "--model", str(trained[1]), "--strict"), f"{folder / 'bomb.png'}: too large")


def test_folders_are_searched_for_the_image_names_the_shard_stage_reads(tmp_path):
    """One list for both (liftplus.data.images.IMAGE_EXTENSIONS): .ppm and .pgm were left out here."""
    root = tmp_path / "photos"
    root.mkdir()
    for name, mode in (("a.ppm", "RGB"), ("b.PGM", "L"), ("c.gif", "P"), ("d.webp", "RGB")):
        random_image(19, mode=mode).save(root / name, format=name.rsplit(".", 1)[1].upper().replace("PGM", "PPM"))
    (root / "e.svg").write_text("<svg/>")
    assert collect_images([root]) == [root / "a.ppm", root / "b.PGM", root / "c.gif", root / "d.webp"]
