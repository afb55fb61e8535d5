"""Benchmark reports: ``<name>.json`` (everything ``run()`` returned) and ``<name>.png`` (a plot).

Every bench returns a dict; its measurements are a list of flat rows, e.g.::

    {"rows": [{"size": 65536, "series": "aiozc write_zc (uvloop)", "gbps": 3.1, ...}, ...]}

The plot is throughput (``y``, default ``gbps``) against ``x`` (default ``size``), one line per
``series``. Rows without a numeric ``x`` (e.g. workloads named "body" / "file") are drawn as grouped
bars instead. When rows have no ``series`` key, the series name is made of their other text fields
(``loop`` / ``server``...), so the aiohttp bench's ``cases`` plot without a special case.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report", "find_rows", "format_size"]

_ROW_KEYS = ("rows", "cases", "results")
_X_FALLBACKS = ("size", "bytes", "workload", "case")


def format_size(n: float) -> str:
    """4096 -> '4 KiB', 64000 -> '64000 B', 1048576 -> '1 MiB' (exact binary units only)."""
    n = int(n)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def find_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The list of measurement rows in a bench result (first of ``rows``/``cases``/``results``)."""
    for key in _ROW_KEYS:
        value = results.get(key)
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            return value
    return []


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return repr(value)


def _pick_x(rows: Sequence[dict[str, Any]], x: str | None) -> str | None:
    for key in ((x,) if x else ()) + _X_FALLBACKS:
        if all(key in r for r in rows):
            return key
    return None


def _series_name(row: dict[str, Any], series: str, x: str, y: str) -> str:
    if series in row:
        return str(row[series])
    # No explicit series: name it after the row's other text fields (e.g. "uvloop / aiozc").
    parts = [str(v) for k, v in row.items() if isinstance(v, str) and k not in (x, y)]
    return " / ".join(parts) or "all"


def _group(
    rows: Iterable[dict[str, Any]], x: str, y: str, series: str
) -> dict[str, list[tuple[Any, float]]]:
    groups: dict[str, list[tuple[Any, float]]] = {}
    for row in rows:
        value = row.get(y)
        if isinstance(value, (int, float)) and math.isfinite(value):
            groups.setdefault(_series_name(row, series, x, y), []).append((row[x], float(value)))
    return groups


def _plot_lines(ax: Any, groups: dict[str, list[tuple[Any, float]]]) -> None:
    xs = sorted({px for points in groups.values() for px, _ in points})
    markers = "osD^vP*X<>"
    for i, (name, points) in enumerate(groups.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=markers[i % len(markers)],
                label=name, linewidth=1.8)
    if len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([format_size(v) for v in xs])
    ax.minorticks_off()


def _plot_bars(ax: Any, groups: dict[str, list[tuple[Any, float]]]) -> None:
    cats = list(dict.fromkeys(px for points in groups.values() for px, _ in points))
    width = 0.8 / max(len(groups), 1)
    for i, (name, points) in enumerate(groups.items()):
        by_cat = dict(points)
        pos = [c + i * width - 0.4 + width / 2 for c in range(len(cats))]
        ax.bar(pos, [by_cat.get(c, 0.0) for c in cats], width=width, label=name)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([str(c) for c in cats])


def _write_png(
    path: Path, name: str, rows: list[dict[str, Any]], *, x: str | None, y: str, series: str,
    title: str | None, xlabel: str | None, ylabel: str | None,
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"report: matplotlib not installed, no {path.name} (pip install 'aiozc[plot]')")
        return False
    xkey = _pick_x(rows, x)
    if xkey is None:
        return False
    groups = _group(rows, xkey, y, series)
    if not groups:
        return False
    numeric = all(isinstance(px, (int, float)) for pts in groups.values() for px, _ in pts)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        (_plot_lines if numeric else _plot_bars)(ax, groups)
        ax.set_title(title or f"aiozc bench {name}")
        ax.set_xlabel(xlabel or ("datagram / write size" if xkey == "size" else xkey))
        ax.set_ylabel(ylabel or ("throughput (GB/s)" if y == "gbps" else y))
        top = max(v for pts in groups.values() for _, v in pts)
        # Headroom above the highest point or bar keeps the legend off the data.
        ax.set_ylim(0, top * (1.15 + 0.06 * len(groups)) if top > 0 else 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", ncol=2 if len(groups) > 3 else 1)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return True


def write_report(
    out_dir: str | Path,
    name: str,
    results: dict[str, Any],
    *,
    rows: list[dict[str, Any]] | None = None,
    x: str | None = "size",
    y: str = "gbps",
    series: str = "series",
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> list[Path]:
    """Write ``out_dir/<name>.json`` and, if there are rows to plot, ``out_dir/<name>.png``.

    ``rows`` defaults to :func:`find_rows` of ``results``; ``x``/``y``/``series`` name the row
    keys to plot (see the module docstring for the fallbacks). A bench may also put defaults
    for these and for ``title``/``xlabel``/``ylabel`` in ``results["plot"]`` (used when the
    caller passes none, as ``python -m aiozc bench NAME --out DIR`` does). Returns the paths
    written.
    """
    plot_hints = results.get("plot")
    hints: dict[str, Any] = plot_hints if isinstance(plot_hints, dict) else {}
    x = hints.get("x", x) if x == "size" else x
    y = hints.get("y", y) if y == "gbps" else y
    series = hints.get("series", series) if series == "series" else series
    title = title or hints.get("title")
    xlabel = xlabel or hints.get("xlabel")
    ylabel = ylabel or hints.get("ylabel")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    written = [json_path]
    plot_rows = rows if rows is not None else find_rows(results)
    png_path = out / f"{name}.png"
    if plot_rows and _write_png(
        png_path, name, plot_rows, x=x, y=y, series=series, title=title, xlabel=xlabel, ylabel=ylabel
    ):
        written.append(png_path)
    return written
