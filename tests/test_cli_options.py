"""Every numeric option of every command, walked from the parsers themselves: a bare int or float option
is a test failure (it would take -1, nan or inf), and each bounded one refuses a mistyped, non-finite or
out-of-range value in one line naming the option, exit 2, before anything runs."""

import argparse

import pytest

from nrt.commands.cli import USAGE_ERROR, build_parser, main


def commands(parser, prefix=()):
    """(command words, parser) of every leaf command: `train`, `data split`, `gym probe`, ..."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from commands(sub, (*prefix, name))


def numeric_options():
    for words, parser in commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.type is not None and action.type not in (str,):
                yield words, action


def bad_values(bounds):
    kind, low, high, low_open = bounds
    values = ["abc"] + (["nan", "inf", "-inf"] if kind is float else ["1.5"])
    if low is not None:
        values.append(str(low) if low_open else str(kind(low) - 1))
    if high is not None:
        values.append(str(kind(high) + 1))
    return values


def test_every_int_and_float_option_is_bounded():
    bare = [f"nrt {' '.join(words)} {a.option_strings[0]}" for words, a in numeric_options()
            if a.type in (int, float)]
    assert not bare, f"give these a type from nrt.option_types: {bare}"
    bounded = [a for _, a in numeric_options() if hasattr(a.type, "bounds")]
    assert len(bounded) >= 40  # the walk found the commands' options (train's are section.option=value)


CASES = [(words, action.option_strings[0], value) for words, action in numeric_options()
         if hasattr(action.type, "bounds") for value in bad_values(action.type.bounds)]


@pytest.mark.parametrize("words, option, value", CASES, ids=[f"{' '.join(w)} {o} {v}" for w, o, v in CASES])
def test_a_bad_value_is_one_line_naming_the_option(words, option, value, capsys):
    assert main([*words, f"{option}={value}"]) == USAGE_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"argument {option}" in err[0], err
