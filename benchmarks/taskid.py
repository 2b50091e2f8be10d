"""One-shot task inference on packed masks vs the float-stacked superposition (reference style).

A store of k random masks (lenet-300-100, 500 outputs: D = 315,200) answers "which task is this
batch of 128?". Baseline, measured in the same run: all masks as one fp32 (k, D) tensor and
autograd through α (what the reference code does). Cold = a fresh process that opens the store,
builds what it needs and answers (one CLI call); warm = masks already in memory. Peak memory is
the growth of the process's peak RSS over its size after imports and building the network.

    python benchmarks/taskid.py                 # k = 2,500 (store built once under benchmarks/out)
    python benchmarks/taskid.py --tasks 200     # quicker
    python benchmarks/taskid.py --accuracy STORE --specs permuted:1..5   # task-id accuracy table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import append_random_mask

from supsup_cli.format.architectures import NetConfig
from supsup_cli.kernels import c_kernel as bitkernel
from supsup_cli.kernels.products import packed_matmul
from supsup_cli.learn.data import expand_specs, load_task
from supsup_cli.learn.mask_banks import MaskBank
from supsup_cli.learn.objectives import OBJECTIVES, entropy, mask_gradient
from supsup_cli.learn.taskid import Query, infer_task, one_shot_batch
from supsup_cli.model.nets import build_net
from supsup_cli.model.supermask import split_flat
from supsup_cli.store import MaskStore

HERE = Path(__file__).resolve().parent
BATCH = 128


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def make_store(path: Path, tasks: int, outputs: int) -> None:
    """k random 50% masks appended through the store API (slow once; reused afterwards)."""
    config = NetConfig("lenet-300-100", outputs=outputs, seed=0)
    store = MaskStore.create(str(path) + ".partial", config, "sign", None)
    rng = np.random.default_rng(0)
    for index in range(tasks):
        append_random_mask(store, rng, f"permuted:{index + 1}")
        if index % 250 == 0:
            print(f"  store: {index}/{tasks} masks", file=sys.stderr, flush=True)
    os.replace(str(path) + ".partial", path)


def query_batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, 784, generator=torch.Generator().manual_seed(seed))  # (128, 784)


def packed_one_shot(bank: MaskBank, x: torch.Tensor) -> int:
    """Ours: mean mask from the counts, one forward and backward, one packed product."""
    return one_shot_batch(Query(bank, x, OBJECTIVES["H"], None)).task


def float_stack(packed: np.ndarray, mask_bits: int) -> torch.Tensor:
    """All masks as one fp32 (k, D) tensor, filled block by block (the reference's layout)."""
    stack = torch.empty(packed.shape[0], mask_bits)  # (k, D)
    for r0 in range(0, packed.shape[0], 64):
        bits = np.unpackbits(packed[r0 : r0 + 64], axis=1, count=mask_bits)
        stack[r0 : r0 + 64] = torch.from_numpy(bits)
    return stack


def float_one_shot(net: torch.nn.Module, stack: torch.Tensor, x: torch.Tensor) -> int:
    """Autograd through α on the float stack: mask = α @ stack, ∂H/∂α = stack @ g."""
    alphas = torch.full((stack.shape[0],), 1.0 / stack.shape[0], requires_grad=True)  # (k,)
    mask = alphas @ stack  # (D,)
    value = entropy(net(x, split_flat(mask, net.config.mask_shapes))).mean()
    (grad,) = torch.autograd.grad(value, alphas)
    return int(grad.argmin())


def child(kind: str, store_path: str) -> dict:
    """One cold query in this fresh process: open, build, answer; time and peak memory."""
    config = MaskStore.open(store_path).net
    build_net(config)
    x = query_batch()
    base = rss_bytes()
    started = time.perf_counter()
    if kind == "streamed":  # `infer` for one batch, or --stream-masks: masks read in blocks
        bank = MaskBank.from_store(MaskStore.open(store_path), stream=True)
        read = time.perf_counter()  # records and counts only
        task = packed_one_shot(bank, x)
    else:  # the store read both other paths pay: records, packed masks (checked), counts
        store = MaskStore.open(store_path)
        classes = [r.classes for r in store.tasks()]
        packed, counts = store.read_packed(), store.mask_counts()
        read = time.perf_counter()
        if kind == "packed":
            bank = MaskBank.from_packed(store.net, packed, classes, counts=counts)
            task = packed_one_shot(bank, x)
        else:
            net = build_net(store.net)
            stack = float_stack(packed, store.net.mask_bits)
            del packed
            task = float_one_shot(net, stack, x)
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "read_seconds": read - started,
        "after_read_seconds": done - read,
        "peak_growth_bytes": peak_bytes() - base,
        "task": task,
    }


