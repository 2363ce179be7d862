"""`citypost drill ...`: the SRE team's chaos drills.

`add_drill_parser` hangs `drill list` and `drill run` under the `citypost`
parser. `list` shows every scenario of chaos/scenarios.py. `run` parses and
checks its arguments, but the runner (steady-state check, injection, heal,
invariants, report) is not built yet: it says so and exits 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chaos import scenarios
from chaos.scenarios import Scenario
from cluster.errors import InvalidArgumentError
from console.render import TableData, rich_table

PROG = "citypost drill"

# Exit statuses (also in --help).
EXIT_OK = 0
EXIT_USAGE = 2  # unknown scenario or bad arguments (argparse)
EXIT_NOT_BUILT = 3  # `drill run`: the runner does not exist yet

EXIT_CODES_HELP = """exit status:
  list:  0
  run:   2 unknown scenario or bad arguments;
         3 the drill runner is not built yet: nothing was run
"""


def list_table(items: Sequence[Scenario]) -> TableData:
    return TableData(
        title="drills",
        columns=("scenario", "breaks", "must hold"),
        rows=[(s.name, s.breaks, s.must_hold) for s in items],
        footer="run one: citypost drill run SCENARIO (not built yet)",
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
    _complain(
        f"the drill runner is not built yet: {scenario.name} was not run "
        f"({args.rounds} round{'s' if args.rounds != 1 else ''} asked)"
    )
    return EXIT_NOT_BUILT


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
        description="Chaos drills for the SRE team: the scenarios, and (soon) running them.",
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
        help="run a drill (NOT BUILT YET: checks the arguments, runs nothing, exits 3)",
        description=(
            "Run a drill: check the steady state, inject the fault, heal, check the steady "
            "state and the invariants, write a report. NOT BUILT YET: this checks the "
            "arguments, says the runner is missing and exits 3 without touching anything."
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
        help="a TOML config describing a running system (default: start a small one)",
    )
    run.set_defaults(handler=_cmd_run)


def run(argv: Sequence[str]) -> int:
    """Parse `argv` (what follows `citypost drill`) and run it: for tests and embedding."""
    parser = argparse.ArgumentParser(prog="citypost")
    add_drill_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["drill", *argv])
    code: int = args.handler(args)
    return code
