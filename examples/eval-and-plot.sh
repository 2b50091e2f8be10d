#!/usr/bin/env bash
# Evaluate a GNu store over many tasks and draw the paper-style figures: learn PermutedMNIST
# tasks with sign-rule masks and superfluous outputs, evaluate with the task given (GG) and
# inferred (GNu, one-shot, H and G objectives) at growing task counts, then plot.
#
#   examples/eval-and-plot.sh [WORK] [TASKS] [BATCHES]
#   WORK     folder for the store, reports and figures   (default demo/eval)
#   TASKS    permutations 1..TASKS to learn              (default 10)
#   BATCHES  training batches per task                    (default 1000, the paper's setting)
set -euo pipefail

work=${1:-demo/eval}
tasks=${2:-10}
batches=${3:-1000}
store="$work/store.zarr"
mkdir -p "$work"

for task in $(seq 1 "$tasks"); do
    supsup train-task "$store" --data "permuted:$task" --batches "$batches" \
        --arch lenet-300-100 --outputs 100 --mask-rule sign --quiet
done

# Task counts at which to re-evaluate the store as it stood then: 1, half, (all is implied).
checkpoints="1,$(( (tasks + 1) / 2 ))"
supsup eval "$store" --data "permuted:1..$tasks" --checkpoints "$checkpoints" \
    --json > "$work/gg.json"
for objective in H G; do
    supsup eval "$store" --scenario GNu --objective "$objective" --batch 128 \
        --checkpoints "$checkpoints" --quiet --json > "$work/gnu-$objective.json"
done
supsup eval "$store" --scenario GNu --batch 128 --csv > "$work/gnu-H.csv"
head -3 "$work/gnu-H.csv"

# Every figure the reports allow (without --json, `supsup eval` prints a table instead).
supsup plot "$store" "$work/gnu-H.json" "$work/gnu-G.json" "$work/gg.json" --out "$work/figures"
