#!/usr/bin/env bash
# How the weights in trained_weights/ were made, on the project's
# 2-core CPU: pre-generate noise-free training arcs once (docs/design.md §1 step 1, the
# paper's own set-up), train the four networks one after another with the
# `cpu` preset and a wall-clock budget each, train the combiner, evaluate
# everything on the fixed test set and copy the results into trained_weights/
# (tools/ship_weights.py).
#
# Usage: tools/train_shipped_weights.sh [WORK_DIR] [MINUTES_PER_NETWORK] [N_ARCS] [N_TEST]
# Defaults: scratch/shipped 25 30000 10000. Each step is skipped when its
# output exists, so the script can be rerun after an interruption; a killed
# training resumes from its last completed epoch (--resume).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-scratch/shipped}
MINUTES=${2:-25}
N_ARCS=${3:-30000}
N_TEST=${4:-10000}
NETS=(alexnet ensai_net overfeat inception_v4)
mkdir -p "$WORK"
export TF_CPP_MIN_LOG_LEVEL=2

if [ ! -f "$WORK/arcs/manifest.json" ]; then
    echo "== pre-generating $N_ARCS noise-free training arcs"
    python - "$WORK/arcs" "$N_ARCS" <<'EOF'
import sys
from ensai_tf import config
from ensai_tf.data.pipeline import pregenerate_arcs
pregenerate_arcs(sys.argv[1], int(sys.argv[2]), config=config.get_preset("cpu"))
EOF
fi

for net in "${NETS[@]}"; do
    dir="$WORK/runs/$net"
    if [ -d "$dir/saved_model" ]; then
        continue
    fi
    flag=()
    if [ -d "$dir/backup" ]; then
        flag=(--resume)
    fi
    echo "== training $net for $MINUTES min"
    ensai train --model "$net" --preset cpu --model-dir "$dir" "${flag[@]}" \
        --set "data.arcs_dir=$WORK/arcs" --set "train.time_budget_minutes=$MINUTES"
done

for net in "${NETS[@]}"; do
    if [ ! -f "$WORK/runs/$net/eval/metrics.json" ]; then
        echo "== evaluating $net on $N_TEST test lenses"
        ensai evaluate "$WORK/runs/$net" --n "$N_TEST" --out "$WORK/runs/$net/eval" --overwrite
    fi
done

# The combined network ships by reference to the shipped backbone files
# (combiner.json with their SHA-256), so the networks are shipped first and the
# combiner merges those very files. docs/design.md §7.4: Overfeat is the parity reference.
if [ ! -d "$WORK/runs/combined/saved_model" ]; then
    echo "== shipping the four networks"
    python tools/ship_weights.py "$WORK/runs" --only "${NETS[@]}"
    echo "== training the combiner"
    ensai combine --models trained_weights/overfeat trained_weights/ensai_net \
        trained_weights/alexnet trained_weights/inception_v4 \
        --model-dir "$WORK/runs/combined" --overwrite
fi
if [ ! -f "$WORK/runs/combined/eval/metrics.json" ]; then
    echo "== evaluating combined on $N_TEST test lenses"
    ensai evaluate "$WORK/runs/combined" --n "$N_TEST" --out "$WORK/runs/combined/eval" --overwrite
fi
python tools/ship_weights.py "$WORK/runs" --only combined
# Per-lens intervals (docs/design.md §6.7): the combined network from its members' spread, the
# single networks from the spread of their eight flipped and rotated views, each calibrated on
# validation lenses; then the combined network's coverage on the test set.
echo "== calibrating intervals on validation lenses"
ensai calibrate trained_weights/combined --n 10000
for NAME in alexnet overfeat ensai_net inception_v4; do
    ensai calibrate "trained_weights/$NAME" --n 3000
