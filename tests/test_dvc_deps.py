"""dvc.yaml lists, for every stage, each project source file the stage's script can import.

A file missing from a stage's deps is code DVC does not hash: change it and
`dvc repro` keeps the stale output as if nothing happened (the train stage
once lacked the input path that makes its batches, evaluate the loop that runs
the model). The imports are read from the source (function-level ones
included), so nothing is imported here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from liftplus.training import code_closure

REPO = Path(__file__).resolve().parents[1]
CANNOT_CHANGE_OUTPUTS = {
    "liftplus/errors.py": "error types and the one-line exit: what a failure prints, never what a stage writes",
    "stages/__init__.py": "the stages' shared command line (dvc.yaml passes no options)",
    "liftplus/offline.py": "environment switches that stop libraries calling home",
}


def import_closure(script: Path, root: Path = REPO) -> set[str]:
    return code_closure.import_closure(script, root)


def has_code(path: str) -> bool:
    body = ast.parse((REPO / path).read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_deps(stage: str, deps: list[str]) -> list[str]:
    """The files stage ``stage``'s script imports that ``deps`` does not cover."""
    return sorted(
        path
        for path in import_closure(REPO / "stages" / f"{stage}.py")
        if path not in CANNOT_CHANGE_OUTPUTS and has_code(path) and not covered(path, deps)
    )


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(stage):
    assert STAGES[stage]["cmd"] == f"python -m stages.{stage}", f"{stage}: the command is not its stage script"
    missing = missing_deps(stage, STAGES[stage]["deps"])
    assert missing == [], f"dvc.yaml: stage {stage} imports {missing} but does not list them in its deps"


def test_a_dropped_dep_is_found():
    deps = [dep for dep in STAGES["train"]["deps"] if dep not in ("liftplus/data/input_path.py", "liftplus/model")]
    missing = missing_deps("train", deps)
    assert "liftplus/data/input_path.py" in missing
    assert {"liftplus/model/peft.py", "liftplus/model/heads.py", "liftplus/model/build.py"} <= set(missing)


def test_import_closure_follows_package_function_level_and_relative_imports(tmp_path):
    files = {
        "stages/run.py": "from liftplus import a\n",
        "liftplus/__init__.py": "",
        "liftplus/a.py": "def f():\n    from .b import g\n    return g\n",
        "liftplus/b.py": "import liftplus.c.d\nimport json\n\ng = 1\n",
        "liftplus/c/__init__.py": "",
        "liftplus/c/d.py": "",
        "liftplus/unused.py": "import liftplus.a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_closure(tmp_path / "stages" / "run.py", tmp_path) == set(files) - {"liftplus/unused.py"}
