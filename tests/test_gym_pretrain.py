"""Gym pretraining (tiny runs), packing, the probe's decoding modes, and the gym CLI."""

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nrt.commands.cli import main as nrt_main
from nrt.gym import tasks as T
from nrt.gym.pretrain import PretrainConfig, collate, pack_rows, pretrain
from nrt.gym.probe import answer_logprob, decode
from nrt.gym.tokenizer import RESPONSE_START

TINY = dict(steps=3, batch_tokens=512, max_length=128, hidden_size=32, num_layers=1, num_heads=2,
            intermediate_size=64, vocab_size=400, warmup_steps=1, log_every=1)


def test_pack_rows_keeps_every_document_once_within_the_row_length():
    rng = random.Random(0)
    docs = [[i] * rng.randint(1, 40) for i in range(300)]
    rows = pack_rows(docs, 64, rng)
    assert all(sum(map(len, r)) <= 64 for r in rows)
    assert sorted(d[0] for r in rows for d in r) == list(range(300))
    assert sum(map(len, docs)) / (64 * len(rows)) > 0.85  # little padding


def test_collate_restarts_positions_and_ignores_first_tokens_and_padding():
    x, pos, labels = collate([[[5, 6, 7], [8, 9]], [[1, 2]]], pad_id=0)
    assert x.tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert labels.tolist() == [[-100, 6, 7, -100, 9], [-100, 2, -100, -100, -100]]


def test_packed_documents_are_computed_as_if_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    a, b = [3, 4, 5, 6], [7, 8, 9]
    x, pos, _ = collate([[a, b]], pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=x, position_ids=pos, use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
    torch.testing.assert_close(packed[4:], alone_b, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_gym(tmp_path_factory):
    out = tmp_path_factory.mktemp("gym") / "base"
    pretrain(PretrainConfig(output_dir=str(out), tasks=("multihop",), seed=1, **TINY), log=lambda m: None)
    return out


def test_tiny_gym_pretrain_saves_a_model_that_reloads(tiny_gym):
    tok = AutoTokenizer.from_pretrained(tiny_gym)
    model = AutoModelForCausalLM.from_pretrained(tiny_gym)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tok) and (tiny_gym / "model.safetensors").exists()
    info = json.loads((tiny_gym / "gym.json").read_text())
    assert info["response_start_id"] == tok.convert_tokens_to_ids(RESPONSE_START)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert len(info["loss_curve"]) == 3
    # the premise check runs before any RL: one gain per task, on that task's training questions
    assert list(info["reasoning_gain_train"]) == ["multihop"]
    gain = info["reasoning_gain_train"]["multihop"]
    assert math.isfinite(gain["mean"]) and gain["stderr"] > 0 and gain["traces_per_question"] == 4


def test_same_seed_same_model(tiny_gym, tmp_path):
    pretrain(PretrainConfig(output_dir=str(tmp_path), tasks=("multihop",), seed=1, **TINY), log=lambda m: None)
    a = AutoModelForCausalLM.from_pretrained(tiny_gym).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    gain = [json.loads((d / "gym.json").read_text())["reasoning_gain_train"] for d in (tiny_gym, tmp_path)]
    assert gain[0] == gain[1]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_pretrain_on_a_user_corpus(tmp_path, suffix):
    lines = [f"document {i} says {i * 7} things." for i in range(200)]
    path = tmp_path / f"corpus{suffix}"
    path.write_text("\n".join(json.dumps({"text": t}) if suffix == ".jsonl" else t for t in lines) + "\n")
    out = tmp_path / "model"
    pretrain(PretrainConfig(output_dir=str(out), corpus=str(path), **TINY), log=lambda m: None)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok(lines[3])["input_ids"]) == lines[3]
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(tok)
    assert "reasoning_gain_train" not in json.loads((out / "gym.json").read_text())  # no Q&A to measure it on


def test_probe_modes_direct_and_forced_think(tiny_gym):
    tok = AutoTokenizer.from_pretrained(tiny_gym)
    model = AutoModelForCausalLM.from_pretrained(tiny_gym).eval()
    qs = ["where does the mother of kuna live?", "who is the father of vera?"]
    direct = decode(model, tok, qs, "direct", max_new_tokens=4)
    think = decode(model, tok, qs, "think", max_new_tokens=4)
    assert all(t == "" for t, _ in direct)
    assert all(t != "" for t, _ in think)  # the first token may not be <|response_start|>
    # answer log-probability: an independent sum of per-token log-softmax
    lp = answer_logprob(model, tok, [tok(qs[0] + "\n")["input_ids"]], ["paris"])
    ids = tok(qs[0] + "\n")["input_ids"] + [tok.convert_tokens_to_ids(RESPONSE_START)]
    ans = tok("paris")["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + ans])).logits[0].double().log_softmax(-1)
    ref = sum(logits[len(ids) - 1 + i, t].item() for i, t in enumerate(ans))
    assert abs(lp.item() - ref) < 1e-4


def test_cli_data_writes_disjoint_splits(tmp_path):
    assert nrt_main(["gym", "data", "--output-dir", str(tmp_path), "--tasks", "multihop,boolean_expressions"]) == 0
    seen = set()
    for task in ("multihop", "boolean_expressions"):
        for split in T.SPLITS:
            rows = [json.loads(line) for line in (tmp_path / task / f"{split}.jsonl").read_text().splitlines()]
            assert rows and all(set(r) == {"question", "answer"} for r in rows)
            qs = {r["question"] for r in rows}
            assert not qs & seen
            seen |= qs
    assert len((tmp_path / "boolean_expressions" / "test.jsonl").read_text().splitlines()) == 300
