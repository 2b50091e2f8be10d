"""`supsup hopfield-encode`, and the Hopfield form of `supsup infer` (--method hopfield)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import ConfigError
from ..learn.choices import MAX_STARTS
from .root import JsonOpt, QuietOpt, StoreArg, command, emit_json, progress_bar, say

if TYPE_CHECKING:  # types only: the modules load inside the commands that use them
    from ..learn.hopfield import BatchRecovery, RecoveryConfig, SpecRecovery

HOPFIELD_METHOD = "hopfield"
HOPFIELD_HELP = (
    "hopfield: recover a mask per batch from the store's energy matrix (hopfield-encode first) "
    "by --steps of descent on entropy then energy; the task is the stored mask it equals"
)
StepsOpt = Annotated[
    int,
    typer.Option("--steps", help="Hopfield recovery: descent steps T per batch.", min=1),
]
GammaOpt = Annotated[
    float,
    typer.Option("--gamma", help="Hopfield recovery: weight of the energy term.", min=0.0),
]
StartsOpt = Annotated[
    int,
    typer.Option(
        "--starts",
        help="Hopfield recovery: random starts whose lowest minima of E (the stored patterns, "
        "found from the energy matrix alone) compete with the descent's mask; the mask with "
        "the lowest entropy on the batch wins. 0: the descent's mask only (the paper's rule).",
        min=0,
        max=MAX_STARTS,
    ),
]
TASK_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def parse_tasks(text: str) -> list[int]:
    """'0-4' or '0,2,5-7' -> task indices (ranges inclusive)."""
    if not TASK_LIST.fullmatch(text.replace(" ", "")):
        raise ConfigError(f"--tasks {text!r}: give indices and ranges, e.g. 0-4 or 0,2,5-7")
    tasks: list[int] = []
    for part in text.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ConfigError(f"--tasks {text!r}: range {part} runs backwards")
        tasks.extend(range(first, last + 1))
    return tasks


@command("hopfield-encode")
def hopfield_encode(
    store: StoreArg,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="Tasks to encode, e.g. 0-4 or 0,2,5-7 (default: every task not yet encoded). "
            "They are encoded in task order; encoding a task twice is refused.",
        ),
    ] = None,
    drop_masks: Annotated[
        bool,
        typer.Option(
            "--drop-masks",
            help="Then drop the mask rows of every encoded task: only the energy matrix (and "
            "the per-task records and statistics recovery needs) keep them.",
        ),
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fold task masks into the store's Hopfield energy matrix Psi (Storkey rule), atomically."""
    from ..learn.hopfield import encode_tasks

    outcome = encode_tasks(Path(store), None if tasks is None else parse_tasks(tasks), drop_masks)
    if json_out:
        emit_json(
            {
                "store": str(store),
                "encoded": list(outcome.encoded),
                "tasks": list(outcome.tasks),
                "dropped": list(outcome.dropped),
                "d": outcome.mask_bits,
                "psi_bytes": outcome.psi_bytes,
            }
        )
        return
    say(
        (f"encoded task(s) {_ranges(outcome.encoded)}; " if outcome.encoded else "")
        + f"Psi holds {len(outcome.tasks)} task(s), d = {outcome.mask_bits:,}, "
        f"{outcome.psi_bytes:,} bytes"
        + (f"; masks dropped for {_ranges(outcome.dropped)}" if outcome.dropped else ""),
        quiet,
    )


def hopfield_line(summary: dict[str, Any]) -> str:
    """info's line about the energy matrix (summary from StoreReader.hopfield_summary)."""
    return (
        f"hopfield: {len(summary['tasks'])} task(s) encoded ({_ranges(summary['tasks'])}), "
        f"d = {summary['d']:,}, Psi {summary['psi_bytes']:,} bytes {summary['dtype']}; "
        f"masks {summary['masks']}"
        + (f" (dropped: {_ranges(summary['dropped'])})" if summary["masks"] == "some" else "")
    )


def _ranges(tasks: tuple[int, ...] | list[int]) -> str:
    """0,1,2,3,5 -> '0-3,5' (encoding order kept)."""
    parts: list[list[int]] = []
    for task in tasks:
        if parts and task == parts[-1][-1] + 1:
            parts[-1].append(task)
        else:
            parts.append([task])
    return ",".join(f"{p[0]}-{p[-1]}" if len(p) > 2 else ",".join(map(str, p)) for p in parts)


