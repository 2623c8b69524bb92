#!/usr/bin/env bash
# Reproduces the reports made on more than one corpus, one command per report:
#
#   benchmarks/multi_corpus.sh nemo-loso        [VARIANT...]   # reports/nemo-loso: nEMO 6 classes, leave one actor out
#   benchmarks/multi_corpus.sh loco             [VARIANT...]   # reports/loco: EmoDB <-> nEMO over their 5 shared classes
#   benchmarks/multi_corpus.sh pool-emodb-loso  [VARIANT...]   # reports/pool-emodb-loso: EmoDB LOSO trained with nEMO
#
# Without VARIANTs a suite runs its anchors, its headline MOMA runs, their late fusions and the paired
# comparisons of its README; `benchmarks/multi_corpus.sh SUITE list` names every variant. Environment:
# EMODB and NEMO (corpus roots; default ../shared/corpora/emodb, ../local-corpora/nemo), OUT (default runs),
# JOBS (folds trained at once, default 1), DRY_RUN=1 prints the commands instead of running them.
# Every `moma cv` and `moma classical` run resumes where it stopped. On 2 CPU cores a CPU-sized MOMA fold of
# nEMO takes 10-20 minutes, and the ComParE + SVM anchor's inner speaker folds 35-40 minutes per outer fold
# (on a fresh checkout, `--resume-from reports/nemo-loso/classical-compare/report.json` reuses the committed
# folds instead: see that README).
set -euo pipefail
suite=${1:?usage: $0 nemo-loso|loco|pool-emodb-loso [VARIANT...|list]}
shift
EMODB=${EMODB:-../shared/corpora/emodb}
NEMO=${NEMO:-../local-corpora/nemo}
OUT=${OUT:-runs}
JOBS=${JOBS:-1}

run() {  # one moma command, or its text under DRY_RUN
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "moma $*"; else moma "$@"; fi
}

