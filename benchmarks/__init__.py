"""Benchmark tooling: run VNN-COMP suites (`verify bench`), score them and write reports.

Modules: suite (reading suite folders), pool / ray_pool (warm workers with hard limits),
worker (what a worker runs), results (the resumable CSV), runner (the loop tying them
together), scoring (VNN-COMP rules, counterexample replay), report / plots, cli. Nothing in
the verifier packages imports this one.
"""
