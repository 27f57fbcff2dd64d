"""`nrt report RUN_DIR [--output-dir DIR]`: a run's curves (report.png) and page (report.md), for a run
finished or still training (nrt.training.run_report). Written into the run directory unless --output-dir
names another; an existing report.md / report.png is replaced only when it is nrt's own run report.
"""

from __future__ import annotations


def add_report(sub) -> None:
    p = sub.add_parser("report", help="a run's curves (PNG) and summary (markdown), finished or in progress",
                       description="Curves of reward, reasoning gain, trace length and entropy, zero-std groups and "
                       "validation accuracy, with the steps where a collapse was detected or an update skipped; "
                       "a markdown page with the run's state and final values.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="an nrt run's output directory (trainer.output_dir)")
    p.add_argument("--output-dir", default=None, help="where report.md and report.png go (default: RUN_DIR)")
    p.set_defaults(func=run_report)


def run_report(args) -> None:
    from nrt.training.run_report import write_run_report

    page, png = write_run_report(args.run_dir, args.output_dir)
    print(f"report: {page}\ncurves: {png}")
