"""Building and running the Ray Tune experiment of a search: the experiment and its session,
the searcher, the schedulers, the TensorBoard review logger and the cluster it runs on."""
