"""fio-style load on the KV commands: job files (jobs.py) and the runner
(run.py) behind `csdemu stress`. Uses the host library only."""
