#!/usr/bin/env bash
# The two-stage paper's grid (002, Table 1: models 1-12) as one command, then its
# Tables 1, 3, 4 and 5 from the pooled test predictions.
#
#   docs/methods/twostage_grid.sh STORE AUDIO_STREAM,VIDEO_STREAM OUT [avx fuse train options...]
#
# e.g. on CREMA-D, as the paper:
#   docs/methods/twostage_grid.sh cremad.zarr audio/wavlm-large@all,video/mobilenetv2 runs/grid --device cuda
# Every row is `avx fuse train --preset twostage-grid:N --trials $TRIALS` (default 5 folds)
# with the options given after OUT; re-running resumes (finished folds are kept).
# Wall time per row goes to OUT/times.txt. AVX overrides the command (default: uv run avx).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
store=$1
streams=$2
out=$3
shift 3
avx=${AVX:-uv run avx}
mkdir -p "$out"
runs=()
for n in $(seq 1 12); do
  start=$(date +%s)
  $avx fuse train --preset "twostage-grid:$n" --store "$store" --streams "$streams" \
    --trials "${TRIALS:-5}" --out "$out/model-$n" --resume "$@"
  echo "model $n: $(($(date +%s) - start)) s" | tee -a "$out/times.txt"
  runs+=("$out/model-$n")
done
$avx fuse compare "${runs[@]}" --tables --names 1,2,3,4,5,6,7,8,9,10,11,12 --reference 10 \
  --groups sex,race,age --out "$out/tables"
