"""The `image-cloner` command: argument parsing only, the work happens in the library.

Exit statuses (`image_cloner.exits`): 0 success, 1 the copy failed (the registry said no,
was unreachable, or lied; or DST's tag holds other bits and was kept: never moved without
`--force`), 2 bad input or configuration, 130 interrupted. Failures print
one line on stderr; the result (the destination reference with its digest) is the only
thing printed on stdout.

Each subcommand imports what it needs when it runs, nothing of it is imported here:
`--help` and `--version` then cost an interpreter start and argparse, and `copy` loads
aiohttp but no Kubernetes client, kopf, prometheus_client or rich (checked by
tests/unit/test_cli_imports.py; figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from image_cloner.report import Row

from image_cloner import __version__
from image_cloner.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, fail
from image_cloner.logs import LOG_FORMATS, LOG_LEVELS

__all__ = ["PROG", "build_parser", "main"]

PROG = "image-cloner"


class UsageError(Exception):
    """Bad command line; reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage and exits; we want one line and our exit code.
        raise UsageError(f"{self.prog}: {message} (see --help)")


Command = Callable[[argparse.Namespace, Mapping[str, str]], int]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand; each sets `command` to its handler."""
    parser = _Parser(prog=PROG, description="Back up the container images your cluster runs.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_copy(commands)
    _add_revert(commands)
    _add_views(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction[_Parser]) -> None:
    run = commands.add_parser(
        "run",
        help="run the controller (configured by IMAGE_CLONER_* environment variables)",
        description="Watch workloads, back up their images, rewrite them to use the backups.",
    )
    run.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)",
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text or json (default: $IMAGE_CLONER_LOG_FORMAT, else text)",
    )
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="debug shows every decision (inspecting, checking, already cloned)"
        " (default: $IMAGE_CLONER_LOG_LEVEL, else info)",
    )
    run.set_defaults(command=_run_command)


def _run_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from image_cloner.settings import ConfigError, Settings

    try:
        settings = Settings.from_env(env)
    except ConfigError as error:
        fail(f"{PROG} run: {error}")
        return EXIT_BAD_INPUT
    from image_cloner.controller import app

    return app.run(
        settings, kubeconfig=args.kubeconfig, log_format=args.log_format, log_level=args.log_level
    )


def _add_copy(commands: argparse._SubParsersAction[_Parser]) -> None:
    copy = commands.add_parser(
        "copy",
        help="copy one image (every platform, digests unchanged) to another registry",
        description=(
            "Copy SRC to DST byte for byte, every platform. DST defaults to SRC's place "
            "in the backup registry $IMAGE_CLONER_REGISTRY. Prints DST with its digest."
        ),
    )
    copy.add_argument("source", metavar="SRC", help="image to copy, e.g. nginx:1.21.4-alpine")
    copy.add_argument("target", metavar="DST", nargs="?", help="where to copy it")
    copy.add_argument("--src-creds", metavar="USER[:PASS]", help="credentials for SRC's registry")
    copy.add_argument(
        "--dest-creds",
        metavar="USER[:PASS]",
        help="credentials for DST's registry (default: $IMAGE_CLONER_USER/$IMAGE_CLONER_PASS)",
    )
    copy.add_argument("--ca-file", type=Path, help="PEM CA bundle to trust besides the system's")
    copy.add_argument(
        "--insecure",
        metavar="HOST",
        action="append",
        default=[],
        help="registry host reached over plain HTTP or unverified TLS (repeatable)",
    )
    copy.add_argument(
        "--referrers",
        metavar="all|none|TYPES",
        help="signatures, SBOMs, attestations to copy along: all (default), none, or artifact "
        "types, comma-separated; add ,optional to succeed without them "
        "(default: $IMAGE_CLONER_REFERRERS)",
    )
    copy.add_argument(
        "--force",
        action="store_true",
        help="copy even if DST already exists, and move DST's tag if it holds other bits",
    )
    copy.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    copy.set_defaults(command=_copy_command)


def _copy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    with _start_up():
        from image_cloner.aiohttp_loading import import_aiohttp

        import_aiohttp()  # before anything imports it: without its unused SSL contexts
        from image_cloner import copy_command

    return copy_command.run(args, env, prog=PROG)


@contextmanager
def _start_up() -> Iterator[None]:
    """Imports whose objects live as long as the process, without the cyclic GC.

    Importing aiohttp and the registry client allocates enough objects to start some 80
    collections, each walking what is already there (40 ms of a 110 MB copy's ~1 s of CPU,
    measured with `gc.callbacks`; 2 ms after). Nothing imported is garbage, so the
    collector is off while importing and the result frozen out of its sight (`gc.freeze`,
    as CPython's docs suggest for start-up objects); it runs as usual for the rest.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        fail(str(error))
        return EXIT_BAD_INPUT
    command: Command = args.command
    try:
        return command(args, os.environ)
    except KeyboardInterrupt:
        fail(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED


# --- revert ----------------------------------------------------------------------------


def _add_revert(commands: argparse._SubParsersAction[_Parser]) -> None:
    revert = commands.add_parser(
        "revert",
        help="undo the controller's rewrites: original images back, pull Secret removed",
        description=(
            "Restore the images recorded in image-cloner.io/original-images, remove that "
            "annotation and the pull Secret reference, and delete the pull Secret where no "
            "workload uses it. Workloads changed since the rewrite are left alone and "
            "reported (exit status 1). Stop the controller first, or it rewrites them again. "
            "Reads $IMAGE_CLONER_REGISTRY (what a backup image is) and $IMAGE_CLONER_PULL_SECRET."
        ),
    )
    revert.add_argument(
        "targets", metavar="KIND/NAME", nargs="*", help="workloads to revert (needs --namespace)"
    )
    revert.add_argument("--all", action="store_true", help="every rewritten workload in scope")
    revert.add_argument("--namespace", "-n", help="only this namespace (default: all)")
    revert.add_argument("--dry-run", action="store_true", help="change nothing; show what would")
    revert.add_argument("--output", "-o", choices=("table", "json"), default="table")
    revert.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    revert.set_defaults(command=_revert_command)


def _revert_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio

    from image_cloner.controller import operations, revert
    from image_cloner.controller.kube_errors import KubeApiError
    from image_cloner.settings import (
        ConfigError,
        backup_location_from_env,
        pull_secret_name_from_env,
    )

    try:
        if bool(args.targets) == args.all:
            raise ConfigError("give KIND/NAME arguments or --all (not both)")
        targets = tuple(operations.parse_target(t) for t in args.targets)
        scope = operations.Scope(namespace=args.namespace, targets=targets)
        backup, secret = backup_location_from_env(env), pull_secret_name_from_env(env)
        operations.check_kubeconfig(args.kubeconfig)
        work = revert.revert_with(
            args.kubeconfig, scope, backup=backup, pull_secret=secret, dry_run=args.dry_run
        )
        rows = asyncio.run(work)
    except ConfigError as error:
        fail(f"{PROG} revert: {error}")
        return EXIT_BAD_INPUT
    except KubeApiError as error:
        fail(f"{PROG} revert: {error}")
        return EXIT_FAILED
    return _print_rows(rows, args.output, revert.summary(rows, dry_run=args.dry_run))


def _print_rows(rows: Sequence[Row], output: str, summary: str) -> int:
    """Rows as JSON, or as a table (colour on a terminal only) and a summary line; the exit
    status: 1 when a row is a problem."""
    import shutil

    from image_cloner.report import Tone, render_json, render_table

    if output == "json":
        sys.stdout.write(render_json(rows))
    else:
        tty = sys.stdout.isatty()
        width = shutil.get_terminal_size().columns if tty else 80
        if rows:
            sys.stdout.write(render_table(rows, width=width, colour=tty))
        print(summary, flush=True)
    return EXIT_FAILED if any(row.tone is Tone.PROBLEM for row in rows) else EXIT_OK


# --- plan and status -------------------------------------------------------------------


def _add_views(commands: argparse._SubParsersAction[_Parser]) -> None:
    plan = commands.add_parser(
        "plan",
        help="what `run` would do to each workload now (read-only)",
        description=(
            "For each workload the controller would consider: the backup each image would "
            "get (pinned), whether the backup exists, what a copy takes, or why it is "
            "skipped. Same configuration as `run`; copies, patches and posts nothing. "
            "Exit status 1 when a workload would fail."
        ),
    )
    status = commands.add_parser(
        "status",
        help="protected, unprotected, failing and excluded workloads, and why",
        description=(
            "Each workload's state as the image_cloner_workloads gauge counts it, its "
            "last Event of the controller, and per backup image its digest, platforms, "
            "size and when it was written. Exit status 1 when one is unprotected or failing."
        ),
    )
    for parser, handler in ((plan, _plan_command), (status, _status_command)):
        parser.add_argument("--namespace", "-n", help="only this namespace (default: all)")
        parser.add_argument("--output", "-o", choices=("table", "json"), default="table")
        parser.add_argument(
            "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
        )
        parser.set_defaults(command=handler)


def _plan_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from image_cloner.controller import plan

    return _view("plan", args, env, plan.plan_with, plan.summary)


def _status_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from image_cloner.controller import status

    return _view("status", args, env, status.status_with, status.summary)


def _view(
    name: str,
    args: argparse.Namespace,
    env: Mapping[str, str],
    rows_of: Callable[..., Coroutine[Any, Any, list[Any]]],
    summary: Callable[[list[Any]], str],
) -> int:
    """A read-only command's run: its rows as a table or JSON; 1 when a row is a problem."""
    import asyncio

    from image_cloner.controller import operations
    from image_cloner.controller.kube_errors import KubeApiError
    from image_cloner.oci.errors import RegistryError
    from image_cloner.settings import ConfigError, Settings

    try:
        settings = Settings.from_env(env)
        namespace = args.namespace or settings.namespace
        if settings.namespace is not None and namespace != settings.namespace:
            raise ConfigError(
                f"--namespace {namespace}: the controller watches only "
                f"{settings.namespace} (IMAGE_CLONER_NAMESPACE)"
            )
        operations.check_kubeconfig(args.kubeconfig)
        scope = operations.Scope(namespace=namespace)
        rows = asyncio.run(rows_of(args.kubeconfig, settings, scope))
    except ConfigError as error:
        fail(f"{PROG} {name}: {error}")
        return EXIT_BAD_INPUT
    except (KubeApiError, RegistryError) as error:
        fail(f"{PROG} {name}: {error}")
        return EXIT_FAILED
    return _print_rows(rows, args.output, summary(rows))
