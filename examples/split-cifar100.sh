#!/usr/bin/env bash
# SplitCIFAR-100 as in the SupSup paper (GG): 20 tasks of 5 classes, the reduced ResNet-18
# (resnet18-gem, base width 20), Adam lr 1e-3, batch 128, per-task BatchNorm statistics.
#
#   examples/split-cifar100.sh DATA_ROOT [WORK] [EPOCHS]
#   DATA_ROOT  a folder holding CIFAR-100: the binary version, unpacked as
#              DATA_ROOT/cifar-100-binary/{train.bin,test.bin} from
#              https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz
#              (curl -L URL | tar -xz -C DATA_ROOT), or torchvision's cifar-100-python/
#   WORK       folder for the store                        (default demo/split-cifar100)
#   EPOCHS     passes over each task's 2,500 training images (default 250)
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,10p' "$0"
    exit 2
fi
root=$1
work=${2:-demo/split-cifar100}
epochs=${3:-250}
store="$work/c100.zarr"
mkdir -p "$work"

for task in $(seq 0 19); do
    supsup train-task "$store" --data "splitcifar100:$task" --data-root "$root" \
        --arch resnet18-gem --outputs 100 --optimizer adam --lr 1e-3 --batch-size 128 \
        --epochs "$epochs" --schedule cosine
done
supsup eval "$store" --data 'splitcifar100:0..19' --data-root "$root"
supsup info "$store"
