"""`citypost audit verify FILE [--trust PEM]`: is a post's audit file as it was written?

Walks the file's hash chain and checks its signed checkpoints (security/audit_chain.py).
Exit status: 0 intact, 1 broken (the first break is named: line, entry id, what), 2 a
usage error (no such file, a trust bundle that is none).

With `--trust` (the city's trust bundle, `trust.pem` in the PKI directory) each
checkpoint's signer must be a post of the city, its certificate valid when it signed;
without it a checkpoint is checked against its own certificate only, which proves the
file consistent but not who signed it: the report says so. Records after the last
checkpoint are chained but not signed: whoever can write the file could rewrite them;
the other post's file is the witness for the leader's entries.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from citypost.errors import ConfigError

if TYPE_CHECKING:
    from security.audit_chain import VerifyReport


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def describe(name: str, report: VerifyReport) -> list[str]:
    """The report as lines for people."""
    found = report.first_break
    head = f"{name}: intact" if found is None else f"{name}: BROKEN at {found}"
    lines = [head]
    counted = f"{_count(report.records, 'record')} in the chain"
    if report.unchained:
        counted += (
            f", {_count(report.unchained, 'line')} before it (written before the audit was "
            "chained: not verifiable)"
        )
    lines.append("  " + counted)
    if report.checkpoints:
        whose = ", ".join(report.signers)
        how = (
            "verified against the city's trust"
            if report.signers_verified
            else "NOT checked against the city's trust: give --trust"
        )
        lines.append(
            f"  {_count(report.checkpoints, 'signed checkpoint')} by {whose} ({how}); "
            f"the last at line {report.last_checkpoint_line}"
        )
    else:
        lines.append("  no signed checkpoint: the chain alone proves nothing against a rewrite")
    if report.unsigned_tail:
        lines.append(
            f"  {_count(report.unsigned_tail, 'record')} after the last checkpoint: chained, "
            "not yet signed"
        )
    if report.incomplete_tail:
        lines.append(
            f"  the last line (line {report.lines}) is incomplete: being written, or a write "
            "cut short"
        )
    if report.breaks > 1:
        lines.append(f"  {_count(report.breaks, 'break')} in all")
    return lines


def run_audit(args: argparse.Namespace) -> int:
    from security.audit_chain import verify  # cryptography: only for this command

    path: Path = args.file
    trust: bytes | None = None
    if args.trust is not None:
        try:
            trust = args.trust.read_bytes()
        except OSError as error:
            raise ConfigError(f"--trust {args.trust}: {error.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in trust:
            raise ConfigError(f"--trust {args.trust}: holds no PEM certificate")
    try:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="\n") as lines:
            report = verify(lines, trust)
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    if args.json:
        print(json.dumps({"file": str(path), **report.as_dict()}, indent=2))
    else:
        print("\n".join(describe(str(path), report)))
    return 0 if report.intact else 1


def add_audit_parser(
    commands: argparse._SubParsersAction, handler: Callable[[argparse.Namespace], int]
) -> None:
    audit = commands.add_parser("audit", help="a post's audit file: is it intact?")
    verbs = audit.add_subparsers(dest="audit_command", required=True)
    check = verbs.add_parser(
        "verify",
        help="check an audit file's hash chain and signed checkpoints",
        description=(
            "Check an audit file's hash chain and signed checkpoints. Exit 0 intact, "
            "1 broken (the first break is named), 2 usage error."
        ),
    )
    check.add_argument("file", type=Path, metavar="FILE", help="e.g. run/audit-primary.jsonl")
    check.add_argument(
        "--trust",
        type=Path,
        metavar="PEM",
        help="the city's trust bundle (trust.pem in the PKI directory): checkpoints must "
        "be signed by a post of the city",
    )
    check.add_argument("--json", action="store_true", help="the report as JSON")
    check.set_defaults(handler=handler)
