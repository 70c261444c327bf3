"""Progress bars for long work (training, generation, judging) that stay readable in logs.

On a terminal they redraw freely; when stderr is a file or a CI log, they print at most every 15 seconds, so a
long run leaves a readable trail instead of thousands of carriage-return updates.
"""

from __future__ import annotations

import os
import sys


def progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    # Under `accelerate launch` every rank runs the same loop: one set of bars (rank 0's) is enough.
    if os.environ.get("RANK", "0") != "0":
        kwargs["disable"] = True
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 15.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
