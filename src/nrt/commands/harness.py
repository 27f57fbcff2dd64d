"""`nrt lm-eval ...`: lm-evaluation-harness's own command line, with `--model nrt` and nrt's local tasks.

    nrt lm-eval run --model nrt --model_args pretrained=RUN_DIR --tasks nrt_bbh_multistep_arithmetic_two
    nrt lm-eval ls tasks

Everything after `lm-eval` is the harness's (`lm-eval --help`). nrt registers its backend
(nrt.evaluation.lm_eval_backend) before the harness parses `--model`, and puts its task folder
(src/nrt/evaluation/lm_eval_tasks: BIG-Bench-Hard zero-shot and GSM8K, read from local files) on
`--include_path` unless one is given. The harness's own hub tasks run the same way on a machine
that can reach the hub (`--tasks bbh_zeroshot,gsm8k`). pyproject.toml also declares the backend
under the `lm_eval.models` entry-point group, for harness versions that load backends from it;
lm-eval 0.4.13, the lock's, does not, hence this command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parents[1] / "evaluation" / "lm_eval_tasks"


def add_lm_eval(sub) -> None:
    p = sub.add_parser("lm-eval", help="lm-evaluation-harness with --model nrt and nrt's local tasks",
                       description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("harness_args", nargs=argparse.REMAINDER, help="lm-eval's arguments (lm-eval --help)")


def harness_argv(args: list[str]) -> list[str]:
    """The harness's argv: nrt's task folder added to `run` and `ls` unless an include path is given."""
    args = list(args)
    if args and args[0] in ("run", "ls", "validate") and not any(a.startswith("--include_path") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    return args


def run_harness(args: list[str]) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("nrt: error: nrt lm-eval needs lm-evaluation-harness: pip install 'nrt[lmeval]'", file=sys.stderr)
        return 2
    import nrt.evaluation.lm_eval_backend  # noqa: F401  (registers --model nrt)
    from nrt.errors import NRTError

    argv = sys.argv
    sys.argv = ["lm-eval", *harness_argv(args)]
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ValueError, NRTError) as e:  # the backend's refusals (a bad --model_args value, a model it cannot
        print(f"nrt: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)  # load)
        return 2
    finally:
        sys.argv = argv
    return 0
