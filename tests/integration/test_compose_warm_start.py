"""The API's server starts the compose workers as soon as it answers, so that the first
email after a start does not wait for them (1.3 s on a 2-core machine)."""

from __future__ import annotations

from tests.harness.polling import poll
from tests.harness.postline import Factory
from tests.harness.raw_http import DEADLINE
from tests.integration.test_http_hardening import serving


async def test_the_compose_workers_are_running_before_the_first_email(
    postline_factory: Factory,
) -> None:
    async with serving(postline_factory) as postline:
        pool = postline.services.compose_pool

        async def all_running() -> bool:
            return pool.running == pool.workers

        await poll(all_running, timeout=DEADLINE, what="every compose worker to start")
