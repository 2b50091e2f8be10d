#!/usr/bin/env bash
# NNs: learn a stream of PermutedMNIST segments with no task labels. Every CHECK batches
# `supsup allocate` asks the one-shot gradient whether the data fits a mask the store already has
# (keep training it) or none (allocate a new one). Then the audit log shows when and why each mask
# was made or reused, and `verify` checks the store.
#
#   examples/nns-stream.sh [STORE] [BATCHES] [CHECK] [STREAM]
#   STORE    the store to make or grow                     (default demo/nns.zarr)
#   BATCHES  training batches per segment                  (default 1000)
#   CHECK    batches between decisions, divides BATCHES    (default 100, the paper's)
#   STREAM   data segments, in order                       (default permuted:1,2,1,3,2)
#
# With 1000 batches per segment the default stream ends with exactly 3 masks, each segment of a
# permutation trained on that permutation's own mask (purity 100%).
set -euo pipefail

store=${1:-demo/nns.zarr}
batches=${2:-1000}
check=${3:-100}
stream=${4:-permuted:1,2,1,3,2}
mkdir -p "$(dirname "$store")"

# Exit code 3 means the --budget of masks was reached: the run stopped, what it learned is kept.
status=0
supsup allocate "$store" --data "$stream" --batches-per-segment "$batches" \
    --check-every "$check" --epsilon 0.125 --budget 2500 || status=$?
if [ "$status" -eq 3 ]; then
    echo "budget reached: the store holds what was learned until then"
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi

supsup info "$store" --log        # every decision: batch, segment, p, threshold, decision, mask
supsup info "$store"              # the masks (`info --json`: the revision each has reached)
supsup verify "$store"
