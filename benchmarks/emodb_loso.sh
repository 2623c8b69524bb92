#!/usr/bin/env bash
# Reproduces reports/emodb-loso-7class: EmoDB, 7 classes, leave-one-speaker-out (10 folds), one run per
# recipe variant and normalisation setting. Each run resumes where it stopped if interrupted.
#
#   benchmarks/emodb_loso.sh EMODB_ROOT [OUT_DIR] [DEVICE] [JOBS] [VARIANT...]
#
# DEVICE is cpu (default) or cuda; JOBS folds train in parallel processes. The committed reports were
# made on one H100 (device cuda, the jobs given in each report's command). On 2 CPU cores a CPU-sized
# variant takes about 20-30 minutes and the paper configuration several hours.
set -euo pipefail
root=${1:?usage: $0 EMODB_ROOT [OUT_DIR] [DEVICE] [JOBS] [VARIANT...]}
out=${2:-runs/emodb-loso-7class}
device=${3:-cpu}
jobs=${4:-1}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$out"
manifest="$out/emodb.jsonl"
[ -f "$manifest" ] || moma prepare emodb --root "$root" --out "$manifest"

declare -A variants=(
  [paper-global]="--config paper"
  [paper-speaker]="--config paper --set data.normalisation=speaker"
  [cpu-global]="--config emodb-cpu"
  [cpu-speaker]="--config emodb-cpu --set data.normalisation=speaker"
  [cpu256-global]="--config emodb-cpu --set model.hidden_size=256"
  [cpu-global-ens5]="--config emodb-cpu --set train.ensemble=5"
  [pitch-global]="--config emodb-cpu --set features.pitch=true"
  [pitch-speaker]="--config emodb-cpu --set features.pitch=true --set data.normalisation=speaker"
  [pitch-global-ens3]="--config emodb-cpu --set features.pitch=true --set train.ensemble=3"
  [pitch-speaker-ens3]="--config emodb-cpu --set features.pitch=true --set train.ensemble=3 --set data.normalisation=speaker"
  [pitch-global-ens3-rotate]="--config emodb-cpu --set features.pitch=true --set train.ensemble=3 --set train.ensemble_validation=rotate"
  [pitch-global-adv]="--config emodb-cpu --set features.pitch=true --set train.speaker_adversarial=0.5"
  [egemaps-global]="--config emodb-cpu --set features.pitch=true --set features.lld=egemaps"
  [compare-global]="--config emodb-cpu --set features.pitch=true --set features.lld=compare"
  [compare-speaker]="--config emodb-cpu --set features.pitch=true --set features.lld=compare --set data.normalisation=speaker"
  [compare-global-ens3]="--config emodb-cpu --set features.pitch=true --set features.lld=compare --set train.ensemble=3"
  [compare-global-ens3-rotate]="--config emodb-cpu --set features.pitch=true --set features.lld=compare --set train.ensemble=3 --set train.ensemble_validation=rotate"
  [compare-global-adv]="--config emodb-cpu --set features.pitch=true --set features.lld=compare --set train.speaker_adversarial=0.5"
  [fusion-egemaps-global]="--config emodb-cpu --set features.pitch=true --set features.lld=compare --set features.functionals=eGeMAPSv02"
  [fusion-compare-global]="--config emodb-cpu --set features.pitch=true --set features.lld=compare --set features.functionals=ComParE_2016"
)
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=(pitch-global-ens3 pitch-speaker-ens3)
for name in "${selected[@]}"; do
  [ -n "${variants[$name]:-}" ] || { echo "unknown variant $name; known: ${!variants[*]}" >&2; exit 2; }
  # shellcheck disable=SC2086
  moma cv --manifest "$manifest" --out "$out/$name" --protocol loso --jobs "$jobs" -q \
    ${variants[$name]} --set train.device="$device"
done
