"""Run a stage the way a user does and check what they see after a fault.

A stage runs either as its own process (``python -m stages.<name> ...``, what
a user types) or in this test process through the same ``main`` (same code
path, same ``exit_on_error`` wrapper, same stderr), which skips the seconds of
importing torch, open_clip and torchvision that every new process pays.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from bench.common import REPO, offline_env

TEMP_MARKERS = (".tmp", ".tmp-", ".old-")
"""What atomic_path / atomic_directory name their temporaries (``.name.XXXX.tmp``, ``.name.tmp-XXXX``)."""


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        """The last line a terminal would show: progress bars are redrawn with ``\\r``."""
        lines = [line.split("\r")[-1] for line in self.stderr.rstrip("\n").split("\n")]
        lines = [line for line in lines if line.strip()]
        return lines[-1] if lines else ""


def stage_env(**extra: str) -> dict[str, str]:
    """The offline test environment; one torch thread (the 2-core CI machine is shared)."""
    env = offline_env(**{"OMP_NUM_THREADS": "1", **extra})
    if "LIFTPLUS_DEBUG" not in extra:
        env.pop("LIFTPLUS_DEBUG", None)
    return env


def run_stage(
    stage: str, *args: object, cwd: Path = REPO, timeout: float = 300, preexec_fn=None, **env: str
) -> Outcome:
    """``python -m stages.<stage> args...`` in its own process (from the repository root by default)."""
    done = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *map(str, args)],
        cwd=cwd,
        env=stage_env(PYTHONPATH=str(REPO), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Undo what a stage main changes process-wide (torch threads and determinism, signal handlers)."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    rng = torch.get_rng_state()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.set_rng_state(rng)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def invoke(stage: str, *args: object) -> Outcome:
    """``stages.<stage>.main([args...])`` in this process, with its exit status, stdout and stderr."""
    main = importlib.import_module(f"stages.{stage}").main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _process_state_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            if isinstance(exc.code, str):  # as the interpreter does: message to stderr, status 1
                print(exc.code, file=sys.stderr)
                code = 1
            else:
                code = exc.code or 0
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_one_line_error(outcome: Outcome, *needles: str) -> str:
    """Non-zero exit; the last stderr line is ``error: ...`` holding every needle; no traceback."""
    assert outcome.code != 0, f"expected a failure, got exit 0\n{outcome.stdout[-2000:]}\n{outcome.stderr[-2000:]}"
    assert "Traceback (most recent call last)" not in outcome.stderr, outcome.stderr[-3000:]
    line = outcome.last_line
    assert line.startswith("error: "), outcome.stderr[-3000:]
    for needle in needles:
        assert needle in line, f"{needle!r} not in the error line {line!r}"
    return line


def temp_leftovers(root: Path) -> list[Path]:
    """Files or folders under ``root`` named like an atomic writer's temporaries."""
    return [p for p in Path(root).rglob(".*") if any(m in p.name for m in TEMP_MARKERS)]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → content); {} when it does not exist."""
    root = Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_nothing_left(root: Path, before: dict[str, bytes] | None = None) -> None:
    """No temporaries under ``root``; its files are exactly ``before`` (default: none at all)."""
    assert temp_leftovers(root) == []
    after = tree(root)
    assert sorted(after) == sorted(before or {}), f"files changed under {root}: {sorted(after)}"
    assert after == (before or {}), f"a file under {root} changed content"


def write_params(path: Path, base: Path | None = None, **sections: dict) -> Path:
    """A params file: ``base`` (default: the repository's) with sections updated."""
    params = yaml.safe_load(Path(base or REPO / "params.yaml").read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def save_untrained_checkpoint(path: Path, params_file: Path, classnames: list[str]) -> Path:
    """A checkpoint as the train stage writes it, for a model never trained (faults need no accuracy)."""
    from liftplus.model.build import ModelConfig, build_model
    from liftplus.model.checkpoint import save_checkpoint
    from liftplus.params import load_params

    config = ModelConfig.for_method(load_params(params_file).model, "lift+", len(classnames))
    save_checkpoint(path, build_model(config), config, extra={"classnames": list(classnames)})
    return path


def shard(tmp_path: Path, base: Path, **data) -> tuple:
    params = write_params(tmp_path / "params.yaml", base, data=data)
    out = tmp_path / "out" / "shards"
    return invoke("shard", "--params", params, "--out", out), out


GIB = 1 << 30


def limit_memory(limit: int = 4 * GIB):
    """A preexec_fn capping a child process's address space (importing torch takes about 3 GiB of it here)."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def train_args(params: Path, shards: Path, head: Path, out: Path) -> list:
    """The train stage's options, every output under ``out``: model/adapter.pt, state/last.pt, live/."""
    return [
        "--params",
        params,
        "--shards",
        shards,
        "--head",
        head,
        "--out",
        out / "model" / "adapter.pt",
        "--state",
        out / "state" / "last.pt",
        "--live",
        out / "live",
    ]
