"""
The synthetic world's judge as the stages see it (through data.load_judge): the programmatic labelers
of labelers.py answering the three questions a stage asks while it runs, and, for the top-level evaluate.py,
running the whole final evaluation. Training labelers by default: the held-out labelers and the test prompts
are for data/synthetic/evaluate.py's final measurement only.
"""

from data.synthetic import evaluate
from data.synthetic.labelers import HELDOUT_LABELERS, TRAIN_LABELERS, compare, gold_score, judge_mean, win_rate

LABELERS = {"train": TRAIN_LABELERS, "heldout": HELDOUT_LABELERS}


class Judge:
    def score(self, prompts, responses, ended, labelers="train"):
        """Mean labelers' score and noiseless gold score of text responses (ppo.py logs them per iteration:
        the truth next to the reward model's proxy)."""
        gold = sum(self.gold(prompts, responses, ended)) / len(prompts)
        return {"labelers_score": judge_mean(prompts, responses, LABELERS[labelers], ended), "gold_score": gold}

    def gold(self, prompts, responses, ended):
        """The noiseless gold score of each response, a list (ppo.py --oracle_scale: the truth as the reward)."""
        return [gold_score(p, r, e) for p, r, e in zip(prompts, responses, ended)]

    def win_rate(self, prompts, a, b, ended_a, ended_b, labelers="train"):
        """(rate, 95% CI half-width): how often the labelers prefer response a to b, ties half."""
        return win_rate(prompts, a, b, LABELERS[labelers], ended_a, ended_b)

    def evaluate(self, cfg):
        """evaluate.py's whole evaluation on this world, given that stage's config: data/synthetic/evaluate.py
        (held-out labelers on the test prompts; results.json, results.md, responses/, plots/), its results."""
        return evaluate.main(evaluate.config_from_stage(cfg))

    def agreement(self, prompt, responses, rewards):
        """{labelers: (agreeing, judged)}: of every pair of the responses to prompt, how often the sign of the
        reward difference matches each labeler's own verdict (a labeler's tie is not counted; a reward tie
        counts half). reward.py reports it for the training and the held-out labelers."""
        out = {}
        for name, labelers in LABELERS.items():
            agree = judged = 0.0
            for x in range(len(responses)):
                for y in range(x + 1, len(responses)):
                    d = rewards[x] - rewards[y]
                    pref = (d > 0) - (d < 0)
                    for lab in labelers:
                        c = compare(prompt, responses[x], responses[y], lab)
                        if c != 0:
                            agree += 1.0 if pref == c else 0.5 if pref == 0 else 0.0
                            judged += 1
            out[name] = (agree, judged)
        return out
