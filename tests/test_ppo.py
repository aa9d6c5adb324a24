"""Invariants of ppo.py: GAE, clipped losses, KL-shaped reward, exact rollout logprobs, ptx, learning."""

import copy
import dataclasses
import json
import random

import pytest
import torch

import ppo
from data.formats import render_prompt, render_response, write_jsonl
from common import ConfigError
from data.loader import encode_prompt
from data.synthetic import tasks
from data.tokenizer import Tokenizer
from model import GPT, GPTConfig, generate, load_model, response_logprobs, save_checkpoint


def ragged_mask(lengths, T):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()


def tiny_gpt(vocab_size, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=48, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


PROMPTS = ["a", "b", "a b", "b a b", "a a", "b b a"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def world(tmp_path):
    """A data dir of prompts (and pretraining text) over a ~10-token compact vocabulary, an 'SFT' and a
    'reward' checkpoint of tiny random models."""
    data = tmp_path / "data"
    texts = [render_prompt(p) for p in PROMPTS] + [render_response("yes"), render_response("no")]
    tok = Tokenizer.build_compact(texts)
    write_jsonl(data / "prompts_train.jsonl", [{"prompt": p} for p in PROMPTS])
    write_jsonl(data / "prompts_val.jsonl", [{"prompt": p} for p in PROMPTS[:4]])
    lm = tiny_gpt(tok.vocab_size)
    save_checkpoint(str(tmp_path / "sft.pt"), stage="sft", model=lm, run_config={}, tokenizer=tok)
    vm = tiny_gpt(tok.vocab_size, seed=1, scalar_head=True)
    save_checkpoint(str(tmp_path / "reward.pt"), stage="reward", model=vm, run_config={}, tokenizer=tok)
    return tmp_path, tok


def tiny_config(tmp_path, **kw):
    cfg = dict(init_from=str(tmp_path / "sft.pt"), reward_model=str(tmp_path / "reward.pt"),
               data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), iterations=2, batch_size=16,
               minibatch_size=8, max_new_tokens=6, ptx_coef=0.0, sample_interval=0, ckpt_interval=0,
               eval_prompts=0, warmup_iters=0, device="cpu", seed=0)
    cfg.update(kw)
    return ppo.PPOConfig(**cfg)


# -----------------------------------------------------------------------------
# the math


def naive_gae(rewards, values, mask, gamma, lam):
    adv = torch.zeros_like(rewards)
    for i in range(rewards.size(0)):
        n = int(mask[i].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[i, t].item() + gamma * next_value - values[i, t].item()
            last = delta + gamma * lam * last
            adv[i, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_naive_loop(gamma, lam):
    """Vectorised GAE equals a per-sequence backward loop on ragged masks; returns = advantages + values on
    real tokens, both 0 on padding."""
    torch.manual_seed(0)
    lengths, T = [7, 1, 4, 7, 3], 7
    mask = ragged_mask(lengths, T)
    rewards, values = torch.randn(5, T), torch.randn(5, T)
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    want = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, (want + values) * mask, atol=1e-5, rtol=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_policy_loss_hand_values_and_clip_gradient():
    """The clipped surrogate gives hand-computed numbers inside and outside the clip range for positive and
    negative advantages, and zero gradient exactly where the clip binds; masked tokens count for nothing."""
    ratio = torch.tensor([[1.1, 1.5, 0.5, 0.5, 1.5, 0.9, 3.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, 2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]]).float()
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    want = torch.tensor([-1.1, -1.2, -0.5, 0.8, 1.5, -1.8])
    binds = torch.tensor([False, True, False, True, False, False])
    old = torch.zeros(1, 7)
    logprobs = ratio.log().requires_grad_()
    loss = ppo.policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    torch.testing.assert_close(loss, want.mean())
    for j in range(6):  # each token alone
        one = torch.zeros(1, 7)
        one[0, j] = 1
        torch.testing.assert_close(ppo.policy_loss(ratio.log(), old, adv, one, 0.2), want[j])
    loss.backward()
    g = logprobs.grad[0, :6]
    assert (g[binds] == 0).all()
    # d(-A r)/dlogp = -A r, over the 6 real tokens
    torch.testing.assert_close(g[~binds], (-adv[0, :6] * ratio[0, :6])[~binds] / 6)
    assert logprobs.grad[0, 6] == 0
    stats = ppo.policy_stats(ratio.log(), old, mask, 0.2)
    assert stats["clipfrac"] == pytest.approx(4 / 6)  # 1.5, 0.5, 0.5, 1.5 are outside [0.8, 1.2]


def test_value_loss_clipping_hand_values():
    """The clipped value loss is 0.5 * max of the unclipped and clipped squared errors, per token."""
    values = torch.tensor([[0.5, 0.5, 0.1, 9.0]])
    old = torch.zeros(1, 4)
    returns = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # clipped V is 0.2 for the first two: max(0.25, 0.64) = 0.64; max(0.25, 0.04) = 0.25; inside: 0.81
    want = 0.5 * torch.tensor([0.64, 0.25, 0.81])
    torch.testing.assert_close(ppo.value_loss(values, old, returns, mask, 0.2), want.mean())
    v = values.clone().requires_grad_()
    ppo.value_loss(v, old, returns, mask, 0.2).backward()
    assert v.grad[0, 0] == 0 and v.grad[0, 1] != 0 and v.grad[0, 2] != 0  # the clip binds only on token 0


def test_kl_shaped_reward_score_on_last_real_token():
    """The KL-shaped reward is -beta * (logp - ref_logp) on real tokens plus the score at each row's last
    real token only, and 0 on padding."""
    torch.manual_seed(0)
    lengths, T = [5, 1, 3], 5
    mask = ragged_mask(lengths, T)
    logprobs, ref = torch.randn(3, T), torch.randn(3, T)
    scores = torch.tensor([2.0, -3.0, 7.0])
    rewards = ppo.kl_shaped_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    extra = rewards - (-0.1 * (logprobs - ref) * mask)
    want = torch.zeros(3, T)
    for i, n in enumerate(lengths):
        want[i, n - 1] = scores[i]
    torch.testing.assert_close(extra, want)
    assert (rewards[mask == 0] == 0).all()


def test_whiten_masked_moments():
    """Whitened values have mean 0 and std 1 over the real tokens, and are 0 on padding."""
    torch.manual_seed(0)
    mask = ragged_mask([6, 2, 4], 6)
    x = torch.randn(3, 6) * 5 + 3 + (1 - mask) * 1000  # padding values must not leak into the moments
    w = ppo.whiten(x, mask)
    real = w[mask.bool()]
    assert abs(real.mean().item()) < 1e-5 and abs(real.std(unbiased=False).item() - 1) < 1e-4
    assert (w[mask == 0] == 0).all()


def test_adaptive_kl_controller():
    """beta moves by 1 + clip(KL/target - 1, -0.2, 0.2) * n/horizon: up when KL is above target, else down."""
    c = ppo.KLController(0.1, target=6.0, horizon=1000)
    c.update(60.0, 100)  # error clipped to 0.2
    assert c.value == pytest.approx(0.1 * 1.02)
    c.update(3.0, 100)  # error -0.5 clipped to -0.2
    assert c.value == pytest.approx(0.1 * 1.02 * 0.98)
    f = ppo.KLController(0.05)
    f.update(100.0, 100)
    assert f.value == 0.05


# -----------------------------------------------------------------------------
# rollouts


def rollout(tok, model, max_new_tokens=10, seed=0):
    torch.manual_seed(seed)
    prompts = [encode_prompt(tok, p) for p in PROMPTS * 2]
    return prompts, generate(model, prompts, max_new_tokens, 1.0, eos_id=tok.eos_id)


def test_policy_equals_reference_kl_zero_ratio_one(world):
    """With policy == reference, a real rollout has KL exactly 0; recomputed on shuffled minibatches, as
    training does, the ratio is 1, clipfrac 0 and approx_kl 0."""
    _, tok = world
    policy = tiny_gpt(tok.vocab_size)
    ref = copy.deepcopy(policy)
    _, b = rollout(tok, policy)
    m = b["response_mask"]
    assert len(set(m.sum(1).tolist())) > 1, "want ragged responses"
    P = b["prompt_len"]
    with torch.no_grad():
        logprobs = ppo.in_chunks(lambda s, a: response_logprobs(policy, s, a, P), b, 4)
        ref_logprobs = ppo.in_chunks(lambda s, a: response_logprobs(ref, s, a, P), b, 4)
        assert ((logprobs - ref_logprobs) * m).abs().max() == 0
        inds = torch.randperm(len(m))[:5]
        new = response_logprobs(policy, b["seqs"][inds], b["attention_mask"][inds], P)
    ratio = torch.exp(new - logprobs[inds])[m[inds].bool()]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-6, rtol=0)
    stats = ppo.policy_stats(new, logprobs[inds], m[inds])
    assert stats["clipfrac"] == 0 and abs(stats["approx_kl"]) < 1e-10


def test_rollout_logprobs_equal_unpadded_forward(world):
    """The response mask runs to the first EOS inclusive, and the logprobs recomputed on the left-padded batch
    equal those of each prompt + response forwarded alone."""
    _, tok = world
    policy = tiny_gpt(tok.vocab_size)
    prompts, b = rollout(tok, policy)
    with torch.no_grad():
        logprobs = response_logprobs(policy, b["seqs"], b["attention_mask"], b["prompt_len"])
        for i, (p, r) in enumerate(zip(prompts, b["response_lists"])):
            assert tok.eos_id not in r[:-1] and (r[-1] == tok.eos_id) == bool(b["ended"][i])
            assert len(r) == int(b["response_mask"][i].sum())
            alone = response_logprobs(policy, torch.tensor([p + r]), None, len(p))[0]
            torch.testing.assert_close(logprobs[i, :len(r)], alone, atol=1e-5, rtol=1e-5)


def test_ptx_coef_scales_lm_gradient(world):
    """Gradient with ptx_coef = c minus gradient with ptx_coef = 0 equals c times the LM loss's gradient."""
    _, tok = world
    policy = tiny_gpt(tok.vocab_size)
    _, b = rollout(tok, policy)
    with torch.no_grad():
        logprobs = response_logprobs(policy, b["seqs"], b["attention_mask"], b["prompt_len"])
    torch.manual_seed(1)
    mb = dict(b, logprobs=logprobs - 0.05 * torch.rand_like(logprobs),  # ratios != 1, some clipped
              advantages=torch.randn_like(logprobs) * b["response_mask"])
    x = torch.randint(tok.vocab_size, (3, 12))
    y = torch.randint(tok.vocab_size, (3, 12))

    ratios = []

    def grads(c):
        policy.zero_grad(set_to_none=True)
        ratios.append(ppo.policy_backward(policy, mb, ppo.PPOConfig(ptx_coef=c, clip_eps=0.2), ptx_batch=(x, y))[3])
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    g0, g = grads(0.0), grads(2.5)
    policy.zero_grad(set_to_none=True)
    policy(x, targets=y)[1].backward()
    g_lm = torch.cat([p.grad.flatten() for p in policy.parameters()])
    assert g_lm.abs().max() > 0
    torch.testing.assert_close(g - g0, 2.5 * g_lm, atol=1e-6, rtol=1e-4)
    # the logged swamping check: |ptx gradient| / |PPO gradient| (None without ptx)
    assert ratios[0] is None
    assert ratios[1] == pytest.approx((2.5 * g_lm.norm() / g0.norm()).item(), rel=1e-4)


# -----------------------------------------------------------------------------
# end to end


def test_ppo_raises_a_known_reward(world):
    """A tiny PPO run against reward = fraction of response tokens equal to ' yes' raises that reward well
    above its start, and the final evaluation prefers the policy to the SFT model."""
    tmp_path, tok = world
    yes = tok.encode(" yes")[0]

    def reward_fn(prompts, responses):
        return [sum(t == yes for t in r) / len(r) for r in responses]

    cfg = tiny_config(tmp_path, iterations=15, batch_size=32, minibatch_size=16, ppo_epochs=2, lr=3e-3,
                      value_lr=3e-3, kl_coef=0.01, no_eos_penalty=None, eval_prompts=4)
    history, ev = ppo.main(cfg, reward_fn=reward_fn)
    first = sum(m["score"] for m in history[:3]) / 3
    last = sum(m["score"] for m in history[-3:]) / 3
    assert last > first + 0.5, (first, last)
    assert ev["eval_policy_rm_score"] > ev["eval_sft_rm_score"]
    assert all(m["kl"] > -0.5 for m in history)  # pure sampling: the KL estimate stays (about) non-negative


def test_oracle_scale_rewards_the_judges_gold_score_and_needs_a_judge(world):
    """--oracle_scale=s scores every rollout with s x (the judge's gold score - 1) instead of the RM (rm_score,
    what PPO optimises, is s x (the gold_score logged next to it - 1), iteration by iteration), responses that
    do not stop included (the judge scores them; no_eos_penalty would be a bonus on this scale); a resumed run
    keeps the oracle; data without a judge and a negative scale stop with a clear error."""
    tmp_path, _ = world
    with pytest.raises(ConfigError, match="has no judge"):
        ppo.main(tiny_config(tmp_path, oracle_scale=6.0))
    with pytest.raises(ConfigError, match="must be >= 0"):
        ppo.main(tiny_config(tmp_path, oracle_scale=-1.0))
    rng = random.Random(0)
    prompts = [tasks.sample_prompt(rng) for _ in range(8)]
    answers = ["I don't know.", "cat cat cat", "3, 2, 1", "The capital of Peldor is Mopa."]
    tok = Tokenizer.build_compact([render_prompt(p) for p in prompts] + [render_response(a) for a in answers])
    data = tmp_path / "synthetic"
    write_jsonl(data / "prompts_train.jsonl", [{"prompt": p} for p in prompts])
    (data / "judge.json").write_text(json.dumps({"module": "data.synthetic.judge"}))
    save_checkpoint(str(tmp_path / "sft_w.pt"), stage="sft", model=tiny_gpt(tok.vocab_size), run_config={},
                    tokenizer=tok)
    save_checkpoint(str(tmp_path / "reward_w.pt"), stage="reward", run_config={}, tokenizer=tok,
                    model=tiny_gpt(tok.vocab_size, seed=1, scalar_head=True))
    cfg = tiny_config(tmp_path, init_from=str(tmp_path / "sft_w.pt"), reward_model=str(tmp_path / "reward_w.pt"),
                      data_dir=str(data), oracle_scale=6.0, no_eos_penalty=-1.0)
    history, _ = ppo.main(cfg)
    history += ppo.main(dataclasses.replace(cfg, init_from="resume", iterations=3, oracle_scale=0.0))[0]
    assert [m["step"] for m in history] == [1, 2, 3]
    assert min(m["ended"] for m in history) < 1  # some responses run to the limit: the penalty would show
    for m in history:
        assert m["rm_score"] == pytest.approx(6.0 * (m["gold_score"] - 1), rel=1e-5)
        assert m["score"] == pytest.approx(m["rm_score"])


def test_ptx_run_saves_a_usable_policy_and_requires_pretrain_data(world):
    """PPO-ptx without pretraining data stops with a clear error; with it, ppo.pt loads as a language model
    that generates, and resume.pt holds what --init_from=resume needs."""
    tmp_path, tok = world
    cfg = tiny_config(tmp_path, ptx_coef=1.0, ptx_seq_len=8, ptx_batch_size=2)
    with pytest.raises(ConfigError, match="ptx_coef=0"):
        ppo.main(cfg, reward_fn=lambda p, r: [0.0] * len(r))
    write_jsonl(tmp_path / "data" / "pretrain_train.jsonl", [{"text": "Human: a b yes no b a"}] * 4)
    history, _ = ppo.main(cfg, reward_fn=lambda p, r: [float(len(x)) for x in r])
    assert len(history) == 2 and "ptx_loss" in history[-1]
    model, ckpt = load_model(str(tmp_path / "out" / "ppo.pt"))
    assert ckpt["stage"] == "ppo" and not model.config.scalar_head
    assert generate(model, [[1, 2, 3]], 4)["seqs"].shape == (1, 7)
    resume = torch.load(tmp_path / "out" / "resume.pt", weights_only=True)
    assert resume["step"] == 2 and resume["resumes"] == "ppo" and {"value_model", "optimizers", "kl_coef"} <= set(resume)
    history, _ = ppo.main(dataclasses.replace(cfg, init_from="resume", iterations=3),
                          reward_fn=lambda p, r: [float(len(x)) for x in r])
    assert [m["step"] for m in history] == [3]


def test_nan_stops_before_the_step_and_keeps_the_checkpoint(world):
    """A NaN reward stops the run with FloatingPointError before any optimizer step; ppo.pt is unchanged."""
    tmp_path, _ = world
    cfg = tiny_config(tmp_path, iterations=1)
    ppo.main(cfg, reward_fn=lambda p, r: [1.0] * len(r))
    before = (tmp_path / "out" / "ppo.pt").read_bytes()
    with pytest.raises(FloatingPointError, match="policy loss"):
        ppo.main(dataclasses.replace(cfg, ckpt_interval=1), reward_fn=lambda p, r: [float("nan")] * len(r))
    assert (tmp_path / "out" / "ppo.pt").read_bytes() == before


# -----------------------------------------------------------------------------
# invariants that plausible bugs break (each of these bugs survived an earlier version of the suite)


def test_masked_means_are_token_means_over_ragged_rows():
    """masked_mean, policy_loss and value_loss average over every real token of the batch, not over per-row
    means: a 1-token row weighs 1/5 of a batch whose other row has 4 tokens, not 1/2."""
    x = torch.tensor([[1.0, 9.0, 9.0, 9.0], [2.0, 4.0, 6.0, 8.0]])
    mask = ragged_mask([1, 4], 4)
    assert ppo.masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4 + 6 + 8) / 5)
    adv, zero = torch.randn(2, 4), torch.zeros(2, 4)
    real = mask.bool()
    assert ppo.policy_loss(zero, zero, adv, mask).item() == pytest.approx(-adv[real].mean().item(), rel=1e-5)
    returns = torch.randn(2, 4)
    want = 0.5 * (returns[real] ** 2).mean().item()  # V = V_old = 0: the unclipped squared error
    assert ppo.value_loss(zero, zero, returns, mask).item() == pytest.approx(want, rel=1e-5)
    # n_tokens divides instead of the local count: DDP's rank average then equals the global token mean
    assert ppo.masked_mean(x, mask, n_tokens=10.0).item() == pytest.approx(21 / 10)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_logprobs_are_those_of_the_tempered_distribution(temperature):
    """response_logprobs at temperature T equals log softmax(logits / T) at each sampled token, computed by hand."""
    m = tiny_gpt(20)
    seqs = torch.randint(0, 20, (3, 9))
    got = response_logprobs(m, seqs, None, 4, temperature)
    logits = m(seqs)[0].double()
    for b in range(3):
        for t in range(5):
            z = logits[b, 3 + t] / temperature
            want = (z[seqs[b, 4 + t]] - torch.logsumexp(z, 0)).item()
            assert got[b, t].item() == pytest.approx(want, abs=1e-5)


