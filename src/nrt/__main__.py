"""`python -m nrt ...` (and `accelerate launch -m nrt ...`): the `nrt` command.

`entry` is the console script. Ctrl-C while Python still imports torch and transformers (the
first seconds of every command) is `interrupted`, exit 130, like a Ctrl-C later on: no traceback
of a half-done import. Nothing has been written at that point, so the process ends at once
(os._exit: the finalizers of half-imported libraries could still print)."""

import os
import sys

INTERRUPTED = 130  # as nrt.commands.usage.INTERRUPTED, which cannot be imported before the try


def entry() -> int:
    try:
        from nrt.commands.cli import main

        code = main()
    except KeyboardInterrupt:
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        print(f"nrt {command}: interrupted" if command else "nrt: interrupted", file=sys.stderr)
        code = INTERRUPTED
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    return code


if __name__ == "__main__":
    sys.exit(entry())