# the cpu recipe as every nEMO and leave-one-corpus-out MOMA run uses it, and TRAIN, the recipe those runs start
# from (reports/nemo-loso/README.md): BASE with per-utterance normalisation and the (corpus, class)-balanced loss
BASE="--config cpu --set train.val_speakers=2 --set train.max_epochs=20 --set train.early_stop_patience=6 \
--set train.min_epochs=3 --set train.monitor_smoothing=0.5 --set train.num_threads=1 --set train.tensorboard=false"
TRAIN="$BASE --set data.normalisation=utterance --set train.balance=corpus-class"
LLD="--set features.pitch=true --set features.lld=compare"
REG="--set model.dropout=0.5 --set train.weight_decay=0.5 --set train.label_smoothing=0.1"
declare -A variants=()  # name -> the moma command and its options, --out and --jobs added below
defaults=()
case "$suite" in
  nemo-loso)
    out=$OUT/nemo-loso; on="--manifest $OUT/nemo.jsonl --protocol loso"
    variants=(
      [classical-egemaps]="classical $on --feature-sets eGeMAPSv02 --normalisations global"
      [classical-compare]="classical $on --feature-sets ComParE_2016 --normalisations global"
      [moma]="cv $on $TRAIN"
      [moma-raw-choice]="cv $on $TRAIN --set train.min_epochs=0 --set train.monitor_smoothing=0"
      [pitch-compare-lld]="cv $on $TRAIN $LLD"
      [pitch-compare-lld-ens2]="cv $on $TRAIN $LLD --set train.ensemble=2 --set train.ensemble_validation=rotate"
      [pitch-compare-lld-ens3]="cv $on $TRAIN $LLD --set train.ensemble=3 --set train.ensemble_validation=rotate"
      [pitch-compare-lld-noval-e12]="cv $on $TRAIN $LLD --set train.val_speakers=0 --set train.max_epochs=12"
      # the descriptor recipe with the frames standardised by the training actors' statistics (strict, as the SVMs
      # standardise), so that an utterance's level of pitch and loudness is kept rather than removed
      [pitch-compare-lld-global]="cv $on $TRAIN $LLD --set data.normalisation=global"
      # the descriptor recipe regularised harder against the same over-fitting: dropout 0.5 (from 0.3), decoupled
      # weight decay 0.5 (lr x decay x steps ~ 1 over 20 epochs, where the cpu recipe's 1e-4 shrinks nothing) and
      # label smoothing 0.1 (the validation loss triples while the UAR creeps up: over-confidence)
      [pitch-compare-lld-reg]="cv $on $TRAIN $LLD $REG"
      # that recipe as a 2- and a 3-member seed ensemble, each member after the first validating on two other actors
      [pitch-compare-lld-reg-ens2]="cv $on $TRAIN $LLD $REG --set train.ensemble=2 --set train.ensemble_validation=rotate"
      [pitch-compare-lld-reg-ens3]="cv $on $TRAIN $LLD $REG --set train.ensemble=3 --set train.ensemble_validation=rotate"
      [fusion-egemaps]="cv $on $TRAIN --set features.functionals=eGeMAPSv02"
      [fusion-compare]="cv $on $TRAIN --set features.functionals=ComParE_2016"
      # the descriptor recipe trained on the pool: every EmoDB actor joins the eight training actors (18 speakers
      # instead of 8), validation on 2 actors of each corpus, the loss balanced over (corpus, class) as in pool-cpu;
      # tested on the held-out nEMO actor over nEMO's six classes
      [pool-pitch-compare-lld]="cv --manifest $OUT/pool.jsonl --protocol loso --test-corpus nemo $TRAIN $LLD \
--set train.val_speakers=4"
    )
    defaults=(classical-egemaps classical-compare moma pitch-compare-lld pitch-compare-lld-ens2)
    ;;
  loco)
    out=$OUT/loco; on="--manifest $OUT/pool-shared.jsonl --protocol loco"
    variants=(
      [classical-egemaps]="classical $on --feature-sets eGeMAPSv02 --normalisations global corpus speaker"
      [classical-compare]="classical $on --feature-sets ComParE_2016 --normalisations global"
      [moma-global]="cv $on $BASE"
      [moma-utterance]="cv $on $BASE --set data.normalisation=utterance"
      [moma-utterance-balanced]="cv $on $TRAIN"
      [fusion-egemaps]="cv $on $TRAIN --set features.functionals=eGeMAPSv02"
      [fusion-compare]="cv $on $TRAIN --set features.functionals=ComParE_2016"
      [pitch-compare-lld]="cv $on $TRAIN $LLD"
    )
    # seeds and recipes of the bundled models' kind (reports/loco/README.md, "Seeds"): the reference, pool-cpu as
    # shipped (4 validation speakers of one training corpus) and with 2, and
    # pool-egemaps-cpu (the default bundled model's recipe) with 2 as it was trained, and with level-invariant
    # functionals
    POOL="--config pool-cpu --set train.num_threads=1 --set train.tensorboard=false"
    POOL_EGEMAPS="--config pool-egemaps-cpu --set train.num_threads=1 --set train.tensorboard=false"
    for seed in 0 1 2; do
      sfx=$([ "$seed" = 0 ] || echo "-seed$seed"); s="--set train.seed=$seed"
      [ "$seed" = 0 ] || variants[moma-utterance-balanced$sfx]="cv $on $TRAIN $s"
      variants[pool-cpu$sfx]="cv $on $POOL $s"
      variants[pool-cpu-val2$sfx]="cv $on $POOL --set train.val_speakers=2 $s"
      variants[pool-egemaps-val2$sfx]="cv $on $POOL_EGEMAPS --set train.val_speakers=2 $s"
      # the same with the functionals read at a fixed active-speech level (features.functionals_level)
      variants[pool-egemaps-level-val2$sfx]="cv $on $POOL_EGEMAPS --set train.val_speakers=2 --set features.functionals_level=-26 $s"
    done
    defaults=(classical-egemaps moma-utterance-balanced fusion-egemaps)
    ;;
  pool-emodb-loso)
    out=$OUT/pool-emodb-loso
    rest="--set train.num_threads=1 --set train.tensorboard=false"
    # the EmoDB-only control: the pool-cpu recipe on the other EmoDB actors alone, 2 of them validating
    only="cv --manifest $OUT/emodb.jsonl --protocol loso --config pool-cpu --set train.val_speakers=2"
    variants=(
      [pool-cpu]="cv --manifest $OUT/pool.jsonl --protocol loso --test-corpus emodb --config pool-cpu \
--set train.max_epochs=20 --set train.early_stop_patience=6 $rest"
      [emodb-only-pool-cpu]="$only $rest"
      [pool-egemaps-cpu]="cv --manifest $OUT/pool.jsonl --protocol loso --test-corpus emodb --config pool-egemaps-cpu \
--set train.max_epochs=20 --set train.early_stop_patience=6 $rest"
      [emodb-only-raw-choice]="$only --set train.min_epochs=0 --set train.monitor_smoothing=0 $rest"
      # the same regularised harder, as nEMO's pitch-compare-lld-reg (dropout 0.5, weight decay 0.5, label smoothing 0.1)
      [emodb-only-reg]="$only $REG $rest"
    )
    defaults=(pool-cpu emodb-only-pool-cpu)
    ;;
  *) echo "unknown suite $suite; choose nemo-loso, loco or pool-emodb-loso" >&2; exit 2 ;;
