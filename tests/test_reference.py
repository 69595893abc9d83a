"""The project against independent restatements of the reference (RFCx 5th place, trtd56/RFCX v1_7).

Each test restates one statement of the reference notebook in numpy or plain torch inside the
test (never calling the project's function for the expected value) and compares the project's
result with it on random inputs. The numbered sections follow the reference facts:

 1 mono_to_color + ToTensor + crop + Normalize (the evaluation input)
 2 albumentations RandomBrightnessContrast on the uint8 image
 3 RandomApply([adjust_gamma(2), TimeMask(40), FreqMask(30)]) over the whole clip, then the crop
 4 the four loss terms and their weighted total, unmixed and with mixup
 5 the SED head on the backbone's feature map
 6 the per-batch CosineAnnealingLR, and batches per epoch
 7 event frames, the crop rule and frame labels
 8 the validation windows
 9 the batch-mean LRAP, the window score and the clip score
10 the MultilabelStratifiedKFold split of the tp recordings
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from trainable.config import AugmentConfig, DataConfig, LossConfig, ModelConfig, TrainConfig, resolve
from trainable.data.annotations import Annotations
from trainable.data.cache import clip_statistics
from trainable.data.crops import crop_start, feasible_offset
from trainable.data.folds import folds_of, species_matrix
from trainable.data.layouts.rfcx import ANNOTATION_COLUMNS, to_events
from trainable.data.mixup import Mixup
from trainable.data.placement import Placement
from trainable.data.targets import Events, Targets, event_frames, frame_targets
from trainable.data.windows import window_starts
from trainable.metrics import reference_lrap
from trainable.model.inputs import InputPipeline, brightness_contrast, reference_group
from trainable.model.losses import SEDLoss, balanced_pos_weight
from trainable.model.sed import ATTENTION, ATTENTION_WEIGHTS, CLIP_ATT, CLIP_MAX, FRAME, SEGMENT, SEDModel
from trainable.training.fit import WINDOW_SCORES, clips_of_windows
from trainable.training.optim import batches_per_epoch, cosine

# The reference's constants, written out here (not read from the project).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EPS = 1e-6  # mono_to_color's eps
REF_FRAMES = 3751  # frames of a 60 s clip
REF_CROP = 512
REF_OFFSETS = (32, 64, 128, 256)
REF_MAX_SEQ = 3750  # 3751 - 1
FPS = 62.5  # 32000 / 512


# --------------------------------------------------------------------------------------------
# Shared restatements
# --------------------------------------------------------------------------------------------

def ref_mono_to_color(clip: np.ndarray) -> np.ndarray:
    """Reference mono_to_color of a whole clip (M, T) -> (3, M, T) uint8, restated in float64."""
    x = np.asarray(clip, dtype=np.float64)
    x3 = np.stack([x, x, x])
    mean = x3.mean()
    xc = x3 - mean
    std = xc.std()
    z = xc / (std + EPS)
    zmin, zmax = z.min(), z.max()
    if zmax - zmin > EPS:
        v = np.floor(255 * (z - zmin) / (zmax - zmin)).astype(np.uint8)
    else:
        v = np.zeros_like(z, dtype=np.uint8)
    return v


def ref_to_tensor(v: np.ndarray) -> np.ndarray:
    """torchvision ToTensor of uint8 values: float32 / 255."""
    return v.astype(np.float32) / np.float32(255)


def ref_normalize(v: np.ndarray) -> np.ndarray:
    """torchvision Normalize(mean, std) of a (3, M, W) float32 image."""
    return (v - IMAGENET_MEAN.reshape(3, 1, 1)) / IMAGENET_STD.reshape(3, 1, 1)


def random_clip(rng: np.random.Generator, mels: int, frames: int) -> np.ndarray:
    """A log-mel-like clip as the cache holds it: float16 dB values."""
    return (rng.normal(size=(mels, frames)) * 20 - 40).astype(np.float16)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def ref_bce_with_logits(z: np.ndarray, y: np.ndarray, pos_weight: np.ndarray | float = 1.0) -> np.ndarray:
    """Elementwise BCEWithLogits: -(pw * y * log(sigmoid z) + (1 - y) * log(1 - sigmoid z))."""
    p = sigmoid(np.asarray(z, dtype=np.float64))
    return -(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))


# --------------------------------------------------------------------------------------------
# 0. The default (v1_7) config carries the reference's constants restated in this file
# --------------------------------------------------------------------------------------------

def test_resolved_default_recipe_has_the_reference_constants():
    """resolve() of a bare config is v1_7: the numbers the restatements below rely on."""
    config = resolve({"data_dir": "/nowhere"})
    assert config.recipe == "v1_7"
    loss, augment, data, train = config.loss, config.augment, config.data, config.train
    assert (loss.w_att, loss.w_max, loss.w_pseudo, loss.w_frame) == (1.0, 0.5, 1.0, 0.5)
    assert loss.pseudo_threshold == 0.7 and loss.class_balanced
    assert (augment.brightness_contrast_p, augment.brightness_limit, augment.contrast_limit) == (0.5, 0.2, 0.2)
    assert (augment.group_p, augment.group_gamma) == (0.5, 2.0)
    assert (augment.time_masks, augment.time_mask_frames, augment.freq_masks, augment.freq_mask_bins) == (1, 40, 1, 30)
    assert data.crop_frames == REF_CROP and tuple(data.crop_offsets) == REF_OFFSETS
    assert data.valid_overlap == 51 and data.n_folds == 5 and data.fold_seed == 0
    assert (train.lr, train.t_max, train.min_lr, train.batch_size) == (1e-3, 10, 0.0, 64)
    assert config.model.input == "clip_image" and config.model.orientation == "time_mel"
    assert not config.model.head_bias and config.model.upsample == "repeat"
    # The dataclass defaults are the same values.
    assert config.loss == LossConfig() and config.augment == AugmentConfig()
    assert config.data == DataConfig() and config.train == TrainConfig()


# --------------------------------------------------------------------------------------------
# 1. mono_to_color, ToTensor, crop, Normalize (evaluation input)
# --------------------------------------------------------------------------------------------

def _crops_and_placement(clips: list[np.ndarray], starts: list[int], width: int) -> tuple[torch.Tensor, Placement]:
    x = np.stack([c[:, s:s + width].astype(np.float32) for c, s in zip(clips, starts)])[:, None]  # (B, 1, M, W)
    where = Placement(torch.from_numpy(np.stack([clip_statistics(c) for c in clips])),
                      torch.tensor(starts, dtype=torch.int64),
                      torch.tensor([c.shape[1] for c in clips], dtype=torch.int64))
    return torch.from_numpy(x), where


def test_evaluation_input_is_mono_to_color_of_the_whole_clip_then_cropped_and_normalised():
    """Ref 1: V = floor(255 (Z - Zmin) / (Zmax - Zmin)) of the whole clip, /255, crop, Normalize."""
    rng = np.random.default_rng(1)
    mels, width = 32, 64
    frames = [400, 300, 251, 64, 1000, 333]
    clips = [random_clip(rng, mels, t) for t in frames]
    starts = [int(rng.integers(0, t - width + 1)) for t in frames]
    starts[0], starts[1] = 0, 300 - width  # the clip's first and last frames
    x, where = _crops_and_placement(clips, starts, width)

    got = InputPipeline(ModelConfig(pretrained=False), AugmentConfig()).evaluation(x, where).numpy()

    assert got.shape == (len(clips), 3, mels, width) and got.dtype == np.float32
    for b, (clip, start) in enumerate(zip(clips, starts)):
        expected = ref_normalize(ref_to_tensor(ref_mono_to_color(clip))[:, :, start:start + width])
        np.testing.assert_allclose(got[b], expected, rtol=0, atol=1e-6)
    # Non-trivial: scaled by the whole clip, a short crop does not span [0, 255] on its own.
    values = np.round((got[4, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255)
    assert values.min() > 0 or values.max() < 255


def test_evaluation_input_of_a_constant_clip_is_the_normalised_zeros():
    """Ref 1: a clip whose standardised range is <= 1e-6 becomes zeros, then Normalize."""
    mels, width = 16, 32
    clips = [np.full((mels, 100), -40.0, dtype=np.float16), np.zeros((mels, 50), dtype=np.float16)]
    x, where = _crops_and_placement(clips, [10, 0], width)
    got = InputPipeline(ModelConfig(pretrained=False), AugmentConfig()).evaluation(x, where).numpy()
    for b, clip in enumerate(clips):
        image = ref_mono_to_color(clip)
        assert not image.any()
        expected = ref_normalize(ref_to_tensor(image)[:, :, :width])
        np.testing.assert_allclose(got[b], expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[b, :, 0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 2. RandomBrightnessContrast on uint8 (brightness_by_max), as albumentations' lookup table
# --------------------------------------------------------------------------------------------

def _ref_brightness_contrast(u: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """u (B, C, M, W) uint8 -> uint8; draws apply, alpha, beta per sample in that order."""
    batch = u.shape[0]
    apply = rng.random(batch) < config.brightness_contrast_p
    alpha = 1.0 + rng.uniform(-config.contrast_limit, config.contrast_limit, size=batch)
    beta = rng.uniform(-config.brightness_limit, config.brightness_limit, size=batch)
    out = u.copy()
    for b in range(batch):
        if not apply[b]:
            continue
        lut = np.arange(256).astype(np.float32) * np.float32(alpha[b]) + np.float32(beta[b] * 255)
        lut = np.clip(lut, 0, 255).astype(np.uint8)
        out[b] = lut[u[b]]
    return out


@pytest.mark.parametrize("p", [0.5, 1.0, 0.0])
def test_brightness_contrast_is_albumentations_lut_on_uint8(p):
    """Ref 2: lut = arange(256) * alpha + beta * 255 in float32, clipped, truncated to uint8."""
    config = AugmentConfig(brightness_contrast_p=p)
    seed = 123
    data = np.random.default_rng(0)
    u = data.integers(0, 256, size=(12, 1, 16, 40), dtype=np.uint8)
    u[0, 0, 0, :2] = (0, 255)  # both ends of the range
    v = torch.from_numpy(u.astype(np.float32) / np.float32(255))

    got = brightness_contrast(v, config, np.random.default_rng(seed)).numpy()
    expected = ref_to_tensor(_ref_brightness_contrast(u, config, np.random.default_rng(seed)))

    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    changed = [(got[b] != v[b].numpy()).any() for b in range(len(u))]
    if p == 1.0:
        assert all(changed)
    elif p == 0.0:
        assert not any(changed)
        assert np.array_equal(got, v.numpy())
    else:
        assert any(changed) and not all(changed)


# --------------------------------------------------------------------------------------------
# 3. RandomApply([adjust_gamma(2), TimeMask(40), FreqMask(30)]) on the whole clip, then the crop
# --------------------------------------------------------------------------------------------

def _ref_mask_draws(batch: int, size: np.ndarray | int, widest: int, rng: np.random.Generator):
    """TimeMask / FreqMask: t = randrange(0, widest); t0 = randrange(0, size - t); end =
    randrange(t0, t0 + t) (no mask when t == 0); drawn with numpy in the project's order."""
    size = np.broadcast_to(np.asarray(size, dtype=np.int64), (batch,))
    width = rng.integers(0, widest, size=batch)
    start = rng.integers(0, np.maximum(size - width, 1))
    end = rng.integers(start, start + np.maximum(width, 1))
    return [(int(w), int(s), int(e)) for w, s, e in zip(width, start, end)]


