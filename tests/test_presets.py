"""`liftplus preset`: the reference's main runs (scripts/run_main.sh, CLIP ViT-B/16 rows) as params.

The expected values are derived from the reference's own files (github.com/shijxcs/LIFT-plus)
when its mirror is on this machine, and from the hard-coded copy below everywhere; a test
checks that the copy still equals the files.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from liftplus.cli import app
from liftplus.params import load_params
from liftplus.presets import (
    PLACEHOLDER,
    PRESETS_DIR,
    hydra_value,
    load_preset,
    preset_names,
    update_params_text,
    yaml_scalar,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
MIRROR = Path(os.environ.get("LIFTPLUS_REFERENCE_REPO", "/work/.mirror/shijxcs+LIFT-plus/repo"))

PRESET_OF = {  # reference dataset (scripts/run_main.sh `-d`) -> preset
    "imagenet_lt": "imagenet-lt",
    "places_lt": "places-lt",
    "inat2018": "inat2018",
    "cifar100_ir100": "cifar100-lt-ir100",
    "cifar100_ir50": "cifar100-lt-ir50",
    "cifar100_ir10": "cifar100-lt-ir10",
}
LIST_FOLDER = {"imagenet_lt": "imagenet-lt", "places_lt": "places-lt", "inat2018": "inat2018"}
DATASET_MODULE = {"imagenet_lt": "imagenet_lt", "places_lt": "places_lt", "inat2018": "inat2018"}

# ------------------------------------------------------------------ the reference, hard-coded
# Copied from github.com/shijxcs/LIFT-plus (HEAD of the mirror); file:line of each value.
REFERENCE: dict[str, Any] = {
    "defaults": {  # utils/config.py
        "seed": 0,  # utils/config.py:12  _C.seed = 0
        "deterministic": True,  # utils/config.py:13
        "prec_train": "amp",  # utils/config.py:16
        "prec_test": "fp16",  # utils/config.py:17
        "num_epochs": 5,  # utils/config.py:19
        "batch_size": 128,  # utils/config.py:20
        "accum_step": 1,  # utils/config.py:21
        "lr": 0.02,  # utils/config.py:22
        "weight_decay": 5e-4,  # utils/config.py:23
        "momentum": 0.9,  # utils/config.py:24
        "loss_type": "LA",  # utils/config.py:25
        "mda": True,  # utils/config.py:27
        "mda_func": "convex",  # utils/config.py:28
        "tte": False,  # utils/config.py:29
        "expand": None,  # utils/config.py:30
        "classifier_scale": 25,  # utils/config.py:41
        "classifier_init": "semantic",  # utils/config.py:42
    },
    "runs": {  # scripts/run_main.sh, `-b clip_vit_b16 -m lift+` rows: (training opts, test opts)
        "imagenet_lt": ({}, {"test_only": True, "tte": True}),  # lines 2-3
        "places_lt": ({}, {"test_only": True, "tte": True}),  # lines 6-7
        "inat2018": ({"num_epochs": 15}, {"num_epochs": 15, "test_only": True, "tte": True}),  # lines 14-15
        "cifar100_ir100": ({}, {"test_only": True, "tte": True}),  # lines 22, 25
        "cifar100_ir50": ({}, {"test_only": True, "tte": True}),  # lines 23, 26
        "cifar100_ir10": ({}, {"test_only": True, "tte": True}),  # lines 24, 27
    },
    "backbone": {
        "backbone": "CLIP-ViT-B/16",
        "resolution": 224,
        "classifier_init": "semantic",
    },  # configs/backbone/clip_vit_b16.yaml
    "method": {"classifier": "CosineClassifier", "adaptformer": True},  # configs/method/lift+.yaml
    "tte_expand": 24,  # trainer.py:143  expand = cfg.expand if cfg.expand is not None else 24
    "template": "a photo of a {}.",  # trainer.py:252
    "amp_scaler": True,  # trainer.py:402  GradScaler("cuda") if cfg.prec_train == "amp"
    "la_tau": 1.0,  # utils/losses.py:97  LogitAdjustedLoss(cls_num_list, tau=1.0)
    "lists": {  # datasets/{imagenet_lt,places_lt,inat2018}.py: split_txt and class names
        "imagenet_lt": {"train": "train.txt", "test": "test.txt", "classnames": "classnames.txt"},
        "places_lt": {"train": "train.txt", "test": "test.txt", "classnames": "classnames.txt"},
        "inat2018": {"train": "train.txt", "test": "val.txt", "classnames": "categories.json"},
    },
    "cifar": {  # datasets/cifar100.py
        "rand_number": 0,  # datasets/cifar100.py:9
        "imb_factor": {"cifar100_ir10": 0.1, "cifar100_ir50": 0.02, "cifar100_ir100": 0.01},  # lines 66, 71, 76
    },
}

OUR_KNOBS = {
    # keys a preset sets that have no reference name: each pinned to the reference's behaviour
    "data.root": PLACEHOLDER,  # configs/data/*.yaml: root "Path/To/Dataset" (or torchvision's ./data)
    "data.max_short_side": 0,  # the reference reads the original files
    "data.store": "encoded",
    "model.bottleneck": None,  # v.adaptformer_dim None: set from K and L
    "train.method": "lift+",  # -m lift+
    "train.compile": False,  # eager, as the reference
    "train.resize": "pil",  # torchvision's PIL resize, as the reference's transforms
    "train.validation": "none",  # trainer.py trains on every training image and never validates
    "train.keep": "last",  # and keeps the last epoch's weights
}


# ------------------------------------------------------------------ the reference, from its files


def _git_show(path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(MIRROR), "show", f"HEAD:{path}"], check=True, capture_output=True, text=True
    ).stdout


def _parse_config(text: str) -> dict[str, Any]:
    """Top-level ``_C.key = literal`` defaults of utils/config.py."""
    values = {}
    for match in re.finditer(r"^_C\.(\w+) = (.+?)(?:\s+#.*)?$", text, re.M):
        try:
            values[match.group(1)] = ast.literal_eval(match.group(2))
        except (ValueError, SyntaxError):
            continue  # CN() sub-nodes
    return values


def _parse_runs(text: str) -> dict[str, tuple[dict, dict]]:
    runs: dict[str, list[dict]] = {}
    for line in text.splitlines():
        words = line.split()
        if words[:2] != ["python", "main.py"]:
            continue
        flags = dict(zip(words[2:8:2], words[3:8:2]))
        if flags.get("-b") != "clip_vit_b16" or flags.get("-m") != "lift+":
            continue
        opts = {key: yaml.safe_load(value) for key, value in zip(words[8::2], words[9::2])}
        runs.setdefault(flags["-d"], []).append(opts)
    result = {}
    for dataset, found in runs.items():
        train = [o for o in found if not o.get("test_only")]
        test = [o for o in found if o.get("test_only")]
        assert len(train) == len(test) == 1, (dataset, found)
        result[dataset] = (train[0], test[0])
    return result


def _parse_lists(text: str) -> dict[str, str]:
    splits = dict(re.findall(r'"(train|val|test)": "\./datasets/[^/]+/([^"]+)"', text))
    names = re.search(r'(?:classnames_txt|categories_json) = "\./datasets/[^/]+/([^"]+)"', text).group(1)
    return {"train": splits["train"], "test": splits["test"], "classnames": names}


def reference_from_mirror() -> dict[str, Any]:
    if not (MIRROR / "HEAD").is_file() or shutil.which("git") is None:
        pytest.skip(f"the reference's mirror is not at {MIRROR} (set LIFTPLUS_REFERENCE_REPO)")
    config = _parse_config(_git_show("utils/config.py"))
    backbone = yaml.safe_load(_git_show("configs/backbone/clip_vit_b16.yaml"))
    method = yaml.safe_load(_git_show("configs/method/lift+.yaml"))
    trainer = _git_show("trainer.py")
    tte = re.search(r"if cfg\.tte:\n\s+expand = cfg\.expand if cfg\.expand is not None else (\d+)", trainer)
    template = re.search(r'^\s+self\.template = "(a photo of a \{\}\.)"', trainer, re.M)
    cifar = _git_show("datasets/cifar100.py")
    return {
        "defaults": {key: config[key] for key in REFERENCE["defaults"]},
        "runs": _parse_runs(_git_show("scripts/run_main.sh")),
        "backbone": {key: backbone[key] for key in REFERENCE["backbone"]},
        "method": {"classifier": method["classifier"], "adaptformer": method["v"]["adaptformer"]},
        "tte_expand": int(tte.group(1)),
        "template": template.group(1),
        "amp_scaler": 'GradScaler("cuda") if cfg.prec_train == "amp"' in trainer,
        "la_tau": float(
            re.search(r"class LogitAdjustedLoss.*?tau=([\d.]+)", _git_show("utils/losses.py"), re.S).group(1)
        ),
        "lists": {d: _parse_lists(_git_show(f"datasets/{m}.py")) for d, m in DATASET_MODULE.items()},
        "cifar": {
            "rand_number": int(re.search(r"rand_number=(\d+)", cifar).group(1)),
            "imb_factor": {
                f"cifar100_ir{ir}": float(f)
                for ir, f in re.findall(r"class CIFAR100_IR(\d+)\b.*?imb_factor=([\d.]+)", cifar, re.S)
            },
        },
    }


# ------------------------------------------------------------------ reference -> params


BACKBONES = {"CLIP-ViT-B/16": ("ViT-B-16", "openai")}  # open_clip name and the OpenAI weights' tag
CLASSIFIERS = {"CosineClassifier": "cosine"}
TRAIN_PRECISION = {"amp": "fp16", "fp32": "fp32"}  # amp: fp16 autocast + GradScaler, as train.precision fp16
TEST_PRECISION = {"fp16": "fp16", "fp32": "fp32"}


def expected_values(ref: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The params a preset must set to reproduce ``dataset``'s main run, from the reference's values."""
    train_opts, test_opts = ref["runs"][dataset]
    cfg = {**ref["defaults"], **train_opts}
    test_cfg = {**ref["defaults"], **test_opts}
    assert test_cfg["num_epochs"] == cfg["num_epochs"]  # the test run loads the model its twin trained
    assert ref["amp_scaler"] or cfg["prec_train"] != "amp"
    name, pretrained = BACKBONES[ref["backbone"]["backbone"]]
    assert ref["method"]["adaptformer"] is True
    expand = test_cfg["expand"] if test_cfg["expand"] is not None else ref["tte_expand"]
    values = {
        "model.name": name,
        "model.pretrained": pretrained,
        "model.peft": "adaptformer",
        "model.classifier": CLASSIFIERS[ref["method"]["classifier"]],
        "model.scale": cfg["classifier_scale"],
        "model.head_init": ref["backbone"]["classifier_init"],
        "init_head.template": ref["template"],
        "train.epochs": cfg["num_epochs"],
        "train.lr": cfg["lr"],
        "train.batch_size": cfg["batch_size"],
        "train.micro_batch": cfg["batch_size"] // cfg["accum_step"],
        "train.weight_decay": cfg["weight_decay"],
        "train.momentum": cfg["momentum"],
        "train.loss": cfg["loss_type"].lower(),
        "train.tau": ref["la_tau"],
        "train.mda": cfg["mda"],
        "train.mda_schedule": cfg["mda_func"],
        "train.seed": cfg["seed"],
        "train.deterministic": cfg["deterministic"],
        "train.precision": TRAIN_PRECISION[cfg["prec_train"]],
        "evaluate.tte": test_cfg["tte"],
        "evaluate.tte_expand": expand,
        "evaluate.precision": TEST_PRECISION[test_cfg["prec_test"]],
    }
    if dataset.startswith("cifar100_ir"):
        values.update(
            {
                "data.source": "cifar100",
                "data.imbalance_ratio": round(1 / ref["cifar"]["imb_factor"][dataset]),
                "data.seed": ref["cifar"]["rand_number"],
            }
        )
    else:
        folder, files = LIST_FOLDER[dataset], ref["lists"][dataset]
        values.update(
            {
                "data.source": "split-list",
                "data.imbalance_ratio": 1,
                "data.lists": "lists",
                "data.classnames": f"lists/{folder}/{files['classnames']}",
                "data.train_list": f"lists/{folder}/{files['train']}",
                "data.val_list": None,  # the reference's runs never read a val split
                "data.test_list": f"lists/{folder}/{files['test']}",
            }
        )
    return values


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (True is not 1; 25 and 25.0 are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        return type(a) is type(b) and a == b
    return a == b


def _check_preset_matches(ref: dict[str, Any]) -> None:
    assert sorted(PRESET_OF.values()) == sorted(preset_names())
    for dataset, name in PRESET_OF.items():
        values = load_preset(name).values
        expected = {**expected_values(ref, dataset), **OUR_KNOBS}
        wrong = {k: (values.get(k, "<unset>"), v) for k, v in expected.items() if not _same(values.get(k), v)}
        assert not wrong, f"{name}: (preset, reference) {wrong}"
        assert set(values) == set(expected), f"{name}: keys without a reference value {set(values) - set(expected)}"


def test_presets_equal_the_hard_coded_reference():
    _check_preset_matches(REFERENCE)


def test_hard_coded_reference_equals_the_reference_files():
    parsed = reference_from_mirror()
    assert parsed == REFERENCE
    _check_preset_matches(parsed)


def test_shipped_class_names_are_the_reference_s():
    reference_from_mirror()  # skips without the mirror
    for ours, theirs in (("imagenet-lt", "ImageNet_LT"), ("places-lt", "Places_LT")):
        shipped = (REPO / "lists" / ours / "classnames.txt").read_text()
        assert shipped == _git_show(f"datasets/{theirs}/classnames.txt")
        assert load_preset(ours).values["data.classnames"] == f"lists/{ours}/classnames.txt"


# ------------------------------------------------------------------ the command


def run(*args: str):
    return CliRunner().invoke(app, ["preset", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, copy)
    return copy


def _key_lines(text: str) -> dict[int, tuple[str, str]]:
    """line index -> (section.key, comment) for every key line of a two-level params file."""
    found, section = {}, None
    for index, line in enumerate(text.split("\n")):
        if re.match(r"[A-Za-z_]\w*:\s*(#.*)?$", line):
            section = line.split(":")[0]
        elif m := re.match(r"  (\w+):(.*)$", line):
            comment = re.search(r"\s(#.*)$", m.group(2))
            found[index] = (f"{section}.{m.group(1)}", comment.group(1) if comment else "")
    return found


@pytest.mark.parametrize("name", list(PRESET_OF.values()))
def test_write_in_place_validates_and_keeps_every_other_byte(name: str, params_copy: Path):
    before = params_copy.read_text()
    result = run(name, "--params", str(params_copy), "--root", "/data/set")
    assert result.exit_code == 0, result.output + result.stderr

    preset = load_preset(name)
    expected = {**preset.values, "data.root": "/data/set"}
    dumped = load_params(params_copy).model_dump(by_alias=True)
    for dotted, value in expected.items():
        section, key = dotted.split(".")
        assert _same(dumped[section][key], value) or dumped[section][key] == value, dotted

    after = params_copy.read_text()
    old_lines, new_lines = before.split("\n"), after.split("\n")
    assert len(old_lines) == len(new_lines)
    keys = _key_lines(before)
    for index, (old, new) in enumerate(zip(old_lines, new_lines)):
        if old == new:
            continue
        dotted, comment = keys[index]  # only a key line may change...
        assert dotted in expected, (index, old, new)
        assert _key_lines(after)[index] == (dotted, comment)  # ...and it keeps its key and comment
        if comment:
            assert new.index("#") == old.index("#") or new.index("#") == len(new) - len(comment)

    again = run(name, "--params", str(params_copy), "--root", "/data/set")  # idempotent
    assert again.exit_code == 0 and "nothing changed" in again.output
    assert params_copy.read_text() == after


def test_write_keeps_crlf_line_endings_and_a_comment_column(params_copy: Path):
    params_copy.write_bytes(PARAMS.read_bytes().replace(b"\n", b"\r\n"))
    assert run("imagenet-lt", "--params", str(params_copy), "--root", "/data/in").exit_code == 0
    data = params_copy.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") == PARAMS.read_bytes().count(b"\n")
    assert b"  source: split-list             # fashion-mnist | cifar100" in data
    assert load_params(params_copy).data.root == "/data/in"


def test_updater_quotes_and_keeps_comments():
    text = 'data:\n  root: /a  # where\n  lists: "a # b"   # quoted hash\ntrain:\n  lr: null\n'
    new, changes = update_params_text(
        text, {"data.root": "/my data/x #1", "data.lists": "a # b", "train.lr": 1e-05}, "p.yaml"
    )
    assert new == 'data:\n  root: "/my data/x #1"  # where\n  lists: "a # b"   # quoted hash\ntrain:\n  lr: 1.0e-05\n'
    assert [c[0] for c in changes] == ["data.root", "train.lr"]
    assert yaml.safe_load(new) == {"data": {"root": "/my data/x #1", "lists": "a # b"}, "train": {"lr": 1e-05}}


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        24,
        0.02,
        5e-4,
        1e-05,
        1e20,
        "la",
        "lift+",
        "ViT-B-16",
        "/data/x",
        "yes",
        "1",
        "1.5",
        "null",
        "a: b",
        "#x",
        "x #y",
        " lead",
        "it's",
        '"q"',
        "a photo of a {}.",
        "2020-01-01",
        "ü/ß",
        "back\\slash",
        "",
    ],
)
def test_yaml_scalar_round_trips(value):
    assert _same(yaml.safe_load(f"k: {yaml_scalar(value)}")["k"], value)


