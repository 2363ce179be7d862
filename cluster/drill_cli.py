"""`citypost drill ...`: the SRE team's chaos drills.

`add_drill_parser` hangs `drill list` and `drill run` under the `citypost`
parser. `list` shows every scenario of chaos/scenarios.py. `run` starts the
drill's own system (a small city), or attaches to a running one (`--against
CONFIG`: the demo started with that config), runs the scenario's rounds with
chaos/runner.py, writes a report per round and exits non-zero when an
invariant broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from chaos import scenarios
from chaos.scenarios import Scenario
from citypost.errors import InvalidArgumentError
from console.render import TableData, rich_table

PROG = "citypost drill"

# Exit statuses (also in --help).
EXIT_OK = 0
EXIT_BROKEN = 1  # an invariant or an expectation broke in some round
EXIT_USAGE = 2  # unknown scenario or bad arguments (argparse)
EXIT_REFUSED = 4  # nothing injected: no steady state, or the system cannot run the scenario
EXIT_INFRASTRUCTURE = 5  # the system could not be started, or a fault or heal failed
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit status:
  list:  0
  run:   0 every round held every invariant;
         1 an invariant or the scenario's expectation broke (see the reports);
         2 unknown scenario or bad arguments;
         4 refused, nothing injected: the steady state did not hold before a
           fault, or the system cannot run this scenario (no link to control);
         5 the system could not be started, or a fault or its heal failed;
         130 interrupted (the fault was healed and the system stopped first)
"""


def list_table(items: Sequence[Scenario]) -> TableData:
    return TableData(
        title="drills",
        columns=("scenario", "breaks", "must hold"),
        rows=[(s.name, s.breaks, s.must_hold) for s in items],
        footer="run one: citypost drill run SCENARIO [--rounds N]",
    )


def list_json(items: Sequence[Scenario]) -> str:
    return json.dumps([s.to_dict() for s in items], indent=2, ensure_ascii=False)


def _say(text: str) -> None:
    print(text, flush=True)


def _complain(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _cmd_list(args: argparse.Namespace) -> int:
    if args.json:
        _say(list_json(scenarios.SCENARIOS))
        return EXIT_OK
    from rich.console import Console  # rich loads only when a table is shown

    Console(highlight=False).print(rich_table(list_table(scenarios.SCENARIOS)))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    scenario: Scenario = args.scenario
    out_dir: Path = args.out or Path("drills") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        with _terminate_as_interrupt():
            return _run_rounds(scenario, args.rounds, args.against, out_dir.resolve(), args.seed)
    except KeyboardInterrupt:
        _complain("interrupted: the fault was healed and the drill's system stopped")
        return EXIT_INTERRUPTED


def _run_rounds(
    scenario: Scenario, rounds: int, against: Path | None, out_dir: Path, seed: int
) -> int:
    from chaos.faults import Drilled
    from chaos.runner import DrillRefused, DrillRunner
    from chaos.target import DrillTarget
    from citypost.config import load_config
    from citypost.errors import CitypostError
    from cluster.drill_system import drill_config, own_system
    from cluster.drill_targets import AttachedTarget, find_manifest

    _say(f"drill {scenario.name}: {scenario.breaks}")
    _say(f"must hold: {scenario.must_hold}")
    broken = 0
    try:
        with contextlib.ExitStack() as stack:
            target: DrillTarget
            if against is not None:
                try:
                    manifest = find_manifest(load_config(against))
                    target = AttachedTarget(manifest)
                except CitypostError as error:
                    _complain(error.message)
                    return EXIT_USAGE
                _say(f"drilling the running system of {manifest}")
            else:
                config = drill_config()
                _say(
                    f"starting the drill's own system (city {config.city.name}, "
                    f"scale {config.city.scale:g}) ..."
                )
                target = stack.enter_context(own_system(config, out_dir / "system")).target()
            runner = stack.enter_context(
                DrillRunner(Drilled(target, seed=seed), out_dir, progress=_say)
            )
            for round_ in range(1, rounds + 1):
                result = runner.run_round(scenario, round_)
                verdict = "PASS" if result.ok else "FAIL: " + ", ".join(result.report.broken())
                _say(f"round {round_}/{rounds}: {verdict}  ({result.files.markdown})")
                broken += not result.ok
    except DrillRefused as refused:
        _complain(f"refused, nothing injected: {refused.message}")
        return EXIT_REFUSED
    except CitypostError as error:
        _complain(f"{type(error).__name__}: {error.message}")
        return EXIT_INFRASTRUCTURE
    _say(f"{rounds - broken} of {rounds} rounds held; reports in {out_dir}")
    return EXIT_BROKEN if broken else EXIT_OK


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the drill) unwinds like Ctrl-C: heal, then stop."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- argument types ------------------------------------------------------------------------


def _scenario(text: str) -> Scenario:
    try:
        return scenarios.get(text)
    except InvalidArgumentError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def _config_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return path


# argparse names the type in its messages ("invalid scenario value").
_scenario.__name__ = "scenario"
_rounds.__name__ = "rounds"
_config_file.__name__ = "config"


def add_drill_parser(commands: argparse._SubParsersAction) -> None:
    """Add `drill list` and `drill run` to the `citypost` parser's sub-commands."""
    drill = commands.add_parser(
        "drill",
        help="chaos drills: break part of the city on purpose and check it stays controlled",
        description="Chaos drills for the SRE team: the scenarios, and running them.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = drill.add_subparsers(dest="drill_command", required=True, metavar="COMMAND")

    listing = sub.add_parser(
        "list",
        help="every scenario: what it breaks and what must hold",
        description="Every drill scenario, with one line on what it breaks and what must hold.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="print JSON: every scenario with its fault, parameters, limits and heal",
    )
    listing.set_defaults(handler=_cmd_list)

    run = sub.add_parser(
        "run",
        help="run a drill on the drill's own system and write its reports",
        description=(
            "Run a drill: on the drill's own system (a small city with both posts), or on "
            "a running one (--against), per round check the steady state, inject the "
            "fault, heal it (always, also when interrupted), check the steady state and "
            "the invariants, and write report.json, report.md and timeline.png."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "scenario",
        type=_scenario,
        metavar="SCENARIO",
        help=f"one of: {', '.join(scenarios.names())}",
    )
    run.add_argument(
        "--rounds", type=_rounds, default=1, metavar="N", help="run it N times (default 1)"
    )
    run.add_argument(
        "--against",
        type=_config_file,
        metavar="CONFIG",
        help=(
            "drill the running system started with this config (`citypost demo --config "
            "CONFIG`; found by the manifest in its run dir) instead of the drill's own "
            "small city"
        ),
    )
    run.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the reports go (default: drills/SCENARIO-YYYYmmdd-HHMMSS)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the faults' randomness")
    run.set_defaults(handler=_cmd_run)


def run(argv: Sequence[str]) -> int:
    """Parse `argv` (what follows `citypost drill`) and run it: for tests and embedding."""
    parser = argparse.ArgumentParser(prog="citypost")
    add_drill_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["drill", *argv])
    code: int = args.handler(args)
    return code
