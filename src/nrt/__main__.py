"""`python -m nrt ...` (and `accelerate launch -m nrt ...`): the `nrt` command."""

import sys

from nrt.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
