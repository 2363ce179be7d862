"""The words an operator types and reads for the API's enums: `street_lamp`, `acked`, `major`.

One rule for every enum: the value's name in lower case, without the enum's
own prefix (`INCIDENT_FIRE` -> `fire`); UNSPECIFIED is never a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import EnumDescriptor

from protos.citypost.v1 import (
    assets_pb2,
    command_pb2,
    operations_pb2,
    telemetry_pb2,
)


@dataclass(frozen=True)
class Vocabulary:
    """Words for one enum."""

    enum: EnumDescriptor
    prefix: str = ""  # stripped from value names, e.g. "INCIDENT_"
    aliases: tuple[tuple[str, tuple[int, ...]], ...] = ()  # extra words naming several values

    def label(self, number: int) -> str:
        """The word for a value; '-' for UNSPECIFIED, the number for one this build does not know."""
        if number == 0:
            return "-"
        value = self.enum.values_by_number.get(number)
        if value is None:
            return str(number)
        return value.name.removeprefix(self.prefix).lower()

    def words(self) -> list[str]:
        named = [self.label(v.number) for v in self.enum.values if v.number != 0]
        return named + [word for word, _ in self.aliases]

    def parse_many(self, text: str) -> tuple[int, ...]:
        """The values a word names (an alias may name several); ValueError lists the words."""
        word = text.strip().lower().replace("-", "_")
        for alias, numbers in self.aliases:
            if word == alias:
                return numbers
        for value in self.enum.values:
            if value.number != 0 and word in (self.label(value.number), value.name.lower()):
                return (value.number,)
        raise ValueError(f"{text!r} is not one of: {', '.join(self.words())}")

    def parse(self, text: str) -> int:
        numbers = self.parse_many(text)
        if len(numbers) != 1:
            raise ValueError(f"{text!r} names several values here; give one of them")
        return numbers[0]


ASSET_CLASS = Vocabulary(assets_pb2.AssetClass.DESCRIPTOR)
COMMAND_STATUS = Vocabulary(command_pb2.CommandStatus.DESCRIPTOR)
ALARM_STATE = Vocabulary(
    operations_pb2.AlarmState.DESCRIPTOR,
    aliases=(
        ("active", (operations_pb2.ACTIVE_UNACK, operations_pb2.ACTIVE_ACK)),
        ("cleared", (operations_pb2.CLEARED_UNACK, operations_pb2.CLEARED_ACK)),
        ("unack", (operations_pb2.ACTIVE_UNACK, operations_pb2.CLEARED_UNACK)),
    ),
)
SEVERITY = Vocabulary(operations_pb2.Severity.DESCRIPTOR)
DEPARTMENT = Vocabulary(operations_pb2.Department.DESCRIPTOR)
INCIDENT_KIND = Vocabulary(operations_pb2.IncidentKind.DESCRIPTOR, prefix="INCIDENT_")
INCIDENT_SOURCE = Vocabulary(operations_pb2.IncidentSource.DESCRIPTOR)
TASK_STATUS = Vocabulary(operations_pb2.TaskStatus.DESCRIPTOR)
SIGNAL_PHASE = Vocabulary(telemetry_pb2.SignalPhase.DESCRIPTOR)
BOLLARD_POSITION = Vocabulary(telemetry_pb2.BollardPosition.DESCRIPTOR)
CAMERA_EVENT = Vocabulary(telemetry_pb2.CameraEvent.DESCRIPTOR)
