"""LoRA (model.use_peft) on tiny Llama (tied embeddings), Mistral and Qwen2 (untied, Qwen2 with
q/k/v biases): what trains, the step's loss and gradients against a float64 computation by hand,
the adapter-disabled reference, the merged export, and resume."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from nrt.advantages import group_norm
from nrt.loss import LossInputs, nrt_loss
from nrt.rewards import aggregate
from nrt.engine.options import EngineOptions
from nrt.engine.sequences import completion_logprobs, gather_columns, pack
from nrt.tiny import char_tokenizer
from nrt.tokens import ensure_response_start_token

from test_resume import metrics_of, train_until_crash
from test_trainer import grads_of, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ("llama", "mistral", "qwen2")
LORA = dict(model__use_peft=True, model__lora_r=4, model__lora_alpha=8)


def tiny_config(arch: str, vocab: int):
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=None, eos_token_id=1,
                  pad_token_id=0)
    if arch == "llama":
        return LlamaForCausalLM, LlamaConfig(tie_word_embeddings=True, **common)
    if arch == "mistral":
        return MistralForCausalLM, MistralConfig(tie_word_embeddings=False, sliding_window=None, **common)
    return Qwen2ForCausalLM, Qwen2Config(tie_word_embeddings=False, **common)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """arch -> a saved tiny model with the char tokenizer (the tokenizer lacks <|response_start|>,
    so the trainer adds the token and resizes the embeddings, as with a real base model)."""
    dirs = {}
    for arch in ARCHS:
        tokenizer = char_tokenizer(with_response_start=False)
        cls, config = tiny_config(arch, len(tokenizer))
        torch.manual_seed(1)
        model = cls(config)
        path = tmp_path_factory.mktemp(arch) / "model"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch] = str(path)
    return dirs


def base_model(model_dir, dtype=torch.float32):
    """The base model as the trainer sees it before LoRA: <|response_start|> added, rows from eos."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rs = ensure_response_start_token(model, tokenizer)
    return model, rs


def lora_parts(trainer):
    """{linear name in the base model: (A [r, in], B [out, r])} and {embedding name: row [1, H]}."""
    adapters, rows = {}, {}
    for name, p in trainer.model.named_parameters():
        plain = name.removeprefix("base_model.model.")
        if ".lora_A.default." in name:
            adapters.setdefault(plain.replace(".lora_A.default", ""), [None, None])[0] = p
        elif ".lora_B.default." in name:
            adapters.setdefault(plain.replace(".lora_B.default", ""), [None, None])[1] = p
        elif "trainable_tokens_delta" in name:
            rows[plain.replace(".token_adapter.trainable_tokens_delta.default", ".weight")] = p
    return adapters, rows


def perturb(trainer, seed=0):
    """LoRA's B starts at 0 (A's gradient would be 0) and the token row at its base value: move both."""
    generator = torch.Generator().manual_seed(seed)
    adapters, rows = lora_parts(trainer)
    with torch.no_grad():
        for _, b in adapters.values():
            b.copy_(0.2 * torch.randn(b.shape, generator=generator))
        for row in rows.values():
            row.add_(0.5 * torch.randn(row.shape, generator=generator))


class Functional(torch.nn.Module):
    """`module` run with some weights replaced by given tensors (torch.func.functional_call)."""

    def __init__(self, module, params):
        super().__init__()
        self.module, self.params = module, params

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.module, self.params, args, kwargs)


