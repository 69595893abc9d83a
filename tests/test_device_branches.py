"""The CUDA paths of a trial, run on the CPU through the trainable's own code: autocast in
bfloat16 with channels_last, and float16 autocast with its GradScaler, whose state goes into a
mid-epoch checkpoint and comes back (Device.force_amp, Device.force_channels_last). What needs
CUDA itself (pinned memory, the CUDA RNG, cuDNN) is listed in docs/trainable.md, "CUDA-only lines".
"""

from __future__ import annotations

import math

import pytest
import torch

from trainable.config import TrialConfig, from_dict
from trainable.dotted import merge
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining
from trainable.training.state import EpochProgress
from trainable.tune import assigned_device


def training_of(tiny_trial: dict, device: Device, **overrides) -> KFoldTraining:
    # One fold of one epoch, on one thread: under a second (not marked slow), and repeatable.
    torch.set_num_threads(1)
    config = merge(tiny_trial, {"train.folds": [0], "train.epochs": 1, "train.batch_size": 8, **overrides})
    return KFoldTraining(from_dict(TrialConfig, config), device)


def test_bfloat16_autocast_and_channels_last_train_and_predict_on_the_cpu(tiny_trial):
    device = Device(torch.device("cpu"), force_amp=torch.bfloat16, force_channels_last=True)
    training = training_of(tiny_trial, device)
    run = training.runs[0]
    convs = [m for m in run.model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    assert not run.scaler.is_enabled()  # bfloat16 needs no loss scaling
    inputs: list[tuple[bool, bool]] = []  # per forward: (training, the model's input in NHWC)
    outputs: list[tuple[bool, torch.dtype]] = []  # per forward: (the backbone's map in NHWC, its dtype)
    run.model.register_forward_pre_hook(lambda model, args: inputs.append(
        (model.training, args[0].is_contiguous(memory_format=torch.channels_last))))
    run.model.backbone.register_forward_hook(lambda module, args, out: outputs.append(
        (out.is_contiguous(memory_format=torch.channels_last), out.dtype)))
    metrics = training.run_epoch()
    assert set(inputs) == {(True, True), (False, True)}  # training and evaluation
    assert set(outputs) == {(True, torch.bfloat16)}
    assert 0 < metrics["cv_lwlrap"] <= 1
    assert all(math.isfinite(metrics[f"loss/{term}"]) for term in ("total", "att", "max", "pseudo", "frame"))


def test_float16_grad_scaler_state_survives_a_mid_epoch_checkpoint(tiny_trial, tmp_path):
    device = Device(torch.device("cpu"), force_amp=torch.float16)
    # float16 autocast on the CPU is about 8x slower than float32 (torch 2.14), and 30x in
    # evaluation: 10 crops in 3 batches, and the training pass only (train_fold, which run_epoch
    # calls), to keep it to seconds.
    overrides = {"data.fp_per_epoch": 0, "data.crop_offsets": [64], "train.batch_size": 4}
    straight = training_of(tiny_trial, device, **overrides)
    assert straight.runs[0].scaler.is_enabled()
    saved: list[dict] = []

    def checkpoint_at_second_batch() -> None:
        if straight.progress is not None and straight.progress.passed.batches == 2 and not saved:
            straight.save(tmp_path)
            saved.append(straight.runs[0].scaler.state_dict())

    straight.at_boundary = checkpoint_at_second_batch
    straight.progress = EpochProgress(lr=straight.runs[0].optimizer.param_groups[0]["lr"])
    want = straight.train_fold(straight.runs[0], straight.progress)
    assert straight.progress.passed.batches == 3
    # Two steps changed the scaler: its growth tracker counts finite steps, an overflow halves the scale.
    assert saved and saved[0] != torch.amp.GradScaler("cpu").state_dict()

    resumed = training_of(tiny_trial, device, **overrides)
    resumed.load(tmp_path)
    assert resumed.progress is not None and resumed.progress.passed.batches == 2
    assert resumed.runs[0].scaler.state_dict() == saved[0]  # loaded, not a fresh scaler
    got = resumed.train_fold(resumed.runs[0], resumed.progress)
    assert (got.samples, got.losses) == (want.samples, want.losses)
    assert math.isfinite(got.losses["total"])
    assert resumed.runs[0].scaler.state_dict() == straight.runs[0].scaler.state_dict()
    for a, b in zip(straight.runs[0].model.state_dict().values(), resumed.runs[0].model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_without_loss_scaling_resumes_under_float16(tiny_trial, tmp_path):
    # A trial checkpointed on a CPU (or a bfloat16 GPU) and retried on a float16 GPU: its saved
    # scaler state is empty, and the float16 scaler starts from its own defaults.
    cpu = training_of(tiny_trial, Device(torch.device("cpu")))
    assert cpu.runs[0].state_dict()["scaler"] == {}
    cpu.save(tmp_path)
    float16 = training_of(tiny_trial, Device(torch.device("cpu"), force_amp=torch.float16))
    float16.load(tmp_path)
    assert float16.runs[0].scaler.is_enabled()
    assert float16.runs[0].scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()


@pytest.mark.ray
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the GPU check covers the GPU branch")
def test_a_trial_given_a_gpu_on_a_node_without_cuda_fails_at_once():
    import ray

    # A fake GPU: Ray assigns it, torch finds no CUDA (a node without the driver or torch's CUDA build).
    # (Every Ray test trains its trials on the Device the CPU branch gives.)
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, configure_logging=False)
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match="Ray assigned this trial a GPU but CUDA is not"):
            ray.get(ray.remote(num_cpus=1, num_gpus=0.5)(assigned_device).remote())
    finally:
        ray.shutdown()


def test_a_gpu_that_only_emulates_bfloat16_trains_in_float16_with_loss_scaling(monkeypatch):
    """A T4 (compute capability 7.5) has no bfloat16 units; torch's is_bf16_supported() says yes
    for it unless asked about native support, and the trial took the slow emulated path."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    t4 = Device(torch.device("cuda"))
    assert t4.amp_dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, H100
    assert Device(torch.device("cuda")).amp_dtype == torch.bfloat16
