"""The model card (README.md): written with a run's final model, a LoRA run's adapter and an export, in
Hugging Face hub format (huggingface_hub parses it), from the files on disk; `nrt eval` adds its report."""

import json
import shutil

import pytest
import yaml
from huggingface_hub import ModelCard

from nrt.commands.cli import main
from nrt.outputs import check_output_dir, report_kind
from nrt.presets import DEFAULT_PRESET
from nrt.training.model_card import hub_id, model_card, refresh_model_card
from nrt.training.run_record import check_output_dir as check_run_dir

from test_cli import SHORT_RUN

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_finished_run_holds_a_hub_model_card_of_its_method_data_config_and_metrics(finished_run, tiny_model_dir):
    out, data = finished_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    # the run used the default preset (no --method), named after the project's two tags
    assert card.data.tags == list(dict.fromkeys(["nrt", "native-reasoning-training", DEFAULT_PRESET]))
    assert card.data.datasets == ["sums"]
    assert card.data.base_model is None  # a local base model: named in the text only (the hub wants an id)
    text = card.text
    record = json.loads((out / "nrt_run.json").read_text())
    assert f"`{tiny_model_dir}`" in text and record["data_digest"] in text and f"the `{DEFAULT_PRESET}` preset" in text
    # the whole config, as config.yaml holds it
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == yaml.safe_load((out / "config.yaml").read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "step 2, the last logged step" in text and f"{last['reward_mean']:.4g}" in text
    assert f"{last['trace_length_mean']:.4g}" in text and "validation accuracy" in text
    assert "## Collapse\n\nNone" in text and "No evaluation report yet" in text
    for usage in ("nrt generate --model DIR", "AutoModelForCausalLM", "<|response_start|>",
                  "vllm serve DIR --reasoning-parser nrt"):
        assert usage in text
    # the command line that trained it, kept in the run record
    assert record["command"].startswith(f"nrt train --model {tiny_model_dir} --data {data}")
    assert f"```bash\n{record['command']}\n```" in text
    assert report_kind(out / "README.md") == "model card"


def test_a_run_directory_holding_its_card_is_still_an_nrt_run(finished_run, tiny_model_dir):
    out, data = finished_run
    check_output_dir(out, "run", resumable=True)  # the output rule: README.md is the run's own file
    check_run_dir(out, resume=True, model_path=tiny_model_dir)


def test_nrt_eval_adds_its_report_to_the_card(finished_run, tmp_path):
    out, data = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert main(["eval", "--model", str(copy), "--data", data, "--limit", "4", "--max-trace-tokens", "4",
                 "--max-answer-tokens", "4"]) == 0
    text = (copy / "README.md").read_text()
    summary = json.loads((copy / "eval" / "sums.json").read_text())["summary"]
    row = next(line for line in text.splitlines() if line.startswith("| sums |"))
    assert f"| {summary['n']} | {100 * summary['accuracy']:.1f} % |" in row
    assert "No evaluation report yet" not in text and "## Collapse" in text
    ModelCard.load(copy / "README.md")
    assert model_card(copy) == text  # the rewritten section is what a fresh card says


def test_a_readme_of_the_users_own_is_not_touched_by_nrt_eval(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n\n# mine\n\n## Evaluation\n\nmine\n\n## End\n")
    before = (tmp_path / "README.md").read_text()
    assert refresh_model_card(tmp_path) is None
    assert (tmp_path / "README.md").read_text() == before


def test_base_model_is_a_hub_id_or_left_out(tmp_path):
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("/home/me/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc") == "Qwen/Qwen2.5-0.5B"
    assert hub_id(str(tmp_path)) is None and hub_id("./model") is None and hub_id(None) is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "use_peft": False},
        "data": {"path": "data/tulu.jsonl"}, "method": {"objective": "sft"}}))
    card = ModelCard(model_card(run))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.datasets == ["tulu"]
    assert "sft" in card.data.tags and "custom options" in card.text  # a partial config matches no preset
    assert "metrics.jsonl is empty or missing" in card.text and "unknown" in card.text


def test_a_lora_run_and_its_export_hold_cards(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 "trainer.max_steps=1", "model.use_peft=true", "model.lora_r=4", *SHORT_RUN]) == 0
    card = ModelCard.load(out / "README.md")  # nrt's card, in place of the one peft writes
    assert card.data.library_name == "peft" and "lora" in card.data.tags and "nrt" in card.data.tags
    assert card.data.datasets == ["sums"]
    assert "nrt export --model DIR --merge --output-dir MERGED" in card.text and "LoRA adapters (rank 4" in card.text

    merged = tmp_path / "merged"
    assert main(["export", "--model", str(out), "--merge", "--output-dir", str(merged)]) == 0
    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers" and "lora" in card.data.tags
    assert "merged into the base weights" in card.text and "step 1 of the run" in card.text
    assert json.loads((out / "nrt_run.json").read_text())["data_digest"] in card.text
    assert "nrt export --model DIR --merge" not in card.text  # a plain model: used as it is
    check_output_dir(merged, "export", overwrite=True)  # an earlier export, card and all
