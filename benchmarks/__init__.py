"""Benchmarks for the composer: speed and memory of each decoding variant, run with ``python -m benchmarks``.

Not timed tests: timings on a shared machine are only meaningful as ratios of variants measured
interleaved in one process, so the suite reports ratios next to absolute numbers.
"""
