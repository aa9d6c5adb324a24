"""What only a GPU can show, skipped without CUDA: bf16 autocast within tolerance of fp32, SDPA's flash kernel
taken by the unmasked attention of training (the memory-efficient one by a padded batch), torch.compile equal
to eager, the KV cache exact on the GPU, and a stage's tiny run learning there with the GPU recipe."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import model as M
import sft
from test_sft import TINY as SFT_TINY
from test_sft import write_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"
V, T = 512, 128


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 means fp32 here: a CUDA run of setup_runtime turns TF32 matmuls on for the process."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = tf32


def gpt(seed=0):
    torch.manual_seed(seed)
    return M.GPT(M.GPTConfig(block_size=T, vocab_size=V, n_layer=2, n_head=4, n_embd=128, dropout=0.0)).to(DEVICE)


def batch(seed=1, B=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(V, (B, T), generator=g).to(DEVICE) for _ in range(2))


def bf16():
    return torch.autocast(DEVICE, dtype=torch.bfloat16)


def loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = model(x, targets=y)[1]
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()])


def test_bf16_autocast_loss_and_gradients_within_tolerance_of_fp32():
    """The GPU recipe's bf16 autocast changes the loss by under 1% and keeps the gradient's direction."""
    model, (x, y) = gpt(), batch()
    loss32, grad32 = loss_and_grads(model, x, y)
    with bf16():
        loss16, grad16 = loss_and_grads(model, x, y)
    assert abs(loss16 - loss32) < 1e-2 * loss32, (loss16, loss32)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99
    assert (grad16 - grad32).norm() < 0.1 * grad32.norm()


def test_training_attention_takes_the_flash_kernel_and_a_padded_batch_the_memory_efficient_one():
    """Restricted to one SDPA backend, a call it cannot serve raises ("No available kernel"): so training
    (no mask, bf16) runs on flash attention, and a left-padded batch (a mask) on the memory-efficient kernel."""
    model, (x, y) = gpt(), batch()
    with bf16(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        loss = model(x, targets=y)[1]
        loss.backward()
    assert torch.isfinite(loss)
    mask = torch.ones(x.shape, dtype=torch.bool, device=DEVICE)
    mask[::2, :17] = False  # every other row left-padded
    with torch.no_grad(), bf16(), sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        logits, _ = model(x, attention_mask=mask)
    assert torch.isfinite(logits).all()


def test_compile_equals_eager():
    """torch.compile'd forward and gradients equal eager ones (fp32: to rounding; bf16: within its precision)."""
    model, (x, y) = gpt(), batch()
    compiled = torch.compile(model)
    for autocast, loss_tol, grad_tol in ((torch.autocast(DEVICE, enabled=False), 1e-5, 1e-3), (bf16(), 1e-2, 5e-2)):
        with autocast:
            eager_loss, eager_grad = loss_and_grads(model, x, y)
            compiled_loss, compiled_grad = loss_and_grads(compiled, x, y)
        assert compiled_loss == pytest.approx(eager_loss, rel=loss_tol)
        assert (compiled_grad - eager_grad).norm() < grad_tol * eager_grad.norm()


def test_kv_cache_equals_full_recomputation_on_the_gpu():
    """Cached decoding of left-padded prompts on the GPU (SDPA's masked kernel, the cache's whole buffer):
    each step's logits equal one full pass over the final sequences, in fp32."""
    model = gpt().eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, V, (n,), generator=g).tolist() for n in (3, 9, 6, 12)]
    out = M.generate(model, prompts, 20, temperature=1.0, seeds=[0, 1, 2, 3])
    seqs, P = out["seqs"], out["prompt_len"]
    mask = torch.cat([out["attention_mask"][:, :P], torch.ones_like(out["responses"], dtype=torch.bool)], 1)
    with torch.no_grad():
        full, _ = model(seqs, attention_mask=mask)
        cache = M.KVCache(model.config.n_layer, seqs.shape[1])
        pieces = [model(seqs[:, :P], attention_mask=mask[:, :P], kv_cache=cache)[0]]
        for t in range(P, seqs.shape[1]):
            pieces.append(model(seqs[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, 1)[mask], full[mask], atol=1e-4, rtol=1e-4)


def test_sft_tiny_run_learns_on_the_gpu_with_bf16_and_compile(tmp_path):
    """sft.py on CUDA as the GPU recipe runs it (bf16 autocast, fused AdamW, --compile): validation loss falls."""
    d = write_dataset(tmp_path / "data")
    out = str(tmp_path / "pre")
    args = [a for a in SFT_TINY if not a.startswith(("--device", "--dtype"))]
    sft.main(["--mode=pretrain", f"--data_dir={d}", f"--out_dir={out}", "--epochs=4", "--eval_interval=20",
              "--warmup_steps=5", "--lr=3e-3", f"--device={DEVICE}", "--compile=true", *args])
    vals = [r["val_loss"] for r in map(json.loads, open(f"{out}/metrics.jsonl")) if "val_loss" in r]
    assert len(vals) >= 2 and vals[-1] < 0.8 * vals[0], vals
