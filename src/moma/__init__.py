"""moma-ser: speech emotion recognition with the MOMA model (Jalal et al., Interspeech 2020).

One folder per pipeline stage, imports pointing down only (pyproject.toml's import-linter contracts):
audio, corpora -> features, data, model -> checkpoint -> evaluation -> training -> inference ->
research, serving, bench -> cli.
"""

from moma.version import __version__

__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str):
    # lazy: `import moma` stays cheap (no torch) until the predictor is asked for
    if name in ("Predictor", "Prediction"):
        import moma.inference.predictor as inference
        return getattr(inference, name)
    raise AttributeError(f"module 'moma' has no attribute {name!r}")
