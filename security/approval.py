"""The two-person rule: which operator commands are dangerous, and who may approve one.

A dangerous command waits (PENDING_APPROVAL) until a second person approves it
within a bounded time; the requester can never approve their own. Who the
second person may be is the city's choice (`security.approval.approver`):

- `supervisor`: whoever holds `commands.approve` (the room supervisor);
- `same_role`: that, or an operator sharing one of the requester's roles who may
  send that class's commands too (a second police officer for the police's bollards).

Dangers (`security.approval.require_for`), each a whole group or a fail-safe:

- `bollards_lowered_sector`: every bollard of a sector down: the old town open to
  any vehicle;
- `bollards_raised_sector`: every bollard of a sector up: emergency vehicles locked
  out; it ends the bollards' fail-safe position (lowered);
- `lamps_off_group`: a group's lamps switched off (level 0, or a profile lit at 0 %):
  it ends the lamps' fail-safe (fully on), streets go dark;
- `signals_flashing`: signals put in flashing amber, even one: the junction is
  no longer controlled.

An emergency skips the wait (`commands.emergency`, with a reason): IEC 62443-3-3
SR 1.1 says authentication must not block an emergency action. It is not silent:
the post raises an alarm for the whole room and marks it in the audit.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from enum import StrEnum

from citypost.errors import FailedPreconditionError, PermissionDeniedError
from protos.citypost.v1 import assets_pb2, command_pb2, telemetry_pb2

AC = assets_pb2.AssetClass
APPROVE_PERMISSION = "commands.approve"
EMERGENCY_PERMISSION = "commands.emergency"


class Danger(StrEnum):
    BOLLARDS_LOWERED_SECTOR = "bollards_lowered_sector"
    BOLLARDS_RAISED_SECTOR = "bollards_raised_sector"
    LAMPS_OFF_GROUP = "lamps_off_group"
    SIGNALS_FLASHING = "signals_flashing"


class Approver(StrEnum):
    SUPERVISOR = "supervisor"
    SAME_ROLE = "same_role"


ALL_DANGERS: tuple[Danger, ...] = tuple(Danger)


def danger_of(
    command: command_pb2.Command, devices: int, enforced: Collection[Danger] = ALL_DANGERS
) -> str:
    """Why `command` (reaching `devices` devices) needs a second person; "" if it does not."""
    group = command.target.group
    action = command.WhichOneof("action")
    found: tuple[Danger, str] | None = None
    if command.asset_class == AC.BOLLARD and group and action == "set_bollard_position":
        position = command.set_bollard_position.position
        if position == telemetry_pb2.LOWERED:
            found = (
                Danger.BOLLARDS_LOWERED_SECTOR,
                f"lowers all {devices} bollards of sector {group}: open to any vehicle",
            )
        elif position == telemetry_pb2.RAISED:
            found = (
                Danger.BOLLARDS_RAISED_SECTOR,
                f"raises all {devices} bollards of sector {group}: emergency vehicles are "
                "locked out (it ends their fail-safe position)",
            )
    elif command.asset_class == AC.STREET_LAMP and group and _lamps_off(command):
        found = (
            Danger.LAMPS_OFF_GROUP,
            f"switches off all {devices} lamps of {group} (it ends their fail-safe, fully on)",
        )
    elif (
        command.asset_class == AC.TRAFFIC_SIGNAL
        and action == "set_signal_mode"
        and command.set_signal_mode.phase == telemetry_pb2.FLASHING_AMBER
    ):
        where = f"all {devices} signals of {group}" if group else "a signal"
        found = (
            Danger.SIGNALS_FLASHING,
            f"puts {where} in flashing amber: the junction is no longer controlled",
        )
    if found is None or found[0] not in enforced:
        return ""
    return found[1]


def _lamps_off(command: command_pb2.Command) -> bool:
    action = command.WhichOneof("action")
    if action == "set_brightness":
        return command.set_brightness.brightness_pct <= 0
    if action == "set_lamp_profile":
        return command.set_lamp_profile.night_pct <= 0
    return False


def check_approver(
    *,
    requester: str,
    requester_roles: Sequence[str],
    approver: str,
    approver_roles: Collection[str],
    may_approve: bool,
    may_command_class: bool,
    rule: Approver,
) -> None:
    """Raise unless `approver` may decide on `requester`'s dangerous command.

    `may_approve`: the approver holds commands.approve; `may_command_class`: they hold
    the command's own send permission (for `same_role`).
    """
    if approver == requester:
        raise FailedPreconditionError(
            f"{approver} asked for this command: a second person must approve or reject it"
        )
    if may_approve:
        return
    shared = sorted(set(requester_roles) & set(approver_roles))
    if rule is Approver.SAME_ROLE and shared and may_command_class:
        return
    if rule is Approver.SAME_ROLE:
        raise PermissionDeniedError(
            f"permission {APPROVE_PERMISSION} is needed, or one of the requester's roles "
            f"({', '.join(requester_roles) or 'none'}) with the right to send this command",
            APPROVE_PERMISSION,
        )
    raise PermissionDeniedError(
        f"permission {APPROVE_PERMISSION} is needed to approve or reject a dangerous command",
        APPROVE_PERMISSION,
    )
