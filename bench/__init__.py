"""Benchmarks of liftplus (figures, not tests): ``python -m bench [--quick] [--only NAME,...]``.

Each module measures one thing and exposes ``run(ctx) -> dict[str, float]``;
:mod:`bench.__main__` runs them in order and writes ``bench/results.json`` and
``bench/results.md``. See ``bench/README.md`` for what every figure means.
"""
