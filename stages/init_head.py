"""init_head stage: class-name prompts through the text tower, mapped into the image feature space."""

from __future__ import annotations

import torch

from liftplus.data.manifest import read_manifest
from liftplus.errors import exit_on_error
from liftplus.model.backbone import backbone_fingerprint, load_backbone
from liftplus.model.text import encode_text_init
from liftplus.model.timm_vit import is_timm_name
from liftplus.params import load_params
from liftplus.training.head_init import save_text_init
from stages import stage_parser


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser("init_head", __doc__, shards="data/shards", out="data/head/text_init.pt").parse_args(argv)

    params = load_params(args.params)
    manifest = read_manifest(args.shards / "manifest.json")
    classnames = manifest["classnames"]
    if is_timm_name(params.model.name):  # no text tower: an empty init (model.head_init cannot be semantic)
        weight = text_features = torch.empty(len(classnames), 0)
    else:
        backbone, _ = load_backbone(params.model.name, params.model.pretrained)
        weight, text_features = encode_text_init(
            backbone, classnames, params.init_head.template, params.init_head.batch_size, model_name=params.model.name
        )
    save_text_init(
        args.out,
        weight=weight,
        text_features=text_features,
        classnames=classnames,
        template=params.init_head.template,
        fingerprint=backbone_fingerprint(params.model.name, params.model.pretrained),
    )
    print(f"init_head: {len(classnames)} class embeddings ({weight.shape[1]}-d) → {args.out}")


if __name__ == "__main__":
    main()
