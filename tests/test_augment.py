"""Batched augmentation: unit scaling, jitter, SpecAugment masks and mixup, on tiny CPU tensors."""

import dataclasses

import numpy as np
import pytest
import torch

from trainable.config import AugmentConfig
from trainable.data.mixup import Mixup
from trainable.model.augment import augment_batch, draw_mixup, jitter, spec_augment, unit_scale

NO_AUG = AugmentConfig(time_masks=0, freq_masks=0, gamma=0.0, brightness=0.0)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def batch(b: int = 8, m: int = 16, t: int = 40, seed: int = 0) -> torch.Tensor:
    """(B, 1, M, T) values in [0.2, 1]: no cell is 0 before masking."""
    return 0.2 + 0.8 * torch.rand(b, 1, m, t, generator=torch.Generator().manual_seed(seed))


# unit_scale

@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_scale_maps_each_sample_to_0_1_and_a_constant_sample_to_0(dtype):
    x = torch.stack([torch.linspace(-80, 20, 30).view(1, 5, 6),  # dB-like range
                     torch.full((1, 5, 6), -42.0),  # constant
                     torch.linspace(3, 4, 30).view(1, 5, 6)]).to(dtype)  # (3, 1, 5, 6)
    out = unit_scale(x)
    assert out.shape == x.shape and out.dtype == dtype
    flat = out.float().flatten(1)
    assert flat[[0, 2]].amin(1).tolist() == [0.0, 0.0] and flat[[0, 2]].amax(1).tolist() == [1.0, 1.0]
    assert (flat[1] == 0).all()
    torch.testing.assert_close(out[0].float(), out[2].float(), atol=1e-2, rtol=0)  # same shape, own range


# jitter

def test_jitter_with_zero_ranges_is_the_identity():
    x = batch()
    assert torch.equal(jitter(x, NO_AUG, rng()), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jitter_stays_in_0_1_and_keeps_dtype(dtype):
    x = torch.rand(16, 1, 8, 10, generator=torch.Generator().manual_seed(1)).to(dtype)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # the extremes, where brightness would overshoot
    out = jitter(x, AugmentConfig(gamma=1.0, brightness=0.5), rng())
    assert out.dtype == dtype and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_jitter_draws_one_gamma_per_sample():
    x = torch.linspace(0.05, 0.95, 20).expand(6, 1, 4, 20).contiguous()  # identical samples
    out = jitter(x, AugmentConfig(gamma=0.5, brightness=0.0), rng())
    g = torch.log(out) / torch.log(x)  # x ** g -> g in every cell
    per_sample = g.flatten(1)  # (B, N)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample), rtol=1e-4, atol=1e-5)
    gammas = per_sample[:, 0]
    assert len(set(gammas.tolist())) == 6  # batched: one gamma per sample, not one per batch
    assert ((gammas >= np.exp(-0.5) - 1e-5) & (gammas <= np.exp(0.5) + 1e-5)).all()


def test_jitter_draws_one_brightness_shift_per_sample():
    x = torch.full((6, 1, 4, 5), 0.5)
    out = jitter(x, AugmentConfig(gamma=0.0, brightness=0.3), rng())
    shift = (out - x).flatten(1)  # (B, N)
    assert (shift == shift[:, :1]).all()  # constant within a sample
    assert len(set(shift[:, 0].tolist())) == 6
    assert (shift.abs() <= 0.3 + 1e-6).all()


def test_jitter_is_deterministic_for_a_seed():
    x, config = batch(), AugmentConfig(gamma=0.5, brightness=0.2)
    assert torch.equal(jitter(x, config, rng(3)), jitter(x, config, rng(3)))
    assert not torch.equal(jitter(x, config, rng(3)), jitter(x, config, rng(4)))


# spec_augment

def only(**masks) -> AugmentConfig:
    return dataclasses.replace(NO_AUG, **masks)


def test_time_masks_are_whole_columns_within_the_width_budget():
    x = batch(b=32)
    out = spec_augment(x, only(time_masks=2, time_mask_frames=6), rng())
    zero = out[:, 0] == 0  # (B, M, T)
    assert torch.equal(zero.all(dim=1), zero.any(dim=1))  # a masked frame is masked in every mel bin
    widths = zero.all(dim=1).sum(dim=1)  # (B,) masked frames per sample
    assert (widths <= 2 * 6).all() and widths.sum() > 0
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])  # everything else untouched


def test_freq_masks_are_whole_rows_within_the_width_budget():
    x = batch(b=32)
    out = spec_augment(x, only(freq_masks=3, freq_mask_bins=4), rng())
    zero = out[:, 0] == 0  # (B, M, T)
    assert torch.equal(zero.all(dim=2), zero.any(dim=2))  # a masked bin is masked in every frame
    heights = zero.all(dim=2).sum(dim=1)  # (B,) masked bins per sample
    assert (heights <= 3 * 4).all() and heights.sum() > 0
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])


