"""How the city spells an asset class outside protobuf: `street_lamp` for STREET_LAMP,
in topics, metrics, actor names, roles, config and the audit."""

from __future__ import annotations

from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import assets_pb2


def class_name(asset_class: int) -> str:
    """The lower-case enum name; InvalidArgumentError for a number that is no class."""
    try:
        return assets_pb2.AssetClass.Name(asset_class).lower()  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidArgumentError(f"asset_class {asset_class} is not an AssetClass") from exc
