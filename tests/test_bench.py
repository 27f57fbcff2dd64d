"""`nrt bench`: one JSON line with the documented fields, the work counted exactly, sane values.

No timing in any pass condition: times are only checked to be positive and consistent.
"""

import argparse
import json

import pytest

from nrt.commands.bench import add_bench, main
from nrt.experiments.bench import bench_model, parameter_counts, synthetic_tokenizer

FIELDS = {
    "sec_per_step", "sec_per_step_min", "sec_per_step_max", "sec_per_step_iqr", "sec_generate", "sec_score",
    "sec_update", "score_share", "sampled_tokens", "prefill_tokens", "trained_tokens", "trained_tokens_unshared",
    "baseline_tokens", "tokens_per_sec", "trained_tokens_per_sec", "params_total", "params_non_embedding",
    "params_matmul", "flops_sample", "flops_update", "flops_forward_only", "matmul_gflops", "floor_sec",
    "step_over_floor", "generate_over_floor", "update_matmul_fraction", "peak_rss_mb", "peak_rss_mb_after_warmup",
    "rss_mb_loaded", "rss_mb_first", "rss_mb_last", "dtype", "threads", "load_avg", "config",
}
TINY = ["--hidden", "64", "--layers", "2", "--vocab", "300", "--prompts", "3", "--generations", "2", "--think", "5",
        "--prompt-tokens", "7", "--answer-tokens", "4", "--steps", "2", "--warmup", "1", "--dtype", "float32"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixed_length_result(one_thread):
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        main([*TINY, "--fixed-length", "--trace-rss"])
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1  # one JSON line, nothing else on stdout
    return json.loads(lines[0])


def test_bench_prints_every_field(fixed_length_result):
    assert FIELDS <= set(fixed_length_result)
    assert len(fixed_length_result["rss_mb_by_step"]) == 2


def test_fixed_length_work_is_counted_exactly(fixed_length_result):
    r = fixed_length_result
    k, q, think, prompt, answer = 2, 3, 5, 7, 4
    assert r["sampled_tokens"] == q * k * think
    assert r["prefill_tokens"] == q * prompt
    completion = think + 1 + answer  # trace, <|response_start|>, answer with eos
    assert r["trained_tokens"] == q * prompt + q * k * completion  # a group's prompt runs once
    assert r["trained_tokens_unshared"] == q * k * (prompt + completion)
    assert r["baseline_tokens"] == q * (prompt + 1 + answer)
    n = r["params_matmul"]
    assert r["flops_sample"] == 2 * n * r["sampled_tokens"]
    assert r["flops_update"] == 6 * n * r["trained_tokens"]
    floor = (r["flops_sample"] + r["flops_update"] + r["flops_forward_only"]) / (r["matmul_gflops"] * 1e9)
    assert r["floor_sec"] == pytest.approx(floor)
    assert r["step_over_floor"] == pytest.approx(r["sec_per_step"] / floor)


def test_times_and_memory_are_sane(fixed_length_result):
    r = fixed_length_result
    assert 0 < r["sec_per_step_min"] <= r["sec_per_step"] <= r["sec_per_step_max"]
    assert all(r[f"sec_{p}"] > 0 for p in ("generate", "score", "update"))
    assert r["sec_generate"] + r["sec_score"] + r["sec_update"] <= r["sec_per_step_max"] * 1.001
    assert 0 < r["score_share"] < 1 and r["matmul_gflops"] > 0 and r["update_matmul_fraction"] > 0
    assert r["peak_rss_mb"] >= r["peak_rss_mb_after_warmup"] > 0 and r["rss_mb_last"] > 0
    assert r["dtype"] == "float32" and r["config"]["fixed_length"] is True


def test_parameter_counts_match_an_independent_count():
    model = bench_model(300, 64, 2, seed=0)
    counts = parameter_counts(model)
    h, v, layers = 64, 300, 2
    per_layer = 4 * h * h + 3 * h * (4 * h)  # q, k, v, o (head size 64, no GQA) + gate, up, down
    assert counts["params_matmul"] == layers * per_layer + v * h  # + lm_head (tied to the embedding)
    assert counts["params_total"] == layers * (per_layer + 2 * h) + h + v * h  # + norms; tied weights counted once
    assert counts["params_non_embedding"] == counts["params_total"] - v * h


def test_synthetic_tokenizer_round_trips_text():
    tok = synthetic_tokenizer(50)
    assert len(tok) == 50 and tok.eos_token_id == 1 and tok.pad_token_id == 0
    ids = [5, 49, 3, 17]
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_add_bench_wires_a_subcommand():
    parser = argparse.ArgumentParser(prog="nrt")
    add_bench(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--hidden", "32", "--fixed-length"])
    assert args.hidden == 32 and args.fixed_length and args.think == 48 and callable(args.func)


def test_without_fixed_length_traces_may_stop_early():
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        main([*TINY, "--steps", "1", "--warmup", "0", "--think", "40"])
    r = json.loads(out.getvalue())
    assert 0 < r["sampled_tokens"] <= 3 * 2 * 40


@pytest.mark.parametrize("options, message", [
    (["--think", "0"], "argument --think: must be at least 1, got 0 (--help lists the options)"),
    (["--prompts", "5", "--micro-prompts", "2"], "--prompts 5 is not a multiple of --micro-prompts 2"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0, got -1 (--help lists the options)"),
    (["--generations", "1"], "argument --generations: must be at least 2, got 1 (--help lists the options)"),
])
def test_bad_options_are_one_line_usage_errors(options, message, capsys):
    from nrt.commands.cli import USAGE_ERROR
    from nrt.commands.cli import main as nrt_main

    assert nrt_main(["bench", *options]) == USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert err == f"nrt bench: error: {message}"
    with pytest.raises(SystemExit) as exit_info:  # python -m nrt.commands.bench: argparse's usage error
        main(options)
    assert exit_info.value.code == USAGE_ERROR and message in capsys.readouterr().err


def test_peak_rss_reset_forgets_memory_freed_before_it():
    """The step-memory measure: after a reset the high-water mark is the current resident set, and
    memory touched after the reset raises it by at least its size."""
    import subprocess
    import sys

    script = (
        "import mmap\n"
        "from nrt.experiments.bench import peak_rss_since_reset_mb, reset_peak_rss, rss_mb\n"
        "def touch(mb):\n"
        "    m = mmap.mmap(-1, mb * 2**20)\n"
        "    for i in range(0, mb * 2**20, 4096): m[i] = 1\n"
        "    return m\n"
        "m = touch(200); high = peak_rss_since_reset_mb(); m.close()\n"
        "reset_peak_rss(); after_reset = peak_rss_since_reset_mb(); base = rss_mb()\n"
        "m = touch(80); m.close(); print(high, after_reset, base, peak_rss_since_reset_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    high, after_reset, base, peak = map(float, out.split())
    assert high - after_reset > 150  # the 200 MB freed before the reset no longer count
    assert abs(after_reset - base) < 10
    assert 78 <= peak - base < 100  # 80 MB touched after the reset, then freed: still in the mark


def test_step_memory_reports_each_timed_steps_own_peak():
    """--step-memory (run in its own process: it changes glibc's thresholds): the step's peak above the
    resident set before it holds at least the gradients, made anew in every step (zero_grad to None)."""
    import subprocess
    import sys

    argv = ["--hidden", "256", "--layers", "2", "--vocab", "8192", "--prompts", "2", "--generations", "2",
            "--think", "4", "--steps", "2", "--warmup", "1", "--dtype", "float32", "--threads", "1",
            "--fixed-length", "--step-memory"]
    done = subprocess.run([sys.executable, "-m", "nrt.commands.bench", *argv], capture_output=True, text=True,
                          check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    gradients_mb = r["params_total"] * 4 / 2**20
    assert len(r["step_peak_mb_by_step"]) == len(r["rss_mb_before_step"]) == 2
    assert r["step_peak_mb"] >= gradients_mb
    assert all(before + peak <= r["peak_rss_mb"] + 1
               for before, peak in zip(r["rss_mb_before_step"], r["step_peak_mb_by_step"]))
