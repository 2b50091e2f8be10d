"""What `supsup allocate` adds to training: one decision and one commit per check.

For k known masks (random bits; lenet-300-100 with 100 outputs, sign rule, batch 128) it times in
the same run: one training step of one mask (the baseline), one decision (the one-shot gradient
over k' = max(k, 5) candidates, untrained padding included, then the threshold rule), and one
commit of a trained mask (an atomic replace with its audit row). With a check every 100 batches
and a commit every 10 checks (the defaults), 100 steps carry one decision and a tenth of a commit:
the last column is that overhead. The three are timed
interleaved, best of --repeats each, so that load from other processes hits them alike.

    python benchmarks/allocate_check.py [--masks 1,5,50,500] [--repeats 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import pack_mask
from supsup_cli.learn.allocate_masks import fresh_scores
from supsup_cli.learn.allocate_rule import candidate_count, decide
from supsup_cli.learn.data import load_task
from supsup_cli.learn.mask_banks import mask_counts_of
from supsup_cli.learn.taskid import alpha_gradient
from supsup_cli.model.nets import build_net
from supsup_cli.model.supermask import ScoreMasks
from supsup_cli.store import MaskStore

NET = NetConfig("lenet-300-100", 100, 0)
CHECK_EVERY = 100
COMMIT_EVERY = 10


def best_ms(actions: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best time of each action in ms, the actions run in turn `repeats` times (after a warm-up)."""
    for action in actions:
        action()
    best = [float("inf")] * len(actions)
    for _ in range(repeats):
        for position, action in enumerate(actions):
            started = time.perf_counter()
            action()
            best[position] = min(best[position], time.perf_counter() - started)
    return [1000 * seconds for seconds in best]


def random_store(path: Path, k: int) -> MaskStore:
    store = MaskStore.create(path, NET, "sign", None)
    rng = np.random.default_rng(0)
    for _ in range(k):
        store.append_task(
            rng.random(NET.mask_bits) < 0.5,
            torch.zeros(NET.mask_bits),
            data="permuted:1",
            classes=range(10),
            accuracy=None,
            train={},
            created="",
            seconds=None,
        )
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", default="1,5,50,500", help="known mask counts k to time")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (best kept)")
    args = parser.parse_args()
    counts = [int(k) for k in args.masks.split(",")]
    torch.manual_seed(0)
    net = build_net(NET)
    data = load_task("permuted:1")
    x, y = data.train_x[:128], data.train_y[:128]
    masks = ScoreMasks(fresh_scores(NET, 0), "sign", None)
    optimizer = torch.optim.RMSprop(masks.parameters(), lr=1e-4)

    def train_step() -> None:
        loss = F.cross_entropy(net(x, masks()), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print("lenet-300-100, 100 outputs, sign masks, batch 128; best of", args.repeats)
    print(
        f"{'k':>5} {'step ms':>8} {'decision ms':>12} {'x step':>7} {'commit ms':>10} "
        f"{'x step':>7} {'overhead':>9}"
    )
    rng = np.random.default_rng(1)
    for k in counts:
        packed = np.stack([pack_mask(rng.random(NET.mask_bits) < 0.5) for _ in range(k)])
        extra = candidate_count(k) - k
        fresh = [
            pack_mask(ScoreMasks(fresh_scores(NET, k + j), "sign", None).mask_bits())
            for j in range(extra)
        ]
        candidates = np.concatenate([packed, *([np.stack(fresh)] if fresh else [])])
        counts_all = mask_counts_of(candidates, NET.mask_bits)

        def decision(candidates=candidates, counts_all=counts_all, k=k) -> None:
            gradient = alpha_gradient(net, candidates, x, counts=counts_all)
            decide(gradient, k)

        with tempfile.TemporaryDirectory() as folder:
            store = random_store(Path(folder) / "s.zarr", k)

            def commit(store=store) -> None:
                row = {"batch": 0, "decision": "continue", "p": 0.3, "threshold": 0.225}
                store.replace_task(
                    0,
                    rng.random(NET.mask_bits) < 0.5,
                    torch.zeros(NET.mask_bits),
                    accuracy=None,
                    train={},
                    seconds=None,
                    log=[row],
                )

            step, decision_ms, commit_ms = best_ms([train_step, decision, commit], args.repeats)
        overhead = (decision_ms + commit_ms / COMMIT_EVERY) / (CHECK_EVERY * step)
        print(
            f"{k:>5} {step:>8.1f} {decision_ms:>12.1f} {decision_ms / step:>7.1f} "
            f"{commit_ms:>10.1f} {commit_ms / step:>7.1f} {overhead:>9.1%}"
        )


if __name__ == "__main__":
    main()
