"""The `citypost` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from citypost.config import Config, load_config, parse_override
from citypost.errors import CitypostError, DecodeError
from cluster.apps_cli import add_apps_parser
from cluster.audit_cli import add_audit_parser
from cluster.drill_cli import add_drill_parser
from cluster.pki_cli import add_pki_parser
from console.cli import add_console_parser
from console.failover_cli import add_failover_parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set city.scale=0.05 (repeatable)",
    )


def _config(args: argparse.Namespace, extra: dict[str, Any]) -> Config:
    overrides = [parse_override(text) for text in args.overrides]
    overrides += [(key, value) for key, value in extra.items() if value is not None]
    return load_config(args.config, overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    from cluster.demo import run_demo  # heavy imports only for the commands that need them

    config = _config(args, {"city.scale": args.scale, "sim.speed": args.speed})
    return run_demo(config, duration_s=args.duration)


def _cmd_post(args: argparse.Namespace) -> int:
    import asyncio

    from cluster.post_main import run_post

    config = _config(args, {"post.name": args.name})
    return asyncio.run(run_post(config, ready_file=args.ready_file))


def _cmd_web(args: argparse.Namespace) -> int:
    from cluster.web_process import run_web

    return run_web(_config(args, {}), args.posts, args.ready_file)


def _cmd_pki(args: argparse.Namespace) -> int:
    from cluster.pki_cli import run_pki

    return run_pki(args, _config(args, {}))


def _cmd_apps(args: argparse.Namespace) -> int:
    from cluster.apps_cli import run_apps

    return run_apps(args, _config(args, {}))


def _cmd_audit(args: argparse.Namespace) -> int:
    from cluster.audit_cli import run_audit

    return run_audit(args)


def _cmd_edge_decode(args: argparse.Namespace) -> int:
    from bridges.field_decode import decode_event, decode_lpp

    try:
        if args.lpp is not None:
            result = decode_lpp(args.lpp, f_port=args.f_port, asset_class=args.asset_class)
        else:
            source = args.event
            raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
            result = decode_event(raw, asset_class=args.asset_class)
    except DecodeError as error:
        print(json.dumps({"dead_letter": {"reason": error.reason.value, "detail": error.message}}))
        return 1
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citypost", description="citypost: a control post for a whole city"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run the simulated city against a local stack and show the edge live"
    )
    _add_config_flags(demo)
    demo.add_argument("--scale", type=float, help="share of the real city to simulate (0..1]")
    demo.add_argument("--speed", type=float, help="simulated seconds per real second")
    demo.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: Ctrl-C)"
    )
    demo.set_defaults(handler=_cmd_demo)

    post = commands.add_parser(
        "post", help="run one control post (its own Ray cluster, actors, gRPC services)"
    )
    _add_config_flags(post)
    post.add_argument("--name", help="the post's name (default: post.name from the config)")
    post.add_argument(
        "--ready-file", type=Path, help="write the gRPC address here once the post serves"
    )
    post.set_defaults(handler=_cmd_post)

    web = commands.add_parser(
        "web", help="serve the web console (a client of the posts) on web.host:web.port"
    )
    _add_config_flags(web)
    web.add_argument(
        "--posts",
        required=True,
        help="the posts' gRPC addresses, comma-separated (HOST:PORT,HOST:PORT)",
    )
    web.add_argument("--ready-file", type=Path, help="write the URL here once serving")
    web.set_defaults(handler=_cmd_web)

    edge = commands.add_parser("edge", help="the device edge")
    edge_commands = edge.add_subparsers(dest="edge_command", required=True)
    decode = edge_commands.add_parser(
        "decode", help="decode a Cayenne LPP payload or a ChirpStack uplink event"
    )
    source = decode.add_mutually_exclusive_group(required=True)
    source.add_argument("--lpp", help='payload as hex, spaces allowed: "03 67 01 10"')
    source.add_argument("--event", help="a ChirpStack v4 event/up JSON file, or - for stdin")
    decode.add_argument("--f-port", type=int, help="with --lpp: read it as this fPort's layout")
    decode.add_argument(
        "--class", dest="asset_class", help="read the payload with this class's layout"
    )
    decode.set_defaults(handler=_cmd_edge_decode)

    add_console_parser(commands)
    add_failover_parser(commands)
    add_drill_parser(commands)
    add_pki_parser(commands, _add_config_flags, _cmd_pki)
    add_apps_parser(commands, _add_config_flags, _cmd_apps)
    add_audit_parser(commands, _cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CitypostError as error:
        print(f"citypost: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
