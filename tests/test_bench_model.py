"""`nrt bench --model`: a real model directory and its tokenizer, or its architecture with random
weights (`--config-only`); questions drawn from its vocabulary; one-line refusals.

Tiny models saved to tmp_path from a config (no download). No timing in any pass condition.
"""

import argparse
import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from nrt.commands.bench import main
from nrt.experiments.bench import vocabulary_examples, workload
from nrt.tiny import save_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--prompts", "2", "--generations", "2", "--think", "4", "--prompt-tokens", "5", "--answer-tokens", "3",
         "--steps", "1", "--warmup", "0", "--dtype", "float32", "--fixed-length"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("bench") / "model"), hidden=64, layers=2, seed=5)


def byte_level_tokenizer():
    """A small byte-level BPE (SmolLM2's and GPT-2's kind: words carry their leading space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "then", "there", "other", "brother",
             "quickly", "overthe", "thermal", "dogma", "foxes", "jumped", "browner", "lazier"]
    text = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(200)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|pad|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>")


def run_bench_json(argv) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        main(argv)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def bench_namespace(model, config_only=False, **kw):
    args = dict(model=model, config_only=config_only, hidden=64, layers=2, vocab=256, prompts=2, micro_prompts=0,
                generations=2, think=4, prompt_tokens=5, answer_tokens=3, steps=1, warmup=0, seed=3,
                fixed_length=True, dtype="float32", threads=0, trace_rss=False, compile=False)
    args.update(kw)
    return argparse.Namespace(**args)


def test_bench_times_the_model_in_the_directory_and_counts_its_work(model_dir):
    from transformers import AutoModelForCausalLM

    r = run_bench_json(["--model", model_dir, *SMALL])
    saved = AutoModelForCausalLM.from_pretrained(model_dir)
    assert r["params_total"] == sum(p.numel() for p in saved.parameters())  # not the random --hidden/--layers Llama
    assert r["sampled_tokens"] == 2 * 2 * 4 and r["prefill_tokens"] == 2 * 5
    assert r["trained_tokens"] == 2 * 5 + 2 * 2 * (4 + 1 + 3)
    assert r["config"]["model"] == model_dir and r["rss_mb_loaded"] > 0


def test_config_only_builds_the_same_architecture_with_seeded_random_weights(model_dir):
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    a, tok_a, ex_a = workload(bench_namespace(model_dir, config_only=True), 4)
    b, _, ex_b = workload(bench_namespace(model_dir, config_only=True), 4)
    c, _, _ = workload(bench_namespace(model_dir, config_only=True, seed=4), 4)
    real, _, ex_real = workload(bench_namespace(model_dir), 4)
    assert a.config.to_dict()["hidden_size"] == real.config.hidden_size == 64
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in saved.items()}
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in saved)  # same seed, same weights
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, saved["model.layers.0.mlp.up_proj.weight"])
    assert all(torch.equal(real.state_dict()[k], saved[k]) for k in saved)  # without --config-only: the weights
    assert [e.prompt_ids for e in ex_a] == [e.prompt_ids for e in ex_b] == [e.prompt_ids for e in ex_real]
    assert len(tok_a) == len(AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight)


def test_vocabulary_examples_are_ordinary_tokens_whose_text_re_encodes_to_them():
    tok = byte_level_tokenizer()
    examples = vocabulary_examples(tok, 20, prompt_tokens=16, answer_tokens=5, seed=0)
    special = set(tok.all_special_ids)
    for ex in examples:
        assert len(ex.prompt_ids) == 16 and len(ex.answer_ids) == 5 and ex.answer_ids[-1] == tok.eos_token_id
        assert not special & set(ex.prompt_ids + ex.answer_ids[:-1])
        assert tok(tok.decode(ex.prompt_ids), add_special_tokens=False)["input_ids"] == ex.prompt_ids
    again = vocabulary_examples(tok, 20, prompt_tokens=16, answer_tokens=5, seed=0)
    assert [e.prompt_ids for e in again] == [e.prompt_ids for e in examples]
    assert len({i for e in examples for i in e.prompt_ids}) > 20  # drawn across the vocabulary


def test_vocabulary_examples_refuse_a_tokenizer_without_ordinary_tokens():
    from nrt.tiny import char_tokenizer

    with pytest.raises(ValueError, match="fewer than 2 ordinary tokens"):
        vocabulary_examples(char_tokenizer(alphabet="a"), 2, 3, 2, seed=0)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "missing"), "missing: no such file or directory"),
    (lambda tmp: (tmp / "empty").mkdir() or str(tmp / "empty"), "empty: no config.json, not a model directory"),
    (lambda tmp: (tmp / "x.gguf").write_bytes(b"GGUF\0garbage") and str(tmp / "x.gguf"), "not a readable GGUF"),
])
def test_a_bad_model_is_one_line_and_exit_2(make, message, tmp_path, capsys):
    from nrt.commands.cli import USAGE_ERROR
    from nrt.commands.cli import main as nrt_main

    path = make(tmp_path)
    assert nrt_main(["bench", "--model", path, *SMALL]) == USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("nrt bench: error:")
    with pytest.raises(SystemExit) as exit_info:  # python -m nrt.commands.bench
        main(["--model", path, *SMALL])
    assert exit_info.value.code == USAGE_ERROR and message in capsys.readouterr().err


def test_config_only_without_a_model_is_refused(capsys):
    from nrt.commands.cli import USAGE_ERROR
    from nrt.commands.cli import main as nrt_main

    assert nrt_main(["bench", "--config-only", *SMALL]) == USAGE_ERROR
    assert capsys.readouterr().err.strip() == "nrt bench: error: --config-only needs --model (whose config to build)"
