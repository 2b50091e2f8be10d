"""What task inference minimises, and its gradient with respect to the mask.

An objective scores each example's logits (H: entropy; G: logsumexp of the outputs no task uses);
task inference minimises its batch mean. The gradient is taken at a fractional mask (the
superposition's mean mask): g = ∂objective/∂mask = ∂objective/∂W_eff ⊙ W, one D-vector, whose
products with the stored masks are the one-shot scores ∂objective/∂αᵢ = ⟨g, Mᵢ⟩.

Per image, the gradients of a masked linear layer are outer products: example i's gradient with
respect to the effective weights is grad_outᵢ ⊗ xᵢ, so one forward and one backward over the
whole batch give every image's mask gradient, built block by block where the product needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Final

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..model.nets import MaskedMLP, PerTaskStats
from ..model.supermask import split_flat
from .choices import OBJECTIVES as OBJECTIVE_HELP


def entropy(logits: torch.Tensor, superfluous: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG001
    """H per example: entropy of softmax(logits) (n, s) -> (n,)."""
    log_p = F.log_softmax(logits, dim=1)  # (n, s)
    return -(log_p.exp() * log_p).sum(dim=1)


def superfluous_logsumexp(logits: torch.Tensor, superfluous: torch.Tensor | None) -> torch.Tensor:
    """G per example: logsumexp over the superfluous outputs only, so only they carry gradient.

    Training pushes unused outputs down under the right mask; other masks leave them high.
    """
    if superfluous is None or superfluous.numel() == 0:
        raise ConfigError("the G objective needs superfluous outputs")
    return logits[:, superfluous].logsumexp(dim=1)  # (n,)


@dataclass(frozen=True)
class Objective:
    """A per-example score of the logits whose batch mean task inference minimises."""

    name: str
    help: str
    per_example: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_superfluous: bool = False


OBJECTIVES: Final[dict[str, Objective]] = {
    o.name: o
    for o in (
        Objective("H", OBJECTIVE_HELP["H"], entropy),
        Objective(
            "G",
            OBJECTIVE_HELP["G"],
            superfluous_logsumexp,
            needs_superfluous=True,
        ),
    )
}


def get_objective(name: str) -> Objective:
    """The objective a user named (`--objective`), or an error listing the valid names."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def superfluous_outputs(outputs: int, classes: Sequence[int]) -> torch.Tensor:
    """Output indices that no task uses as a class (int64, possibly empty)."""
    used = set(int(c) for c in classes)
    return torch.tensor([o for o in range(outputs) if o not in used], dtype=torch.int64)


def checked_superfluous(outputs: int, classes: Sequence[int]) -> torch.Tensor:
    """The superfluous outputs G needs; an error that says how to get some when there are none."""
    superfluous = superfluous_outputs(outputs, classes)
    if superfluous.numel() == 0:
        raise ConfigError(
            f"the G objective needs superfluous outputs, but the tasks use all {outputs} outputs; "
            "make the store with more outputs than classes (e.g. --outputs 100) or use H"
        )
    return superfluous


def as_input(x: torch.Tensor, device: torch.device, inputs: int = 784) -> torch.Tensor:
    """Images as the nets take them, float32 (n >= 1, inputs) on `device`, or a clear error."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != inputs or x.shape[0] == 0:
        raise ConfigError(f"expected images as a (n >= 1, {inputs}) tensor, got {tuple(x.shape)}")
    return x.to(device)


def mask_gradient(
    net: nn.Module,
    mean_mask: torch.Tensor,
    x: torch.Tensor,
    objective: Objective,
    superfluous: torch.Tensor | None = None,
) -> torch.Tensor:
    """g = ∂(batch mean objective)/∂mask at a fractional mask (D,): ∂/∂W_eff ⊙ W, flat (D,)."""
    leaf = mean_mask.detach().clone().requires_grad_(True)  # (D,)
    masks = split_flat(leaf, net.config.mask_shapes)
    with _task_unknown(net):
        value = objective.per_example(net(x, masks), superfluous).mean()
    (grad,) = torch.autograd.grad(value, leaf)
    return grad  # (D,)


def _task_unknown(net: nn.Module) -> AbstractContextManager:
    """Nets with per-task normalisation statistics normalise by the batch's own statistics while
    the task is unknown (the superposition has no statistics of its own). That also takes out
    each batch's per-channel means and scales, which hold much of which task's data a batch is:
    on split digits conv4's one-shot finds 20% (exhaustive 100%; RESULTS.md, issue 16)."""
    return net.batch_statistics() if isinstance(net, PerTaskStats) else nullcontext()


