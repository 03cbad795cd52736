"""DVC stage `register`: gate the evaluation metrics, then register the model with GTO.

    python -m stages.register [--params params.yaml] [--metrics data/metrics/eval.json]
                              [--model data/model/adapter.pt] [--out data/registry/registration.json]

A failed gate prints ``error: register gate: ...`` naming the criterion, registers
nothing and exits 1, so the pipeline stops there (and retries it on the next
``dvc repro``, once the params or metrics change). A model file that is no
checkpoint or holds NaN or inf weights, and metrics holding NaN or inf anywhere,
are refused the same way, whatever the gate.

Inside a DVC experiment (``dvc exp run``; DVC sets ``DVC_EXP_NAME``) nothing is
registered: the experiment runs in a temporary copy of the repo, so tags would be
lost, and its params are not a commit a version could point to. The gate is still
checked and the outcome recorded (without failing the experiment, so that a sweep
can compare every point); apply and commit the experiment, then `dvc repro`.
"""

from __future__ import annotations

import os
from typing import Any

from liftplus.checkpoint_file import load_checkpoint
from liftplus.errors import GateFailed, exit_on_error
from liftplus.io import write_json
from liftplus.params import load_params
from liftplus.registry import check_gate, head_commit, md5_file, read_metrics, register_model
from stages import stage_parser


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser(
        "register",
        __doc__,
        metrics="data/metrics/eval.json",
        model="data/model/adapter.pt",
        out="data/registry/registration.json",
    ).parse_args(argv)
    gate = load_params(args.params).register_
    metrics = read_metrics(args.metrics)
    load_checkpoint(args.model)  # refuses a file that is no checkpoint, or holds NaN or inf weights
    record: dict[str, Any] = {"name": gate.name, "stage": gate.stage, "metrics": metrics}

    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        try:
            check_gate(metrics, gate, str(args.metrics))
            gate_result = "passed"
        except GateFailed as failed:
            gate_result = str(failed)
        record |= {
            "registered": False,
            "gate": gate_result,
            "md5": md5_file(args.model),
            "reason": f"experiment '{experiment}': apply and commit it, then `dvc repro register`",
        }
        write_json(args.out, record)
        print(f"register: not registering inside experiment '{experiment}' (gate {gate_result})")
        return

    check_gate(metrics, gate, str(args.metrics))
    version, created = register_model(gate.name, args.model, metrics, gate.stage)
    record |= {
        "registered": True,
        "gate": "passed",
        "version": version.version,
        "tag": version.tag,
        "stages": version.stages,
        "md5": version.md5,
        "model": str(args.model),
        "git_sha": head_commit(),
        "created": created,
    }
    write_json(args.out, record)
    verb = "registered" if created else "already registered"
    stages = f" in {', '.join(version.stages)}" if version.stages else ""
    print(f"register: {verb} {version.tag}{stages} (md5 {version.md5})")


if __name__ == "__main__":
    main()
