"""moma-ser: speech emotion recognition with the MOMA model (Jalal et al., Interspeech 2020).

Pipeline, one module a stage: audio -> features -> corpora (manifests) ->
protocols -> data -> model -> train / evaluate -> crossval -> plots -> cli.
"""

__version__ = "0.1.0"
