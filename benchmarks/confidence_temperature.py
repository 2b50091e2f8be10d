"""Fit the temperature T of infer's confidence, softmax(-score / T), on single images of a store.

Temperature scaling: the T with the least log-loss of the true task on half of every stored
task's test images (the task trained on that spec is the truth); the other half shows the fit
(mean confidence against task-id accuracy, and the expected calibration error over 10 bins).

    supsup train-task S --data permuted:N --batches 1000     # N = 1..4, the demo's settings
    python benchmarks/confidence_temperature.py S
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from supsup_cli.learn import taskid
from supsup_cli.learn.data import load_task
from supsup_cli.learn.mask_banks import MaskBank
from supsup_cli.learn.objectives import as_input, get_objective, per_example_mask_gradients
from supsup_cli.store import MaskStore


def scores_of(bank: MaskBank) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per image (n, k) scores of one-shot and exhaustive, and each image's true bank row."""
    entropy = get_objective("H")
    parts: dict[str, list[torch.Tensor]] = {"one-shot": [], "exhaustive": []}
    truth = []
    for row, spec in enumerate(bank.task_specs):
        x = as_input(load_task(spec).test_x, bank.device)
        for chunk in x.split(256):
            grads = per_example_mask_gradients(bank.net, bank.mean_mask(), chunk, entropy, None)
            parts["one-shot"].append(bank.products(grads.T.contiguous()).T.double())
            query = taskid.Query(bank, chunk, entropy, None)
            parts["exhaustive"].append(taskid.exhaustive_values(query).double())
        truth.append(torch.full((len(x),), row))
    return {name: torch.cat(p) for name, p in parts.items()}, torch.cat(truth)


def calibration_error(confidence: torch.Tensor, right: torch.Tensor) -> float:
    bins = torch.clamp((confidence * 10).long(), max=9)
    error = 0.0
    for b in bins.unique():
        inside = bins == b
        gap = confidence[inside].mean() - right[inside].mean()
        error += float(inside.double().mean() * gap.abs())
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    args = parser.parse_args()
    bank = MaskBank.from_store(MaskStore.open(args.store), torch.device("cpu"))
    scores, truth = scores_of(bank)
    order = torch.randperm(len(truth), generator=torch.Generator().manual_seed(0))
    fit, held = order[: len(order) // 2], order[len(order) // 2 :]
    grid = torch.logspace(-3, 1, 400, dtype=torch.float64)
    for method, s in scores.items():
        losses = [float(torch.nn.functional.cross_entropy(-s[fit] / t, truth[fit])) for t in grid]
        fitted = float(grid[int(np.argmin(losses))])
        right = (s[held].argmin(1) == truth[held]).double()
        print(f"{method}: {len(s)} images, fitted T = {fitted:.4g}")
        for name, t in (("T = 1", 1.0), (f"T = {taskid.CONFIDENCE_TEMPERATURE}", None)):
            temperature = taskid.CONFIDENCE_TEMPERATURE if t is None else t
            confidence = torch.softmax(-s[held] / temperature, 1).max(1).values
            print(
                f"  {name}: held-out mean confidence {float(confidence.mean()):.3f}, "
                f"task-id accuracy {float(right.mean()):.3f}, "
                f"calibration error {calibration_error(confidence, right):.3f}"
            )


if __name__ == "__main__":
    main()
