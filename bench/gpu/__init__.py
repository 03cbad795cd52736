"""GPU benchmark: our training and evaluation path against the reference's, end to end on one GPU.

``python -m bench.gpu [--images N] [--batch B] [--workers W] [--passes P] [--compile] [--out PATH]``
``python -m bench.gpu --cpu-smoke``  (also what runs when there is no GPU)

One command, inputs included: it writes ``--images`` synthetic 500×375 JPEGs
(``bench/photos.py``, on a process pool) as an ImageFolder tree of 10 classes,
shards them as the ``shard`` stage does (``data.source: imagefolder``,
``max_short_side: 256``), then measures, each arm in its own process on the same GPU,
open_clip ViT-B-16 (random init) at 224 px, batch 128, AdaptFormer + cosine
head for K = 1000 classes (labels are the folders' 10; the logit-adjusted
loss's prior pads the 990 empty classes with one image each — its cost does
not depend on the values):

* ``reference``: ``torchvision.datasets.ImageFolder`` + PIL +
  ``RandomResizedCrop(224, bicubic)`` + ``ToTensor`` + ``Normalize`` in a
  ``DataLoader`` (``pin_memory``, the same workers), the model with open_clip's
  stock attention (``sdpa: false``), fp16 autocast + ``GradScaler``, eager,
  ``SGD`` (momentum 0.9, weight decay 5e-4, torch's default implementation);
* ``ours``: what ``liftplus.training.loop.fit`` runs with the project's defaults:
  ``ShardIndex`` over the shards with ``train_input`` (MDA; ``input: auto``,
  i.e. uint8 crops normalised on the GPU by ``finish_batch``), ``make_loader``
  (pinned, prefetch 4, persistent workers), fused attention (``sdpa: true``),
  fp16 autocast with a GradScaler (``precision: auto``), fused SGD, ``set_determinism`` as ``fit`` calls it;
* ``model_only``: ``ours``' step on one synthetic batch already on the GPU:
  the ceiling the input pipeline can reach;
* ``eval``: ``predict_logits``' loop (``inference_mode``, fp16 weights) over the shards
  with ``eval_input``, batch 256 (``evaluate.batch_size``'s default), centre
  crop, then TTE (five crops: the model sees 5 × 256 per batch), each after the
  resize of ``evaluate.tte_expand: null`` (``eval_resize``: short side 256, 248 with TTE);
* with ``--compile``: ``ours`` and ``model_only`` again under ``torch.compile``
  (compilation falls in the warm-up; on the GPU skipped when under 150 s of
  ``--budget`` is left).

``--input`` (default ``auto``) sets ``ours``' and ``eval``'s hand-off as
``train.input`` / ``evaluate.input`` do (``float``, ``uint8``, ``encoded``);
``--resize`` (default ``pil``) the workers' crop resizer as ``train.resize`` does.

Every step does what ``fit``'s does per batch, the ``.item()`` reads of the
loss and accuracy included (each arm pays the same host syncs). Each arm
reads one stream of batches: ``warm-up`` batches, then the timed ones, at
least ``--passes`` full passes over the photos (the photos repeat, reshuffled,
so no epoch boundary falls inside). Both counts are whole multiples of the
worker count: loader workers deliver batches round-robin, so a span of whole
rounds is timed the same whichever worker is ahead. Images/s = timed images ÷
the wall time from the end of the warm-up to the end of the last step (CUDA
synchronised at both ends). Peak memory: ``torch.cuda.max_memory_allocated``
of the arm's process (reset after the model is built); without CUDA, the
process's peak resident memory instead.

Without CUDA, or with ``--cpu-smoke``, the same code runs on the CPU with small
sizes (16 photos, batch 4, 2 workers, the tiny model at its 32 px unless
``--model`` says otherwise; all arms in one process to save imports), says so,
and writes ``bench/results-gpu-cpu-smoke.json`` rather than ``bench/results-gpu.json``.

The parent process writes the inputs and builds no model. Nothing here
imports dvc, prefect, great expectations, dvclive, gto or sklearn, so the bench
runs on a machine that has PyTorch, torchvision and a few common packages plus
the wheels of ``bench/gpu_wheels.sh`` (run there by ``bench/gpu_device.sh``).

The package, by concern (this file imports nothing: the arm processes import only what they run):

* :mod:`bench.gpu.settings`: the command line, GPU and smoke sizes, batch counts;
* :mod:`bench.gpu.inputs`: the photos (``bench.photos`` on a pool) and their shards;
* :mod:`bench.gpu.arms`: the arms; :mod:`bench.gpu.measure`: timing and peak memory in them;
* :mod:`bench.gpu.runner`: the arm processes (``python -m bench.gpu.runner``, internal);
* :mod:`bench.gpu.report`: the result file's figures and the printed summary;
* :mod:`bench.gpu.__main__`: ``main``, the run in order.
"""
