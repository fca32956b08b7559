"""Benchmarks of the copy engine, side by side with skopeo (`make bench`).

`copy_bench.py` is the entry point; the modules here measure child processes, set up the
registries and images, and print the report.
"""

__all__: list[str] = []
