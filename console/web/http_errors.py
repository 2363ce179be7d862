"""How a post's answer becomes the gateway's HTTP status: one table, both ways readable.

The posts decide (authentication, authorization, validation); the gateway only
translates their gRPC status, and keeps the post's message, which names what
was missing or wrong, for the page to show.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

HTTP_OF_GRPC: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,  # no post leads (an election) or none answers
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status for a post's gRPC status; 502 for what the gateway cannot place."""
    return HTTP_OF_GRPC.get(code, 502)
