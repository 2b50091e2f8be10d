"""Figures from evaluation reports (`supsup eval --json`) and stores, drawn with matplotlib.

Headless: figures are matplotlib `Figure` objects saved straight to PNG or SVG, never shown, so no
display or GUI backend is needed. matplotlib is the optional `plot` extra.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ..errors import ConfigError, InputError
from ..store import MaskStore
from .choices import PLOT_FORMATS as FORMATS
from .evaluation import SCHEMA, SCHEMA_VERSION, tasks_digest
from .mask_algebra import mask_overlap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_REPORT_BYTES: Final = 256 * 1024 * 1024
MAX_LABELLED_TICKS: Final = 20

ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class Series:
    """One line of a figure: a label and its (x, y) points."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-"
    annotations: Sequence[str] = ()
    marker: str = "o"
    colour: str | None = None  # series drawing one kind of result in two ways share a colour
    in_legend: bool = True
    layer: int = 2  # matplotlib zorder: higher draws on top where markers coincide


# Distinct hollow shapes, drawn larger for earlier series: where points coincide, every one shows.
MARKERS: Final = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def load_report(path: Path) -> dict[str, Any]:
    """Read one `supsup eval --json` report, checking it is one (one clear error if not)."""
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise InputError(f"{path}: larger than {MAX_REPORT_BYTES:,} bytes; not an eval report")
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read an eval report ({error})") from error
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise InputError(f"{path}: not a supsup eval report (run `supsup eval --json` to make one)")
    if report.get("version") != SCHEMA_VERSION:
        raise InputError(f"{path}: eval report version {report.get('version')!r} is not supported")
    for key in ("store", "settings", "summary", "tasks", "curve"):
        if key not in report:
            raise InputError(f"{path}: eval report lacks {key!r}")
    return report


def check_report_of(store: MaskStore, report: Mapping[str, Any], path: Path) -> None:
    """A report belongs to a store made with the same network whose first n tasks (n: those the
    report saw) have its digest, wherever the store lies now: drawing another store's report
    beside this one's figures would mix two experiments without a word."""
    identity = report["store"]
    seen = identity.get("task_count") if isinstance(identity, Mapping) else None
    records = store.tasks()
    same = (
        isinstance(seen, int)
        and 0 < seen <= len(records)
        and identity.get("network") == json.loads(json.dumps(store.net.to_dict()))
        and identity.get("tasks_sha256") == tasks_digest(records[:seen])
    )
    if not same:
        made_from = identity.get("path") if isinstance(identity, Mapping) else None
        raise InputError(
            f"{path}: an eval report of another store ({made_from}), or of this one before its "
            f"tasks changed, not of {store.path}; pass --allow-other-store to draw it anyway"
        )


def report_label(report: Mapping[str, Any], with_density: bool = True) -> str:
    """A legend entry saying how a report was made: scenario, method, objective, batch."""
    settings, store = report["settings"], report["store"]
    if settings["scenario"] == "GG":
        density = store.get("density")
        shown = with_density and density is not None
        return "GG, task given" + (f", density {density:g}" if shown else "")
    batch = "single image" if settings["batch"] == 1 else f"batch {settings['batch']}"
    return f"GNu {settings['method']} {settings['objective']}, {batch}"