def test_mask_starts_are_spread_over_the_input():
    x = batch(b=64, t=40)
    zero = spec_augment(x, only(time_masks=1, time_mask_frames=4), rng())[:, 0, 0] == 0  # (B, T)
    starts = zero.int().argmax(dim=1)[zero.any(dim=1)]  # first masked frame of each masked sample
    assert starts.min() < 10 and starts.max() > 30  # uniform start, not pinned to an edge


def test_masks_differ_between_samples():
    x = batch(b=16)
    zero = spec_augment(x, only(time_masks=1, time_mask_frames=10, freq_masks=1, freq_mask_bins=5), rng()) == 0
    assert len({tuple(z.flatten().tolist()) for z in zero}) > 8


def test_zero_counts_leave_the_input_unchanged():
    x = batch()
    out = spec_augment(x, AugmentConfig(time_masks=0, freq_masks=0), rng())
    assert torch.equal(out, x) and out is not x


def test_spec_augment_does_not_modify_its_input():
    x = batch()
    before = x.clone()
    out = spec_augment(x, AugmentConfig(time_masks=3, freq_masks=3), rng())
    assert torch.equal(x, before) and (out == 0).any()


def test_masks_wider_than_the_input_are_capped():
    x = batch(b=8, m=3, t=5)
    out = spec_augment(x, only(time_masks=2, time_mask_frames=50, freq_masks=2, freq_mask_bins=50), rng())
    assert out.shape == x.shape and (out == 0).any()


def test_spec_augment_is_deterministic_for_a_seed():
    x, config = batch(), AugmentConfig()
    assert torch.equal(spec_augment(x, config, rng(5)), spec_augment(x, config, rng(5)))
    assert not torch.equal(spec_augment(x, config, rng(5)), spec_augment(x, config, rng(6)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_augment_batch_at_the_recipe_size(dtype):
    x = unit_scale(torch.randn(64, 1, 128, 512, generator=torch.Generator().manual_seed(0))).to(dtype)
    out = augment_batch(x, AugmentConfig(), rng())
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    columns = (out[:, 0] == 0).all(dim=1)  # (B, T) frames masked in every bin
    assert columns.any(dim=1).float().mean() > 0.5  # most samples got a time mask


# mixup

def test_mixup_mixes_with_known_values():
    mix = Mixup(lam=0.25, perm=torch.tensor([1, 0, 2]))
    x = torch.tensor([[1.0], [3.0], [5.0]])
    assert torch.equal(mix(x), torch.tensor([[2.5], [1.5], [5.0]]))


@pytest.mark.parametrize("shape", [(6, 1, 4, 5), (6, 3), (6, 3, 7)])  # input, clip and frame targets
def test_mixup_is_lam_a_plus_one_minus_lam_partner(shape):
    mix = draw_mixup(6, alpha=0.4, rng=rng())
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = mix(t)
    assert out.shape == t.shape and out.dtype == t.dtype
    for i in range(6):
        assert torch.equal(out[i], mix.lam * t[i] + (1 - mix.lam) * t[int(mix.perm[i])])


def test_one_draw_mixes_input_and_targets_alike():
    mix = draw_mixup(5, alpha=1.0, rng=rng(2))
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 3)  # sample i is the value i
    clip = torch.eye(5)  # sample i is class i
    mixed_x, mixed_clip = mix(x), mix(clip)
    torch.testing.assert_close(mixed_x[:, 0, 0, 0], mixed_clip @ torch.arange(5.0))  # labels follow the signal


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixup_keeps_dtype(dtype):
    mix = draw_mixup(4, alpha=0.1, rng=rng())
    assert mix(torch.rand(4, 3).to(dtype)).dtype == dtype


def test_draw_mixup_perm_is_a_permutation_on_the_device():
    mix = draw_mixup(10, alpha=0.1, rng=rng(), device="cpu")
    assert mix.perm.dtype == torch.long and sorted(mix.perm.tolist()) == list(range(10))
    assert draw_mixup(10, alpha=0.1, rng=rng(), device="meta").perm.device.type == "meta"


def test_draw_mixup_is_off_without_alpha_or_a_partner():
    assert draw_mixup(8, alpha=0.0, rng=rng()) is None
    assert draw_mixup(1, alpha=0.4, rng=rng()) is None


def test_draw_mixup_lam_follows_beta():
    generator = rng()
    lams = np.array([draw_mixup(4, alpha=1.0, rng=generator).lam for _ in range(2000)])
    assert ((lams >= 0) & (lams <= 1)).all()
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 1 / 12) < 0.01  # Beta(1, 1) = U(0, 1)
    small = np.array([draw_mixup(4, alpha=0.1, rng=generator).lam for _ in range(2000)])
    assert ((small > 0.1) & (small < 0.9)).mean() < 0.35  # Beta(0.1, 0.1) piles up at 0 and 1


def test_draw_mixup_is_deterministic_for_a_seed():
    a, b, c = (draw_mixup(16, alpha=0.4, rng=rng(s)) for s in (7, 7, 8))
    assert a.lam == b.lam and torch.equal(a.perm, b.perm)
    assert a.lam != c.lam


def test_mixup_rejects_a_tensor_of_another_batch():
    with pytest.raises(ValueError, match="batch"):
        draw_mixup(4, alpha=0.4, rng=rng())(torch.zeros(5, 2))
