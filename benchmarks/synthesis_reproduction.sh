#!/usr/bin/env bash
# The LoRA-synthesis reproduction in the miniature world (docs/synthesis.md), start to finish:
# a bank of 300 world LoRAs of one initialisation, its priors, then the study on 30 held-out styles.
#
#   bash benchmarks/synthesis_reproduction.sh WORK [WORKERS]
#
# Starts WORKERS identical processes (default: one per core) and waits for them. Every stage resumes
# where it stopped, so run it again after an interruption. The bank's LoRAs train in fixed groups and
# each stage is seeded, so a rerun from scratch on the same machine gives the same bank and priors.
set -euo pipefail
work=$(realpath -m "${1:?usage: synthesis_reproduction.sh WORK [WORKERS]}")
workers=${2:-$(nproc)}
mkdir -p "$work"
cd "$work"

worker() {
    export OMP_NUM_THREADS=1
    autolora world train-bank loras/ --random 300 --init-seed 0 --together 8
    # Another worker may still be training the last group.
    while [ "$(find loras -name 'random-*.json' | wc -l)" -lt 300 ]; do sleep 20; done
    if mkdir stage.lock 2>/dev/null; then  # one worker builds the bank and trains the priors
        export OMP_NUM_THREADS=2
        if [ ! -e bank.done ]; then
            rm -rf bank
            autolora bank build loras/ --base world --rank 4 --factors raw --out bank/ \
                --encoder world:style --world-renders 8
            touch bank.done
        fi
        train() {
            local name=$1
            shift
            [ -e "priors/$name.done" ] || {
                autolora prior train bank/ --out "priors/$name" "$@" && touch "priors/$name.done"
            }
        }
        train pca --kind pca
        train regressor --kind regressor
        train adanorm --kind diffusion --conditioning adanorm --vae-from priors/regressor
        train hyperada --kind diffusion --conditioning hyperada --vae-from priors/regressor
        touch priors.done
        rmdir stage.lock
    fi
    while [ ! -e priors.done ]; do sleep 20; done
    export OMP_NUM_THREADS=1
    python -m autolora.synthesis.study --bank bank --held-out-random 300 330 --k 1 4 8 --pca priors/pca \
        --prior priors/regressor --prior priors/hyperada --prior priors/adanorm --out study
}

rmdir stage.lock 2>/dev/null || true  # left by an interrupted run (this script is the only launcher)
for i in $(seq "$workers"); do
    worker >>"worker-$i.log" 2>&1 &
done
wait
echo "study: $work/study/table.md, $work/study/grid.png"
