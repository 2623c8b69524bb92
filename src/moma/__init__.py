"""moma-ser: speech emotion recognition with the MOMA model (Jalal et al., Interspeech 2020).

Pipeline, one module a stage: audio -> features -> corpora (manifests) ->
protocols -> data -> model -> train / evaluate -> crossval -> plots -> cli.
"""

__version__ = "0.1.0"

__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str):
    # lazy: `import moma` stays cheap (no torch) until the predictor is asked for
    if name in ("Predictor", "Prediction"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'moma' has no attribute {name!r}")
