"""A drill round's report: JSON for machines, Markdown for people, a timeline picture.

The content is built by pure functions (`report_dict`, `report_markdown`,
`timeline_series`) from the collected `Evidence` and the checker's `Report`;
only `draw_timeline` and `write_report` touch matplotlib and the file system.
Times in the text and the picture are relative to the fault's start, so rounds
compare at a glance.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chaos import invariants as inv
from chaos.evidence import Evidence
from citypost.errors import InfrastructureError

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
TIMELINE_NAME = "timeline.png"
# The Markdown lists this many violations per invariant; the JSON has them all.
MARKDOWN_VIOLATIONS = 3
# At most this many bins in the picture: long drills get wider bins, not a wider figure.
MAX_BINS = 600


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    timeline: Path


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- the machine report ---------------------------------------------------------------------


def report_dict(
    evidence: Evidence,
    report: inv.Report,
    *,
    scenario: str,
    round_: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report: fixed keys, every invariant (held or not) with its violations."""
    by_invariant: dict[str, list[str]] = {name: [] for name in report.checked}
    for v in report.violations:
        by_invariant.setdefault(v.invariant, []).append(v.detail)
    checked = report.to_dict()
    fault = evidence.fault
    return {
        "scenario": scenario,
        "round": round_,
        "ok": report.ok,
        "broken": report.broken(),
        "invariants": {
            name: {"held": not details, "violations": details}
            for name, details in by_invariant.items()
        },
        "measures_ms": checked["measures_ms"],
        "telemetry_gaps_ms": checked["telemetry_gaps_ms"],
        "fault_window_ms": {
            "start": fault.start_ms,
            "end": fault.end_ms,
            "duration": fault.end_ms - fault.start_ms,
        },
        "observed_ms": {"from": evidence.observed_from_ms, "to": evidence.observed_to_ms},
        "steady_at_ms": evidence.steady_at_ms,
        "leaders": [
            {"epoch": t.epoch, "post": t.post, "from_ms": t.from_ms, "to_ms": t.to_ms}
            for t in sorted(evidence.leaders, key=lambda t: (t.from_ms, t.epoch))
        ],
        "counts": {**_counts(evidence), "violations": len(report.violations)},
        "extra": dict(extra or {}),
    }


def _counts(evidence: Evidence) -> dict[str, Any]:
    per_epoch = Counter(e.epoch for e in evidence.executions)
    statuses = Counter(c.status.value for c in evidence.ledger)
    return {
        "executions": len(evidence.executions),
        "executions_per_epoch": {str(k): per_epoch[k] for k in sorted(per_epoch)},
        "leader_terms": len(evidence.leaders),
        "acknowledged_writes": len(evidence.acknowledged_writes),
        "ledger_entries": len(evidence.ledger),
        "ledger_by_status": {k: statuses[k] for k in sorted(statuses)},
        "uplinks": {t.asset_class: len(t.at_ms) for t in evidence.telemetry},
    }


# --- the summary for people -----------------------------------------------------------------


def _seconds(ms: int | None) -> str:
    return "—" if ms is None else f"{ms / 1000:.3f} s"


def _cell(text: str) -> str:
    # A pipe inside a detail would split the Markdown table's cell.
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(data: Mapping[str, Any]) -> str:
    """The Markdown summary of a `report_dict`: headline, invariants, measures, fault."""
    verdict = _verdict(bool(data["ok"]))
    fault = data["fault_window_ms"]
    lines = [
        f"# Drill `{data['scenario']}` round {data['round']}: **{verdict}**",
        "",
    ]
    broken = data["broken"]
    if broken:
        lines += [f"Broken: {', '.join(f'`{b}`' for b in broken)}.", ""]
    else:
        lines += ["Every invariant held.", ""]

    lines += ["## Invariants", "", "| invariant | result | violations |", "|---|---|---|"]
    for name, entry in data["invariants"].items():
        details: list[str] = entry["violations"]
        shown = "; ".join(_cell(d) for d in details[:MARKDOWN_VIOLATIONS])
        if len(details) > MARKDOWN_VIOLATIONS:
            shown += f"; … and {len(details) - MARKDOWN_VIOLATIONS} more"
        result = "held" if entry["held"] else f"**BROKEN** ({len(details)})"
        lines.append(f"| `{name}` | {result} | {shown or '—'} |")

    m = data["measures_ms"]
    lines += [
        "",
        "## Measures",
        "",
        "| measure | value |",
        "|---|---|",
        f"| old epoch | {'—' if m['old_epoch'] is None else m['old_epoch']} |",
        f"| detection (fault start → old leader key gone) | {_seconds(m['detection'])} |",
        f"| takeover (fault start → new leader key) | {_seconds(m['takeover'])} |",
        "| old epoch's last execution (from fault start) | "
        f"{_seconds(m['old_epoch_last_execution'])} |",
        f"| steady state again (from heal) | {_seconds(m['steady'])} |",
        "| longest without an acknowledged operator write | "
        f"{_seconds(m.get('operator_outage'))} |",
        f"| longest without any device execution | {_seconds(m.get('execution_outage'))} |",
    ]
    gaps = data["telemetry_gaps_ms"]
    if gaps:
        lines += ["", "### Telemetry gaps", "", "| asset class | longest gap |", "|---|---|"]
        for cls, g in gaps.items():
            frm = _seconds(g["from"] - fault["start"])
            to = _seconds(g["to"] - fault["start"])
            lines.append(f"| {cls} | {_seconds(g['length'])} ({frm} .. {to}) |")

    observed = data["observed_ms"]
    counts = data["counts"]
    lines += [
        "",
        "## Fault window",
        "",
        f"Injected at {fault['start']} ms, healed after {_seconds(fault['duration'])}; "
        f"watched from {_seconds(observed['from'] - fault['start'])} to "
        f"{_seconds(observed['to'] - fault['start'])} (relative to the fault).",
        "",
        f"Counts: executions {counts['executions']}, leader terms {counts['leader_terms']}, "
        f"commands in the ledger {counts['ledger_entries']}, "
        f"acknowledged writes {counts['acknowledged_writes']}, "
        f"uplinks {sum(counts['uplinks'].values())}.",
        "",
    ]
    return "\n".join(lines)


