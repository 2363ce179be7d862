"""The drill report over hand-made evidence: the JSON, the Markdown and the timeline
picture say what happened, also for a round where nothing was recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos import invariants as inv
from chaos.evidence import (
    AcknowledgedWrite,
    CommandStatus,
    Evidence,
    ExecutionEvent,
    FaultWindow,
    LeaderTerm,
    LedgerEntry,
    Telemetry,
)
from chaos.report import (
    report_dict,
    report_markdown,
    timeline_series,
    write_report,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

T0 = 1_700_000_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ex(dev: str, cmd: str, epoch: int, at: int) -> ExecutionEvent:
    return ExecutionEvent(dev, cmd, epoch, T0 + at, "lighting")


# A leader crash at +10 s: epoch 5 (primary) loses its key at +13 s, epoch 9 (backup)
# takes over at +14 s; healed at +20 s, steady again at +26 s.
def takeover(*, late_old_execution: bool = False) -> Evidence:
    executions = [
        ex("d1", "c1", 5, 1_000),
        ex("d2", "c1", 5, 1_200),
        ex("d1", "c2", 5, 9_000),
        ex("d2", "c2", 9, 14_500),
        ex("d1", "c3", 9, 15_000),
    ]
    if late_old_execution:
        # The deposed leader still commands after its successor did: split brain.
        executions.append(ex("d3", "c9", 5, 16_000))
    return Evidence(
        fault=FaultWindow(T0 + 10_000, T0 + 20_000),
        observed_from_ms=T0,
        observed_to_ms=T0 + 30_000,
        executions=tuple(executions),
        leaders=(
            LeaderTerm(5, "primary", T0, T0 + 13_000),
            LeaderTerm(9, "backup", T0 + 14_000, None),
        ),
        acknowledged_writes=(AcknowledgedWrite("ledger/c1", T0 + 900),),
        present_keys=frozenset({"ledger/c1"}),
        ledger=(LedgerEntry("c1", CommandStatus.ACKED, T0 + 900, 10_000, T0 + 1_300),),
        telemetry=(
            Telemetry.from_counts("lighting", T0, [3] * 30),
            Telemetry.from_counts("parking", T0, [2] * 10 + [0] * 8 + [2] * 12),
        ),
        steady_at_ms=T0 + 26_000,
    )


def empty() -> Evidence:
    return Evidence(
        fault=FaultWindow(T0 + 5_000, T0 + 6_000), observed_from_ms=T0, observed_to_ms=T0 + 10_000
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000  # a drawn 10x6 in figure, not an empty stub


def test_failed_round_writes_all_three_files_naming_what_broke(tmp_path: Path) -> None:
    evidence = takeover(late_old_execution=True)
    report = inv.check_all(evidence, inv.Bounds(telemetry_gap_ms={"parking": 5_000}))
    assert not report.ok  # the hand-made history must break something

    files = write_report(
        evidence, report, tmp_path / "r1", scenario="leader_crash", round_=2, extra={"seed": 7}
    )

    data = json.loads(files.json.read_text())
    assert set(data) >= {
        "scenario", "round", "ok", "broken", "invariants", "measures_ms",
        "telemetry_gaps_ms", "fault_window_ms", "observed_ms", "counts", "leaders", "extra",
    }  # fmt: skip
    assert data["scenario"] == "leader_crash"
    assert data["round"] == 2
    assert data["ok"] is False
    assert data["broken"] == [inv.SINGLE_COMMANDER, inv.TELEMETRY_GAP]
    assert list(data["invariants"]) == list(inv.INVARIANTS)
    commander = data["invariants"][inv.SINGLE_COMMANDER]
    assert commander["held"] is False
    assert "command c9 of epoch 5" in commander["violations"][0]
    assert data["invariants"][inv.EXECUTED_ONCE] == {"held": True, "violations": []}
    assert "parking" in data["invariants"][inv.TELEMETRY_GAP]["violations"][0]
    assert data["measures_ms"] == {
        "old_epoch": 5,
        "detection": 3_000,
        "old_epoch_last_execution": 6_000,
        "takeover": 4_000,
        "steady": 6_000,
        # the only write came before the fault: none from then to the end of the span
        "operator_outage": 29_100,
        "execution_outage": 5_500,
    }
    assert data["fault_window_ms"] == {"start": T0 + 10_000, "end": T0 + 20_000, "duration": 10_000}
    assert data["counts"]["executions"] == 6
    assert data["counts"]["executions_per_epoch"] == {"5": 4, "9": 2}
    assert data["counts"]["violations"] == 2
    assert data["extra"] == {"seed": 7}

    md = files.markdown.read_text()
    assert md.startswith("# Drill `leader_crash` round 2: **FAIL**")
    assert f"| `{inv.SINGLE_COMMANDER}` | **BROKEN** (1)" in md
    assert f"| `{inv.TELEMETRY_GAP}` | **BROKEN** (1)" in md
    assert f"| `{inv.EXECUTED_ONCE}` | held |" in md
    assert "command c9 of epoch 5" in md
    assert "3.000 s" in md  # detection
    assert "4.000 s" in md  # takeover
    assert "6.000 s" in md  # steady

    assert_png(files.timeline)


def test_passing_round_says_pass(tmp_path: Path) -> None:
    evidence = takeover()
    report = inv.check_all(evidence)
    assert report.ok

    files = write_report(evidence, report, tmp_path, scenario="leader_crash", round_=1)

    assert json.loads(files.json.read_text())["ok"] is True
    md = files.markdown.read_text()
    assert "**PASS**" in md
    assert "Every invariant held." in md
    assert "BROKEN" not in md
    assert_png(files.timeline)


def test_empty_history_still_writes_all_three_files(tmp_path: Path) -> None:
    evidence = empty()
    report = inv.check_all(evidence)

    files = write_report(evidence, report, tmp_path / "nested" / "dir", scenario="noop", round_=1)

    data = json.loads(files.json.read_text())
    assert data["ok"] is True
    assert data["measures_ms"]["old_epoch"] is None
    assert data["leaders"] == []
    assert data["counts"]["executions"] == 0
    md = files.markdown.read_text()
    assert "| old epoch | — |" in md
    assert "| takeover (fault start → new leader key) | — |" in md
    assert_png(files.timeline)


def test_markdown_caps_the_details_shown_per_invariant() -> None:
    executions = tuple(ex("d1", "c1", 5, 1_000 + i) for i in range(6))  # c1 six times
    evidence = Evidence(
        fault=FaultWindow(T0, T0 + 1_000),
        observed_from_ms=T0,
        observed_to_ms=T0 + 2_000,
        executions=executions + tuple(ex(f"e{i}", f"x{i}", 1, 1_500) for i in range(5)),
    )
    report = inv.check_all(evidence)
    data = report_dict(evidence, report, scenario="s", round_=1)

    assert len(data["invariants"][inv.SINGLE_COMMANDER]["violations"]) == 5
    md = report_markdown(data)
    assert "… and 2 more" in md


def test_timeline_series_bins_relative_to_the_fault() -> None:
    series = timeline_series(takeover(late_old_execution=True))

    assert series.from_s == -10.0
    assert series.fault_end_s == 10.0
    assert series.bin_s == 1
    assert series.epochs == (5, 9)
    # The open term of epoch 9 runs to the end of the watched span (+30 s from T0).
    assert series.leaders["backup"][0].epoch == 9
    assert series.leaders["backup"][0].start_s == 4.0
    assert series.leaders["backup"][0].width_s == 16.0
    assert series.leaders["primary"][0].width_s == 13.0
    assert sum(series.executions_rate[5]) == 4
    assert sum(series.executions_rate[9]) == 2
    # The late epoch-5 execution sits in the bin six seconds after the fault.
    assert series.executions_rate[5][series.bin_starts_s.index(6.0)] == 1
    assert series.telemetry_rate["lighting"][0] == 1.0  # from_counts: one arrival a second
    assert sum(series.telemetry_rate["parking"]) == 22


def test_long_drills_get_wider_bins_not_more() -> None:
    hour = 3_600_000
    evidence = Evidence(
        fault=FaultWindow(T0 + 60_000, T0 + 120_000),
        observed_from_ms=T0,
        observed_to_ms=T0 + hour,
        executions=(ex("d1", "c1", 1, hour),),  # at the very end: still counted
    )
    series = timeline_series(evidence)

    assert series.bin_s == 6
    assert len(series.bin_starts_s) <= 601
    assert sum(series.executions_rate[1]) * series.bin_s == 1
