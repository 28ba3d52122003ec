#!/usr/bin/env bash
# Every stage of every network in trained_weights/, from scratch, on the project's 2-core CPU,
# as the stage table of trained_weights/README.md records it: the training-arc sets and their
# pregenerate_arcs seeds, the learning rates, the wall-clock budgets and the options of each
# stage. Then the combiner, the interval calibrations, the test-set reports and the screening
# network.
#
# A stage starts from the network's weights in trained_weights/ (train.init_weights) and is
# shipped only when it beats them on the first 2,000 lenses of the fixed validation split
# (tools/compare_on_validation.py --best), never judged on the test set; tools/ship_weights.py
# then appends its epochs to the network's log.csv as the next stage. The first stage of each
# network trains from nothing on both cores (alexnet_shear's from the shipped alexnet; that of
# alexnet_gaussian from the shipped alexnet on one core), every later stage on one core, as they
# were. Budgets are wall-clock minutes, so on another machine a
# stage runs for the same time, not the same number of epochs.
#
# Usage: tools/train_shipped_weights.sh [WORK_DIR] [N_TEST]
# Defaults: scratch/shipped 10000. About 21 hours of training. Arc sets, stages and trainings
# whose output exists are skipped, so the script can be rerun after an interruption (a killed
# stage resumes from its last completed epoch, --resume); calibrations and evaluations run again.
# DRY_RUN=1 prints the commands without running them.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-scratch/shipped}
N_TEST=${2:-10000}
export TF_CPP_MIN_LOG_LEVEL=2
SHIPPED=trained_weights

run() {  # print a command (on stderr), then run it unless DRY_RUN is set
    echo "+ $*" >&2
    if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

pregenerate_arcs() {  # pregenerate_arcs DIR COUNT SEED [OVERRIDE...] (cpu preset + overrides)
    python -c 'import sys
from ensai_tf import config
from ensai_tf.data.arcstore import pregenerate_arcs
cfg = config.apply_overrides(config.get_preset("cpu"), sys.argv[4:])
pregenerate_arcs(sys.argv[1], int(sys.argv[2]), seed=int(sys.argv[3]), config=cfg)' "$@"
}

arcs() {  # arcs NAME COUNT SEED [OVERRIDE...]: noise-free training arcs, made once
    local dir="$WORK/arcs/$1"
    shift
    if [ ! -f "$dir/manifest.json" ]; then run pregenerate_arcs "$dir" "$@"; fi
}

stage() {  # stage NET K ARCS LR MINUTES [--set ... ...]: train stage K, ship it if better
    local net=$1 k=$2 arcs_name=$3 lr=$4 minutes=$5
    shift 5
    local runs="$WORK/stage$k" dir="$WORK/stage$k/$net"
    if [ -f "$dir/stage_done" ]; then return 0; fi
    local model=${net%_shear}  # alexnet_shear and alexnet_gaussian are AlexNets
    model=${model%_gaussian}
    local pin=(taskset -c 0) from=(--set "train.init_weights=$SHIPPED/$net/model.keras")
    if [ "$k" = 1 ]; then
        pin=()
        from=()
        case $net in
            alexnet_shear) from=(--set "train.init_weights=$SHIPPED/alexnet/model.keras") ;;
            alexnet_gaussian) from=(--set "train.init_weights=$SHIPPED/alexnet/model.keras")
                              pin=(taskset -c 0) ;;
        esac
    fi
    local resume=()
    if [ -d "$dir/backup" ]; then resume=(--resume); fi
    echo "== $net, stage $k: lr $lr, $minutes min, arcs $arcs_name"
    if [ ! -f "$dir/model.keras" ]; then
        # ${a[@]+"${a[@]}"}: an empty array expands to nothing under set -u in every bash
        run ${pin[@]+"${pin[@]}"} ensai train --model "$model" --preset cpu --model-dir "$dir" \
            ${resume[@]+"${resume[@]}"} ${from[@]+"${from[@]}"} \
            --set "data.arcs_dir=$WORK/arcs/$arcs_name" --set "train.learning_rate=$lr" \
            --set "train.time_budget_minutes=$minutes" "$@"
    fi
    local best="$dir"
    if [ -f "$SHIPPED/$net/model.keras" ] && [ "$k" != 1 ]; then
        best=$(run python tools/compare_on_validation.py "$SHIPPED/$net" "$dir" --n 2000 --best)
    fi
    if [ -n "${DRY_RUN:-}" ] || [ "$best" = "$dir" ]; then
        ship "$net" "$runs"
    fi
    if [ -z "${DRY_RUN:-}" ]; then echo "kept: $best" > "$dir/stage_done"; fi
}

