"""Per-task BatchNorm: the running statistics of a net's BatchNorms belong to one task at a time
(trained with it, stored with it, loaded with it); with the task unknown, batch statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..format.architectures import NetConfig


class TaskNorms(nn.Module):
    """The running statistics of every BatchNorm of a net: one task's at a time, swapped in and
    out whole; `batch` normalises by each batch's own statistics instead (task unknown)."""

    momentum: float = 0.1
    eps: float = 1e-5

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = tuple(channels)
        for index, width in enumerate(self.channels):
            self.register_buffer(f"running_mean_{index}", torch.zeros(width))
            self.register_buffer(f"running_var_{index}", torch.ones(width))
        self.batch = False

    def buffers_in_order(self) -> list[torch.Tensor]:
        """Per BatchNorm, its running means then its running variances (the stored layout)."""
        return [
            getattr(self, f"running_{kind}_{index}")
            for index in range(len(self.channels))
            for kind in ("mean", "var")
        ]

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.batch:
            return F.batch_norm(x, None, None, training=True, eps=self.eps)
        return F.batch_norm(
            x,
            getattr(self, f"running_mean_{index}"),
            getattr(self, f"running_var_{index}"),
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )


class WithTaskNorms(nn.Module):
    """A net whose BatchNorm statistics (`self.norms`) are one task's: reset, read and load them
    whole, in the stored layout, or normalise by each batch's own (the PerTaskStats protocol)."""

    config: NetConfig
    norms: TaskNorms

    def reset_task_stats(self) -> None:
        for index in range(len(self.norms.channels)):
            getattr(self.norms, f"running_mean_{index}").zero_()
            getattr(self.norms, f"running_var_{index}").fill_(1.0)

    def task_stats(self) -> torch.Tensor:
        """(stats_size,) float32 CPU: per BatchNorm, the running means then the variances."""
        return torch.cat([b.detach().float().cpu() for b in self.norms.buffers_in_order()])

    def load_task_stats(self, stats: torch.Tensor | np.ndarray) -> None:
        flat = torch.as_tensor(stats).reshape(-1)
        if flat.numel() != self.config.stats_size:
            raise ConfigError(
                f"{flat.numel()} statistics given; {self.config.arch} keeps "
                f"{self.config.stats_size} per task"
            )
        buffers = self.norms.buffers_in_order()
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(part)

    @contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Normalise by each batch's own statistics (task unknown); running statistics untouched."""
        previous, self.norms.batch = self.norms.batch, True
        try:
            yield
        finally:
            self.norms.batch = previous
