"""Many independent tasks into one store: a pool of worker processes, each training one task at a
time and appending it through the store's lock, so tasks land in the order they finish.

Each worker is pinned to one device of a list (round robin), or on the CPU gets its share of the
cores as torch threads. A task that fails is reported and the others go on; a run can be resumed
by training only the specs the store does not hold yet.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import torch

from ..errors import ConfigError, DataSpecError, SupsupError, one_line
from ..progress import Progress
from ..store import MaskStore
from ..threads import cpu_threads
from .data import expand_specs, spec_items
from .train import CreationOptions, TrainConfig, train_task

MAX_WORKERS: Final = 256


@dataclass(frozen=True)
class TaskReport:
    """How one spec went: the task it became, or the one-line error that stopped it."""

    spec: str
    index: int | None = None
    accuracy: float | None = None
    seconds: float = 0.0
    device: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"data": self.spec, "error": self.error}
        return {
            "data": self.spec,
            "index": self.index,
            "accuracy": self.accuracy,
            "seconds": self.seconds,
            "device": self.device,
        }


@dataclass(frozen=True)
class RunSummary:
    """A whole run: what was asked, what the store already held, and each task in finish order."""

    requested: int
    skipped: tuple[str, ...]
    reports: tuple[TaskReport, ...]
    workers: int
    devices: tuple[str, ...]
    seconds: float

    @property
    def landed(self) -> list[TaskReport]:
        return [r for r in self.reports if r.error is None]

    @property
    def failed(self) -> list[TaskReport]:
        return [r for r in self.reports if r.error is not None]


def parse_devices(text: str | None) -> tuple[str, ...]:
    """`cuda:0,cuda:1` (or `cpu`) -> the devices workers are pinned to, checked to exist."""
    if text is None:
        return ("cpu",)
    devices = tuple(item.strip() for item in text.split(","))
    for name in devices:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--devices: unknown device {name!r} (cpu, cuda:0, ...)") from None
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if device.index is None or not 0 <= device.index < count:
                raise ConfigError(
                    f"--devices: {name} is not one of the {count} CUDA devices (cuda:0 ...)"
                )
        elif device.type != "cpu":
            raise ConfigError(f"--devices: {name} is neither cpu nor cuda:N")
    return devices


def split_specs(text: str) -> tuple[list[str], list[TaskReport]]:
    """The specs of a list, and a failed report for each item that does not parse, so that one
    bad item fails alone."""
    specs: list[str] = []
    bad: list[TaskReport] = []
    for item in spec_items(text):
        try:
            specs.extend(expand_specs(item))
        except DataSpecError as error:
            bad.append(TaskReport(item, error=one_line(error)))
    return specs, bad


_worker_device = "cpu"  # this worker process's device, set once when the pool starts it


def _start_worker(devices: Any, threads: int) -> None:
    """Pool initialiser: take one device from the queue; share the cores among the workers."""
    global _worker_device
    _worker_device = devices.get()
    torch.set_num_threads(threads)
    if _worker_device.startswith("cuda"):
        torch.cuda.set_device(torch.device(_worker_device))


def _train_one(
    store: str, spec: str, options: CreationOptions, config: TrainConfig, data_root: Path | None
) -> TaskReport:
    """One task, trained and appended in a worker; any failure is reported, not raised, so the
    run goes on."""
    started = time.perf_counter()
    try:
        outcome = train_task(store, spec, options, config, data_root, _worker_device)
    except SupsupError as error:
        return TaskReport(spec, seconds=time.perf_counter() - started, error=one_line(error))
    except Exception as error:  # a bug or an OS failure in one task must not stop the others
        message = f"{type(error).__name__}: {one_line(error)}"
        return TaskReport(spec, seconds=time.perf_counter() - started, error=message)
    record = outcome.record
    seconds = round(time.perf_counter() - started, 3)
    return TaskReport(spec, record.index, record.accuracy, seconds, _worker_device)


def train_tasks(
    store: str,
    specs_text: str,
    options: CreationOptions,
    config: TrainConfig,
    workers: int,
    devices: Sequence[str] = ("cpu",),
    data_root: Path | None = None,
    skip_existing: bool = False,
    progress: Progress | None = None,
    on_report: Callable[[TaskReport], None] | None = None,
) -> RunSummary:
    """Train every spec of a list into one store with `workers` processes; returns each task's
    report in the order the tasks finished (also given to `on_report` as each one ends)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be in [1, {MAX_WORKERS}], got {workers}")
    started = time.perf_counter()
    specs, reports = split_specs(specs_text)
    for report in reports:
        if on_report is not None:
            on_report(report)
    skipped: list[str] = []
    if skip_existing and MaskStore.exists(store):
        held = {record.data for record in MaskStore.open(store).tasks()}
        skipped = [spec for spec in specs if spec in held]
        specs = [spec for spec in specs if spec not in held]
    bad, total = len(reports), len(specs) + len(reports)
    if progress is not None:
        progress(bad, total, "")
    if specs:  # made once here, so that workers started together need not race to create it
        if MaskStore.exists(store):
            MaskStore.open(store).check_compatible(**asdict(options))
        else:
            MaskStore.open_or_create(
                store,
                *options.new_store_settings(specs[0]),
                er_scale=options.er_scale,
                keep_scores=config.transfer,  # what train_task would make it with
            )
        pool_args = (store, specs, options, config, workers, devices, data_root, bad, total)
        reports.extend(_run_pool(*pool_args, progress, on_report))
    return RunSummary(
        len(specs) + len(skipped) + bad,
        tuple(skipped),
        tuple(reports),
        min(workers, len(specs)),
        tuple(devices),
        time.perf_counter() - started,
    )


def _run_pool(
    store: str,
    specs: list[str],
    options: CreationOptions,
    config: TrainConfig,
    workers: int,
    devices: Sequence[str],
    data_root: Path | None,
    done: int,
    total: int,
    progress: Progress | None,
    on_report: Callable[[TaskReport], None] | None,
) -> list[TaskReport]:
    """Run the specs on a spawned pool; reports in finish order."""
    workers = min(workers, len(specs))
    context = multiprocessing.get_context("spawn")  # fork would copy a torch that has threads
    queue = context.Queue()
    for slot in range(workers):
        queue.put(devices[slot % len(devices)])
    threads = max(1, cpu_threads() // workers)
    reports: list[TaskReport] = []
    with ProcessPoolExecutor(workers, context, _start_worker, (queue, threads)) as pool:
        futures = {
            pool.submit(_train_one, store, spec, options, config, data_root): spec for spec in specs
        }
        for future in as_completed(futures):
            try:
                report = future.result()
            except BrokenProcessPool:
                report = TaskReport(futures[future], error="its worker process died")
            reports.append(report)
            done += 1
            if on_report is not None:
                on_report(report)
            if progress is not None:
                progress(done, total, report.spec)
    return reports
