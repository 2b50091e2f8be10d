"""Check the CUDA paths on a GPU machine: each command gives the CPU's answers with --device cuda.

Not part of CI (CI has no GPU; the same code paths run on the CPU in tests/test_taskid.py through
torch tensors). Run where `torch.cuda.is_available()`:

    python benchmarks/cuda_check.py --out /tmp/cuda-check

Prints one table of checks (same answer on cpu and cuda: yes/no, seconds on each) and one of GPU
timings of one-shot on k packed masks against the float-stacked superposition on the same GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from supsup_cli.format.architectures import NetConfig
from supsup_cli.kernels import torch_products as bits
from supsup_cli.kernels.torch_products import unpack_torch
from supsup_cli.learn.data import embedded_source, load_task, pixel_permutation
from supsup_cli.learn.mask_banks import MaskBank
from supsup_cli.learn.taskid import infer_task
from supsup_cli.store import MaskStore

# Keys whose values legitimately differ between runs (wall time, where the store lives).
GPU = "cuda"  # "cpu" for a dry run of the plumbing
VOLATILE = ("seconds", "time", "date", "created", "command", "path", "store", "device", "load")


def cli(*args: str) -> tuple[int, str, float]:
    """Run `supsup ARGS` in a fresh process; returns exit code, stdout and seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "supsup_cli", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(f"supsup {' '.join(args)}: exit {done.returncode}\n{done.stderr}", file=sys.stderr)
    return done.returncode, done.stdout, time.perf_counter() - started