done
ensai evaluate trained_weights/combined --n "$N_TEST" --out "$WORK/eval-combined" --overwrite
cp "$WORK/eval-combined/"{table1.md,figure1.png,calibration.png} trained_weights/combined/
python - "$WORK/eval-combined/metrics.json" <<'PY'
import json, sys
new, old = json.load(open(sys.argv[1])), json.load(open("trained_weights/combined/metrics.json"))
new["check"] = old["check"]  # the check subset of tests/test_trained_weights.py stays
open("trained_weights/combined/metrics.json", "w").write(json.dumps(new, indent=1) + "\n")
PY
for NAME in alexnet overfeat ensai_net inception_v4; do
    python tools/ship_weights.py "$WORK/reeval" --reevaluate --only "$NAME"
done
# The screening network behind the quality flags (docs/design.md §8.7); it fits its own
# thresholds on clean validation lenses and serves every model.
if [ ! -f trained_weights/screen/screen.json ]; then
    echo "== training the screening network"
    python tools/train_screen.py trained_weights/screen --cache "$WORK/screen_images"
fi
# The single-band network that sees the lens galaxy (docs/design.md §4, §5.7): AlexNet warm-started
# from the shipped one, first at the arcs' scale, then with every image divided by its own peak.
if [ ! -f "$WORK/arcs_lens_light/manifest.json" ]; then
    echo "== pre-generating 20000 noise-free training arcs with lens light"
    python - "$WORK/arcs_lens_light" <<'EOF'
import dataclasses, sys
from ensai_tf import config
from ensai_tf.data.arcstore import pregenerate_arcs
cfg = config.get_preset("cpu")
cfg = dataclasses.replace(cfg, simulate=dataclasses.replace(cfg.simulate, lens_light=True))
pregenerate_arcs(sys.argv[1], 20000, seed=40, config=cfg)
EOF
fi
LL=(--model alexnet --preset cpu --set simulate.lens_light=true
    --set "data.arcs_dir=$WORK/arcs_lens_light" --set train.learning_rate=1e-4)
if [ ! -d "$WORK/runs/alexnet_lens_light_1/saved_model" ]; then
    ensai train "${LL[@]}" --model-dir "$WORK/runs/alexnet_lens_light_1" \
        --set train.init_weights=trained_weights/alexnet/model.keras \
        --set train.time_budget_minutes=85
fi
if [ ! -d "$WORK/runs/alexnet_lens_light/saved_model" ]; then
    ensai train "${LL[@]}" --model-dir "$WORK/runs/alexnet_lens_light" \
        --set observe.peak_normalise=true \
        --set "train.init_weights=$WORK/runs/alexnet_lens_light_1/model.keras" \
        --set train.time_budget_minutes=50
fi
# the test lenses with their lens light, each image over its own peak, as the network was trained
LL_TEST=(--set simulate.lens_light=true --set observe.peak_normalise=true
         --set "simulate.lens_light_amplitude=[1.0,10.0]" --n 10000)
ensai calibrate "$WORK/runs/alexnet_lens_light" --n 3000
ensai evaluate "$WORK/runs/alexnet_lens_light" "${LL_TEST[@]}" \
    --out "$WORK/runs/alexnet_lens_light/eval" --overwrite
# The two-band network (docs/design.md §5.10): the same arcs and lens light in blue and red as
# channels, warm-started from the single-band lens-light network.
if [ ! -d "$WORK/runs/alexnet_two_band/saved_model" ]; then
    ensai train "${LL[@]}" --model-dir "$WORK/runs/alexnet_two_band" \
        --set bands.count=2 --set observe.peak_normalise=true \
        --set "train.init_weights=$WORK/runs/alexnet_lens_light/model.keras" \
        --set train.time_budget_minutes=75
fi
ensai calibrate "$WORK/runs/alexnet_two_band" --n 3000
ensai evaluate "$WORK/runs/alexnet_two_band" "${LL_TEST[@]}" --set bands.count=2 \
    --out "$WORK/runs/alexnet_two_band/eval" --overwrite
echo "== done: trained_weights/ holds the new networks, combiner, calibrations and screen;"
echo "   $WORK/runs/alexnet_lens_light and $WORK/runs/alexnet_two_band are the lens-light"
echo "   networks (copy their model.keras, config.yaml, log.csv and eval/ reports to"
echo "   trained_weights/alexnet_lens_light and trained_weights/alexnet_two_band)"
