"""Every ray.* call of citypost, behind a few typed functions.

The logic above (actor shells, supervisor, post) calls these and sees only
citypost errors, so it can be tested with a fake of this module and no Ray.
A process is the driver of at most one cluster at a time (Ray's rule).

Error mapping:
- the actor cannot answer now (dead, restarting, unreachable, too slow):
  `ActorUnavailableError`; a retry after a restart may succeed;
- the actor method raised a `CitypostError`: that same error, re-raised;
- the actor method raised anything else (a bug): `ActorCallError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import ray
import ray.exceptions

from citypost.errors import (
    ActorCallError,
    ActorUnavailableError,
    CitypostError,
    FailedPreconditionError,
    InfrastructureError,
    InvalidArgumentError,
    NotFoundError,
)

LOOPBACK = "127.0.0.1"
# The token variable wins over the token file in Ray's precedence; a stale one
# in the caller's environment would override the cluster's file.
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

_LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_lock = threading.RLock()
_saved_env: dict[str, str | None] | None = None
_saved_enable_cluster: bool | None = None
_connected_address: str | None = None


class ActorState(StrEnum):
    """The GCS's view of an actor (Ray's ActorTableData.ActorState names)."""

    DEPENDENCIES_UNREADY = "DEPENDENCIES_UNREADY"
    PENDING_CREATION = "PENDING_CREATION"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


@dataclass(frozen=True)
class Actor:
    """A handle to a named actor, with the name kept for errors and logs."""

    name: str
    namespace: str
    handle: Any  # ray.actor.ActorHandle


@dataclass(frozen=True)
class ActorInfo:
    """What the GCS knows of an actor; pid is 0 while it has no worker."""

    state: ActorState
    pid: int
    num_restarts: int
    ip_address: str


# ---------------------------------------------------------------- driver


def connect(
    address: str,
    *,
    namespace: str,
    env: Mapping[str, str],
    node_ip_address: str | None = LOOPBACK,
) -> None:
    """Make this process a driver of the cluster at `address`, in `namespace`.

    `env` is the cluster's `env_for_driver()`; it is put into os.environ (Ray
    reads auth settings from there) and restored by `disconnect()`. Ray's
    SIGTERM handler is undone, so the caller keeps its own shutdown handling.
    `node_ip_address` None lets Ray pick the machine's address (multi-machine).
    """
    global _saved_env, _connected_address
    if not namespace:
        raise InvalidArgumentError("namespace: a driver needs one (the post's name)")
    init_kwargs: dict[str, Any] = {}
    if node_ip_address is not None:
        init_kwargs["_node_ip_address"] = node_ip_address
    with _lock:
        if ray.is_initialized():
            raise FailedPreconditionError(
                f"already a Ray driver of {_connected_address or 'another cluster'}; "
                "disconnect first"
            )
        keys = set(env) | set(_AUTH_VARS)
        _saved_env = {k: os.environ.get(k) for k in keys}
        for var in _AUTH_VARS:
            os.environ.pop(var, None)
        os.environ.update(env)
        _reload_auth_config()
        _sync_local_only_flag()
        previous_sigterm = _sigterm_handler()
        try:
            ray.init(
                address=address,
                namespace=namespace,
                logging_level=logging.WARNING,
                log_to_driver=False,
                **init_kwargs,
            )
        except Exception as exc:
            with contextlib.suppress(Exception):  # whatever ray.init left half-started
                ray.shutdown()
            _restore_env()
            raise InfrastructureError(f"cannot connect to Ray at {address}: {exc}") from exc
        finally:
            _restore_sigterm(previous_sigterm)
        _connected_address = address


def disconnect() -> None:
    """Stop being a driver (non-detached actors of this driver die); idempotent."""
    global _connected_address
    with _lock:
        if ray.is_initialized():
            ray.shutdown()
        _restore_env()
        _connected_address = None


def is_connected() -> bool:
    return bool(ray.is_initialized())


def driver_node_ip() -> str:
    """The IP address this driver registered with (127.0.0.1 for a local post)."""
    _require_connection()
    ip: str = ray.util.get_node_ip_address()
    return ip


# ---------------------------------------------------------------- actors


def spawn(
    cls: type,
    name: str,
    *args: Any,
    max_restarts: int,
    max_task_retries: int = 0,
    num_cpus: float = 0.0,
    detached: bool = False,
    max_concurrency: int | None = None,
    ready_timeout_s: float | None = 60.0,
    **kwargs: Any,
) -> Actor:
    """Create the named actor `name` of class `cls`, or return it if it exists.

    get_if_exists: an existing actor of that name in the namespace is returned
    as it is (its constructor arguments are not applied again). Not detached by
    default, so the actors die with the driver instead of outliving the post.
    max_restarts -1 restarts forever; the supervisor bounds restarts itself.
    With `ready_timeout_s`, waits until the constructor has run.
    """
    _require_connection()
    if not name:
        raise InvalidArgumentError("name: an actor needs a name")
    if max_restarts < -1 or max_task_retries < -1:
        raise InvalidArgumentError("max_restarts and max_task_retries must be >= -1")
    options: dict[str, Any] = {
        "name": name,
        "get_if_exists": True,
        "max_restarts": max_restarts,
        "max_task_retries": max_task_retries,
        "num_cpus": num_cpus,
    }
    if detached:
        options["lifetime"] = "detached"
    if max_concurrency is not None:
        options["max_concurrency"] = max_concurrency
    namespace = _namespace()
    handle = _live_named_handle(name, namespace)
    if handle is None:
        try:
            handle = _remote_class(cls).options(**options).remote(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"cannot spawn actor {name!r}: {exc}") from exc
    actor = Actor(name=name, namespace=namespace, handle=handle)
    if ready_timeout_s is not None:
        _get(actor, "__ray_ready__", handle.__ray_ready__.remote(), ready_timeout_s)
    return actor


def get_actor(name: str, namespace: str | None = None) -> Actor:
    """The live named actor `name` (in this driver's namespace by default)."""
    _require_connection()
    ns = namespace if namespace is not None else _namespace()
    handle = _live_named_handle(name, ns)
    if handle is None:
        raise NotFoundError(f"no live actor {name!r} in namespace {ns!r}")
    return Actor(name=name, namespace=ns, handle=handle)


def call(actor: Actor, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
    """Call `actor.method(*args, **kwargs)` and wait up to `timeout_s` for its result."""
    ref = _submit(actor, method, args, kwargs)
    return _get(actor, method, ref, timeout_s)


def call_many(
    requests: Sequence[tuple[Actor, str, tuple[Any, ...]]], timeout_s: float
) -> list[Any]:
    """Send every (actor, method, args) at once; results in request order.

    A failed request yields its CitypostError as the value instead of raising,
    so one restarting actor never hides the others' answers. All share one
    deadline of `timeout_s` from now.
    """
    deadline = time.monotonic() + timeout_s
    pending: list[Any] = []
    for actor, method, args in requests:
        try:
            pending.append(_submit(actor, method, args, {}))
        except CitypostError as exc:
            pending.append(exc)
    results: list[Any] = []
    for (actor, method, _), ref in zip(requests, pending, strict=True):
        if isinstance(ref, CitypostError):
            results.append(ref)
            continue
        try:
            results.append(_get(actor, method, ref, max(0.0, deadline - time.monotonic())))
        except CitypostError as exc:
            results.append(exc)
    return results


async def call_async(actor: Actor, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
    """`call` for asyncio code: awaits the result without blocking the loop.

    On timeout the call is abandoned, not cancelled: the actor may still run it.
    """
    ref = _submit(actor, method, args, kwargs)
    try:
        return await asyncio.wait_for(_await_ref(ref), timeout_s)
    except TimeoutError as exc:
        raise ActorUnavailableError(
            f"actor {actor.name!r}: {method} did not answer within {timeout_s:g} s",
            actor=actor.name,
        ) from exc
    except ray.exceptions.RayError as exc:
        raise _translate(actor, method, exc) from exc


def kill(actor: Actor, *, no_restart: bool = True) -> None:
    """Kill the actor's worker now; with no_restart=False Ray restarts it (if allowed)."""
    _require_connection()
    try:
        ray.kill(actor.handle, no_restart=no_restart)
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot kill {actor.name!r}: {exc}") from exc


def actor_info(actor: Actor) -> ActorInfo:
    """State, worker PID and restart count of the actor, from the GCS (not the actor)."""
    _require_connection()
    table = _actor_table(actor.handle)
    if not table:
        raise NotFoundError(f"actor {actor.name!r} is not known to the GCS")
    try:
        state = ActorState(table["State"])
    except ValueError as exc:
        raise InfrastructureError(
            f"actor {actor.name!r}: unknown state {table['State']!r}"
        ) from exc
    return ActorInfo(
        state=state,
        pid=int(table["Pid"]),
        num_restarts=int(table["NumRestarts"]),
        ip_address=str(table["Address"]["IPAddress"]),
    )


def actor_pid(actor: Actor) -> int:
    """PID of the actor's current worker process."""
    info = actor_info(actor)
    if info.state is not ActorState.ALIVE or info.pid <= 0:
        raise ActorUnavailableError(
            f"actor {actor.name!r} has no worker now (state {info.state})", actor=actor.name
        )
    return info.pid


# ---------------------------------------------------------------- internals


def _actor_table(handle: Any) -> dict[str, Any]:
    """The GCS actor table entry of `handle` ({} if unknown).

    Ray's public state API needs the dashboard, which a post does not run;
    the table is read through the driver's own GCS connection instead.
    """
    from ray._private import state as ray_state

    table: dict[str, Any] = ray_state.actors(actor_id=handle._actor_id.hex())
    return table


def _live_named_handle(name: str, namespace: str) -> Any | None:
    """The handle of the named actor unless it is dead (or unknown): None then."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
    table = _actor_table(handle)
    if table and table.get("State") != ActorState.DEAD.value:
        return handle
    # The driver caches named handles and may keep returning a dead one, which
    # also blocks reusing the name (ray-project/ray#44083); ray.kill drops it.
    with contextlib.suppress(ValueError, ray.exceptions.RayError):
        ray.kill(handle, no_restart=True)
    return None


@functools.cache
def _remote_class(cls: type) -> Any:
    # One ActorClass per Python class: ray.remote() exports the class each time.
    if hasattr(cls, "options") and hasattr(cls, "remote"):
        return cls  # already decorated with @ray.remote
    return ray.remote(cls)


def _submit(actor: Actor, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _require_connection()
    try:
        bound = getattr(actor.handle, method)
    except AttributeError as exc:
        raise InvalidArgumentError(f"actor {actor.name!r} has no method {method!r}") from exc
    try:
        return bound.remote(*args, **kwargs)
    except ray.exceptions.RayError as exc:
        raise _translate(actor, method, exc) from exc


def _get(actor: Actor, method: str, ref: Any, timeout_s: float) -> Any:
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayError as exc:
        raise _translate(actor, method, exc) from exc


async def _await_ref(ref: Any) -> Any:
    return await ref


def _translate(actor: Actor, method: str, exc: ray.exceptions.RayError) -> CitypostError:
    where = f"actor {actor.name!r}: {method}"
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, CitypostError):
            return cause
        return ActorCallError(f"{where} raised {type(cause).__name__}: {cause}")
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return ActorUnavailableError(f"{where} timed out", actor=actor.name)
    if isinstance(exc, ray.exceptions.RayActorError):
        # ActorDiedError also covers "died, restart pending": the state tells which.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ActorUnavailableError(
            f"{where}: {type(exc).__name__}: {first_line}", actor=actor.name
        )
    return ActorUnavailableError(f"{where}: {type(exc).__name__}: {exc}", actor=actor.name)


def _namespace() -> str:
    ns: str = ray.get_runtime_context().namespace
    return ns


def _require_connection() -> None:
    if not ray.is_initialized():
        raise FailedPreconditionError("not connected to Ray: call ray_api.connect first")


def _reload_auth_config() -> None:
    """Make Ray's C++ side re-read RAY_AUTH_MODE and the token.

    Both are cached per process; without this a second connect (another
    cluster, another token) would present the first cluster's token.
    """
    try:
        from ray._raylet import (  # type: ignore[attr-defined]  # not in Ray's stubs
            AuthenticationTokenLoader,
            Config,
        )
    except ImportError:  # an older or newer Ray without these: nothing cached to reset
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _restore_env() -> None:
    global _saved_env
    if _saved_env is None:
        return
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved_env = None
    _reload_auth_config()
    _restore_local_only_flag()


def _sync_local_only_flag() -> None:
    """Apply RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER as if it had been set before `import ray`.

    Ray reads it once, at import. While it is true, ray.init rewrites both the
    address "127.0.0.1:port" and _node_ip_address to the machine's network
    address, so a loopback-only head is unreachable. Setting the variable in
    connect() is too late for that import, so the constant is set here too.
    """
    global _saved_enable_cluster
    from ray._private import ray_constants

    raw = os.environ.get(_LOCAL_ONLY_VAR)
    if raw is None:
        return
    if _saved_enable_cluster is None:
        _saved_enable_cluster = bool(ray_constants.ENABLE_RAY_CLUSTER)
    ray_constants.ENABLE_RAY_CLUSTER = raw.lower() in ("1", "true")  # as Ray's env_bool


def _restore_local_only_flag() -> None:
    global _saved_enable_cluster
    if _saved_enable_cluster is None:
        return
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = _saved_enable_cluster
    _saved_enable_cluster = None


SigHandler = Callable[[int, Any], Any] | int | None


def _sigterm_handler() -> SigHandler:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def _restore_sigterm(handler: SigHandler) -> None:
    # ray.init installs sys.exit on SIGTERM (main thread only).
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
