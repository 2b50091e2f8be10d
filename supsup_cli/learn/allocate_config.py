"""What an allocate run is asked (its configuration, the stream of data specs, the defaults of a
store it makes) and what it reports (the audit rows of its decisions, the outcome of the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from ..errors import ConfigError
from .allocate_rule import DEFAULT_EPSILON, MAX_EPSILON
from .choices import DEFAULT_ALLOCATE_OUTPUTS as DEFAULT_OUTPUTS
from .choices import DEFAULT_ALLOCATE_RULE as DEFAULT_RULE
from .choices import DEFAULT_BUDGET
from .data import expand_specs
from .objectives import get_objective
from .train import MAX_BATCH_SIZE, MAX_BATCHES, CreationOptions

MAX_SEGMENTS: Final = 100_000


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocateConfig:
    """How a stream is learned (recorded with each mask the run writes)."""

    batches_per_segment: int = 1000
    check_every: int = 100
    epsilon: float = DEFAULT_EPSILON
    budget: int = DEFAULT_BUDGET
    objective: str = "H"
    lr: float = 1e-4
    batch_size: int = 128
    shuffle_seed: int = 0
    commit_every: int = 10  # checks between commits while the same mask goes on training

    def __post_init__(self) -> None:
        if not 1 <= self.batches_per_segment <= MAX_BATCHES:
            raise ConfigError(
                f"batches per segment must be in [1, {MAX_BATCHES}], got {self.batches_per_segment}"
            )
        if not 1 <= self.check_every <= MAX_BATCHES:
            raise ConfigError(f"check-every must be in [1, {MAX_BATCHES}], got {self.check_every}")
        if not 0 <= self.epsilon <= MAX_EPSILON:
            raise ConfigError(f"epsilon must be in [0, {MAX_EPSILON}], got {self.epsilon}")
        if not 1 <= self.budget <= 1_000_000:
            raise ConfigError(f"budget must be in [1, 1000000] masks, got {self.budget}")
        get_objective(self.objective)
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f"batch size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}")
        if not 1 <= self.commit_every <= MAX_BATCHES:
            raise ConfigError(
                f"commit-every must be in [1, {MAX_BATCHES}], got {self.commit_every}"
            )
        if not 0 <= self.shuffle_seed < 2**63:
            raise ConfigError(f"shuffle seed must be in [0, 2^63), got {self.shuffle_seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_stream(text: str) -> list[str]:
    """The segments of a stream, in order: `permuted:1,2,1,3,2` or `permuted:1,permuted:2`."""
    specs = expand_specs(text)
    if len(specs) > MAX_SEGMENTS:
        raise ConfigError(f"the stream has {len(specs):,} segments; the limit is {MAX_SEGMENTS:,}")
    return specs


def allocate_creation(options: CreationOptions) -> CreationOptions:
    """Creation options of a store allocate makes: sign masks and 100 outputs unless given."""
    return replace(
        options,
        mask_rule=options.mask_rule or DEFAULT_RULE,
        outputs=options.outputs or DEFAULT_OUTPUTS,
    )


# -- the audit log ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    """One decision, as the store's audit log keeps it (formats/supsup-store-v1.md)."""

    batch: int  # global batch index in the stream (0-based)
    segment: int  # index of the data segment in the stream
    data: str  # the segment's data spec
    decision: str  # one of DECISIONS
    mask: int | None  # the mask trained from this batch on (None: the budget stopped the run)
    p: float | None  # max softmax(-∂H/∂α) (None: no masks yet)
    threshold: float | None  # (1 + ε)/k'
    candidates: int  # k' (0 when there were no masks)
    reason: str = ""
    time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRow:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class SpecResult:
    """A distinct data spec of the stream: the mask that trained on most of its batches, and that
    mask's test accuracy on it (task given)."""

    data: str
    mask: int
    masks_used: tuple[int, ...]
    accuracy: float


@dataclass(frozen=True)
class StreamOutcome:
    """What a run did: decisions, masks before/after, purity and per-spec accuracy."""

    store: str
    created_store: bool
    segments: tuple[str, ...]
    masks_before: int
    masks_after: int
    allocated: tuple[int, ...]
    decisions: tuple[AuditRow, ...]
    batches_trained: int
    budget_stopped: bool
    purity: float  # Σ_mask max_spec batches(mask, spec) / Σ batches: masks hold one spec each
    inverse_purity: float  # Σ_spec max_mask batches(mask, spec) / Σ batches: specs use one mask
    specs: tuple[SpecResult, ...]
    seconds: float
    taken_in: tuple[int, ...] = ()  # tasks other writers appended during the run (known masks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decisions"] = [row.to_dict() for row in self.decisions]
        return out
