"""What a trial reads: the data layouts, their annotations, the log-mel features and their cache,
folds, targets, the teacher's predictions, and the training crops, evaluation windows and whole
clips built over them, with where each lies in its clip and the mixup draw that mixes them."""