@pytest.mark.parametrize(
    "value",
    [
        "/data/x",
        "/my data/x",
        "it's",
        "back\\",
        "x\\'y",
        "a\\b",
        "1",
        "true",
        "NULL",
        "~/x",
        "./rel",
        "C:\\x",
        "ü",
        "a,b",
        "[x]",
        "=",
        "a photo of a {}.",
        None,
        True,
        0.0005,
        1e-05,
        128,
    ],
)
def test_hydra_value_round_trips(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"data.root={hydra_value(value)}"])[0]
    assert _same(parsed.value(), value)


def _set_args(output: str) -> dict[str, str]:
    words = shlex.split(output)
    assert words[::2] == ["-S"] * (len(words) // 2) and len(words) % 2 == 0
    return dict(word.split("=", 1) for word in words[1::2])


@pytest.mark.parametrize("name", list(PRESET_OF.values()))
def test_print_set_args_parse_back_through_dvc(name: str, params_copy: Path):
    from dvc.utils.hydra import apply_overrides
    from hydra.core.override_parser.overrides_parser import OverridesParser

    root = "/data/my set/it's"
    result = run(name, "--print-set-args", "--root", root, "--params", str(params_copy))
    assert result.exit_code == 0, result.output + result.stderr
    assert len(result.output.strip().splitlines()) == 1
    expected = {**load_preset(name).values, "data.root": root}

    overrides = [f"{k}={v}" for k, v in _set_args(result.output).items()]
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert list(parsed) == list(expected)
    assert all(_same(parsed[k], v) or parsed[k] == v for k, v in expected.items()), (parsed, expected)

    apply_overrides(params_copy, overrides)  # what `dvc exp run -S ...` does to params.yaml
    dumped = load_params(params_copy).model_dump(by_alias=True)
    for dotted, value in expected.items():
        section, key = dotted.split(".")
        assert dumped[section][key] == value, dotted


def test_list_presets():
    result = run()
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    assert len(lines) == len(PRESET_OF) and all(len(line.split(None, 1)) == 2 for line in lines)
    assert any(line.startswith("inat2018 ") and "15 epochs" in line for line in lines)


def test_unknown_preset_is_one_line(params_copy: Path):
    for args in (["nope"], ["../params"], ["nope", "--print-set-args"]):
        line = one_error_line(run(*args, "--params", str(params_copy), "--root", "/x"))
        assert "unknown preset" in line and "imagenet-lt" in line
    assert params_copy.read_bytes() == PARAMS.read_bytes()


@pytest.mark.parametrize("mode", [[], ["--print-set-args"]])
def test_root_placeholder_needs_root(mode: list[str], params_copy: Path):
    line = one_error_line(run("cifar100-lt-ir100", *mode, "--params", str(params_copy)))
    assert f"data.root is the placeholder {PLACEHOLDER}" in line and "--root PATH" in line
    line = one_error_line(run("places-lt", *mode, "--params", str(params_copy), "--root", " "))
    assert "--root is empty" in line
    assert params_copy.read_bytes() == PARAMS.read_bytes()


@pytest.mark.parametrize("mode", [[], ["--print-set-args"]])
def test_params_missing_a_key_is_one_line(mode: list[str], params_copy: Path):
    text = "\n".join(line for line in PARAMS.read_text().split("\n") if not line.startswith("  tte_expand:"))
    params_copy.write_text(text)
    line = one_error_line(run("imagenet-lt", *mode, "--params", str(params_copy), "--root", "/x"))
    assert "to set evaluate.tte_expand" in line and str(params_copy) in line
    assert params_copy.read_text() == text


def test_result_that_does_not_validate_writes_nothing(tmp_path: Path, params_copy: Path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "batch-128.yaml").write_text("# batch 128, valid on its own\ntrain:\n  batch_size: 128\n")
    text = PARAMS.read_text().replace("  batch_size: 128\n  micro_batch: 128", "  batch_size: 192\n  micro_batch: 96")
    assert text != PARAMS.read_text()
    params_copy.write_text(text)
    result = run("batch-128", "--params", str(params_copy), "--presets-dir", str(presets))
    line = one_error_line(result)
    assert "with preset batch-128" in line and "micro_batch 96 must divide batch_size 128" in line
    assert params_copy.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "presets"]  # no temp file left


def test_bad_preset_files_are_one_line(tmp_path: Path, params_copy: Path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "typo.yaml").write_text("# a typo\ntrain:\n  lrr: 0.1\n")
    (presets / "nodesc.yaml").write_text("train:\n  lr: 0.1\n")
    (presets / "twice.yaml").write_text("# twice\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    for name, expected in (
        ("typo", "unknown key 'train.lrr'"),
        ("nodesc", "one-line description"),
        ("twice", "duplicate key 'train.lr'"),
    ):
        line = one_error_line(run(name, "--params", str(params_copy), "--presets-dir", str(presets)))
        assert expected in line, line
    assert params_copy.read_bytes() == PARAMS.read_bytes()


def test_shipped_presets_are_partial_params_files():
    for name in preset_names():
        text = (PRESETS_DIR / f"{name}.yaml").read_text()
        raw = yaml.safe_load(text)
        assert set(raw) <= {"data", "model", "init_head", "train", "evaluate"}
        assert "ViT-B-16-quickgelu" in text  # the note for a local copy of the weights
        assert load_preset(name).values["data.root"] == PLACEHOLDER
