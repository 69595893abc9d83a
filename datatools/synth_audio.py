"""The sounds of the synthetic dataset: species calls, their decoys and the background.

Each species gets a call kind (up/down sweep, harmonic stack with vibrato, trill, noise
burst) in its own band; a decoy keeps the band but changes the shape, the way the real
train_fp rows are template-detector hits on other sounds in the species' band.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

Rng = np.random.Generator

F_LOWEST, F_HIGHEST = 94.0, 13_700.0  # Hz, band range of the real annotations
NYQUIST_FRACTION = 0.45  # bands stay below 0.45 * sample_rate, so 16 kHz still works
MIN_BAND_HZ = 80.0  # a narrower low band would be only a few STFT bins wide
BAND_OCTAVES = (0.35, 0.8)  # width of a species band
NOISE_DBFS = (-42.0, -28.0)  # RMS level of the background
NOISE_ALPHA = (0.6, 1.4)  # background power spectrum ~ 1/f**alpha (1 = pink)
FADE_S = 0.02  # raised-cosine fade at both ends of a call, so it starts without a click
VIBRATO_DEPTH = 0.03  # relative FM depth of a harmonic stack


@dataclass(frozen=True)
class CallSpec:
    """The shape of one call type: a species' call or a decoy of it."""

    kind: str  # a key of _SYNTH
    f_lo: float  # Hz, lowest frequency the call occupies
    f_hi: float  # Hz, highest frequency the call occupies
    rate: float  # notes (or pulses) per second; 0 = one continuous sound
    duty: float  # fraction of each note period that sounds
    vibrato: float = 0.0  # Hz, FM rate of a harmonic stack
    n0: int = 0  # lowest harmonic number of a harmonic stack
    partials: int = 0  # harmonics in a harmonic stack


def _notes(kind: str, rate: tuple[float, float],
           duty: tuple[float, float]) -> Callable[[float, float, Rng], CallSpec]:
    """A builder of note (or pulse) train species: rate and duty drawn in the given ranges."""
    return lambda lo, hi, rng: CallSpec(kind, lo, hi, float(rng.uniform(*rate)),
                                        float(rng.uniform(*duty)))


def _harmonic_spec(f_lo: float, f_hi: float, rng: Rng) -> CallSpec:
    """3-4 consecutive harmonics n0, n0+1, ... that, vibrato included, fit in the band."""
    partials = int(rng.integers(3, 5))
    ratio = f_hi / f_lo * (1 - VIBRATO_DEPTH) / (1 + VIBRATO_DEPTH)
    n0 = max(1, int(np.ceil((partials - 1) / (ratio - 1))))  # the smallest n0 that fits
    top = (n0 + partials - 1) / n0 * f_lo * (1 + VIBRATO_DEPTH) / (1 - VIBRATO_DEPTH)
    return CallSpec("harmonic", f_lo, top, 0.0, 1.0, float(rng.uniform(3, 8)), n0, partials)


# Neighbouring bands take consecutive kinds (cyclically): the order keeps the two sweeps apart,
# so a sweep decoy (the opposite sweep) never sits in the band next to a real opposite sweep.
CALL_BUILDERS: dict[str, Callable[[float, float, Rng], CallSpec]] = {
    "up_sweep": _notes("up_sweep", (0.8, 4.0), (0.5, 0.85)),
    "harmonic": _harmonic_spec,  # continuous stack with vibrato
    "down_sweep": _notes("down_sweep", (0.8, 4.0), (0.5, 0.85)),
    "noise_burst": lambda lo, hi, rng: CallSpec("noise_burst", lo, hi, 0.0, 1.0),
    "trill": _notes("trill", (6.0, 18.0), (0.3, 0.5)),  # fast train of short down-chirps
}

# A decoy keeps the species' band but not its shape: only the shape tells them apart.
DECOYS: dict[str, Callable[[CallSpec], CallSpec]] = {
    "up_sweep": lambda c: replace(c, kind="down_sweep"),
    "down_sweep": lambda c: replace(c, kind="up_sweep"),
    "harmonic": lambda c: replace(c, rate=4.0, duty=0.45),  # stuttered, not continuous
    "trill": lambda c: replace(c, rate=c.rate * 2.2 if c.rate < 11 else c.rate / 2.2),
    "noise_burst": lambda c: replace(c, rate=6.0, duty=0.4),  # pulsed, not continuous
}


def make_species(rng: Rng, k: int, sample_rate: int) -> tuple[CallSpec, ...]:
    """Draw K species: log-spaced band centres, neighbouring bands of different kinds.

    Returns:
        One CallSpec per species id. Ids are a random permutation of the band order, so
        species 0 is not always the lowest.
    """
    cap = min(F_HIGHEST, NYQUIST_FRACTION * sample_rate)
    lo, hi = np.log2(F_LOWEST) + 0.2, np.log2(cap) - 0.2
    step = min((hi - lo) / max(k - 1, 1), 1.0)  # octaves between neighbouring centres
    # Clipped: a band past the ends would be squeezed at cap, too narrow for a harmonic stack.
    centres = 2 ** np.clip(np.linspace(lo, hi, k) + rng.uniform(-0.3, 0.3, k) * step, lo, hi)
    widths = rng.uniform(*BAND_OCTAVES, k)
    kinds = list(CALL_BUILDERS)
    offset = int(rng.integers(len(kinds)))
    specs = []
    for i, (centre, width) in enumerate(zip(centres, widths)):
        f_lo = max(F_LOWEST, centre * 2 ** (-width / 2))
        f_hi = min(cap, max(centre * 2 ** (width / 2), f_lo + MIN_BAND_HZ))
        f_lo = min(f_lo, f_hi - MIN_BAND_HZ)  # the top band may have been cut at cap
        specs.append(CALL_BUILDERS[kinds[(i + offset) % len(kinds)]](float(f_lo), float(f_hi), rng))
    return tuple(specs[j] for j in rng.permutation(k))


