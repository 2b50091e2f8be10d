#!/usr/bin/env bash
# The convolutional path offline, in under a minute on two cores: a conv4 supermask store (fixed
# signed-constant 3x3 convolutions, per-task BatchNorm statistics) learns the five SplitMNIST
# tasks of the embedded digits, then is evaluated with the task given (GG) and inferred (GNu).
#
#   examples/conv-digits.sh [WORK] [BATCHES]
#   WORK     folder for the store                       (default demo/conv-digits)
#   BATCHES  training batches of 128 per task           (default 35)
#
# The five tasks are trained by one `train-tasks` process (one worker, so that they land in
# order and each gets the same initial scores as with `train-task`): one start of Python and
# torch instead of five. SGD at lr 0.2 gives GG 98.63% (lr 0.1 with 25 batches: 97.03%).
set -euo pipefail

work=${1:-demo/conv-digits}
batches=${2:-35}
store="$work/conv4.zarr"
mkdir -p "$work"
rm -rf "$store"

supsup train-tasks "$store" --data 'split:0..4' --workers 1 --arch conv4 --mask-rule sign \
    --optimizer sgd --lr 0.2 --batches "$batches" --quiet
# Task unknown (the GNu lines also print GG, the accuracy with the task given): each batch of 128
# test images is normalised by its own statistics while the task is inferred, then classified
# with the inferred task's mask and statistics. Exhaustive (one forward pass per stored mask)
# finds every batch's task (100%); one-shot and binary (gradients of the entropy at the
# superposition of the masks) find 20%: for split digits the superposition favours one task's
# classes for every batch, and batch statistics leave its gradient no trace of the task
# (measurements in benchmarks/RESULTS.md, issue 16).
for method in exhaustive binary one-shot; do
    supsup eval "$store" --data 'split:0..4' --scenario GNu --method "$method" --batch 128
done
