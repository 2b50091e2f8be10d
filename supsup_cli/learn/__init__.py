"""Learning on the fixed network (torch): data, training, evaluation, task inference, allocation,
Hopfield, mask algebra, plots."""
