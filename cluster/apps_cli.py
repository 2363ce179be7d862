"""`citypost apps`: the apps allowed on the posts' citizen listeners.

    citypost apps add NAME      a new app; prints its credential once
    citypost apps rotate NAME   a new secret (the old one stops at once); prints it once
    citypost apps disable NAME | enable NAME | remove NAME
    citypost apps list [--json]

The file is the config's `security.apps_file` (default `run_dir/apps.json`), or
`--file`. Only the secret's SHA-256 is kept: a lost secret is rotated, never
shown again. Running posts see a change at their next citizen call.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from citypost.config import Config
from security.apps import APP_ID, AppBook, AppCredential, apps_path


def _print_credential(credential: AppCredential, book: AppBook) -> None:
    print(f"app {credential.app} in {book.path}")
    print("its credential, shown once (the app sends it as metadata x-citypost-app):")
    print(f"  {credential.header}")


def run_apps(args: argparse.Namespace, config: Config) -> int:
    book = AppBook(args.file if args.file is not None else apps_path(config))
    verb = args.apps_command
    if verb == "add":
        _print_credential(book.add(args.name, now=time.time()), book)
    elif verb == "rotate":
        _print_credential(book.rotate(args.name), book)
    elif verb == "disable":
        book.disable(args.name)
        print(f"app {args.name}: disabled")
    elif verb == "enable":
        book.enable(args.name)
        print(f"app {args.name}: enabled")
    elif verb == "remove":
        book.remove(args.name)
        print(f"app {args.name}: removed")
    elif args.json:
        shown = [{k: v for k, v in asdict(a).items() if k != "secret_hash"} for a in book.apps()]
        print(json.dumps(shown, indent=2))
    else:
        for app in book.apps():
            state = "disabled" if app.disabled else "enabled"
            print(f"{app.app:<32} {state:<9} since {app.created_at}")
    return 0


def add_apps_parser(
    commands: argparse._SubParsersAction,
    add_config_flags: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    apps = commands.add_parser("apps", help="the apps allowed on the citizen listeners")
    verbs = apps.add_subparsers(dest="apps_command", required=True)

    def verb(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        add_config_flags(parser)
        parser.add_argument("--file", type=Path, help="the apps file (default: security.apps_file)")
        if named:
            parser.add_argument("name", help=f"the app's id ({APP_ID.pattern})")
        parser.set_defaults(handler=handler)
        return parser

    verb("add", "a new app; prints its credential once")
    verb("rotate", "a new secret for an app; prints it once")
    verb("disable", "refuse an app's calls (its secret kept)")
    verb("enable", "accept an app's calls again")
    verb("remove", "forget an app")
    listing = verb("list", "every app (no secrets)", named=False)
    listing.add_argument("--json", action="store_true")
