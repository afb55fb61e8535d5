"""Benchmark reports: ``<name>.json`` (everything ``run()`` returned) and ``<name>.png`` (a plot).

Every bench returns a dict; its measurements are a list of flat rows, e.g.::

    {"rows": [{"size": 65536, "series": "aiozc write_zc (uvloop)", "gbps": 3.1, ...}, ...]}

The plot is throughput (``y``, default ``gbps``) against ``x`` (default ``size``), one line per
``series``. Rows without a numeric ``x`` (e.g. workloads named "body" / "file") are drawn as grouped
bars instead. When rows have no ``series`` key, the series name is made of their other text fields
(``loop`` / ``server``...), so the aiohttp bench's ``cases`` plot without a special case.

A few benches have too many series for one line plot and get a dedicated figure, chosen by bench
name (``udp-sink``: GB/s against size for one loop, beside bars of every series at the largest
size with their ratio to stock asyncio).

To redraw a PNG from a saved JSON without re-running the bench::

    python -m aiozc.tools.report docs/bench/udp-sink.json      # or replot("docs/bench/udp-sink.json")
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report", "write_png", "replot", "find_rows", "format_size"]

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
    _size_axis(ax, xs)


def _size_axis(ax: Any, xs: list[Any]) -> None:
    """An x axis of sizes: log 2 once they span 8x or more, a tick labelled at each one."""
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


# --- udp-sink: 20+ series (API x engine x loop, plus raw/stock references) ---------------------

# tab20c comes in hues of four shades: one hue per aiozc API, one shade per engine.
_UDP_FAMILY_HUE = {"plain": 0, "coalesce": 1, "many": 2}  # blue, orange, green; others: purple
_UDP_ENGINES = {  # engine -> (shade, marker, linestyle)
    "msgzc": (0, "o", "-"),  # MSG_ZEROCOPY
    "uring": (1, "s", "--"),
    "uring-fixed": (2, "^", "-."),
}
_UDP_REFERENCES = {  # kind -> (colour, linestyle, linewidth)
    "stock": ("black", (0, (5, 2)), 1.6),
    "raw": ("0.45", ":", 1.4),
    "raw-zc": ("0.45", (0, (6, 2, 1, 2)), 1.2),
    # the C reference senders (aiozc.tools.cref): the ceiling, in reds
    "c-send": ("#f4a582", ":", 1.4),
    "c-zc": ("#d6604d", ":", 1.4),
    "c-mmsg": ("#d6604d", (0, (6, 2, 1, 2)), 1.4),
    "c-uring": ("#b2182b", "--", 1.4),
    "c-uring-fixed": ("#67001f", "-", 1.6),
}


def _udp_loop(row: dict[str, Any]) -> str | None:
    loop = row.get("loop")
    if isinstance(loop, str) and loop not in ("", "-"):
        return loop
    text = str(row.get("series", ""))
    if text.endswith(")") and "(" in text:
        return text[text.rindex("(") + 1 : -1].removesuffix(" loop")
    return None


def _udp_style(row: dict[str, Any]) -> dict[str, Any]:
    """Colour/marker/line of a udp-sink row, from its ``kind`` (or, lacking one, its name)."""
    from matplotlib import colormaps

    kind = str(row.get("kind") or "")
    text = f"{kind} {row.get('series', '')}".lower()
    if kind in _UDP_REFERENCES or text.strip().startswith(("raw", "stock", "asyncio stock")):
        ref = kind if kind in _UDP_REFERENCES else (
            "stock" if "stock" in text else "raw-zc" if "zerocopy" in text else "raw"
        )
        colour, style, width = _UDP_REFERENCES[ref]
        return {"color": colour, "linestyle": style, "linewidth": width, "marker": None,
                "reference": True, "order": (-1, list(_UDP_REFERENCES).index(ref))}
    family = "many" if "many" in text else "coalesce" if "coalesce" in text else "plain"
    engine = "uring-fixed" if ("uring-fixed" in text or "io_uring fixed" in text) else (
        "uring" if "uring" in text else "msgzc"
    )
    shade, marker, style = _UDP_ENGINES[engine]
    hue = _UDP_FAMILY_HUE.get(family, 3)
    return {"color": colormaps["tab20c"](hue * 4 + shade), "linestyle": style, "linewidth": 2.0,
            "marker": marker, "reference": False, "order": (hue, shade)}


def _write_udp_sink_png(
    plt: Any, path: Path, rows: list[dict[str, Any]], *, x: str, y: str,
    title: str | None, xlabel: str | None, ylabel: str | None,
) -> bool:
    """Top: ``y`` against ``x`` on one loop (uvloop if there), stock and raw as thin references.
    Bottom: every series (all loops) at the largest ``x`` as sorted bars, with ratio to stock."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    points = [
        r for r in rows
        if isinstance(r.get(y), (int, float)) and math.isfinite(r[y]) and isinstance(r.get(x), (int, float))
    ]
    if not points:
        return False
    loops = list(dict.fromkeys(lp for lp in map(_udp_loop, points) if lp))
    shown_loop = "uvloop" if "uvloop" in loops else (loops[0] if loops else None)
    biggest = max(r[x] for r in points)
    ylabel = ylabel or ("throughput (GB/s)" if y == "gbps" else y)
    unit = "GB/s" if y == "gbps" else ""

    # stock GB/s per loop at each size: the reference of the bars' ratios
    stock: dict[tuple[Any, str | None], float] = {}
    for r in points:
        if _udp_style(r)["reference"] and "stock" in f"{r.get('kind', '')} {r.get('series', '')}":
            stock[(r[x], _udp_loop(r))] = float(r[y])

    bars = sorted((r for r in points if r[x] == biggest), key=lambda r: float(r[y]))
    bars_height = 0.3 * len(bars) + 1.3
    fig = plt.figure(figsize=(12, 5.4 + bars_height), dpi=110, layout="constrained")
    # two subfigures: the bars' long labels widen only their own left margin
    top_fig, bar_fig = fig.subfigures(2, 1, height_ratios=[5.4, bars_height])
    top_ax, bar_ax = top_fig.subplots(), bar_fig.subplots()
    try:
        # --- top: lines on one loop
        lines: dict[str, list[dict[str, Any]]] = {}
        for r in points:
            if _udp_loop(r) in (shown_loop, None):
                lines.setdefault(str(r.get("series", "all")), []).append(r)
        for name, pts in sorted(lines.items(), key=lambda kv: _udp_style(kv[1][0])["order"]):
            pts.sort(key=lambda r: r[x])
            style = _udp_style(pts[0])
            label = name.removesuffix(f" ({shown_loop})").removesuffix(f" ({shown_loop} loop)")
            top_ax.plot(
                [r[x] for r in pts], [r[y] for r in pts], label=label, color=style["color"],
                linestyle=style["linestyle"], linewidth=style["linewidth"], marker=style["marker"],
                markersize=6, zorder=2 if style["reference"] else 3,
            )
        _size_axis(top_ax, sorted({r[x] for r in points}))
        low = min(r[y] for r in points)
        if low > 0 and max(r[y] for r in points) / low >= 8:
            # log y: small sizes are not squashed to the floor, equal ratios look equal
            top_ax.set_yscale("log")
            high = max(r[y] for r in points)
            top_ax.set_yticks([v for v in (0.5, 1, 2, 5, 10, 20, 50, 100, 200) if low / 2 <= v <= 1.5 * high])
            top_ax.yaxis.set_major_formatter(ScalarFormatter())
            top_ax.yaxis.set_minor_formatter(NullFormatter())
            ylabel = ylabel[:-1] + ", log scale)" if ylabel.endswith(")") else ylabel + " (log scale)"
        top_ax.set_title(
            f"{ylabel.split(' (')[0]} vs {xlabel or x} on {shown_loop or 'every loop'}"
            + (" (raw: no event loop)" if any(_udp_loop(r) is None for r in points) else ""),
            fontsize=11,
        )
        top_ax.set_xlabel(xlabel or ("datagram size" if x == "size" else x))
        top_ax.set_ylabel(ylabel)
        top_ax.grid(True, which="major", alpha=0.3)
        top_ax.legend(
            fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
            title="colour: API, line: engine", title_fontsize=9,
        )

        # --- bottom: every series at the largest size, sorted
        ref_loop = shown_loop
        ref = stock.get((biggest, ref_loop))
        pos = range(len(bars))
        for i, r in zip(pos, bars):
            style = _udp_style(r)
            loop = _udp_loop(r)
            bar_ax.barh(
                i, r[y], height=0.72, color=style["color"],
                edgecolor="black" if style["reference"] else "white", linewidth=0.6,
                hatch="///" if (loop is not None and loop != ref_loop) else None,
                alpha=0.55 if style["reference"] else 1.0,
            )
            base = stock.get((biggest, loop), ref)
            note = f"{r[y]:.1f} {unit}".strip()
            if base:
                note += f"   {r[y] / base:.2f}x stock"
            # past the stock line too, for the bars that end just short of it
            bar_ax.text(max(r[y], ref or 0.0), i, "  " + note, va="center", fontsize=8.5)
        bar_ax.set_yticks(list(pos))
        bar_ax.set_yticklabels([str(r.get("series", "")) for r in bars], fontsize=8.5)
        bar_ax.set_ylim(-0.6, len(bars) - 0.4)
        bar_ax.set_xlim(0, max(r[y] for r in bars) * 1.28)
        handles = []
        if ref:
            handles.append(bar_ax.axvline(
                ref, color="black", linestyle=(0, (5, 2)), linewidth=1.3, zorder=0,
                label=f"asyncio stock ({ref_loop}): {ref:.2f} {unit}".rstrip(),
            ))
        if len(loops) > 1:
            handles += [
                Patch(facecolor="white", edgecolor="0.3", label=f"plain: {ref_loop} / no loop"),
                Patch(facecolor="white", edgecolor="0.3", hatch="///",
                      label="hatched: " + ", ".join(lp for lp in loops if lp != ref_loop)),
            ]
        if handles:
            bar_ax.legend(handles=handles, fontsize=9, loc="lower left", bbox_to_anchor=(1.01, 0.0),
                          borderaxespad=0)
        bar_ax.set_title(
            f"every series at {format_size(biggest) if x == 'size' else biggest}, sorted"
            " (ratio: vs asyncio stock on the same loop; raw rows vs "
            f"{ref_loop} stock)", fontsize=11,
        )
        bar_ax.set_xlabel(ylabel.replace(", log scale)", ")").replace(" (log scale)", ""))
        bar_ax.grid(True, axis="x", alpha=0.3)
        bar_ax.set_axisbelow(True)
        fig.suptitle(title or "aiozc bench udp-sink", fontsize=13)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return True