def test_value_of_a_token_sees_only_the_tokens_before_it():
    """values[:, t] = V(prompt + response[:t]): changing response token t changes no value at or before t."""
    vm = tiny_gpt(20, scalar_head=True)
    torch.nn.init.normal_(vm.score_head.weight)
    seqs = torch.randint(0, 20, (2, 10))
    P = 4
    base = ppo.response_values(vm, seqs, None, P)
    for t in range(6):
        changed = seqs.clone()
        changed[:, P + t] = (changed[:, P + t] + 1) % 20
        after = ppo.response_values(vm, changed, None, P)
        torch.testing.assert_close(after[:, :t + 1], base[:, :t + 1])
        if t < 5:
            assert not torch.allclose(after[:, t + 1:], base[:, t + 1:])


def test_kl_is_measured_against_the_frozen_reference_after_the_policy_moved(world):
    """Once PPO has moved the policy, the logged KL and the KL part of the reward are those against the frozen
    SFT model: positive, and equal to a recomputation of log pi(y) - log pi_SFT(y) on the policy's samples.
    (Measured against the rollout's own logprobs, the old policy, they would be exactly 0.)"""
    tmp_path, tok = world
    yes = tok.encode(" yes")[0]
    cfg = tiny_config(tmp_path, iterations=6, batch_size=32, minibatch_size=16, lr=3e-3, value_lr=3e-3,
                      kl_coef=0.05, no_eos_penalty=None)
    history, _ = ppo.main(cfg, reward_fn=lambda p, r: [sum(t == yes for t in x) / len(x) for x in r])
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # iteration 0: the policy is the reference
    assert history[-1]["kl"] > 0.05 and history[-1]["non_score_reward"] == pytest.approx(-0.05 * history[-1]["kl"])
    policy, _ = load_model(str(tmp_path / "out" / "ppo.pt"))
    ref, _ = load_model(str(tmp_path / "sft.pt"))
    torch.manual_seed(0)
    b = generate(policy, [encode_prompt(tok, p) for p in PROMPTS * 8], 6, 1.0, eos_id=tok.eos_id)
    with torch.no_grad():
        kl = ((response_logprobs(policy, b["seqs"], b["attention_mask"], b["prompt_len"])
               - response_logprobs(ref, b["seqs"], b["attention_mask"], b["prompt_len"])) * b["response_mask"]).sum(1)
    assert kl.mean().item() > 0.05
