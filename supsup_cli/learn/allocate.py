"""NNs: learn a stream of labelled batches with no task identity, allocating masks when needed.

Every `check_every` batches the one-shot gradient g = ∂H/∂α over the candidate masks decides:
p = max softmax(-g); if p < (1 + ε)/k' a new mask is allocated, otherwise the best known mask goes
on training. The candidates are the k known masks padded with fresh, untrained masks up to
k' = max(k, 5), as in the paper, whose masks were all preallocated from random scores: with one
known mask and nothing to compare it with, p would be 1 whatever the data. A fresh mask that fits
better than every known one also means "new task".

The store is written when the mask being trained changes (another mask wins, a mask is allocated,
the budget stops the run), when the stream ends, and every `commit_every` checks in between: an
append for a new mask or an atomic replace of a known one, with the audit rows of the decisions
since the last commit. (A commit costs about 15 training steps of lenet-300-100: committing at
every check would add ~15% to training; every 10 checks adds ~1.5% and loses at most 1,000 batches
to a crash.) Raw scores
of the masks trained in this run stay in memory (4·D bytes per mask); a mask made before the run is
resumed from its bits (`resumed_scores`), since the store keeps masks, not scores.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, StoreChangedError, StoreError
from ..format.architectures import NetConfig
from ..format.bits import pack_mask, unpack_mask
from ..format.header import StoreHeader, mask_checksum
from ..model.nets import build_net
from ..model.supermask import ScoreMasks, bits_to_masks, split_flat
from ..store import MaskStore
from ..store import location as storage
from .data import TaskData, expand_specs, load_task
from .objectives import get_objective
from .taskid import alpha_gradient
from .train import (
    MAX_BATCH_SIZE,
    MAX_BATCHES,
    CreationOptions,
    check_classes,
    evaluate,
    initial_scores,
    score_init_seed,
)

MIN_CANDIDATES: Final = 5  # k' = max(k, 5): the paper's floor on the candidates of a decision
DEFAULT_EPSILON: Final = 2.0**-3  # threshold (1 + ε)/k'; the paper found 1.1..1.2 best
DEFAULT_BUDGET: Final = 2500  # the paper's budget of masks
DEFAULT_OUTPUTS: Final = 100  # superfluous outputs make -∂H/∂α decisive (10 outputs: p ≈ 1/k')
DEFAULT_RULE: Final = "sign"  # GNu/NNs masks: score >= 0, about half the weights
MAX_EPSILON: Final = 4.0
MAX_SEGMENTS: Final = 100_000
STREAM_TAG: Final = 0x5354524D  # "STRM": keeps batch-order seeds apart from other streams
ALLOCATE_METHOD: Final = "allocate"
# Commits tried when other writers keep committing in between (each retry first takes their tasks).
COMMIT_ATTEMPTS: Final = 20

# What one check decided (the `decision` of an audit row).
ALLOCATE: Final = "allocate"  # a new mask, because no known mask fits
CONTINUE: Final = "continue"  # the mask being trained still fits best
REUSE: Final = "reuse"  # another known mask fits best: train it from now on
BUDGET: Final = "budget"  # a new mask was needed but the budget is spent: the run stops
DECISIONS: Final = (ALLOCATE, CONTINUE, REUSE, BUDGET)

# Why a mask was allocated (the `reason` of an allocate or budget row).
REASON_FIRST: Final = "no masks yet"
REASON_UNSURE: Final = "p < threshold"
REASON_FRESH: Final = "an untrained mask fits best"


# -- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One decision: the winning candidate, its p = max softmax(-g), and the threshold."""

    p: float
    threshold: float
    candidate: int  # argmax of -g over all k' candidates (>= known: an untrained mask)
    allocate: bool
    reason: str = ""


def candidate_count(known: int) -> int:
    """k' = max(k, MIN_CANDIDATES): how many masks take part in a decision over k known ones."""
    return max(known, MIN_CANDIDATES)


