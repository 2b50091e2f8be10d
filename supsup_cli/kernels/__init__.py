"""Products of packed masks with vectors and matrices: numpy, the C kernel, torch, Triton."""
