"""How a trial trains: the k-fold loop, one epoch's fit, the selection of epochs, the checkpoint
format and cadence, preemption, the optimiser and its schedule."""