def manual_lora_model(model_dir, adapters, rows, scaling):
    """float64 base with W + B@A * scaling on every adapted linear layer and the token rows replaced,
    the adapter tensors as float64 leaves (their gradients are the reference)."""
    base, rs = base_model(model_dir, torch.float64)
    leaves, params = {}, {}
    weights = dict(base.named_parameters(remove_duplicate=False))
    for name, (a, b) in adapters.items():
        a64 = a.detach().double().requires_grad_(True)
        b64 = b.detach().double().requires_grad_(True)
        leaves[name + ".A"], leaves[name + ".B"] = a64, b64
        params[name] = weights[name] + (b64 @ a64) * scaling
    for name, row in rows.items():
        r64 = row.detach().double().requires_grad_(True)
        leaves[name + ".row"] = r64
        params[name] = weights[name].index_copy(0, torch.tensor([rs]), r64)
    return Functional(base, params), leaves


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_adapters_and_the_response_start_rows(model_dirs, sums_file, tmp_path, arch):
    trainer = make_trainer(model_dirs[arch], sums_file, tmp_path, trainer__warmup_ratio=0.0,
                           trainer__learning_rate=1e-2, trainer__max_steps=1, **LORA)
    peft_model = trainer.model
    adapters, rows = lora_parts(trainer)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in peft_model.named_parameters()
                         if ".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n}
    base, rs = base_model(model_dirs[arch])
    # all-linear: every linear layer of the decoder has an adapter, the output layer has none
    linears = {n + ".weight" for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert set(adapters) == linears
    tied = base.config.tie_word_embeddings
    assert set(rows) == ({"model.embed_tokens.weight"} if tied else {"model.embed_tokens.weight", "lm_head.weight"})

    trainer.train_step()
    merged = peft_model.merge_and_unload()
    after = dict(merged.named_parameters(remove_duplicate=False))
    for name, weight in base.named_parameters(remove_duplicate=False):
        moved = (after[name] - weight).abs()
        if name in adapters:
            assert moved.max() > 1e-5, name
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            others = torch.ones(weight.shape[0], dtype=torch.bool)
            others[rs] = False
            assert moved[others].max() == 0, name
            assert moved[rs].max() > 1e-5, name  # the new token's row trained (tied: through both uses)
        else:
            assert moved.max() == 0, name  # norms, biases: frozen


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_loss_and_gradients_equal_a_float64_computation_by_hand(model_dirs, sums_file, tmp_path, arch):
    trainer = make_trainer(model_dirs[arch], sums_file, tmp_path, **LORA)
    perturb(trainer)
    chunk = trainer.step_questions(0)[:2]
    rollout = trainer.sample(chunk)
    baseline = trainer.no_trace_logprobs(chunk)
    out, _ = trainer.micro_batch_loss(rollout, chunk, baseline, None)
    out.loss.backward()
    got = grads_of(trainer.model)

    adapters, rows = lora_parts(trainer)
    model, leaves = manual_lora_model(trainer.config.model.model_name_or_path, adapters, rows, 8 / 4)
    k = trainer.k
    batch = rollout.batch
    logprobs, _ = completion_logprobs(model, batch, engine=EngineOptions(fused_logprobs=False))
    prompts = [q.example.prompt_ids for q in chunk for _ in range(k)]
    answers = [q.example.answer_ids for q in chunk for _ in range(k)]
    no_trace = pack(prompts, [[trainer.response_start_id] + a for a in answers], trainer.pad_id)
    with torch.no_grad():
        base_lp, _ = completion_logprobs(model, no_trace, engine=EngineOptions(fused_logprobs=False))
    c0, _ = gather_columns(base_lp, torch.ones(len(prompts), dtype=torch.long), rollout.answer_length)
    answer, mask = gather_columns(logprobs, rollout.answer_start, rollout.answer_length)
    reward, _ = aggregate("weighted_sum_log_prob", answer.detach(), mask, c0)
    advantages = group_norm(reward, k)
    want = nrt_loss(LossInputs(logprobs, logprobs.detach(), rollout.trace_mask, advantages, rollout.prefix_mask,
                               answer, mask, mask.double()))
    want.loss.backward()

    assert advantages.abs().sum() > 0
    torch.testing.assert_close(out.loss.double(), want.loss, rtol=1e-5, atol=1e-7)
    checked = 0
    for name, param in trainer.model.named_parameters():
        if not param.requires_grad:
            continue
        plain = name.removeprefix("base_model.model.")
        if ".lora_A.default." in name or ".lora_B.default." in name:
            part = "A" if ".lora_A." in name else "B"
            key = plain.replace(f".lora_{part}.default", "") + "." + part
        else:
            key = plain.replace(".token_adapter.trainable_tokens_delta.default", ".weight") + ".row"
        reference = leaves[key].grad
        assert reference.abs().max() > 0, key
        torch.testing.assert_close(got[name].double(), reference, rtol=2e-4, atol=1e-7, msg=key)
        checked += 1
    assert checked == len(leaves)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_with_adapters_disabled_is_the_base_model(model_dirs, sums_file, tmp_path, arch):
    trainer = make_trainer(model_dirs[arch], sums_file, tmp_path, trainer__beta=0.1, **LORA)
    assert trainer.ref_model.module is trainer.model  # the policy itself, no copy
    perturb(trainer)
    base, _ = base_model(trainer.config.model.model_name_or_path)
    rollout = trainer.sample(trainer.step_questions(0)[:2])
    with torch.no_grad():
        ref, _ = completion_logprobs(trainer.ref_model, rollout.batch)
        want, _ = completion_logprobs(base, rollout.batch)
        policy, _ = completion_logprobs(trainer.model, rollout.batch)
        ids = rollout.batch.input_ids[:2]
        torch.testing.assert_close(trainer.ref_model(input_ids=ids).logits, base(input_ids=ids).logits,
                                   rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ref, want, rtol=1e-6, atol=1e-6)
    assert (policy - want).abs().max() > 1e-3  # the adapters do change the policy
    out, _ = trainer.micro_batch_loss(rollout, trainer.step_questions(0)[:2], trainer.no_trace_logprobs(
        trainer.step_questions(0)[:2]), None)
    assert out.kl > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_export_reloads_with_the_adapter_models_logits(model_dirs, sums_file, tmp_path, arch):
    from nrt.commands.cli import main

    trainer = make_trainer(model_dirs[arch], sums_file, tmp_path, trainer__max_steps=2, trainer__warmup_ratio=0.0,
                           trainer__learning_rate=1e-2, **LORA)
    trainer.train()
    run = tmp_path / "out"
    assert (run / "adapter_config.json").is_file() and (run / "adapter_model.safetensors").is_file()
    assert not (run / "model.safetensors").exists()
    assert (run / "checkpoint-2" / "adapter_model.safetensors").is_file()
    saved = load_file(run / "adapter_model.safetensors")
    assert any("lora_B" in k for k in saved) and any("trainable_tokens_delta" in k for k in saved)
    assert all("lora_" in k or "trainable_tokens" in k for k in saved)  # the adapter only, no base weights

    assert main(["export", "--model", str(run), "--merge", "--output-dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == type(trainer.model.get_base_model()).__name__
    ids = torch.tensor([[5, 9, trainer.response_start_id, 12, 30, 7]])
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        with trainer.model.disable_adapter():
            base = trainer.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want - base).abs().max() > 1e-3  # the adapter trained: equality is not two base models
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.convert_tokens_to_ids("<|response_start|>") == trainer.response_start_id


def test_export_refuses_bad_input_with_one_line_errors(model_dirs, tiny_model_dir, tmp_path, capsys):
    from nrt.commands.cli import main

    assert main(["export", "--model", tiny_model_dir, "--merge", "--output-dir", str(tmp_path / "a")]) == 2
    assert "not a LoRA run directory" in capsys.readouterr().err
    assert main(["export", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "a")]) == 2
    assert "--merge is required" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_model_dir}))
    assert main(["export", "--model", str(tmp_path / "run"), "--merge", "--output-dir", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty and not an nrt export (holds keep.txt)" in err
    assert (busy / "keep.txt").read_text() == "mine"


def test_lora_options_are_checked_before_the_model_loads(tiny_model_dir, sums_file, tmp_path, capsys):
    from nrt.commands.cli import main

    base = ["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(tmp_path / "o"),
            "model.use_peft=true"]
    assert main(base + ["model.lora_dropout=0.05"]) == 2
    assert "model.lora_dropout=0.05: only 0 is supported" in capsys.readouterr().err
    assert main(base + ["model.lora_r=0"]) == 2
    assert "model.lora_r" in capsys.readouterr().err
    assert main(base + ["model.lora_target_modules=q_proj,nonexistent_proj", "trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "model.lora_target_modules='q_proj,nonexistent_proj'" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "checkpoint-1").exists()


@pytest.mark.parametrize("targets, says", [
    ("embed_tokens", "is the model's input embedding"), ("lm_head", "is the model's output layer"),
    ("layers", "not a linear layer"), ("mlp", "not a linear layer"), ("nonexistent_proj", "has no module named"),
])
def test_lora_targets_that_are_not_linear_layers_are_refused_in_one_line(targets, says, tiny_model_dir, sums_file,
                                                                       tmp_path, capsys):
    from nrt.commands.cli import main

    out = tmp_path / "o"
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 "model.use_peft=true", f"model.lora_target_modules={targets}", "trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.lora_target_modules=" in err and says in err, err
    assert not out.exists()


def test_lora_target_modules_reads_a_yaml_list(tmp_path):
    from nrt.config import load_yaml
    from nrt.training.peft_model import lora_config

    path = tmp_path / "run.yaml"
    path.write_text("model:\n  use_peft: true\n  lora_target_modules: [q_proj, v_proj]\n")
    config = load_yaml(path)
    assert config.model.lora_target_modules == "q_proj,v_proj"
    model = LlamaForCausalLM(tiny_config("llama", 40)[1])
    assert set(lora_config(config.model, model, [3]).target_modules) == {"q_proj", "v_proj"}


def test_lora_resume_reproduces_the_uninterrupted_run(model_dirs, sums_file, tmp_path):
    options = dict(trainer__max_steps=4, trainer__save_steps=2, trainer__warmup_ratio=0.0,
                   trainer__learning_rate=1e-2, **LORA)
    straight = make_trainer(model_dirs["mistral"], sums_file, tmp_path / "a", **options)
    straight.train()

    crashing = make_trainer(model_dirs["mistral"], sums_file, tmp_path / "b", **options)
    train_until_crash(crashing, crash_at=3)  # dies in step 4, after checkpoint-2 and the metrics of step 3
    state = load_file(tmp_path / "b" / "out" / "checkpoint-2" / "training_state" / "model.safetensors")
    trainable = {n for n, p in crashing.model.named_parameters() if p.requires_grad}
    assert set(state) == trainable  # the adapter and token rows, not the frozen base model
    resumed = make_trainer(model_dirs["mistral"], sums_file, tmp_path / "b", **options)
    resumed.train(resume=True)

    expected, got = metrics_of(tmp_path / "a" / "out"), metrics_of(tmp_path / "b" / "out")
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for want, have in zip(expected, got):
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["step"], key)
    a = load_file(tmp_path / "a" / "out" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "out" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert max(t.abs().max().item() for n, t in a.items() if "lora_B" in n) > 1e-4  # it trained


def test_generate_and_eval_point_a_lora_run_to_export(tmp_path, capsys):
    from nrt.commands.cli import main

    (tmp_path / "adapter_config.json").write_text("{}")
    assert main(["generate", "--model", str(tmp_path), "--question", "1+1="]) == 2
    assert "merge it first: nrt export" in capsys.readouterr().err
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n')
    assert main(["eval", "--model", str(tmp_path), "--data", str(data)]) == 2
    assert "merge it first: nrt export" in capsys.readouterr().err


def test_export_refuses_a_base_model_the_adapter_was_not_trained_on(model_dirs, sums_file, tmp_path, capsys):
    """--base-model is compared with the run's base by config contents (a copy elsewhere is the same model),
    and always by the run's tokenizer against its vocabulary and the adapter's shapes against its layers;
    a refusal is one line, before anything is written."""
    import shutil

    from nrt.commands.cli import main
    from nrt.model_loading import ModelLoadError, ModelSource

    trainer = make_trainer(model_dirs["llama"], sums_file, tmp_path, trainer__max_steps=1, **LORA)
    trainer.train()
    run = tmp_path / "out"
    copy = tmp_path / "copy-of-base"
    shutil.copytree(model_dirs["llama"], copy)
    assert main(["export", "--model", str(run), "--merge", "--output-dir", str(tmp_path / "m"), "--base-model",
                 str(copy)]) == 0

    def other_base(name, rows, hidden=32):
        """A tiny Llama of `rows` embedding rows (2 special tokens, then characters) and its tokenizer."""
        from nrt.tiny import ALPHABET

        tokenizer = char_tokenizer(alphabet=ALPHABET[: rows - 2], with_response_start=False)
        _, config = tiny_config("llama", len(tokenizer))
        config = LlamaConfig(**{**config.to_dict(), "hidden_size": hidden, "head_dim": hidden // 4})
        path = tmp_path / name
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    rows = len(char_tokenizer(with_response_start=False))  # 98: the run's tokenizer adds <|response_start|>
    fewer = other_base("fewer-rows", 89)
    wider = other_base("wider", rows, hidden=64)
    capsys.readouterr()
    cases = {fewer: f"--base-model {fewer}: not the model the adapter was trained on ({model_dirs['llama']}): "
                    f"vocab_size 89 (trained on {rows})",
             wider: f"--base-model {wider}: not the model the adapter was trained on ({model_dirs['llama']}): "
                    "hidden_size 64 (trained on 32), head_dim 16 (trained on 8)"}
    for base, message in cases.items():
        out = tmp_path / f"export-{base.name}"
        assert main(["export", "--model", str(run), "--merge", "--output-dir", str(out), "--base-model",
                     str(base)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()
    # the run's base moved away: the vocabulary and the shapes still refuse
    from nrt.training.peft_model import AdapterError, check_base

    tokenizer = AutoTokenizer.from_pretrained(run)
    refused = f"has 89 embedding rows but the tokenizer has ids up to {rows - 1} .*the run.s: not the model"
    with pytest.raises(ModelLoadError, match=refused):
        check_base(run, ModelSource(str(fewer)), None, tokenizer, "--base-model X")
    with pytest.raises(AdapterError, match=r"the adapter does not fit this model: model.embed_tokens has 64 width, "
                                           r"the adapter 32 \(and \d+ more\)"):
        check_base(run, ModelSource(str(wider)), None, tokenizer, "--base-model X")
