"""``liftplus preset [NAME]``: the reference's main runs as params (``presets/*.yaml``).

With no name, the presets and what each reproduces. With a name, its values written into
params.yaml in place (comments and every other line kept), or with ``--print-set-args`` the
``-S key=value`` arguments of ``dvc exp run`` that set them for one experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from liftplus.params import DEFAULT_PARAMS_FILE
from liftplus.presets import (
    PRESETS_DIR,
    apply_preset,
    check_params,
    load_preset,
    preset_names,
    set_args,
    shell_line,
    with_root,
)


def preset(
    name: Annotated[Optional[str], typer.Argument(help="the preset; none: list them")] = None,
    params: Annotated[Path, typer.Option("--params", help="the params file to write (and check against)")] = (
        DEFAULT_PARAMS_FILE
    ),
    root: Annotated[Optional[str], typer.Option("--root", help="data.root: the dataset's folder (required)")] = None,
    print_set_args: Annotated[
        bool,
        typer.Option(
            "--print-set-args",
            help="print `-S key=value ...` for `dvc exp run` instead of writing params.yaml",
        ),
    ] = False,
    presets_dir: Annotated[Path, typer.Option("--presets-dir", help="folder of the preset files")] = PRESETS_DIR,
) -> None:
    """Set params.yaml to a preset that reproduces one of the paper's runs (no NAME: list the presets)."""
    if name is None:
        presets = [load_preset(n, presets_dir) for n in preset_names(presets_dir)]
        width = max((len(p.name) for p in presets), default=0)
        for p in presets:
            typer.echo(f"{p.name.ljust(width)}  {p.description}")
        return
    chosen = load_preset(name, presets_dir)
    values = with_root(chosen, root)
    label = f"preset {chosen.name}"
    if print_set_args:
        check_params(params, values, label)  # dvc exp run -S refuses keys params.yaml lacks; say so here
        typer.echo(shell_line(set_args(values)))
        return
    changes = apply_preset(params, values, label)
    if not changes:
        typer.echo(f"{params}: already set to {label}; nothing changed")
        return
    typer.echo(f"{params}: {label}, {len(changes)} of {len(values)} values changed:")
    for dotted, old, new in changes:
        typer.echo(f"  {dotted}: {old} -> {new}")
