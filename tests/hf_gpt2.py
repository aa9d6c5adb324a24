"""A tiny GPT-2 written by a test itself in the Hugging Face layout (config.json + model.safetensors or
pytorch_model.bin), as --init_from=DIR reads it: tests/test_model.py checks the loading, tests/test_realdata.py
starts the real-data recipe from it."""

import json
import os

import torch


def hf_gpt2_weights(n_layer=2, n_embd=16, vocab=61, n_pos=32, seed=0):
    """Random weights named and shaped as HF's GPT2LMHeadModel stores them (Conv1D weights are (in, out))."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    w = {"transformer.wte.weight": r(vocab, n_embd), "transformer.wpe.weight": r(n_pos, n_embd),
         "transformer.ln_f.weight": 1 + r(n_embd), "transformer.ln_f.bias": r(n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        w.update({p + "ln_1.weight": 1 + r(n_embd), p + "ln_1.bias": r(n_embd),
                  p + "attn.c_attn.weight": r(n_embd, 3 * n_embd), p + "attn.c_attn.bias": r(3 * n_embd),
                  p + "attn.c_proj.weight": r(n_embd, n_embd), p + "attn.c_proj.bias": r(n_embd),
                  p + "ln_2.weight": 1 + r(n_embd), p + "ln_2.bias": r(n_embd),
                  p + "mlp.c_fc.weight": r(n_embd, 4 * n_embd), p + "mlp.c_fc.bias": r(4 * n_embd),
                  p + "mlp.c_proj.weight": r(4 * n_embd, n_embd), p + "mlp.c_proj.bias": r(n_embd),
                  p + "attn.bias": torch.ones(1, 1, n_pos, n_pos).tril()})  # HF's causal-mask buffer
    w["lm_head.weight"] = w["transformer.wte.weight"]
    return w


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def write_hf_gpt2(directory, fmt, vocab=61, n_layer=2, n_head=2, n_embd=16, n_pos=32, seed=0):
    """A tiny GPT-2 written as the Hugging Face layout has it: config.json, and model.safetensors or
    pytorch_model.bin. HF's safetensors omit the tied lm_head; the .bin keeps it, and both keep the mask
    buffers, so that loading is seen to skip them. Returns the weights written."""
    w = hf_gpt2_weights(n_layer=n_layer, n_embd=n_embd, vocab=vocab, n_pos=n_pos, seed=seed)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "n_positions": n_pos,
                   "vocab_size": vocab}, f)
    if fmt == "safetensors":
        write_safetensors(os.path.join(directory, "model.safetensors"),
                          {k: v for k, v in w.items() if k != "lm_head.weight"})
    else:
        torch.save(w, os.path.join(directory, "pytorch_model.bin"))
    return w
