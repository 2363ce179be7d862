"""The one error root of citypost and its few meaningful kinds.

Each kind carries what its boundary needs: a gRPC status name for the APIs,
a dead-letter reason for the device edge. Boundaries translate; nothing else
inspects messages.
"""

from __future__ import annotations

from enum import StrEnum


class DeadLetterReason(StrEnum):
    """Why the edge could not turn an MQTT message into telemetry, or the gate would not
    forward a command."""

    BAD_TOPIC = "bad_topic"
    BAD_JSON = "bad_json"
    BAD_ENVELOPE = "bad_envelope"
    BAD_BASE64 = "bad_base64"
    BAD_LPP = "bad_lpp"
    BAD_LAYOUT = "bad_layout"
    UNKNOWN_DEVICE = "unknown_device"
    WRONG_FPORT = "wrong_fport"
    OVERSIZED = "oversized"
    BAD_SIGNATURE = "bad_signature"  # at the gate: not signed by a post of the city
    # At the gate: signed by a post, but of an epoch no leader holds in etcd.
    UNCONFIRMED_EPOCH = "unconfirmed_epoch"
    INTERNAL_ERROR = "internal_error"  # a bug in the edge; the message is kept for replay


class CitypostError(Exception):
    """Root of every error citypost raises on purpose."""

    grpc_status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (Ray actors): rebuild from the attributes,
        # whatever the subclass's constructor takes.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[CitypostError], message: str, state: dict[str, object]) -> CitypostError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(CitypostError):
    """Configuration that cannot run; the message names the field and the rule."""

    grpc_status = "INVALID_ARGUMENT"


class InfrastructureError(CitypostError):
    """A local component (etcd, mosquitto, Ray) is missing, failed to start or died."""

    grpc_status = "UNAVAILABLE"


class DecodeError(CitypostError):
    """A device message that cannot be decoded; it goes to the dead letters."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


class LppError(DecodeError):
    """A Cayenne LPP payload that is empty, truncated, of unknown type or out of range."""

    def __init__(self, message: str) -> None:
        super().__init__(DeadLetterReason.BAD_LPP, message)


class InvalidArgumentError(CitypostError):
    """A caller's request that is malformed; the message names the field."""

    grpc_status = "INVALID_ARGUMENT"


class NotFoundError(CitypostError):
    grpc_status = "NOT_FOUND"


class FailedPreconditionError(CitypostError):
    grpc_status = "FAILED_PRECONDITION"


class NotLeaderError(FailedPreconditionError):
    """A write or a command sent to a post that does not lead. Carries the leader
    (when known) so a client can retry there: the gRPC server puts its address in
    the trailing metadata `x-citypost-leader`."""

    def __init__(self, message: str, *, leader_name: str = "", leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_name = leader_name
        self.leader_address = leader_address


class ResourceExhaustedError(CitypostError):
    grpc_status = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(CitypostError):
    """Who is calling is not established: no or a bad credential, an expired token, an
    unknown user, a wrong password. The message names what was missing or wrong (never
    which of user name or password was wrong to the caller: see security.accounts)."""

    grpc_status = "UNAUTHENTICATED"


class PermissionDeniedError(CitypostError):
    """The caller is known but may not do this; the message names the permission."""

    grpc_status = "PERMISSION_DENIED"

    def __init__(self, message: str, permission: str = "") -> None:
        super().__init__(message)
        self.permission = permission


class UnimplementedError(CitypostError):
    """A valid request for something this post does not do yet."""

    grpc_status = "UNIMPLEMENTED"


class ActorUnavailableError(InfrastructureError):
    """An actor that cannot answer now: dead, restarting, unreachable or too slow."""

    def __init__(self, message: str, *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor


class ActorCallError(CitypostError):
    """An actor method raised an exception that is not a CitypostError (a bug)."""

    grpc_status = "INTERNAL"
