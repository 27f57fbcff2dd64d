"""Sharded training: the accelerate configs under configs/accelerate load; the fused output layer
steps aside for sharded weights (FSDP2's DTensor, DeepSpeed ZeRO-3's partitioned parameters) with
the same log-probabilities and gradients; the FSDP config's 2-process run (skipped where accelerate
cannot run FSDP: on the CPU)."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nrt.config import ModelConfig
from nrt.training.peft_model import wrap_lora
from nrt.engine.sequences import completion_logprobs, pack
from nrt.tiny import char_tokenizer, tiny_llama
from nrt.engine.token_logprobs import _plain_head

from test_distributed import run

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"),
                                        ("zero3", "DEEPSPEED")])
def test_accelerate_configs_load(name, kind):
    """accelerate's own loader reads each file (DeepSpeed is not installed: its configs are only loaded)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert str(config.distributed_type).split(".")[-1] == kind
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    if name == "fsdp":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True  # full shard
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's _no_split_modules
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_fsdp_wrap_policy_finds_the_decoder_layers():
    """The FSDP config names no layer class: accelerate takes the model's `_no_split_modules`."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    small = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    for model, layer in ((tiny_llama(40, hidden=32), "LlamaDecoderLayer"),
                         (MistralForCausalLM(MistralConfig(**small)), "MistralDecoderLayer"),
                         (Qwen2ForCausalLM(Qwen2Config(**small)), "Qwen2DecoderLayer")):
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
        plugin.set_auto_wrap_policy(model)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)  # what accelerate's FSDP2 preparation applies
        assert [type(m).__name__ for m in model.modules() if policy(m)] == [layer, layer]
    lora = wrap_lora(tiny_llama(40, hidden=32), ModelConfig(use_peft=True, lora_r=2), [3])
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    plugin.set_auto_wrap_policy(lora)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, lora)
    assert [type(m).__name__ for m in lora.modules() if policy(m)] == ["LlamaDecoderLayer"] * 2


def test_zero3_partitioned_output_layer_is_not_fused_and_gives_the_same_logprobs():
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), hidden=32)
    batch = pack([[5, 6, 7], [5, 6, 7], [9]], [[8, 9, 10, 1], [11, 12], [3, 4, 5]], 0)
    assert _plain_head(model) is model.lm_head
    want, _ = completion_logprobs(model, batch)
    want.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.lm_head.weight.ds_id = 7  # what DeepSpeed ZeRO-3 sets on a partitioned parameter
    model.lm_head.__dict__.pop("_nrt_plain_head", None)
    assert _plain_head(model) is None
    got, _ = completion_logprobs(model, batch)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_fsdp2_sharded_output_layer_is_not_fused_and_gives_the_same_logprobs_and_gradients():
    """FSDP2 (torch's fully_shard, one gloo process on the CPU, in-memory store): weights become DTensors."""
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = tiny_llama(len(char_tokenizer()), hidden=32)
        plain = copy.deepcopy(model)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        batch = pack([[5, 6, 7], [5, 6, 7], [9]], [[8, 9, 10, 1], [11, 12], [3, 4, 5]], 0)
        assert type(model.lm_head.weight).__name__ == "DTensor"
        assert _plain_head(plain) is plain.lm_head and _plain_head(model) is None
        got, _ = completion_logprobs(model, batch)
        want, _ = completion_logprobs(plain, batch)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        for name, p in plain.named_parameters():
            assert p.grad.abs().max() > 0, name
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-5, msg=name)
    finally:
        dist.destroy_process_group()


PROBE = """
from nrt.training.base import make_accelerator
print("distributed_type=" + str(make_accelerator(False).distributed_type).split(".")[-1], flush=True)
"""


def fsdp_launch() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]


def test_fsdp_config_two_process_run_equals_one_process(tiny_model_dir, sums_file, tmp_path):
    """As tests/test_distributed.py, under configs/accelerate/fsdp.yaml. On a machine without a GPU
    accelerate 1.15 does not run FSDP: with cpu=True (what the trainer asks for) it chooses MULTI_CPU
    and wraps the model in DDP, ignoring the FSDP plugin (AcceleratorState selects FSDP only from
    GPU-like distributed types); without cpu=True every process runs alone (DistributedType.NO).
    torch's own FSDP2 does run on the CPU with gloo (test above). With 2 GPUs, the test first asks
    accelerate which distributed type the config gives, then compares the runs."""
    if torch.cuda.device_count() < 2:
        pytest.skip("accelerate 1.15 runs FSDP only on GPUs: launched with configs/accelerate/fsdp.yaml on a CPU it "
                    "picks MULTI_CPU (a DDP wrapper, the FSDP plugin ignored; without cpu=True each process runs "
                    "alone, DistributedType.NO); this test needs 2 GPUs")
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = subprocess.run([*fsdp_launch(), str(probe)], capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    kinds = set(re.findall(r"distributed_type=([A-Z_]+)", result.stdout))
    if kinds != {"FSDP"}:
        pytest.skip(f"accelerate launch with configs/accelerate/fsdp.yaml on this machine gives {sorted(kinds)}, "
                    "not FSDP: accelerate runs FSDP only on GPUs")
    two = run(fsdp_launch(), tiny_model_dir, sums_file, tmp_path / "two")
    one = run([sys.executable], tiny_model_dir, sums_file, tmp_path / "one", "trainer.gradient_accumulation_steps=2")
    for a, b in zip(one, two):
        for key in ("reward_mean", "reward_std", "reasoning_gain", "trace_length_mean", "loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), key


def test_a_deepspeed_launch_is_refused_before_training(tiny_model_dir, sums_file, tmp_path):
    """DeepSpeed's engine steps inside every backward, which the update loop's accumulation, non-finite
    skip and clipping do not expect: such a launch is a one-line ConfigError, not a silently different run."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nrt.errors import ConfigError
    from nrt.training.api import load_examples, make_trainer, resolve_config

    config = resolve_config(model=tiny_model_dir, data=sums_file, output_dir=str(tmp_path / "run"),
                            overrides=["trainer.num_generations=4", "trainer.per_device_train_batch_size=8"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _, _ = load_examples(config, tokenizer)
    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(ConfigError, match="DeepSpeed launches are not supported"):
        make_trainer(config, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, examples,
                     accelerator=deepspeed)
    assert not (tmp_path / "run").exists()
