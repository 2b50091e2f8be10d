"""`supsup plot`: every figure is written as a valid image, headless; bad inputs are refused."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import ConfigError, InputError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn.data import load_task
from supsup_cli.learn.evaluation import EvalSettings, entropy_bytes_per_task, evaluate_store
from supsup_cli.learn.plots import (
    BYTES_KEY,
    bytes_series,
    distinct_labels,
    draw_lines,
    load_report,
    plot_reports,
    taskid_confusion,
    tasks_series,
)
from supsup_cli.store import MaskStore

runner = CliRunner()
NET = NetConfig("lenet-300-100", outputs=10, seed=0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_mask_store(path: Path, specs: list[str], density: float = 0.5) -> Path:
    """Untrained random masks (seeded): enough for figures, no training needed."""
    rng = np.random.default_rng(0)
    store = MaskStore.create(path, NET, "topk", density)
    for spec in specs:
        store.append_task(
            rng.random(NET.mask_bits) < density,
            torch.zeros(NET.mask_bits),
            data=spec,
            classes=load_task(spec).classes,
            accuracy=None,
            train={},
            created="",
            seconds=None,
        )
    return path


@pytest.fixture(scope="module")
def figures_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 3-task store, a GG report and a GNu report (inference answers the true task)."""
    folder = tmp_path_factory.mktemp("plots")
    store = random_mask_store(folder / "s.zarr", ["split:0", "split:1", "split:2"])
    gg = folder / "gg.json"
    gg.write_text(json.dumps(evaluate_store(store, None, EvalSettings(images=50)).to_dict()))

    def truth(bank, x):
        task = truth.calls % 3 if bank.task_count == 3 else truth.calls % bank.task_count
        truth.calls += 1
        return np.full(len(x), task), np.zeros(len(x), dtype=np.int64)

    truth.calls = 0
    settings = EvalSettings(scenario="GNu", images=50, checkpoints=(1, 2))
    report = evaluate_store(store, None, settings, infer=truth)
    gnu = folder / "gnu.json"
    gnu.write_text(json.dumps(report.to_dict()))
    return store, gg, gnu


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= 300 and image.height >= 300


def test_plot_writes_every_figure_as_png(figures_input, tmp_path: Path) -> None:
    store, gg, gnu = figures_input
    written = plot_reports(store, [gnu, gg], tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "accuracy-vs-tasks.png",
            "accuracy-vs-bytes.png",
            "taskid-confusion-gnu-one-shot-h-batch-128.png",
            "mask-overlap.png",
        ]
    )
    for path in written:
        assert_png(path)
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary files left behind


