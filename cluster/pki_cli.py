"""`citypost pki`: the city's certificate authority for integrators and administrators.

    citypost pki init                       create the root and issuing CAs (once)
    citypost pki issue KIND NAME [--days N] a certificate for a component (again: rotate)
    citypost pki revoke KIND NAME           revoke its certificates (into the CRL)
    citypost pki list [--json]              every certificate issued

The directory is the config's `security.pki_dir` (default `run_dir/pki`, where
`make demo` keeps the demo's), or `--dir`. Running servers pick up what
changed by themselves: etcd and the gRPC servers per new connection (new
certificates, etcd's CRL); the broker when it reloads, which the demo's
supervisor does within a few seconds of a change (it rewrites the ACL from the
PKI first; elsewhere, rewrite the ACL and send mosquitto SIGHUP). A revocation
refuses new connections; one already open stays until it reconnects.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from citypost.config import Config
from security.pki import Kind, Principal
from security.pki_store import PkiStore


def _store(args: argparse.Namespace, config: Config) -> PkiStore:
    directory = args.dir if args.dir is not None else config.pki_dir
    return PkiStore(directory, config.city.name)


def _principal(args: argparse.Namespace, config: Config) -> Principal:
    return Principal(config.city.name, Kind(args.kind), args.name)


def run_pki(args: argparse.Namespace, config: Config) -> int:
    store = _store(args, config)
    if args.pki_command == "init":
        created = store.init()
        state = "created" if created else "already there"
        print(f"certificate authority of {config.city.name} in {store.directory}: {state}")
        return 0
    if args.pki_command == "issue":
        store.init()
        lifetime = None if args.days is None else timedelta(days=args.days)
        identity = store.issue(_principal(args, config), lifetime=lifetime)
        print(f"certificate: {identity.cert}\nkey:         {identity.key}")
        print(f"trust:       {identity.trust}\nrevocations: {identity.crl}")
        return 0
    if args.pki_command == "revoke":
        serials = store.revoke(_principal(args, config))
        print("revoked serials: " + ", ".join(f"{s:x}" for s in serials))
        return 0
    entries = store.entries()
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    for e in entries:
        state = f"revoked {e.revoked_at}" if e.revoked else f"until {e.not_after}"
        print(f"{e.serial:040x}  {e.common_name:<32} {state}")
    return 0


def add_pki_parser(
    commands: argparse._SubParsersAction,
    add_config_flags: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    pki = commands.add_parser("pki", help="the city's certificate authority")
    verbs = pki.add_subparsers(dest="pki_command", required=True)
    kinds = [kind.value for kind in Kind]

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        add_config_flags(parser)
        parser.add_argument(
            "--dir", type=Path, help="the PKI directory (default: security.pki_dir)"
        )
        parser.set_defaults(handler=handler)
        return parser

    verb("init", "create the city's root and issuing CAs")
    issue = verb("issue", "issue (or rotate) a component's certificate")
    issue.add_argument("kind", choices=kinds)
    issue.add_argument("name", help="the component's name (a device: its DevEUI)")
    issue.add_argument("--days", type=int, help="lifetime in days (default: per kind)")
    revoke = verb("revoke", "revoke a component's certificates")
    revoke.add_argument("kind", choices=kinds)
    revoke.add_argument("name")
    listing = verb("list", "every certificate issued")
    listing.add_argument("--json", action="store_true")
