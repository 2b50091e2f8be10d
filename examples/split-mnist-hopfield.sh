#!/usr/bin/env bash
# Hopfield SupSup on SplitMNIST: one mask per 2-digit task (0/1, 2/3, ..., 8/9) on the BatchNorm
# channels of bn-2048-2048 (d = 4,096 bits per task). The masks are folded into one energy matrix
# Psi and dropped; then every test batch of 128 images gets a mask back from Psi by descent, with
# no task label, and is classified with it. The last lines compare with the true masks.
#
#   examples/split-mnist-hopfield.sh [STORE] [BATCHES] [STEPS] [TASKS]
#   STORE    the store to make                              (default demo/split-hopfield.zarr)
#   BATCHES  training batches per task                      (default 100)
#   STEPS    descent steps T of each recovery               (default 30)
#   TASKS    how many of the 5 split tasks                  (default 5)
set -euo pipefail

store=${1:-demo/split-hopfield.zarr}
batches=${2:-100}
steps=${3:-30}
tasks=${4:-5}
last=$((tasks - 1))
mkdir -p "$(dirname "$store")"

for i in $(seq 0 "$last"); do
    supsup train-task "$store" --data "split:$i" --arch bn-2048-2048 --mask-rule sign \
        --optimizer sgd --lr 0.1 --batches "$batches"
done
supsup eval "$store"                             # each true mask, task given (before dropping)
supsup hopfield-encode "$store" --drop-masks     # Psi keeps them: 64 MiB of float32 for d = 4,096
supsup info "$store"
supsup verify "$store"
# task-id: batches whose recovered mask is a stored one bit for bit; Hamming to the true mask
supsup infer "$store" --method hopfield --steps "$steps" --data "split:0..$last"
