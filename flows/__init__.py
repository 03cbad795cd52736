"""Prefect flows that drive the DVC pipeline: run, sweep, serve on a schedule.

Importing this package first makes Prefect offline and project-local unless the
caller already chose otherwise: no analytics, no telemetry, state under
``<repo>/.prefect``. It must run before ``prefect`` is imported, which is why it
lives here and not in each flow module.
"""

from __future__ import annotations

import os
from pathlib import Path

from liftplus import offline

PROJECT_ROOT = Path(__file__).resolve().parent.parent

PREFECT_DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    # The temporary API a flow starts when no server is configured migrates its
    # database on first use; Prefect's 20 s default is too short on 2 busy cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}

offline.apply()
for _name, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