def per_example_mask_gradients(
    net: nn.Module,
    mean_mask: torch.Tensor,
    x: torch.Tensor,
    objective: Objective,
    superfluous: torch.Tensor | None = None,
) -> torch.Tensor:
    """One gradient per image, (n, D): vmap of the per-example objective's mask gradient."""
    shapes = net.config.mask_shapes

    def one(flat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = net(image.unsqueeze(0), split_flat(flat, shapes))  # (1, s)
        return objective.per_example(logits, superfluous)[0]

    gradient = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))
    return gradient(mean_mask.detach(), x)  # (n, D)


# Floats of per-example gradients built at once (blocks of D rows of the (D, n) matrix). On the
# CPU 2 MiB, so that a block is still in cache when the product reads it (128 images, k = 40:
# 0.10 s built and multiplied block by block, 0.38 s in 64 MiB blocks); on a GPU 64 MiB, few
# kernel launches.
HOST_GRADIENT_BLOCK_FLOATS: Final = 1 << 19
DEVICE_GRADIENT_BLOCK_FLOATS: Final = 1 << 24


def per_example_gradient_blocks(
    net: nn.Module,
    mean_mask: torch.Tensor,
    x: torch.Tensor,
    objective: Objective,
    superfluous: torch.Tensor | None = None,
    block_floats: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The (D, n) per-example mask gradients, in order, as (start, rows) blocks of D: every start
    a multiple of 8 (a byte of packed masks), blocks of about block_floats floats (by default
    as suits the device).

    For MaskedMLP nets from one forward and one backward over the batch (outer products, no
    per-example pass); other nets fall back to the vmap form, one block."""
    if not isinstance(net, MaskedMLP):
        yield 0, per_example_mask_gradients(net, mean_mask, x, objective, superfluous).T
        return
    inputs, grad_outputs = _layer_factors(net, mean_mask, x, objective, superfluous)
    sizes = [layer.weight.numel() for layer in net.layers]
    ends = torch.tensor(sizes).cumsum(0).tolist()
    if block_floats is None:
        on_host = x.device.type == "cpu"
        block_floats = HOST_GRADIENT_BLOCK_FLOATS if on_host else DEVICE_GRADIENT_BLOCK_FLOATS
    rows = max(8, block_floats // max(1, len(x)) // 8 * 8)  # of the (D, n) matrix per block
    for start in range(0, ends[-1], rows):
        stop = min(start + rows, ends[-1])
        pieces = []
        for layer, size, end, x_in, grad_out in zip(
            net.layers, sizes, ends, inputs, grad_outputs, strict=True
        ):
            lo, hi = max(start, end - size) - (end - size), min(stop, end) - (end - size)
            if lo < hi:
                pieces.append(_outer_rows(layer.weight, x_in, grad_out, lo, hi))
        yield start, torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _layer_factors(
    net: MaskedMLP,
    mean_mask: torch.Tensor,
    x: torch.Tensor,
    objective: Objective,
    superfluous: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each masked layer's inputs (in, n) and the per-example objective's gradients at its
    outputs (out, n), images last: of the batch's summed objective, since the images do not
    interact."""
    leaf = mean_mask.detach().clone().requires_grad_(True)  # outputs join the autograd graph
    inputs, outputs = [], []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        inputs.append(args[0].detach())
        outputs.append(output)

    hooks = [layer.register_forward_hook(record) for layer in net.layers]
    try:
        logits = net(x, split_flat(leaf, net.config.mask_shapes))
    finally:
        for hook in hooks:
            hook.remove()
    value = objective.per_example(logits, superfluous).sum()
    grad_outputs = torch.autograd.grad(value, outputs)
    return [x.T.contiguous() for x in inputs], [g.T.contiguous() for g in grad_outputs]


def _outer_rows(
    weight: torch.Tensor, x_in: torch.Tensor, grad_out: torch.Tensor, lo: int, hi: int
) -> torch.Tensor:
    """Flat entries [lo, hi) of one layer's per-example mask gradients W ⊙ (grad_outᵢ ⊗ xᵢ), as
    (hi - lo, n), from the layer's inputs (in, n) and output gradients (out, n), both contiguous
    with the images last (so every product below runs along contiguous memory): built for
    whole rows of W, then trimmed."""
    fan_in = weight.shape[1]
    first, last = lo // fan_in, -(-hi // fan_in)
    # (rows, in, n): (grad_out[o, i] * x[c, i]) * W[o, c], the order autograd multiplies in
    block = grad_out[first:last, None, :] * x_in[None, :, :]
    block.mul_(weight[first:last, :, None])
    offset = first * fan_in
    return block.reshape(-1, x_in.shape[1])[lo - offset : hi - offset]
