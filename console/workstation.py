"""The workstation a console runs on: the certificate it presents to the posts.

Every post's gRPC port takes only clients with a certificate of the city's CA
(mutual TLS), so a console needs one: a `console` certificate named after the
workstation, issued by `citypost pki issue console NAME`. `make demo` issues
`console.room` in `run/pki`, which are the defaults here, so the console works
against the demo with no flag. `--insecure` talks plaintext, for a city run
with `security.tls = false` (the benchmarks' baseline) only.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from citypost.errors import ConfigError
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

PKI_ENV = "CITYPOST_PKI_DIR"
WORKSTATION_ENV = "CITYPOST_WORKSTATION"
SESSION_ENV = "CITYPOST_SESSION"  # the console's session file (console.session)
DEFAULT_PKI_DIR = Path("run/pki")
DEFAULT_WORKSTATION = "room"


def add_workstation_flags(
    parser: argparse.ArgumentParser, *, default: Any = None, session: bool = True
) -> None:
    """--pki-dir, --workstation, --insecure (and --session); `default=argparse.SUPPRESS`
    on sub-commands so a flag given before the sub-command is not overwritten."""
    suppress = default is argparse.SUPPRESS
    if session:
        parser.add_argument(
            "--session",
            type=Path,
            default=default if suppress else None,
            help=f"the session file `login` writes (default: ${SESSION_ENV}, else per workstation)",
        )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        default=default if suppress else None,
        help=f"the city's PKI directory (default: ${PKI_ENV}, else {DEFAULT_PKI_DIR})",
    )
    parser.add_argument(
        "--workstation",
        default=default if suppress else None,
        help=(
            "this workstation's certificate name, console.NAME in the PKI "
            f"(default: ${WORKSTATION_ENV}, else {DEFAULT_WORKSTATION})"
        ),
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=default if suppress else False,
        help="plaintext gRPC, for a city run without TLS (security.tls = false) only",
    )


def workstation_identity(args: argparse.Namespace, environ: Mapping[str, str]) -> Identity | None:
    """The workstation's identity from the flags and environment; None with --insecure."""
    if getattr(args, "insecure", False):
        return None
    directory = args.pki_dir or Path(environ.get(PKI_ENV) or DEFAULT_PKI_DIR)
    name = args.workstation or environ.get(WORKSTATION_ENV) or DEFAULT_WORKSTATION
    try:
        store = PkiStore.open(directory)
    except ConfigError as error:
        raise ConfigError(
            f"{error.message}: name the city's PKI with --pki-dir or ${PKI_ENV} "
            "(--insecure for a city without TLS)"
        ) from None
    return store.identity(Principal(store.city, Kind.CONSOLE, name))


def channel_factory(identity: Identity | None) -> Callable[[str], Any]:
    """Sync gRPC channels for the console: mutual TLS with the workstation's certificate."""
    import grpc  # loads only for the commands that call a post

    from security.grpc_tls import secure_channel_factory

    if identity is None:
        return grpc.insecure_channel
    return secure_channel_factory(identity)


def from_environment(args: argparse.Namespace) -> Callable[[str], Any]:
    """A channel factory that finds the workstation's certificate on its first channel, so
    a usage error is reported before a missing certificate."""
    made: list[Callable[[str], Any]] = []

    def factory(address: str) -> Any:
        if not made:
            made.append(channel_factory(workstation_identity(args, os.environ)))
        return made[0](address)

    return factory
