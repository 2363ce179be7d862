"""Every audit entry a post sees, appended to a file of its own, one JSON object a line.

etcd holds the recent audit only (post.audit_retention_s); the file (audit-<post>.jsonl in the run dir) holds all of it.
Both posts watch the control state, so each writes the whole audit, whoever wrote it.
Opened for appending: a restarted post goes on after what it wrote before.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from protos.citypost.v1 import control_state_pb2


class AuditFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8", buffering=1)  # a line at a time

    def append(self, entry: control_state_pb2.AuditEntry) -> None:
        record = MessageToDict(entry, preserving_proto_field_name=True)
        self._file.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")

    def close(self) -> None:
        self._file.close()
