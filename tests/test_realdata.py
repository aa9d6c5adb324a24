"""The README's real-data recipe end to end, tiny: the commands of its "Real data and GPUs" section, run as they
stand (each script's main with the same flags), with tiny sizes appended (a later --key=value wins) and GPT-2
replaced by tiny GPT-2 directories this file writes in the Hugging Face layout. The inputs are written here too:
HH-RLHF and OpenAssistant files and a plain-text corpus. Then the one-line answers to bad real data."""

import contextlib
import importlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from hf_gpt2 import write_hf_gpt2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402
import reward  # noqa: E402
import sft  # noqa: E402
from common import ConfigError, run  # noqa: E402
from data.formats import DataError, read_jsonl, write_jsonl  # noqa: E402
from data.synthetic import evaluate as synthetic_evaluate  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64  # the tiny GPT-2's context: the long prompts below do not fit in it
# what each README command gets appended: tiny sizes, a CPU in float32, the inputs this file writes
TINY = {
    "data/hh_rlhf/prepare.py": ["--src=hh.jsonl", "--val_fraction=0.2"],
    "data/oasst/prepare.py": ["--src=trees.jsonl"],
    "data/text/prepare.py": ["--src=text.txt", "--max_chars=300"],
    "sft.py": ["--batch_size=8", "--lr=1e-3", "--epochs=2", "--eval_interval=8", "--eval_batches=2",
               "--num_samples=0", "--log_interval=1", "--compile=false"],
    "reward.py": ["--batch_size=8", "--lr=1e-3", "--epochs=3", "--eval_interval=0", "--eval_batch_size=16",
                  "--norm_samples=16", "--norm_max_tokens=8", "--log_interval=1"],
    "ppo.py": ["--iterations=2", "--batch_size=8", "--minibatch_size=4", "--max_new_tokens=8", "--ptx_batch_size=2",
               "--ptx_seq_len=32", "--lr=1e-3", "--eval_prompts=8", "--warmup_iters=1", "--sample_interval=0"],
    "evaluate.py": ["--max_new_tokens=8", "--prompts=12", "--batch_size=16"],
}
SYSTEM = ["--device=cpu", "--dtype=float32"]  # the stages' (not the converters')
GPT2_DIRS = {"gpt2": "gpt2_small", "gpt2-medium": "gpt2_medium"}  # the GPT-2 sizes the README names -> tiny dirs

THINGS = ["apples", "rivers", "clocks", "lamps", "boats", "hats", "roads", "birds", "coins", "doors"]
COLOURS = ["red", "blue", "green", "gold", "grey", "pink", "white", "black"]
LONG = "Tell me everything about the old harbour town, its ships, its markets and its people. " * 6