def run_child(kind: str, store_path: Path, env: dict | None = None) -> dict:
    """One cold run; `process_seconds` adds what a CLI call also pays: starting Python and
    importing torch and supsup (the same for every path)."""
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--store", str(store_path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return json.loads(output.strip().splitlines()[-1]) | {
        "process_seconds": time.perf_counter() - started
    }


def cold_runs(kind: str, store_path: Path, repeats: int, env: dict | None = None) -> list[dict]:
    return [run_child(kind, store_path, env) for _ in range(repeats)]


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def timed(function, repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def warm(store_path: Path, repeats: int) -> dict:
    store = MaskStore.open(store_path)
    bank = MaskBank.from_store(store)
    x = query_batch()
    mask_bits, packed = bank.mask_bits, bank.packed
    gradient = mask_gradient(bank.net, bank.mean_mask(), x, OBJECTIVES["H"])
    vector = gradient.numpy()
    target = np.empty_like(packed)
    results = {
        "memcpy_packed": timed(lambda: np.copyto(target, packed), repeats),
        "forward_backward": timed(
            lambda: mask_gradient(bank.net, bank.mean_mask(), x, OBJECTIVES["H"]), repeats
        ),
        "product_kernel": timed(lambda: packed_matmul(packed, vector, mask_bits), repeats),
        "one_shot_packed": timed(lambda: packed_one_shot(bank, x), repeats),
    }
    os.environ[bitkernel.KERNEL_ENV] = "0"
    results["product_numpy"] = timed(lambda: packed_matmul(packed, vector, mask_bits), repeats)
    results["one_shot_packed_numpy"] = timed(lambda: packed_one_shot(bank, x), repeats)
    del os.environ[bitkernel.KERNEL_ENV]
    stack = float_stack(packed, mask_bits)
    results["one_shot_float"] = timed(lambda: float_one_shot(bank.net, stack, x), repeats)
    same = float_one_shot(bank.net, stack, x) == packed_one_shot(bank, x)
    return {"seconds": results, "same_task": same}


def accuracy(store_path: Path, specs: list[str], trials: int, singles: int) -> None:
    """Task-id accuracy of a trained store: batches of 128 (every method, same batches) and
    single images (H, and G when the network has superfluous outputs)."""
    bank = MaskBank.from_store(MaskStore.open(store_path))
    truth = {spec: bank.task_id(row) for row, spec in enumerate(bank.task_specs)}
    objectives = ["H"] + (["G"] if bank.superfluous().numel() else [])
    generator = np.random.Generator(np.random.PCG64(0))
    methods = ("one-shot", "binary", "exhaustive")
    found: dict[tuple[str, str], list[int]] = {(m, o): [] for o in objectives for m in methods}
    expected = []
    for number in range(trials):
        spec = specs[number % len(specs)]
        data = load_task(spec)
        index = torch.from_numpy(generator.choice(len(data.test_y), BATCH, replace=False))
        expected.append(truth[spec])
        for (method, objective), tasks in found.items():
            result = infer_task(bank, data.test_x[index], method=method, objective=objective)
            tasks.append(result.task)
    print(f"# {store_path}: {bank.task_count} tasks, {bank.config.outputs} outputs")
    print(f"| batches of {BATCH} ({trials} trials, {len(specs)} specs) | objective | task-id |")
    print("|---|---|---|")
    for (method, objective), tasks in found.items():
        right = np.mean(np.array(tasks) == np.array(expected))
        agree = np.mean(np.array(tasks) == np.array(found["one-shot", objective]))
        print(f"| {method} | {objective} | {right:.2%} (same as one-shot: {agree:.0%}) |")
    print(f"\n| single images ({singles} per spec) | one-shot task-id | class accuracy |")
    print("|---|---|---|")
    for objective in objectives:
        right = classes = total = 0
        for spec in specs:
            data = load_task(spec)
            result = infer_task(bank, data.test_x[:singles], objective=objective, per="image")
            right += int((result.tasks == truth[spec]).sum())
            classes += int((result.predictions == data.test_y[:singles].numpy()).sum())
            total += singles
        print(f"| {objective} | {right / total:.2%} | {classes / total:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2500, help="masks in the store (k)")
    parser.add_argument("--outputs", type=int, default=500, help="network outputs")
    parser.add_argument("--repeats", type=int, default=5, help="warm timed repeats (median)")
    parser.add_argument("--cold-repeats", type=int, default=5, help="fresh processes per path")
    parser.add_argument("--store", type=Path, help="store path (default under benchmarks/out)")
    parser.add_argument("--accuracy", type=Path, help="trained store: print task-id accuracy")
    parser.add_argument("--specs", default="permuted:1..5", help="data specs for --accuracy")
    parser.add_argument("--trials", type=int, default=100, help="batches for --accuracy")
    parser.add_argument("--singles", type=int, default=200, help="single images per spec")
    parser.add_argument("--child", choices=["packed", "streamed", "float"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, str(args.store))))
        return
    if args.accuracy:
        accuracy(args.accuracy, expand_specs(args.specs), args.trials, args.singles)
        return
    store_path = args.store or HERE / "out" / f"taskid-k{args.tasks}-o{args.outputs}.zarr"
    if not MaskStore.exists(store_path):
        store_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {store_path} ...", file=sys.stderr)
        make_store(store_path, args.tasks, args.outputs)
    store = MaskStore.open(store_path)
    k, mask_bits = store.task_count, store.net.mask_bits
    print(f"# one-shot task inference, batch {BATCH}, k = {k}, D = {mask_bits:,}")
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}, "
        f"torch threads {torch.get_num_threads()}, kernel: "
        f"{'compiled' if bitkernel.kernel() is not None else 'unavailable (numpy)'}"
    )
    packed_mb = k * store.header.mask_bytes / 1e6
    float_mb = k * mask_bits * 4 / 1e6
    print(f"# masks: {packed_mb:,.1f} MB packed, {float_mb:,.1f} MB as fp32")

    kernel_off = {**os.environ, bitkernel.KERNEL_ENV: "0"}
    cold = {
        "streamed": cold_runs("streamed", store_path, args.cold_repeats),
        "held": cold_runs("packed", store_path, args.cold_repeats),
        "held, numpy": cold_runs("packed", store_path, args.cold_repeats, kernel_off),
        "float stack": cold_runs("float", store_path, args.cold_repeats),
    }
    hot = warm(store_path, args.repeats)
    s = hot["seconds"]

    base = cold["float stack"]
    print(
        f"\ncold = a fresh process per run, median of {args.cold_repeats} (min-max); "
        "streamed = `infer`'s default for one batch; whole process = from spawning Python to its "
        "exit, imports included"
    )
    print(
        "\n| cold path | open + load + answer (s) | of which the store read (s) | "
        "peak memory growth (MB) | float stack / this: time | memory | whole process (s) | "
        "float / this |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in cold.items():
        seconds, read, peak, process = (
            [r[key] for r in runs]
            for key in ("seconds", "read_seconds", "peak_growth_bytes", "process_seconds")
        )
        print(
            f"| {name} | {statistics.median(seconds):.3f} ({min(seconds):.3f}-{max(seconds):.3f}) "
            f"| {statistics.median(read):.3f} | {statistics.median(peak) / 1e6:,.0f} | "
            f"{median_of(base, 'seconds') / statistics.median(seconds):.1f}x | "
            f"1/{median_of(base, 'peak_growth_bytes') / statistics.median(peak):.0f} | "
            f"{statistics.median(process):.2f} | "
            f"{median_of(base, 'process_seconds') / statistics.median(process):.2f}x |"
        )
    print("\n| warm | packed (kernel) | packed (numpy) | float stack | float / packed |")
    print("|---|---|---|---|---|")
    print(
        f"| one-shot query (ms) | {s['one_shot_packed'] * 1e3:.1f} | "
        f"{s['one_shot_packed_numpy'] * 1e3:.1f} | {s['one_shot_float'] * 1e3:.1f} | "
        f"{s['one_shot_float'] / s['one_shot_packed']:.2f}x |"
    )
    print(
        f"| packed product alone (ms) | {s['product_kernel'] * 1e3:.1f} | "
        f"{s['product_numpy'] * 1e3:.1f} | | |"
    )
    print(
        f"\nmemcpy of the packed masks: {s['memcpy_packed'] * 1e3:.1f} ms; "
        f"packed product / memcpy: kernel {s['product_kernel'] / s['memcpy_packed']:.2f}x, "
        f"numpy {s['product_numpy'] / s['memcpy_packed']:.2f}x"
    )
    print(f"forward + backward of the superposition alone: {s['forward_backward'] * 1e3:.1f} ms")
    tasks = {r["task"] for runs in cold.values() for r in runs}
    print(f"same task from every path: {len(tasks) == 1 and hot['same_task']}")


if __name__ == "__main__":
    main()
