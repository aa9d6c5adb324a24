#!/usr/bin/env bash
# The whole InstructGPT pipeline on the synthetic world, one stage per command (as nanochat's speedrun.sh).
#
#   bash run.sh                  # data, base model, SFT, comparisons on SFT samples, RM, PPO-ptx, PPO, eval
#   SEED=7 bash run.sh           # everything, the data included, with another seed (default 1337)
#   SIZE=xs bash run.sh          # the same at another model size (presets below), into out/xs
#   bash run.sh scaling          # Figure 1: the pipeline at sizes xs, s and m, all judged against the largest SFT
#   bash run.sh sweep            # afterwards: PPO over several KL coefficients and best-of-n from SFT
#   TINY=1 bash run.sh           # the pipeline in seconds, in out/tiny (tests/test_pipeline.py)
#
# Every stage below is an ordinary command that also runs alone (copy it, drop the $VARIABLES you did not
# set: they are the defaults). Results: out/results.md (tables), out/results.json, out/responses/*.jsonl,
# out/seconds.json (each stage's wall time). Extra flags for one stage: e.g. PPO_FLAGS="--kl_coef=0.1".
set -euo pipefail
cd "$(dirname "$0")"

SEED=${SEED:-1337}
# Model sizes. A preset is the model's shape (layers, heads, width; --n_* of the base model, which every later
# stage inherits) and what must move with it, chosen on validation prompts with the training labelers
# (docs/experiments.md, "Model size"). m is the default run; gpt2 is GPT-2 124M's shape and vocabulary, for a
# GPU. Each size has its own folders, in the same world (the seed makes it).
#        NAME)  SHAPE (layers heads width)  TINY_SHAPE   flags per stage (the user's *_FLAGS come after them)
SIZE=${SIZE:-m}
P_PRE="" P_SFT="" P_RM="" P_PPO=""
case $SIZE in
    xs)   SHAPE="2 2 40";     TINY_SHAPE="1 2 16"
          P_PRE="--lr=1.6e-2" P_SFT="--lr=4e-3" ;;  # a narrower model takes a larger step (as muP says)
    s)    SHAPE="3 4 80";     TINY_SHAPE="1 2 24"
          P_PRE="--lr=8e-3" P_SFT="--lr=2e-3" ;;
    m)    SHAPE="4 4 128";    TINY_SHAPE="1 2 32" ;;
    gpt2) SHAPE="12 12 768";  TINY_SHAPE="2 12 48"
          # untuned: GPT-2 fine-tuning's usual learning rates, lower as the model is 100x the CPU's
          P_PRE="--vocab=gpt2 --block_size=1024 --lr=6e-4 --batch_size=16"
          P_SFT="--lr=2e-5 --batch_size=16" P_RM="--lr=1e-5" P_PPO="--lr=2e-6 --value_lr=1e-5" ;;
    *)    echo "error: unknown SIZE '$SIZE' (xs, s, m, gpt2)" >&2; exit 1 ;;
esac
if [ "$SIZE" = m ]; then
    ROOT=out                    # the default run: out/, its world in data/synthetic
else
    ROOT=out/$SIZE
fi

if [ "${TINY:-0}" = 1 ]; then
    # The size's TINY_SHAPE (m: 1 layer, 32 wide), one epoch, two PPO iterations, 2% of the data: a check that
    # every stage runs and hands the next one what it needs, not a result. One thread: faster for such small
    # matrices. Its own folders (out/tiny, out/tiny/SIZE), so that it never overwrites a real run's.
    ROOT=out/tiny${ROOT#out}
    SHAPE=$TINY_SHAPE
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    SCALE=${SCALE:-0.02}
    # 256 positions at every size: 2% of the world holds too few 1,024-token windows for gpt2's validation batch
    PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-"--dtype=float32 --epochs=1 --batch_size=4 --block_size=256 --eval_batches=1 \
        --num_samples=0"}
    SFT_FLAGS=${SFT_FLAGS:-"--dtype=float32 --epochs=1 --batch_size=4 --eval_batches=1 --num_samples=0"}
    RM_FLAGS=${RM_FLAGS:-"--dtype=float32 --batch_size=8"}
    PPO_FLAGS=${PPO_FLAGS:-"--dtype=float32 --iterations=2 --batch_size=8 --minibatch_size=4 --ptx_batch_size=2 \
        --eval_prompts=8"}
    EVAL_FLAGS=${EVAL_FLAGS:-"--max_new_tokens=16"}
    SWEEP_FLAGS=${SWEEP_FLAGS:-"--betas=0,0.1 --iterations=2 --bon_prompts=3 --bon_samples=4 --max_new_tokens=8 \
        --dtype=float32 --ppo_args=batch_size=4,minibatch_size=4"}
    SCALING_FLAGS=${SCALING_FLAGS:-"--max_new_tokens=16"}
fi
OUT=${OUT_DIR:-$ROOT}               # every stage's --out_dir is a folder of this
if [ "$ROOT" = out ]; then
    DATA=${DATA_DIR:-data/synthetic}  # the synthetic world's files
else
    DATA=${DATA_DIR:-$OUT/data}
