"""Invariants of ppo.py: GAE, clipped losses, KL-shaped reward, exact rollout logprobs, ptx, learning."""

import copy
import dataclasses
import json
import random

import pytest
import torch

import ppo
from common import ConfigError
from data.formats import render_prompt, render_response, write_jsonl
from data.loader import encode_prompt, load_split
from data.synthetic import tasks
from data.tokenizer import Tokenizer
from model import (
    GPT,
    GPTConfig,
    generate,
    load_model,
    response_logprobs,
    save_checkpoint,
    score_sequences,
)


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
    assert resume["step"] == 2 and resume["resumes"] == "ppo"
    assert {"value_model", "optimizers", "kl_coef"} <= set(resume)
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


# -----------------------------------------------------------------------------
# what main wires together: each test watches the tensors that really reach GAE, the losses or the
# optimiser, never a logged copy of them


@pytest.fixture
def watch(monkeypatch):
    """Records, at every call of GAE inside ppo.main, the rewards it receives, the rollout they came from, and
    log pi(y_t) - log pi_SFT(y_t) recomputed by the test: pi the policy as it is at that moment (rollout time,
    before the update) and pi_SFT a fresh load of the SFT checkpoint main was given."""
    seen = {"gae": [], "policy_loss": [], "ptx": [], "minibatches": []}
    real = {name: getattr(ppo, name) for name in ("load_models", "rollout", "gae", "policy_loss", "policy_backward")}

    def load_models(cfg, *a, **kw):
        models = real["load_models"](cfg, *a, **kw)
        seen["policy"], seen["sft"] = models[0], load_model(cfg.init_from)[0].eval()
        return models

    def rollout(*a, **kw):
        seen["batch"] = real["rollout"](*a, **kw)
        return seen["batch"]

    def gae(rewards, values, mask, *a):
        b = seen["batch"]
        with torch.no_grad():
            log_ratio = (response_logprobs(seen["policy"], b["seqs"], b["attention_mask"], b["prompt_len"])
                         - response_logprobs(seen["sft"], b["seqs"], b["attention_mask"], b["prompt_len"]))
        seen["gae"].append({"rewards": rewards.clone(), "log_ratio": log_ratio * mask, "mask": mask.clone(),
                            "batch": b})
        return real["gae"](rewards, values, mask, *a)

    def policy_loss(logprobs, old_logprobs, advantages, mask, *a, **kw):
        seen["policy_loss"].append((advantages.detach().clone(), mask.clone(), logprobs.detach().clone(),
                                    old_logprobs.detach().clone()))
        return real["policy_loss"](logprobs, old_logprobs, advantages, mask, *a, **kw)

    def policy_backward(policy, mb, cfg, n_tokens=None, ptx_batch=None, *a, **kw):
        seen["ptx"].append(ptx_batch)
        seen["minibatches"].append(mb["seqs"].clone())
        return real["policy_backward"](policy, mb, cfg, n_tokens, ptx_batch, *a, **kw)

    for name, fn in (("load_models", load_models), ("rollout", rollout), ("gae", gae),
                     ("policy_loss", policy_loss), ("policy_backward", policy_backward)):
        monkeypatch.setattr(ppo, name, fn)
    return seen


def last_token_scores(call, kl_coef):
    """The score each row's last real token carries in the rewards GAE received, the KL part taken off."""
    rewards, log_ratio, mask = call["rewards"], call["log_ratio"], call["mask"]
    last = mask.sum(1).long() - 1
    rows = torch.arange(len(last))
    return rewards[rows, last] + kl_coef * log_ratio[rows, last]


