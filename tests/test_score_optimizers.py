"""The score optimizers step as torch.optim's classes do (same defaults, same state), without
loading torch._dynamo, which the classes import on first use (about 1.3 s a process)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from supsup_cli.learn.score_optimizers import ScoreOptimizer

STEPS = 7


def torch_class(name: str, params: list[torch.Tensor], lr: float, fused: bool):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, fused=fused or None)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    return torch.optim.RMSprop(params, lr=lr)


@pytest.mark.parametrize(
    ("name", "fused", "schedule"),
    [
        ("sgd", False, "constant"), ("sgd", True, "cosine"), ("adam", False, "cosine"),
        ("adam", True, "constant"), ("rmsprop", False, "constant"), ("rmsprop", False, "cosine"),
    ],
)  # fmt: skip
def test_steps_equal_torch_optim(name: str, fused: bool, schedule: str) -> None:
    generator = torch.Generator().manual_seed(3)
    start = [torch.randn(5, 4, generator=generator), torch.randn(6, generator=generator)]
    grads = [[torch.randn(t.shape, generator=generator) for t in start] for _ in range(STEPS)]
    theirs = [t.clone().requires_grad_(True) for t in start]
    ours = [t.clone().requires_grad_(True) for t in start]
    reference = torch_class(name, theirs, 0.05, fused)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, STEPS)
    mine = ScoreOptimizer(
        ours, name, 0.05, momentum=0.9, fused=fused, schedule=schedule, steps=STEPS
    )
    for step in range(STEPS):
        for tensor, grad in zip(theirs, grads[step], strict=True):
            tensor.grad = grad.clone()
        for tensor, grad in zip(ours, grads[step], strict=True):
            tensor.grad = grad.clone()
        if step == 3:  # a parameter without a gradient is left alone by both
            theirs[1].grad = ours[1].grad = None
        reference.step()
        if schedule == "cosine":
            cosine.step()
        mine.step()
        for a, b in zip(theirs, ours, strict=True):
            torch.testing.assert_close(a.detach(), b.detach())
    assert not torch.equal(ours[0].detach(), start[0])


def test_zero_grad_drops_the_gradients() -> None:
    scores = torch.ones(3, requires_grad=True)
    optimizer = ScoreOptimizer([scores], "adam", 0.1)
    scores.sum().backward()
    optimizer.zero_grad()
    assert scores.grad is None


def test_training_a_mask_loads_no_dynamo() -> None:
    """A train-task process stays clear of torch._dynamo from its first step to its last."""
    script = (
        "import sys\n"
        "from supsup_cli.format.architectures import NetConfig\n"
        "from supsup_cli.learn.data import load_task\n"
        "from supsup_cli.learn.train import TrainConfig, initial_scores, train_mask\n"
        "from supsup_cli.model.nets import build_net\n"
        "net = NetConfig('lenet-300-100', 10, 0)\n"
        "for name in ('rmsprop', 'sgd', 'adam'):\n"
        "    config = TrainConfig(batches=3, optimizer=name, schedule='cosine')\n"
        "    scores = initial_scores(net.mask_shapes, 0, None)\n"
        "    train_mask(build_net(net), load_task('permuted:1'), 'topk', 0.5, config, scores)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
