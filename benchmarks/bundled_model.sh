#!/usr/bin/env bash
# The bundled emodb-nemo-8class model: MOMA (pool-cpu recipe) trained on every speaker of EmoDB + nEMO, the union
# of their classes (8), calibrated on its 4 validation speakers (2 per corpus), then written into the package.
#   benchmarks/bundled_model.sh ../shared/corpora/emodb ../local-corpora/nemo runs/bundled-v2
set -euo pipefail
EMODB=${1:-../shared/corpora/emodb}
NEMO=${2:-../local-corpora/nemo}
OUT=${3:-runs/bundled-v2}
mkdir -p "$OUT"
moma prepare emodb --root "$EMODB" --out "$OUT/emodb.jsonl"
moma prepare nemo --root "$NEMO" --out "$OUT/nemo.jsonl"
moma pool "$OUT/emodb.jsonl" "$OUT/nemo.jsonl" --labels union --out "$OUT/pool.jsonl"
moma train --manifest "$OUT/pool.jsonl" --protocol all --config pool-cpu --set train.num_threads=1 \
  --set train.tensorboard=false --out "$OUT" -q
