"""A minimal webhook receiver for benchmarks: answers 200 to every POST.

Run as its own process: ``python bench/receiver.py PORT``; prints ``ready``.
It remembers each ``email.delivered`` event it receives (the email's id and the
event's ``created_at``, when the outcome was recorded): ``GET /delivered`` answers
``{"count": N}``, and ``GET /delivered?full=1`` the whole map ``{"count": N, "emails":
{email_id: created_at}}``, for a benchmark that must see every delivery reported.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn


async def answer(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Receiver:
    """The ASGI app; ``delivered`` maps each reported email to when it was delivered."""

    def __init__(self) -> None:
        self.delivered: dict[str, str] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            answer_body: dict[str, Any] = {"count": len(self.delivered)}
            if b"full=1" in scope.get("query_string", b""):
                answer_body["emails"] = self.delivered
            await answer(send, 200, json.dumps(answer_body).encode(), b"application/json")
            return
        body = b"".join(chunks)
        if b'"email.delivered"' in body:
            event = json.loads(body)
            email_id = event.get("data", {}).get("email_id")
            if event.get("type") == "email.delivered" and email_id:
                self.delivered.setdefault(email_id, event.get("created_at", ""))
        await answer(send, 200, b"ok", b"text/plain")


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            print("ready", flush=True)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


if __name__ == "__main__":
    uvicorn.run(Receiver(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
