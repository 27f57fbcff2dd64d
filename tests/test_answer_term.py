"""scripts/answer_term.py: the answer term's gradient of a group of rows is the mean of each row's own
gradient (padding and positions right), and key tokens are found in the answer's ids."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "answer_term.py"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def answer_term(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("answer_term_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def row_gradient(model, prefix, answer, keep):
    """grad of sum_i keep_i * -log p(a_i | prefix, a_<i), one unpadded row."""
    model.zero_grad(set_to_none=True)
    ids = torch.tensor([prefix + answer])
    logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    loss = sum(-logp[len(prefix) + i - 1, t] for i, t in enumerate(answer) if keep[i])
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


def test_group_gradient_is_the_mean_of_row_gradients(answer_term, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [([5, 6, 7, 2], [8, 9, 1], [True, False, True]), ([5, 2], [10, 11, 12, 1], [False, True, True, False])]
    for key_only in (False, True):
        got = answer_term.answer_gradient(model, rows, key_only)
        want = sum(row_gradient(model, p, a, [k or not key_only for k in m]) for p, a, m in rows) / len(rows)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert answer_term.answer_gradient(model, [(rows[0][0], rows[0][1], [False] * 3)], True) is None


def test_key_tokens_are_the_span_in_the_answer(answer_term):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "models" / "gym-long")
    ids = tok("sure. the mother of kuna lives in oslo. i hope that helps.", add_special_tokens=False)["input_ids"]
    mask = answer_term.key_token_mask(tok, ids, ("oslo",))
    assert sum(mask) >= 1
    assert tok.decode([t for t, m in zip(ids, mask) if m]).strip() == "oslo"
    assert not any(answer_term.key_token_mask(tok, ids, ()))
