"""One tiny command for every stage of the fake DVC project the flow tests build.

``python fake_stage.py STAGE`` writes the stage's output from params.yaml. The
``fake`` section of params.yaml makes a stage misbehave: ``fail_validate``
prints a liftplus-style ``error:`` line and exits 1; ``flaky_train`` kills the
train stage with SIGKILL on its first attempt. Every call is appended to
``$FAKE_STATE_DIR/calls.log`` so tests can count attempts.
"""

import json
import os
import signal
import sys
from pathlib import Path

import yaml

stage = sys.argv[1]
params = yaml.safe_load(Path("params.yaml").read_text())
fake = params.get("fake") or {}

attempt = 1
state_dir = os.environ.get("FAKE_STATE_DIR")
if state_dir:
    log = Path(state_dir) / "calls.log"
    previous = log.read_text().split() if log.exists() else []
    attempt = previous.count(stage) + 1
    with log.open("a") as f:
        f.write(stage + "\n")


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def accuracy(lr, loss):
    """Peaks at lr 0.01; ce beats la by 5 points."""
    return round(90.0 - 1000.0 * abs(lr - 0.01) + (5.0 if loss == "ce" else 0.0), 6)


LONGTAIL_STATS = {
    "dataset": {
        "classes": 3,
        "images": 111,
        "imbalance_ratio": 100.0,
        "classes_many": 1,
        "classes_medium": 1,
        "classes_few": 1,
    }
}


def eval_metrics(acc, tte):
    """eval.json as liftplus's evaluate writes it (the keys flows/report.py maps)."""
    return {
        "test": {
            "acc": acc,
            "acc_mean_class": round(acc - 1.25, 2),
            "acc_many": round(acc + 2.5, 2),
            "acc_medium": round(acc - 4.75, 2),
            "acc_few": round(acc - 10.5, 2),
        },
        "tte": tte,
    }


if stage == "shard":
    write("data/shards/manifest.json", json.dumps({"seed": params["data"]["seed"]}))
elif stage == "validate":
    if fake.get("fail_validate"):
        print("error: validate: class 'sandal' has 0 training images, expected at least 1", file=sys.stderr)
        sys.exit(1)
    write("data/stats/longtail.json", json.dumps(LONGTAIL_STATS))
elif stage == "init_head":
    write("data/head/text_init.pt", "head")
elif stage == "train":
    if fake.get("flaky_train") and attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    write("data/model/adapter.pt", f"lr={params['train']['lr']} loss={params['train']['loss']}")
elif stage == "evaluate":
    acc = accuracy(float(params["train"]["lr"]), params["train"]["loss"])
    write("data/metrics/eval.json", json.dumps(eval_metrics(acc, bool(params["evaluate"]["tte"]))))
    write("data/metrics/per_class.csv", f"class,train_count,accuracy\nshoe,100,{acc + 2.5}\nsandal,10,{acc - 10.5}\n")
elif stage == "register":
    write("data/registry/registration.json", json.dumps({"registered": False}))
else:
    sys.exit(f"unknown stage {stage}")