def test_plot_svg_and_cli(figures_input, tmp_path: Path) -> None:
    store, gg, _ = figures_input
    result = runner.invoke(
        app, ["plot", str(store), str(gg), "--out", str(tmp_path), "--format", "svg", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = [Path(p) for p in json.loads(result.stdout)["figures"]]
    assert {p.name for p in figures} == {
        "accuracy-vs-tasks.svg",
        "accuracy-vs-bytes.svg",
        "mask-overlap.svg",
    }
    for path in figures:
        assert ElementTree.parse(path).getroot().tag.endswith("svg")


def test_store_only_draws_the_overlap(figures_input, tmp_path: Path) -> None:
    store, _, _ = figures_input
    written = plot_reports(store, [], tmp_path)
    assert [p.name for p in written] == ["mask-overlap.png"]
    assert_png(written[0])


def test_bad_inputs_are_one_line_errors(figures_input, tmp_path: Path) -> None:
    store, gg, gnu = figures_input
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else"}))
    for path, message in [(broken, "cannot read"), (other, "not a supsup eval report")]:
        with pytest.raises(InputError, match=message):
            load_report(path)
        result = runner.invoke(app, ["plot", str(store), str(path), "--out", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output
    with pytest.raises(ConfigError, match="format"):
        plot_reports(store, [gg], tmp_path, fmt="bmp")
    with pytest.raises(ConfigError, match="GNu report"):
        taskid_confusion(load_report(gg), tmp_path / "c.png")


def test_bytes_series_uses_measured_entropy(figures_input) -> None:
    _, gg, _ = figures_input
    report = load_report(gg)
    packed, floor = bytes_series([report])
    assert packed.x == [3 * report["store"]["mask_bytes_per_task"]]
    assert floor.x == [pytest.approx(3 * report["store"]["entropy_bytes_per_task"])]
    assert floor.annotations == [""]  # one density: said in the legend, not at every point
    assert floor.label == packed.label == "GG, task given, density 0.5"


def drawn(series: list, **options: object) -> object:
    """The axes the figures would be drawn on, to read back what a reader sees."""
    from matplotlib.figure import Figure

    return draw_lines(Figure().add_subplot(), series, **options)


def test_one_checkpoint_is_drawn_on_a_range_of_whole_tasks(figures_input) -> None:
    _, gg, _ = figures_input
    axes = drawn(tasks_series([load_report(gg)]))
    low, high = axes.get_xlim()
    assert low < 1 and high > 3 and high - low >= 3  # from the first task to the three learned
    ticks = [t for t in axes.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_coinciding_markers_stay_visible(figures_input) -> None:
    _, gg, gnu = figures_input
    axes = drawn(tasks_series([load_report(gnu), load_report(gg)]))
    by_label = {line.get_label(): line for line in axes.get_lines()}
    gnu_line, gg_line = (
        by_label["GNu one-shot H, batch 128"],
        by_label["GG, task given, density 0.5"],
    )
    assert gg_line.get_zorder() > gnu_line.get_zorder()  # the bound is drawn over GNu
    assert gg_line.get_marker() != gnu_line.get_marker()
    assert gg_line.get_markerfacecolor() == "none" == gnu_line.get_markerfacecolor()


def test_bytes_legend_has_one_entry_per_kind_and_packed_on_top(figures_input) -> None:
    _, gg, gnu = figures_input
    reports = [load_report(gnu), load_report(gg)]
    axes = drawn(bytes_series(reports), log_x=True, key=BYTES_KEY)
    texts = [t.get_text() for t in axes.get_legend().get_texts()]
    assert texts == [
        "GNu one-shot H, batch 128",
        "GG, task given, density 0.5",
        "bit-packed as stored",
        "entropy floor (what a coder can reach)",
    ]
    packed = [line for line in axes.get_lines() if line.get_marker() == "x"]
    floor = [line for line in axes.get_lines() if line.get_marker() != "x"]
    assert len(packed) == len(floor) == 2
    assert min(p.get_zorder() for p in packed) > max(f.get_zorder() for f in floor)
    for p, f in zip(packed, floor, strict=True):
        assert p.get_color() == f.get_color()  # one kind, one colour


def test_density_labels_are_not_piled_up(figures_input, tmp_path: Path) -> None:
    _, gg, _ = figures_input
    sparse = random_mask_store(tmp_path / "sparse.zarr", ["split:3", "split:4"], density=0.1)
    report = evaluate_store(sparse, None, EvalSettings(images=20)).to_dict()
    twice = [load_report(gg), load_report(gg), report]  # two kinds at one point, one label
    axes = drawn(bytes_series(twice))
    shown = [(t.get_text(), t.xy) for t in axes.texts]
    assert sorted(text for text, _ in shown) == ["d=0.1", "d=0.5"]


def test_entropy_bytes_of_known_masks() -> None:
    sizes = [int(np.prod(s)) for s in NET.mask_shapes]
    half = np.packbits(np.arange(NET.mask_bits) % 2 == 0)  # every layer exactly half kept
    empty = np.zeros_like(half)
    assert entropy_bytes_per_task(np.stack([half]), NET.mask_shapes) == sum(sizes) / 8
    assert entropy_bytes_per_task(np.stack([half, empty]), NET.mask_shapes) == sum(sizes) / 16


def test_reports_of_several_stores_share_a_figure(figures_input, tmp_path: Path) -> None:
    store, gg, _ = figures_input
    other = random_mask_store(tmp_path / "sparse.zarr", ["split:3", "split:4"], density=0.1)
    report = evaluate_store(other, None, EvalSettings(images=20)).to_dict()
    same_kind = dict(report, store=dict(report["store"], density=0.5))
    labels = distinct_labels([load_report(gg), same_kind])
    assert labels[0] != labels[1] and labels[1].endswith("(sparse.zarr)")
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(report))
    written = plot_reports(store, [gg, sweep], tmp_path / "figs", allow_other_store=True)
    assert {p.name for p in written} >= {"accuracy-vs-bytes.png", "accuracy-vs-tasks.png"}
    packed, floor = bytes_series([load_report(gg), report])
    assert floor.annotations == ["d=0.1", "d=0.5"]  # sorted by bytes: the sparse store first
