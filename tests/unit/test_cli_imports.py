"""``postline --version`` and ``--help`` answer without loading the whole application.

The application pulls in the API, the engine, Alembic and every driver: seconds on a
small machine, paid by every short command. The check runs in a fresh interpreter so
that what other tests imported cannot hide an import at the top of the CLI.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("postline.app", "postline.api.app", "alembic", "fastapi", "postline.delivery.engine")


def test_the_cli_module_leaves_the_application_unloaded() -> None:
    probe = f"import sys, postline.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""
