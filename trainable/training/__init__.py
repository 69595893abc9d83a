"""How a trial trains: the k-fold loop and its state in flight, one epoch's fit, the training
loader, the selection of epochs, the checkpoint format and cadence, preemption, running out of
GPU memory, the optimiser and its schedule."""
