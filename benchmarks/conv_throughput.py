"""Images/s of supsup's edge-popup training of a convolutional net against the same network
trained densely (weights learned) by a plain torch loop, in the same run, step by step.

Both see random 32x32 RGB images, Adam lr 1e-3, the same batch size, device and precision
(fp32, or bf16 autocast of the forward pass, with channels_last on CUDA as train-task does).
The supsup side is `train_mask` (what `train-task` runs), top-k (density 0.5, per layer) and
sign masks; the dense side learns the weights of nn.Conv2d / nn.Linear layers with the same
plan and non-affine BatchNorms, with torch's default Adam (on the CPU a loop of small ops per
tensor) and with its fused Adam (what supsup uses). The loops are interleaved a step at a time
(train_mask's progress callback runs one step of each dense loop), so that a change of the
machine's load touches all of them alike; the ratio is the median over steps of the paired
ratios. The first step of each loop is a warm-up, not timed.

    python benchmarks/conv_throughput.py [--arch resnet18-gem] [--batch 32] [--batches 12]
        [--precision fp32|bf16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.convnets import ConvPlan
from supsup_cli.format.rules import kept_count
from supsup_cli.learn.data import TaskData
from supsup_cli.learn.train import TrainConfig, autocast, initial_scores, train_mask
from supsup_cli.model.nets import build_net
from supsup_cli.model.radix_select import sites_topk_masks
from supsup_cli.model.supermask import ScoreMasks


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


@dataclass(frozen=True)
class Setting:
    """Where and how both sides train: the device, the precision, and whether conv activations
    are channels_last (train-task's choice: bf16 on CUDA)."""

    device: torch.device
    precision: str

    @property
    def channels_last(self) -> bool:
        return self.precision != "fp32" and self.device.type == "cuda"


class DenseLoop:
    """A plain torch loop training DenseNet, one timed step at a time."""

    def __init__(
        self, config: NetConfig, data: TaskData, batch: int, fused: bool, setting: Setting
    ) -> None:
        self.setting = setting
        plan = config.architecture.plan(config.shape, config.outputs)
        self.net = DenseNet(plan).train().to(setting.device)
        if setting.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3, fused=fused or None)
        images = data.train_x.reshape(len(data.train_x), *config.shape).to(setting.device)
        if setting.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.images, self.labels = images, data.train_y.to(setting.device)
        self.batch = batch

    def step(self, step: int) -> float:
        started = time.perf_counter()
        index = slice(step * self.batch, (step + 1) * self.batch)
        with autocast(self.setting.precision, self.setting.device):
            loss = F.cross_entropy(self.net(self.images[index]), self.labels[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.setting.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started


def interleaved(
    config: NetConfig, data: TaskData, rule: str, batch: int, batches: int, setting: Setting
) -> dict[str, list[float]]:
    """Step seconds of train_mask with `rule` and, between its steps, of the two dense loops
    (train_mask's progress callback reads the loss, which waits for the device)."""
    dense = {
        "dense": DenseLoop(config, data, batch, False, setting),
        "dense-fused": DenseLoop(config, data, batch, True, setting),
    }
    times: dict[str, list[float]] = {rule: [], "dense": [], "dense-fused": []}
    last_end = [0.0]

    def between_steps(step: int, *_: object) -> None:
        if step > 1:
            times[rule].append(time.perf_counter() - last_end[0])
        for name, loop in dense.items():
            seconds = loop.step(step - 1)
            if step > 1:
                times[name].append(seconds)
        last_end[0] = time.perf_counter()

    train = TrainConfig(
        lr=1e-3, batch_size=batch, batches=batches, optimizer="adam", precision=setting.precision
    )
    scores = initial_scores(config.mask_shapes, 0, None)
    density = 0.5 if rule == "topk" else None
    net = build_net(config, setting.device)
    train_mask(net, data, rule, density, train, scores, setting.device, progress=between_steps)
    return times


def mask_steps(config: NetConfig, rule: str, count: int) -> list[float]:
    """The floor of the supermask's own work per step: the masks from the scores, the fixed
    weights times the masks, and the backward through both to the scores (no convolution)."""
    net = build_net(config)
    weights = [net.weight(site) for site in range(len(config.mask_shapes))]
    density = 0.5 if rule == "topk" else None
    masks = ScoreMasks(initial_scores(config.mask_shapes, 0, None), rule, density)
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        total = sum((w * m).sum() for w, m in zip(weights, masks(), strict=True))
        total.backward()
        seconds.append(time.perf_counter() - started)
    return seconds[1:]


def selection_times(config: NetConfig, device: torch.device, count: int) -> dict[str, float]:
    """Median ms of making every site's top-k 0.5 mask from its scores (no gradient) on the
    device: one torch.topk and scatter per site, against the radix selection of all sites
    together (model/radix_select.py, what train-task uses off the CPU)."""
    scores = [s.to(device) for s in initial_scores(config.mask_shapes, 0, None)]
    kept = [kept_count(s.numel(), 0.5) for s in scores]

    def per_site() -> list[torch.Tensor]:
        masks = []
        for site, k in zip(scores, kept, strict=True):
            flat = site.abs().flatten()
            masks.append(torch.zeros_like(flat).index_fill_(0, flat.topk(k, sorted=False)[1], 1))
        return masks

    times = {}
    for name, make in (
        ("per site", per_site),
        ("together", lambda: sites_topk_masks(scores, kept)),
    ):
        seconds = []
        for _ in range(count + 1):
            started = time.perf_counter()
            make()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        times[name] = statistics.median(seconds[1:]) * 1e3
    return times


def where(device: torch.device) -> str:
    """The device in words, for the report's first line."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    machine = platform.processor() or platform.machine()
    return f"CPU ({machine}, {torch.get_num_threads()} threads; no GPU used)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18-gem")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    setting = Setting(torch.device(args.device), args.precision)
    config = NetConfig(args.arch, outputs=100)
    if config.architecture.kind != "resnet":
        parser.error("the dense baseline copies residual nets: resnet18-gem, resnet18, resnet50")
    data = random_task(config, args.batch * args.batches)
    rates, ratios = {}, {}
    for rule in ("topk", "sign"):
        times = interleaved(config, data, rule, args.batch, args.batches, setting)
        for name, seconds in times.items():
            rates[f"{name} ({rule} run)" if name != rule else rule] = (
                args.batch / statistics.median(seconds)
            )
        for name in ("dense", "dense-fused"):
            pairs = zip(times[name], times[rule], strict=True)
            ratios[rule, name] = statistics.median(d / s for d, s in pairs)
    print(
        f"{args.arch} {'x'.join(map(str, config.shape))}, batch {args.batch}, "
        f"{args.batches - 1} timed steps a loop, interleaved, {args.precision}"
        f"{', channels_last' if setting.channels_last else ''}, {where(setting.device)}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print("| training | images/s (median step) |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print("\n| supsup rule | vs dense (default Adam) | vs dense (fused Adam) |")
    print("|---|---|---|")
    for rule in ("topk", "sign"):
        print(f"| {rule} | {ratios[rule, 'dense']:.2f}x | {ratios[rule, 'dense-fused']:.2f}x |")
    step = 1e3 * args.batch / rates["dense (sign run)"]
    picked = selection_times(config, setting.device, 12)
    used = "numpy's introselect" if setting.device.type == "cpu" else "together"
    print(
        f"top-k selection alone, {len(config.mask_shapes)} sites: per site (torch.topk) "
        f"{picked['per site']:.2f} ms, together (radix) {picked['together']:.2f} ms; "
        f"train-task uses {used} here"
    )
    for rule in ("topk", "sign") if setting.device.type == "cpu" else ():
        floor = statistics.median(mask_steps(config, rule, 12)) * 1e3
        print(
            f"{rule} masks alone (scores -> masks, weights x masks, backward): {floor:.2f} ms "
            f"a step, {floor / step:.1%} of a dense step ({step:.1f} ms)"
        )


if __name__ == "__main__":
    main()
