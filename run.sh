#!/usr/bin/env bash
# The whole InstructGPT pipeline on the synthetic world, one stage per command (as nanochat's speedrun.sh).
#
#   bash run.sh                  # data, base model, SFT, comparisons on SFT samples, RM, PPO-ptx, PPO, eval
#   SEED=7 bash run.sh           # everything, the data included, with another seed (default 1337)
#   bash run.sh sweep            # afterwards: PPO over several KL coefficients and best-of-n from SFT
#   TINY=1 bash run.sh           # the pipeline in seconds, in out/tiny (tests/test_pipeline.py)
#
# Every stage below is an ordinary command that also runs alone (copy it, drop the $VARIABLES you did not
# set: they are the defaults). Results: out/results.md (tables), out/results.json, out/responses/*.jsonl,
# out/seconds.json (each stage's wall time). Extra flags for one stage: e.g. PPO_FLAGS="--kl_coef=0.1".
set -euo pipefail
cd "$(dirname "$0")"

SEED=${SEED:-1337}
if [ "${TINY:-0}" = 1 ]; then
    # A 1-layer, 32-wide model, one epoch, two PPO iterations, 2% of the data: a check that every stage
    # runs and hands the next one what it needs, not a result. One thread: faster for such small matrices.
    # Its own folders, so that it never overwrites the real run's data and models.
    OUT_DIR=${OUT_DIR:-out/tiny}
    DATA_DIR=${DATA_DIR:-out/tiny/data}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    SCALE=${SCALE:-0.02}
    MODEL="--n_layer=1 --n_head=2 --n_embd=32 --dtype=float32"
    PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-"$MODEL --epochs=1 --batch_size=4 --eval_batches=1 --num_samples=0"}
    SFT_FLAGS=${SFT_FLAGS:-"--dtype=float32 --epochs=1 --batch_size=4 --eval_batches=1 --num_samples=0"}
    RM_FLAGS=${RM_FLAGS:-"--dtype=float32 --batch_size=8"}
    PPO_FLAGS=${PPO_FLAGS:-"--dtype=float32 --iterations=2 --batch_size=8 --minibatch_size=4 --ptx_batch_size=2 \
        --eval_prompts=8"}
    EVAL_FLAGS=${EVAL_FLAGS:-"--max_new_tokens=16"}
    SWEEP_FLAGS=${SWEEP_FLAGS:-"--betas=0,0.1 --iterations=2 --bon_prompts=3 --bon_samples=4 --max_new_tokens=8 \
        --dtype=float32 --ppo_args=batch_size=4,minibatch_size=4"}
fi
OUT=${OUT_DIR:-out}                 # every stage's --out_dir is a folder of this
DATA=${DATA_DIR:-data/synthetic}    # the synthetic world's files
SCALE=${SCALE:-1}                   # every size of the world times this
# extra flags per stage, empty unless set (word-split on purpose: "--a=1 --b=2")
DATA_FLAGS=${DATA_FLAGS:-}
PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-}
SFT_FLAGS=${SFT_FLAGS:-}
RM_FLAGS=${RM_FLAGS:-}
PPO_FLAGS=${PPO_FLAGS:-}
EVAL_FLAGS=${EVAL_FLAGS:-}
SWEEP_FLAGS=${SWEEP_FLAGS:-}

if [ "${1:-}" = sweep ]; then
    # Over-optimisation (Gao et al. 2022): PPO from the same SFT and RM at several beta, and best-of-n.
    for f in "$OUT/sft/sft.pt" "$OUT/reward/reward.pt"; do
        [ -f "$f" ] || { echo "error: $f is missing: run 'bash run.sh' first" >&2; exit 1; }
    done
    python data/synthetic/sweep.py --seed=$SEED --data_dir=$DATA --sft=$OUT/sft/sft.pt \
        --reward_model=$OUT/reward/reward.pt --out_dir=$OUT/sweep $SWEEP_FLAGS
    exit 0
elif [ -n "${1:-}" ]; then
    echo "error: unknown argument '$1' (bash run.sh [sweep])" >&2
    exit 1
fi

# Each stage's wall time goes to $OUT/seconds.json as soon as it ends (evaluate.py copies it into results.json).
mkdir -p "$OUT"
TIMES=""
stage() {  # stage NAME COMMAND...: run one stage, print its time, record it
    local name=$1 t0 t1
    shift
    echo "=== $name: $*"
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    TIMES="$TIMES${TIMES:+, }\"$name\": $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")"
    echo "{$TIMES}" > "$OUT/seconds.json"
    echo "=== $name: $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s"
}

# 1. The closed world: pretraining text, demonstrations, rankings, prompts, held-out test prompts, probe.
stage data python data/synthetic/prepare.py --seed=$SEED --scale=$SCALE --out_dir=$DATA $DATA_FLAGS

# 2. The base model (the stand-in for GPT-3), pretrained from scratch on the world's plain text.
stage pretrain python sft.py --mode=pretrain --seed=$SEED --data_dir=$DATA --out_dir=$OUT/pretrain $PRETRAIN_FLAGS

# 3. Supervised fine-tuning on the demonstrations (InstructGPT step 1).
stage sft python sft.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/pretrain/pretrain.pt --out_dir=$OUT/sft \
    $SFT_FLAGS

# 4. Comparisons on the model's own outputs, as the paper collects them: samples of the SFT model on the
#    RM prompts join the candidates the training labelers rank (comparisons_{train,val}.jsonl).
stage comparisons python data/synthetic/prepare.py --seed=$SEED --scale=$SCALE --out_dir=$DATA \
    --from_policy=$OUT/sft/sft.pt $DATA_FLAGS

# 5. The reward model on those rankings (step 2, eq. 1).
stage reward python reward.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/sft/sft.pt --out_dir=$OUT/reward \
    $RM_FLAGS

# 6. PPO-ptx, the paper's InstructGPT (step 3, eq. 2), and 7. PPO without the pretraining mix.
stage ppo_ptx python ppo.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/sft/sft.pt \
    --reward_model=$OUT/reward/reward.pt --out_dir=$OUT/ppo_ptx $PPO_FLAGS
stage ppo python ppo.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/sft/sft.pt \
    --reward_model=$OUT/reward/reward.pt --ptx_coef=0 --out_dir=$OUT/ppo $PPO_FLAGS

# 8. Evaluation (evaluate.py hands it to the data's judge): the world's held-out labelers judge every model on
#    held-out test prompts: $OUT/results.{md,json}, $OUT/responses/, $OUT/plots/ (PPO per iteration, RM accuracy
#    per family, win rates: CSV, and PNG with matplotlib).
MODELS=base=$OUT/pretrain/pretrain.pt,base_fewshot=$OUT/pretrain/pretrain.pt@fewshot,sft=$OUT/sft/sft.pt
MODELS=$MODELS,ppo_ptx=$OUT/ppo_ptx/ppo.pt,ppo=$OUT/ppo/ppo.pt
python evaluate.py --seed=$SEED --data_dir=$DATA --out_dir=$OUT --models=$MODELS \
    --reward_model=$OUT/reward/reward.pt $EVAL_FLAGS
