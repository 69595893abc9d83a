"""One training epoch and whole-clip prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainable.config import AugmentConfig, LossConfig, ModelConfig, TrainConfig
from trainable.data.placement import Placement
from trainable.data.targets import Targets
from trainable.data.windows import collate_windows
from trainable.model.augment import draw_mixup, unit_scale
from trainable.model.inputs import InputPipeline
from trainable.model.losses import SEDLoss
from trainable.model.sed import CLIP_ATT, CLIP_MAX, SEGMENT, SEDModel
from trainable.training.fit import LOSS_KEYS, Device, predict_clips, train_epoch
from trainable.training.optim import cosine

CPU = Device(torch.device("cpu"))
# The fixed recipe's input: each crop min-max scaled, 1 channel (no clip statistics needed).
CROP_UNIT = ModelConfig(pretrained=False, input="crop_unit", backbone="mobilenetv2_100")


def placements(n: int, frames: int) -> Placement:
    """Placements of n crops at the start of clips of `frames` frames (statistics unused)."""
    return Placement(torch.zeros(n, 4, dtype=torch.float64), torch.zeros(n, dtype=torch.int64),
                     torch.full((n,), frames, dtype=torch.int64))


class WindowIndexModel(nn.Module):
    """Segment logits that reveal which window and time step they came from:
    class 0 peaks at window index k (at one time step), class 1 is -k everywhere."""

    def forward(self, x: torch.Tensor, mix=None) -> dict[str, torch.Tensor]:
        k = torch.arange(len(x), dtype=torch.float32)  # position of the window in the batch
        segment = torch.full((len(x), 2, 4), -50.0)  # (W, C, T')
        segment[:, 0, 2] = k
        segment[:, 1, :] = -k[:, None]
        # Clip logits: class 0 is k (attention) and 2k (max), class 1 is -k for both.
        clip_att, clip_max = torch.stack([k, -k], dim=1), torch.stack([2 * k, -k], dim=1)
        return {SEGMENT: segment, CLIP_ATT: clip_att, CLIP_MAX: clip_max}


def test_prediction_is_max_over_each_recordings_windows_of_both_window_scores():
    counts = [3, 1, 2]  # windows per recording; one forward pass holds all three recordings
    items = [(torch.rand(n, 1, 8, 16), torch.zeros(2), placements(n, 16)) for n in counts]
    loader = DataLoader(items, batch_size=3, collate_fn=collate_windows)
    clips = predict_clips(WindowIndexModel(), loader, InputPipeline(CROP_UNIT, AugmentConfig()), CPU)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    # Windows 0-2 are recording 0, window 3 recording 1, windows 4-5 recording 2.
    last, first = np.array([2.0, 3.0, 5.0]), np.array([0.0, 3.0, 4.0])
    # segment_max: the max over time of the segment probability, then over the windows.
    np.testing.assert_allclose(clips["segment_max"], sigmoid(np.stack([last, -first], axis=1)), rtol=1e-6)
    # att_max_mean (the reference's): (sigmoid(att) + sigmoid(max)) / 2, then the max over the windows.
    expected = np.stack([(sigmoid(last) + sigmoid(2 * last)) / 2, sigmoid(-first)], axis=1)
    np.testing.assert_allclose(clips["att_max_mean"], expected, rtol=1e-6)


@pytest.mark.parametrize("mixup_on", ["features", "input"])
def test_train_epoch_steps_the_model_and_reports_every_loss_term(mixup_on):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    frame = (torch.rand(10, 3, 64, generator=g) > 0.8).float()  # (N, C, T)
    data = CropData(torch.randn(10, 1, 32, 64, generator=g), frame)
    model = SEDModel(ModelConfig(backbone="mobilenetv2_100", pretrained=False), n_species=3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    augment = AugmentConfig(mixup_alpha=1.0, mixup_on=mixup_on)
    loader = DataLoader(data, batch_size=4)
    scheduler = cosine(optimizer, TrainConfig(), batches=len(loader))
    stats = train_epoch(model, loader, SEDLoss(LossConfig()), optimizer, torch.amp.GradScaler("cpu", enabled=False),
                        InputPipeline(model.config, augment), augment, np.random.default_rng(0), CPU, scheduler)
    assert stats.samples == 10 and stats.seconds > 0
    assert set(stats.losses) == set(LOSS_KEYS) and all(np.isfinite(v) and v > 0 for v in stats.losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scheduler.last_epoch == len(loader) == 3  # the reference's cosine steps after every batch


class CropData(Dataset):
    """Crops and their stage-1 targets, as TrainCrops gives them."""

    def __init__(self, x, frame):
        self.x, self.frame = x, frame

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        where = placements(1, self.x.shape[-1])
        # A clip of exactly this crop: its statistics, for the reference's clip image.
        x = self.x[i].double()
        mean, std = x.mean(), (x - x.mean()).std(unbiased=False)
        z = (x - mean) / (std + 1e-6)
        stats = torch.stack([mean, std, z.min(), z.max()])
        return self.x[i], Targets.from_frames(self.frame[i]), Placement(stats, where.start[0], where.frames[0])


class Recorder(nn.Module):
    """A model and a loss that keep what they were given, to check how mixup is routed."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x, mix=None):
        self.seen.update(x=x, features=mix(x) if mix is not None else x)
        return {"x": x * self.weight}

    def loss(self, logits, targets):
        self.seen.update(clip=targets.clip, frame=targets.frame, frame_weight=targets.frame_weight)
        total = logits["x"].sum()
        return {key: total for key in LOSS_KEYS}


@pytest.mark.parametrize("mixup_on", ["features", "input"])
def test_one_mixup_draw_mixes_the_chosen_place_and_both_targets(mixup_on):
    g = torch.Generator().manual_seed(0)
    frame = (torch.rand(4, 3, 16, generator=g) > 0.5).float()
    x = torch.rand(4, 1, 8, 16, generator=g)
    data = CropData(x, frame)
    recorder = Recorder()
    config = AugmentConfig(mixup_alpha=1.0, mixup_on=mixup_on, policy="jitter", time_masks=0, freq_masks=0, gamma=0,
                           brightness=0)
    train_epoch(recorder, DataLoader(data, batch_size=4), recorder.loss, torch.optim.SGD(recorder.parameters(), lr=0.1),
                torch.amp.GradScaler("cpu", enabled=False), InputPipeline(CROP_UNIT, config), config,
                np.random.default_rng(5), CPU)
    # Replay the draws: train_epoch's augmentation draws nothing when jitter and masks are off.
    replay = np.random.default_rng(5)
    replay.uniform(size=4), replay.uniform(size=4)  # jitter always draws gamma and brightness
    mix = draw_mixup(4, 1.0, replay)
    scaled = unit_scale(x)
    torch.testing.assert_close(recorder.seen["clip"], mix(frame.amax(-1)))
    torch.testing.assert_close(recorder.seen["frame_weight"], mix(frame))
    torch.testing.assert_close(recorder.seen["frame"], (mix(frame) > 0).float())  # the positive frames' label
    if mixup_on == "input":
        torch.testing.assert_close(recorder.seen["x"], mix(scaled))
        torch.testing.assert_close(recorder.seen["features"], recorder.seen["x"])  # not twice
    else:
        torch.testing.assert_close(recorder.seen["x"], scaled)
        torch.testing.assert_close(recorder.seen["features"], mix(scaled))