def test_gae_receives_the_kl_penalty_against_the_frozen_reference(world, watch):
    """Once the policy has moved, the rewards reaching GAE are -beta * (log pi(y_t) - log pi_SFT(y_t)) at every
    real response token, pi_SFT the frozen SFT model (not the rollout's own logprobs, which would make the penalty
    vanish), plus the reward model's score at the last token: each row sums to score + non-score reward."""
    tmp_path, tok = world
    yes = tok.encode(" yes")[0]
    cfg = tiny_config(tmp_path, iterations=4, batch_size=16, minibatch_size=8, lr=3e-3, value_lr=3e-3,
                      kl_coef=0.3, no_eos_penalty=None, dtype="float32")
    reward_fn = lambda p, r: [sum(t == yes for t in x) / len(x) for x in r]  # noqa: E731
    ppo.main(cfg, reward_fn=reward_fn)
    assert len(watch["gae"]) == 4
    for call in watch["gae"]:
        b, mask = call["batch"], call["mask"]
        want = -0.3 * call["log_ratio"]
        last = mask.sum(1).long() - 1
        scores = torch.tensor(reward_fn(b["prompts"], b["response_lists"]))
        want[torch.arange(len(last)), last] += scores
        torch.testing.assert_close(call["rewards"], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(call["rewards"].sum(1), scores - 0.3 * call["log_ratio"].sum(1),
                                   atol=1e-5, rtol=1e-5)
    assert watch["gae"][-1]["log_ratio"].abs().max() > 1e-2  # the policy moved: the penalty is not trivially 0


def test_advantages_reaching_the_policy_loss_are_whitened(world, watch):
    """The advantages that reach the clipped surrogate, gathered over one epoch's minibatches (together the
    whole rollout), have mean 0 and standard deviation 1 over the real response tokens."""
    tmp_path, tok = world
    cfg = tiny_config(tmp_path, iterations=2, batch_size=16, minibatch_size=4, ppo_epochs=2, dtype="float32")
    ppo.main(cfg, reward_fn=lambda p, r: [3.0 + len(x) for x in r])
    per_iteration = (16 // 4) * 2
    assert len(watch["policy_loss"]) == 2 * per_iteration
    for it in range(2):
        epoch = watch["policy_loss"][it * per_iteration:it * per_iteration + 16 // 4]
        real = torch.cat([adv[mask.bool()] for adv, mask, _, _ in epoch])
        assert real.numel() == int(watch["gae"][it]["mask"].sum())
        assert real.mean().item() == pytest.approx(0.0, abs=1e-5)
        assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_cut_off_response_scores_the_no_eos_penalty(world, watch):
    """A response that hits max_new_tokens without EOS carries no_eos_penalty as its score into GAE, whatever the
    reward model says; a response that stopped carries the reward model's score."""
    tmp_path, _ = world
    cfg = tiny_config(tmp_path, iterations=1, batch_size=32, minibatch_size=16, max_new_tokens=3,
                      no_eos_penalty=-1.0, dtype="float32")
    ppo.main(cfg, reward_fn=lambda p, r: [5.0] * len(r))
    call = watch["gae"][0]
    ended = call["batch"]["ended"]
    assert 0 < int(ended.sum()) < len(ended), "want both kinds of response"
    scores = last_token_scores(call, cfg.kl_coef)
    torch.testing.assert_close(scores, torch.where(ended, 5.0, -1.0), atol=1e-5, rtol=0)


def test_ppo_scores_with_the_saved_reward_models_head(world, watch):
    """Without a reward_fn, the score a stopped response carries into GAE is the saved reward model's, read at its
    EOS through its head (bias and scale included), also after the value model, its copy, has moved."""
    tmp_path, tok = world
    rm, _ = load_model(str(tmp_path / "reward.pt"))
    with torch.no_grad():
        rm.score_head.bias.fill_(0.7)  # a normalisation that a head-less read would lose
        rm.score_head.weight.mul_(30.0)
    save_checkpoint(str(tmp_path / "reward.pt"), stage="reward", model=rm, run_config={}, tokenizer=tok)
    cfg = tiny_config(tmp_path, iterations=3, batch_size=16, minibatch_size=8, value_lr=1e-2, no_eos_penalty=-5.0,
                      dtype="float32")
    ppo.main(cfg)
    fresh, _ = load_model(str(tmp_path / "reward.pt"))
    for call in watch["gae"]:
        b = call["batch"]
        want = score_sequences(fresh.eval(), [list(p) + list(r) for p, r in zip(b["prompts"], b["response_lists"])])
        want = torch.where(b["ended"], want, -5.0)
        torch.testing.assert_close(last_token_scores(call, cfg.kl_coef), want, atol=1e-4, rtol=1e-4)
    assert watch["gae"][-1]["rewards"].abs().max() > 0.5


def test_ptx_windows_come_from_the_pretraining_split(world, watch):
    """Every ptx batch that reaches the policy's backward pass is made of windows of the pretraining train split
    (never its val split, never the prompts), each target row its input shifted by one token."""
    tmp_path, tok = world
    train_text, val_text = "Human: a b yes no b a a yes", "Assistant: no no no no no no"
    write_jsonl(tmp_path / "data" / "pretrain_train.jsonl", [{"text": train_text}] * 3)
    write_jsonl(tmp_path / "data" / "pretrain_val.jsonl", [{"text": val_text}] * 3)
    cfg = tiny_config(tmp_path, ptx_coef=0.5, ptx_seq_len=6, ptx_batch_size=4, dtype="float32")
    ppo.main(cfg, reward_fn=lambda p, r: [0.0] * len(r))
    stream = ",".join(map(str, load_split(str(tmp_path / "data"), "pretrain", "train", tok).stream.tolist()))
    assert len(watch["ptx"]) == cfg.iterations * cfg.ppo_epochs * (cfg.batch_size // cfg.minibatch_size)
    for x, y in watch["ptx"]:
        assert x.shape == (4, 6) and torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            assert "," + ",".join(map(str, row_x + row_y[-1:])) + "," in "," + stream + ","


def test_first_minibatch_recomputes_the_rollouts_logprobs_at_its_temperature(world, watch):
    """Before the first optimizer step of an iteration the policy is the one that sampled, so the logprobs the
    surrogate recomputes equal the rollout's (ratio exactly 1), at a sampling temperature other than 1 too."""
    tmp_path, _ = world
    cfg = tiny_config(tmp_path, iterations=2, batch_size=16, minibatch_size=8, temperature=0.7, lr=3e-3,
                      dtype="float32")
    ppo.main(cfg, reward_fn=lambda p, r: [float(len(x)) for x in r])
    per_iteration = cfg.ppo_epochs * cfg.batch_size // cfg.minibatch_size
    for it in range(cfg.iterations):
        _, mask, logprobs, old_logprobs = watch["policy_loss"][it * per_iteration]
        torch.testing.assert_close(logprobs * mask, old_logprobs * mask, atol=1e-5, rtol=0)
    _, mask, logprobs, old_logprobs = watch["policy_loss"][per_iteration - 1]
    assert ((logprobs - old_logprobs) * mask).abs().max() > 1e-4  # later minibatches see a moved policy


def test_every_ppo_epoch_reshuffles_the_minibatches(world, watch):
    """Each epoch splits the rollout into a new partition of minibatches (the same episodes, other groups)."""
    tmp_path, _ = world
    cfg = tiny_config(tmp_path, iterations=1, batch_size=16, minibatch_size=4, ppo_epochs=2, dtype="float32")
    ppo.main(cfg, reward_fn=lambda p, r: [0.0] * len(r))
    groups = [{tuple(row.tolist()) for row in mb} for mb in watch["minibatches"]]
    first, second = groups[:4], groups[4:]
    assert set().union(*first) == set().union(*second)
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))


def test_value_model_learns_the_returns(world):
    """The value model steps: against a constant reward its loss falls by more than half in a few iterations."""
    tmp_path, _ = world
    cfg = tiny_config(tmp_path, iterations=6, batch_size=16, minibatch_size=8, lr=0.0, value_lr=1e-2,
                      kl_coef=0.0, no_eos_penalty=None, dtype="float32")
    history, _ = ppo.main(cfg, reward_fn=lambda p, r: [2.0] * len(r))
    assert history[-1]["vf_loss"] < 0.5 * history[0]["vf_loss"], [m["vf_loss"] for m in history]


def test_adaptive_beta_survives_a_resume(world):
    """With the adaptive controller, a run resumed after iteration 2 goes on with the beta it had reached, as the
    uninterrupted run does."""
    tmp_path, tok = world
    yes = tok.encode(" yes")[0]
    reward_fn = lambda p, r: [sum(t == yes for t in x) / len(x) for x in r]  # noqa: E731
    cfg = tiny_config(tmp_path, iterations=4, lr=3e-3, adaptive_kl=True, kl_target=0.01, kl_horizon=16,
                      dtype="float32")
    whole, _ = ppo.main(cfg, reward_fn=reward_fn)
    part = dataclasses.replace(cfg, out_dir=str(tmp_path / "part"))
    ppo.main(dataclasses.replace(part, iterations=2), reward_fn=reward_fn)
    rest, _ = ppo.main(dataclasses.replace(part, init_from="resume"), reward_fn=reward_fn)
    assert whole[1]["kl_coef"] != cfg.kl_coef
    assert [m["kl_coef"] for m in rest] == [m["kl_coef"] for m in whole[2:]]


def test_policy_stats_hand_values():
    """approx_kl is the k3 estimator mean((r - 1) - log r) over real tokens, >= 0 for any ratios, and clipfrac the
    fraction of real tokens whose ratio r = exp(logp - old_logp) left [1 - eps, 1 + eps]."""
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.5, -0.5, 0.1, 9.0]])  # the last token is padding
    mask = ragged_mask([3], 4)
    r = torch.exp(new[0, :3])
    stats = ppo.policy_stats(new, old, mask, clip_eps=0.2)
    assert stats["approx_kl"] == pytest.approx(((r - 1) - torch.log(r)).mean().item(), rel=1e-6)
    assert stats["clipfrac"] == pytest.approx(2 / 3)


def test_ptx_data_dir_reads_the_pretraining_text_of_another_folder(world, watch):
    """With --ptx_data_dir, the ptx windows are those of that folder's pretraining text, while the prompts come from
    --data_dir, which has no pretraining text of its own (as a preference dataset has none)."""
    tmp_path, tok = world
    write_jsonl(tmp_path / "text" / "pretrain_train.jsonl", [{"text": "Human: b b yes a no no a"}] * 3)
    cfg = tiny_config(tmp_path, iterations=1, ptx_coef=0.5, ptx_seq_len=5, ptx_batch_size=2, dtype="float32")
    with pytest.raises(ConfigError, match="--ptx_data_dir"):
        ppo.main(cfg, reward_fn=lambda p, r: [0.0] * len(r))
    ppo.main(dataclasses.replace(cfg, ptx_data_dir=str(tmp_path / "text")), reward_fn=lambda p, r: [0.0] * len(r))
    stream = ",".join(map(str, load_split(str(tmp_path / "text"), "pretrain", "train", tok).stream.tolist()))
    assert watch["ptx"] and all(x is not None for x in watch["ptx"])
    for x, y in watch["ptx"]:
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            assert "," + ",".join(map(str, row_x + row_y[-1:])) + "," in "," + stream + ","
