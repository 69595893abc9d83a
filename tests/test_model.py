"""SEDModel over every tested backbone: shapes, finiteness, pooling, mixup, weights files, and
the head's switches (the reference's formula itself: tests/test_reference.py)."""

from __future__ import annotations

import pytest
import timm
import torch

from trainable.config import ConfigError, ModelConfig
from trainable.model.sed import ATTENTION, BACKBONES, CLIP_ATT, CLIP_MAX, FRAME, OUTPUTS, SEGMENT, SEDModel

pytestmark = pytest.mark.slow

N_SPECIES = 24


def config(**values) -> ModelConfig:
    """The reference's model (3-channel input) without ImageNet weights (no model hub here)."""
    return ModelConfig(**{"pretrained": False, **values})


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(2, 3, 128, 512, generator=torch.Generator().manual_seed(0))  # (B, 3, M, T)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_gives_every_output_with_its_shape(backbone, batch):
    torch.manual_seed(0)
    model = SEDModel(config(backbone=backbone), N_SPECIES).eval()
    with torch.no_grad():
        out = model(batch)
    assert set(out) == set(OUTPUTS)
    segments = out[SEGMENT].shape[-1]
    assert segments >= 1
    assert out[CLIP_ATT].shape == out[CLIP_MAX].shape == (2, N_SPECIES)
    assert out[SEGMENT].shape == out[ATTENTION].shape == (2, N_SPECIES, segments)
    assert out[FRAME].shape == (2, N_SPECIES, 512)
    assert all(torch.isfinite(value).all() for value in out.values())


def test_clip_logits_pool_the_segment_logits(batch):
    torch.manual_seed(0)
    out = SEDModel(config(), N_SPECIES).eval()(batch)
    segment, attention = out[SEGMENT], out[ATTENTION]
    torch.testing.assert_close(out[CLIP_MAX], segment.amax(dim=-1))
    torch.testing.assert_close(out[CLIP_ATT], (segment * attention.softmax(dim=-1)).sum(dim=-1))
    # An attention average lies between the smallest and the largest segment logit.
    assert (out[CLIP_ATT] <= out[CLIP_MAX] + 1e-6).all()
    assert (out[CLIP_ATT] >= segment.amin(dim=-1) - 1e-6).all()


def test_feature_mixup_mixes_the_backbone_map_not_the_input(batch):
    torch.manual_seed(0)
    model = SEDModel(config(), N_SPECIES).eval()
    swap = torch.tensor([1, 0])
    with torch.no_grad():
        plain = model(batch)
        swapped = model(batch, mix=lambda features: features[swap])  # lam = 0: all the partner
        halves = model(batch, mix=lambda features: 0.5 * features + 0.5 * features[swap])
    torch.testing.assert_close(swapped[CLIP_ATT], plain[CLIP_ATT][swap])
    # Mixing after the backbone gives both samples the same map, hence the same logits.
    torch.testing.assert_close(halves[CLIP_ATT][0], halves[CLIP_ATT][1])
    assert not torch.allclose(halves[CLIP_ATT][0], plain[CLIP_ATT][0])


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet1800'"):
        SEDModel(config(backbone="resnet1800"), N_SPECIES)


@pytest.mark.parametrize("input_", ["clip_image", "crop_unit"])
def test_pretrained_weights_load_from_a_local_file(tmp_path, input_):
    """Machines without a model hub give timm an ImageNet-style file (RGB stem, classifier)."""
    reference = timm.create_model("resnet18", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = SEDModel(ModelConfig(pretrained=True, pretrained_file=str(tmp_path / "resnet18.pth"), input=input_),
                     N_SPECIES)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    if input_ == "clip_image":  # the reference's 3-channel image meets the RGB stem as it is
        torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    else:  # timm folds the three RGB filters of the stem into the one log-mel channel
        torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))


def test_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        SEDModel(ModelConfig(pretrained=True, pretrained_file=str(tmp_path / "nope.pth")), N_SPECIES)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_trains_on_the_smallest_batch(backbone):
    """Training mode with two samples (the smallest batch training makes): BatchNorm works
    and every output sends a finite gradient back to the backbone's stem."""
    torch.manual_seed(0)
    model = SEDModel(config(backbone=backbone), N_SPECIES).train()
    out = model(torch.rand(2, 3, 64, 128))
    sum(value.sum() for value in out.values()).backward()
    stem = next(model.backbone.parameters())
    assert stem.grad is not None and torch.isfinite(stem.grad).all() and stem.grad.abs().sum() > 0


def test_a_backbone_without_a_feature_map_is_named_as_the_problem():
    model = SEDModel(config(), N_SPECIES)
    model.backbone = torch.nn.Flatten(2)  # (B, F, tokens), like a transformer's output
    with pytest.raises(ConfigError, match="needs a convolutional backbone"):
        model(torch.rand(2, 3, 32, 64))


def test_the_head_switches_orientation_bias_and_upsampling(batch):
    """The fixed recipe's head: (mel, time) images, biased convolutions, linear upsampling; the
    reference's repeats each segment logit over its 32 frames."""
    torch.manual_seed(0)
    reference = SEDModel(config(), N_SPECIES).eval()
    assert reference.cla.bias is None and reference.att.bias is None
    with torch.no_grad():
        out = reference(batch)
    assert out[SEGMENT].shape[-1] == 512 // 32  # the time axis went through the backbone's height
    torch.testing.assert_close(out[FRAME], out[SEGMENT].repeat_interleave(32, dim=-1))
    fixed = SEDModel(config(orientation="mel_time", head_bias=True, upsample="linear", input="crop_unit"),
                     N_SPECIES).eval()
    assert fixed.cla.bias is not None and fixed.backbone.conv1.in_channels == 1
    with torch.no_grad():
        out = fixed(batch[:, :1, :, :256])
    assert out[SEGMENT].shape[-1] == 256 // 32 and out[FRAME].shape[-1] == 256
    # Linear upsampling interpolates between neighbouring segments instead of repeating them.
    assert not torch.equal(out[FRAME], out[SEGMENT].repeat_interleave(32, dim=-1))


def test_repeat_upsampling_fills_frames_a_stride_does_not_divide():
    model = SEDModel(config(backbone="mobilenetv2_100"), N_SPECIES).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 100))  # 100 frames, 4 segments: ratio 25
    assert out[FRAME].shape[-1] == 100
    repeats = -(-100 // out[SEGMENT].shape[-1])
    torch.testing.assert_close(out[FRAME], out[SEGMENT].repeat_interleave(repeats, -1)[..., :100])
