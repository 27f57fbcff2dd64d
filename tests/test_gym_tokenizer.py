"""Gym tokenizer: round trips, single-id special tokens, answers tokenized alike everywhere."""

import pytest
from transformers import AutoTokenizer

from nrt.gym import tasks as T
from nrt.gym.corpus import Corpus, CorpusConfig
from nrt.gym.tokenizer import EOS, RESPONSE_START, train_tokenizer


@pytest.fixture(scope="module")
def docs():
    return Corpus(CorpusConfig(seed=0)).documents(4000)


@pytest.fixture(scope="module")
def tok(docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(docs, vocab_size=600).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_special_tokens_are_single_ids_and_eos_is_pad(tok):
    eos, rs = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(RESPONSE_START)
    assert tok(EOS, add_special_tokens=False)["input_ids"] == [eos]
    assert tok(RESPONSE_START, add_special_tokens=False)["input_ids"] == [rs]
    assert tok.eos_token_id == tok.pad_token_id == eos != rs
    assert tok.bos_token is None and tok.chat_template is None
    assert tok("vera", add_special_tokens=True)["input_ids"] == tok("vera", add_special_tokens=False)["input_ids"]


def test_round_trip_of_documents_and_unseen_text(tok, docs):
    for d in docs[:500] + ["héllo wörld ☃ 12\t34  x", "a\n\nb"]:
        assert tok.decode(tok(d, add_special_tokens=False)["input_ids"]) == d


def test_answer_alone_tokenizes_as_after_response_start_and_prompt_is_a_prefix(tok, docs):
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    checked = 0
    for d in docs:
        if RESPONSE_START not in d:
            continue
        question, rest = d.split("\n", 1)
        answer = rest.split(RESPONSE_START)[1].removesuffix(EOS)
        ids = tok(d, add_special_tokens=False)["input_ids"]
        prompt = tok(question + "\n", add_special_tokens=False)["input_ids"]
        alone = tok(answer, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt
        k = ids.index(rs)
        assert ids[k + 1:] == alone + [tok.eos_token_id]
        checked += 1
    assert checked > 1000
    # a word is the same token(s) after a space (in a trace) as alone (an answer)
    for word in ("paris", "True", "-45", "kuna"):
        ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert ids(" " + word)[1:] == ids(word)


def test_splits_answers_of_every_task_tokenize_consistently(tok):
    for task in T.TASKS:
        for it in T.task_items(task, pretrain_size=0)["test"][:50]:
            doc = f"{it.question}\n{it.trace}{RESPONSE_START}{it.answer}{EOS}"
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            k = ids.index(tok.convert_tokens_to_ids(RESPONSE_START))
            assert ids[k + 1:-1] == tok(it.answer, add_special_tokens=False)["input_ids"]