def _ref_group_whole_clip(images: list[np.ndarray], config: AugmentConfig, rng: np.random.Generator):
    """The group on each whole-clip image (C, M, T) float32, before the crop; returns the
    augmented images and which samples the group applied to."""
    batch = len(images)
    apply = rng.random(batch) < config.group_p
    frames = np.array([im.shape[-1] for im in images])
    mels = images[0].shape[-2]
    time = [_ref_mask_draws(batch, frames, config.time_mask_frames, rng) for _ in range(config.time_masks)]
    freq = [_ref_mask_draws(batch, mels, config.freq_mask_bins, rng) for _ in range(config.freq_masks)]
    out = []
    for b, image in enumerate(images):
        if not apply[b]:
            out.append(image)
            continue
        image = np.clip(image ** np.float32(config.group_gamma), 0, 1)  # adjust_gamma(2, gain=1)
        image = image.copy()
        for draws in time:
            t, t0, end = draws[b]
            if t != 0:
                image[..., :, t0:end] = 0
        for draws in freq:
            f, f0, end = draws[b]
            if f != 0:
                image[..., f0:end, :] = 0
        out.append(image)
    return out, apply


@pytest.mark.parametrize("group_p", [0.5, 1.0, 0.0])
def test_gamma_and_masks_drawn_over_the_whole_clip_then_cropped(group_p):
    """Ref 3: gamma 2 then the time and frequency masks in whole-clip coordinates, then the crop."""
    config = AugmentConfig(group_p=group_p)
    data = np.random.default_rng(5)
    mels, width = 128, 512
    frames = [3751, 700, 560, 3751, 600, 512, 900, 650] * 3
    batch = len(frames)
    images = [(data.integers(0, 256, size=(1, mels, t)).astype(np.float32) / np.float32(255)) for t in frames]
    starts = [int(data.integers(0, t - width + 1)) for t in frames]
    v = torch.from_numpy(np.stack([im[:, :, s:s + width] for im, s in zip(images, starts)]))
    where = Placement(torch.zeros(batch, 4, dtype=torch.float64), torch.tensor(starts), torch.tensor(frames))

    seed = 77
    got = reference_group(v, where, config, np.random.default_rng(seed)).numpy()
    augmented, apply = _ref_group_whole_clip(images, config, np.random.default_rng(seed))
    expected = np.stack([im[:, :, s:s + width] for im, s in zip(augmented, starts)])

    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    if group_p == 0.0:
        assert np.array_equal(got, v.numpy())
        return
    # Non-trivial: masks met the crops along both axes.
    zeroed = (expected == 0) & (v.numpy() != 0)
    assert zeroed.any()
    assert any(zeroed[b, 0].all(axis=0).any() for b in range(batch))  # a whole time column: a time mask
    assert any(zeroed[b, 0].all(axis=1).any() for b in range(batch))  # a whole mel row: a freq mask
    if group_p == 1.0:
        assert apply.all()


