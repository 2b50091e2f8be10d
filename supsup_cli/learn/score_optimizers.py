"""The optimizers of the scores, stepped through torch's functional updates.

torch.optim's optimizer classes import `torch._dynamo` when first used (about 1.3 s on two
cores), which every `train-task`, `allocate` and `hopfield-encode` process would pay before its
first step. The functional updates those classes call (`torch.optim.sgd.sgd`, `adam.adam`,
`rmsprop.rmsprop`) do the same arithmetic without it; this module keeps their state as the
classes do, with the classes' defaults (tests/test_score_optimizers.py checks them step for step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import torch
from torch import nn
from torch.optim import adam, rmsprop, sgd

OPTIMIZERS: Final = ("rmsprop", "sgd", "adam")
SCHEDULES: Final = ("constant", "cosine")
FUSED_DEVICES: Final = ("cpu", "cuda")  # where torch has fused SGD and Adam steps
RMSPROP_ALPHA: Final = 0.99  # torch.optim.RMSprop's defaults
ADAM_BETAS: Final = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS: Final = 1e-8


class ScoreOptimizer:
    """SGD (with momentum), Adam or RMSprop on a list of parameters, and a learning-rate schedule:
    constant, or cosine decay to 0 over `steps` (CosineAnnealingLR's closed form)."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        name: str,
        lr: float,
        *,
        momentum: float = 0.0,
        fused: bool = False,
        schedule: str = "constant",
        steps: int = 1,
    ) -> None:
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}")
        self.params = list(params)
        self.name, self.base_lr, self.momentum = name, lr, momentum
        self.fused = fused and name != "rmsprop"  # torch has no fused RMSprop
        self.schedule, self.steps, self.taken = schedule, max(1, steps), 0
        # Step counters as the classes keep them: on the parameters' device when fused.
        self.counters = [
            torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
            for p in self.params
        ]
        # Adam's two moments, RMSprop's square average, SGD's momentum buffers (made by sgd).
        self.first = [torch.zeros_like(p) for p in self.params] if name != "sgd" else []
        self.second = [torch.zeros_like(p) for p in self.params] if name == "adam" else []
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        if self.schedule == "constant":
            return self.base_lr
        return self.base_lr * (1 + math.cos(math.pi * self.taken / self.steps)) / 2

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient, then the schedule's step."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        if self.name == "sgd":
            buffers = [self.buffers[i] for i in live]
            sgd.sgd(
                params, grads, buffers, fused=self.fused or None, weight_decay=0.0,
                momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False,
                maximize=False,
            )  # fmt: skip
            for i, buffer in zip(live, buffers, strict=True):  # sgd fills the first step's
                self.buffers[i] = buffer
        elif self.name == "adam":
            adam.adam(
                params, grads, [self.first[i] for i in live], [self.second[i] for i in live], [],
                [self.counters[i] for i in live], fused=self.fused or None, amsgrad=False,
                beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=self.lr, weight_decay=0.0, eps=EPS,
                maximize=False,
            )  # fmt: skip
        else:
            rmsprop.rmsprop(
                params, grads, [self.first[i] for i in live], [], [],
                [self.counters[i] for i in live], lr=self.lr, alpha=RMSPROP_ALPHA, eps=EPS,
                weight_decay=0.0, momentum=0.0, centered=False,
            )  # fmt: skip
        self.taken += 1


def score_optimizer(
    params: Sequence[nn.Parameter],
    name: str,
    lr: float,
    momentum: float,
    schedule: str = "constant",
    steps: int = 1,
) -> ScoreOptimizer:
    """SGD and Adam through torch's fused kernels where the parameters live on the CPU or CUDA
    (one pass over every tensor; torch's default on the CPU is a loop of small ops)."""
    fused = all(p.device.type in FUSED_DEVICES for p in params)
    return ScoreOptimizer(
        params, name, lr, momentum=momentum, fused=fused, schedule=schedule, steps=steps
    )
