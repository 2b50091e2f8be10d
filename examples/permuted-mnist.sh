#!/usr/bin/env bash
# Sequential PermutedMNIST: learn one supermask per permutation, then evaluate every task (task
# given, GG) and show what the store holds. Copy and adapt; `supsup --help` lists the commands.
#
#   examples/permuted-mnist.sh [STORE] [TASKS] [BATCHES]
#   STORE    store to create or grow          (default demo/permuted.zarr)
#   TASKS    permutations 1..TASKS to learn   (default 5)
#   BATCHES  training batches per task        (default 1000, the paper's setting)
set -euo pipefail

store=${1:-demo/permuted.zarr}
tasks=${2:-5}
batches=${3:-1000}

# Growing an existing store: permutations it already holds are not trained again (train-task
# refuses a data spec the store has unless --again).
held=$(supsup info "$store" --json 2>/dev/null || true)
for task in $(seq 1 "$tasks"); do
    if grep -q "\"data\": \"permuted:$task\"" <<<"$held"; then
        echo "permuted:$task: already in $store" >&2
        continue
    fi
    supsup train-task "$store" --data "permuted:$task" --batches "$batches"
done

for task in $(seq 1 "$tasks"); do
    supsup eval "$store" --data "permuted:$task"
done

supsup info "$store"
supsup verify "$store"
