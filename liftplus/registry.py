"""The model registry: a metrics gate, GTO versions as git tags, and finding a version's file.

A version is an annotated git tag ``<name>@vX.Y.Z`` on the commit the pipeline ran
at (GTO's convention, so ``gto show`` and DVC's ``dvc artifacts`` understand it);
a stage is a tag ``<name>#<stage>#N``. The version tag's message is one JSON
object: the model file's path, its md5 (which is also its address in the DVC
cache) and the evaluation metrics. That makes a version self-describing: it can be
listed and its file found even before dvc.lock is committed.

One version per commit: GTO refuses a second one, so registering a *different*
model on an already registered commit is an error (commit dvc.lock first);
registering the same model again is a no-op.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from liftplus.errors import CheckpointError, DataError, GateFailed, LiftplusError
from liftplus.evaluation.metric_names import ACCURACY_KEYS, TEST_SECTION
from liftplus.io import file_digest
from liftplus.params import RegisterParams

METRIC_KEYS = ACCURACY_KEYS
"""The accuracies a version records and ``liftplus models`` shows (eval.json's ``test`` section)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as read back from its tags."""

    name: str
    version: str
    tag: str
    commit: str
    created_at: str
    stages: list[str] = field(default_factory=list)
    md5: Optional[str] = None
    path: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- metrics and the gate ---------------------------------------------------------


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Evaluation metrics from ``eval.json``: numbers (percent) or null per key.

    Python's json reads ``NaN`` and ``Infinity``; a metrics file holding one anywhere
    (an evaluation of a poisoned model, a hand edit) is refused, gate or no gate, since
    every value is copied into the version's tag.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metrics file not found (run the evaluate stage first)")
    try:
        metrics = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte at position {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    non_finite = _first_non_finite(metrics)
    if non_finite is not None:
        key, value = non_finite
        raise DataError(f"{path}: '{key}' is {value!r}, expected a finite number or null")
    return headline_metrics(metrics, path)


def headline_metrics(evaluation: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What a version records: eval.json's ``test`` section (accuracies, class counts) and how the test
    images were seen (``tte``, ``tte_expand``), so ``predict`` can see new images the same way."""
    section = evaluation.get(TEST_SECTION)
    if not isinstance(section, dict):
        raise DataError(f"{path}: no '{TEST_SECTION}' object of metrics (written by the evaluate stage)")
    for key in METRIC_KEYS:
        value = section.get(key)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not is_number:
            raise DataError(f"{path}: '{TEST_SECTION}.{key}' is {value!r}, expected a finite number or null")
    return {**section, "tte": evaluation.get("tte"), "tte_expand": evaluation.get("tte_expand")}


def _first_non_finite(document: Any) -> Optional[tuple[str, float]]:
    """(dotted key, value) of the first NaN or infinity anywhere in a JSON document, or None."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        key, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        if isinstance(value, dict):
            pending.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((f"{key}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def gate_criteria(gate: RegisterParams) -> list[tuple[str, str, float]]:
    """(metric, param name, threshold) for each criterion the params set."""
    criteria = [
        ("acc", "register.min_accuracy", gate.min_accuracy),
        ("acc_mean_class", "register.min_mean_class_accuracy", gate.min_mean_class_accuracy),
        ("acc_few", "register.min_few_accuracy", gate.min_few_accuracy),
    ]
    return [(metric, param, threshold) for metric, param, threshold in criteria if threshold is not None]


def check_gate(metrics: dict[str, Any], gate: RegisterParams, source: str = "metrics") -> None:
    """Raise GateFailed naming the first criterion the metrics miss.

    A metric that is null (e.g. ``acc_few`` when no class is few-shot) fails a gate
    that is set on it: the gate asks for a number it cannot check.
    """
    for metric, param, threshold in gate_criteria(gate):
        value = metrics.get(metric)
        if value is None:
            raise GateFailed(f"register gate: {metric} is null in {source}, but {param} requires >= {threshold:g}")
        if value < threshold:
            raise GateFailed(f"register gate: {metric} {value:.2f} < {param} {threshold:g} ({source})")


# --- registering ------------------------------------------------------------------


def md5_file(path: str | Path) -> str:
    """The md5 of a file's bytes: what DVC 3 records for it and names its cache entry by."""
    return file_digest(path, "md5")


def version_message(model_path: str, md5: str, metrics: dict[str, Any]) -> str:
    return json.dumps({"path": model_path, "md5": md5, "metrics": metrics}, sort_keys=True)


def _parse_message(message: str) -> dict[str, Any]:
    try:
        parsed = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _gto(action: str, call, *args, **kwargs):
    """Call a GTO function; report its failure as one line."""
    try:
        return call(*args, **kwargs)
    except LiftplusError:
        raise
    except Exception as exc:  # GTO and scmrepo raise many types; the user needs one line
        text = str(exc).strip().splitlines()
        raise LiftplusError(f"gto {action}: {text[0] if text else type(exc).__name__}") from None


def head_commit(repo: str | Path = ".") -> str:
    """The commit a new version would point to; one line if there is none yet."""
    from gto.registry import GitRegistry

    try:
        with GitRegistry.from_url(str(repo)) as registry:
            return registry.scm.get_rev()
    except Exception as exc:  # not a repo, no commit yet, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LiftplusError(
            f"register: {Path(repo).resolve()} has no git commit to register on ({reason}); commit the project first"
        ) from None


def registered_versions(repo: str | Path = ".", name: Optional[str] = None) -> list[ModelVersion]:
    """Every registered version (of ``name``, or of every artifact), oldest first."""
    from gto import api

    if not Path(repo).is_dir():  # GTO would take it for a URL and try to clone it
        raise LiftplusError(f"{repo}: no such directory (expected a git repository)")
    known = _gto("show", api.show, str(repo))
    names = [n for n in sorted(known) if name is None or n == name]
    versions: list[ModelVersion] = []
    for artifact in names:
        for shown in _gto("show", api.show, str(repo), artifact, registered_only=True):
            registrations = shown.get("registrations") or []
            if not registrations:
                continue
            registration = registrations[0]
            details = _parse_message(registration.get("message", ""))
            stages = [s["stage"] for s in shown.get("stages") or [] if s.get("is_active", True)]
            versions.append(
                ModelVersion(
                    name=artifact,
                    version=shown["version"],
                    tag=registration.get("tag") or f"{artifact}@{shown['version']}",
                    commit=shown["commit_hexsha"],
                    created_at=registration["created_at"].isoformat(),
                    stages=sorted(stages),
                    md5=details.get("md5"),
                    path=details.get("path"),
                    metrics=details.get("metrics") or {},
                )
            )
    return sorted(versions, key=lambda v: (v.name, v.created_at, v.version))


def register_model(
    name: str,
    model_path: str | Path,
    metrics: dict[str, Any],
    stage: Optional[str] = None,
    repo: str | Path = ".",
) -> tuple[ModelVersion, bool]:
    """Register the model as a new version of ``name`` on the repo's HEAD; assign ``stage``.

    A relative ``model_path`` is relative to ``repo``; the tag records it that way.

    Returns the version and whether it was created now (False: HEAD already had
    this very model registered). Call :func:`check_gate` first.
    """
    from gto import api

    repo = Path(repo)
    model = Path(model_path)
    model_file = model if model.is_absolute() else repo / model
    if not model_file.is_file():
        raise CheckpointError(f"{model}: model file not found (run the train stage first)")
    try:
        recorded_path = model_file.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        recorded_path = str(model_file.resolve())
    md5 = md5_file(model_file)
    head = head_commit(repo)
    existing = next((v for v in registered_versions(repo, name) if v.commit == head), None)
    created = existing is None
    if existing is not None and existing.md5 != md5:
        raise LiftplusError(
            f"register: commit {head[:8]} already has {existing.tag} for another model "
            f"(md5 {existing.md5}); commit dvc.lock for this model, then register again"
        )
    if existing is None:
        _gto("register", api.register, str(repo), name, "HEAD", message=version_message(recorded_path, md5, metrics))
    version = next(v for v in registered_versions(repo, name) if v.commit == head)
    if stage and stage not in version.stages:
        _gto(
            "assign",
            api.assign,
            str(repo),
            name,
            stage,
            version=version.version,
            message=f"Assigning stage {stage} to {name} {version.version}",
        )
        version = next(v for v in registered_versions(repo, name) if v.commit == head)
    return version, created


# --- finding a version's file -----------------------------------------------------


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or Path(text).suffix in {".pt", ".pth", ".bin", ".safetensors"}


def find_version(reference: str, repo: str | Path = ".", name: Optional[str] = None) -> ModelVersion:
    """The version a reference names: ``v1.2.3``, ``NAME@v1.2.3``, ``NAME@latest``,
    a stage (``prod``, ``NAME#prod``: the version most recently assigned to it), or
    ``latest``. ``name`` is needed only when several artifacts are registered."""
    from gto.constants import parse_shortcut

    shortcut = parse_shortcut(reference)
    artifact = shortcut.name if shortcut.shortcut else name
    versions = registered_versions(repo, artifact)
    if not versions:
        raise CheckpointError(
            f"model '{reference}': no registered versions{f' of {artifact}' if artifact else ''} in {repo}"
        )
    artifacts = sorted({v.name for v in versions})
    if len(artifacts) > 1:
        raise CheckpointError(
            f"model '{reference}': several models are registered ({', '.join(artifacts)}); "
            f"write NAME@VERSION or NAME#STAGE"
        )
    if shortcut.shortcut:
        version, stage, latest = shortcut.version, shortcut.stage, shortcut.latest
    elif reference in ("latest", "greatest"):
        version, stage, latest = None, None, True
    elif reference.startswith("v") and reference[1:2].isdigit():
        version, stage, latest = reference, None, False
    else:
        version, stage, latest = None, reference, False

    if latest:
        return max(versions, key=lambda v: _semver_key(v.version))
    if version:
        for candidate in versions:
            if candidate.version == version:
                return candidate
        known = ", ".join(v.version for v in versions)
        raise CheckpointError(f"model '{reference}': {artifacts[0]} has no version {version} (registered: {known})")
    in_stage = [v for v in versions if stage in v.stages]
    if not in_stage:
        used = sorted({s for v in versions for s in v.stages})
        raise CheckpointError(
            f"model '{reference}': no version of {artifacts[0]} is in stage '{stage}' "
            f"(stages in use: {', '.join(used) or 'none'})"
        )
    return _latest_in_stage(in_stage, stage, repo)


def _semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("-")[0].split("+")[0].split("."))


def _latest_in_stage(candidates: list[ModelVersion], stage: str, repo: str | Path) -> ModelVersion:
    from gto import api

    name = candidates[0].name
    current = _gto("show", api.find_versions_in_stage, str(repo), name, stage)
    current = current if isinstance(current, list) else [current]
    versions = {getattr(c, "version", None) for c in current if c is not None}
    for candidate in candidates:
        if candidate.version in versions:
            return candidate
    return candidates[-1]


def cached_file(md5: str, repo: str | Path) -> Optional[Path]:
    """Where the repo's DVC cache keeps the file with this md5, as DVC itself says (its cache may
    be configured elsewhere, and its layout is DVC's to change); None when ``repo`` is no DVC repo."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as dvc_repo:
            return Path(dvc_repo.cache.local.oid_to_path(md5))
    except NotDvcRepoError:
        return None
    except Exception as exc:  # a broken config or cache: DVC raises many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{repo}: cannot open its DVC cache ({reason})") from None


def resolve_model(
    version_or_path: str | Path,
    repo: str | Path = ".",
    name: Optional[str] = None,
) -> Path:
    """A model file from a path (returned as is) or a registered version or stage."""
    return resolve_version(version_or_path, repo, name)[0]


def resolve_version(
    version_or_path: str | Path,
    repo: str | Path = ".",
    name: Optional[str] = None,
) -> tuple[Path, Optional[ModelVersion]]:
    """:func:`resolve_model`'s file and the registered version it is (None for a file path),
    from one look at the registry's tags.

    A version's file is looked up by the md5 in its tag: first in the repo's DVC
    cache, then at its recorded path in the repo if that file still has the same md5.
    """
    text = str(version_or_path)
    if Path(text).is_file():
        return Path(text), None
    if isinstance(version_or_path, Path) or _looks_like_path(text):
        raise CheckpointError(f"{text}: model file not found")
    version = find_version(text, repo, name)
    if not version.md5:
        raise CheckpointError(f"model '{text}': tag {version.tag} does not record the model's md5")
    candidate = cached_file(version.md5, repo)
    if candidate is not None and candidate.is_file():
        return candidate, version
    if version.path:
        in_repo = Path(repo) / version.path
        if in_repo.is_file() and md5_file(in_repo) == version.md5:
            return in_repo, version
    raise CheckpointError(
        f"model '{text}': {version.tag} (md5 {version.md5}) is not in the DVC cache ({candidate or 'no DVC repository here'}); "
        f"`dvc pull` or `dvc repro` it"
    )
