"""The post's restart intensity comes from its config (post.max_restarts, restart_window_s).

The post is built on in-process actors and never started (no broker, no Ray):
its supervision step runs alone, as the post's loop would run it each second.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from citypost.clock import SimClock
from citypost.config import load_config
from citypost.observability import setup_observability
from fleet.population import build_city
from post.post import Post
from tests.unit.test_actor_feed import InProcessPool

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.fixture
def post() -> Iterator[tuple[Post, InProcessPool]]:
    config = load_config(
        overrides={
            "city.scale": 0.0005,
            "mqtt.port": 1,  # never connected to: the post is not started
            "post.max_restarts": 2,
            "post.restart_window_s": 300.0,
            "security.tls": False,
        }
    )
    city = build_city(config.city)
    pool = InProcessPool(city.registry.groups())
    observability = setup_observability(config.observability)
    the_post = Post(
        config,
        name="intensity",
        registry=city.registry,
        pool=pool,
        clock=SimClock(datetime(2026, 1, 15, 12, 0, tzinfo=UTC), 1.0),
        observability=observability,
    )
    the_post.feed.start()
    try:
        yield the_post, pool
    finally:
        the_post.feed.stop()
        observability.shutdown()


def test_the_intensity_is_the_configured_one(post: tuple[Post, InProcessPool]) -> None:
    the_post, _ = post
    assert the_post.intensity.max_restarts == 2
    assert the_post.intensity.window_s == 300.0


async def test_more_restarts_than_configured_make_the_post_unhealthy(
    post: tuple[Post, InProcessPool],
) -> None:
    the_post, pool = post
    key = sorted(pool.actors)[0]
    for _ in range(2):  # within the limit: restored, still healthy as far as actors go
        pool.crash(key)
        await the_post._supervise()
        assert the_post.unhealthy_reason == ""
    assert the_post.feed.stats().down == []
    pool.crash(key)  # the third restart in the window is one too many
    await the_post._supervise()
    health = the_post.health()
    assert not health.healthy
    assert "more than 2 restarts in 300 s" in health.reason
