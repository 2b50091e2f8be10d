"""`supsup infer`: which task is this? Task inference on unlabelled images or data-spec batches."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import ConfigError
from ..learn.choices import (
    CONFIDENCE_TEMPERATURE,
    DEFAULT_GAMMA,
    DEFAULT_STARTS,
    DEFAULT_STEPS,
    METHODS,
    OBJECTIVES,
)
from .hopfield_commands import HOPFIELD_HELP, HOPFIELD_METHOD, GammaOpt, StartsOpt, StepsOpt
from .hopfield_commands import run_infer as run_hopfield_infer
from .root import (
    DataRootOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    StoreArg,
    command,
    emit_json,
    progress_bar,
    resolve_device,
    say,
)

if TYPE_CHECKING:  # types only: the modules load inside the commands that use them
    from ..learn.taskid import SpecScore


def _choices(registry: dict[str, str]) -> str:
    return "; ".join(f"{name}: {text}" for name, text in registry.items())


INFER_HELP = (
    "Infer the task of unlabelled images or score task inference on labelled data specs.\n\n"
    "Images give one JSON line per file: file, task, class, confidence, margin. The margin is "
    "the runner-up task's score minus the winner's, in the objective's units (for one-shot and "
    "binary the gradient of the objective with respect to the task's weight in the "
    "superposition, for exhaustive the objective itself; null with one stored task).\n\n"
    f"The confidence is softmax(-score / {CONFIDENCE_TEMPERATURE}) of the winner: the "
    f"temperature {CONFIDENCE_TEMPERATURE} was fitted on "
    "single images of PermutedMNIST with objective H (held-out mean confidence 0.89 for a "
    "task-id accuracy of 0.91), so it is near 1 for clear answers and near 1/k for a toss-up "
    "among k tasks; per batch it understates (a batch is easier than one image)."
)


@command("infer", help=INFER_HELP)
def infer(
    store: StoreArg,
    source: Annotated[
        str | None,
        typer.Argument(
            help="Unlabelled images: a folder of PNG/JPEG digits, an image, a .npy array "
            "(n, 28, 28) or one (28, 28) image, or '-' to read paths from stdin. Omit it to use "
            "--data.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Labelled test batches instead of images: a data spec or list "
            "(permuted:3, permuted:1..5); reports task-id and class accuracy.",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method", help=f"How to infer the task. {_choices(METHODS)}; {HOPFIELD_HELP}."
        ),
    ] = "one-shot",
    objective: Annotated[
        str, typer.Option("--objective", help=f"What to minimise. {_choices(OBJECTIVES)}.")
    ] = "H",
    per: Annotated[
        str | None,
        typer.Option(
            "--per",
            help="batch: one task for each batch; image: a task for every image. Default: image "
            "for image files (a folder, a file or paths on stdin: they may mix tasks), batch for "
            "a .npy array, for --data and for stores with BatchNorm (which need a batch's "
            "statistics).",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per inference batch.", min=1)] = 128,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            help="With --data: this many random test batches per spec (0: walk the whole "
            "test split in consecutive batches).",
            min=0,
        ),
    ] = 0,
    trial_seed: Annotated[
        int, typer.Option("--trial-seed", help="Seed of the random test batches of --trials.")
    ] = 0,
    steps: StepsOpt = DEFAULT_STEPS,
    gamma: GammaOpt = DEFAULT_GAMMA,
    starts: StartsOpt = DEFAULT_STARTS,
    stream_masks: Annotated[
        bool | None,
        typer.Option(
            "--stream-masks/--hold-masks",
            help="--stream-masks: leave the masks in the store and read them, in blocks, for "
            "every query (memory stays flat whatever the number of tasks; all masks are read "
            "again for each batch). --hold-masks: read them once and keep them. Default: "
            "stream when the call answers a single batch by one-shot (one pass over the "
            "masks either way), hold otherwise.",
            show_default=False,
        ),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Report unreadable files on stderr and go on."),
    ] = False,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Infer the task of unlabelled images or score task inference on data specs (help:
    INFER_HELP, which says what confidence and margin mean)."""
    from ..learn.choices import PER_MODES
    from ..learn.data import expand_specs
    from ..learn.inputs import ARRAY_SUFFIX, read_inputs
    from ..learn.mask_banks import MaskBank
    from ..learn.taskid import infer_task, score_specs

    if source is None and data is None:
        raise ConfigError("nothing to infer: give images (a folder, file or '-') or --data SPECS")
    if source is not None and data is not None:
        raise ConfigError("give either images (a folder, file or '-') or --data, not both")
    if per is not None and per not in PER_MODES:
        raise ConfigError(f"unknown --per {per!r}; valid: {', '.join(PER_MODES)}")
    if method == HOPFIELD_METHOD:  # recovers masks from the energy matrix, not the mask bank
        if per not in (None, "batch") or objective != "H":
            raise ConfigError(
                "--method hopfield recovers one mask per batch with H: no --per/--objective"
            )
        run_hopfield_infer(
            store,
            source,
            data,
            batch=batch,
            steps=steps,
            gamma=gamma,
            starts=starts,
            skip_bad=skip_bad,
            data_root=data_root,
            device=resolve_device(device),
            quiet=quiet,
            json_out=json_out,
        )
        return
    from ..store import MaskStore

    opened, target = MaskStore.open(store), resolve_device(device)
    if per is None:  # files may mix tasks; an array or data spec is one batch; BatchNorm stores
        # normalise by a batch's statistics and cannot answer an image alone
        one_batch = data is not None or source.lower().endswith(ARRAY_SUFFIX)
        per = "batch" if one_batch or opened.net.stats_size else "image"
        if not one_batch and per == "batch":
            say(
                f"{opened.net.arch} normalises by a batch's statistics: one task for each batch "
                f"of {batch} images (a folder that mixes tasks needs one folder per task)",
                quiet,
                style="yellow",
            )
    if data is not None:
        bank = MaskBank.from_store(opened, target, stream=bool(stream_masks))
        specs = expand_specs(data)
        with progress_bar("inferring (batches)", 1, quiet) as advance:
            scores = score_specs(
                bank,
                specs,
                batch=batch,
                trials=trials,
                seed=trial_seed,
                method=method,
                objective=objective,
                per=per,
                data_root=data_root,
                progress=advance,
            )
        _render_scores(str(store), scores, method, objective, per, json_out)
        return
    images = read_inputs(
        source,
        opened.net.shape,
        stdin=sys.stdin,
        skip_bad=skip_bad,
        on_skip=lambda name, reason: say(f"skipped {reason}", quiet, style="yellow"),
    )
    if stream_masks is None:  # one product over all masks: reading them into memory buys nothing
        stream_masks = len(images.names) <= batch and method == "one-shot" and per == "batch"
    bank = MaskBank.from_store(opened, target, stream=stream_masks)
    if opened.net.stats_size:
        say(
            f"{opened.net.arch} keeps BatchNorm statistics per task: with the task unknown, each "
            "batch is normalised by its own statistics, then classified with the inferred task's",
            quiet,
        )
    for start in range(0, len(images.names), batch):
        result = infer_task(
            bank,
            images.x[start : start + batch],
            method=method,
            objective=objective,
            per=per,
        )
        lines = [
            json.dumps(
                {
                    "file": name,
                    "task": int(task),
                    "class": int(label),
                    "confidence": round(float(confidence), 6),
                    "margin": None if math.isnan(margin) else round(float(margin), 6),
                }
            )
            for name, task, label, confidence, margin in zip(
                images.names[start : start + batch],
                result.tasks,
                result.predictions,
                result.confidences,
                result.margins,
                strict=True,
            )
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


def _render_scores(
    store: str, scores: list[SpecScore], method: str, objective: str, per: str, json_out: bool
) -> None:
    decisions = sum(s.decisions for s in scores if s.true_tasks)
    correct = sum(s.correct_decisions for s in scores if s.true_tasks)
    images = sum(s.images for s in scores)
    summary = {
        "store": store,
        "method": method,
        "objective": objective,
        "per": per,
        "task_accuracy": correct / decisions if decisions else None,
        "class_accuracy": sum(s.correct_classes for s in scores) / images,
        "decisions": decisions,
        "images": images,
        "specs": [
            {
                "data": s.data,
                "true_tasks": list(s.true_tasks),
                "decisions": s.decisions,
                "task_accuracy": s.task_accuracy,
                "class_accuracy": s.class_accuracy,
                "images": s.images,
            }
            for s in scores
        ],
    }
    if json_out:
        emit_json(summary)
        return
    for s in scores:
        task = "no stored task" if s.task_accuracy is None else f"task-id {s.task_accuracy:.2%}"
        typer.echo(
            f"{s.data}: {task} over {s.decisions} {per == 'batch' and 'batches' or 'images'}, "
            f"class accuracy {s.class_accuracy:.2%} ({s.images} images)"
        )
    if len(scores) > 1:
        overall = summary["task_accuracy"]
        typer.echo(
            "all: "
            + ("no stored task" if overall is None else f"task-id {overall:.2%}")
            + f", class accuracy {summary['class_accuracy']:.2%}"
        )
