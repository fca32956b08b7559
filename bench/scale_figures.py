"""What `bench/scale_bench.py` measured, and how it is shown: figures, counts, the table.

Pure: no processes, no cluster. The requests the counting proxy saw are sorted into kinds
(`METHOD kind`) and tag PUTs per repository; the controller's start-up push check (an
upload opened and cancelled in `image-cloner-check`) is counted apart from the images.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.proxy import ProxiedRequest

__all__ = ["TARGETS", "Figures", "Phase", "classify", "patches", "render"]

TARGETS = {"rewritten_s": 20.0, "max_rss_mib": 100.0}


@dataclass
class Phase:
    """What the controller did in one phase, as seen from outside."""

    seconds: float = 0.0
    """From the controller's start until every Deployment was rewritten (first pass),
    or until it settled (restart)."""
    first_rewrite_s: float = 0.0
    """From the start until the first Deployment was rewritten (start-up, initial listing)."""
    median_rewrite_s: float = 0.0
    backup_requests: dict[str, int] = field(default_factory=dict)
    """`METHOD kind` → count, at the backup registry."""
    tag_puts: dict[str, int] = field(default_factory=dict)
    """Repository → PUTs of a manifest by tag."""
    patches: dict[int, int] = field(default_factory=dict)
    """Spec patches per workload → how many workloads got that many."""
    cpu_s: float = 0.0
    """Controller CPU (user + system) from its start until it settled."""
    cpu_rewritten_s: float = 0.0
    """Controller CPU until every Deployment was rewritten (first pass)."""
    cluster_cpu_s: float = 0.0
    """CPU of the test bed (apiserver, etcd, controller-manager, scheduler, KWOK) meanwhile:
    on these 2 cores the cluster and the controller take turns."""
    settled_s: float = 0.0
    """From the start until it settled: queue empty, the rollouts it follows done."""
    max_rss_mib: float = 0.0
    reconciles: int = 0

    @property
    def total_requests(self) -> int:
        """Requests for the workloads' images (the start-up check left out)."""
        return sum(n for k, n in self.backup_requests.items() if not k.endswith(" check"))


@dataclass
class Figures:
    workloads: int
    images: int
    namespaces: int
    load: str
    setup_s: dict[str, float] = field(default_factory=dict)
    first: Phase = field(default_factory=Phase)
    restart: Phase = field(default_factory=Phase)
    idle_window_s: float = 0.0
    idle_cpu_s: float = 0.0
    idle_max_rss_mib: float = 0.0
    shared: Phase | None = None


# --- what the backup registry saw ----------------------------------------------------

CHECK = re.compile(r"/image-cloner-check/")
"""The controller's start-up check of push access (one upload opened and cancelled)."""
_KINDS = (
    ("check", CHECK),
    ("uploads", re.compile(r"/blobs/uploads/")),
    ("blobs", re.compile(r"/blobs/")),
    ("manifests", re.compile(r"/manifests/")),
    ("referrers", re.compile(r"/referrers/")),
    ("tags", re.compile(r"/tags/list$")),
)


def classify(requests: Sequence[ProxiedRequest]) -> tuple[dict[str, int], dict[str, int]]:
    """(`METHOD kind` → count, repository → tag PUTs)."""
    kinds: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    for r in requests:
        kind = next((name for name, pattern in _KINDS if pattern.search(r.path)), "other")
        kinds[f"{r.method} {kind}"] += 1
        repo, manifests, ref = r.path.removeprefix("/v2/").rpartition("/manifests/")
        if r.method == "PUT" and manifests and not ref.startswith("sha256:"):
            tags[repo] += 1
    return dict(sorted(kinds.items())), dict(sorted(tags.items()))


def patches(
    before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]
) -> dict[int, int]:
    return dict(sorted(Counter(after[k] - before.get(k, after[k]) for k in after).items()))


# --- report --------------------------------------------------------------------------


def render(f: Figures) -> str:
    a, b = f.first, f.restart
    per_image = a.total_requests / f.images
    tags = list(a.tag_puts.values())
    rss_target = TARGETS["max_rss_mib"]
    rows = [
        ("workloads / images / namespaces", f"{f.workloads} / {f.images} / {f.namespaces}", ""),
        ("load average at start", f.load, ""),
        (
            "all rewritten after (s)",
            f"{a.seconds:.1f}",
            f"target < {TARGETS['rewritten_s']:.0f} s: {a.seconds / TARGETS['rewritten_s']:.2f}x",
        ),
        (
            "  first / median rewrite after (s)",
            f"{a.first_rewrite_s:.1f} / {a.median_rewrite_s:.1f}",
            "",
        ),
        ("backup requests, first pass", str(a.total_requests), f"{per_image:.1f} per image"),
        ("  per workload", f"{(a.total_requests / f.workloads):.2f}", ""),
        ("tag PUTs per image (min..max)", f"{min(tags, default=0)}..{max(tags, default=0)}", ""),
        ("patches per workload", _dist(a.patches), "target: all 1"),
        ("controller CPU until all rewritten (s)", f"{a.cpu_rewritten_s:.1f}", ""),
        ("test bed's CPU meanwhile (s)", f"{a.cluster_cpu_s:.1f}", "apiserver, etcd, KWOK, ..."),
        ("settled after (s) / CPU until then (s)", f"{a.settled_s:.1f} / {a.cpu_s:.1f}", ""),
        (
            "peak RSS, first pass (MiB)",
            f"{a.max_rss_mib:.0f}",
            f"target <= {rss_target:.0f}: {a.max_rss_mib / rss_target:.2f}x",
        ),
        (
            "restart: backup requests",
            str(b.total_requests),
            f"target <= {f.images}: {b.total_requests / f.images:.2f}x",
        ),
        ("restart: patches per workload", _dist(b.patches), "target: all 0"),
        ("restart: settled after (s)", f"{b.seconds:.1f}", ""),
        ("restart: CPU (s) / peak RSS (MiB)", f"{b.cpu_s:.1f} / {b.max_rss_mib:.0f}", ""),
        (
            f"idle CPU over {f.idle_window_s:.0f} s",
            f"{f.idle_cpu_s:.2f} s",
            f"{100 * f.idle_cpu_s / max(f.idle_window_s, 1):.2f} % of a core",
        ),
        ("peak RSS after idle (MiB)", f"{f.idle_max_rss_mib:.0f}", ""),
    ]
    if f.shared is not None:
        s = f.shared
        pushes = sum(
            n for k, n in s.backup_requests.items() if k in ("POST uploads", "PUT manifests")
        )
        rows.append(("2nd cluster: backup requests", str(s.total_requests), f"{pushes} pushes"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value:>12}  {note}" for name, value, note in rows]
    lines.append("backup requests, first pass: " + _kinds(a.backup_requests))
    lines.append("backup requests, restart:    " + _kinds(b.backup_requests))
    return "\n".join(lines)


def _dist(counts: dict[int, int]) -> str:
    return " ".join(f"{n}x:{w}" for n, w in counts.items())


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
