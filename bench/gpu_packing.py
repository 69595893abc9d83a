"""GPU throughput of one trial, and of 1, 2 and 4 trials packed on one GPU (what
--gpus-per-trial 1, 0.5 and 0.25 do), with the GPU's utilisation.

Each packed trial is its own process running the trainable's epoch loop (resnet18, crops of
128 x 512 from the real-sized data of bench.real_sized, batch 64, autocast, channels_last) for
the same measured window, with the CPUs a packed trial gets (the machine's cores shared: torch
threads, and loader workers beside the GPU as in a trial).

    python -m bench.gpu_packing [--seconds 60] [--packs 1 2 4]

Needs a CUDA GPU; without one it says so and measures nothing. The GPU check (bench.gpu_check)
runs it with a shorter window.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import subprocess
import threading
import time
from multiprocessing.synchronize import Barrier

import torch

from bench.common import cores, header

STARTUP_S = 120.0  # for a packed trial to build its data and warm up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", help="timm backbone (default: resnet18)")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per step (default: the recipe's 64)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default: 60)")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4], help="trials per GPU (default: 1 2 4)")
    return parser.parse_args(argv)


def trial_worker(backbone: str, batch: int, threads: int, seconds: float, data: str, start: Barrier,
                 out: mp.Queue) -> None:
    """One packed trial: warm up, wait for the others, then train epochs for `seconds`; puts its
    samples/s, or why it could not start (one line, the others released)."""
    from pathlib import Path

    from bench.common import trial
    from trainable.training.fit import Device

    try:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True
        training = trial({"model.backbone": backbone, "train.batch_size": batch, "data.n_folds": 2,
                          "train.folds": [0], "data.fp_per_epoch": 1000}, Device(torch.device("cuda"), threads),
                         Path(data))
        run = training.runs[0]
        training.train_fold(run)  # warm-up: cuDNN autotuning, allocator, loader workers
    except Exception as error:  # said by the parent in one line; the traceback would only be a worker's
        out.put(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
        start.abort()
        return
    start.wait()
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        samples += training.train_fold(run).samples  # a pass of its own each
    torch.cuda.synchronize()
    out.put(samples / (time.perf_counter() - started))


def gpu_busy() -> float | None:
    """The GPU's utilisation now (%): nvidia-smi's, else torch's (pynvml); None: neither answers."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                               "--id=0"], capture_output=True, text=True, timeout=5).stdout
        return float(text.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        pass
    try:
        return float(torch.cuda.utilization(0))
    except (ImportError, RuntimeError, ValueError):  # no pynvml, or NVML cannot be read
        return None


def utilisation(stop: threading.Event, readings: list[float]) -> None:
    """Sample the GPU's utilisation (%) twice a second until `stop`."""
    while not stop.wait(0.5):
        busy = gpu_busy()
        if busy is None:
            return
        readings.append(busy)


def measure(args: argparse.Namespace, pack: int) -> tuple[list[float], float]:
    """Samples/s of each of `pack` trials running at once, and the median GPU utilisation (NaN:
    none could be read).

    Raises:
        RuntimeError: a trial could not start (its one line), or not within STARTUP_S.
    """
    from bench.real_sized import real_sized_data

    data = str(getattr(args, "data", None) or real_sized_data())
    context = mp.get_context("spawn")  # CUDA cannot be used in forked processes
    start, out = context.Barrier(pack + 1), context.Queue()
    threads = max(1, cores() // pack)
    workers = [context.Process(target=trial_worker, args=(args.backbone, args.batch_size, threads, args.seconds,
                                                          data, start, out)) for _ in range(pack)]
    for worker in workers:
        worker.start()
    stop = threading.Event()
    readings: list[float] = []
    sampler = threading.Thread(target=utilisation, args=(stop, readings))
    try:
        try:
            start.wait(timeout=STARTUP_S)
        except threading.BrokenBarrierError:
            try:
                why = out.get(timeout=5)  # the failed trial's line, on its way through the queue
            except queue.Empty:
                why = f"not ready within {STARTUP_S:g} s"
            raise RuntimeError(f"a packed trial did not start: {why}") from None
        sampler.start()
        rates = [out.get(timeout=args.seconds + STARTUP_S) for _ in workers]
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    return rates, statistics.median(readings) if readings else float("nan")


def summary(rates: list[float], busy: float, single: float, first: int = 1) -> str:
    """One measurement in words: the total, per trial, against `single` (the total of `first`
    trials per GPU), the GPU's utilisation."""
    total = sum(rates)
    busy_words = "n/a (neither nvidia-smi nor pynvml answered)" if busy != busy else f"{busy:.0f}%"
    return (f"{total:,.0f} samples/s in all ({statistics.mean(rates):,.0f} per trial; {total / single:.2f} x"
            f" {first} per GPU), GPU busy {busy_words}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured")
        return
    header(f"GPU packing: {args.backbone}, batch {args.batch_size}, 128 x 512, autocast;"
           f" {args.seconds:g} s per measurement")
    single = None
    for pack in args.packs:
        rates, busy = measure(args, pack)
        single = single or sum(rates)
        words = summary(rates, busy, single, args.packs[0])
        print(f"{pack} trial{'s' if pack > 1 else ''} per GPU: {words}", flush=True)


if __name__ == "__main__":
    main()
