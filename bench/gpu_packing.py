"""GPU throughput of one trial, and of 1, 2 and 4 trials packed on one GPU (what
--gpus-per-trial 1, 0.5 and 0.25 do), with the GPU's utilisation.

Each packed trial is its own process running the trainable's epoch loop (resnet18, crops of
128 x 512, batch 64, autocast, channels_last) for the same measured window.

    python -m bench.gpu_packing [--seconds 60] [--packs 1 2 4]

Needs a CUDA GPU; without one it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import threading
import time
from multiprocessing.synchronize import Barrier

import torch

from bench.common import cores, header


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", help="timm backbone (default: resnet18)")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per step (default: the recipe's 64)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default: 60)")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4], help="trials per GPU (default: 1 2 4)")
    return parser.parse_args(argv)


def trial_worker(backbone: str, batch: int, threads: int, seconds: float, start: Barrier, out: mp.Queue) -> None:
    """One packed trial: warm up, wait for the others, then train epochs for `seconds`."""
    from bench.common import trial
    from trainable.training.fit import Device

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    training = trial({"model.backbone": backbone, "train.batch_size": batch, "data.n_folds": 2, "train.folds": [0],
                      "data.fp_per_epoch": 1000}, Device(torch.device("cuda")))
    run = training.runs[0]
    training.train_fold(run)  # warm-up: cuDNN autotuning, allocator
    start.wait()
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        samples += training.train_fold(run).samples  # a pass of its own each
    torch.cuda.synchronize()
    out.put(samples / (time.perf_counter() - started))


def utilisation(stop: threading.Event, readings: list[float]) -> None:
    """Sample the GPU's utilisation (%) from nvidia-smi twice a second until `stop`."""
    while not stop.wait(0.5):
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                   "--id=0"], capture_output=True, text=True, timeout=5).stdout
            readings.append(float(text.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return


def measure(args: argparse.Namespace, pack: int) -> tuple[list[float], float]:
    """Samples/s of each of `pack` trials running at once, and the median GPU utilisation."""
    context = mp.get_context("spawn")  # CUDA cannot be used in forked processes
    start, out = context.Barrier(pack + 1), context.Queue()
    threads = max(1, cores() // pack)
    workers = [context.Process(target=trial_worker, args=(args.backbone, args.batch_size, threads, args.seconds,
                                                          start, out)) for _ in range(pack)]
    for worker in workers:
        worker.start()
    start.wait()
    stop = threading.Event()
    readings: list[float] = []
    sampler = threading.Thread(target=utilisation, args=(stop, readings))
    sampler.start()
    rates = [out.get() for _ in workers]
    stop.set()
    sampler.join()
    for worker in workers:
        worker.join()
    return rates, statistics.median(readings) if readings else float("nan")


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
        total = sum(rates)
        single = single or total
        print(f"{pack} trial{'s' if pack > 1 else ''} per GPU: {total:.0f} samples/s in all"
              f" ({statistics.mean(rates):.0f} per trial; {total / single:.2f} x {args.packs[0]} per GPU),"
              f" GPU busy {busy:.0f}%", flush=True)


if __name__ == "__main__":
    main()
