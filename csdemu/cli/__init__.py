"""The `csdemu` command line, in nvme-cli's spirit: one module per group of
verbs (daemon, admin, features, bench, generate, nbd, reproduce, stress, demo,
warmup), their shared options in options.py, how they print (-o normal|json|
binary) in output.py, and app.py registering each verb by name.

May import every other part of csdemu; nothing imports it (import-linter).
"""
from csdemu.cli.app import main

__all__ = ["main"]