_SPECIAL_PLOTS: dict[str, Any] = {"udp-sink": _write_udp_sink_png}


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
    special = _SPECIAL_PLOTS.get(name)
    if special is not None and numeric and series == "series":
        return special(plt, path, rows, x=xkey, y=y, title=title, xlabel=xlabel, ylabel=ylabel)
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


def _plot_args(results: dict[str, Any], **given: Any) -> dict[str, Any]:
    """``x``/``y``/``series``/labels: the caller's, else ``results["plot"]`` hints, else defaults."""
    plot_hints = results.get("plot")
    hints: dict[str, Any] = plot_hints if isinstance(plot_hints, dict) else {}
    x, y, series = given["x"], given["y"], given["series"]
    return {
        "x": hints.get("x", x) if x == "size" else x,
        "y": hints.get("y", y) if y == "gbps" else y,
        "series": hints.get("series", series) if series == "series" else series,
        "title": given["title"] or hints.get("title"),
        "xlabel": given["xlabel"] or hints.get("xlabel"),
        "ylabel": given["ylabel"] or hints.get("ylabel"),
    }


def write_png(
    path: str | Path,
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
) -> bool:
    """Draw the plot of bench ``name``'s ``results`` into ``path``; False if nothing to plot."""
    plot_rows = rows if rows is not None else find_rows(results)
    if not plot_rows:
        return False
    args = _plot_args(
        results, x=x, y=y, series=series, title=title, xlabel=xlabel, ylabel=ylabel
    )
    return _write_png(Path(path), name, plot_rows, **args)


