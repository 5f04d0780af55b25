"""A send request's body is validated on the event loop when it is small (the thread
hand-off cost more than the validation) and in a worker thread when it is large (a big
attachment must not hold up the loop); a refusal is the same either way."""

from __future__ import annotations

import threading
from typing import Annotated

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, TypeAdapter

from postline.api.emails import VALIDATED_IN_PLACE_BYTES, validated


async def test_small_bodies_are_validated_on_the_loop_and_large_ones_in_a_thread() -> None:
    threads: list[int] = []

    def seen(value: str) -> str:
        threads.append(threading.get_ident())
        if value == "bad":
            raise ValueError("bad value")
        return value

    adapter = TypeAdapter(Annotated[str, AfterValidator(seen)])
    loop_thread = threading.get_ident()
    assert await validated(adapter, "ok", VALIDATED_IN_PLACE_BYTES) == "ok"
    assert await validated(adapter, "ok", VALIDATED_IN_PLACE_BYTES + 1) == "ok"
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread
    for size in (10, VALIDATED_IN_PLACE_BYTES + 1):
        with pytest.raises(RequestValidationError) as refused:
            await validated(adapter, "bad", size)
        assert refused.value.errors()[0]["loc"] == ("body",)
