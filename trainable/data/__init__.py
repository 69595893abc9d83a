"""What a trial reads: the data layouts, their annotations, the log-mel cache, folds, targets,
the teacher's predictions, and the training crops, evaluation windows and whole clips built
over them."""
