"""Task inference at the hardware's limits (issue 17): packed products against the float stack.

For k random lenet-300-100 masks with 500 outputs (D = 315,200), in one run on one device:
products with one vector and with 128 columns, one-shot per image for 128 images end to end,
the device copy of the packed bytes (the floor a product that reads them cannot beat), peak
memory, and whether the answers agree. The float stack is every mask as one fp32 (k, D) tensor,
multiplied by torch's matmul; it is skipped where it would not fit in memory.

    python benchmarks/gpu_taskid.py                          # cuda; k = 2,500, 25,000, 100,000
    python benchmarks/gpu_taskid.py --device cpu             # the same table; k = 2,500
    python benchmarks/gpu_taskid.py --device cpu --tasks 500 1000 --json out.json

Times are medians of --repeats runs after one warm-up (synchronised on a GPU). Peak memory:
on a GPU the growth of torch's peak allocation; on the CPU the growth of the resident set,
sampled every millisecond while the measure runs. "End to end" per image is: the batched
per-example mask gradients (one forward, one backward), the product of the masks with them and
each image's decision; the packed row also gives infer_task's time, which classifies each image
with its task's mask as well.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from supsup_cli.format.architectures import NetConfig
from supsup_cli.kernels.torch_products import unpack_torch
from supsup_cli.learn.mask_banks import MaskBank
from supsup_cli.learn.objectives import get_objective, per_example_gradient_blocks
from supsup_cli.learn.taskid import Query, infer_task, one_shot_images
from supsup_cli.model.nets import build_net

IMAGES = 128
OUTPUTS = 500
FLOAT_STACK_MEMORY_SHARE = 0.6  # of the device's free memory, or the float stack is skipped


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of `function` after one warm-up run."""
    function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_growth(device: torch.device, into: dict[str, float], key: str):
    """Peak memory growth (MB) while the block runs: torch's allocator on a GPU, the sampled
    resident set on the CPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield
        into[key] = (torch.cuda.max_memory_allocated(device) - base) / 1e6
        return
    base, peak, stop = _resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        into[key] = (max(peak[0], _resident_bytes()) - base) / 1e6


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def random_masks(tasks: int, mask_bits: int, seed: int) -> np.ndarray:
    """k random 50% masks, packed (D here is a multiple of 8: no padding bits to clear)."""
    return np.random.default_rng(seed).integers(0, 256, (tasks, -(-mask_bits // 8)), np.uint8)


def measure(tasks: int, device: torch.device, repeats: int, seed: int) -> dict[str, object]:
    """One k: every figure of the table, packed then float stack, plus agreement."""
    config = NetConfig("lenet-300-100", outputs=OUTPUTS, seed=0)
    bits = config.mask_bits
    packed = random_masks(tasks, bits, seed)
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(bits, generator=generator).to(device)
    columns = torch.randn(bits, IMAGES, generator=generator).to(device)
    x = torch.randn(IMAGES, 784, generator=generator).to(device)
    entropy, ms, peaks = get_objective("H"), {}, {}
    row: dict[str, object] = {"tasks": tasks, "mask_bits": bits, "device": str(device)}

    with peak_growth(device, peaks, "packed"):
        bank = MaskBank.from_packed(config, packed, [tuple(range(10))] * tasks, device=device)
        query = Query(bank, x, entropy, None)
        ms["vector", "packed"] = median_ms(lambda: bank.products(vector), device, repeats)
        ms["columns", "packed"] = median_ms(lambda: bank.products(columns), device, repeats)
        ms["images", "packed"] = median_ms(lambda: one_shot_images(query), device, repeats)
        ms["infer", "packed"] = median_ms(lambda: infer_task(bank, x, per="image"), device, repeats)
        packed_vector = bank.products(vector).cpu().double()
        packed_columns = bank.products(columns).cpu().double()
        packed_tasks = [d.task for d in one_shot_images(query)]
    copy = torch.from_numpy(packed).to(device)
    ms["copy", "packed"] = median_ms(lambda: copy.clone(), device, repeats)
    mean = bank.mean_mask()
    bank = query = copy = None

    stack_bytes = 4 * tasks * bits + tasks * -(-bits // 8) * 8  # floats + the unpacked uint8
    if stack_bytes > FLOAT_STACK_MEMORY_SHARE * free_bytes(device):
        row["float_stack"] = f"skipped: needs {stack_bytes / 1e9:.1f} GB"
    else:
        with peak_growth(device, peaks, "float"):
            stack = unpack_torch(torch.from_numpy(packed).to(device), bits)  # (k, D) float32

            def float_images() -> list[int]:
                blocks = per_example_gradient_blocks(net, mean, x, entropy)
                gradients = torch.cat([block for _, block in blocks])  # (D, n)
                return (stack @ gradients).argmin(dim=0).tolist()

            net = build_net(config, device)
            ms["vector", "float"] = median_ms(lambda: stack @ vector, device, repeats)
            ms["columns", "float"] = median_ms(lambda: stack @ columns, device, repeats)
            ms["images", "float"] = median_ms(float_images, device, repeats)
            float_vector = (stack @ vector).cpu().double()
            float_columns = (stack @ columns).cpu().double()
            float_tasks = float_images()
            magnitude = (stack @ columns.abs()).cpu().double()  # Σ |x_d| over each mask's bits
        stack = None
        row["agreement"] = {
            "per_image_tasks_equal": sum(
                a == b for a, b in zip(packed_tasks, float_tasks, strict=True)
            ),
            "images": IMAGES,
            "vector_argmin_equal": int(packed_vector.argmin()) == int(float_vector.argmin()),
            # |packed - float| / Σ|x_d| over each mask's bits, worst over masks and columns
            "columns_max_relative_difference": float(
                ((packed_columns - float_columns).abs() / magnitude).max()
            ),
        }
    row["ms"] = {f"{measure} {kind}": value for (measure, kind), value in ms.items()}
    row["peak_mb"] = peaks
    return row


def table(rows: list[dict[str, object]]) -> str:
    """The issue's table: one line per k and measure."""
    names = {
        "vector": "product with one vector",
        "columns": f"product with {IMAGES} columns",
        "images": f"one-shot per image, {IMAGES} images, end to end",
        "infer": f"infer_task per image, {IMAGES} images (also classifies)",
        "copy": "copy of the packed bytes (the floor)",
    }
    lines = [
        "| k | measure | packed (ms) | float stack (ms) | float / packed |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ms = row["ms"]
        for key, name in names.items():
            packed, floats = ms.get(f"{key} packed"), ms.get(f"{key} float")
            ratio = f"{floats / packed:.2f}x" if packed and floats else ""
            floats_text = f"{floats:.3f}" if floats is not None else ""
            lines.append(f"| {row['tasks']:,} | {name} | {packed:.3f} | {floats_text} | {ratio} |")
        peaks = row["peak_mb"]
        float_peak = f"{peaks['float']:.0f}" if "float" in peaks else row.get("float_stack", "")
        lines.append(
            f"| {row['tasks']:,} | peak memory growth (MB) | {peaks['packed']:.0f} | "
            f"{float_peak} | |"
        )
        agreement = row.get("agreement")
        if agreement:
            lines.append(
                f"| {row['tasks']:,} | agreement | per-image tasks equal "
                f"{agreement['per_image_tasks_equal']}/{agreement['images']}; vector argmin "
                f"equal {agreement['vector_argmin_equal']}; 128-column products within "
                f"{agreement['columns_max_relative_difference']:.1e} x Σ|x| | | |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tasks", type=int, nargs="+", help="k values (default: by device)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu")
    tasks = args.tasks or ([2_500, 25_000, 100_000] if device.type == "cuda" else [2_500])
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows = []
    for k in tasks:
        rows.append(measure(k, device, args.repeats, args.seed))
        print(table(rows[-1:]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
