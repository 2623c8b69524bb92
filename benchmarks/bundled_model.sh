#!/usr/bin/env bash
# The bundled models of EmoDB + nEMO: MOMA trained on every speaker of both corpora, the union of their classes
# (8), calibrated on its 4 validation speakers (2 per corpus); benchmarks/bundle_model.py then writes the
# checkpoint into the package.
#   benchmarks/bundled_model.sh ../shared/corpora/emodb ../local-corpora/nemo runs/bundled-v3   # emodb-nemo-egemaps-8class
#   RECIPE=pool-cpu benchmarks/bundled_model.sh ../shared/corpora/emodb ../local-corpora/nemo runs/bundled-v2   # emodb-nemo-8class
# RECIPE: pool-egemaps-cpu (default: the default bundled model, MOMA + eGeMAPS functionals) or pool-cpu.
set -euo pipefail
EMODB=${1:-../shared/corpora/emodb}
NEMO=${2:-../local-corpora/nemo}
OUT=${3:-runs/bundled-v3}
RECIPE=${RECIPE:-pool-egemaps-cpu}
mkdir -p "$OUT"
moma prepare emodb --root "$EMODB" --out "$OUT/emodb.jsonl"
moma prepare nemo --root "$NEMO" --out "$OUT/nemo.jsonl"
moma pool "$OUT/emodb.jsonl" "$OUT/nemo.jsonl" --labels union --out "$OUT/pool.jsonl"
moma train --manifest "$OUT/pool.jsonl" --protocol all --config "$RECIPE" --set train.num_threads=1 \
  --set train.tensorboard=false --out "$OUT" -q
