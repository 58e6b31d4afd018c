"""``python -m spadecam``: the ``spadecam`` command (also ``torchrun ... -m spadecam``)."""

import sys

from spadecam.cli import main

if __name__ == "__main__":
    sys.exit(main())
