"""Shared fixtures: a tiny Llama and char tokenizer built from a config, and a small Q&A file."""

import json
import random

import pytest
import torch

from nrt.tiny import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), hidden=32, layers=2, seed=0)


def write_sums(path, n=24, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            f.write(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return str(path)


@pytest.fixture
def sums_file(tmp_path):
    return write_sums(tmp_path / "sums.jsonl")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: threads only add overhead, and oversubscribe a shared CPU badly.
    Modules that want it: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """(run directory, data file): a finished 2-step NRT run of the tiny model, validated every step.
    Trained once per test module that asks for it, so that tests adding files to it (a report, an
    evaluation) affect only their own module."""
    from nrt.commands.cli import main
    from test_cli import SHORT_RUN

    root = tmp_path_factory.mktemp("finished_run")
    data = write_sums(root / "sums.jsonl")
    out = root / "run"
    assert main(["train", "--model", tiny_model_dir, "--data", data, "--output-dir", str(out), "trainer.max_steps=2",
                 f"data.eval_path={data}", "trainer.eval_steps=1", *SHORT_RUN]) == 0
    return out, data


@pytest.fixture
def fresh_accelerator_state():
    """accelerate's state is a process-wide singleton set by earlier tests (mixed_precision="no"):
    reset around a test that builds a trainer with another precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_sums_setup(model_dir, path, n):
    """(model, tokenizer, records, examples, <|response_start|> id): the tiny model on n sums questions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nrt.data import load_qa_records, tokenize_records
    from nrt.tokens import RESPONSE_START

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    records = load_qa_records(write_sums(path, n=n))
    examples, _ = tokenize_records(records, tokenizer, "{question}\n", 64, 16)
    return model, tokenizer, records, examples, tokenizer.convert_tokens_to_ids(RESPONSE_START)
