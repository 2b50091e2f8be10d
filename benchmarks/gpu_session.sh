#!/usr/bin/env bash
# Every GPU figure the open issues ask for, as one prepared run on a lent GPU machine (issue 16:
# conv training throughput against dense; issue 17: task inference at the GPU's limits; and the
# CUDA paths' answers against the CPU's). The device tool gives about 15 minutes a session, so
# each part has its own time limit: a slow part leaves the others their figures.
#
#   bash benchmarks/gpu_session.sh OUT_DIR          # on the GPU machine, from the repository root
#   DRY=1 bash benchmarks/gpu_session.sh OUT_DIR    # here, on the CPU: the plumbing, tiny sizes
#
# The GPU image has torch, typer, rich and filelock but not zarr, numcodecs, constriction or
# jsonschema: carry them as wheels for its Python (3.12), made here with
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .wheels zarr numcodecs constriction jsonschema
# in a folder that .git/info/exclude ignores, named in the run's `carry`.
set -uo pipefail

out=${1:-benchmarks/out/gpu}
mkdir -p "$out"
python=${PYTHON:-python3}
if [ -d .wheels ]; then
    "$python" -m pip install -q --no-index --find-links .wheels zarr numcodecs constriction jsonschema
fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
scratch=$(mktemp -d)

part() {  # part NAME SECONDS COMMAND...: its output on the screen and in OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

if [ "${DRY:-0}" = 1 ]; then
    part conv-fp32 120 "$python" benchmarks/conv_throughput.py --batch 4 --batches 3
    part taskid 120 "$python" benchmarks/gpu_taskid.py --device cpu --tasks 50 --repeats 1 \
        --json "$out/taskid.json"
    part cuda-check 300 "$python" benchmarks/cuda_check.py --dry-run-on-cpu --out "$scratch" \
        --batches 5 --tasks 50 --skip hopfield,eval,allocate
    exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for precision in fp32 bf16; do  # the GPU setting: batch 128; bf16 adds channels_last
    part "conv-$precision" 100 "$python" benchmarks/conv_throughput.py --device cuda \
        --batch 128 --batches 40 --precision "$precision"
done
part conv-resnet50-bf16 100 "$python" benchmarks/conv_throughput.py --device cuda \
    --arch resnet50 --batch 64 --batches 20 --precision bf16
part taskid 240 "$python" benchmarks/gpu_taskid.py --json "$out/taskid.json"
part cuda-check 180 "$python" benchmarks/cuda_check.py --out "$scratch" --batches 50 \
    --skip hopfield,eval,allocate
