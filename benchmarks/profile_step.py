"""Profile one NRT bench step (torch.profiler): the top operators by self CPU time.

    .venv/bin/python benchmarks/profile_step.py [nrt bench options] [--rows 25]
"""

import argparse
import sys


import torch  # noqa: E402

from nrt.engine.cpu_runtime import keep_freed_memory
from nrt.experiments.bench import add_arguments, bf16_supported, build_trainer


def main(argv=None):
    p = argparse.ArgumentParser()
    add_arguments(p)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--phase", choices=["step", "generate", "update"], default="step")
    p.add_argument("--shapes", action="store_true", help="group by input shapes")
    args = p.parse_args(argv)
    keep_freed_memory()  # as nrt bench: freed memory stays with the process (no page faults in the profile)
    if args.dtype == "auto":
        args.dtype = "bfloat16" if bf16_supported() else "float32"
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer, _, _ = build_trainer(args)
    for _ in range(args.warmup):
        trainer.train_step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        if args.phase == "step":
            m = trainer.train_step()
            print({k: round(v, 3) for k, v in m.items() if k.startswith("time_")}, file=sys.stderr)
        elif args.phase == "generate":
            trainer.sample(trainer.micro_batches(trainer.step)[0])
    if args.phase == "update":
        chunk = trainer.micro_batches(trainer.step)[0]
        rollout = trainer.sample(chunk)
        baseline = trainer.no_trace_logprobs(chunk)
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=cpu, record_shapes=args.shapes) as prof:
            out, _ = trainer.micro_batch_loss(rollout, chunk, baseline, None)
            trainer.accelerator.backward(out.loss)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    print(prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50, max_shapes_column_width=70))


if __name__ == "__main__":
    main()
