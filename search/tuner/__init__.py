"""Building and running the Ray Tune experiment of a search: the experiment and its session, the
searcher, the schedulers (with the rungs they remember across a resume), the TensorBoard review
logger, the cluster it runs on, SIGTERM as Ctrl-C, and the module names of older experiments."""
