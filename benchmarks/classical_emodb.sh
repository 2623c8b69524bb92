#!/usr/bin/env bash
# The classical anchor of issue 3 on EmoDB: openSMILE functionals (eGeMAPSv02, ComParE_2016) + linear SVM,
# leave-one-speaker-out on the same folds as the MOMA runs, with global (training speakers only) and
# per-speaker (transductive) normalisation. Writes reports/emodb-classical/report.{md,json}.
#
# Usage, from a fresh checkout:  benchmarks/classical_emodb.sh /path/to/emodb   (the folder holding wav/)
# Environment: PYTHON (default: .venv/bin/python if present, else python3), OUT (default
# reports/emodb-classical), CACHE (default cache/opensmile), MANIFEST (default runs/emodb.jsonl).
# Needs the package installed with its classical extra:  pip install -e '.[classical]'  (opensmile).
# One process; about 40 s of extraction and a few minutes of SVM fits on one CPU core.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1/wav" ]; then
    echo "usage: $0 EMODB_ROOT   (the EmoDB folder that holds wav/)" >&2
    exit 2
fi
ROOT=$1
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-reports/emodb-classical}
CACHE=${CACHE:-cache/opensmile}
MANIFEST=${MANIFEST:-runs/emodb.jsonl}
# single-threaded BLAS: liblinear is single-threaded anyway and the machine may be shared
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

"$PYTHON" -c "import opensmile" 2>/dev/null || {
    echo "opensmile is not installed: pip install -e '.[classical]'  (or pip install opensmile)" >&2
    exit 1
}
if [ ! -f "$MANIFEST" ]; then
    "$PYTHON" -m moma prepare emodb --root "$ROOT" --out "$MANIFEST"
fi
"$PYTHON" -m moma classical --manifest "$MANIFEST" --out "$OUT" --cache "$CACHE" \
    --feature-sets eGeMAPSv02 ComParE_2016 --normalisations global speaker --protocol loso --seed 0 \
    --workers 1 -q