def test_training_input_is_the_reference_augmentation_of_the_whole_clip_image():
    """Ref 1-3 together: mono_to_color of the whole clip, brightness/contrast on uint8, ToTensor,
    the gamma/mask group over the whole clip, crop, Normalize; draws in that order."""
    config = AugmentConfig(brightness_contrast_p=0.7, group_p=0.7)
    data = np.random.default_rng(9)
    mels, width = 128, 128
    frames = [700, 400, 300, 1000, 128, 256, 500, 450]
    clips = [random_clip(data, mels, t) for t in frames]
    starts = [int(data.integers(0, t - width + 1)) for t in frames]
    x, where = _crops_and_placement(clips, starts, width)

    seed = 2024
    got = InputPipeline(ModelConfig(pretrained=False), config).training(x, where, np.random.default_rng(seed)).numpy()

    rng = np.random.default_rng(seed)
    u = [ref_mono_to_color(c) for c in clips]  # (3, M, T) uint8 each
    # brightness/contrast draws come first, one per sample of the batch
    shifted = []
    apply = rng.random(len(clips)) < config.brightness_contrast_p
    alpha = 1.0 + rng.uniform(-config.contrast_limit, config.contrast_limit, size=len(clips))
    beta = rng.uniform(-config.brightness_limit, config.brightness_limit, size=len(clips))
    for b, image in enumerate(u):
        if apply[b]:
            lut = np.arange(256).astype(np.float32) * np.float32(alpha[b]) + np.float32(beta[b] * 255)
            image = np.clip(lut, 0, 255).astype(np.uint8)[image]
        shifted.append(ref_to_tensor(image))
    grouped, _ = _ref_group_whole_clip(shifted, config, rng)
    expected = np.stack([ref_normalize(im[:, :, s:s + width]) for im, s in zip(grouped, starts)])

    assert got.shape == expected.shape == (len(clips), 3, mels, width)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# 4. The loss terms