def decide(gradient: torch.Tensor, known: int, epsilon: float = DEFAULT_EPSILON) -> Choice:
    """Allocate if p = max softmax(-g) < (1 + ε)/k' or an untrained candidate wins; else the
    winner. `gradient` is ∂H/∂α over k' candidates, the k known masks first."""
    if known < 1:
        raise ConfigError("a decision needs at least one known mask (the first batch allocates)")
    if not 0 <= epsilon <= MAX_EPSILON:
        raise ConfigError(f"epsilon must be in [0, {MAX_EPSILON}], got {epsilon}")
    wanted = candidate_count(known)
    g = torch.as_tensor(gradient).detach().double().cpu().flatten()  # (k',)
    if g.numel() != wanted:
        raise ConfigError(f"{g.numel()} gradients for {known} known masks; expected k' = {wanted}")
    if not torch.isfinite(g).all():
        raise ConfigError("the one-shot gradient is not finite")
    # Float64: equal gradients give exactly 1/k', so ε = 0 sits exactly on the threshold.
    probabilities = torch.softmax(-g, dim=0)  # (k',)
    p = float(probabilities.max())
    threshold = (1.0 + epsilon) / wanted
    candidate = int(probabilities.argmax())
    if p < threshold:
        return Choice(p, threshold, candidate, True, REASON_UNSURE)
    if candidate >= known:
        return Choice(p, threshold, candidate, True, REASON_FRESH)
    return Choice(p, threshold, candidate, False)


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


# -- scores -------------------------------------------------------------------------------------


def fresh_scores(config: NetConfig, index: int) -> list[torch.Tensor]:
    """The initial scores of mask `index`: the same per-task seed train-task uses."""
    return initial_scores(config.mask_shapes, score_init_seed(config.seed, index), None)


