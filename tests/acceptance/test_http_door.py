"""A real ``postline serve`` at production defaults against the uploads of issue 20's
attack run: a 60 MB chunked body is refused before it is read, 401 without a key and
413 with one, and the process's memory does not grow with it. The memory is the
process's resident set (``VmRSS`` of /proc), read before and after."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, auth
from tests.harness.raw_http import chunked_upload

MB = 1024 * 1024
UPLOAD = 60 * MB
#: "A few MB": allocator noise, not a body. The attack run saw +520 MB for 200 MB.
RSS_SLACK = 8 * MB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_60_mb_chunked_uploads_are_refused_unread_and_cost_no_memory(
    install: Install, launch: Launcher
) -> None:
    server = await launch(install)
    key = await server.admin_key()
    await server.ready()
    # Warm: the code paths of both answers have run once (imports, first queries). 2 MB
    # of "x" with a key is read whole and is not JSON.
    assert (await chunked_upload(install.http_port, 2 * MB, {}))[0] == 401
    assert (await chunked_upload(install.http_port, 2 * MB, auth(key)))[0] == 400
    before = rss(server.pid)
    status, body, sent = await chunked_upload(install.http_port, UPLOAD, {})
    assert status == 401, body
    assert sent < UPLOAD, server.describe()
    anonymous = rss(server.pid)
    assert anonymous - before < RSS_SLACK, (before, anonymous)
    status, body, sent = await chunked_upload(install.http_port, UPLOAD, auth(key))
    assert status == 413, body
    assert sent < UPLOAD, server.describe()
    keyed = rss(server.pid)
    print(
        f"VmRSS before {before / MB:.1f} MB, after 401 {anonymous / MB:.1f} MB, "
        f"after 413 {keyed / MB:.1f} MB"
    )
    assert keyed - before < RSS_SLACK, (before, keyed)
    # And the server still serves.
    listed = await server.client.get("/v1/emails", headers=auth(key))
    assert listed.status_code == 200, listed.text