ship() {  # ship NET RUNS: evaluate RUNS/NET on the test set and copy it into trained_weights/
    local net=$1 runs=$2
    if [ "$net" = alexnet_shear ]; then
        run ensai calibrate "$runs/$net" --preset paper --experiment shear --n 3000
        run ensai evaluate "$SHIPPED/alexnet" "$runs/$net" --experiment shear \
            --out "$runs/shear_cmp" --overwrite
    fi
    if [ "$net" = alexnet_gaussian ]; then
        run ensai calibrate "$runs/$net" --preset paper --n 3000
    fi
    run ensai evaluate "$runs/$net" --n "$N_TEST" --out "$runs/$net/eval" --overwrite
    run python tools/ship_weights.py "$runs" --only "$net"
}

# The training arcs of every stage: (name, count, pregenerate_arcs seed, options)
arcs pool0 20000 0
arcs pool0_30k 30000 0
for seed in 19 20 21 22 24; do arcs "pool$seed" 20000 "$seed"; done
arcs shear 20000 0 lens.shear=true
arcs shear23 20000 23 lens.shear=true
arcs lens_light 20000 40 simulate.lens_light=true
arcs lens_light41 20000 41 simulate.lens_light=true
arcs lens_light42 20000 42 simulate.lens_light=true

# The screening network behind the quality flags (docs/design.md §8.7): it fits its own
# thresholds on clean validation lenses and serves every model, so it comes before every
# calibration (alexnet_shear's among the stages), which fit the flag thresholds with it.
if [ ! -f "$WORK/screen/screen.json" ]; then
    run python tools/train_screen.py "$WORK/screen" --cache "$WORK/screen_images"
fi
run cp "$WORK/screen/model.keras" "$WORK/screen/screen.json" "$SHIPPED/screen/"

FREEZE=(--set train.freeze_batch_norm=true)
GAUSSIAN=(--set model.head=diagonal)
SHEAR=(--set lens.shear=true --set model.shear_outputs=true
       --set model.head=diagonal --set data.val_size=1000)
#     network          k arcs       lr   min
stage alexnet          1 pool0      3e-4  25
stage alexnet          2 pool0_30k  1e-4  44
stage alexnet          3 pool20     3e-5  71
stage overfeat         1 pool0      3e-4  25
stage overfeat         2 pool0_30k  1e-4  42
stage overfeat         3 pool20     3e-5  71
stage ensai_net        1 pool0      3e-4  25
stage ensai_net        2 pool0      3e-4  30
stage ensai_net        3 pool19     3e-5  66
stage ensai_net        4 pool21     3e-5 102
stage inception_v4     1 pool0      3e-4  25
stage inception_v4     2 pool0      3e-5  30
stage inception_v4     3 pool20     3e-5  81 "${FREEZE[@]}"
stage inception_v4     4 pool21     3e-5 105 "${FREEZE[@]}"
stage inception_v4     5 pool22     3e-5  98 "${FREEZE[@]}"
stage alexnet_shear    1 shear      3e-4  30 "${SHEAR[@]}"
stage alexnet_shear    2 shear23    3e-5  81 "${SHEAR[@]}"
stage alexnet_gaussian 1 pool24     1e-4  70 "${GAUSSIAN[@]}"

# Intervals of the single networks (docs/design.md §6.7): the spread of their eight views,
# calibrated on validation lenses, then their coverage on the test set.
for net in alexnet overfeat ensai_net inception_v4; do
    run ensai calibrate "$SHIPPED/$net" --n 3000
    run python tools/ship_weights.py "$WORK/reeval" --reevaluate --only "$net"
done

# The combined network ships by reference to the shipped backbone files (combiner.json with
# their SHA-256); docs/design.md §7.4: Overfeat is the parity reference, the weights are fitted
# with the cpu preset's log-cosh loss over the networks' predictions of 800 x 32 fresh lenses.
# Three AlexNet-sized backbones average four rotations of the image, alexnet_gaussian the four
# views that keep x and y, and the two slow ones see it as given (§8.6).
if [ ! -f "$WORK/combine/combined/combiner.json" ]; then
    run ensai combine --models "$SHIPPED/overfeat" "$SHIPPED/ensai_net" "$SHIPPED/alexnet" \
        "$SHIPPED/inception_v4" "$SHIPPED/alexnet_shear" "$SHIPPED/alexnet_gaussian" \
        --model-dir "$WORK/combine/combined" --steps 800 --set train.combine_views=4 \
        --set "train.single_view_backbones=[ensai_net,inception_v4]" \
        --set "train.split_view_backbones=[alexnet_gaussian]" --overwrite
    run ensai evaluate "$WORK/combine/combined" --n "$N_TEST" --out "$WORK/combine/combined/eval" \
        --overwrite
    run python tools/ship_weights.py "$WORK/combine" --only combined
