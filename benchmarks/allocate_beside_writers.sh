#!/usr/bin/env bash
# allocate beside two train-task runs on one store, REPEATS times: exit codes, tasks lost, the
# tasks allocate took in from the other writers, verify. Needs `supsup` on PATH (the venv).
# Usage: benchmarks/allocate_beside_writers.sh [REPEATS]
set -uo pipefail
repeats=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
for i in 1 2 3; do
    supsup train-task "$work/base.zarr" --data "permuted:$i" --batches 250 -q || exit 1
done
for run in $(seq 1 "$repeats"); do
    rm -rf "$work/s.zarr"
    cp -r "$work/base.zarr" "$work/s.zarr"
    supsup allocate "$work/s.zarr" --data permuted:1,permuted:6 --batches-per-segment 20 \
        --check-every 10 --quiet --json >"$work/allocate.json" & a=$!
    supsup train-task "$work/s.zarr" --data permuted:4 --batches 20 -q & t1=$!
    supsup train-task "$work/s.zarr" --data permuted:5 --batches 20 -q & t2=$!
    wait $t1; r1=$?; wait $t2; r2=$?; wait $a; ra=$?
    python - "$work" "$run" "$ra" "$r1" "$r2" <<'PY'
import json, sys
from supsup_cli.store import MaskStore
work, run, ra, r1, r2 = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
store = MaskStore.open(f"{work}/s.zarr")
out = json.load(open(f"{work}/allocate.json")) if ra == 0 else {"allocated": [], "taken_in": []}
data = [r.data for r in store.tasks()]
lost = sum(spec not in data for spec in ("permuted:4", "permuted:5"))
print(f"run {run}: exits allocate {ra}, train-task {r1} {r2}; tasks {store.task_count}; "
      f"allocated {out['allocated']}; taken in {out['taken_in']}; lost {lost}; "
      f"verify {'passes' if store.verify() == [] else 'FAILS'}")
PY
done