# --------------------------------------------------------------------------------------------

def _random_batch(seed: int, batch: int = 6, species: int = 5, segments: int = 8, frames: int = 96):
    rng = np.random.default_rng(seed)
    frame_y = np.zeros((batch, species, frames), dtype=np.float32)
    for b in range(batch):
        for _ in range(rng.integers(1, 4)):  # 1-3 events, some may overlap or repeat a species
            s = rng.integers(species)
            lo = rng.integers(0, frames - 1)
            frame_y[b, s, lo:lo + rng.integers(1, 40)] = 1
    attention = rng.normal(size=(batch, species, segments)) * 2
    logits = {
        CLIP_ATT: rng.normal(size=(batch, species)) * 2,
        CLIP_MAX: rng.normal(size=(batch, species)) * 2,
        SEGMENT: rng.normal(size=(batch, species, segments)) * 2,
        FRAME: rng.normal(size=(batch, species, frames)) * 2,
        ATTENTION: attention,
    }
    logits = {k: torch.tensor(v, dtype=torch.float32) for k, v in logits.items()}
    logits[ATTENTION_WEIGHTS] = torch.softmax(logits[ATTENTION], dim=-1)
    counts = rng.integers(3, 40, size=species)
    return logits, frame_y, counts


def _ref_loss_terms(logits: dict, clip_y: np.ndarray, seq_y: np.ndarray, pw: np.ndarray) -> dict[str, float]:
    """The reference's four terms, in float64, from already-mixed clip and frame labels."""
    z = {k: v.numpy().astype(np.float64) for k, v in logits.items()}
    l1 = ref_bce_with_logits(z[CLIP_ATT], clip_y, pw[None, :]).mean()
    l2 = ref_bce_with_logits(z[CLIP_MAX], clip_y, pw[None, :]).mean()
    # The reference's softmax, restated from the attention logits.
    e = np.exp(z[ATTENTION] - z[ATTENTION].max(axis=-1, keepdims=True))
    weights = e / e.sum(axis=-1, keepdims=True)
    pseudo = (sigmoid(z[SEGMENT]) >= 0.7).astype(np.float64)
    l3 = (pw[None, :] * ref_bce_with_logits(weights, pseudo).mean(axis=-1)).mean()
    l4 = (pw[None, :] * (seq_y * ref_bce_with_logits(z[FRAME], seq_y)).mean(axis=-1)).mean()
    return {"att": l1, "max": l2, "pseudo": l3, "frame": l4, "total": l1 + 0.5 * l2 + l3 + 0.5 * l4}