def distinct_labels(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """Report labels, with the store's folder name added where two reports would share one."""
    labels = [report_label(r) for r in reports]
    return [
        f"{label} ({Path(r['store']['path']).name})" if labels.count(label) > 1 else label
        for label, r in zip(labels, reports, strict=True)
    ]


def _new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ConfigError(
            "plotting needs matplotlib: pip install 'supsup[plot]' (or matplotlib)"
        ) from error
    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lstrip(".")
    if suffix not in FORMATS:
        raise ConfigError(f"unknown figure format {suffix!r}; valid: {', '.join(FORMATS)}")
    temporary = path.with_name(f".{path.name}.tmp")
    # No dates in the files: the same inputs draw byte-identical figures.
    metadata = {"Software": "supsup"} if suffix == "png" else {"Creator": "supsup", "Date": None}
    figure.savefig(temporary, format=suffix, dpi=100, metadata=metadata)
    temporary.replace(path)  # a half-written image never carries the final name
    return path


def line_figure(
    series: Sequence[Series],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    note: str = "",
    key: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Lines with markers, one per series; the building block of the curve figures. `key` adds
    legend entries (marker, line style, text) in grey for what a marker or line style means."""
    figure = _new_figure()
    axes = draw_lines(figure.add_subplot(), series, log_x=log_x, key=key)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if note:
        figure.text(0.01, 0.005, note, fontsize="x-small", color="0.35", va="bottom")
    return _save(figure, path)


def draw_lines(
    axes: Any,
    series: Sequence[Series],
    *,
    log_x: bool = False,
    key: Sequence[tuple[str, str, str]] = (),
) -> Any:
    """Draw the series on `axes` (returned): hollow markers that stay visible where points
    coincide, each point label once, integer ticks on a linear x axis that always spans a range."""
    from matplotlib.lines import Line2D

    colours: dict[str, str] = {}
    labelled: set[tuple[float, float, str]] = set()
    for index, one in enumerate(series):
        colour = colours.get(one.colour) if one.colour is not None else None
        (line,) = axes.plot(
            one.x,
            one.y,
            linestyle=one.style,
            marker=one.marker,
            markersize=5 + 2 * (len(series) - 1 - index) if one.marker in MARKERS else 6,
            markerfacecolor="none" if one.marker in MARKERS else None,
            color=colour,
            zorder=one.layer,
            label=one.label if one.in_legend else "_nolegend_",
        )
        if one.colour is not None:
            colours.setdefault(one.colour, line.get_color())
        for x, y, text in zip(one.x, one.y, one.annotations, strict=False):
            if not text or (round(x, 6), round(y, 3), text) in labelled:
                continue  # the same label at the same point, from another series, once
            labelled.add((round(x, 6), round(y, 3), text))
            axes.annotate(
                text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize="x-small"
            )
    xs = [float(x) for one in series for x in one.x]
    if log_x:
        axes.set_xscale("log")
        if xs and max(xs) < 3 * min(xs):  # a narrow range: pad it so ticks and labels are few
            axes.set_xlim(min(xs) / 2, max(xs) * 2)
    else:
        axes.xaxis.get_major_locator().set_params(integer=True)
        if xs:  # from the first task, at least one unit wide: a lone point is not a range
            low, high = min(1.0, min(xs)), max(xs)
            pad = max(0.5, 0.06 * (high - low))
            axes.set_xlim(low - pad, high + pad)
    axes.margins(y=0.08)  # room for the point labels at the edges
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    for marker, style, text in key:
        handles.append(
            Line2D([], [], color="0.4", marker=marker, linestyle=style, markerfacecolor="none")
        )
        labels.append(text)
    if handles:
        axes.legend(handles, labels, fontsize="small")
    return axes


def accuracy_vs_tasks(reports: Sequence[Mapping[str, Any]], path: Path, note: str = "") -> Path:
    """The paper's PermutedMNIST/RotatedMNIST curve: mean accuracy over the tasks learned so far,
    one line per report, with the task-given accuracy (GG) of the first report as a dashed line."""
    return line_figure(
        tasks_series(reports),
        path,
        title="Accuracy vs number of tasks learned",
        xlabel="tasks learned",
        ylabel="mean test accuracy over learned tasks (%)",
        note=note,
    )


def tasks_series(reports: Sequence[Mapping[str, Any]]) -> list[Series]:
    """One series per report (GG dashed and drawn on top), plus the GG bound of GNu reports."""
    labels = distinct_labels(reports)
    series = [
        Series(
            label,
            [p["tasks_learned"] for p in r["curve"]],
            [100 * p["accuracy"] for p in r["curve"]],
            "--" if r["settings"]["scenario"] == "GG" else "-",
            marker=MARKERS[index % len(MARKERS)],
            layer=3 if r["settings"]["scenario"] == "GG" else 2,  # the bound stays in sight
        )
        for index, (r, label) in enumerate(zip(reports, labels, strict=True))
    ]
    scenarios = {r["settings"]["scenario"] for r in reports}
    if scenarios == {"GNu"}:  # no GG report given: its accuracy, measured beside, is the bound
        first = reports[0]["curve"]
        series.append(
            Series(
                "GG, task given (upper bound)",
                [p["tasks_learned"] for p in first],
                [100 * p["accuracy_gg"] for p in first],
                "--",
                marker=MARKERS[len(series) % len(MARKERS)],
                layer=3,
            )
        )
    return series


def accuracy_vs_bytes(series: Sequence[Series], path: Path, note: str = "") -> Path:
    """Accuracy against bytes of masks stored (like the paper's SplitImageNet figure)."""
    return line_figure(
        series,
        path,
        title="Accuracy vs bytes of masks stored",
        xlabel="bytes of all masks learned (log scale)",
        ylabel="mean test accuracy (%)",
        log_x=True,
        note=note,
        key=BYTES_KEY,
    )


BYTES_KEY: Final = (
    ("x", "none", "bit-packed as stored"),
    ("o", "-", "entropy floor (what a coder can reach)"),
)


def bytes_series(reports: Sequence[Mapping[str, Any]]) -> list[Series]:
    """Accuracy at each checkpoint against the bytes of the k masks learned, twice per kind of
    report in one colour (one legend entry): bit-packed as the store holds them (crosses, drawn
    on top), and at the entropy floor a coder reaches (what falls with the density of top-k
    masks). Reports that differ only in density share a line, each point marked with its
    density when the reports hold more than one."""
    densities = {r["store"].get("density") for r in reports}
    marked = len(densities) > 1
    groups: dict[str, list[tuple[float, float, float, str]]] = {}
    for r in reports:
        store = r["store"]
        mark = "" if store.get("density") is None or not marked else f"d={store['density']:g}"
        for p in r["curve"]:
            k = p["tasks_learned"]
            groups.setdefault(report_label(r, with_density=not marked), []).append(
                (
                    k * store["mask_bytes_per_task"],
                    k * store["entropy_bytes_per_task"],
                    100 * p["accuracy"],
                    mark,
                )
            )
    series = []
    for index, (label, points) in enumerate(groups.items()):
        packed = sorted(points, key=lambda point: point[0])
        floor = sorted(points, key=lambda point: point[1])
        # Bit-packed bytes do not fall with density: markers only, or a sweep draws a wall.
        series.append(
            Series(
                label,
                [point[0] for point in packed],
                [point[2] for point in packed],
                "none",
                marker="x",
                colour=label,
                in_legend=False,
                layer=3,
            )
        )
        series.append(
            Series(
                label,
                [point[1] for point in floor],
                [point[2] for point in floor],
                "-",
                [point[3] for point in floor],
                marker=MARKERS[index % len(MARKERS)],
                colour=label,
            )
        )
    return series


def heatmap(
    matrix: np.ndarray,
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar: str,
    ticks: Sequence[int] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """A square matrix as an image with a colour bar; tick labels only when few enough to read."""
    figure = _new_figure(5.6, 4.8)
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_invalid(matrix), cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    figure.colorbar(image, ax=axes, label=colorbar, shrink=0.85)
    if ticks is not None and len(ticks) <= MAX_LABELLED_TICKS:
        axes.set_xticks(range(matrix.shape[1]), [str(t) for t in ticks], fontsize="small")
        axes.set_yticks(range(matrix.shape[0]), [str(t) for t in ticks], fontsize="small")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(figure, path)


def taskid_confusion(report: Mapping[str, Any], path: Path) -> Path:
    """Fraction of each true task's images inferred as each stored task (rows sum to 1)."""
    confusion = report.get("confusion")
    if not confusion:
        raise ConfigError(
            "a task-id confusion matrix needs a GNu report (supsup eval --scenario GNu)"
        )
    counts = np.asarray(confusion["counts"], dtype=np.float64)  # (evaluated, stored)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    evaluated = confusion["rows"]
    if rows.shape[0] != rows.shape[1]:
        rows = rows[:, evaluated]  # evaluated a subset: show it against the same tasks
    accuracy = report["summary"]["taskid_accuracy"]
    return heatmap(
        rows,
        path,
        title=f"Task-id confusion, {report_label(report)}\n(task-id accuracy {accuracy:.2%})",
        xlabel="inferred task",
        ylabel="true task",
        colorbar="fraction of the true task's images",
        ticks=evaluated,
        vmin=0.0,
        vmax=1.0,
    )


def mask_overlap_heatmap(store: MaskStore, path: Path, tasks: Sequence[int] | None = None) -> Path:
    """Jaccard overlap between every pair of stored masks; the diagonal (always 1) is left blank
    so the colour scale shows the differences between tasks."""
    overlap = mask_overlap(store, tasks)
    jaccard = overlap.jaccard.astype(np.float64)  # (k, k)
    np.fill_diagonal(jaccard, np.nan)
    return heatmap(
        jaccard,
        path,
        title=f"Mask overlap (Jaccard), {len(overlap.tasks)} tasks, rule {store.header.mask_rule}"
        "\n(diagonal, always 1, left blank)",
        xlabel="task",
        ylabel="task",
        colorbar="|A ∩ B| / |A ∪ B|",
        ticks=overlap.tasks,
    )


def plot_reports(
    store_path: Path,
    reports: Sequence[Path],
    out_dir: Path,
    fmt: str = "png",
    progress: ProgressCallback | None = None,
    allow_other_store: bool = False,
) -> list[Path]:
    """Every figure the inputs allow: curves and bytes (any reports), confusion (GNu reports),
    mask overlap (the store). Reports must be of this store unless `allow_other_store` (a
    density sweep is one store per density): each carries its store's identity, and labels name
    the store where two would read alike. Returns the files written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; valid: {', '.join(FORMATS)}")
    store = MaskStore.open(store_path)
    if not store.task_count:
        raise ConfigError(f"{store_path}: the store holds no tasks; train one first")
    loaded = [load_report(p) for p in reports]
    if not allow_other_store:
        for path, report in zip(reports, loaded, strict=True):
            check_report_of(store, report, path)
    written = []

    def step(name: str, draw: Callable[[], Path]) -> None:
        if progress is not None:
            progress(name)
        written.append(draw())

    if loaded:
        step(
            "accuracy vs tasks",
            lambda: accuracy_vs_tasks(loaded, out_dir / f"accuracy-vs-tasks.{fmt}"),
        )
        step(
            "accuracy vs bytes",
            lambda: accuracy_vs_bytes(bytes_series(loaded), out_dir / f"accuracy-vs-bytes.{fmt}"),
        )
    for report, label in zip(loaded, distinct_labels(loaded), strict=True):
        if report["settings"]["scenario"] == "GNu":
            slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
            step(
                f"task-id confusion, {label}",
                lambda r=report, n=f"taskid-confusion-{slug}.{fmt}": taskid_confusion(
                    r, out_dir / n
                ),
            )
    step("mask overlap", lambda: mask_overlap_heatmap(store, out_dir / f"mask-overlap.{fmt}"))
    return written
