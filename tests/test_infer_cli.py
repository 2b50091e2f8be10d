"""`supsup infer` through the CLI: images from a folder, stdin and .npy; data specs; errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.learn.data import embedded_source, pixel_permutation
from supsup_cli.learn.mask_banks import MaskBank

runner = CliRunner()


def permuted_digits(task_seed: int, count: int, start: int = 0) -> np.ndarray:
    """Raw uint8 test digits of `permuted:task_seed` (raw and normalised permute alike)."""
    raw = embedded_source().test_images[start : start + count].reshape(count, 784)
    return raw[:, pixel_permutation(task_seed).numpy()].reshape(count, 28, 28)


def save_pngs(folder: Path, images: np.ndarray, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}-{i:02d}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image, mode="L").save(path)
    return paths


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_folder_gives_one_json_line_per_file(permuted_store, tmp_path) -> None:
    paths = save_pngs(tmp_path / "shots", permuted_digits(2, 12), "p2")
    argv = ["infer", str(permuted_store), str(tmp_path / "shots"), "--per", "batch"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    assert [r["file"] for r in rows] == [str(p) for p in paths]
    assert {r["task"] for r in rows} == {1}  # one batch, trained on permuted:2
    labels = embedded_source().test_labels[:12]
    assert np.mean([r["class"] == label for r, label in zip(rows, labels, strict=True)]) > 0.7
    assert all(0 < r["confidence"] <= 1 for r in rows)


def test_a_mixed_folder_is_answered_image_by_image(permuted_store, tmp_path) -> None:
    """A folder of 5 digits of one task and 5 of another: by default every image gets its own
    task (one task for the folder would answer half of them wrong, confidently)."""
    save_pngs(tmp_path / "mixed", permuted_digits(1, 5, start=40), "a")
    save_pngs(tmp_path / "mixed", permuted_digits(3, 5, start=40), "b")
    result = runner.invoke(app, ["infer", str(permuted_store), str(tmp_path / "mixed")])
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    tasks = np.array([r["task"] for r in rows])
    assert len(tasks) == 10 and np.mean(tasks == np.repeat([0, 2], 5)) >= 0.8
    assert all(r["margin"] >= 0 and 1 / 3 <= r["confidence"] <= 1 for r in rows)
    explicit = runner.invoke(
        app, ["infer", str(permuted_store), str(tmp_path / "mixed")] + ["--per", "image"]
    )
    assert lines(explicit.stdout) == rows
    batch = runner.invoke(
        app, ["infer", str(permuted_store), str(tmp_path / "mixed")] + ["--per", "batch"]
    )
    assert len({r["task"] for r in lines(batch.stdout)}) == 1  # still there when asked for


def test_paths_on_stdin_per_image(permuted_store, tmp_path) -> None:
    first = save_pngs(tmp_path, permuted_digits(1, 4, start=20), "p1")
    third = save_pngs(tmp_path, permuted_digits(3, 4, start=20), "p3")
    listing = "\n".join(str(p) for pair in zip(first, third, strict=True) for p in pair)
    result = runner.invoke(
        app, ["infer", str(permuted_store), "-", "--per", "image"], input=listing + "\n"
    )
    assert result.exit_code == 0, result.output
    tasks = [r["task"] for r in lines(result.stdout)]
    assert len(tasks) == 8 and np.mean(np.array(tasks) == np.tile([0, 2], 4)) >= 0.75


def test_npy_in_batches_with_binary_method(permuted_store, tmp_path) -> None:
    np.save(
        tmp_path / "batch.npy", np.concatenate([permuted_digits(3, 40), permuted_digits(1, 40)])
    )
    result = runner.invoke(
        app,
        ["infer", str(permuted_store), str(tmp_path / "batch.npy"), "--batch", "40"]
        + ["--method", "binary"],
    )
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    assert rows[0]["file"] == f"{tmp_path / 'batch.npy'}[0]"
    assert [r["task"] for r in rows] == [2] * 40 + [0] * 40


def test_data_spec_summary_json(permuted_store) -> None:
    result = runner.invoke(
        app,
        ["infer", str(permuted_store), "--data", "permuted:1..3", "--trials", "2"]
        + ["--batch", "64", "--json", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task_accuracy"] == 1.0 and summary["decisions"] == 6
    assert summary["images"] == 384 and summary["class_accuracy"] > 0.8
    assert [s["true_tasks"] for s in summary["specs"]] == [[0], [1], [2]]
    text = runner.invoke(app, ["infer", str(permuted_store), "--data", "permuted:2", "-q"])
    assert text.exit_code == 0 and "permuted:2: task-id 100.00% over 8 batches" in text.stdout


def test_skip_bad_goes_on_and_reports(permuted_store, tmp_path) -> None:
    save_pngs(tmp_path / "shots", permuted_digits(2, 3), "p2")
    broken = tmp_path / "shots" / "broken.png"
    broken.write_bytes(b"not a png")
    failed = runner.invoke(app, ["infer", str(permuted_store), str(tmp_path / "shots")])
    assert failed.exit_code == 2 and failed.stdout == ""
    assert "broken.png: cannot read the image" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    skipped = runner.invoke(
        app, ["infer", str(permuted_store), str(tmp_path / "shots"), "--skip-bad"]
    )
    assert skipped.exit_code == 0
    assert len(lines(skipped.stdout)) == 3 and "skipped" in skipped.stderr
    assert "broken.png" in skipped.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "nothing to infer"),
        (["IMAGES", "--data", "permuted:1"], "give either images"),
        (["--data", "permuted:1", "--method", "guess"], "valid: one-shot, binary, exhaustive"),
        (["--data", "permuted:1", "--objective", "G"], "superfluous outputs"),
        (["--data", "permuted:1", "--per", "pixel"], "valid: batch, image"),
        (["--data", "shuffled:1"], "invalid data spec"),
        (["IMAGES/missing"], "no such file"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(permuted_store, tmp_path, arguments, message) -> None:
    save_pngs(tmp_path / "images", permuted_digits(1, 1), "p1")
    arguments = [a.replace("IMAGES", str(tmp_path / "images")) for a in arguments]
    result = runner.invoke(app, ["infer", str(permuted_store), *arguments])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_store_is_an_error(tmp_path) -> None:
    result = runner.invoke(app, ["infer", str(tmp_path / "none.zarr"), "--data", "permuted:1"])
    assert result.exit_code == 2 and "no such store" in result.stderr


def test_streamed_masks_give_the_same_answers(permuted_store, tmp_path) -> None:
    """--stream-masks reads the masks for every query instead of holding them: same lines."""
    save_pngs(tmp_path / "shots", permuted_digits(2, 6), "p2")
    argv = ["infer", str(permuted_store), str(tmp_path / "shots"), "--per", "image", "-q"]
    held = runner.invoke(app, argv)
    streamed = runner.invoke(app, [*argv, "--stream-masks"])
    assert held.exit_code == streamed.exit_code == 0, streamed.output
    assert lines(streamed.output) == lines(held.output) and len(lines(held.output)) == 6


@pytest.mark.parametrize(
    ("extra", "streamed"),
    [
        ([], False),  # a folder is answered per image: held
        (["--per", "batch"], True),  # 6 images, one batch, one-shot: one pass over the masks
        (["--batch", "4"], False),  # two batches: read once, keep them
        (["--method", "binary"], False),
        (["--per", "image"], False),
        (["--batch", "4", "--stream-masks"], True),
        (["--hold-masks"], False),
    ],
)
def test_masks_are_streamed_by_default_only_for_one_pass(
    permuted_store, tmp_path, monkeypatch, extra, streamed
) -> None:
    """Without --stream-masks/--hold-masks, a call that answers one batch by one-shot streams
    the masks (the memory of a held bank buys nothing there); every other call holds them."""
    save_pngs(tmp_path / "shots", permuted_digits(2, 6), "p2")
    asked = []
    real = MaskBank.from_store.__func__

    def spy(cls, store, device="cpu", stream=False):
        asked.append(stream)
        return real(cls, store, device, stream)

    monkeypatch.setattr(MaskBank, "from_store", classmethod(spy))
    result = runner.invoke(
        app, ["infer", str(permuted_store), str(tmp_path / "shots"), "-q", *extra]
    )
    assert result.exit_code == 0, result.output
    assert asked == [streamed] and len(lines(result.output)) == 6


def test_a_reader_that_leaves_early_stops_infer_quietly(permuted_store, tmp_path) -> None:
    """`supsup infer S many.npy | head -1`: the closed pipe ends the command with SIGPIPE's
    shell status (141) and nothing on stderr, as shell tools do; no 'error: Broken pipe'."""
    np.save(tmp_path / "many.npy", np.concatenate([permuted_digits(1, 100)] * 20))  # 2,000
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supsup_cli",
            "infer",
            str(permuted_store),
            str(tmp_path / "many.npy"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = child.stdout.readline()
    child.stdout.close()  # the reader leaves; later lines (> one pipe buffer) cannot be written
    stderr = child.stderr.read()
    assert child.wait(timeout=300) == 141, stderr
    assert json.loads(first)["file"].endswith("many.npy[0]") and stderr == b""


def test_a_batchnorm_store_answers_a_folder_per_batch_and_says_so(tmp_path) -> None:
    """BatchNorm without a task needs a batch's statistics: per batch by default, with a note."""
    fixture = Path(__file__).parent / "fixtures" / "previous-release" / "bn.zarr"
    store = tmp_path / "bn.zarr"
    shutil.copytree(fixture, store)
    save_pngs(tmp_path / "shots", permuted_digits(1, 4), "d")
    result = runner.invoke(app, ["infer", str(store), str(tmp_path / "shots")])
    assert result.exit_code == 0, result.output
    assert len({r["task"] for r in lines(result.stdout)}) == 1
    assert "normalises by a batch's statistics" in result.stderr