def _ref_pos_weight(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts.max() / counts


def test_balanced_pos_weight_is_max_count_over_count():
    counts = np.random.default_rng(3).integers(1, 100, size=24)
    np.testing.assert_allclose(balanced_pos_weight(counts).numpy(), _ref_pos_weight(counts), rtol=1e-6)


@pytest.mark.parametrize("mixup", [None, 0.3, 0.85])
def test_loss_terms_and_total_match_the_reference(mixup):
    """Ref 4: L1, L2 (pos_weight BCE), L3 (class-weighted BCE of the softmax weights vs segment
    pseudo-labels >= 0.7), L4 (class-weighted mean_t of seq_y * BCE), total = L1 + .5 L2 + L3 + .5 L4;
    the labels mixed plainly b * y + (1 - b) * y[perm]."""
    logits, frame_y, counts = _random_batch(seed=11 if mixup is None else int(mixup * 100))
    pw = _ref_pos_weight(counts)
    targets = Targets.from_frames(torch.from_numpy(frame_y))
    clip_y = (frame_y.sum(axis=-1) != 0).astype(np.float64)
    seq_y = frame_y.astype(np.float64)
    if mixup is not None:
        perm = np.random.default_rng(4).permutation(len(frame_y))
        assert (perm != np.arange(len(perm))).any()
        targets = targets.mixed(Mixup(mixup, torch.from_numpy(perm)))
        clip_y = mixup * clip_y + (1 - mixup) * clip_y[perm]
        seq_y = mixup * seq_y + (1 - mixup) * seq_y[perm]

    got = SEDLoss(LossConfig(), torch.tensor(pw, dtype=torch.float32))(logits, targets)
    expected = _ref_loss_terms(logits, clip_y, seq_y, pw)

    for key in ("att", "max", "pseudo", "frame", "total"):
        assert float(got[key]) == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key
    assert expected["pseudo"] > 0 and expected["frame"] > 0


@pytest.mark.parametrize("term", ["att", "max", "pseudo", "frame"])
def test_each_loss_term_alone_is_its_reference_term(term):
    """Ref 4, one term at a time: with only that weight on, the total is that reference term."""
    logits, frame_y, counts = _random_batch(seed=21, batch=8, species=7)
    pw = _ref_pos_weight(counts)
    perm = np.random.default_rng(8).permutation(len(frame_y))
    lam = 0.3
    targets = Targets.from_frames(torch.from_numpy(frame_y)).mixed(Mixup(lam, torch.from_numpy(perm)))
    clip_y = (frame_y.sum(axis=-1) != 0).astype(np.float64)
    seq_y = frame_y.astype(np.float64)
    expected = _ref_loss_terms(logits, lam * clip_y + (1 - lam) * clip_y[perm],
                               lam * seq_y + (1 - lam) * seq_y[perm], pw)

    weights = {f"w_{name}": (1.0 if name == term else 0.0) for name in ("att", "max", "pseudo", "frame")}
    got = SEDLoss(LossConfig(**weights), torch.tensor(pw, dtype=torch.float32))(logits, targets)

    assert float(got["total"]) == pytest.approx(expected[term], rel=1e-6, abs=1e-6)
    assert float(got[term]) == pytest.approx(expected[term], rel=1e-6, abs=1e-6)


# --------------------------------------------------------------------------------------------
# 5. The SED head
# --------------------------------------------------------------------------------------------

def test_sed_head_matches_the_reference_formula():
    """Ref 5: h = relu(backbone(x^T)).mean(3); xa = fc_a(h); xb = softmax(fc_b(h), 2);
    clip_att = sum_t xa xb; clip_max = max_t xa; segment = xa; frame = xa repeated 32 x."""
    torch.manual_seed(0)
    species = 5
    model = SEDModel(ModelConfig(backbone="resnet18", pretrained=False), species).eval()
    assert model.cla.bias is None and model.att.bias is None
    x = torch.randn(2, 3, 64, 256)
    with torch.no_grad():
        got = model(x)
        h = model.backbone(x.transpose(-1, -2))  # (B, 512, T', M')
    assert h.shape[:3] == (2, 512, 8)
    h = torch.relu(h).double().mean(dim=3)  # (B, F, T')
    wa = model.cla.weight.detach().double()[:, :, 0]  # (C, F)
    wb = model.att.weight.detach().double()[:, :, 0]
    xa = torch.einsum("cf,bft->bct", wa, h)
    att = torch.einsum("cf,bft->bct", wb, h)
    xb = torch.softmax(att, dim=2)
    expected = {
        CLIP_ATT: (xa * xb).sum(dim=2),
        CLIP_MAX: xa.max(dim=2).values,
        SEGMENT: xa,
        FRAME: xa.repeat_interleave(32, dim=2),
        ATTENTION: att,
        ATTENTION_WEIGHTS: xb,
    }
    assert expected[FRAME].shape[-1] == 256
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key].double().numpy(), value.numpy(), rtol=1e-6, atol=1e-6, err_msg=key)


