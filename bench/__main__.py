"""`python -m bench` (`make bench`): the benchmarks; `python -m bench --smoke` for a quick run.

Exits 1 when a run failed a sanity check (the figures would be meaningless); a missed target
is reported in the output but is not a failure.
"""

import sys

from bench.run import main

sys.exit(1 if main()["problems"] else 0)