def resumed_scores(bits: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Scores that give back a stored mask under either rule: b·(m − ¼), b = 1/√fan_in.

    Kept weights get +¾b and dropped ones −¼b: the sign rule keeps exactly the ones, and so does
    top-k (|¾b| > |¼b|, and a stored top-k mask keeps the rule's count). Magnitudes stay within
    the initial range, so training moves them as it moves fresh scores.
    """
    flat = torch.from_numpy(np.asarray(bits, dtype=np.float32).ravel()) - 0.25  # (D,)
    parts = split_flat(flat, shapes)
    return [part * (1.0 / math.sqrt(shape[1])) for part, shape in zip(parts, shapes, strict=True)]


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


# -- the stream ---------------------------------------------------------------------------------


def segment_batches(
    data: TaskData, count: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` shuffled batches (x (b, 784), y (b,)) of a segment's training split, per epoch."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(data.train_x))
    order, cursor = torch.randperm(len(data.train_x), generator=generator), 0
    for _ in range(count):
        if cursor + size > len(order):
            order, cursor = torch.randperm(len(data.train_x), generator=generator), 0
        index = order[cursor : cursor + size]
        cursor += size
        yield data.train_x[index], data.train_y[index]


def segment_seed(shuffle_seed: int, segment: int) -> int:
    state = np.random.SeedSequence([shuffle_seed, segment, STREAM_TAG]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


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


ProgressCallback = Callable[[int, str], None]
DecisionCallback = Callable[[AuditRow], None]


@dataclass
class _Stretch:
    """The mask being trained now, from the decision that chose it until the next commit."""

    index: int
    masks: ScoreMasks
    optimizer: torch.optim.Optimizer
    start_scores: torch.Tensor  # (D,) flat scores when the stretch began (for the score sum)
    new: bool  # not yet in the store
    batches: int = 0
    seconds: float = 0.0


@dataclass
class _MaskInfo:
    data: str
    classes: tuple[int, ...]
    train: dict[str, Any]
    seconds: float = 0.0


@dataclass
class _Run:
    """State of one allocate run (library internal; allocate_stream is the entry point)."""

    path: str
    config: AllocateConfig
    net_config: NetConfig
    rule: str
    density: float | None
    net: nn.Module
    device: torch.device
    store: MaskStore | None
    packed: np.ndarray  # (k, B) uint8: the current masks, stored ones updated as they train
    counts: np.ndarray  # (D,) int64: Σ of the current masks
    info: list[_MaskInfo]
    stored_sha: list[str]  # sha256 of each task's mask as this run last saw it in the store
    on_decision: DecisionCallback | None
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # flat (D,) of touched masks
    stretch: _Stretch | None = None
    last_data: TaskData | None = None  # the segment of the last batch trained
    pending: list[AuditRow] = field(default_factory=list)
    decisions: list[AuditRow] = field(default_factory=list)
    placeholders: dict[int, np.ndarray] = field(default_factory=dict)
    trained: Counter = field(default_factory=Counter)  # (spec, mask) -> batches
    masks_before: int = 0
    created_store: bool = False
    checks: int = 0  # checks since the last commit
    taken_in: list[int] = field(default_factory=list)  # tasks other writers appended meanwhile

    @property
    def known(self) -> int:
        return self.packed.shape[0]

    # -- decisions ------------------------------------------------------------------------
    def check(self, batch: int, segment: int, data: TaskData, x: torch.Tensor) -> bool:
        """Decide which mask trains from this batch on, committing first what the last batches
        taught if the mask changes or a commit is due; False if the budget stops the run."""
        self._refresh_active()
        if self.known == 0:
            choice = Choice(float("nan"), float("nan"), 0, True, REASON_FIRST)
        else:
            choice = decide(self._gradient(x), self.known, self.config.epsilon)
        first = self.known == 0
        row = AuditRow(
            batch=batch,
            segment=segment,
            data=data.spec,
            decision=CONTINUE,
            mask=choice.candidate,
            p=None if first else round(choice.p, 6),
            threshold=None if first else round(choice.threshold, 6),
            candidates=0 if first else candidate_count(self.known),
            reason=choice.reason,
            time=_now(),
        )
        active = None if self.stretch is None else self.stretch.index
        self.checks += 1
        if choice.allocate or choice.candidate != active or self.checks >= self.config.commit_every:
            self.commit()
        if choice.allocate and self.known >= self.config.budget:
            self._record(replace(row, decision=BUDGET, mask=None))
            self.stretch = None
            self.commit()
            return False
        if choice.allocate:
            index = self.known
            self._record(replace(row, decision=ALLOCATE, mask=index))
            self._add_mask(index, data)
            self._start(index, new=True)
        elif self.stretch is not None and choice.candidate == self.stretch.index:
            self._record(row)
        else:
            self._record(replace(row, decision=REUSE))
            self._start(choice.candidate, new=False)
        return True

    def _gradient(self, x: torch.Tensor) -> torch.Tensor:
        """∂H/∂α over the known masks and the untrained ones that pad them to k'."""
        missing = candidate_count(self.known) - self.known
        extra = [self._placeholder(self.known + j) for j in range(missing)]
        packed, counts = self.packed, self.counts
        if extra:
            packed = np.concatenate([packed, np.stack(extra)])
            counts = counts + unpack_mask(np.stack(extra), self.net_config.mask_bits).sum(0)
        classes = sorted({c for mask in self.info for c in mask.classes})
        return alpha_gradient(
            self.net,
            packed,
            x,
            objective=self.config.objective,
            classes=classes,
            counts=counts,
            device=self.device,
        )

    def _placeholder(self, index: int) -> np.ndarray:
        """The mask a new mask `index` starts as: its fresh scores under the store's rule."""
        if index not in self.placeholders:
            masks = ScoreMasks(fresh_scores(self.net_config, index), self.rule, self.density)
            self.placeholders[index] = pack_mask(masks.mask_bits())
        return self.placeholders[index]

    def _record(self, row: AuditRow) -> None:
        self.pending.append(row)
        self.decisions.append(row)
        if self.on_decision is not None:
            self.on_decision(row)

    # -- training -------------------------------------------------------------------------
    def _add_mask(self, index: int, data: TaskData) -> None:
        placeholder = self._placeholder(index)
        self.packed = np.concatenate([self.packed, placeholder[None]])
        self.counts += unpack_mask(placeholder, self.net_config.mask_bits)
        train = {
            "method": ALLOCATE_METHOD,
            "optimizer": "rmsprop",
            "lr": self.config.lr,
            "batch_size": self.config.batch_size,
            "init_seed": score_init_seed(self.net_config.seed, index),
            "transfer": False,
            "objective": self.config.objective,
            "epsilon": self.config.epsilon,
            "check_every": self.config.check_every,
            "batches": 0,
        }
        self.info.append(_MaskInfo(data.spec, data.classes, train))

    def _start(self, index: int, new: bool) -> None:
        shapes = self.net_config.mask_shapes
        if index in self.scores:
            scores = split_flat(self.scores[index], shapes)
        elif new:
            scores = fresh_scores(self.net_config, index)
        else:
            bits = unpack_mask(self.packed[index], self.net_config.mask_bits)
            scores = resumed_scores(bits, shapes)
        masks = ScoreMasks(scores, self.rule, self.density).to(self.device)
        optimizer = torch.optim.RMSprop(masks.parameters(), lr=self.config.lr)
        self.stretch = _Stretch(index, masks, optimizer, masks.flat_scores(), new)

    def train_step(self, data: TaskData, x: torch.Tensor, y: torch.Tensor) -> None:
        stretch = self.stretch
        started = time.perf_counter()
        loss = F.cross_entropy(self.net(x.to(self.device), stretch.masks()), y.to(self.device))
        stretch.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stretch.optimizer.step()
        stretch.batches += 1
        stretch.seconds += time.perf_counter() - started
        self.trained[(data.spec, stretch.index)] += 1
        self.last_data = data

    def _refresh_active(self) -> None:
        """Bring the trained mask's row and the counts up to date with its scores."""
        if self.stretch is None:
            return
        index = self.stretch.index
        bits = self.stretch.masks.mask_bits()
        old = unpack_mask(self.packed[index], self.net_config.mask_bits)
        self.counts += bits.astype(np.int64) - old
        self.packed[index] = pack_mask(bits)

    # -- writing --------------------------------------------------------------------------
    def commit(self) -> None:
        """Write the trained mask (append if new, else replace) with the pending audit rows, in
        one commit; with no mask trained since the last commit, just the rows."""
        stretch, self.checks = self.stretch, 0
        if stretch is None or (stretch.batches == 0 and not stretch.new):
            if self.pending and self.store is not None:
                self._until_written(
                    lambda: self.store.append_log(
                        [r.to_dict() for r in self.pending], expect=self._expect()
                    )
                )
                self.pending.clear()
            return
        self._refresh_active()
        data, flat = self.last_data, stretch.masks.flat_scores()
        bits = unpack_mask(self.packed[stretch.index], self.net_config.mask_bits)
        masks = bits_to_masks(bits, self.net_config.mask_shapes, self.device)
        accuracy = evaluate(self.net, masks, data.test_x, data.test_y, data.classes, self.device)

        def write() -> None:  # reads the index and rows afresh: a retry may have moved them
            info = self.info[stretch.index]
            train = {**info.train, "batches": info.train.get("batches", 0) + stretch.batches}
            rows = [r.to_dict() for r in self.pending]
            seconds = round(info.seconds + stretch.seconds, 3)
            store = self._writable_store()
            if stretch.new:
                store.append_task(
                    bits,
                    flat.numpy(),
                    data=info.data,
                    classes=info.classes,
                    accuracy=accuracy,
                    train=train,
                    created=_now(),
                    seconds=seconds,
                    log=rows,
                    expect=self._expect(),
                )
            else:
                store.replace_task(
                    stretch.index,
                    bits,
                    (flat - stretch.start_scores).numpy(),
                    accuracy=accuracy,
                    train=train,
                    seconds=seconds,
                    log=rows,
                    expect=self._expect(),
                )
            info.train, info.seconds = train, info.seconds + stretch.seconds

        self._until_written(write)
        self.pending.clear()
        self.scores[stretch.index] = flat
        self.stored_sha[stretch.index : stretch.index + 1] = [
            mask_checksum(self.packed[stretch.index])
        ]
        stretch.start_scores, stretch.new, stretch.batches, stretch.seconds = flat, False, 0, 0.0

    def _until_written(self, write: Callable[[], None]) -> None:
        """Run a write; when another writer committed first, take its tasks in and try again."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                return write()
            except StoreChangedError:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                self._rebase()

    def _rebase(self) -> None:
        """Another writer committed since this run last did. The tasks it appended become known
        masks (as if loaded at the start: the next decisions weigh them) and this run's unwritten
        new mask moves after them. A change to a task this run already knew is refused."""
        fresh = MaskStore.open(self.path, writable=True)
        fresh.check_compatible(
            self.net_config.arch,
            self.net_config.outputs,
            self.net_config.seed,
            self.rule,
            self.density,
        )
        records, known = fresh.tasks(), len(self.stored_sha)
        if len(records) < known or any(
            r.sha256 != sha for r, sha in zip(records, self.stored_sha, strict=False)
        ):
            raise StoreError(
                f"{self.path}: another writer changed masks this run was training "
                "meanwhile; nothing more was written (run allocate again)"
            )
        self.store = fresh
        appended = list(range(known, len(records)))
        if not appended:
            return
        extra = fresh.read_packed(appended)
        moving = self.stretch if self.stretch is not None and self.stretch.new else None
        self.packed = np.concatenate([self.packed[:known], extra, self.packed[known:]])
        self.counts += unpack_mask(extra, self.net_config.mask_bits).sum(0, dtype=np.int64)
        self.info[known:known] = [
            _MaskInfo(r.data, tuple(r.classes), dict(r.train), r.seconds or 0.0)
            for r in records[known:]
        ]
        self.stored_sha += [r.sha256 for r in records[known:]]
        self.taken_in += appended
        self.placeholders.clear()  # they pad the candidates from `known` on: recomputed lazily
        if moving is not None:
            self._move_mask(moving, moving.index + len(appended))

    def _move_mask(self, stretch: _Stretch, index: int) -> None:
        """Renumber this run's unwritten mask everywhere the run refers to it."""
        old = stretch.index
        stretch.index = index
        if old in self.scores:
            self.scores[index] = self.scores.pop(old)
        self.trained = Counter(
            {(spec, index if mask == old else mask): n for (spec, mask), n in self.trained.items()}
        )
        self.pending = [replace(r, mask=index) if r.mask == old else r for r in self.pending]
        self.decisions = [replace(r, mask=index) if r.mask == old else r for r in self.decisions]

    def _writable_store(self) -> MaskStore:
        if self.store is None:
            store, created = MaskStore.open_or_create(
                self.path, self.net_config, self.rule, self.density
            )
            self.store, self.created_store = store, created
            if store.task_count:  # made by another writer meanwhile, who also added tasks
                self.created_store = False
                raise StoreChangedError(f"{self.path}: another writer made this store meanwhile")
        return self.store

    def _expect(self) -> StoreHeader | None:
        """The header this run last saw: a commit fails if another writer changed the store."""
        return None if self.store is None else self.store.header


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _open_run(
    path: str,
    config: AllocateConfig,
    options: CreationOptions,
    on_decision: DecisionCallback | None,
    device: torch.device,
) -> _Run:
    """Open (or plan) the store and load its masks, counts and records into the run's memory."""
    if MaskStore.exists(path):
        store = MaskStore.open(path)
        store.check_compatible(**asdict(options))
        net_config, rule, density = store.net, store.header.mask_rule, store.header.density
        _check_net(net_config)
        records = store.tasks()
        packed = np.array(store.read_packed(), dtype=np.uint8)
        counts = store.mask_counts().astype(np.int64)
        info = [
            _MaskInfo(r.data, tuple(r.classes), dict(r.train), r.seconds or 0.0) for r in records
        ]
        stored_sha = [r.sha256 for r in records]
    else:
        if storage.is_file(storage.normalise(path)):
            raise StoreError(f"{path}: exists and is not a directory")
        store = None
        net_config, rule, density = allocate_creation(options).new_store_settings()
        _check_net(net_config)
        packed = np.zeros((0, (net_config.mask_bits + 7) // 8), dtype=np.uint8)
        counts = np.zeros(net_config.mask_bits, dtype=np.int64)
        info, stored_sha = [], []
    return _Run(
        path=path,
        config=config,
        net_config=net_config,
        rule=rule,
        density=density,
        net=build_net(net_config, device),
        device=device,
        store=store,
        packed=packed,
        counts=counts,
        info=info,
        stored_sha=stored_sha,
        on_decision=on_decision,
        masks_before=packed.shape[0],
    )


def _check_net(config: NetConfig) -> None:
    if config.stats_size:
        raise ConfigError(
            f"allocate needs a network without per-task statistics; {config.arch} keeps "
            "BatchNorm statistics per task (use lenet-300-100 or fc-1024-1024)"
        )


def allocate_stream(
    store_path: str | Path,
    stream: str | Sequence[str],
    config: AllocateConfig,
    options: CreationOptions | None = None,
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    on_decision: DecisionCallback | None = None,
) -> StreamOutcome:
    """Learn a stream of data segments without task identity (NNs), writing masks as it goes.

    The store is made (sign rule, 100 outputs unless the options say otherwise) at the first
    commit if absent. Every spec is loaded and checked before anything is written.
    """
    started = time.perf_counter()
    specs = parse_stream(stream if isinstance(stream, str) else ",".join(stream))
    device = torch.device(device)
    run = _open_run(str(store_path), config, options or CreationOptions(), on_decision, device)
    datas = {spec: load_task(spec, data_root) for spec in dict.fromkeys(specs)}
    for data in datas.values():
        check_classes(data.classes, run.net_config)
    batch, stopped = 0, False
    for segment, spec in enumerate(specs):
        data = datas[spec]
        seed = segment_seed(config.shuffle_seed, segment)
        for x, y in segment_batches(data, config.batches_per_segment, config.batch_size, seed):
            if batch % config.check_every == 0 and not run.check(batch, segment, data, x):
                stopped = True
                break
            run.train_step(data, x, y)
            batch += 1
            if progress is not None:
                progress(batch, f"{run.known} masks")
        if stopped:
            break
    run.commit()
    return _outcome(run, specs, datas, batch, stopped, time.perf_counter() - started)


def _outcome(
    run: _Run,
    specs: list[str],
    datas: dict[str, TaskData],
    batches: int,
    stopped: bool,
    seconds: float,
) -> StreamOutcome:
    """Purity and per-spec accuracy of the masks as they are at the end of the run."""
    by_spec: dict[str, Counter] = defaultdict(Counter)
    by_mask: dict[int, Counter] = defaultdict(Counter)
    for (spec, mask), count in run.trained.items():
        by_spec[spec][mask] += count
        by_mask[mask][spec] += count
    trained = sum(run.trained.values())
    purity = sum(max(c.values()) for c in by_mask.values()) / trained if trained else 1.0
    inverse = sum(max(c.values()) for c in by_spec.values()) / trained if trained else 1.0
    results = []
    for spec in dict.fromkeys(specs):
        if spec not in by_spec:
            continue
        mask = by_spec[spec].most_common(1)[0][0]
        bits = unpack_mask(run.packed[mask], run.net_config.mask_bits)
        data = datas[spec]
        masks = bits_to_masks(bits, run.net_config.mask_shapes, run.device)
        accuracy = evaluate(run.net, masks, data.test_x, data.test_y, data.classes, run.device)
        results.append(SpecResult(spec, mask, tuple(sorted(by_spec[spec])), accuracy))
    allocated = tuple(r.mask for r in run.decisions if r.decision == ALLOCATE)
    return StreamOutcome(
        store=str(run.path),
        created_store=run.created_store,
        segments=tuple(specs),
        masks_before=run.masks_before,
        masks_after=run.known,
        allocated=allocated,
        decisions=tuple(run.decisions),
        batches_trained=batches,
        budget_stopped=stopped,
        purity=purity,
        inverse_purity=inverse,
        specs=tuple(results),
        seconds=seconds,
        taken_in=tuple(run.taken_in),
    )