# --------------------------------------------------------------------------------------------
# 6. The cosine schedule and batches per epoch
# --------------------------------------------------------------------------------------------

def test_cosine_is_per_batch_and_never_clamped():
    """Ref 6: CosineAnnealingLR(T_max = batches * 10, eta_min 0) stepped after every batch:
    lr(step) = 1e-3 (1 + cos(pi step / T_max)) / 2, for all 50 epochs."""
    batches, epochs = 7, 50
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = cosine(optimizer, TrainConfig(), batches)
    t_max = batches * 10
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(epochs * batches):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(1e-3 * (1 + math.cos(math.pi * step / t_max)) / 2, rel=1e-6, abs=1e-12), step
    for epoch in (10, 30, 50):
        assert lrs[epoch * batches] == pytest.approx(0.0, abs=1e-12)
    for epoch in (0, 20, 40):
        assert lrs[epoch * batches] == pytest.approx(1e-3, rel=1e-9)


def test_batches_per_epoch_drops_a_lone_last_sample():
    """Ref 6: ceil(items / batch), except that a last batch of one sample is dropped."""
    for batch in (1, 2, 3, 7, 64):
        for items in range(1, 300):
            expected = math.ceil(items / batch) - (1 if items % batch == 1 else 0)
            if batch == 1:
                expected = items  # items % 1 is never 1
            assert batches_per_epoch(items, batch) == expected, (items, batch)


# --------------------------------------------------------------------------------------------
# 7. Event frames, the crop rule, frame labels
# --------------------------------------------------------------------------------------------

def _random_events(rng: np.random.Generator, n: int, edges: bool = True) -> pd.DataFrame:
    t_min = rng.uniform(0, 59.5, size=n)
    t_max = np.minimum(t_min + rng.uniform(0.05, 8, size=n), 60.0)
    if edges:  # the clip's edges and a short call
        t_min[:6] = [0.0, 0.0, 0.2, 55.0, 59.0, 30.0]
        t_max[:6] = [0.5, 1.1, 0.3, 60.0, 60.0, 30.01]
    return pd.DataFrame({"start_s": t_min, "end_s": t_max, "species": rng.integers(0, 24, size=n)})


def _ref_hw(t: float) -> int:
    return int(REF_FRAMES * (t / 60))


def test_event_frames_are_the_reference_int_of_3751_t_over_60():
    rows = _random_events(np.random.default_rng(0), 500)
    start, end = event_frames(rows, FPS, "reference")
    assert start.tolist() == [_ref_hw(t) for t in rows.start_s]
    assert end.tolist() == [_ref_hw(t) for t in rows.end_s]


def test_crop_starts_are_ones_the_reference_could_produce():
    """Ref 7: m = (h + t) // 2; p among the offsets with m - p > 0 (none: start 0);
    crop [m - p, m - p + 512), or [3238, 3750) when it would end past 3750."""
    rng = np.random.default_rng(1)
    rows = _random_events(rng, 2000)
    offsets = np.asarray(REF_OFFSETS)
    seen_end_clamp = seen_none = 0
    for t_min, t_max in zip(rows.start_s, rows.end_s):
        h, t = _ref_hw(t_min), _ref_hw(t_max)
        m = (h + t) // 2
        feasible = [p for p in REF_OFFSETS if m - p > 0]
        possible = set()
        for p in feasible:
            possible.add(REF_MAX_SEQ - REF_CROP if m - p + REF_CROP > REF_MAX_SEQ else m - p)
        if not feasible:
            possible.add(0)  # h_pos = m: the crop starts at 0
            seen_none += 1
        offset = feasible_offset(m, offsets, rng)
        start = crop_start(m, offset, n_frames=REF_FRAMES, width=REF_CROP, rule="recording")
        assert start in possible, (t_min, t_max, m, offset, start, possible)
        assert 0 <= start and start + REF_CROP <= REF_MAX_SEQ
        seen_end_clamp += start == REF_MAX_SEQ - REF_CROP
    assert seen_end_clamp > 0 and seen_none > 0


