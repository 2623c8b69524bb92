"""Signal processing of the source-filter synthesiser.

Framed FFT filtering with overlap-add (:class:`Framing`), the Klatt
resonator cascade, obstruent noise spectra, raised-cosine gates and the
Rosenberg glottal source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moma.corpora.synthetic.phonetics import NOISE_KINDS, NOISE_SHAPES

_WIN = 512  # samples at 16 kHz (32 ms); scaled with the sample rate
_HOP_DIV = 4  # hop = window / 4: periodic Hann overlap-adds to exactly 2


@dataclass(frozen=True)
class Framing:
    win: int
    hop: int
    nfft: int
    n: int  # signal length
    n_frames: int

    @classmethod
    def for_signal(cls, n: int, sample_rate: int) -> Framing:
        win = max(64, int(2 ** round(math.log2(_WIN * sample_rate / 16000))))
        hop = win // _HOP_DIV
        n_frames = 1 + (n + win // 2 + hop) // hop
        return cls(win=win, hop=hop, nfft=2 * win, n=n, n_frames=n_frames)

    @property
    def centres(self) -> np.ndarray:
        """Frame centres in samples of the unpadded signal."""
        return np.arange(self.n_frames) * self.hop

    def analyse(self, x: np.ndarray) -> np.ndarray:
        """Complex spectra (frames x bins) of Hann-windowed frames, zero-padded to ``nfft``."""
        half = self.win // 2
        total = (self.n_frames - 1) * self.hop + self.win
        padded = np.zeros(total)
        padded[half:half + self.n] = x
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.win)[::self.hop][: self.n_frames]
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(self.win) / self.win)
        return np.fft.rfft(frames * window, self.nfft, axis=1)

    def synthesise(self, spectra: np.ndarray) -> np.ndarray:
        """Overlap-add filtered frames back into a signal of length ``n``."""
        frames = np.fft.irfft(spectra, self.nfft, axis=1)
        out = np.zeros((self.n_frames - 1) * self.hop + self.nfft)
        span = self.n_frames * self.hop
        for j in range(self.nfft // self.hop):  # 8 vectorised adds, one per hop-sized slice
            out[j * self.hop:j * self.hop + span] += frames[:, j * self.hop:(j + 1) * self.hop].reshape(-1)
        half = self.win // 2
        return out[half:half + self.n] / 2.0  # periodic Hann at 75 % overlap sums to 2


def resonator_cascade(freqs: np.ndarray, bws: np.ndarray, omega: np.ndarray, sample_rate: int) -> np.ndarray:
    """Frequency response (frames x bins) of cascaded 2-pole resonators with unit DC gain.

    ``freqs`` and ``bws`` are (frames x formants) in Hz. Each resonator is
    Klatt's ``A / (1 - B z^-1 - C z^-2)`` with ``C = -exp(-2 pi BW T)``,
    ``B = 2 exp(-pi BW T) cos(2 pi F T)``, ``A = 1 - B - C``. The denominators
    are multiplied first so only one complex division runs.
    """
    z1 = np.exp(-1j * omega)[None, :]
    z2 = z1 * z1
    r = np.exp(-np.pi * bws / sample_rate)
    b = 2.0 * r * np.cos(2.0 * np.pi * freqs / sample_rate)
    c = -r * r
    gain = np.prod(1.0 - b - c, axis=1)[:, None]
    denominator = 1.0 - b[:, :1] * z1 - c[:, :1] * z2
    for k in range(1, freqs.shape[1]):
        denominator *= 1.0 - b[:, k:k + 1] * z1 - c[:, k:k + 1] * z2
    return gain / denominator


def noise_shape_table(freqs_hz: np.ndarray, scale: float, nyquist: float) -> np.ndarray:
    """Magnitude spectra (kinds x bins) of the obstruent noises, unit mean power each."""
    table = np.empty((len(NOISE_KINDS), freqs_hz.size))
    for i, kind in enumerate(NOISE_KINDS):
        floor, bumps = NOISE_SHAPES[kind]
        mag = np.full(freqs_hz.size, floor)
        for centre, width, amp in bumps:
            centre = min(centre * scale, 0.85 * nyquist)
            mag += amp * np.exp(-0.5 * ((freqs_hz - centre) / width) ** 2)
        mag *= np.clip(freqs_hz / 300.0, 0.0, 1.0)  # no obstruent energy at DC
        table[i] = mag / np.sqrt(np.mean(mag**2))
    return table


def raised_cosine(n: int, attack: int, release: int) -> np.ndarray:
    """A gate of ``n`` samples with raised-cosine onset and offset ramps."""
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release > 0:
        env[n - release:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return env


def glottal_source(f0: np.ndarray, open_quotient: float, speed_quotient: float, jitter: float,
                    shimmer: float, rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg-pulse flow derivative (unit RMS) and a mask of the glottis-open phase.

    Pulse epochs follow the per-sample f0 contour, each period perturbed by
    Gaussian jitter and each pulse's amplitude by shimmer. The Rosenberg (1971)
    flow rises as a half cosine for ``Tp`` and falls as a quarter cosine for
    ``Tn`` (``Tp + Tn`` = open quotient, ``Tp / Tn`` = speed quotient); a short,
    abrupt closing phase gives strong high harmonics (pressed voice), a long
    smooth one a steep spectral tilt (breathy voice). The first difference
    models lip radiation.
    """
    n = f0.size
    expected = int(np.sum(f0) / sample_rate * 1.25) + 16
    z_jitter = np.clip(rng.standard_normal(expected), -3.0, 3.0)
    z_shimmer = np.clip(rng.standard_normal(expected), -3.0, 3.0)
    epochs: list[float] = []
    periods: list[float] = []
    t = 0.0
    while t < n:  # one iteration per pitch period, not per sample
        i = len(epochs)
        period = sample_rate / f0[int(t)] * (1.0 + jitter * z_jitter[i % expected])
        epochs.append(t)
        periods.append(period)
        t += period
    ep = np.asarray(epochs)
    per = np.asarray(periods)
    amp = 1.0 + shimmer * z_shimmer[np.arange(ep.size) % expected]
    idx = np.arange(n, dtype=np.float64)
    k = np.searchsorted(ep, idx, side="right") - 1
    phase = (idx - ep[k]) / per[k]
    tp = open_quotient * speed_quotient / (1.0 + speed_quotient)
    tn = open_quotient / (1.0 + speed_quotient)
    flow = np.where(phase < tp, 0.5 - 0.5 * np.cos(np.pi * phase / tp),
                    np.where(phase < tp + tn, np.cos(0.5 * np.pi * (phase - tp) / tn), 0.0))
    flow *= amp[k]
    deriv = np.diff(flow, prepend=flow[0])
    deriv /= np.sqrt(np.mean(deriv**2)) + 1e-12
    return deriv, phase < open_quotient
