"""What a process imports at start: not what it will not use.

``postline worker`` and ``postline serve``'s two children run the supervisor without
the API; FastAPI, uvicorn and the rest cost each of them 0.3-0.4 s of CPU at every
start when the supervisor imported them at its top. An installation without Redis
(the default) never needs the Redis client, 40-45 ms per process.
"""

from __future__ import annotations

import subprocess
import sys

API_STACK = ("fastapi", "uvicorn", "starlette", "postline.api.app", "postline.submission.server")


def imported(modules: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that Postline's start-up modules import, in a fresh interpreter."""
    probe = (
        "import sys\n"
        "import postline.app, postline.cli, postline.supervisor, postline.delivery_process\n"
        f"print(','.join(m for m in {modules!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return [name for name in done.stdout.strip().split(",") if name]


def test_the_supervisor_and_the_child_command_leave_the_api_stack_unimported() -> None:
    assert imported(API_STACK) == []


def test_the_redis_client_is_imported_only_for_a_redis_queue() -> None:
    assert imported(("redis", "postline.queue.redis")) == []