def test_crop_end_clamp():
    """Ref 7: a crop m - p + 512 > 3750 becomes [3238, 3750); one ending exactly at 3750 stays."""
    for m, p in [(3700, 32), (3600, 256), (3751, 32), (3400, 128)]:
        assert m - p + REF_CROP > REF_MAX_SEQ
        assert crop_start(m, p, REF_FRAMES, REF_CROP, "recording") == 3238
    assert crop_start(3238 + 64, 64, REF_FRAMES, REF_CROP, "recording") == 3238  # ends at 3750 exactly
    assert crop_start(3239 + 64, 64, REF_FRAMES, REF_CROP, "recording") == 3238  # would end at 3751
    assert crop_start(3237 + 32, 32, REF_FRAMES, REF_CROP, "recording") == 3237
    assert crop_start(100, 100, REF_FRAMES, REF_CROP, "recording") == 0  # no feasible offset: p = m


@pytest.mark.parametrize("centre", [1, 20, 32, 33, 64, 65, 128, 129, 256, 257, 1000, 3700])
def test_feasible_offset_draws_exactly_the_feasible_offsets(centre):
    """Ref 7: p uniform among the offsets with m - p > 0; none: m itself (the crop starts at 0)."""
    offsets = np.asarray(REF_OFFSETS)
    feasible = {p for p in REF_OFFSETS if centre - p > 0}
    rng = np.random.default_rng(centre)
    draws = [feasible_offset(centre, offsets, rng) for _ in range(400)]
    if feasible:
        assert set(draws) == feasible
        counts = np.array([draws.count(p) for p in sorted(feasible)])
        assert counts.min() > 400 / len(feasible) / 2  # roughly uniform
    else:
        assert set(draws) == {centre}


def test_frame_labels_are_the_slice_of_the_whole_clip_label():
    """Ref 7: label[s, h:t] = 1 over the full (C, 3751) array, then label[:, start:start + 512]."""
    rng = np.random.default_rng(2)
    species = 24
    for _ in range(50):
        rows = _random_events(rng, int(rng.integers(1, 5)), edges=False)
        h, t = event_frames(rows, FPS, "reference")
        full = np.zeros((species, REF_FRAMES), dtype=np.float32)
        for s, lo, hi in zip(rows.species, h, t):
            full[s, lo:hi] = 1
        events = Events(rows.species.to_numpy(), h, t)
        for start in [0, 3238, int(rng.integers(0, 3239)), min(max(int(h[0]) - 100, 0), 3238), min(int(h[0]), 3238)]:
            got = frame_targets(events, start, REF_CROP, species)
            np.testing.assert_array_equal(got, full[:, start:start + REF_CROP])


# --------------------------------------------------------------------------------------------
# 8. Validation windows
# --------------------------------------------------------------------------------------------

def test_window_starts_are_the_reference_loop():
    """Ref 8: [0, 512], then h = previous t - 51, t = h + 512, 8 windows in all."""
    h, t = 0, 512
    starts = [h]
    for _ in range(7):
        h = t - 51
        t = h + 512
        starts.append(h)
    assert starts == [0, 461, 922, 1383, 1844, 2305, 2766, 3227]
    got = window_starts(REF_FRAMES, 512, 51, "reference")
    assert got.tolist() == starts


# --------------------------------------------------------------------------------------------
# 9. The batch-mean LRAP, the window and clip scores
# --------------------------------------------------------------------------------------------

def _ref_lrap_rows(truth: np.ndarray, scores: np.ndarray) -> float:
    rows = []
    for y, s in zip(truth, scores):
        order = np.argsort(-s)
        rank = np.empty(len(s), dtype=np.int64)
        rank[order] = np.arange(1, len(s) + 1)
        positive = np.flatnonzero(y > 0)
        precision = [(rank[positive] <= rank[c]).sum() / rank[c] for c in positive]
        rows.append(np.mean(precision))
    return float(np.mean(rows))


def test_reference_lrap_is_the_mean_over_batches_of_64():
    """Ref 9: instance LRAP of each batch of 64 recordings, averaged over batches (the last,
    smaller batch weighs as much as a full one)."""
    rng = np.random.default_rng(0)
    n, c = 150, 24
    truth = (rng.random((n, c)) < 0.08).astype(np.float32)
    truth[np.arange(n), rng.integers(0, c, size=n)] = 1  # every row has a positive
    scores = rng.random((n, c))
    assert len(np.unique(scores)) == n * c
    expected = np.mean([_ref_lrap_rows(truth[i:i + 64], scores[i:i + 64]) for i in (0, 64, 128)])
    assert reference_lrap(truth, scores) == pytest.approx(expected, abs=1e-12)
    # The batching matters: the mean over all rows differs.
    assert abs(_ref_lrap_rows(truth, scores) - expected) > 1e-6