def _note_phase(call: CallSpec, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Position p in [0, 1] within the sounding part of each note, and the sounding mask.

    The note period is stretched so the first note starts at sample 0 and the last one ends
    at sample n: the annotated t_min/t_max are then where the call really is.
    """
    t = np.arange(n) / sr
    if call.rate <= 0:
        return t / (n / sr), np.ones(n, dtype=bool)
    notes = max(1, round(n / sr * call.rate + 1 - call.duty))
    frac = np.mod(t * (notes - 1 + call.duty) / (n / sr), 1.0)  # (n,) phase within a period
    return np.minimum(frac / call.duty, 1.0), frac < call.duty


def _tone(freq: np.ndarray, sr: int) -> np.ndarray:
    """A sine that follows the instantaneous frequency `freq` (Hz, one value per sample)."""
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _band_noise(c: CallSpec, p: np.ndarray, t: np.ndarray, sr: int, rng: Rng) -> np.ndarray:
    """White noise limited to [f_lo, f_hi] by zeroing the FFT bins outside."""
    spectrum = np.fft.rfft(rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1 / sr)
    spectrum[(freqs < c.f_lo) | (freqs > c.f_hi)] = 0
    return np.fft.irfft(spectrum, len(t))


def _harmonic(c: CallSpec, p: np.ndarray, t: np.ndarray, sr: int, rng: Rng) -> np.ndarray:
    """Harmonics n0.. of a vibrato fundamental, each 0.7 times weaker than the one below."""
    f0 = c.f_lo / (c.n0 * (1 - VIBRATO_DEPTH))
    wobble = np.sin(2 * np.pi * c.vibrato * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0 * (1 + VIBRATO_DEPTH * wobble)) / sr
    stack = sum(0.7**j * np.sin((c.n0 + j) * phase) for j in range(c.partials))
    assert isinstance(stack, np.ndarray)  # a harmonic call has 3-4 partials: never the empty sum's 0
    return stack


# kind -> (call, note position p, time t, sample rate, rng) -> (n,) carrier before the envelope
_SYNTH: dict[str, Callable[[CallSpec, np.ndarray, np.ndarray, int, Rng], np.ndarray]] = {
    "up_sweep": lambda c, p, t, sr, rng: _tone(c.f_lo + (c.f_hi - c.f_lo) * p, sr),
    "down_sweep": lambda c, p, t, sr, rng: _tone(c.f_hi - (c.f_hi - c.f_lo) * p, sr),
    "harmonic": _harmonic,
    "trill": lambda c, p, t, sr, rng: _tone(c.f_hi - (c.f_hi - c.f_lo) * p, sr),
    "noise_burst": _band_noise,
}


def synth_call(call: CallSpec, n: int, sr: int, rng: Rng) -> np.ndarray:
    """Render one call of n samples, scaled to unit mean power over its whole length."""
    p, on = _note_phase(call, n, sr)
    wave = _SYNTH[call.kind](call, p, np.arange(n) / sr, sr, rng)
    if call.rate > 0:  # tapered notes: flat top, sinusoidal edges
        wave = wave * on * np.clip(2.5 * np.sin(np.pi * p), 0.0, 1.0)
    fade = min(int(FADE_S * sr), n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / max(fade, 1))
    wave[:fade] *= ramp
    wave[n - fade :] *= ramp[::-1]
    return wave / max(float(np.sqrt(np.mean(wave**2))), 1e-12)


def background(rng: Rng, n: int, sr: int) -> tuple[np.ndarray, Callable[[float, float], float]]:
    """Coloured noise (power ~ 1/f**alpha), plus sparse rain-like clicks in half the clips.

    Returns:
        The (n,) background and band_power(f_lo, f_hi): the noise power per sample in that
        band, which sets every call's band SNR.
    """
    freqs = np.fft.rfftfreq(n, 1 / sr)
    shape = np.maximum(freqs, 50.0) ** (-rng.uniform(*NOISE_ALPHA) / 2)
    shape[0] = 0.0  # no DC
    re, im = rng.standard_normal((2, len(freqs)), dtype=np.float32)
    spectrum = ((re + 1j * im) * shape).astype(np.complex64)  # float32 FFT: twice as fast
    level = 10 ** (rng.uniform(*NOISE_DBFS) / 20)
    noise = np.fft.irfft(spectrum, n).astype(np.float64)
    noise *= level / max(float(noise.std()), 1e-12)
    cum = np.concatenate([[0.0], np.cumsum(np.abs(spectrum) ** 2, dtype=np.float64)])
    cum /= max(cum[-1], 1e-30)

    def band_power(f_lo: float, f_hi: float) -> float:
        i, j = np.searchsorted(freqs, [f_lo, f_hi])
        return float(level**2 * max(cum[j] - cum[i], 1e-9))

    if rng.random() < 0.5:  # rain: 4 ms decaying broadband clicks, 0.5-3 per second
        klen = max(1, int(0.004 * sr))
        pos = rng.integers(0, max(n - klen, 1), rng.poisson(rng.uniform(0.5, 3) * n / sr))
        decay = np.exp(-np.arange(klen) / (0.0008 * sr)) * level
        clicks = rng.standard_normal((len(pos), klen)) * decay * rng.uniform(2, 6, (len(pos), 1))
        np.add.at(noise, np.minimum(pos[:, None] + np.arange(klen), n - 1), clicks)
    return noise, band_power
