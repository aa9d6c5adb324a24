"""The synthetic closed world (see data/README.md): data whose labelers are programs.

    from data.synthetic import score, compare, gold_score, judge_mean, win_rate
    from data.synthetic import TRAIN_LABELERS, HELDOUT_LABELERS
"""
from data.synthetic.labelers import (
    HELDOUT_LABELERS,
    TRAIN_LABELERS,
    Labeler,
    agreement,
    compare,
    criteria,
    gold_score,
    judge_mean,
    score,
    win_rate,
)

__all__ = ["HELDOUT_LABELERS", "TRAIN_LABELERS", "Labeler", "agreement", "compare", "criteria", "gold_score",
           "judge_mean", "score", "win_rate"]
