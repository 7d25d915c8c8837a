"""What the host and the drive share to talk to each other: the queue-pair
layout in shared memory (qpair.py), the control socket's protocol
(control.py), default socket and data paths (paths.py), and the errors a
caller sees (errors.py). The wire format of the commands themselves is
nvme_cmds/.

Imports nvme_cmds only; never csdemu.host, csdemu.drive or anything above.
"""
