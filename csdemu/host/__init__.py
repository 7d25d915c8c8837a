"""The client library, what a host process links: the device handle and its
admin and block verbs (device.py), I/O queues and their timeouts (queue.py),
the watch for a daemon that goes away (watch.py), KV namespaces and Attend
(kv.py), counter snapshots (counters.py), and a throwaway daemon for tools
and tests (spawn.py, which starts one as a separate process).

Imports csdemu.transport and nvme_cmds; never csdemu.drive (import-linter).
"""
