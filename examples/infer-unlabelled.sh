#!/usr/bin/env bash
# Which task is this digit from? Train 5 PermutedMNIST tasks, export test digits of three of them
# as PNG files (no labels, no task ids), then let `supsup infer` find each digit's task and class:
# from a folder, from paths on stdin, and per image for a folder mixing tasks.
#
#   examples/infer-unlabelled.sh                  # WORK=folder to keep the files, BATCHES=200 quicker
set -euo pipefail

WORK=${WORK:-$(mktemp -d)}
BATCHES=${BATCHES:-1000}
PYTHON=${PYTHON:-python}
STORE="$WORK/store.zarr"
mkdir -p "$WORK"

if [ ! -d "$STORE" ]; then
  for task in 1 2 3 4 5; do
    supsup train-task "$STORE" --data "permuted:$task" --batches "$BATCHES" --quiet
  done
fi
supsup info "$STORE"

# Export 20 test digits of permuted:2, :4 and :5 as PNGs, named only by a counter. The true task
# and label go to a separate answers file that inference never sees.
"$PYTHON" - "$WORK" <<'PY'
import csv
import sys
from pathlib import Path

from PIL import Image

from supsup_cli.learn.data import embedded_source, pixel_permutation

work = Path(sys.argv[1])
source = embedded_source()
with open(work / "answers.csv", "w", newline="") as handle:
    answers = csv.writer(handle)
    answers.writerow(["file", "spec", "label"])
    for seed in (2, 4, 5):
        folder = work / f"shots-{seed}"
        folder.mkdir(exist_ok=True)
        order = pixel_permutation(seed).numpy()
        for i in range(20):
            raw = source.test_images[i].reshape(784)[order].reshape(28, 28)
            path = folder / f"digit-{i:02d}.png"
            Image.fromarray(raw, mode="L").save(path)
            answers.writerow([str(path), f"permuted:{seed}", int(source.test_labels[i])])
PY

score() {  # JSON lines on stdin -> task-id and class accuracy against answers.csv
  "$PYTHON" -c '
import csv, json, sys
from supsup_cli.store import MaskStore
tasks = {r.data: r.index for r in MaskStore.open(sys.argv[1]).tasks()}
truth = {row["file"]: row for row in csv.DictReader(open(sys.argv[2]))}
rows = [json.loads(line) for line in sys.stdin if line.strip()]
task_ok = sum(tasks[truth[r["file"]]["spec"]] == r["task"] for r in rows)
class_ok = sum(int(truth[r["file"]]["label"]) == r["class"] for r in rows)
print(f"  {len(rows)} images: task right {task_ok}/{len(rows)}, class right {class_ok}/{len(rows)}")
' "$STORE" "$WORK/answers.csv"
}

echo "one folder known to hold one task = one batch (one-shot, --per batch):"
supsup infer "$STORE" "$WORK/shots-4" --per batch | tee "$WORK/folder.jsonl" | head -3
score < "$WORK/folder.jsonl"

echo "paths on stdin, three tasks mixed, a task for every image:"
find "$WORK"/shots-* -name '*.png' | sort | supsup infer "$STORE" - > "$WORK/stdin.jsonl"
score < "$WORK/stdin.jsonl"

echo "the same with the binary method, in batches of 20 (each batch is one task's folder):"
find "$WORK"/shots-* -name '*.png' | sort \
  | supsup infer "$STORE" - --method binary --batch 20 --per batch > "$WORK/binary.jsonl"
score < "$WORK/binary.jsonl"

echo "labelled check on the full test split of each task, 128 images per batch:"
supsup infer "$STORE" --data permuted:1..5 --batch 128 --quiet
