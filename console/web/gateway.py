"""The web console's HTTP gateway: the page, a JSON bridge to the posts' RPCs, and a live
event stream; a client of the posts like the CLI, with no state and no authorization of
its own.

Why in console/web/ and not api/: api/ is the post as callers see it, served inside
each post's process; the gateway is a separate process that calls the posts through
the console's leader-following client (console/client.py), as the CLI does, so it
sits beside the CLI and the page it serves. It presents its own workstation
certificate (`console.web`) to the posts; the operator's bearer token rides on every
call it makes for a browser, and the posts decide (and audit) each call exactly as
for the CLI: one authorization policy, one path.

Tokens: bearer tokens in the page's memory, sent in `Authorization`, never in
cookies, so there is no ambient credential for another site to ride on (no CSRF)
and no cookie for a script to read; a strict Content-Security-Policy (scripts
only from this origin, no inline code) keeps foreign scripts out. A reload means
logging in again; the refresh token renews the access token before it ends.

JSON bridge: `POST /api/rpc/<Service>/<Method>` takes the request message as JSON
(proto field names), calls the post (reads at the post that answered last, writes at
the leader, following it through a failover with the same idempotency key) and
answers the reply as JSON; the post's refusal keeps its message and becomes an HTTP
status (console/web/http_errors.py). Only unary methods of the operator, admin and
auth services are bridged.

Event stream: `GET /api/events` is server-sent events read with fetch (EventSource
cannot send a bearer token). Control-state events (alarms, commands, tasks,
incidents, overrides) carry `id: <epoch>:<revision>`; a reconnect with
`Last-Event-ID` resumes after that revision under the same leader, else gets a
`resync` event first (console/web/event_ids.py). A `posts` event every second tells
which post leads, its epoch and the standby's lag; a new epoch sends `resync`.

The map: `GET /api/map` gives every asset once as columns (console/web/map_view.py,
gzipped), `GET /api/map/events` streams `states` events: a snapshot of every
asset's display state and vehicle position, then what changed, at most twice a
second (the post coalesces: the latest state of each asset wins). A reconnect,
or a failover to the other post, starts with a snapshot again: the map's states
are not control state and carry no resumable id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import gzip
import hashlib
import logging
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from citypost.errors import CitypostError, InvalidArgumentError, NotFoundError
from console.client import CallFailedError, PostClient, Service
from console.failover_cli import AdminCalls, PostView
from console.web.event_ids import EventId, Resume, Snapshot, on_reconnect
from console.web.http_errors import http_status
from console.web.map_view import map_json, states_json
from console.web.vendor_sync import VENDOR_DIR
from failover.follow_client import PostUnreachableError
from protos.citypost.v1 import admin_pb2, auth_pb2, command_pb2, operator_pb2, operator_pb2_grpc

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
STATUS_EVERY_S = 1.0
STATUS_TIMEOUT_S = 2.0
RESTREAM_AFTER_S = 0.5  # a lost event stream is opened again after this pause
MAP_INTERVAL_MS = 500  # at most two updates a second per asset
GZIP_LEVEL = 6

_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)


def content_security_policy(page: str) -> str:
    """Scripts, styles, workers and data only from this origin; nothing inline but the
    page's import map, allowed by its hash (browsers take no import map from a file);
    no frames, no forms posting elsewhere."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _IMPORT_MAP.findall(page)
    )
    script = f"script-src 'self' {hashes}".rstrip()
    return (
        f"default-src 'none'; {script}; style-src 'self'; img-src 'self' data: blob:; "
        "font-src 'self'; connect-src 'self'; worker-src 'self' blob:; manifest-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_SERVICES: Mapping[str, tuple[Service, ServiceDescriptor]] = {
    "OperatorService": ("operator", operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]),
    "PostAdmin": ("admin", admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"]),
    "AuthService": ("auth", auth_pb2.DESCRIPTOR.services_by_name["AuthService"]),
}

_bearer: contextvars.ContextVar[str] = contextvars.ContextVar("bearer", default="")


@dataclass(frozen=True)
class Bridged:
    """One unary RPC the gateway forwards."""

    service: Service
    method: str
    request_type: type[Message]


