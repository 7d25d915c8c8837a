"""Real fio against the drive through nbdkit: the job files (*.fio), the
runner behind `make fio` (runner.py), the benchmark against nbdkit serving a
bytearray (bench.py) and that baseline plugin (bytearray_plugin.py)."""
