"""What a process that serves no HTTP imports: not the API's stack.

``postline worker`` and ``postline serve``'s two children run the supervisor without
the API; FastAPI, uvicorn and the rest cost each of them 0.3-0.4 s of CPU at every
start when the supervisor imported them at its top.
"""

from __future__ import annotations

import subprocess
import sys

API_STACK = ("fastapi", "uvicorn", "starlette", "postline.api.app", "postline.submission.server")


def test_the_supervisor_and_the_child_command_leave_the_api_stack_unimported() -> None:
    probe = (
        "import sys\n"
        "import postline.cli, postline.supervisor, postline.delivery_process\n"
        f"print(','.join(m for m in {API_STACK!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "", f"imported at start: {done.stdout.strip()}"
