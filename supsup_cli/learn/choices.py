"""The names and defaults a user types for learning commands, without importing torch: the CLI's
help texts take them from here, and the modules that implement them (whose registries a test
checks against these names) take their defaults from here."""

from __future__ import annotations

from typing import Final

SCENARIOS: Final = ("GG", "GNu")  # evaluation: task given, or inferred among the stored tasks
# Task inference (learn/taskid.py registers one implementation under each name).
METHODS: Final = {
    "one-shot": "one gradient of the objective at the uniform superposition (fast)",
    "binary": "halve the candidate tasks log2(k) times by the superposition's gradient",
    "exhaustive": "one forward pass per stored mask, lowest objective wins (slow baseline)",
}
OBJECTIVES: Final = {
    "H": "entropy of the softmax outputs (low when the mask fits)",
    "G": "logsumexp of the superfluous outputs (needs a store made with more outputs than "
    "classes, e.g. --outputs 100)",
}
PER_MODES: Final = ("batch", "image")  # one task per batch, or per image
# Confidence is softmax(-score / T): T fitted by temperature scaling (least log-loss of the true
# task) on single images of a 4-task PermutedMNIST store made with the demo's settings, objective
# H (one-shot 0.133, exhaustive 0.130); at T = 1 a right answer among 4 tasks read about 0.45.
CONFIDENCE_TEMPERATURE: Final = 0.13
# Training precision (learn/train.py registers the autocast dtype of each name).
PRECISIONS: Final = {
    "fp32": "float32 throughout (default)",
    "bf16": "bfloat16 autocast of the forward pass (scores, their gradients and the optimizer "
    "stay float32); conv nets on CUDA also run channels_last",
}
DEFAULT_PRECISION: Final = "fp32"
# A new store's network and outputs when neither --arch / --outputs nor the data set say: the
# data set's reference network and its whole label space (class ids are global, so that every
# later task of the data set fits the store's outputs).
DEFAULT_ARCH: Final = "lenet-300-100"
DEFAULT_OUTPUTS: Final = 10
DATA_SET_DEFAULTS: Final = {  # data spec kind -> (network, classes in the data set)
    "splitcifar100": ("resnet18-gem", 100),
    "splitimagenet": ("resnet50", 1000),
}
# The scores' optimizer and learning rate when --optimizer / --lr are not given: the reference's
# settings, RMSprop for the MLPs (PermutedMNIST, GNu) and Adam for conv nets (SplitCIFAR-100).
DEFAULT_TRAINING: Final = {"mlp": ("rmsprop", 1e-4), "conv": ("adam", 1e-3)}
MERGE_RULES: Final = ("and", "or", "majority")  # mask algebra
PLOT_FORMATS: Final = ("png", "svg")

# Hopfield recovery (learn/hopfield.py)
DEFAULT_STEPS: Final = 30
DEFAULT_GAMMA: Final = 1.5e-3
# Random starts whose minima of E become candidate masks (0: the descent's mask alone).
DEFAULT_STARTS: Final = 64
MAX_STARTS: Final = 4096

# Allocation without task labels (learn/allocate.py)
DEFAULT_EPSILON: Final = 2.0**-3  # threshold (1 + ε)/k'; the paper found 1.1..1.2 best
DEFAULT_BUDGET: Final = 2500  # the paper's budget of masks
DEFAULT_ALLOCATE_OUTPUTS: Final = 100  # superfluous outputs make -∂H/∂α decisive
DEFAULT_ALLOCATE_RULE: Final = "sign"  # GNu/NNs masks: score >= 0, about half the weights