def bridged_methods() -> dict[str, Bridged]:
    """`Service/Method` -> what to call, for every unary method of the bridged services."""
    out: dict[str, Bridged] = {}
    for name, (service, descriptor) in _SERVICES.items():
        for method in descriptor.methods:
            if method.client_streaming or method.server_streaming:
                continue  # WatchEvents goes through /api/events
            out[f"{name}/{method.name}"] = Bridged(
                service, method.name, GetMessageClass(method.input_type)
            )
    return out


def bearer_of(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; "" when there is none (the
    post refuses the call and says what is missing)."""
    if not authorization:
        return ""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


# A policy's command the room need not see go by: on its way or done as planned.
_ROUTINE = frozenset(
    {command_pb2.QUEUED, command_pb2.SENT, command_pb2.ACKED, command_pb2.SUPERSEDED}
)


def streamed(event: operator_pb2.Event) -> bool:
    """Whether the page gets `event`. Not the policies' routine commands (bus priority,
    lighting schedules: several a second at full scale): the page follows the operators' commands and anything that went wrong or waits for
    approval; `citypost console commands` lists them all."""
    if event.WhichOneof("kind") != "command":
        return True
    record = event.command
    return not (record.issued_by.startswith("policy:") and record.status in _ROUTINE)


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def sse(event: str, data: Mapping[str, Any], event_id: str | None = None) -> bytes:
    """One server-sent event; `data` is one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def posts_view(views: Sequence[PostView]) -> dict[str, Any]:
    """The banner's view of the posts: who leads (the highest epoch among the posts that
    say so), its epoch (0 while none leads: an election, a failover), each post's role
    and the standby's lag in control-state revisions."""
    leaders = [v for v in views if v.leads and v.status is not None]
    leader = max(leaders, key=lambda v: v.status.epoch if v.status else 0, default=None)
    posts = []
    for view in views:
        status = view.status
        posts.append(
            {
                "address": view.address,
                "post": view.name,
                "role": "leader" if view.leads else "standby" if status else "unreachable",
                "epoch": status.epoch if status else 0,
                "lag_revisions": (
                    status.lag_revisions if status and status.HasField("lag_revisions") else None
                ),
                "error": view.error,
            }
        )
    return {
        "leader": leader.name if leader else None,
        "leader_address": leader.address if leader else None,
        "epoch": leader.status.epoch if leader and leader.status else 0,
        "posts": posts,
    }


@dataclass
class Gateway:
    """What the app needs of the city: the posts and how to reach them."""

    posts: tuple[str, ...]
    channel_factory: Callable[[str], grpc.Channel]
    aio_channel_factory: Callable[[str], grpc.aio.Channel]
    timeout_s: float = 10.0
    _client: PostClient = field(init=False)
    _admin: AdminCalls = field(init=False)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        # One client for every browser: one view of who leads, one channel per post. The
        # token is the calling request's (a context variable set in the worker thread).
        self._client = PostClient(
            self.posts,
            channel_factory=self._channel,
            timeout_s=self.timeout_s,
            token=_bearer.get,
        )
        self._admin = AdminCalls(STATUS_TIMEOUT_S, channel_factory=self._channel, token=_bearer.get)

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = self.channel_factory(address)
            return channel

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    # --- calls, in worker threads --------------------------------------------------------

    def call(self, bridged: Bridged, request: Message, token: str) -> Message:
        _bearer.set(token)
        if bridged.request_type.DESCRIPTOR.fields_by_name.get("idempotency_key") is not None:
            reply: Message = self._client.write(bridged.method, request, service=bridged.service)
        else:
            reply = self._client.read(bridged.method, request, service=bridged.service)
        return reply

    def status(self, token: str) -> dict[str, Any]:
        """Every post's own word on who leads, asked at once (the banner shows a post that
        does not answer as such)."""
        _bearer.set(token)
        return posts_view(self._admin.statuses(self.posts))

    def asset_map(self, token: str) -> operator_pb2.AssetMap:
        _bearer.set(token)
        reply = self._client.read("GetAssetMap", operator_pb2.GetAssetMapRequest())
        return cast("operator_pb2.AssetMap", reply)

    def watch_states(self, token: str) -> AsyncGenerator[operator_pb2.AssetStates, None]:
        """The map's states from the first post that serves them (each post keeps its
        own board from the same uplinks): a snapshot, then changes."""
        request = operator_pb2.WatchAssetStatesRequest(interval_ms=MAP_INTERVAL_MS)
        # The stream itself, not a wrapper: closing it cancels the call at once.
        return self._first_stream(
            token, lambda stub, metadata: stub.WatchAssetStates(request, metadata=metadata)
        )

    # --- the event stream ----------------------------------------------------------------

    def watch(
        self, token: str, start_revision: int, *, on_open: Callable[[], Awaitable[None]]
    ) -> AsyncGenerator[operator_pb2.Event, None]:
        """Control-state events from the first post that opens the stream (both serve it:
        they share the store); `on_open` once it is pinned."""
        request = operator_pb2.WatchEventsRequest(start_revision=start_revision)
        return self._first_stream(
            token, lambda stub, metadata: stub.WatchEvents(request, metadata=metadata), on_open
        )

    async def _first_stream(
        self,
        token: str,
        open_call: Callable[[operator_pb2_grpc.OperatorServiceStub, Any], Any],
        on_open: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[Any, None]:
        """A server stream from the first post that answers it (UNAVAILABLE: the next);
        `on_open` once its initial metadata came (the stream is pinned)."""
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        last_error: grpc.aio.AioRpcError | None = None
        for address in self.posts:
            async with self.aio_channel_factory(address) as channel:
                call = open_call(operator_pb2_grpc.OperatorServiceStub(channel), metadata)
                try:
                    if on_open is not None:
                        await call.initial_metadata()
                        await on_open()
                    async for message in call:
                        yield message
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    last_error = error
                finally:
                    call.cancel()
        if last_error is not None:
            raise last_error


def _refusal(error: BaseException) -> JSONResponse:
    if isinstance(error, CallFailedError):
        return JSONResponse(
            {"error": error.code.name, "message": error.details, "post": error.address},
            status_code=http_status(error.code),
        )
    if isinstance(error, PostUnreachableError):
        return JSONResponse({"error": "UNAVAILABLE", "message": error.message}, status_code=503)
    if isinstance(error, CitypostError):
        code = getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)
        return JSONResponse(
            {"error": code.name, "message": error.message}, status_code=http_status(code)
        )
    raise error