def readme_commands():
    """The python commands of the README's "Real data and GPUs" code block, as argument lists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Real data and GPUs"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def hh_pairs():
    """HH-RLHF lines: a polite right answer chosen over a rude one, some conversations of two turns, and a few
    prompts too long for the tiny context."""
    pairs = []
    for i, thing in enumerate(THINGS * 8):
        colour = COLOURS[i % len(COLOURS)]
        head = f"\n\nHuman: What colour are the {thing} of row {i}?"
        if i % 5 == 0:
            head = f"\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?{head}"
        if i % 11 == 3:
            head = f"\n\nHuman: {LONG}Row {i}."
        pairs.append({"chosen": f"{head}\n\nAssistant: The {thing} are {colour}. Happy to help!",
                      "rejected": f"{head}\n\nAssistant: Go away, I will not say."})
    return pairs


def oasst_trees():
    """OpenAssistant trees: a question with three ranked replies (polite, plain, rude) and a follow-up."""
    def msg(text, role, rank=None, replies=()):
        return {"text": text, "role": role, "rank": rank, "lang": "en", "replies": list(replies)}
    trees = []
    for i, thing in enumerate(THINGS * 2):
        follow = msg(f"And the {thing} of row {i + 1}?", "prompter", replies=[
            msg("Those are blue. Glad to help!", "assistant", 0), msg("No.", "assistant", 1)])
        root = msg(f"What colour are the {thing} of row {i}?", "prompter", replies=[
            msg(f"The {thing} are red. Happy to help!", "assistant", 0, [follow]),
            msg("Red.", "assistant", 1), msg("Go away.", "assistant", 2)])
        trees.append({"message_tree_id": f"tree{i}", "prompt": root})
    return trees


def plain_text():
    sentences = [f"The {t} of the harbour town were {c} and the people liked them." for t in THINGS for c in COLOURS]
    return "\n\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)) + "\n"


def command_args(cmd):
    """(script, argv): a README command with its GPT-2 names replaced by the tiny directories and the tiny flags
    appended."""
    assert cmd[0] == "python", cmd
    script = cmd[1]
    args = [re.sub(r"^--(init_from)=(gpt2(-medium)?)$", lambda m: f"--{m[1]}={GPT2_DIRS[m[2]]}", a) for a in cmd[2:]]
    return script, args + TINY[script] + (SYSTEM if not script.startswith("data/") else [])


def run_command(script, args):
    """script's main(args), in this process; returns what it printed."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(args)
    return out.getvalue()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The README's commands in a fresh folder (relative paths land there), in order, PPO resumed for one more
    iteration right after its run. Returns (folder, {script or 'ppo.py resume': [printed output, ...]}, the
    commands)."""
    root = tmp_path_factory.mktemp("recipe")
    write_jsonl(root / "hh.jsonl", hh_pairs())
    write_jsonl(root / "trees.jsonl", oasst_trees())
    (root / "text.txt").write_text(plain_text())
    write_hf_gpt2(str(root / "gpt2_small"), "safetensors", vocab=50257, n_embd=32, n_pos=BLOCK, seed=0)
    write_hf_gpt2(str(root / "gpt2_medium"), "bin", vocab=50257, n_embd=32, n_pos=BLOCK, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they give (conftest.one_thread)
    printed, commands = {}, [command_args(c) for c in readme_commands()]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for script, args in commands:
            printed.setdefault(script, []).append(run_command(script, args))
            if script == "ppo.py":  # interrupted after 2 iterations, as it were: one more from resume.pt
                printed["ppo.py resume"] = [run_command(script, args + ["--init_from=resume", "--iterations=3"])]
    torch.set_num_threads(threads)
    return root, printed, commands


def out_dir(commands, script, index=0):
    """The --out_dir of the index-th README command of script (the last --out_dir given wins)."""
    args = [a for s, a in commands if s == script][index]
    return [a.split("=", 1)[1] for a in args if a.startswith("--out_dir=")][-1]


def test_readme_recipe_is_the_papers(recipe):
    """The README runs SFT from GPT-2, the RM and the judge RM, PPO-ptx with text from another folder, and the
    evaluation, in that order, every stage on the converted HH-RLHF data."""
    _, _, commands = recipe
    scripts = [s for s, _ in commands if not s.startswith("data/")]
    assert scripts == ["sft.py", "reward.py", "reward.py", "ppo.py", "evaluate.py"]
    ppo_args = next(a for s, a in commands if s == "ppo.py")
    assert "--ptx_data_dir=data/text" in ppo_args and "--data_dir=data/hh_rlhf" in ppo_args
    judge_args = [a for s, a in commands if s == "reward.py"][1]
    assert "--train_split=judge" in judge_args


def test_sft_from_a_gpt2_directory_lowers_the_validation_loss(recipe):
    """SFT from a Hugging Face-layout GPT-2 directory: the validation loss at the end is below the one before
    the first step."""
    root, _, commands = recipe
    logged = read_jsonl(root / out_dir(commands, "sft.py") / "metrics.jsonl")
    losses = [m["val_loss"] for m in logged if "val_loss" in m]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5


def test_reward_models_learn_their_own_splits(recipe):
    """The policy's RM trains on comparisons_train.jsonl and the judge (from the other GPT-2 directory, a .bin)
    on comparisons_judge.jsonl, as they say and their run configs record; both training losses fall and both
    order the validation pairs better than chance."""
    root, printed, commands = recipe
    for index, split in ((0, "train"), (1, "judge")):
        path = root / out_dir(commands, "reward.py", index)
        assert re.search(rf"comparisons_{split}.jsonl: \d+ prompts, K = 2..2", printed["reward.py"][index]), split
        assert load_checkpoint(str(path / "reward.pt"))["run_config"]["train_split"] == split
        logged = read_jsonl(path / "metrics.jsonl")
        losses = [m["loss"] for m in logged if "loss" in m]
        assert losses[-1] < losses[0], split
        assert logged[-1]["final"] and logged[-1]["val/acc"] > 0.5, split


def test_every_stage_counts_the_prompts_it_drops(recipe):
    """Prompts longer than the tiny context are dropped and counted aloud by SFT, both RMs, PPO and evaluate.py
    (data.loader.fitting's line), not silently and not as a crash."""
    _, printed, _ = recipe
    line = re.compile(r"skipping [1-9]\d* of \d+ longer than \d+ tokens")
    for script in ("sft.py", "reward.py", "ppo.py", "evaluate.py"):
        for out in printed[script]:
            assert line.search(out), (script, out[-2000:])


def test_ppo_ptx_moves_away_from_sft_and_resumes(recipe):
    """PPO-ptx on HH prompts with the ptx text of another folder: the KL to SFT is 0 in the first iteration (the
    policy is SFT) and not after its updates, the ptx loss is logged every iteration, and --init_from=resume
    continues the run from its last iteration to the next."""
    root, printed, commands = recipe
    logged = [m for m in read_jsonl(root / out_dir(commands, "ppo.py") / "metrics.jsonl") if "kl" in m]
    assert [m["step"] for m in logged] == [1, 2, 3]
    assert abs(logged[0]["kl"]) < 1e-4 and abs(logged[-1]["kl"]) > 1e-3
    assert all(m["ptx_loss"] > 0 for m in logged)
    assert "at step 2" in printed["ppo.py resume"][0]
    assert load_checkpoint(str(root / out_dir(commands, "ppo.py") / "ppo.pt"))["step"] == 3


def test_evaluation_reports_every_model_against_sft(recipe):
    """results.json holds win_rate_vs_sft (SFT's own 0.5) and every other figure for each model of --models, the
    judge it names is the held-out one, results.md calls the win rate a proxy, and responses/NAME.jsonl holds
    each model's answer to every judged prompt (held-out ones: HH has no test split, so val's) with the judge's
    score, which the win rate is recomputed from. The PPO model's KL to SFT on its own samples is positive."""
    root, _, commands = recipe
    out = root / out_dir(commands, "evaluate.py")
    res = json.loads((out / "results.json").read_text())
    models = ["sft", "ppo_ptx"]
    for key in ("win_rate_vs_sft", "win_ci95", "judge_score", "rm_score", "kl_to_sft", "text_loss", "ended"):
        assert list(res[key]) == models, key
    assert res["win_rate_vs_sft"]["sft"] == 0.5 and res["kl_to_sft"]["sft"] == 0.0
    assert res["judge"]["trained_on"].endswith("comparisons_judge.jsonl")
    assert "proxy" in (out / "results.md").read_text() and "not a human judgment" in (out / "results.md").read_text()
    answers = {m: read_jsonl(out / "responses" / f"{m}.jsonl") for m in models}
    assert len(answers["sft"]) == res["num_prompts"] > 0 and res["split"] == "val"
    held_out = {r["prompt"] for r in read_jsonl(root / "data" / "hh_rlhf" / "prompts_val.jsonl")}
    assert {a["prompt"] for a in answers["sft"]} <= held_out
    assert res["kl_to_sft"]["ppo_ptx"] > 0
    pairs = list(zip(answers["ppo_ptx"], answers["sft"]))
    assert [a["prompt"] for a, _ in pairs] == [b["prompt"] for _, b in pairs]
    wins = [0.5 if a["response"] == b["response"] else float(a["judge_score"] > b["judge_score"]) for a, b in pairs]
    assert res["win_rate_vs_sft"]["ppo_ptx"] == pytest.approx(sum(wins) / len(wins))
    assert res["judge_score"]["ppo_ptx"] == pytest.approx(sum(a["judge_score"] for a, _ in pairs) / len(pairs))


def test_oasst_rankings_train_a_reward_model(recipe, tmp_path, monkeypatch):
    """The OpenAssistant folder the README converts (K = 3 rankings) trains a reward model straight from the .bin
    GPT-2 directory, on its judge split too."""
    root, _, _ = recipe
    monkeypatch.chdir(root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        reward.main(["--init_from=gpt2_medium", "--data_dir=data/oasst", "--train_split=judge", "--norm_policy=none",
                     f"--out_dir={tmp_path}", *TINY["reward.py"], *SYSTEM])
    assert "K = 2..3" in out.getvalue()
    logged = read_jsonl(tmp_path / "metrics.jsonl")
    assert logged[-1]["final"] and logged[-1]["val/acc"] > 0.5


def test_data_with_a_judge_gets_its_own_evaluation(tmp_path, monkeypatch):
    """evaluate.py on a folder whose judge.json names a judge hands the whole evaluation to it, with the settings
    it takes under its own names (--prompts is the synthetic evaluation's num_prompts), and refuses one it has
    no use for (a judge model) in one message rather than ignore it."""
    (tmp_path / "judge.json").write_text(json.dumps({"module": "data.synthetic.judge"}) + "\n")
    seen = []
    monkeypatch.setattr(synthetic_evaluate, "main", lambda cfg: seen.append(cfg) or {"handed": True})
    args = [f"--data_dir={tmp_path}", "--models=sft=a.pt", "--prompts=7", "--max_new_tokens=9", "--split=val",
            "--seed=3", "--out_dir=o", "--reward_model=r.pt", "--baseline=sft"]
    assert evaluate.main(args) == {"handed": True}
    assert seen == [synthetic_evaluate.EvalConfig(models=("sft=a.pt",), num_prompts=7, max_new_tokens=9, split="val",
                                                  seed=3, out_dir="o", reward_model="r.pt", data_dir=str(tmp_path))]
    with pytest.raises(ConfigError, match="judged by its own labelers .* take no --judge_model, --dtype: drop them"):
        evaluate.main(args + ["--judge_model=j.pt", "--dtype=bfloat16"])


# -----------------------------------------------------------------------------
# bad real data: one line that names the fix


def run_as_script(main, args, monkeypatch, capsys):
    """main run as `python SCRIPT ARGS` runs it (common.run): (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["script.py", *args])
    monkeypatch.delenv("RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(main)
    return exit_info.value.code, capsys.readouterr().err


def test_judge_trained_on_the_policy_rms_comparisons_is_refused(recipe, monkeypatch, capsys):
    """evaluate.py with the policy's own RM, or any RM of the same data folder and split, as the judge stops with
    one line naming the held-out judge command."""
    root, _, commands = recipe
    monkeypatch.chdir(root)
    args = next(a for s, a in commands if s == "evaluate.py")
    rm = next(a for a in args if a.startswith("--reward_model=")).split("=", 1)[1]
    code, err = run_as_script(evaluate.main, args + [f"--judge_model={rm}"], monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "comparisons_train.jsonl, the comparisons of --reward_model" in err and "--train_split=judge" in err


def test_data_the_model_cannot_read_names_the_fix(recipe, tmp_path, monkeypatch, capsys):
    """A model of another vocabulary (a compact one) on HH-RLHF: one line naming the command that starts from
    GPT-2, in SFT and in the reward model."""
    root, _, _ = recipe
    tok = Tokenizer.build_compact(["What colour are the apples?"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(str(tmp_path / "compact.pt"), stage="sft", model=model, run_config={}, tokenizer=tok)
    data = root / "data" / "hh_rlhf"
    for main in (sft.main, reward.main):
        code, err = run_as_script(main, [f"--init_from={tmp_path / 'compact.pt'}", f"--data_dir={data}",
                                         f"--out_dir={tmp_path / 'out'}", *SYSTEM], monkeypatch, capsys)
        assert code == 1 and err.count("\n") == 1, err
        assert f"python sft.py --init_from=gpt2 --data_dir={data}" in err


def test_prompts_that_leave_no_room_name_the_fix(recipe, monkeypatch, capsys):
    """Where no held-out prompt leaves room for --max_new_tokens in the judge's context, evaluate.py says so in
    one line that names what to shorten or lower."""
    root, _, commands = recipe
    monkeypatch.chdir(root)
    args = next(a for s, a in commands if s == "evaluate.py")
    code, err = run_as_script(evaluate.main, args + [f"--max_new_tokens={BLOCK - 4}"], monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "nothing fits in 4 tokens" in err and "--max_chars" in err and "--max_new_tokens" in err


def test_prompts_holding_the_chat_template_name_the_fix(tmp_path):
    """A hand-made folder whose prompts carry the template ("Human: ... Assistant:") is refused by every stage's
    reader in one message naming the file, the line and the fix, before any model would read it twice."""
    write_jsonl(tmp_path / "sft_train.jsonl", [{"prompt": "What is 2 + 2?", "response": "4"},
                                               {"prompt": "Human: What is 3 + 3?\n\nAssistant:", "response": "6"}])
    with pytest.raises(DataError, match=r"sft_train.jsonl:2: field 'prompt' holds the chat template .* store the bare"):
        read_jsonl(tmp_path / "sft_train.jsonl", {"prompt": str, "response": str})


def test_reward_refuses_training_on_the_validation_split(recipe, tmp_path):
    """--train_split takes train or judge: training on val would leave the RM no held-out pairs."""
    with pytest.raises(ConfigError, match="--train_split must be train or judge"):
        reward.main([f"--init_from={recipe[0] / 'gpt2_small'}", f"--data_dir={recipe[0] / 'data' / 'hh_rlhf'}",
                     "--train_split=val",
                     f"--out_dir={tmp_path}", *SYSTEM])