fi
run ensai calibrate "$SHIPPED/combined" --n 10000
run python tools/ship_weights.py "$WORK/reeval" --reevaluate --only combined
run ensai evaluate "$SHIPPED/combined" --experiment trust --n 500 --out "$WORK/trust" --overwrite
if [ -z "${DRY_RUN:-}" ]; then
    cp "$WORK/reeval/combined/calibration.png" "$WORK/trust/"{trust.md,trust.json} \
        "$WORK/trust/"{reliability.png,flag_rates.png} "$SHIPPED/combined/"
fi

# The single-band network that sees the lens galaxy (docs/design.md §4, §5.7): AlexNet
# warm-started from the shipped one, first at the arcs' scale, then with every image divided by
# its own peak, then twice on 20,000 fresh arcs; and the two-band network (docs/design.md §5.10)
# warm-started from the second stage.
LL=(--model alexnet --preset cpu --set simulate.lens_light=true --set train.learning_rate=1e-4)
LL_TEST=(--set simulate.lens_light=true --set observe.peak_normalise=true
         --set "simulate.lens_light_amplitude=[1.0,10.0]")
if [ ! -d "$WORK/lens_light/stage1/saved_model" ]; then
    run ensai train "${LL[@]}" --model-dir "$WORK/lens_light/stage1" \
        --set "data.arcs_dir=$WORK/arcs/lens_light" \
        --set "train.init_weights=$SHIPPED/alexnet/model.keras" --set train.time_budget_minutes=85
fi
if [ ! -d "$WORK/lens_light/stage2/saved_model" ]; then
    run taskset -c 0 ensai train "${LL[@]}" --model-dir "$WORK/lens_light/stage2" \
        --set "data.arcs_dir=$WORK/arcs/lens_light" --set observe.peak_normalise=true \
        --set "train.init_weights=$WORK/lens_light/stage1/model.keras" \
        --set train.time_budget_minutes=50
fi
if [ ! -d "$WORK/lens_light/stage3/saved_model" ]; then
    run taskset -c 1 ensai train "${LL[@]}" --model-dir "$WORK/lens_light/stage3" \
        --set "data.arcs_dir=$WORK/arcs/lens_light41" --set observe.peak_normalise=true \
        --set "train.init_weights=$WORK/lens_light/stage2/model.keras" \
        --set train.time_budget_minutes=60
fi
if [ ! -d "$WORK/lens_light/alexnet_lens_light/saved_model" ]; then
    run taskset -c 1 ensai train "${LL[@]}" --model-dir "$WORK/lens_light/alexnet_lens_light" \
        --set "data.arcs_dir=$WORK/arcs/lens_light42" --set observe.peak_normalise=true \
        --set "train.init_weights=$WORK/lens_light/stage3/model.keras" \
        --set train.time_budget_minutes=60
fi
run ensai calibrate "$WORK/lens_light/alexnet_lens_light" --n 3000
run ensai evaluate "$WORK/lens_light/alexnet_lens_light" "${LL_TEST[@]}" --n "$N_TEST" \
    --out "$WORK/lens_light/alexnet_lens_light/eval" --overwrite
if [ ! -d "$WORK/lens_light/alexnet_two_band/saved_model" ]; then
    run taskset -c 0 ensai train "${LL[@]}" --model-dir "$WORK/lens_light/alexnet_two_band" \
        --set "data.arcs_dir=$WORK/arcs/lens_light" --set bands.count=2 \
        --set observe.peak_normalise=true \
        --set "train.init_weights=$WORK/lens_light/stage2/model.keras" \
        --set train.time_budget_minutes=75
fi
run ensai calibrate "$WORK/lens_light/alexnet_two_band" --n 3000
run ensai evaluate "$WORK/lens_light/alexnet_two_band" "${LL_TEST[@]}" --set bands.count=2 \
    --n 2000 --out "$WORK/lens_light/alexnet_two_band/eval" --overwrite
echo "== done: trained_weights/ holds every stage's winner, the combiner, the calibrations and the"
echo "   screen; $WORK/lens_light/alexnet_lens_light and alexnet_two_band are the lens-light"
echo "   networks (copy their model.keras, config.yaml, log.csv, calibration.json and eval/"
echo "   reports to trained_weights/alexnet_lens_light and trained_weights/alexnet_two_band)"
