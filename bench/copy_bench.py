"""Benchmark `image-cloner copy` against skopeo, crane and regctl side by side (`make bench`).

Real registries on loopback (source: open HTTP; destination: htpasswd + TLS from a test CA),
a synthetic image of random data seeded with skopeo, and every tool run as the process a
user would run (`skopeo copy --all --preserve-digests`, `crane copy`, `regctl image copy`:
each copies every platform and keeps the digests). Three figures:

1. Full copy of a 2-platform x 8-layer image (~110 MB), several rounds, each tool into an
   empty destination: wall time, CPU time and peak RSS, medians, and image-cloner's ratios to
   each peer and to the best peer of each figure.
2. The same with one big layer (1 GiB by default): peak RSS next to figure 1's shows that
   streaming keeps memory independent of layer size; wall and CPU time show throughput.
3. HTTP requests to "copy" an image the destination already has, counted by proxies.

Exit status 0 whatever the timings are (slow is a finding, not an error); 1 when a copy
fails or comes out wrong; 2 on bad arguments. `--quick` uses tiny sizes (for the smoke test).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

# `python bench/copy_bench.py` puts bench/ on sys.path; the packages we import (`bench`,
# `tests.support`) live at the repository root.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import skopeo  # noqa: E402
from tests.support.binaries import tool as testbed_tool  # noqa: E402
from tests.support.images import MIB, ImageKind, ImageSpec, SyntheticImage  # noqa: E402
from tests.support.registries import REGISTRY_BINARY  # noqa: E402

from bench.lab import Lab, Tool  # noqa: E402
from bench.measure import CommandFailed, Measurement, floor  # noqa: E402
from bench.report import Results, render, save_json  # noqa: E402

MB = 1_000_000
PLATFORMS = ("linux/amd64", "linux/arm64/v8")
LAYERS = 8
IMAGE_SIZE = 110 * MB
QUICK_LAYER_SIZE = 16 * 1024
QUICK_BIG_LAYER_MB = 2
NAME = "bench/app:v1"
BIG_NAME = "bench/big:v1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=_positive, default=3, help="rounds of figure 1 (3)")
    parser.add_argument(
        "--big-layer-mb",
        type=_positive,
        help=f"size of the big layer in MiB (1024; {QUICK_BIG_LAYER_MB} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one copy may take (600)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layer_size = QUICK_LAYER_SIZE if args.quick else IMAGE_SIZE // (LAYERS * len(PLATFORMS))
    big_mb = args.big_layer_mb or (QUICK_BIG_LAYER_MB if args.quick else 1024)
    spec = ImageSpec(
        kind=ImageKind.INDEX, platforms=PLATFORMS, layers=LAYERS, layer_size=layer_size
    )
    try:
        with (
            tempfile.TemporaryDirectory(prefix="image-cloner-bench-") as tmp,
            Lab(Path(tmp), timeout=args.timeout) as lab,
        ):
            results = _run(lab, spec, ImageSpec.large(big_mb * MIB), rounds=args.rounds)
    except (CommandFailed, RuntimeError, OSError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    print(render(results))
    if args.json is not None:
        save_json(results, args.json)
    return 0


def _run(lab: Lab, spec: ImageSpec, big_spec: ImageSpec, *, rounds: int) -> Results:
    _say(f"generating and seeding {NAME}")
    image = lab.seed(spec, NAME)
    results = Results(
        machine=_machine(),
        image=f"{NAME}: {_describe(image)}, {rounds} rounds",
        big_image="",
        floor=floor(log=lab.logs / "floor.log"),
    )
    for number, tool in _schedule(rounds):
        _say(f"round {number}/{rounds}: {tool}")
        results.rounds.setdefault(tool, []).append(_measure_copy(lab, tool, image, NAME))
        results.start_up.setdefault(tool, []).append(lab.start_up(tool))

    _say("counting requests for an image that is already backed up")
    with lab.destination() as destination:
        skopeo.copy(
            skopeo.docker_ref(lab.source, NAME),
            skopeo.docker_ref(destination, NAME),
            src=lab.source,
            dest=destination,
        )
        for tool in Tool:
            results.requests[tool] = lab.count_requests(tool, destination, NAME)
    lab.drop_layout(image)

    _say(f"generating and seeding {BIG_NAME} ({big_spec.layer_size // MIB} MiB layer)")
    big = lab.seed(big_spec, BIG_NAME)
    lab.drop_layout(big)
    results.big_image = f"{BIG_NAME}: {_describe(big)}"
    for number, tool in _schedule(rounds):
        _say(f"big layer, round {number}/{rounds}: {tool}")
        results.big.setdefault(tool, []).append(_measure_copy(lab, tool, big, BIG_NAME))
    results.machine["load average at end"] = _load()
    return results


def _schedule(rounds: int) -> Iterator[tuple[int, Tool]]:
    """(round, tool) pairs; the order reverses every round, so no tool always goes first."""
    for number in range(1, rounds + 1):
        yield from ((number, tool) for tool in (Tool if number % 2 else reversed(Tool)))


def _measure_copy(lab: Lab, tool: Tool, image: SyntheticImage, name: str) -> Measurement:
    with lab.destination() as destination:
        measurement = lab.copy(tool, lab.source, destination, name)
        lab.verify(destination, name, image)
    return measurement


def _describe(image: SyntheticImage) -> str:
    platforms = len(image.manifests)
    layers = len(image.manifests[0].layers)
    return f"{platforms} platform(s) x {layers} layer(s), {image.total_size / MB:.1f} MB"


def _machine() -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "skopeo": _version(["skopeo", "--version"]),
        "crane": _version([str(testbed_tool("crane")), "version"]),
        "regctl": _version([str(testbed_tool("regctl")), "version"]),
        "docker-registry": _version([REGISTRY_BINARY, "--version"]),
        "load average at start": _load(),
    }


def _version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    found = re.search(r"\bv?(\d+\.\d+[\w.+-]*)", out)
    return found.group(1) if found else "?"


def _load() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
