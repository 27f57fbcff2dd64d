"""recipes/*.yaml pass `nrt train`'s checks and say what the official recipe says; scripts/memory_estimate.py
counts parameters and bytes as a model built from a config and a hand calculation do."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from nrt.model_loading import load_tokenizer
from nrt.training.api import load_examples, resolve_config
from nrt.data_prep import Tulu3Options, prepare_tulu3, write_splits

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
FULL = [r for r in RECIPES if "lora" not in r.name]
# NRT_SPEC section 7 / the official example script, in nrt's option names.
OFFICIAL = {
    "trainer.learning_rate": 2e-6, "trainer.adam_beta1": 0.9, "trainer.adam_beta2": 0.95,
    "trainer.adam_epsilon": 1e-15, "trainer.weight_decay": 0.01, "trainer.warmup_ratio": 0.1,
    "trainer.max_grad_norm": 1.0, "trainer.max_steps": 810, "trainer.num_generations": 8,
    "trainer.steps_per_generation": 4, "trainer.max_completion_length": 2048, "trainer.temperature": 1.0,
    "trainer.top_p": 1.0, "trainer.epsilon_low": 0.2, "trainer.epsilon_high": 0.28, "trainer.beta": 0.0,
    "trainer.bf16": True, "trainer.save_steps": 100, "trainer.seed": 42, "data.max_prompt_length": 4096,
    "method.objective": "nrt", "method.aggregation": "weighted_sum_log_prob", "method.advantage": "group_norm",
    "method.policy_loss": "cispo", "method.answer_loss": "fixed", "method.trace_loss_coef": 1.0,
    "method.prefix_loss_coef": 0.3, "method.answer_loss_coef": 1.0, "method.loss_normalizer": 512.0,
    "trainer.gradient_checkpointing": True,
}
LORA_DIFFERS = {"trainer.learning_rate": 2e-5}


@pytest.fixture(scope="module")
def memory():
    spec = importlib.util.spec_from_file_location("memory_estimate", ROOT / "scripts" / "memory_estimate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def raw(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def value(recipe: Path, dotted: str):
    section, key = dotted.split(".")
    return raw(recipe).get(section, {}).get(key)


def tulu_file(path: Path, n: int = 12) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                          {"role": "assistant", "content": str(2 * i)}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_passes_the_checks_of_nrt_train_and_reads_prepared_tulu3(recipe, tiny_model_dir, tmp_path):
    write_splits(tmp_path / "data", prepare_tulu3(tulu_file(tmp_path / "mix.jsonl"), Tulu3Options(8, 4)))
    config = resolve_config(config_file=str(recipe), model=tiny_model_dir,
                            data=str(tmp_path / "data/train.jsonl"),
                            output_dir=str(tmp_path / "run"))  # raises ConfigError on any bad option or value
    config.data.eval_path = str(tmp_path / "data/test.jsonl")
    tokenizer = load_tokenizer(tiny_model_dir)
    examples, _, skipped = load_examples(config, tokenizer)
    assert (len(examples), skipped) == (8, 0)
    assert len(load_examples(config, tokenizer, config.data.eval_path)[0]) == 4
    for dotted, want in {**OFFICIAL, **(LORA_DIFFERS if "lora" in recipe.name else {})}.items():
        section, key = dotted.split(".")
        assert getattr(getattr(config, section), key) == pytest.approx(want), dotted


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_the_lora_recipe_runs_three_steps_on_a_tiny_model(tiny_model_dir, tmp_path):
    """The LoRA recipe's settings (LoRA on all linear layers, gradient checkpointing, 4 updates per
    rollout, CISPO, prefix 0.3, bf16) on a tiny model, with sizes shrunk to fit a CPU: 3 steps complete."""
    import nrt

    write_splits(tmp_path / "data", prepare_tulu3(tulu_file(tmp_path / "mix.jsonl"), Tulu3Options(8, 4)))
    recipe = ROOT / "recipes" / "llama-3.1-8b-tulu3-lora.yaml"
    small = ["trainer.max_steps=3", "trainer.num_generations=2", "trainer.per_device_train_batch_size=2",
             "trainer.gradient_accumulation_steps=1", "trainer.max_completion_length=8",
             "data.max_prompt_length=64", "data.max_answer_length=8", "model.lora_r=4", "model.lora_alpha=8",
             "trainer.save_steps=2", "trainer.save_total_limit=1", "trainer.learning_rate=1e-3",
             f"data.eval_path={tmp_path / 'data/test.jsonl'}", "trainer.eval_batch_size=4",
             "trainer.use_vllm=false"]  # the recipe's vLLM rollouts are tests/test_vllm.py's
    config = resolve_config(config_file=str(recipe), overrides=small, model=tiny_model_dir,
                            data=str(tmp_path / "data/train.jsonl"), output_dir=str(tmp_path / "run"))
    assert config.model.use_peft and config.trainer.gradient_checkpointing and config.trainer.steps_per_generation == 4
    result = nrt.train(config, log=lambda *_: None)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if "loss" in r]  # the step-0 validation record has no loss
    assert result.steps == 3 and [r["step"] for r in steps] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def processes_of(recipe: Path) -> int:
    found = re.search(r"--num_processes[ =](\d+)", recipe.read_text().splitlines()[0])
    return int(found.group(1)) if found else 1


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_a_step_is_256_prompts_times_8_traces_in_4_updates(recipe):
    t = raw(recipe)["trainer"]
    procs, batch, k = processes_of(recipe), t["per_device_train_batch_size"], t["num_generations"]
    assert batch % k == 0
    assert procs * batch * t["gradient_accumulation_steps"] * t["steps_per_generation"] == 256 * 8
    assert procs * batch * t["gradient_accumulation_steps"] == 64 * 8  # the recipe's mini-batch per update
    assert t["steps_per_generation"] == 4


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_starts_with_its_launch_line(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch ")
    assert first.endswith(f"-m nrt train --config recipes/{recipe.name}")
    if recipe in FULL:
        assert "--config_file configs/accelerate/fsdp.yaml --num_processes 8" in first
    else:
        assert "--config_file" not in first and processes_of(recipe) == 1
        assert value(recipe, "model.use_peft") is True and value(recipe, "model.dtype") == "bfloat16"


# --------------------------------------------------------------------------- memory estimate


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("extra", [
    {"tie_word_embeddings": True},
    {"tie_word_embeddings": False, "num_key_value_heads": 2},
    {"tie_word_embeddings": False, "num_key_value_heads": 1, "head_dim": 12, "attention_bias": True, "mlp_bias": True},
])
def test_parameter_count_is_the_models(extra, memory):
    config = {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 72, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, **extra}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    assert memory.parameter_count(memory.Architecture.from_config(config)) == count(model)


@pytest.mark.parametrize("name,published", [("Llama-3.2-3B", 3_212_749_824), ("Llama-3.1-8B", 8_030_261_248)])
def test_parameter_count_of_the_recipe_models(name, published, memory):
    config = json.loads((ROOT / "recipes/model_configs" / f"{name}.json").read_text())
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
    assert memory.parameter_count(memory.Architecture.from_config(config)) == count(model) == published


def test_lora_parameter_count_is_peft_s(memory):
    peft = pytest.importorskip("peft")
    config = {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 72, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}
    for targets, spec in (("all-linear", "all-linear"), (["q_proj", "v_proj"], "q_proj,v_proj")):
        model = peft.get_peft_model(LlamaForCausalLM(LlamaConfig(**config)),
                                    peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        a = memory.Architecture.from_config(config)
        assert memory.lora_parameter_count(a, 4, memory.lora_targets(spec)) == trainable


def test_memory_of_a_small_case_by_hand(memory):
    # h 32, 4 heads of 8, 2 kv heads (kv*d = 16), I 64, 2 layers, V 100, tied
    a = memory.Architecture(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            intermediate_size=64, tied_embeddings=True)
    # layer: 2*32 norms + q 32*32 + k,v 2*32*16 + o 32*32 + 3*32*64 = 64 + 1024 + 1024 + 1024 + 6144 = 9280
    p = 2 * 9280 + 100 * 32 + 32
    assert memory.parameter_count(a) == p == 21_792
    # A = 6h + 2*kv*d + 4I = 192 + 32 + 256 = 480 elements per token and layer
    assert memory.activation_elements_per_token_layer(a) == 480
    # B 8 rows, K 4, P 10, trace 5 + 1 + answer 4 -> C 10
    run = memory.Run(processes=2, fsdp=False, micro_batch=8, num_generations=4, prompt_tokens=10, trace_tokens=5,
                     answer_tokens=4, gradient_checkpointing=False)
    e = memory.estimate(a, run)
    assert (e["weights"], e["gradients"], e["optimizer"], e["fsdp_working_copies"]) == (4 * p, 4 * p, 8 * p, 0)
    # no checkpointing: tokens (8/4)*10 + 8*10 = 100; 2 bytes * (2 layers * 100 * 480 + prompt cache 2*16*2*8*10)
    assert e["activations"] == 2 * (96_000 + 5_120) == 202_240
    assert e["logits"] == 2 * 80 * 100  # fused bf16 head over the 8*10 completion positions
    assert e["sampling_kv_cache"] == 2 * 2 * 16 * 2 * 8 * 15
    assert e["peak"] == 16 * p + 202_240 + 16_000
    # checkpointing: tokens 8*20 = 160; 2 bytes * (2 layers * 160 * 32 inputs + one layer 160 * 480)
    ck = memory.estimate(a, memory.Run(**{**run.__dict__, "gradient_checkpointing": True, "fsdp": True}))
    assert ck["activations"] == 2 * (10_240 + 76_800) == 174_080
    assert ck["logits"] == 8 * 80 * 100  # float32 logits and their gradient under FSDP
    assert ck["weights"] == 4 * p // 2 and ck["fsdp_working_copies"] == 2 * (100 * 32 + 32 + 2 * 9280)


def test_memory_of_the_8b_recipe_states_by_hand(memory):
    run, model = memory.run_from_recipe(ROOT / "recipes/llama-3.1-8b-tulu3.yaml")
    _, config = memory.model_config_for(model, None)
    e = memory.estimate(memory.Architecture.from_config(config), run)
    assert (run.processes, run.fsdp, run.gradient_checkpointing) == (8, True, True)
    # 16 bytes (fp32 weight, gradient, two AdamW moments) x 8,030,261,248 / 8 GPUs
    assert e["weights"] + e["gradients"] + e["optimizer"] == 16_060_522_496


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_the_script_prints_a_table_per_recipe(recipe, memory, capsys):
    assert memory.main([str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{recipe.name}: ") and "PEAK PER GPU" in out
    assert ("8.030 B" if "8b" in recipe.name else "3.213 B") in out


def test_readme_holds_the_script_s_current_numbers(memory, capsys):
    readme = (ROOT / "recipes/README.md").read_text()
    commands = re.findall(r"<!-- memory: (.*?) -->", readme)
    recipes = " ".join(f"recipes/{r.name}" for r in RECIPES)
    assert len(commands) == 2 and all(c.startswith(f"python scripts/memory_estimate.py --markdown {recipes}")
                                      for c in commands)
    for command in commands:
        args = command.split()[2:]
        memory.main([str(ROOT / a) if a.endswith(".yaml") else a for a in args])
        table = capsys.readouterr().out.strip()
        assert f"<!-- memory: {command} -->\n\n{table}\n" in readme