esac
if [ "${1:-}" = list ]; then printf '%s\n' "${!variants[@]}" | sort; exit 0; fi
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${defaults[@]}")
for name in "${selected[@]}"; do
  [ -n "${variants[$name]:-}" ] || { echo "unknown $suite variant $name; known: ${!variants[*]}" >&2; exit 2; }
done

mkdir -p "$OUT"
# manifests, made from what the selected variants read: each corpus once, the pools from them
commands=""
for name in "${selected[@]}"; do commands+=" ${variants[$name]} "; done
reads() { [[ "$commands" == *" --manifest $OUT/$1 "* ]]; }
if reads emodb.jsonl || reads pool.jsonl || reads pool-shared.jsonl; then
  [ -f "$OUT/emodb.jsonl" ] || run prepare emodb --root "$EMODB" --out "$OUT/emodb.jsonl"
fi
[ -f "$OUT/nemo.jsonl" ] || run prepare nemo --root "$NEMO" --out "$OUT/nemo.jsonl"
if reads pool-shared.jsonl && [ ! -f "$OUT/pool-shared.jsonl" ]; then
  run pool "$OUT/emodb.jsonl" "$OUT/nemo.jsonl" --labels shared --out "$OUT/pool-shared.jsonl"
fi
if reads pool.jsonl && [ ! -f "$OUT/pool.jsonl" ]; then
  run pool "$OUT/emodb.jsonl" "$OUT/nemo.jsonl" --out "$OUT/pool.jsonl"
fi

for name in "${selected[@]}"; do
  # shellcheck disable=SC2086  # the variant's options are meant to split into words
  set -- ${variants[$name]}
  command=$1; shift
  run "$command" "$@" --jobs "$JOBS" -q --out "$out/$name"
done

# late fusions and paired comparisons over what this suite has made
has() { [ "${DRY_RUN:-0}" = 1 ] || [ -f "$out/$1/report.json" ]; }
case "$suite" in
  nemo-loso)
    svm_c="$out/classical-compare/report.json#ComParE_2016/global"
    svm_e="$out/classical-egemaps/report.json#eGeMAPSv02/global"
    fused=()
    declare -A fusion=([pitch-compare-lld]=late-fusion-lld-compare [pitch-compare-lld-ens2]=late-fusion-lld-ens2-compare)
    for net in pitch-compare-lld pitch-compare-lld-ens2; do
      if has "$net" && has classical-compare; then
        run fuse "$out/$net" "$svm_c" --out "$out/${fusion[$net]}"; fused+=("$out/${fusion[$net]}")
      fi
    done
    if has classical-compare && has moma && has classical-egemaps; then
      others=()
      for net in moma pitch-compare-lld pitch-compare-lld-ens2; do has "$net" && others+=("$out/$net"); done
      run compare "$svm_c" "${others[@]}" "${fused[@]}" "$svm_e" --out "$out/comparisons/vs-compare"
    fi
    ;;
  loco)
    if has moma-utterance-balanced && has classical-egemaps; then
      others=()
      for net in fusion-egemaps pitch-compare-lld; do has "$net" && others+=("$out/$net"); done
      run compare "$out/moma-utterance-balanced" "${others[@]}" "$out/classical-egemaps/report.json#eGeMAPSv02/global" \
        --unit speaker --out "$out/comparisons/vs-balanced"
    fi
    ;;
  pool-emodb-loso)
    if has pool-cpu; then  # against the committed EmoDB-only figures on the same test actors
      run compare reports/emodb-loso-7class/compare-global-ens3-rotate "$out/pool-cpu" \
        'reports/emodb-classical/report.json#eGeMAPSv02/global' 'reports/emodb-classical/report.json#ComParE_2016/global' \
        --out "$out/comparisons/vs-best-emodb-only"
    fi
    if has pool-cpu && has emodb-only-pool-cpu; then
      run compare "$out/emodb-only-pool-cpu" "$out/pool-cpu" --out "$out/comparisons/pool-vs-alone"
    fi
    ;;
esac
