#!/usr/bin/env bash
# Download into .whl/ (repo root, git-ignored) the wheels `python -m bench.gpu` needs on a GPU machine
# that has PyTorch, torchvision, numpy, pillow, pyyaml, regex, safetensors, huggingface-hub, timm,
# tqdm, typer, rich, pandas, filelock, fsspec and packaging but no package index: CPython 3.12,
# manylinux x86_64. Run it here (with a package index), then bench/gpu_device.sh there.
#
# Versions are this project's venv's (pydantic-core: the one pydantic pins). typing_extensions is
# brought too although the device has it: pydantic and pydantic-core need >= 4.16.0, and a newer
# copy first on the path is harmless to torch. timm is not needed (open_clip imports it only if
# there). Nothing else in these wheels' Requires-Dist is missing there (listed at the end).
#
# WHEELS_PYTHON (default 3.12, the GPU machine's) picks another CPython for the compiled wheel
# (pydantic-core): WHEELS_PYTHON=3.11 rehearses bench/gpu_device.sh in a bare venv here.
set -euo pipefail
python_version=${WHEELS_PYTHON:-3.12}
cd "$(dirname "$0")/.."

WHEELS=(
  open_clip_torch==3.3.0      # open_clip (liftplus.model)
  ftfy==6.3.1                 # open_clip's tokenizer
  wcwidth==0.9.4              # ftfy
  webdataset==1.0.2           # TarWriter (liftplus.data.shards: the shard step)
  braceexpand==0.1.7          # webdataset
  pydantic==2.14.4            # liftplus.params, liftplus.model.ModelConfig
  pydantic_core==2.50.5       # pydantic (exact pin)
  annotated-types==0.8.0      # pydantic
  typing-inspection==0.4.5    # pydantic
  typing_extensions==4.16.0   # pydantic, pydantic-core: >= 4.16.0
)

mkdir -p .whl
for wheel in "${WHEELS[@]}"; do
  python3 -m pip download --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$wheel"
done

# Every Requires-Dist of what we brought, minus extras and markers that do not apply, for a look:
# each must be on the device already or in .whl.
echo "Requires-Dist of the wheels in .whl (without extras):"
for f in .whl/*.whl; do
  { unzip -p "$f" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true; } \
    | sed "s|^|  $(basename "$f" | cut -d- -f1): |"
done

ls -l .whl
echo "total: $(du -cb .whl/*.whl | tail -1 | cut -f1) bytes ($(du -ch .whl/*.whl | tail -1 | cut -f1))"