def write_report(
    out_dir: str | Path, name: str, results: dict[str, Any], **plot: Any
) -> list[Path]:
    """Write ``out_dir/<name>.json`` and, if there are rows to plot, ``out_dir/<name>.png``.

    ``plot`` are :func:`write_png`'s keywords (``rows``, ``x``, ``y``, ``series``, ``title``,
    ``xlabel``, ``ylabel``). ``rows`` defaults to :func:`find_rows` of ``results``;
    ``x``/``y``/``series`` name the row keys to plot (see the module docstring for the
    fallbacks). A bench may also put defaults for these and for ``title``/``xlabel``/``ylabel``
    in ``results["plot"]`` (used when the caller passes none, as ``python -m aiozc bench NAME
    --out DIR`` does). Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    written = [json_path]
    png_path = out / f"{name}.png"
    if write_png(png_path, name, results, **plot):
        written.append(png_path)
    return written


def replot(json_path: str | Path, png_path: str | Path | None = None) -> Path | None:
    """Redraw the PNG of a saved ``<name>.json`` (next to it unless ``png_path``), no re-run.

    The bench name (which picks the plot) is the file's stem, as :func:`write_report` named it.
    Returns the PNG written, or None when the JSON has nothing to plot.
    """
    src = Path(json_path)
    results = json.loads(src.read_text())
    png = Path(png_path) if png_path is not None else src.with_suffix(".png")
    return png if write_png(png, src.stem, results) else None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aiozc.tools.report NAME.json...``: redraw each NAME.png from its saved JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aiozc.tools.report", description=main.__doc__)
    parser.add_argument("json", nargs="+", type=Path, help="bench result(s) written by --out")
    for src in parser.parse_args(argv).json:
        png = replot(src)
        print(f"wrote {png}" if png else f"{src}: nothing to plot")


if __name__ == "__main__":
    main()
