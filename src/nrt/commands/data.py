"""`nrt data ...` commands: the recipe's Tulu-3 splits, GSM8K's final answers, and a seeded split of any Q&A file.

    nrt data tulu3 --input FILE_OR_DIR --output-dir DIR [--seed 42] [--skip-bad-records] ...
    nrt data gsm8k --input test.jsonl --output-dir DIR
    nrt data split --input FILE --output-dir DIR --test-size N_OR_FRACTION [--validation-size ...] [--seed S]

Both write DIR/<split>.jsonl (fields question/answer, what `nrt train --data` reads) and DIR/prep.json
(inputs with sha256, counts, seed, dropped records). Bad input is one line and exit code 2, checked
before anything is written; the library is `nrt.data_prep`.
"""

from __future__ import annotations


from nrt.option_types import COUNT, SEED



def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare Q&A data: the recipe's Tulu-3 splits, or split any Q&A file")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser(
        "tulu3", help="Tulu-3 SFT mixture rows -> the recipe's train/test question-answer splits",
        description="Last user turn -> question, final assistant turn -> answer, no system prompt; 220,000 train / "
        "1,024 test rows picked with seed 42 as the official recipe's data script picks them (fewer rows: the "
        "same proportion).",
    )
    p.add_argument("--input", required=True,
                   help="a .jsonl/.parquet file or a directory of them (read in sorted order)")
    p.add_argument("--output-dir", required=True, help="gets train.jsonl, test.jsonl and prep.json")
    p.add_argument("--train-size", type=COUNT, default=220_000, help="training rows (recipe 220000)")
    p.add_argument("--test-size", type=COUNT, default=1_024, help="test rows (recipe 1024)")
    p.add_argument("--seed", type=SEED, default=42, help="split seed (recipe 42)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="drop and count malformed rows (as the official script does) instead of stopping at the first")
    p.add_argument("--keep-earlier-turns", action="store_true",
                   help="write each whole chat as 'messages' (the official prompt keeps earlier turns as context)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier preparation in DIR")
    p.set_defaults(func=run_tulu3)

    p = sub.add_parser("gsm8k", help="GSM8K's test.jsonl -> question / final-number answer (what nrt eval reads)")
    p.add_argument("--input", required=True, help="GSM8K jsonl (question, answer = solution ending in '#### N')")
    p.add_argument("--output-dir", required=True, help="gets test.jsonl and prep.json")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier preparation in DIR")
    p.set_defaults(func=run_gsm8k)

    p = sub.add_parser("split", help="split a Q&A file into train/test (and validation) jsonl files, seeded")
    p.add_argument("--input", required=True, help="any Q&A data nrt train reads (.jsonl/.json/.csv/.parquet/dir)")
    p.add_argument("--output-dir", required=True, help="gets train.jsonl, test.jsonl, [validation.jsonl], prep.json")
    p.add_argument("--test-size", required=True, help="test records: a count (100) or a fraction (0.1)")
    p.add_argument("--validation-size", default="0", help="validation records: a count or a fraction (default 0)")
    p.add_argument("--seed", type=SEED, default=42, help="split seed (default 42)")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--messages-field", default="messages", help="chat records' field ('' turns chat detection off)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier split in DIR")
    p.set_defaults(func=run_split)


def _fail(message: str):
    from nrt.commands.usage import UsageError

    raise UsageError(message)


def _finish(args, prepared) -> None:
    from nrt.data_prep import write_splits

    if prepared.note:
        print(prepared.note)
    try:
        paths = write_splits(args.output_dir, prepared, args.overwrite)
    except OSError as e:
        _fail(f"--output-dir {args.output_dir}: cannot write ({e.strerror or e})")
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in prepared.splits.items())
    dropped = prepared.provenance.get("dropped", {}).get("count", 0)
    print(f"wrote {counts}" + (f" ({dropped} bad records dropped)" if dropped else "") + f" to {paths[0].parent}")


def run_tulu3(args) -> None:
    from nrt.data import DataError
    from nrt.data_prep import Tulu3Options, output_names, prepare_tulu3
    from nrt.outputs import check_output_dir

    options = Tulu3Options(args.train_size, args.test_size, args.seed, args.skip_bad_records, args.keep_earlier_turns)
    try:
        check_output_dir(args.output_dir, "data preparation", inputs=[args.input],
                         files=output_names(["train", "test"]), overwrite=args.overwrite)
        prepared = prepare_tulu3(args.input, options)
    except DataError as e:
        _fail(str(e))
    _finish(args, prepared)


def run_gsm8k(args) -> None:
    from nrt.data import DataError
    from nrt.data_prep import output_names, prepare_gsm8k
    from nrt.outputs import check_output_dir

    try:
        check_output_dir(args.output_dir, "data preparation", inputs=[args.input], files=output_names(["test"]),
                         overwrite=args.overwrite)
        prepared = prepare_gsm8k(args.input)
    except DataError as e:
        _fail(str(e))
    _finish(args, prepared)


def run_split(args) -> None:
    from nrt.data import DataError
    from nrt.data_prep import output_names, parse_size, split_qa
    from nrt.outputs import check_output_dir

    try:
        test_size = parse_size(args.test_size, "--test-size")
        validation_size = parse_size(args.validation_size, "--validation-size")
        names = ["train", "test"] + (["validation"] if validation_size else [])
        check_output_dir(args.output_dir, "data preparation", inputs=[args.input], files=output_names(names),
                         overwrite=args.overwrite)
        prepared = split_qa(args.input, test_size, validation_size, args.seed, args.question_field,
                            args.answer_field, args.messages_field or None)
    except DataError as e:
        _fail(str(e))
    _finish(args, prepared)
