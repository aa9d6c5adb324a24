"""Invariants of reward.py: the K-choose-2 ranking loss (InstructGPT eq. 1), reading rewards at the EOS,
the demonstration normalisation, and a tiny end-to-end run that learns a ranking."""

import copy
import math
import random
import signal

import pytest
import torch
import torch.nn.functional as F

import model as M
import reward as R
from common import cosine_lr, load_lm, setup_runtime
from data.formats import read_jsonl, render_prompt, render_response, write_jsonl
from data.loader import encode_prompt, encode_response, generate_responses
from data.tokenizer import Tokenizer
from model import pad_right

# -----------------------------------------------------------------------------
# ranking_loss


def brute_force_loss(rewards, num_responses):
    """Eq. 1 written as loops: per prompt, the mean of -log sigmoid(r_i - r_j) over pairs i < j < K."""
    per_prompt = []
    for b, K in enumerate(num_responses.tolist()):
        pairs = [-math.log(1 / (1 + math.exp(-(rewards[b, i] - rewards[b, j]).item())))
                 for i in range(K) for j in range(i + 1, K)]
        assert len(pairs) == math.comb(K, 2)
        per_prompt.append(sum(pairs) / len(pairs))
    return sum(per_prompt) / len(per_prompt)


def test_ranking_loss_matches_brute_force_pairs():
    """ranking_loss equals the brute-force double loop over pairs, K from 2 to 9 mixed in one batch."""
    torch.manual_seed(0)
    num_responses = torch.tensor([2, 3, 4, 5, 6, 7, 8, 9, 2, 9, 5])
    rewards = torch.randn(len(num_responses), 9, dtype=torch.float64) * 2
    got = R.ranking_loss(rewards, num_responses).item()
    assert got == pytest.approx(brute_force_loss(rewards, num_responses), rel=1e-6)
    full = torch.randn(4, 6, dtype=torch.float64)  # num_responses=None: every column is real
    assert R.ranking_loss(full).item() == pytest.approx(brute_force_loss(full, torch.full((4,), 6)), rel=1e-6)


def test_ranking_loss_equal_rewards_is_log2():
    """With all rewards equal every pair costs -log sigmoid(0) = log 2, and so does the loss."""
    rewards = torch.full((3, 5), 1.7)
    assert R.ranking_loss(rewards, torch.tensor([2, 5, 3])).item() == pytest.approx(math.log(2), rel=1e-6)


def test_ranking_loss_gradient_prefers_better_response():
    """A gradient descent step raises the reward of a better-ranked response and lowers the worse one's."""
    rewards = torch.zeros(1, 4, requires_grad=True)
    R.ranking_loss(rewards).backward()
    g = rewards.grad[0]
    assert g[0] < 0 and g[-1] > 0  # descent moves along -g: best up, worst down
    assert torch.all(g[:-1] < g[1:])  # and monotonically with the rank
    pair = torch.tensor([[0.3, 0.9]], requires_grad=True)  # wrongly ordered pair: larger push
    R.ranking_loss(pair).backward()
    assert pair.grad[0, 0] < 0 < pair.grad[0, 1]
    assert pair.grad[0, 0].item() == pytest.approx(-torch.sigmoid(torch.tensor(0.6)).item(), rel=1e-5)


def test_ranking_loss_ignores_padding_columns():
    """Values beyond each prompt's K change neither the loss nor the gradient of the real rewards."""
    torch.manual_seed(1)
    num_responses = torch.tensor([2, 5, 3])
    real = torch.arange(6)[None] < num_responses[:, None]
    base = torch.randn(3, 6)
    garbage = torch.where(real, base, torch.randn(3, 6) * 1e6)
    a, b = base.clone().requires_grad_(), garbage.clone().requires_grad_()
    la, lb = R.ranking_loss(a, num_responses), R.ranking_loss(b, num_responses)
    la.backward(), lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.all(b.grad[~real] == 0)
    inf = garbage.masked_fill(~real, float("inf")).requires_grad_()  # even inf stays out
    R.ranking_loss(inf, num_responses).backward()
    torch.testing.assert_close(inf.grad, a.grad)


