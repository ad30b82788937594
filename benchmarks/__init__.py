"""Reproducible performance runs against peers; results in ``benchmarks/RESULTS.md``.

A package so the scripts share ``benchmarks._common`` (run them as
``.venv/bin/python benchmarks/NAME.py`` from the repository root, which the editable install
puts on ``sys.path``)."""
