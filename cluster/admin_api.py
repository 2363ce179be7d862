"""PostAdmin: the post's own state, for operators and the SRE team."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.catalog import actor_name
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from cluster.post import Post


class PostAdminService(admin_pb2_grpc.PostAdminServicer):
    def __init__(self, post: Post) -> None:
        self._post = post

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Any
    ) -> admin_pb2.PostStatus:
        post = self._post
        feed = post.feed.stats()
        edge = post.edge.stats()
        health = post.health()
        down = set(feed.down)
        actors = []
        for key, devices in sorted(post.registry.groups().items()):
            name = actor_name(*key)
            actors.append(
                admin_pb2.ActorStatus(
                    name=name,
                    asset_class=key[0],
                    group=key[1],
                    healthy=name not in down,
                    restarts=feed.restarts.get(name, 0),
                    devices=len(devices),
                )
            )
        return admin_pb2.PostStatus(
            post=post.name,
            role="leader",
            epoch=post.epoch,
            healthy=health.healthy,
            unhealthy_reason=health.reason,
            actors=actors,
            uplinks_by_class=edge.decoded_by_class,
            dead_letters_by_reason=edge.dead_letters_by_reason,
            commands_pending=post.dispatcher.pending_commands(),
            started_at_ms=post.started_at_ms,
        )