def create_app(gateway: Gateway) -> FastAPI:
    """The gateway's ASGI app (served by uvicorn: console/web/serve.py)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        gateway.close()

    app = FastAPI(
        title="citypost web console",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    # The map's columns and the vendored libraries are large: gzip (never the event
    # streams: Starlette leaves text/event-stream alone).
    # Level 6, not Starlette's 9: as small within 1 % and six times faster (the full
    # city's map: 0.15 s against 0.9 s).
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=GZIP_LEVEL)
    methods = bridged_methods()
    page = (STATIC_DIR / "index.html").read_text()
    headers = SECURITY_HEADERS | {"Content-Security-Policy": content_security_policy(page)}
    app.state.content_security_policy = headers["Content-Security-Policy"]

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(headers)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    async def index() -> Response:
        return Response(page, media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/vendor", StaticFiles(directory=VENDOR_DIR), name="vendor")

    @app.post("/api/rpc/{service}/{method}")
    async def rpc(service: str, method: str, request: Request) -> Response:
        try:
            bridged = methods.get(f"{service}/{method}")
            if bridged is None:
                raise NotFoundError(
                    f"{service}/{method} is not an RPC the console may call "
                    f"(unary methods of {', '.join(sorted(_SERVICES))})"
                )
            body = await request.body()
            try:
                message = json_format.Parse(body or b"{}", bridged.request_type())
            except json_format.ParseError as error:
                raise InvalidArgumentError(
                    f"the body is not a {bridged.request_type.DESCRIPTOR.name} in JSON: {error}"
                ) from None
            token = bearer_of(request.headers.get("authorization"))
            reply = await asyncio.to_thread(gateway.call, bridged, message, token)
        except (CitypostError, CallFailedError) as error:
            return _refusal(error)
        return JSONResponse(to_json(reply))

    @app.get("/api/posts")
    async def posts(request: Request) -> JSONResponse:
        token = bearer_of(request.headers.get("authorization"))
        return JSONResponse(await asyncio.to_thread(gateway.status, token))

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        token = bearer_of(request.headers.get("authorization"))
        last = request.headers.get("last-event-id")
        return StreamingResponse(
            _event_stream(gateway, token, last),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # The map's JSON, gzipped, by map_id: the registry does not change while the posts
    # run, so it is built once (the post still answers, and authorizes, every request).
    built: dict[str, bytes] = {}

    @app.get("/api/map")
    async def asset_map(request: Request) -> Response:
        token = bearer_of(request.headers.get("authorization"))
        try:
            amap = await asyncio.to_thread(gateway.asset_map, token)
        except (CitypostError, CallFailedError) as error:
            return _refusal(error)
        body = built.get(amap.map_id)
        if body is None:
            body = built[amap.map_id] = await asyncio.to_thread(
                lambda: gzip.compress(orjson.dumps(map_json(amap)), GZIP_LEVEL)
            )
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
            return Response(body, media_type="application/json", headers=headers)
        return Response(gzip.decompress(body), media_type="application/json")

    @app.get("/api/map/events")
    async def map_events(request: Request) -> StreamingResponse:
        token = bearer_of(request.headers.get("authorization"))
        return StreamingResponse(
            _map_stream(gateway, token),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app


async def _map_stream(gateway: Gateway, token: str) -> AsyncIterator[bytes]:
    """`states` events from whichever post serves them, reopened after a loss (the next
    stream starts with a snapshot); `refused` and the end when the posts refuse."""
    while True:
        try:
            # Closed with the browser's connection: the post's stream ends with it.
            async with contextlib.aclosing(gateway.watch_states(token)) as messages:
                async for message in messages:
                    yield sse("states", states_json(message))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                yield sse("refused", {"error": code.name, "message": error.details() or ""})
                return
            log.info("map stream lost (%s): opening it again", code.name)
        await asyncio.sleep(RESTREAM_AFTER_S)


async def _event_stream(gateway: Gateway, token: str, last: str | None) -> AsyncIterator[bytes]:
    """The browser's stream: `posts` every second, control-state events with ids, and
    `resync` whenever the page must read the state afresh."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=10_000)
    leading = asyncio.Event()  # some post leads: its epoch names the events
    state: dict[str, Any] = {"epoch": 0, "last": last}

    async def watch_posts() -> None:
        while True:
            status = await asyncio.to_thread(gateway.status, token)
            state["epoch"] = status["epoch"]
            if status["epoch"]:
                leading.set()
            else:
                leading.clear()
            await queue.put(sse("posts", status))
            await asyncio.sleep(STATUS_EVERY_S)

    async def pump(epoch: int, decision: Resume | Snapshot) -> None:
        start = decision.after + 1 if isinstance(decision, Resume) else 0

        async def opened() -> None:
            # Said once the stream is pinned: what the page reads next misses nothing.
            if isinstance(decision, Snapshot):
                await queue.put(sse("resync", {"epoch": epoch, "why": decision.why}))

        async for event in gateway.watch(token, start, on_open=opened):
            event_id = str(EventId(epoch, event.revision))
            state["last"] = event_id
            if streamed(event):
                await queue.put(sse(event.WhichOneof("kind") or "event", to_json(event), event_id))

    async def new_leader(epoch: int) -> None:
        while state["epoch"] in (0, epoch):  # an election in between is not yet a change
            await asyncio.sleep(0.1)

    async def watch_events() -> None:
        while True:
            await leading.wait()
            epoch = state["epoch"]
            streaming = asyncio.create_task(pump(epoch, on_reconnect(state["last"], epoch=epoch)))
            changed = asyncio.create_task(new_leader(epoch))
            await asyncio.wait({streaming, changed}, return_when=asyncio.FIRST_COMPLETED)
            for task in (streaming, changed):
                task.cancel()
            await asyncio.gather(streaming, changed, return_exceptions=True)
            if changed.done() and not changed.cancelled():
                state["last"] = None  # a new leader: the page reads the state afresh
                continue
            error = streaming.exception() if not streaming.cancelled() else None
            if isinstance(error, grpc.aio.AioRpcError):
                code = error.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    refusal = {"error": code.name, "message": error.details() or ""}
                    await queue.put(sse("refused", refusal))
                    await queue.put(None)
                    return
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    state["last"] = None  # the history no longer reaches back: resync
                log.info("event stream lost (%s): opening it again", code.name)
            elif error is not None:
                log.error("event stream failed: %r", error)
            await asyncio.sleep(RESTREAM_AFTER_S)

    tasks = [asyncio.create_task(watch_posts()), asyncio.create_task(watch_events())]
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
