"""Test-only: a CPU machine that plays one with a GPU, where trials whose config has a given
value run out of GPU memory in their first epoch.

A search run with `environment(...)` among its environment variables

    RAY_OVERRIDE_RESOURCES={"GPU": 1}                      its local Ray declares a (fake) GPU
    RAY_RUNTIME_ENV_HOOK=tests.oom_injection.runtime_env   Ray's driver calls it in ray.init
    RFCX_TEST_OOM_WHEN=loss.w_max=0.5                      the trials to fail: KEY=VALUE
    RFCX_TEST_OOM_LOG=/path/calls.log                      one line per run_epoch call

gives every Ray worker process the setup hook `inject`, which patches two things there: a
trial computes on the CPU whatever share of the GPU Ray assigned it (as if CUDA were there),
and every KFoldTraining.run_epoch call appends the trial's value of KEY to the log, then
raises torch.OutOfMemoryError, as CUDA's allocator would, when that value equals VALUE.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

WHEN, LOG = "RFCX_TEST_OOM_WHEN", "RFCX_TEST_OOM_LOG"
REPO = Path(__file__).resolve().parents[1]


def environment(key: str, value: float, log: Path) -> dict[str, str]:
    """The environment variables that make trials with config `key` == `value` run out of GPU
    memory (the repository on PYTHONPATH, so Ray's driver and workers import this module)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {"RAY_OVERRIDE_RESOURCES": json.dumps({"GPU": 1}), "RAY_RUNTIME_ENV_HOOK": f"{__name__}.runtime_env",
            WHEN: f"{key}={value!r}", LOG: str(log), "PYTHONPATH": path}


def runtime_env(env: dict | None) -> dict:
    """RAY_RUNTIME_ENV_HOOK: the driver's runtime env with `inject` as every worker's setup hook."""
    return {**(env or {}), "worker_process_setup_hook": f"{__name__}.inject"}


def inject() -> None:
    """Patch the trainable in this worker process (see the module's docstring)."""
    import torch

    from trainable import tune
    from trainable.training.fit import Device
    from trainable.training.kfold import KFoldTraining

    key, value = os.environ[WHEN].split("=", 1)
    run_epoch = KFoldTraining.run_epoch

    @functools.wraps(run_epoch)
    def run_epoch_or_run_out_of_memory(self: KFoldTraining) -> dict[str, float]:
        found = functools.reduce(getattr, key.split("."), self.config)
        with open(os.environ[LOG], "a") as log:
            log.write(f"{found!r}\n")
        if math.isclose(found, float(value)):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"
                                         " of 23.68 GiB of which 1.06 GiB is free.")
        return run_epoch(self)

    def the_cpu_for_the_declared_gpu() -> Device:
        torch.set_num_threads(1)  # as assigned_device does for the trial's one CPU
        return Device(torch.device("cpu"))

    KFoldTraining.run_epoch = run_epoch_or_run_out_of_memory
    tune.assigned_device = the_cpu_for_the_declared_gpu
