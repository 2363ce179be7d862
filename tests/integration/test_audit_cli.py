"""`citypost audit verify` as an auditor runs it on a post's audit file: 0 when intact,
1 naming the first break, 2 for a usage error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main
from post.audit_file import AuditFile
from protos.citypost.v1 import control_state_pb2
from security.pki import Kind, Principal
from security.pki_store import PkiStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def audit(tmp_path: Path) -> tuple[Path, Path]:
    """A post's audit file of 25 entries (checkpoints every 10) and the city's trust."""
    store = PkiStore(tmp_path / "pki", "dijon")
    store.init()
    post = store.issue(Principal("dijon", Kind.POST, "primary"))
    path = tmp_path / "audit-primary.jsonl"
    file = AuditFile(path, post.read(), checkpoint_every=10)
    for i in range(25):
        file.append(
            control_state_pb2.AuditEntry(
                entry_id=f"entry-{i}",
                at_ms=1_765_000_000_000 + i,
                actor="supervisor",
                action="override.set",
                target=f"group/street_lamp/talant-{i}",
                outcome=control_state_pb2.AUDIT_OK,
                detail="held at 40 % for the market",
            )
        )
    file.close()
    return path, post.trust


def _citypost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_an_intact_file_verifies(audit: tuple[Path, Path]) -> None:
    path, trust = audit
    done = _citypost("audit", "verify", str(path), "--trust", str(trust))
    assert done.returncode == 0, done.stderr
    assert f"{path}: intact" in done.stdout
    assert "25 records" in done.stdout
    assert "3 signed checkpoints by post.primary (verified against the city's trust)" in (
        done.stdout
    )


def test_one_altered_line_is_named(audit: tuple[Path, Path]) -> None:
    path, trust = audit
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[13])  # line 14: entry-12 (a checkpoint came after entry-9)
    assert record["entry_id"] == "entry-12"
    record["detail"] = "held at 0 % for the market"
    lines[13] = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
    path.write_text("".join(lines))
    done = _citypost("audit", "verify", str(path), "--trust", str(trust))
    assert done.returncode == 1
    assert "BROKEN at line 14 (entry entry-12): hash mismatch (record altered)" in done.stdout


def test_json_report_and_usage_errors(
    audit: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = audit
    assert main(["audit", "verify", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["intact"] and report["checkpoints"] == 3
    assert not report["signers_verified"]  # no --trust: each signer only by its own certificate
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["audit", "verify", str(path), "--trust", str(path)]) == 2
    assert "holds no PEM certificate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["audit", "verify"])
    assert usage.value.code == 2
