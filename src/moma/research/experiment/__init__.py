"""Experiment grids: model variants x seeds x folds, on identical folds, with statistics and figures.

``moma experiment CONFIG.yaml --out DIR`` (see :func:`run_experiment`) reads an
experiment file (format below), trains every *cell* (one variant, one seed,
one fold) with :func:`moma.training.crossval.run_fold` in
``DIR/cells/<variant>/seed<k>/<fold>/`` and writes into ``DIR``:

* ``results.json``: every number (per cell, per seed, per variant, tests);
* ``report.md``: the side-by-side table, the paired comparisons and figures;
* ``uar_by_variant.png``, ``uar_vs_blocks.png``: each carries the command and
  config that made it;
* ``experiment.yaml`` (the experiment file as resolved), ``configs/<variant>.yaml``
  (each variant's resolved :class:`~moma.config.RunConfig`) and ``folds.json``.

A finished cell (its ``result.json`` exists) is never recomputed and an
unfinished one resumes from its last checkpoint, so a killed grid picks up
where it stopped. Each cell records the configuration it ran with
(``cell.json``); rerunning into the same folder with a changed configuration
is refused rather than silently mixing results.

Experiment file (YAML)::

    title: EmoDB Table 1
    corpus: {manifest: runs/emodb.jsonl}   # or {name: emodb, root: DIR, label_map: default}
    protocol: {name: loso}                 # + k, seed, test_session, test_speakers
    base: [emodb-cpu]                      # recipes / YAML files applied first, in order
    set: [train.max_epochs=40]             # overrides for every variant
    seeds: [0, 1, 2]                       # train.seed of each repetition
    reference: moma-3                      # the variant the paired tests compare against
    cache: cache/features                  # feature cache (optional)
    bootstrap: 1000                        # bootstrap resamples (optional)
    alpha: 0.05                            # significance level (optional)
    variants:
      mean:   {set: [model.arch=mean]}
      moma-3: {}                           # base + set as they are
      ...

Each variant may also hold ``base`` (more recipes, after the experiment's),
``label`` (display name) and ``note``. Relative paths are looked up from the
current directory first, then from the experiment file's folder.

Analysis (optional section; see :class:`AnalysisSpec` and :func:`analyse_cell`)::

    analysis:
      seeds: [0]                  # whose cells are analysed (each fold's best checkpoint)
      attention: true             # entropy per layer / block / mixture, block correlation, gammas
      probe: {speakers: heldout, folds: 5}   # linear speaker probe per stage; heldout | test | all
      robustness: {conditions: [clean, white-10dB, ...], max_utterances_per_fold: 20, babble_pool: 32, seed: 0}
      attention_maps: 4           # the paper's Figures 2-5 for 4 test utterances (reference variant)

Classical anchor (optional section; see :class:`ClassicalSpec` and :func:`run_anchors`)::

    classical:
      feature_sets: [eGeMAPSv02, ComParE_2016]   # openSMILE functionals + linear SVM, same folds
      normalisation: global                      # or speaker (transductive)

After the cells, each analysed cell's results go to ``<cell>/analysis.json``
(a rerun recomputes nothing that is there), the per-variant aggregates to
``results.json["analysis"]``, tables to report.md and the figures
``analysis_entropy.png``, ``analysis_probe.png``, ``analysis_robustness.png``; the attention maps go to
``attention_maps/`` and the anchors' fold results to ``classical/`` (each fold kept as it finishes, so a
stopped grid keeps its finished anchor folds), both reused by a rerun.
The per-speaker UAR spread and gender gap come from every finished cell.

Paper claims: :func:`paper_claims` turns the numbers into a verdict per claim of
the paper (supported / not supported / inconclusive / not measured) by the
explicit rules in ``CLAIM_RULES``; report.md prints each verdict with the
numbers that decided it and its rule.

The numbers are computed here; :mod:`moma.research.report` renders them (report.md, the
figures, the terminal summary) from ``results.json`` alone.

Statistics (per variant): accuracy, UAR and macro-F1 are averaged over folds
for each seed, then reported as mean ± std over seeds. For the confidence
interval each utterance's posteriors are averaged over seeds (every utterance
is tested exactly once per seed) and the UAR of these pooled predictions gets a
percentile bootstrap CI over utterances. The paired tests compare the
reference's UAR with each other variant's on matched (seed, fold) cells.

Modules, each importing only those above it: :mod:`~moma.research.experiment.spec` (the experiment file),
:mod:`~moma.research.experiment.corpus` (utterances and folds), :mod:`~moma.research.experiment.cells` (planning,
checking and training cells), :mod:`~moma.research.experiment.aggregate` (per-variant statistics),
:mod:`~moma.research.experiment.analysis` (per-cell analysis), :mod:`~moma.research.experiment.figures` (block-count
series, classical anchors, attention maps) and :mod:`~moma.research.experiment.run` (the driver).
"""

from moma.research.experiment.aggregate import METRIC_NAMES, aggregate_experiment
from moma.research.experiment.analysis import (
    ANALYSIS_FILE,
    ROBUSTNESS_METRICS,
    aggregate_analysis,
    analyse_cell,
    cell_checkpoint,
    probe_utterance_ids,
    read_cell_analysis,
)
from moma.research.experiment.cells import RUNTIME_KEYS, Cell, check_cell, config_signature, plan_cells, run_cells
from moma.research.experiment.corpus import experiment_folds, load_corpus
from moma.research.experiment.figures import blocks_series, pick_map_utterances, plot_attention_maps, run_anchors
from moma.research.experiment.run import run_analysis, run_experiment
from moma.research.experiment.spec import (
    ANCHOR_PREFIX,
    DEFAULT_CACHE,
    AnalysisSpec,
    ClassicalSpec,
    Experiment,
    Variant,
    anchor_name,
    load_experiment,
    parse_analysis,
    parse_classical,
)

__all__ = [
    "ANALYSIS_FILE", "ANCHOR_PREFIX", "DEFAULT_CACHE", "METRIC_NAMES", "ROBUSTNESS_METRICS", "RUNTIME_KEYS",
    "AnalysisSpec", "Cell", "ClassicalSpec", "Experiment", "Variant",
    "aggregate_analysis", "aggregate_experiment", "analyse_cell", "anchor_name", "blocks_series", "cell_checkpoint",
    "check_cell", "config_signature", "experiment_folds", "load_corpus", "load_experiment", "parse_analysis",
    "parse_classical", "pick_map_utterances", "plan_cells", "plot_attention_maps", "probe_utterance_ids",
    "read_cell_analysis", "run_analysis", "run_anchors", "run_cells", "run_experiment",
]