def stable(value):
    """A JSON value without the keys that differ between two honest runs."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    if isinstance(value, float):  # float32 sums in another order: equal to 6 significant digits
        return float(f"{value:.6g}")
    return value


def leaves(value, path: str = "") -> dict[str, object]:
    """Every scalar of a JSON value by its path."""
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in leaves(item, f"{path}/{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in leaves(item, f"{path}/{i}").items()
        }
    return {path: value}


def same_on_both(rows: list, out_dir: Path, name: str, *args: str) -> None:
    """Run a --json command on cpu and on the GPU, keep both answers, count differing values."""
    results = {}
    for device in ("cpu", GPU):
        code, out, seconds = cli(*args, "--device", device, "--json", "--quiet")
        results[device] = (code, stable(json.loads(out)) if code == 0 else None, seconds)
        slug = "".join(c if c.isalnum() else "-" for c in name)[:60]
        (out_dir / f"{slug}.{device}.json").write_text(out)
    cpu, gpu = leaves(results["cpu"][1]), leaves(results[GPU][1])
    differing = sorted(k for k in cpu.keys() | gpu.keys() if cpu.get(k) != gpu.get(k))
    if differing:
        name += (
            f" ({len(differing)} of {len(cpu)} values differ, e.g. "
            + ", ".join(f"{k}: {cpu.get(k)} vs {gpu.get(k)}" for k in differing[:3])
            + ")"
        )
    rows.append(
        (name, results["cpu"][0] == 0 and not differing, results["cpu"][2], results[GPU][2])
    )


def train(rows: list, store: Path, specs: list[str], *extra: str) -> None:
    """Train tasks on the GPU; record time and the accuracy train-task reports."""
    for spec in specs:
        code, out, seconds = cli(
            "train-task", str(store), "--data", spec, *extra, "--device", GPU, "--json", "--quiet"
        )
        accuracy = f"{json.loads(out)['accuracy']:.2%}" if code == 0 else None
        rows.append(
            (
                f"train-task {spec} {' '.join(extra)} on cuda: accuracy {accuracy}",
                code == 0,
                None,
                seconds,
            )
        )


def per_image_check(rows: list, store: Path) -> None:
    """Per-image one-shot (per-example gradients) on a batch mixing three tasks."""
    x = torch.cat([load_task(f"permuted:{n}").test_x[:30] for n in (1, 2, 3)])
    opened = MaskStore.open(store)
    banks = {d: MaskBank.from_store(opened, d) for d in ("cpu", GPU)}
    for objective in ("H", "G"):
        a, b = (infer_task(banks[d], x, per="image", objective=objective) for d in ("cpu", GPU))
        agree = (
            a.tasks.tolist() == b.tasks.tolist()
            and a.predictions.tolist() == b.predictions.tolist()
            and np.allclose(a.confidences, b.confidences, rtol=1e-3, atol=1e-4)
        )
        correct = float((a.tasks == np.repeat([0, 1, 2], 30)).mean())
        rows.append(
            (
                f"infer --per image one-shot {objective} (90 images, 3 tasks; cpu task-id "
                f"{correct:.0%})",
                agree,
                None,
                None,
            )
        )


def images_check(rows: list, store: Path, out_dir: Path) -> None:
    """`infer` on a .npy of 60 digits of three tasks, one batch: by default the masks are
    streamed (one-shot, one batch), with --hold-masks held; the same lines on cpu and the GPU."""
    raw = embedded_source().test_images[:20].reshape(20, 784)
    digits = np.concatenate([raw[:, pixel_permutation(n).numpy()] for n in (1, 2, 3)])
    path = out_dir / "digits.npy"
    np.save(path, digits.reshape(60, 28, 28))
    for extra in ((), ("--hold-masks",)):
        answers, seconds = {}, {}
        for device in ("cpu", GPU):
            code, out, seconds[device] = cli(
                "infer", str(store), str(path), *extra, "--device", device
            )
            answers[device] = [json.loads(line) for line in out.splitlines()] if code == 0 else None
        cpu, gpu = answers["cpu"], answers[GPU]
        agree = (
            cpu is not None
            and gpu is not None
            and len(cpu) == 60
            and all(
                (a["task"], a["class"]) == (b["task"], b["class"])
                and abs(a["confidence"] - b["confidence"]) < 1e-3
                for a, b in zip(cpu, gpu, strict=True)
            )
        )
        mode = "held" if extra else "streamed (default)"
        rows.append(
            (f"infer digits.npy, 60 images, masks {mode}", agree, seconds["cpu"], seconds[GPU])
        )


def fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def synchronize() -> None:
    if GPU == "cuda":
        torch.cuda.synchronize()


def memory_mark() -> int:
    """Start measuring peak GPU memory; returns the bytes allocated now (0 on a CPU dry run)."""
    if GPU != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_mb(base: int) -> float:
    return (torch.cuda.max_memory_allocated() - base) / 1e6 if GPU == "cuda" else float("nan")


def cuda_ms(function, repeats: int = 10) -> float:
    """Median milliseconds of a GPU function, synchronised."""
    function()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def gpu_timings(tasks: int, outputs: int) -> list[tuple[str, float, float]]:
    """One-shot on packed masks vs the float stack, both on the GPU: ms and peak MB. The packed
    products run through the fused Triton kernel (the default) and through torch's unpack path."""
    config = NetConfig(arch="lenet-300-100", outputs=outputs, seed=0)
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (tasks, (config.mask_bits + 7) // 8), dtype=np.uint8)
    packed[:, -1] &= (1 << (config.mask_bits % 8 or 8)) - 1 if config.mask_bits % 8 else 0xFF
    x = torch.randn(128, 784)
    results = []
    base = memory_mark()
    bank = MaskBank.from_packed(config, packed, [tuple(range(10))] * tasks, device=GPU)
    packed_ms = cuda_ms(lambda: infer_task(bank, x))
    vector = torch.randn(config.mask_bits, device=GPU)
    images = torch.randn(config.mask_bits, 128, device=GPU)
    product_ms = cuda_ms(lambda: bank.products(vector))
    product_128_ms = cuda_ms(lambda: bank.products(images))
    packed_peak = peak_mb(base)
    answer = infer_task(bank, x).task
    fused = bank.products(vector)
    with unfused():
        unfused_ms = cuda_ms(lambda: bank.products(vector))
        unfused_128_ms = cuda_ms(lambda: bank.products(images))
        agree = torch.allclose(fused, bank.products(vector), rtol=1e-4, atol=1e-2)
    sweep = block_sweep(bank.packed_on_device, vector, config.mask_bits) if GPU == "cuda" else ""
    bank = None  # free the GPU copy before measuring the float stack
    base = memory_mark()
    started = time.perf_counter()
    stack = unpack_torch(torch.from_numpy(packed).to(GPU), config.mask_bits).float()
    synchronize()
    build_ms = (time.perf_counter() - started) * 1000
    stack_ms = cuda_ms(lambda: stack @ vector)
    stack_128_ms = cuda_ms(lambda: stack @ images)
    stack_peak = peak_mb(base)
    copy = torch.from_numpy(packed).to(GPU)
    copy_ms = cuda_ms(lambda: copy.clone())
    results.append(("one-shot query, packed masks (ms)", packed_ms, float("nan")))
    results.append(
        ("product with a vector: fused kernel / float-stack matvec (ms)", product_ms, stack_ms)
    )
    results.append(("product with a vector: torch unpack path (ms)", unfused_ms, float("nan")))
    results.append(
        (
            "product with 128 columns (per image): fused / float stack (ms)",
            product_128_ms,
            stack_128_ms,
        )
    )
    results.append(
        ("product with 128 columns: torch unpack path (ms)", unfused_128_ms, float("nan"))
    )
    results.append(("building the float stack on the GPU (ms)", float("nan"), build_ms))
    results.append(("device copy of the packed bytes (ms)", copy_ms, float("nan")))
    results.append(("peak GPU memory growth (MB)", packed_peak, stack_peak))
    results.append((f"answer of the packed query: task {answer}", float("nan"), float("nan")))
    results.append((f"fused product equals the unpack path: {agree}", float("nan"), float("nan")))
    print(sweep)
    return results


@contextmanager
def unfused():
    """Products through torch's unpack path instead of the fused kernel."""
    bits.fused_gpu_kernel.cache_clear()
    os.environ["SUPSUP_KERNEL"] = "0"
    try:
        yield
    finally:
        os.environ["SUPSUP_KERNEL"] = "1"
        bits.fused_gpu_kernel.cache_clear()


def block_sweep(packed: torch.Tensor, vector: torch.Tensor, mask_bits: int) -> str:
    """ms of the fused vector product for other block shapes than kernels/triton_kernel.py's."""
    from supsup_cli.kernels import triton_kernel as kernel

    lines = ["| rows per program | bytes per step | ms |", "|---|---|---|"]
    rows, nbytes = packed.shape
    for block_rows in (4, 8, 16):
        for block_bytes in (16, 32, 64, 128):
            out = torch.zeros((1, rows, 1), device=GPU)

            def run(r=block_rows, b=block_bytes, out=out):
                kernel._products[((rows + r - 1) // r, 1, 1)](
                    packed,
                    vector,
                    out,
                    rows,
                    nbytes,
                    mask_bits,
                    nbytes,  # one span: the whole row per program
                    nbytes,
                    1,
                    rows,
                    BLOCK_ROWS=r,
                    BLOCK_BYTES=b,
                )

            lines.append(f"| {block_rows} | {block_bytes} | {cuda_ms(run):.3f} |")
    return "\n" + "\n".join(lines)


class Checks(list):
    """The table of checks, each row printed as it lands (a run cut short keeps what it did)."""

    def append(self, row: tuple) -> None:
        super().append(row)
        name, ok, cpu_s, cuda_s = row
        line = (
            f"| {name} | {'yes' if ok else 'NO'} | {fmt_seconds(cpu_s)} | {fmt_seconds(cuda_s)} |"
        )
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/cuda"))
    parser.add_argument("--batches", type=int, default=300, help="training batches per task")
    parser.add_argument("--tasks", type=int, default=2500, help="k for the timing table")
    parser.add_argument(
        "--dry-run-on-cpu",
        action="store_true",
        help="compare cpu with cpu: checks this script's plumbing, not CUDA",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: hopfield, infer, eval, allocate, timings",
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    global GPU
    if args.dry_run_on_cpu:
        GPU = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SUPSUP_KERNEL", "1")
    name = torch.cuda.get_device_name() if GPU == "cuda" else "none (dry run on cpu)"
    print(f"GPU: {name}; torch {torch.__version__}\n")
    print("| check | same answer / ok | cpu s | cuda s |\n|---|---|---|---|", flush=True)
    rows = Checks()
    perm, split, stream = args.out / "perm.zarr", args.out / "split.zarr", args.out / "nns.zarr"
    batches = ("--batches", str(args.batches))
    if "hopfield" not in skip:
        split_specs = [f"split:{i}" for i in range(5)]
        train(
            rows,
            split,
            split_specs[:1],
            "--arch",
            "bn-2048-2048",
            "--mask-rule",
            "sign",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--batches",
            "100",
        )
        train(rows, split, split_specs[1:], "--optimizer", "sgd", "--lr", "0.1", "--batches", "100")
        code, _, seconds = cli("hopfield-encode", str(split), "--quiet")
        rows.append(("hopfield-encode", code == 0, None, seconds))
        same_on_both(
            rows,
            args.out,
            "infer --method hopfield --data split:0..4",
            "infer",
            str(split),
            "--method",
            "hopfield",
            "--data",
            "split:0..4",
            "--trials",
            "2",
        )
    train(rows, perm, ["permuted:1"], "--outputs", "100", "--mask-rule", "sign", *batches)
    train(rows, perm, ["permuted:2", "permuted:3"], *batches)
    if "infer" not in skip:
        for method in ("one-shot", "binary", "exhaustive"):
            for objective in ("H", "G"):
                same_on_both(
                    rows,
                    args.out,
                    f"infer --data permuted:1..3 --method {method} -o {objective}",
                    "infer",
                    str(perm),
                    "--data",
                    "permuted:1..3",
                    "--method",
                    method,
                    "--objective",
                    objective,
                    "--trials",
                    "10",
                )
        per_image_check(rows, perm)
        images_check(rows, perm, args.out)
    if "eval" not in skip:
        same_on_both(
            rows,
            args.out,
            "eval --scenario GNu --batch 1 --images 50",
            "eval",
            str(perm),
            "--data",
            "permuted:1..3",
            "--scenario",
            "GNu",
            "--batch",
            "1",
            "--images",
            "50",
        )
    if "allocate" not in skip:
        code, out, seconds = cli(
            "allocate",
            str(stream),
            "--data",
            "permuted:1,2,1",
            "--batches-per-segment",
            str(args.batches),
            "--check-every",
            "100",
            "--device",
            GPU,
            "--json",
            "--quiet",
        )
        masks = MaskStore.open(stream).task_count if code == 0 else None
        rows.append(
            (f"allocate permuted:1,2,1 on cuda: {masks} masks (want 2)", masks == 2, None, seconds)
        )
    code, _, _ = cli("verify", str(perm))
    rows.append(("verify the cuda-trained store", code == 0, None, None))

    timings: list[tuple[str, float, float]] = []  # stays empty with --skip timings
    if "timings" not in skip:
        timings = gpu_timings(args.tasks, 500)
        print(f"\nk = {args.tasks}, lenet-300-100, 500 outputs, batch 128, on the GPU:\n")
        print("| measure | packed | float stack |\n|---|---|---|")
        for name, packed, floats in timings:
            print(f"| {name} | {packed:.2f} | {floats:.2f} |")
    (args.out / "cuda-check.json").write_text(json.dumps({"checks": rows, "timings": timings}))


if __name__ == "__main__":
    main()
