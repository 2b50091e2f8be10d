"""Training throughput of `supsup train-task`'s loop against a plain torch edge-popup loop.

Both learn a top-k (density 0.5) mask for lenet-300-100 on the same permuted embedded digits,
batch 128, RMSprop lr 1e-4, measured in the same run, alternating, best of --repeats.

    python benchmarks/train_throughput.py [--batches 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn.data import load_task
from supsup_cli.learn.train import TrainConfig, initial_scores, train_mask
from supsup_cli.model.nets import build_net


class PlainTopK(torch.autograd.Function):
    """The reference's GetSubnet: sort the scores, keep the top half, straight-through backward."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, density: float) -> torch.Tensor:  # noqa: ARG004
        out = scores.clone()
        _, order = scores.flatten().sort()
        cut = int((1 - density) * scores.numel())
        flat = out.flatten()
        flat[order[:cut]] = 0
        flat[order[cut:]] = 1
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


class PlainLinear(nn.Linear):
    """A plain masked linear layer as one writes it in torch: fixed signed weights, score tensor."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__(fan_in, fan_out, bias=False)
        with torch.no_grad():
            self.weight.copy_(torch.randint(0, 2, self.weight.shape) * 2.0 - 1.0)
            self.weight.mul_(math.sqrt(2.0 / fan_in))
        self.weight.requires_grad_(False)
        self.scores = nn.Parameter(torch.empty_like(self.weight))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * PlainTopK.apply(self.scores.abs(), 0.5))


def plain_loop(x: torch.Tensor, y: torch.Tensor, batches: int) -> float:
    """Seconds for `batches` steps of a plain torch edge-popup loop."""
    net = nn.Sequential(
        PlainLinear(784, 300), nn.ReLU(), PlainLinear(300, 100), nn.ReLU(), PlainLinear(100, 10)
    )
    optimizer = torch.optim.RMSprop([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    started = time.perf_counter()
    for _ in range(batches):
        index = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def supsup_loop(batches: int) -> float:
    """Seconds for `batches` steps of train-task's loop (train_mask), its evaluation included."""
    config = NetConfig("lenet-300-100")
    net = build_net(config)
    scores = initial_scores(config.mask_shapes, 0, None)
    result = train_mask(
        net, load_task("permuted:3"), "topk", 0.5, TrainConfig(batches=batches), scores
    )
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    task = load_task("permuted:3")
    plain, ours = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(task.train_x, task.train_y, args.batches))
        ours.append(supsup_loop(args.batches))
    images = args.batches * 128
    plain_rate, our_rate = images / min(plain), images / min(ours)
    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {threads} torch threads, torch {torch.__version__}")
    print(f"{'loop':<28}{'best s':>10}{'images/s':>12}")
    print(f"{'plain torch edge-popup':<28}{min(plain):>10.2f}{plain_rate:>12,.0f}")
    print(f"{'supsup train-task loop':<28}{min(ours):>10.2f}{our_rate:>12,.0f}")
    print(f"ratio supsup / plain: {our_rate / plain_rate:.2f}  (goal >= 1.0)")


if __name__ == "__main__":
    main()
