"""Namespaces over NBD, so real fio and any NBD client can load the drive:
plugin.py is the nbdkit Python plugin (it runs inside nbdkit and speaks to
the daemon through the host library); server.py starts nbdkit with it.

May import the host library and the transport; never the drive's internals
(server.py borrows only its CPU pinning).
"""