def test_window_score_is_the_mean_of_att_and_max_probabilities_and_clips_take_the_max():
    """Ref 9: window = (sigmoid(clip_att) + sigmoid(clip_max)) / 2; clip = max over its windows."""
    rng = np.random.default_rng(1)
    counts = [8, 8, 3, 1, 8]
    windows, species = sum(counts), 24
    att = rng.normal(size=(windows, species)) * 3
    mx = rng.normal(size=(windows, species)) * 3
    logits = {CLIP_ATT: torch.tensor(att, dtype=torch.float32), CLIP_MAX: torch.tensor(mx, dtype=torch.float32)}
    got = WINDOW_SCORES["att_max_mean"](logits)
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    as_float32 = lambda logits: logits.astype(np.float32).astype(np.float64)  # noqa: E731
    expected = (sigmoid(as_float32(att)) + sigmoid(as_float32(mx))) / 2
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)

    clips = clips_of_windows(expected, counts)
    edges = np.cumsum([0, *counts])
    ref = np.stack([expected[lo:hi].max(axis=0) for lo, hi in zip(edges[:-1], edges[1:])])
    np.testing.assert_allclose(clips, ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# 10. The fold split
# --------------------------------------------------------------------------------------------

def _random_tp(seed: int, recordings: int = 300, species: int = 24) -> pd.DataFrame:
    """tp rows in the real layout: 1-3 rows per recording, some with one species twice, shuffled."""
    rng = np.random.default_rng(seed)
    ids = set()
    while len(ids) < recordings:
        ids.add("".join(rng.choice(list("0123456789abcdef"), size=9)))
    rows = []
    for i, rid in enumerate(sorted(ids, key=lambda _: rng.random())):
        n = int(rng.integers(1, 4))
        drawn = [int(rng.integers(species)) for _ in range(n)]
        if i % 5 == 0:  # the same species twice
            drawn = [drawn[0], drawn[0]] + drawn[2:]
        for s in drawn:
            t_min = float(rng.uniform(0, 55))
            rows.append((rid, s, int(rng.integers(1, 5)), t_min, float(rng.uniform(90, 5000)),
                         t_min + float(rng.uniform(0.3, 4)), float(rng.uniform(5000, 12000))))
    frame = pd.DataFrame(rows, columns=ANNOTATION_COLUMNS).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.insert(0, "line", np.arange(2, len(frame) + 2))
    return frame


def _ref_folds(tp: pd.DataFrame, species: int = 24) -> tuple[list[str], np.ndarray, list[set[str]]]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    fnames, labels = [], []
    for rid, group in tp.groupby("recording_id"):
        fnames.append(rid)
        labels.append((np.eye(species)[group.species_id.to_numpy()].sum(axis=0) == 1).astype(int))
    labels = np.array(labels)
    splitter = MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    valid = [{fnames[i] for i in valid_rows} for _, valid_rows in splitter.split(fnames, labels)]
    return fnames, labels, valid


def _annotations(tp: pd.DataFrame) -> Annotations:
    fp = _random_tp(99, recordings=40)  # train_fp rows of other recordings
    return Annotations(tp=to_events(tp, "tp"), fp=to_events(fp, "fp"), test_ids=(), n_species=24)


def test_folds_are_the_reference_multilabel_stratified_split():
    """Ref 10: MultilabelStratifiedKFold(5, shuffle, random_state 0) over the groupby order,
    labels (sum of one-hot species rows == 1); the same validation recordings fold by fold."""
    tp = _random_tp(0)
    fnames, labels, valid = _ref_folds(tp)
    assert len(fnames) == 300
    folds = folds_of(_annotations(tp), DataConfig())
    assert len(folds) == 5
    for fold, expected in zip(folds, valid):
        assert set(fold.valid_ids) == expected, fold.index
        assert set(fold.train_ids) == set(fnames) - expected
    # The rows' order does not matter.
    reordered = folds_of(_annotations(tp.sample(frac=1.0, random_state=7)), DataConfig())
    assert [set(f.valid_ids) for f in reordered] == valid


def test_multi_hot_fold_labels_differ_from_the_reference_where_a_species_repeats():
    """Ref 10: a species annotated twice counts 0 in the reference's labels, 1 in multi_hot."""
    tp = _random_tp(0)
    fnames, labels, valid = _ref_folds(tp)
    multi = species_matrix(to_events(tp, "tp"), fnames, 24)
    twice = tp.groupby(["recording_id", "species_id"]).size()
    twice = twice[twice >= 2]
    assert len(twice) > 0
    row_of = {rid: i for i, rid in enumerate(fnames)}
    for (rid, s), _ in twice.items():
        assert labels[row_of[rid], s] == 0 and multi[row_of[rid], s] == 1
    assert (labels <= multi).all()  # elsewhere the two rules agree on positives
    folds = folds_of(_annotations(tp), DataConfig(fold_labels="multi_hot"))
    assert [set(f.valid_ids) for f in folds] != valid