fi
read -r n_layer n_head n_embd <<< "$SHAPE"
P_PRE="--n_layer=$n_layer --n_head=$n_head --n_embd=$n_embd $P_PRE"
SCALE=${SCALE:-1}                   # every size of the world times this
# extra flags per stage, empty unless set (word-split on purpose: "--a=1 --b=2")
DATA_FLAGS=${DATA_FLAGS:-}
PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-}
SFT_FLAGS=${SFT_FLAGS:-}
RM_FLAGS=${RM_FLAGS:-}
PPO_FLAGS=${PPO_FLAGS:-}
EVAL_FLAGS=${EVAL_FLAGS:-}
SWEEP_FLAGS=${SWEEP_FLAGS:-}
SCALING_FLAGS=${SCALING_FLAGS:-}

if [ "${1:-}" = scaling ]; then
    # Figure 1 of the paper (labelers' preference for every model over the 175B SFT, at 1.3B, 6B and 175B): the
    # whole pipeline at each size of $SIZES, each in DIR/NAME, then every model of every size judged on the test
    # prompts by the held-out labelers against the largest SFT: DIR/results.{json,md}, scaling.csv, scaling.png.
    # A size whose folder has results.json is kept (delete the folder to run it again). TINY's sizes, one thread
    # each, run side by side, each into its run.log.
    SIZES=${SIZES:-"xs s m"}
    [ "${TINY:-0}" = 1 ] && DIR=${OUT_DIR:-out/tiny/scaling} || DIR=${OUT_DIR:-out/scaling}
    pids=() names=()
    for size in $SIZES; do
        if [ -f "$DIR/$size/results.json" ]; then
            echo "=== size $size: kept $DIR/$size (it has results.json)"
        elif [ "${TINY:-0}" = 1 ]; then
            mkdir -p "$DIR/$size"
            SIZE=$size OUT_DIR=$DIR/$size DATA_DIR=$DIR/$size/data bash "$0" > "$DIR/$size/run.log" 2>&1 &
            pids+=($!) names+=("$size")
        else
            echo "=== size $size"
            SIZE=$size OUT_DIR=$DIR/$size DATA_DIR=$DIR/$size/data bash "$0"
        fi
    done
    for i in "${!pids[@]}"; do
        log=$DIR/${names[$i]}/run.log
        wait "${pids[$i]}" || { tail -n 20 "$log" >&2; echo "error: size ${names[$i]} failed: $log" >&2; exit 1; }
    done
    python data/synthetic/scaling.py --seed=$SEED --sizes="${SIZES// /,}" --dir="$DIR" $SCALING_FLAGS
    exit 0
elif [ "${1:-}" = sweep ]; then
    # Over-optimisation (Gao et al. 2022): PPO from the same SFT and RM at several beta, and best-of-n.
    for f in "$OUT/sft/sft.pt" "$OUT/reward/reward.pt"; do
        [ -f "$f" ] || { echo "error: $f is missing: run 'bash run.sh' first" >&2; exit 1; }
    done
    python data/synthetic/sweep.py --seed=$SEED --data_dir=$DATA --sft=$OUT/sft/sft.pt \
        --reward_model=$OUT/reward/reward.pt --out_dir=$OUT/sweep $SWEEP_FLAGS
    exit 0
elif [ -n "${1:-}" ]; then
    echo "error: unknown argument '$1' (bash run.sh [scaling|sweep])" >&2
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
stage pretrain python sft.py --mode=pretrain --seed=$SEED --data_dir=$DATA --out_dir=$OUT/pretrain \
    $P_PRE $PRETRAIN_FLAGS

# 3. Supervised fine-tuning on the demonstrations (InstructGPT step 1).
stage sft python sft.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/pretrain/pretrain.pt --out_dir=$OUT/sft \
    $P_SFT $SFT_FLAGS

# 4. Comparisons on the model's own outputs, as the paper collects them: samples of the SFT model on the
#    RM prompts join the candidates the training labelers rank (comparisons_{train,val}.jsonl).
stage comparisons python data/synthetic/prepare.py --seed=$SEED --scale=$SCALE --out_dir=$DATA \
    --from_policy=$OUT/sft/sft.pt $DATA_FLAGS

# 5. The reward model on those rankings (step 2, eq. 1).
stage reward python reward.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/sft/sft.pt --out_dir=$OUT/reward \
    $P_RM $RM_FLAGS

# 6. PPO-ptx, the paper's InstructGPT (step 3, eq. 2), and 7. PPO without the pretraining mix.
stage ppo_ptx python ppo.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/sft/sft.pt \
    --reward_model=$OUT/reward/reward.pt --out_dir=$OUT/ppo_ptx $P_PPO $PPO_FLAGS
stage ppo python ppo.py --seed=$SEED --data_dir=$DATA --init_from=$OUT/sft/sft.pt \
    --reward_model=$OUT/reward/reward.pt --ptx_coef=0 --out_dir=$OUT/ppo $P_PPO $PPO_FLAGS

# 8. Evaluation (evaluate.py hands it to the data's judge): the world's held-out labelers judge every model on
#    held-out test prompts: $OUT/results.{md,json}, $OUT/responses/, $OUT/plots/ (PPO per iteration, RM accuracy
#    per family, win rates: CSV, and PNG with matplotlib).
MODELS=base=$OUT/pretrain/pretrain.pt,base_fewshot=$OUT/pretrain/pretrain.pt@fewshot,sft=$OUT/sft/sft.pt
MODELS=$MODELS,ppo_ptx=$OUT/ppo_ptx/ppo.pt,ppo=$OUT/ppo/ppo.pt
python evaluate.py --seed=$SEED --data_dir=$DATA --out_dir=$OUT --models=$MODELS \
    --reward_model=$OUT/reward/reward.pt $EVAL_FLAGS