def run_infer(
    store: str,
    source: str | None,
    data: str | None,
    *,
    batch: int,
    steps: int,
    gamma: float,
    starts: int,
    skip_bad: bool,
    data_root: Path | None,
    device: Any,
    quiet: bool,
    json_out: bool,
) -> None:
    """`supsup infer --method hopfield`: images -> JSON lines; --data -> scores per spec."""
    from ..learn.data import expand_specs
    from ..learn.hopfield import RecoveryConfig, recover_batches, recover_specs
    from ..learn.inputs import read_inputs

    config = RecoveryConfig(steps=steps, gamma=gamma, starts=starts)
    if data is not None:
        specs = expand_specs(data)
        with progress_bar("recovering masks (batches)", 1, quiet) as advance:
            results = recover_specs(
                Path(store),
                specs,
                batch,
                config,
                data_root,
                device,
                progress=advance,
            )
        _render_specs(store, results, config, json_out)
        return
    from ..store import MaskStore

    images = read_inputs(
        source,
        MaskStore.open(store).net.shape,
        stdin=sys.stdin,
        skip_bad=skip_bad,
        on_skip=lambda name, reason: say(f"skipped {reason}", quiet, style="yellow"),
    )
    with progress_bar("recovering masks", len(images.names), quiet) as advance:
        found = recover_batches(Path(store), images.x, batch, config, device, progress=advance)
    for number, result in enumerate(found):
        say(f"batch {number}: {_describe(result)}", quiet)
        end = result.first + len(result.predictions)
        lines = [
            json.dumps({"file": name, "task": result.matched, "class": int(label), "batch": number})
            for name, label in zip(
                images.names[result.first : end], result.predictions.tolist(), strict=True
            )
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


def _describe(result: BatchRecovery) -> str:
    """'equals task 3 (Hamming 0; to the others 1,890..2,019)' or 'no stored mask (nearest ...)'."""
    distances = result.distances
    nearest = min(distances, key=distances.get) if distances else None
    if result.matched is not None:
        others = [d for t, d in distances.items() if t != result.matched]
        source = "; a minimum of E had lower H than the descent's mask"
        return (
            f"recovered the mask of task {result.matched}"
            + (f" (Hamming to the others {min(others):,}..{max(others):,})" if others else "")
            + (source if result.chosen_from == "minimum" else "")
        )
    if nearest is None:
        return "recovered mask equals no stored mask (masks dropped: distances unknown)"
    return (
        f"recovered mask equals no stored mask; nearest task {nearest} "
        f"at Hamming {distances[nearest]:,}"
    )


def _render_specs(
    store: str, results: list[SpecRecovery], config: RecoveryConfig, json_out: bool
) -> None:
    batches = [(r, b) for r in results if r.true_tasks for b in r.batches]
    matched = sum(b.matched in r.true_tasks for r, b in batches)
    images = sum(sum(r.sizes) for r in results)
    summary = {
        "store": store,
        "method": HOPFIELD_METHOD,
        "steps": config.steps,
        "gamma": config.gamma,
        "starts": config.starts,
        "task_accuracy": matched / len(batches) if batches else None,
        "class_accuracy": sum(sum(r.correct) for r in results) / images,
        "images": images,
        "specs": [
            {
                "data": r.data,
                "true_tasks": list(r.true_tasks),
                "task_accuracy": r.task_accuracy,
                "class_accuracy": r.class_accuracy,
                "images": sum(r.sizes),
                "batches": [
                    {
                        "first": b.first,
                        "images": size,
                        "correct": correct,
                        "matched": b.matched,
                        "chosen_from": b.chosen_from,
                        "hamming": {str(t): d for t, d in b.distances.items()},
                        "energy": b.energy,
                    }
                    for b, size, correct in zip(r.batches, r.sizes, r.correct, strict=True)
                ],
            }
            for r in results
        ],
    }
    if json_out:
        emit_json(summary)
        return
    for r in results:
        task = "no encoded task" if r.task_accuracy is None else f"task-id {r.task_accuracy:.2%}"
        hamming = [_hamming_to_true(r, b) for b in r.batches]
        typer.echo(
            f"{r.data}: {task} over {len(r.batches)} batches, class accuracy "
            f"{r.class_accuracy:.2%} ({sum(r.sizes)} images); Hamming to the true mask per "
            f"batch: {' '.join(hamming)}"
        )


def _hamming_to_true(result: SpecRecovery, batch: BatchRecovery) -> str:
    """'0' when the recovered mask is the true one, the distance when the true mask is kept,
    '?' when it was dropped (only equality can be told then)."""
    if batch.matched is not None and batch.matched in result.true_tasks:
        return "0"
    if result.true_tasks and result.true_tasks[0] in batch.distances:
        return f"{batch.distances[result.true_tasks[0]]:,}"
    return "?"
