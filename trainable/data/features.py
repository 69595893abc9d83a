"""Audio -> log-mel: the one place that decides what the model sees.

Every input is downmixed to mono and resampled to `FeatureConfig.sample_rate` (trainable.data.cache: the
feature parameters identify a cache), so the
frame rate (sample_rate / hop_length, 62.5 frames/s by default) is the same for a
48 kHz competition file and a 16 kHz synthetic one.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from trainable.data.cache import FeatureConfig

AMIN = 1e-10  # power floor before the log: -100 dB, far below any recording's noise
RESAMPLER = "soxr_hq"  # librosa's resampler: the SoX library's high-quality setting


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 at `sample_rate`.

    Returns:
        (samples,) float32.

    Raises:
        soundfile.LibsndfileError: unreadable or corrupt file.
        ValueError: a file with no samples.
    """
    audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    if audio.shape[0] == 0:
        raise ValueError("no audio samples")
    mono = audio.mean(axis=1)  # (samples,)
    if file_rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=file_rate, target_sr=sample_rate, res_type=RESAMPLER)
    return np.ascontiguousarray(mono, dtype=np.float32)


def log_mel(audio: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """Log-mel spectrogram in dB.

    Args:
        audio: (samples,) mono at `features.sample_rate`.

    Returns:
        (n_mels, 1 + samples // hop_length) float16: 128 x 3751 for 60 s with the defaults.
    """
    mel = librosa.feature.melspectrogram(
        y=audio, sr=features.sample_rate, n_fft=features.n_fft, hop_length=features.hop_length,
        n_mels=features.n_mels, fmin=features.fmin, fmax=features.fmax, power=2.0,
    )  # (n_mels, frames), centred frames
    return librosa.power_to_db(mel, ref=1.0, amin=AMIN, top_db=None).astype(np.float16)


def file_log_mel(path: Path, features: FeatureConfig) -> np.ndarray:
    """`log_mel` of an audio file; (n_mels, frames) float16."""
    return log_mel(load_audio(path, features.sample_rate), features)


def warm_up(features: FeatureConfig) -> None:
    """Run the feature code once on a short silence.

    Its first call loads and initialises librosa's lazily imported parts, the resampler above
    all (about 1.5 s). A parent process that calls this before it forks its workers spares
    every worker that cost.
    """
    silence = np.zeros(4800, np.float32)  # 0.1 s at 48 kHz, the competition's rate
    log_mel(librosa.resample(silence, orig_sr=48000, target_sr=features.sample_rate, res_type=RESAMPLER), features)