# --- the timeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderBar:
    """One leader term on its post's row, in seconds from the fault's start."""

    start_s: float
    width_s: float
    epoch: int


@dataclass(frozen=True)
class TimelineSeries:
    """What the picture draws, in seconds from the fault's start.

    `bin_starts_s` are the left edges of equal bins of `bin_s` seconds; the rates are
    per second (count / `bin_s`) per bin, per asset class and per epoch."""

    from_s: float
    to_s: float
    fault_end_s: float
    bin_s: int
    bin_starts_s: tuple[float, ...]
    leaders: Mapping[str, tuple[LeaderBar, ...]]
    telemetry_rate: Mapping[str, tuple[float, ...]]
    executions_rate: Mapping[int, tuple[float, ...]]
    epochs: tuple[int, ...]
    issued_rate: tuple[float, ...] = ()  # commands the ledger shows issued (group = 1)


def timeline_series(evidence: Evidence) -> TimelineSeries:
    """Bins the evidence for the picture. The span is the watched one, widened to any
    record outside it; an open leader term runs to the span's end."""
    zero = evidence.fault.start_ms
    times = [
        evidence.observed_from_ms,
        evidence.observed_to_ms,
        evidence.fault.start_ms,
        evidence.fault.end_ms,
        *(e.at_ms for e in evidence.executions),
        *(t.from_ms for t in evidence.leaders),
        *(t.to_ms for t in evidence.leaders if t.to_ms is not None),
        *(a for t in evidence.telemetry for a in t.at_ms),
    ]
    lo, hi = min(times), max(times)
    span_s = max(1, math.ceil((hi - lo) / 1000))
    bin_s = max(1, math.ceil(span_s / MAX_BINS))
    n_bins = max(1, math.ceil(span_s / bin_s))
    # A record exactly at `hi` falls into the last bin rather than past it.
    if lo + n_bins * bin_s * 1000 <= hi:
        n_bins += 1

    def bin_of(at_ms: int) -> int:
        return min(n_bins - 1, (at_ms - lo) // (bin_s * 1000))

    def rate(points: list[int]) -> tuple[float, ...]:
        counts = [0] * n_bins
        for p in points:
            counts[bin_of(p)] += 1
        return tuple(c / bin_s for c in counts)

    leaders: dict[str, list[LeaderBar]] = defaultdict(list)
    for t in sorted(evidence.leaders, key=lambda t: (t.post, t.from_ms)):
        end = hi if t.to_ms is None else t.to_ms
        leaders[t.post].append(
            LeaderBar((t.from_ms - zero) / 1000, (end - t.from_ms) / 1000, t.epoch)
        )

    telemetry: dict[str, list[int]] = defaultdict(list)
    for tel in evidence.telemetry:
        telemetry[tel.asset_class].extend(tel.at_ms)
    runs: dict[int, list[int]] = defaultdict(list)
    for e in evidence.executions:
        runs[e.epoch].append(e.at_ms)

    epochs = sorted({t.epoch for t in evidence.leaders} | set(runs))
    issued = [c.issued_at_ms for c in evidence.ledger if lo <= c.issued_at_ms <= hi]
    return TimelineSeries(
        from_s=(lo - zero) / 1000,
        to_s=(lo + n_bins * bin_s * 1000 - zero) / 1000,
        fault_end_s=(evidence.fault.end_ms - zero) / 1000,
        bin_s=bin_s,
        bin_starts_s=tuple((lo - zero) / 1000 + i * bin_s for i in range(n_bins)),
        leaders={post: tuple(bars) for post, bars in sorted(leaders.items())},
        telemetry_rate={cls: rate(pts) for cls, pts in sorted(telemetry.items())},
        executions_rate={ep: rate(runs[ep]) for ep in sorted(runs)},
        epochs=tuple(epochs),
        issued_rate=rate(issued) if issued else (),
    )


def draw_timeline(series: TimelineSeries, path: Path, *, title: str) -> None:
    """Draws the three panels to a PNG with the Agg canvas (no display, no pyplot: the
    figure is not registered globally, so nothing accumulates across rounds)."""
    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax_lead, ax_tel, ax_exec = fig.subplots(3, 1, sharex=True, height_ratios=(1, 1, 1))
    colors = _epoch_colors(series.epochs)

    # Leader per post: one row per post, one bar per term, labelled with its epoch.
    posts = list(series.leaders)
    for row, post in enumerate(posts):
        bars = series.leaders[post]
        ax_lead.broken_barh(
            [(b.start_s, b.width_s) for b in bars],
            (row - 0.4, 0.8),
            facecolors=[colors[b.epoch] for b in bars],
        )
        for b in bars:
            ax_lead.text(
                b.start_s + b.width_s / 2,
                row,
                f"epoch {b.epoch}",
                ha="center",
                va="center",
                fontsize=8,
            )
    ax_lead.set_yticks(range(len(posts)), posts)
    ax_lead.set_ylim(-0.6, max(1, len(posts)) - 0.4)
    ax_lead.set_ylabel("leader")
    if not posts:
        _note(ax_lead, "no leader recorded")

    edges = [*series.bin_starts_s, series.to_s]
    for cls, values in series.telemetry_rate.items():
        ax_tel.stairs(values, edges, label=cls)
    ax_tel.set_ylabel("uplinks/s")
    _headroom(ax_tel, [max(v, default=0.0) for v in series.telemetry_rate.values()])
    if series.telemetry_rate:
        ax_tel.legend(loc="upper right", fontsize=7, ncols=min(4, len(series.telemetry_rate)))
    else:
        _note(ax_tel, "no telemetry recorded")

    bottom = [0.0] * len(series.bin_starts_s)
    for epoch, values in series.executions_rate.items():
        ax_exec.bar(
            series.bin_starts_s,
            values,
            width=series.bin_s,
            bottom=bottom,
            align="edge",
            color=colors[epoch],
            label=f"epoch {epoch}",
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if series.issued_rate:
        ax_exec.stairs(
            series.issued_rate, edges, color="black", lw=1.2, label="commands issued (ledger)"
        )
    ax_exec.set_ylabel("executed/s")
    _headroom(ax_exec, [*bottom, *series.issued_rate])
    ax_exec.set_xlabel("time from fault start (s)")
    if series.executions_rate or series.issued_rate:
        ax_exec.legend(loc="upper right", fontsize=7)
    else:
        _note(ax_exec, "no executions recorded")

    for ax in (ax_lead, ax_tel, ax_exec):
        ax.axvspan(0.0, series.fault_end_s, color="red", alpha=0.12, lw=0, zorder=0)
        ax.set_xlim(series.from_s, series.to_s)
    ax_lead.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    fig.clear()


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _headroom(ax: Any, peaks: list[float]) -> None:
    # Room above the highest bar for the legend in the upper right corner.
    ax.set_ylim(0, max(1.0, max(peaks, default=0.0)) * 1.35)


def _epoch_colors(epochs: tuple[int, ...]) -> dict[int, str]:
    # One color per epoch in both panels; tab10 repeats after ten epochs, fine for a drill.
    return {ep: f"C{i % 10}" for i, ep in enumerate(epochs)}


# --- writing --------------------------------------------------------------------------------


def write_report(
    evidence: Evidence,
    report: inv.Report,
    out_dir: Path | str,
    *,
    scenario: str,
    round_: int,
    extra: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Writes report.json, report.md and timeline.png into `out_dir` (created)."""
    out = Path(out_dir)
    files = ReportFiles(out / JSON_NAME, out / MARKDOWN_NAME, out / TIMELINE_NAME)
    data = report_dict(evidence, report, scenario=scenario, round_=round_, extra=extra)
    title = f"{scenario} round {round_}: {_verdict(report.ok)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # `default=str`: `extra` comes from the caller and may hold paths or enums.
        files.json.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        files.markdown.write_text(report_markdown(data), encoding="utf-8")
        draw_timeline(timeline_series(evidence), files.timeline, title=title)
    except OSError as exc:
        raise InfrastructureError(f"cannot write the drill report to {out}: {exc}") from exc
    return files
