"""Programs run from the repository: the torture suite (python -m tools.torture.run)
and the stress job files for `csdemu stress`."""
