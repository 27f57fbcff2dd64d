"""`<|response_start|>`: added when missing, initialised from eos, kept by checkpoints."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from nrt.tiny import tiny_llama
from nrt.tokens import RESPONSE_START, ensure_response_start_token


def tokenizer_without_marker():
    vocab = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")


def test_missing_token_is_added_with_eos_embedding_and_output_row(tmp_path):
    tokenizer = tokenizer_without_marker()
    model = tiny_llama(len(tokenizer), hidden=16, layers=1)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))  # untied rows
    rs = ensure_response_start_token(model, tokenizer)
    assert rs == 4 and tokenizer.convert_ids_to_tokens(rs) == RESPONSE_START
    assert model.get_input_embeddings().weight.shape[0] == 5
    torch.testing.assert_close(model.get_input_embeddings().weight[rs], model.get_input_embeddings().weight[1])
    torch.testing.assert_close(model.lm_head.weight[rs], model.lm_head.weight[1])
    assert tokenizer("ab" + RESPONSE_START + "b", add_special_tokens=False)["input_ids"] == [2, 3, rs, 3]
    assert ensure_response_start_token(model, tokenizer) == rs  # idempotent
    assert model.get_input_embeddings().weight.shape[0] == 5

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.convert_tokens_to_ids(RESPONSE_START) == rs
    assert AutoModelForCausalLM.from_pretrained(tmp_path).get_input_embeddings().weight.shape[0] == 5
