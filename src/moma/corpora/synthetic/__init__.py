"""A deterministic, download-free emotional speech corpus for ``moma demo``.

Speech-like audio comes from a small source-filter (Klatt-style) synthesiser:

* **Source.** A Rosenberg glottal-flow pulse train (Rosenberg 1971), one pulse
  per period with cycle-to-cycle jitter and shimmer, differentiated for lip
  radiation, plus pulsed aspiration noise (breathiness).
* **Filter.** Cascaded two-pole formant resonators F1-F4 (Klatt 1980) with
  per-vowel targets for /a e i o u/ (Peterson & Barney 1952), scaled by the
  speaker's vocal-tract length factor, interpolated between syllables
  (coarticulation), reduced towards schwa when unstressed or fast.
* **Syllables.** CV syllables: fricatives (/s ʃ f/), plosives (/p t k/:
  closure, burst, aspiration) and nasals (/m n/) before each vowel, words of
  1-3 syllables with lexical stress, phrase breaks with pauses.
* **Prosody.** An f0 contour with declination, a pitch accent on every
  stressed syllable, a phrase-final fall (or rise) and slow wander.

Emotion changes the acoustic correlates that the vocal-affect literature
reports consistently (Murray & Arnott 1993; Banse & Scherer 1996;
Scherer 2003; Juslin & Laukka 2003; Gobl & Ní Chasaide 2003):

=========  ========  ==========  ======  ========  ===========================
emotion    f0 level  f0 range    tempo   energy    voice quality
=========  ========  ==========  ======  ========  ===========================
angry      high      wide        fast    loud      pressed: short open phase,
                                                   flat tilt, raised F1, fast
                                                   attacks, more jitter
happy      high      widest      fast    raised    slightly flatter tilt,
                                                   smile-raised formants,
                                                   more final rises
neutral    --        --          --      --        modal
sad        low       narrow      slow    soft      breathy: long open phase,
                                                   steep tilt, aspiration,
                                                   long pauses, more jitter
=========  ========  ==========  ======  ========  ===========================

The effects are moderate and every speaker expresses them to a different
degree (``SpeakerVoice.expressiveness``), and every utterance varies at
random around its speaker-and-emotion mean, so emotion classes overlap across
speakers (a high-pitched sad female speaker is higher than a low-pitched angry
male one): a model has to learn relative, multi-cue patterns, and
leave-speakers-out evaluation is harder than within-speaker evaluation, as on
real corpora.

Filtering is vectorised with numpy: each signal is cut into overlapping
Hann-windowed frames (32 ms, 8 ms hop), each frame is multiplied in the
frequency domain by the exact frequency response of the resonator cascade at
that frame's formant values (zero-padded FFT, so this is a linear convolution
with the impulse response truncated after at least 32 ms, by which time the
narrowest resonance, 60 Hz wide, has decayed by more than 50 dB), and the frames are overlap-added.
No per-sample Python loop runs; the glottal-epoch loop runs once per pitch
period. The default demo corpus (384 utterances) synthesises in a few seconds.

Layout written by :func:`make_synthetic_corpus` and read by :func:`load_synthetic`::

    root/speakers.json             speaker voices (gender, f0, ...) and generation settings
    root/wav/spkNN_<emotion>_NNN.wav   16-bit mono PCM

The package is split by job:

* :mod:`~moma.corpora.synthetic.speakers`: :class:`SpeakerVoice`, :func:`make_speaker_voices`
* :mod:`~moma.corpora.synthetic.emotions`: :data:`SYNTH_EMOTIONS` and the per-emotion profiles
* :mod:`~moma.corpora.synthetic.phonetics`: formant targets, noise spectra, sentence plans
* :mod:`~moma.corpora.synthetic.dsp`: framed filtering, resonators, glottal source
* :mod:`~moma.corpora.synthetic.utterance`: :func:`synthesise_utterance`
* :mod:`~moma.corpora.synthetic.corpus`: :func:`make_synthetic_corpus`, :func:`load_synthetic`
* :mod:`~moma.corpora.synthetic.hours`: :func:`make_synthetic_hours` (benchmark corpora)
"""

from __future__ import annotations

from moma.corpora.synthetic.corpus import CORPUS_NAME, SPEAKERS_FILE, load_synthetic, make_synthetic_corpus
from moma.corpora.synthetic.emotions import SYNTH_EMOTIONS
from moma.corpora.synthetic.hours import HOURS_POOL_SECONDS, make_synthetic_hours
from moma.corpora.synthetic.speakers import SpeakerVoice, make_speaker_voices
from moma.corpora.synthetic.utterance import synthesise_utterance

__all__ = [
    "SYNTH_EMOTIONS",
    "SpeakerVoice",
    "make_speaker_voices",
    "synthesise_utterance",
    "make_synthetic_corpus",
    "make_synthetic_hours",
    "load_synthetic",
    "CORPUS_NAME",
    "SPEAKERS_FILE",
    "HOURS_POOL_SECONDS",
]
