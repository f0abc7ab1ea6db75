"""fcgicompose benchmarks: `python -m bench` (all sizes) or `python -m bench --smoke`.

See docs/benchmarks.md for what is measured, how, the targets and the latest figures.
"""
