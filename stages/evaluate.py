"""evaluate stage: test-split accuracy overall, per class and per many/medium/few group."""

from __future__ import annotations

from liftplus.data.input_path import eval_input, resolve_hand_off
from liftplus.data.loader import ShardIndex
from liftplus.data.manifest import read_manifest, shard_paths
from liftplus.errors import DataError, exit_on_error
from liftplus.evaluation.inference import predict_logits
from liftplus.evaluation.metric_names import TEST_SECTION
from liftplus.evaluation.report import check_classnames, evaluation_report
from liftplus.io import csv_text, json_text, write_texts
from liftplus.locks import output_lock
from liftplus.model.checkpoint import model_from_checkpoint
from liftplus.params import load_params
from liftplus.runtime import Distributed, pick_device
from stages import stage_parser


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("evaluate", __doc__, shards="data/shards", model="data/model/adapter.pt", out="data/metrics")
    parser.add_argument("--split", default="test", help="the manifest split to evaluate on")
    args = parser.parse_args(argv)
    with output_lock(args.out, "evaluate"):
        evaluate_stage(args)


def evaluate_stage(args) -> None:
    params = load_params(args.params).evaluate
    shard_dir = args.shards
    manifest = read_manifest(shard_dir / "manifest.json")
    if args.split not in manifest["splits"]:
        raise DataError(f"{shard_dir / 'manifest.json'}: no '{args.split}' split to evaluate on")
    classnames = manifest["classnames"]
    model, _, checkpoint = model_from_checkpoint(args.model, num_classes=len(classnames))
    check_classnames(args.model, checkpoint.get("extra", {}).get("classnames"), classnames)
    pre = model.preprocess
    device = pick_device("auto", Distributed())
    transform = eval_input(
        resolve_hand_off(params.input, device),
        pre.image_size,
        pre.mean,
        pre.std,
        tte=params.tte,
        expand=params.tte_expand,
    )
    dataset = ShardIndex(shard_paths(manifest, shard_dir, args.split), transform, num_classes=len(classnames))
    logits, labels = predict_logits(
        model, dataset, params.batch_size, params.workers, device, params.precision, prefetch=params.prefetch
    )

    report = evaluation_report(
        logits, labels, manifest["splits"]["train"]["class_counts"], classnames, params.tte, params.tte_expand
    )
    out = args.out
    write_texts(
        {  # one set: a failure leaves every previous file as it was
            out / "per_class.csv": csv_text(report["per_class"]),
            out / "predictions.csv": csv_text(report["predictions"]),
            out / "eval.json": json_text(report["metrics"]),
        }
    )
    m = report["metrics"][TEST_SECTION]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(
        f"evaluate ({args.split}, {'TTE' if params.tte else 'centre crop'}): accuracy {fmt(m['acc'])}  "
        f"mean/class {fmt(m['acc_mean_class'])}  many {fmt(m['acc_many'])}  medium {fmt(m['acc_medium'])}  "
        f"few {fmt(m['acc_few'])}"
    )


if __name__ == "__main__":
    main()
