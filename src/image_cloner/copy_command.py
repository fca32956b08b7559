"""The `image-cloner copy` subcommand: one image, every platform, byte for byte.

`cli` parses the command line and imports this module only to run `copy`, so that the
other commands (and `--help`) never load aiohttp. What this imports is all `copy` loads:
the registry client and the settings it reads, no Kubernetes client, kopf,
prometheus_client, and rich only when progress is shown on a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from image_cloner.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail
from image_cloner.mapping import is_backup, parse_backup_location, target_for
from image_cloner.oci.copying import Copier, CopyResult, TagOutcome
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.options import Credentials, RegistryOptions
from image_cloner.oci.references import InvalidReference, Reference, parse_reference
from image_cloner.settings import (
    REGISTRY,
    ConfigError,
    parse_credentials,
    registry_options_from_env,
)

__all__ = ["CopyPlan", "plan_copy", "run"]


@dataclass(frozen=True)
class CopyPlan:
    source: Reference
    target: Reference
    options: RegistryOptions


def run(args: argparse.Namespace, env: Mapping[str, str], *, prog: str) -> int:
    """`PROG copy` with the parsed `args`; returns the exit status."""
    try:
        plan = plan_copy(args, env)
    except ValueError as error:  # InvalidReference and ConfigError are ValueErrors
        fail(f"{prog} copy: {error}")
        return EXIT_BAD_INPUT
    show_progress = not args.quiet and sys.stderr.isatty()
    try:
        result = asyncio.run(_copy(plan, force=args.force, show_progress=show_progress))
    except RegistryError as error:
        fail(f"{prog} copy: {plan.source} → {plan.target}: {error}")
        return EXIT_FAILED
    if result.tag is TagOutcome.KEPT:
        # A backup tag is never moved to other bits silently (docs/copy.md).
        fail(
            f"{prog} copy: {plan.source} → {plan.target}: {plan.target} holds"
            f" {result.tag_digest}, not {result.digest}; nothing was overwritten"
            f" (the copy is stored as {result.pinned.name}; --force moves the tag)"
        )
        return EXIT_FAILED
    print(result.pinned.name, flush=True)
    return EXIT_OK


def plan_copy(args: argparse.Namespace, env: Mapping[str, str]) -> CopyPlan:
    """References and registry options from the arguments and environment.

    Raises `InvalidReference` / `ConfigError` (both `ValueError`) on bad input.
    """
    source = parse_reference(args.source)
    backup_text = env.get(REGISTRY, "").strip()
    backup = None
    if backup_text:
        try:
            backup = parse_backup_location(backup_text)
        except InvalidReference as error:
            raise ConfigError(f"{REGISTRY}: {error}") from None
    if args.target is not None:
        target = parse_reference(args.target)
    elif backup is None:
        raise ConfigError(f"give DST, or set {REGISTRY} to the backup registry")
    elif is_backup(source, backup):
        raise ConfigError(f"{source} is already in the backup registry {backup}; give DST")
    else:
        target = target_for(source, backup)
    extra = _flag_credentials(args, source, target)
    options = registry_options_from_env(
        env,
        # IMAGE_CLONER_USER/PASS belong to the backup registry; without one, to DST's host.
        backup_host=backup.registry.host if backup is not None else target.repository.registry.host,
        extra_credentials=extra,
        extra_insecure_hosts=args.insecure,
        ca_file=args.ca_file,
        referrers=args.referrers,
    )
    return CopyPlan(source, target, options)


def _flag_credentials(
    args: argparse.Namespace, source: Reference, target: Reference
) -> dict[str, Credentials]:
    credentials: dict[str, Credentials] = {}
    src_host = source.repository.registry.host
    dst_host = target.repository.registry.host
    if args.src_creds is not None:
        credentials[src_host] = _credentials(args.src_creds, what="--src-creds")
    if args.dest_creds is not None:
        dest = _credentials(args.dest_creds, what="--dest-creds")
        if credentials.get(dst_host, dest) != dest:
            raise ConfigError(
                f"--src-creds and --dest-creds differ but SRC and DST share the host {dst_host}"
            )
        credentials[dst_host] = dest
    return credentials


def _credentials(text: str, *, what: str) -> Credentials:
    """`USER:PASS`; a bare `USER` asks for the password on the terminal, as skopeo does."""
    if ":" not in text and text and sys.stdin.isatty():
        return Credentials(text, getpass.getpass(f"Password for {text}: "))
    return parse_credentials(text, what=what)


async def _copy(plan: CopyPlan, *, force: bool, show_progress: bool) -> CopyResult:
    async with Copier(plan.options) as copier:
        if not show_progress:
            return await copier.copy_image(plan.source, plan.target, force=force, move_tag=force)
        # Imported only for a terminal: rich costs start-up time every piped copy would pay.
        from rich.console import Console

        from image_cloner.progress import CopyProgress

        console = Console(stderr=True)
        with CopyProgress(console, f"{plan.source} → {plan.target}") as progress:
            result = await copier.copy_image(
                plan.source, plan.target, force=force, move_tag=force, progress=progress
            )
        if result.already_present:
            if result.tag is not TagOutcome.KEPT:  # else the failure line says it all
                console.print(f"already there: {plan.target}", highlight=False)
        else:
            console.print(
                f"copied {plan.source} → {plan.target}: blobs {progress.summary()}, "
                f"{result.manifests_pushed} manifests pushed",
                highlight=False,
            )
        return result
