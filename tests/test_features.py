import librosa
import numpy as np
import pytest
import soundfile as sf

from trainable.data.cache import FeatureConfig
from trainable.data.features import file_log_mel, load_audio


def tone(seconds: float, rate: int, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 32000, 44100, 48000])
def test_frame_rate_is_the_same_for_any_input_rate(tmp_path, rate):
    path = tmp_path / "a.flac"
    sf.write(path, tone(60.0, rate, 1000.0), rate)
    mel = file_log_mel(path, FeatureConfig())
    assert mel.shape == (128, 3751)  # 60 s at 62.5 frames/s
    assert mel.dtype == np.float16 and np.isfinite(mel).all()


def test_energy_lands_in_the_mel_band_of_the_tone(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(5.0, 48000, 3000.0), 48000)
    features = FeatureConfig()
    mel = file_log_mel(path, features).astype(np.float32)
    centres = librosa.mel_frequencies(n_mels=features.n_mels + 2, fmin=features.fmin, fmax=features.fmax)[1:-1]
    peak = int(np.argmax(mel[:, 50:-50].mean(axis=1)))
    assert abs(centres[peak] - 3000.0) < 150.0


def test_stereo_is_downmixed_to_mono(tmp_path):
    left, right = tone(2.0, 32000, 500.0), tone(2.0, 32000, 5000.0)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), 32000)
    audio = load_audio(tmp_path / "stereo.flac", 32000)
    assert audio.ndim == 1
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-3)  # 16-bit flac rounding


def test_corrupt_audio_raises(tmp_path):
    path = tmp_path / "bad.flac"
    path.write_bytes(b"fLaC this is not audio")
    with pytest.raises(RuntimeError):  # soundfile.LibsndfileError
        load_audio(path, 32000)
