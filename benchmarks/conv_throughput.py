"""Images/s of supsup's edge-popup training of a convolutional net against the same network
trained densely (weights learned) by a plain torch loop, in the same run, alternating.

Both see random 32x32 RGB images, Adam lr 1e-3, the same batch size, device and precision (fp32).
The supsup side is `train_mask` (what `train-task` runs), top-k (density 0.5, per layer) and
sign masks; the dense side learns the weights of nn.Conv2d / nn.Linear layers with the same
plan and non-affine BatchNorms. Timing starts after the first step (warm-up) of each loop.

    python benchmarks/conv_throughput.py [--arch resnet18-gem] [--batch 32] [--batches 8]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.convnets import ConvPlan
from supsup_cli.learn.data import TaskData
from supsup_cli.learn.train import TrainConfig, initial_scores, train_mask
from supsup_cli.model.nets import build_net


class DenseNet(nn.Module):
    """The plan's network with learned weights: conv (no bias) + non-affine BN + ReLU, residual
    blocks as in model/convnets.py, linear head."""

    def __init__(self, plan: ConvPlan) -> None:
        super().__init__()
        self.plan = plan
        convs = plan.convs()
        self.convs = nn.ModuleList(
            nn.Conv2d(c.inp, c.out, c.kernel, c.stride, c.padding, bias=False) for c in convs
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c.out, affine=False) for c in convs)
        self.linears = nn.ModuleList(nn.Linear(i, o, bias=False) for o, i in plan.linears)

    def conv_bn(self, site: int, x: torch.Tensor) -> torch.Tensor:
        return self.norms[site](self.convs[site](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_bn(0, x))
        if self.plan.stem_max_pool:
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        site = len(self.plan.stem)
        for block in self.plan.blocks:
            out = x
            for position in range(len(block.convs)):
                out = self.conv_bn(site, out)
                site += 1
                if position < len(block.convs) - 1:
                    out = F.relu(out)
            if block.shortcut is not None:
                x = self.conv_bn(site, x)
                site += 1
            x = F.relu(out + x)
        x = F.avg_pool2d(x, self.plan.head_pool) if self.plan.head_pool else x.mean((2, 3))
        return self.linears[0](x.flatten(1))


def random_task(config: NetConfig, count: int) -> TaskData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, config.inputs, generator=generator)
    y = torch.randint(0, config.outputs, (count,), generator=generator)
    return TaskData("random", tuple(range(config.outputs)), x, y, x[:2], y[:2], config.shape)


def supsup_rate(config: NetConfig, data: TaskData, rule: str, batch: int, batches: int) -> float:
    """Images/s of train_mask from the end of its first step to the end of its last."""
    net = build_net(config)
    density = 0.5 if rule == "topk" else None
    train = TrainConfig(lr=1e-3, batch_size=batch, batches=batches, optimizer="adam")
    stamps: list[float] = []
    scores = initial_scores(config.mask_shapes, 0, None)
    train_mask(
        net,
        data,
        rule,
        density,
        train,
        scores,
        progress=lambda *_: stamps.append(time.perf_counter()),
    )
    return (batches - 1) * batch / (stamps[-1] - stamps[0])


def dense_rate(config: NetConfig, data: TaskData, batch: int, batches: int) -> float:
    """Images/s of a plain torch loop training DenseNet, timed as supsup_rate."""
    net = DenseNet(config.architecture.plan(config.shape, config.outputs)).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = data.train_x.reshape(len(data.train_x), *config.shape)
    stamps = []
    for step in range(batches):
        index = slice(step * batch, (step + 1) * batch)
        loss = F.cross_entropy(net(images[index]), data.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return (batches - 1) * batch / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18-gem")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = NetConfig(args.arch, outputs=100)
    data = random_task(config, args.batch * args.batches)
    best = {"dense": 0.0, "topk": 0.0, "sign": 0.0}
    for _ in range(args.repeats):  # alternate, keep the best of each
        best["dense"] = max(best["dense"], dense_rate(config, data, args.batch, args.batches))
        for rule in ("topk", "sign"):
            rate = supsup_rate(config, data, rule, args.batch, args.batches)
            best[rule] = max(best[rule], rate)
    print(
        f"{args.arch} {'x'.join(map(str, config.shape))}, batch {args.batch}, "
        f"{args.batches} batches (first untimed), best of {args.repeats}, fp32, CPU "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        "no GPU lent"
    )
    print("| training | images/s | vs dense |")
    print("|---|---|---|")
    for name in ("dense", "topk", "sign"):
        label = "dense (plain torch, weights learned)" if name == "dense" else f"supsup {name}"
        print(f"| {label} | {best[name]:.1f} | {best[name] / best['dense']:.2f}x |")


if __name__ == "__main__":
    main()