def test_pair_accuracy_matches_brute_force_with_ties():
    """pair_accuracy counts, per prompt, the pairs i < j < K_b that the rewards order as the labelers did
    (r_i > r_j) as 1 and a tie as 1/2, as a double loop over all pairs does, so a constant RM scores 0.5;
    padding columns count nothing."""
    g = torch.Generator().manual_seed(0)
    num_responses = torch.tensor([2, 3, 4, 5, 9, 9, 2, 6])
    rewards = torch.randint(0, 3, (len(num_responses), 9), generator=g).float()  # three values: many ties
    correct, pairs = R.pair_accuracy(rewards, num_responses)
    ties = 0
    for b, K in enumerate(num_responses.tolist()):
        r = rewards[b].tolist()
        right = sum(1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0 for i in range(K) for j in range(i + 1, K))
        ties += sum(r[i] == r[j] for i in range(K) for j in range(i + 1, K))
        assert (correct[b].item(), pairs[b].item()) == (right, math.comb(K, 2)), b
    assert ties > 0
    correct, pairs = R.pair_accuracy(torch.full((3, 4), 0.7), torch.tensor([4, 3, 2]))
    assert (correct / pairs).tolist() == [0.5, 0.5, 0.5]


def test_pad_rewards_lays_out_prompts_in_rows():
    """Flat per-response rewards of prompts laid end to end land in row b, columns 0..K_b-1, zeros after."""
    flat = torch.arange(1.0, 10.0)  # K = 2, 4, 3
    out = R.pad_rewards(flat, torch.tensor([2, 4, 3]))
    assert out.tolist() == [[1, 2, 0, 0], [3, 4, 5, 6], [7, 8, 9, 0]]


# -----------------------------------------------------------------------------
# reading rewards at the last token


def tiny_rm(seed=0, vocab=40, block_size=32):
    torch.manual_seed(seed)
    m = M.GPT(M.GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16,
                          scalar_head=True))
    torch.nn.init.normal_(m.score_head.weight)  # a fresh head scores 0 everywhere: give it something to say
    torch.nn.init.normal_(m.score_head.bias)
    return m.eval()


def test_rewards_at_last_token_reads_index_length_minus_one():
    """rewards_at_last_token picks scores[b, lengths[b] - 1] for every row."""
    scores = torch.arange(12.0).view(3, 4)
    assert M.rewards_at_last_token(scores, torch.tensor([1, 4, 2])).tolist() == [0.0, 7.0, 9.0]


