"""One script per DVC stage (``python -m stages.<name>``): read params, call ``liftplus``, write outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from liftplus.errors import DEBUG_FLAG, DEBUG_HELP


def stage_parser(stage: str, doc: str, **paths: str) -> argparse.ArgumentParser:
    """The command line every stage shares: ``--params``, one ``--<name>`` path option per keyword
    (defaults: the stage's deps and outs in dvc.yaml), ``--debug``; the module's docstring as help."""
    parser = argparse.ArgumentParser(
        prog=f"python -m stages.{stage}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, default in {"params": "params.yaml", **paths}.items():
        parser.add_argument(f"--{name}", type=Path, default=Path(default), metavar="PATH", help=f"default: {default}")
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return parser
