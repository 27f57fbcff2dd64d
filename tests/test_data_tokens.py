"""Records whose text would become control tokens, and chat records a template would render wrongly, are
refused naming the file, line and token; `data.split_special_tokens` reads such text as plain text."""

import json

import pytest

from nrt.data import read_examples
from nrt.errors import DataError
from nrt.tiny import char_tokenizer
from nrt.tokens import RESPONSE_START


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


OK = {"question": "1+1=", "answer": "2"}


@pytest.mark.parametrize("record, message", [
    ({"question": "1+1=", "answer": f"{RESPONSE_START}2"},
     f"q.jsonl:2: the answer contains the special token '{RESPONSE_START}' as text"),
    ({"question": "say <|endoftext|> now", "answer": "ok"},
     "q.jsonl:2: the question contains the special token '<|endoftext|>' as text"),
    ({"question": f"a {RESPONSE_START} b", "answer": "ok"},
     f"q.jsonl:2: the question contains the special token '{RESPONSE_START}' as text"),
])
def test_special_token_text_is_refused_with_its_record(tmp_path, record, message):
    path = write(tmp_path / "q.jsonl", [OK, record])
    with pytest.raises(DataError) as e:
        read_examples(path, char_tokenizer())
    assert str(e.value).startswith(f"{tmp_path}/{message}") and "data.split_special_tokens=true" in str(e.value)


def test_split_special_tokens_reads_the_text_as_characters(tmp_path):
    tokenizer = char_tokenizer()
    path = write(tmp_path / "q.jsonl", [{"question": "say <|endoftext|>", "answer": f"{RESPONSE_START}2"}])
    _, examples, _ = read_examples(path, tokenizer, split_special_tokens=True)
    answer = examples[0].answer_ids
    control = {tokenizer.convert_tokens_to_ids(RESPONSE_START), tokenizer.eos_token_id}
    assert answer[-1] == tokenizer.eos_token_id and not control & set(answer[:-1])  # only the final eos
    assert len(answer) == len(RESPONSE_START) + 2  # one id per character, the "2", the eos
    assert tokenizer.eos_token_id not in examples[0].prompt_ids


@pytest.mark.parametrize("messages, message", [
    ([{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "yo"}],
     "c.jsonl:1: messages[0]: unknown role 'usr' (one of system, user, assistant, tool); did you mean 'user'?"),
    ([{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "yo"}],
     "c.jsonl:1: 'messages' has no user turn before the final assistant turn"),
])
def test_chat_records_a_template_would_render_wrongly_are_refused(tmp_path, messages, message):
    path = write(tmp_path / "c.jsonl", [{"messages": messages}])
    with pytest.raises(DataError) as e:
        read_examples(path, char_tokenizer(), messages_field="messages")
    assert str(e.value).startswith(f"{tmp_path}/{message}")
