"""The controller against the best Rust router of the same run, row by row, with issue 26's targets: what
bench/overhead_bench.py prints at its end (and writes under "versus" in its --json).

"Best" is per row: whichever of sglang-router and vllm-router has the lower figure there. A ratio is the
controller's figure over that router's; the target is met when the controller's figure is at most target x the
router's (for an added time at or below 0 the router's, when the router added nothing measurable).
"""

from __future__ import annotations

import importlib.metadata
import math

TODAY_RSS_MB = 148.0  # the controller's RSS after 2,000 streams when issue 26 was filed (its "no worse than today")
PACKAGES = ("sglang-router", "vllm-router", "lmdeploy", "uvicorn", "uvloop", "aiohttp", "httptools")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _get(figures: dict, *keys: str) -> float | None:
    node = figures
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node if isinstance(node, (int, float)) and not math.isnan(node) else None


def _added(figures: dict, phase: str, path: str, pct: str) -> float | None:
    ours, direct = _get(figures, phase, path, "ttft_ms", pct), _get(figures, phase, "direct", "ttft_ms", pct)
    return None if ours is None or direct is None else ours - direct


def rows(figures: dict, routers: list[str]) -> list[dict]:
    """(label, unit, target ratio or None, figure of a path, errors of a path or None)"""
    spec = [
        ("added time to first token, sequential, p50", "ms", 1.0,
         lambda p: _get(figures, "ttft", "added", p, "p50"), None),
        ("router CPU per request", "ms", 1.2, lambda p: _get(figures, "ttft", "hop_cpu_ms_per_request", p), None),
        ("router CPU per 1,000 relayed tokens", "ms", 1.5,
         lambda p: _get(figures, "relay", p, "hop_cpu_us_per_token"), None),  # us per token = ms per 1,000
        ("concurrent streams (load phase): added p99 TTFT", "ms", 1.0, lambda p: _added(figures, "load", p, "p99"),
         lambda p: _get(figures, "load", p, "errors")),
        ("concurrent streams (load phase): router CPU", "% of a core", None,
         lambda p: _get(figures, "load", p, "hop_cpu_percent"), None),
        ("big phase: TTFT p50", "ms", 1.1, lambda p: _get(figures, "big", p, "ttft_ms", "p50"),
         lambda p: _get(figures, "big", p, "errors")),
        ("RSS after the big phase", "MB", None, lambda p: _get(figures, "big", p, "hop_rss_end_mb"), None),
        ("idle: CPU per process", "ms per s", None, lambda p: _get(figures, "idle_cpu_ms_per_s", p), None),
    ]
    out = []
    for label, unit, target, value, errors in spec:
        ours = value("controller")
        theirs = {r: value(r) for r in routers if value(r) is not None}
        row = {"row": label, "unit": unit, "controller": ours, "routers": theirs, "target": target}
        if errors:
            row["errors"] = {p: errors(p) for p in ["controller", *routers]}
        if ours is not None and theirs:
            best = min(theirs, key=theirs.get)
            b = theirs[best]
            row["best"] = best
            row["ratio"] = ours / b if b > 0 else None
            if target is not None:
                met = ours <= target * b if b > 0 else ours <= b
                row["met"] = met and (not errors or not errors("controller"))
        if label.startswith("RSS") and ours is not None:
            row["met"] = ours <= TODAY_RSS_MB
            row["target_text"] = f"<= {TODAY_RSS_MB:g} MB (today)"
        out.append(row)
    return out


def print_versus(figures: dict, routers: list[str]) -> list[dict]:
    table = rows(figures, routers)
    if not routers:
        return table
    print("\nController vs the best Rust router in this run (issue 26):")
    print(f"  {'':48s} {'controller':>12s} {'best router':>26s} {'ratio':>6s} {'target':>10s}  met")
    for r in table:
        if r["controller"] is None:
            continue
        best = f"{r['routers'][r['best']]:.2f} ({r['best']})" if r.get("best") else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "n/a"
        target = r.get("target_text") or (f"<= {r['target']:.1f}x" if r["target"] else "")
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        print(f"  {r['row']:48s} {r['controller']:12.2f} {best:>26s} {ratio:>6s} {target:>10s}  {met}")
        if r.get("errors"):
            print(f"  {'':48s} errors: " + ", ".join(f"{p} {e}" for p, e in r["errors"].items()))
    return table