def test_reward_is_read_at_last_real_token_whatever_the_padding():
    """A sequence scored alone and inside a right-padded batch of longer sequences gets the same reward,
    and that reward is the scalar head's output at its own last token."""
    m = tiny_rm()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 40, (n,), generator=g) for n in (5, 17, 9, 30)]
    batch = M.score_sequences(m, seqs)
    for i, s in enumerate(seqs):
        alone = M.score_sequences(m, [s])[0]
        scores, _ = m(s[None])
        assert batch[i].item() == pytest.approx(alone.item(), abs=1e-5)
        assert alone.item() == pytest.approx(scores[0, -1].item(), abs=1e-6)
    # the pad value does not matter either: the reward of seqs[0] is the same with a different pad id
    idx, lengths = pad_right(seqs, pad=39)
    other = M.rewards_at_last_token(m(idx)[0], lengths)
    torch.testing.assert_close(other, batch, atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# a tiny end-to-end run

GOOD = ["yes", "sure", "glad", "happy", "kind"]
BAD = ["no", "ugh", "sad", "bad", "mean"]


def ranked_responses(rng, K):
    """K distinct 4-word responses, best first: the more 'good' words, the better."""
    counts = sorted(rng.sample(range(5), K), reverse=True)
    out = []
    for g in counts:
        while True:
            words = rng.sample(GOOD, g) + rng.sample(BAD, 4 - g)
            rng.shuffle(words)
            text = " ".join(words) + "."
            if text not in out:
                break
        out.append(text)
    return out


def write_world(root, n_train=320, n_val=96, seed=0):
    """comparisons_{train,val} with K = 2..4 and sft_train (the best response as the demonstration)."""
    rng = random.Random(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        recs = [{"prompt": f"Tell me about item {rng.randint(0, 99)}.",
                 "responses": ranked_responses(rng, rng.randint(2, 4))} for _ in range(n)]
        splits[split] = recs
        write_jsonl(root / f"comparisons_{split}.jsonl", recs)
    write_jsonl(root / "sft_train.jsonl",
                [{"prompt": r["prompt"], "response": r["responses"][0]} for r in splits["train"][:64]])
    texts = [render_prompt(r["prompt"]) for s in splits.values() for r in s]
    texts += [render_response(x) for s in splits.values() for r in s for x in r["responses"]]
    return Tokenizer.build_compact(texts)


def write_lm_checkpoint(path, tok, stage="sft"):
    torch.manual_seed(0)
    lm = M.GPT(M.GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32))
    M.save_checkpoint(path, stage=stage, model=lm, run_config={}, tokenizer=tok)


def train(root, out, *args, init="sft.pt"):
    """reward.main on the tiny world in root, on the CPU; returns its metrics."""
    init = init if init == "resume" else root / init
    return R.main([f"--init_from={init}", f"--data_dir={root}", f"--out_dir={out}", "--device=cpu",
                   "--dtype=float32", "--eval_interval=0", "--norm_max_tokens=8", *args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    write_lm_checkpoint(root / "sft.pt", write_world(root))
    metrics = train(root, root / "out", "--batch_size=16", "--lr=3e-3", "--epochs=1.5",
                    "--weight_decay=0", "--log_interval=5", "--norm_samples=64")
    return metrics, root, root / "out"


def test_tiny_run_beats_chance(tiny_run):
    """Seconds of training on a learnable ranking give validation pairwise accuracy >= 0.75 (chance: 0.5)."""
    metrics, _, out = tiny_run
    assert metrics["val/acc"] >= 0.75, metrics
    assert metrics["val/reward_rank0"] > metrics["val/reward_rank1"]  # the best response scores highest
    assert (out / "metrics.jsonl").exists()


def test_normalisation_bias_gives_demonstrations_mean_zero(tiny_run):
    """After training, the head's bias (stored as reward_bias too) makes the demonstrations' mean reward 0."""
    metrics, data, out = tiny_run
    rm, tok, ckpt = load_lm(str(out / "reward.pt"), stages=("reward",))
    assert ckpt["reward_bias"] == pytest.approx(rm.score_head.bias.item())
    assert ckpt["reward_bias"] != 0.0  # the trained head was not centred before
    demos = [encode_prompt(tok, r["prompt"]) + encode_response(tok, r["response"])
             for r in read_jsonl(data / "sft_train.jsonl")]
    rewards = M.score_sequences(rm.eval(), demos)
    assert rewards.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert rewards.std().item() > 1e-3  # centred, not collapsed


def test_normalisation_scale_gives_policy_samples_unit_std(tiny_run):
    """The head is also scaled so that the SFT model's own samples (the same seeded draws) have reward std 1,
    while the demonstrations keep mean 0: one reward unit, hence beta, means the same for any RM."""
    metrics, data, out = tiny_run
    rm, tok, ckpt = load_lm(str(out / "reward.pt"), stages=("reward",))
    policy = load_lm(str(data / "sft.pt"))[0].eval()
    prompts = [r["prompt"] for r in read_jsonl(data / "comparisons_train.jsonl")[:64]]
    _, _, tokens = generate_responses(policy, tok, prompts, 8, 1.0, 64, seed=1337)
    rewards = M.score_sequences(rm.eval(), [encode_prompt(tok, p) + t for p, t in zip(prompts, tokens)])
    assert ckpt["scale_samples"] == 64 and ckpt["reward_scale"] != 1.0
    assert rewards.double().std().item() == pytest.approx(1.0, rel=1e-4)
    demos = [encode_prompt(tok, r["prompt"]) + encode_response(tok, r["response"])
             for r in read_jsonl(data / "sft_train.jsonl")]
    assert M.score_sequences(rm, demos).mean().item() == pytest.approx(0.0, abs=1e-5)


def test_head_bias_is_not_trained(tiny_run):
    """Eq. 1 sees only reward differences, so the head's bias stays frozen at the fresh head's 0 through
    training (resume.pt holds the trained model before the normalisation sets the bias)."""
    _, _, out = tiny_run
    trained = torch.load(out / "resume.pt", weights_only=True)["model"]
    assert trained["score_head.bias"].item() == 0.0 and trained["score_head.weight"].abs().sum() > 0


def test_rm_step_gradient_is_eq1_over_each_prompts_responses_best_first(tmp_path):
    """The gradient a training step of main accumulates, for the global batch main draws at that step, in
    micro-batches of 3 prompts, equals the gradient of eq. 1 with each prompt's responses scored one by one
    from comparisons_train.jsonl in the labelers' order (best first): the ranking loss gets every prompt's K
    rewards in that order, and every prompt of the batch the same weight."""
    write_lm_checkpoint(tmp_path / "sft.pt", write_world(tmp_path, n_train=64, n_val=8))
    rt = setup_runtime("cpu", "float32")
    model, tok, _ = load_lm(str(tmp_path / "sft.pt"), scalar_head=True, dropout=0.0)
    torch.nn.init.normal_(model.score_head.weight)  # a fresh head scores 0 everywhere: give it something to say
    train = R.Comparisons(str(tmp_path), "train", tok, model.config.block_size)
    step, batch_size = 3, 8
    rows = R.global_batch(train, step, batch_size, seed=1337)
    reference = copy.deepcopy(model)
    R.accumulate_gradients(model, train, rows, 3, rt.grad_scaler(), rt, step)

    records = read_jsonl(tmp_path / "comparisons_train.jsonl")
    losses = []
    for i in train.ids[rows]:  # the records of the batch's prompts
        prompt = encode_prompt(tok, records[i]["prompt"])
        r = [reference(torch.tensor(prompt + encode_response(tok, x))[None])[0][0, -1]
             for x in records[i]["responses"]]  # the reward at each response's EOS, best response first
        pair_losses = [-F.logsigmoid(r[a] - r[b]) for a in range(len(r)) for b in range(a + 1, len(r))]
        losses.append(torch.stack(pair_losses).mean())
    assert len(losses) == batch_size and len({len(records[i]["responses"]) for i in train.ids[rows]}) > 1
    torch.stack(losses).mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_optimizer_steps_follow_the_cosine_schedule(tmp_path, monkeypatch):
    """Every optimizer step of main uses the lr of cosine_lr (warmup, then decay to final_lr_ratio) in every
    parameter group, for as many steps as the epochs of global batches make."""
    write_lm_checkpoint(tmp_path / "sft.pt", write_world(tmp_path, n_train=40, n_val=8))
    seen = []
    real_step = R.optimizer_step

    def recording_step(model, optimizer, *a, **k):
        seen.append({group["lr"] for group in optimizer.param_groups})
        return real_step(model, optimizer, *a, **k)

    monkeypatch.setattr(R, "optimizer_step", recording_step)
    train(tmp_path, tmp_path / "out", "--batch_size=8", "--epochs=2", "--warmup_steps=2", "--lr=2e-3",
          "--final_lr_ratio=0.2", "--norm_policy=none")
    total = 2 * (40 // 8)  # 2 epochs of 40 prompts in global batches of 8
    assert seen == [{cosine_lr(s, total, 2e-3, 2, 0.2)} for s in range(total)]


@pytest.mark.parametrize("stage", ["reward", "ppo"])
def test_wrong_stage_checkpoint_is_refused(tmp_path, stage):
    """Starting the RM from a checkpoint that is not a language model raises CheckpointError naming it."""
    write_lm_checkpoint(tmp_path / "x.pt", write_world(tmp_path, n_train=20, n_val=8), stage=stage)
    with pytest.raises(M.CheckpointError, match=f"'{stage}' checkpoint; expected pretrain or sft"):
        train(tmp_path, tmp_path / "out", init="x.pt")


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """Ctrl-C during step 3 saves resume.pt at step 4 and exits 130; --init_from=resume then gives bitwise
    the weights of the uninterrupted run."""
    write_lm_checkpoint(tmp_path / "sft.pt", write_world(tmp_path, n_train=64, n_val=16))
    args = ["--batch_size=8", "--max_steps=6", "--ckpt_interval=100"]
    train(tmp_path, tmp_path / "a", *args)
    real_lr = R.cosine_lr
    monkeypatch.setattr(R, "cosine_lr", lambda step, *a: (signal.raise_signal(signal.SIGINT) if step == 3 else None)
                        or real_lr(step, *a))
    with pytest.raises(SystemExit) as stop:
        train(tmp_path, tmp_path / "b", *args)
    monkeypatch.setattr(R, "cosine_lr", real_lr)
    assert stop.value.code == 130 and torch.load(tmp_path / "b" / "resume.pt", weights_only=True)["step"] == 4
    train(tmp_path, tmp_path / "b", *args, init="resume")
    straight, resumed = (torch.load(tmp_path / d / "reward.pt", weights_only=True)["model"] for d in "ab")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


def test_nan_loss_stops_before_the_optimizer_step(tmp_path, monkeypatch):
    """A non-finite loss raises FloatingPointError naming the step, and no reward model is written."""
    write_lm_checkpoint(tmp_path / "sft.pt", write_world(tmp_path, n_train=32, n_val=8))
    real_loss = R.ranking_loss
    monkeypatch.setattr(R, "ranking_loss", lambda r, n=None: real_loss(r, n) * float("nan"))
    with pytest.raises(FloatingPointError, match="the ranking loss is nan at step 0"):
        train(tmp_path, tmp_path / "out", "--batch_size=8")
    assert not (tmp_path / "out" / "reward.pt").exists()


def test_micro_batches_give_the_same_update(tmp_path):
    """Splitting each batch of prompts into micro-batches leaves the trained weights unchanged."""
    write_lm_checkpoint(tmp_path / "sft.pt", write_world(tmp_path, n_train=32, n_val=8))
    weights = []
    for micro in (0, 3):
        train(tmp_path, tmp_path / f"out{micro}", "--batch_size=8", "--max_steps=2",
              f"--micro_batch_size={micro}")
        weights.append(torch.load(tmp_path / f"out{micro}" / "reward.pt", weights_only=True)["model"])
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=0, atol=1e-6)
