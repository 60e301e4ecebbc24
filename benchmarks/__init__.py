"""Benchmarks: goose-proxy against a direct connection to the scripted backend.

``python -m benchmarks.run`` (``make bench``; ``--smoke`` for CI) starts the
fake backend and the proxy as separate processes and drives them with
:mod:`benchmarks.loadclient`. See ``benchmarks/README.md``. Not tests: they
assert nothing about speed.
"""
