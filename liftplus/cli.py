"""``liftplus``: the user's entry point beside ``dvc`` and ``prefect``."""

from __future__ import annotations

import typer

from liftplus.errors import exit_on_error

app = typer.Typer(
    name="liftplus",
    help="LIFT+ long-tail fine-tuning pipeline: dataset stats, model summaries, registry, predictions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register(name: str, module: str, function: str) -> None:
    """Add a command whose implementation lives in ``liftplus.commands.<module>``."""
    import importlib

    impl = getattr(importlib.import_module(f"liftplus.commands.{module}"), function)
    app.command(name)(exit_on_error(impl))


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show full tracebacks")) -> None:
    if debug:
        import os

        os.environ["LIFTPLUS_DEBUG"] = "1"


for _name, _module, _function in (
    ("lt-stats", "lt_stats", "lt_stats"),
    ("peft-summary", "peft_summary", "peft_summary"),
    ("models", "models", "models"),
    ("predict", "predict", "predict"),
    ("preset", "preset", "preset"),
):
    _register(_name, _module, _function)
