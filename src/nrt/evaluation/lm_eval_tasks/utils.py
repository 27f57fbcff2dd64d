"""Datasets and scoring of nrt's local lm-eval tasks (the YAML files beside this one).

The data is read from disk, never from a hub: BIG-Bench-Hard from $NRT_BBH_DIR, else
../shared/data/bbh (nrt.evaluation.evaluate.default_bbh_dir); GSM8K's test.jsonl from
$NRT_GSM8K_DIR, else ../shared/data/gsm8k. `--metadata '{"bbh_dir": DIR}'` (or `gsm8k_dir`)
points a run elsewhere. Scoring is `nrt eval`'s: nrt.data.answer_correct on the answer alone.
"""

from __future__ import annotations

import json
from pathlib import Path


def _dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_bbh(task: str, bbh_dir: str | None = None, **_):
    from nrt.evaluation.evaluate import default_bbh_dir

    path = Path(bbh_dir) if bbh_dir else default_bbh_dir()
    file = path / f"{task}.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no BIG-Bench-Hard file for task {task!r} (set $NRT_BBH_DIR or "
                                "--metadata '{\"bbh_dir\": DIR}')")
    return _dataset(json.loads(file.read_text())["examples"])


def load_gsm8k(gsm8k_dir: str | None = None, **_):
    from nrt.data_prep import gsm8k_records
    from nrt.evaluation.evaluate import default_shared_data

    path = Path(gsm8k_dir) if gsm8k_dir else default_shared_data("gsm8k", "NRT_GSM8K_DIR")
    return _dataset([{"question": q, "target": a} for q, a in gsm8k_records(path / "test.jsonl")])


def process_results(doc: dict, results: list[str]) -> dict:
    from nrt.data import answer_correct

    return {"exact_match": float(answer_correct(results[0], doc["target"]))}
