#!/usr/bin/env bash
# Past one process: many small tasks trained by worker processes into one store (train-tasks),
# a resumed run that trains only what is missing, then one task trained by two processes that
# share every batch (torchrun, DDP; gloo on the CPU, nccl on GPUs). Copy and adapt.
#
#   examples/many-tasks.sh [STORE] [TASKS] [BATCHES] [WORKERS]
#   STORE    store to create or grow               (default demo/many.zarr)
#   TASKS    permutations 1..TASKS, one task each  (default 6)
#   BATCHES  training batches per task             (default 1000, the paper's setting)
#   WORKERS  worker processes of train-tasks       (default 2; on GPUs add --devices cuda:0,...)
set -euo pipefail

store=${1:-demo/many.zarr}
tasks=${2:-6}
batches=${3:-1000}
workers=${4:-2}

# Many independent tasks: one process per worker, each appending through the store's lock.
supsup train-tasks "$store" --data "permuted:1..$tasks" --workers "$workers" --batches "$batches"

# Interrupted, or more specs added? Train only the specs the store does not hold yet.
supsup train-tasks "$store" --data "permuted:1..$tasks" --workers "$workers" --batches "$batches" \
    --skip-existing

# One task across two processes: each takes half of every batch of 128; rank 0 alone writes.
torchrun --standalone --nproc-per-node 2 -m supsup_cli train-task "$store" \
    --data "permuted:$((tasks + 1))" --batches "$batches"

supsup eval "$store" --data "permuted:$((tasks + 1))"
supsup verify "$store"
