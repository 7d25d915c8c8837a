"""Isolation between clients and against other users.

Same user, two clients: client B attacks client A's KV namespace (append,
read, attend, reclaim, delete, NVM opcodes on it), A's sequence ids through
its own namespace, memory it never registered (its own, and A's addresses),
A's DMA registrations, and queues it does not have. Every attempt must be
refused with the expected status, and A's data and registrations must be
untouched afterwards.

Second uid (root only): a child process running as `nobody` (uid 65534)
tries to reach the daemon's socket (in its private directory, in a public
directory, and chmod 0666 so only SO_PEERCRED stands in the way), to open
the arena memfd through /proc/<pid>/fd and /proc/<pid>/map_files of the
daemon and of a client, to read /proc/<pid>/mem, to call
process_vm_readv on the daemon, and to open the NAND backing file.
Every attempt must fail.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile

import numpy as np

from tools.torture.common import SMALL_DRIVE, small_daemon, part_main

import csdemu
from csdemu.host.spawn import DaemonProcess
from nvme_cmds.kv import append_cdws, attend_cdws, read_cdws
from nvme_cmds.opcodes import AdminOpcode as A, NvmOpcode as N, VendorAdminOpcode as VA, VendorIoOpcode as VI
from nvme_cmds.status import Status, status_name

SGL = 0x40
NOBODY = 65534
KV_SHAPE = dict(layers=2, q_heads=4, kv_heads=2, head_dim=64, dtype="float16")


def same_user_attacks(socket_path: str) -> list[dict]:
    """-> one row per attempt: what, expected statuses, got, ok."""
    rows = []

    def check(what, c_or_status, *expected):
        st = c_or_status if isinstance(c_or_status, int) else c_or_status.status
        rows.append({"attempt": what, "expected": [status_name(e) for e in expected],
                     "got": status_name(st), "ok": st in expected})

    a = csdemu.connect(socket_path)
    b = csdemu.connect(socket_path)
    try:
        kv = a.create_kv_namespace(**KV_SHAPE)
        rng = np.random.default_rng(3)
        k = rng.standard_normal((2, 48, 2, 64)).astype(np.float16)
        v = rng.standard_normal((2, 48, 2, 64)).astype(np.float16)
        kv.append(0, [100, 200], k, v)
        q = rng.standard_normal((2, 4, 64)).astype(np.float32)
        out_before = kv.attend(0, [100, 200], q).copy()
        a_buf = np.zeros(1 << 20, np.uint8)
        a.register(a_buf)
        bs = a.lba_size()
        a.write(7, np.full(bs, 0xA5, np.uint8))

        ns = kv.nsid
        bio = b.io
        b_off = b.alloc.alloc(1 << 20)
        b.arena.u8[b_off:b_off + 16] = np.array([100, 200], np.uint64).view(np.uint8)
        nb = 2 * 2 * 4 * 2 * 64 * 2
        check("B: KV append to A's namespace",
              bio.execute(VI.KV_APPEND, nsid=ns, flags=SGL, prp1=b_off + 4096, prp2=nb, mptr=b_off,
                          **append_cdws(0, 2, 4)), Status.ACCESS_DENIED)
        check("B: KV read of A's sequence",
              b.passthru(VI.KV_READ, ns, read_len=2 * 8 * 2 * 64 * 2, **read_cdws(0, 100, 0, 8)),
              Status.ACCESS_DENIED)
        check("B: attend on A's sequences",
              bio.execute(VI.ATTEND, nsid=ns, flags=SGL, prp1=b_off + 4096, prp2=q.nbytes, mptr=b_off,
                          **dict(attend_cdws(0, 2), cdw15=b_off + 65536)),
              Status.ACCESS_DENIED)
        check("B: reclaim A's sequences",
              bio.execute(VI.RECLAIM, nsid=ns, cdw11=2, mptr=b_off), Status.ACCESS_DENIED)
        check("B: delete A's KV namespace",
              b.admin.execute(VA.DELETE_KV_NAMESPACE, nsid=ns), Status.ACCESS_DENIED)
        check("B: NVM read on A's KV namespace",
              b.passthru(N.READ, ns, read_len=4096), Status.ACCESS_DENIED, Status.INVALID_OPCODE)
        check("B: NVM write on A's KV namespace",
              b.passthru(N.WRITE, ns, data=bytes(4096)), Status.ACCESS_DENIED, Status.INVALID_OPCODE)
        check("B: flush of A's KV namespace",
              bio.execute(N.FLUSH, nsid=ns), Status.ACCESS_DENIED, Status.INVALID_OPCODE)
        # A's sequence ids through B's own namespace: not there, nothing leaks.
        kvb = b.create_kv_namespace(**KV_SHAPE)
        check("B: read A's sequence id in B's namespace",
              b.passthru(VI.KV_READ, kvb.nsid, read_len=2 * 8 * 2 * 64 * 2, **read_cdws(0, 100, 0, 8)),
              Status.INVALID_FIELD)
        check("B: attend A's sequence ids in B's namespace",
              bio.execute(VI.ATTEND, nsid=kvb.nsid, flags=SGL, prp1=b_off + 4096, prp2=q.nbytes,
                          mptr=b_off, **dict(attend_cdws(0, 2), cdw15=b_off + 65536)),
              Status.INVALID_FIELD)
        c = bio.execute(VI.RECLAIM, nsid=kvb.nsid, cdw11=2, mptr=b_off)
        rows.append({"attempt": "B: reclaim A's sequence ids in B's namespace",
                     "expected": ["SUCCESS, 0 existed"], "got": f"{c.status_name}, {c.dw0} existed",
                     "ok": c.ok and c.dw0 == 0})
        # Memory B never registered: A's buffer address, B's own memory, wild addresses.
        mine = np.zeros(1 << 16, np.uint8)
        for what, addr in (("A's registered buffer address", a_buf.ctypes.data),
                           ("B's own unregistered buffer", mine.ctypes.data),
                           ("address 0x1000", 0x1000), ("a kernel address", 0xFFFF_8800_0000_0000)):
            check(f"B: PRP read into {what}",
                  bio.execute(N.READ, nsid=1, prp1=addr, cdw10=7), Status.DATA_TRANSFER_ERROR)
            check(f"B: PRP write from {what}",
                  bio.execute(N.WRITE, nsid=1, prp1=addr, cdw10=8), Status.DATA_TRANSFER_ERROR)
        check("B: SGL past the end of its arena",
              bio.execute(N.READ, nsid=1, flags=SGL, prp1=b.arena.size - 2048, prp2=4096, cdw10=7),
              Status.DATA_TRANSFER_ERROR)
        check("B: SGL over its control page",
              bio.execute(N.READ, nsid=1, flags=SGL, prp1=0, prp2=4096, cdw10=7),
              Status.DATA_TRANSFER_ERROR)
        check("B: DMA unmap of A's registration",
              b.admin.execute(VA.DMA_UNMAP, prp1=a_buf.ctypes.data), Status.INVALID_FIELD)
        foreign = a.create_queue(16).qid          # A has this queue, B does not
        assert foreign not in b.queues
        check("B: delete an I/O SQ it does not have",
              b.admin.execute(A.DELETE_IO_SQ, cdw10=foreign), Status.INVALID_QID)
        check("B: abort on an SQ it does not have",
              b.admin.execute(A.ABORT, cdw10=foreign), Status.INVALID_QID)
        # A is untouched: data, sequences, registration.
        k2, v2 = kv.read(0, 100, 0, 48)
        intact = (np.array_equal(k2.view(np.uint16), k[0].view(np.uint16))
                  and np.array_equal(v2.view(np.uint16), v[0].view(np.uint16)))
        intact = intact and np.allclose(kv.attend(0, [100, 200], q), out_before, rtol=0, atol=0)
        c = a.io.execute(N.READ, nsid=1, prp1=a_buf.ctypes.data, cdw10=7)
        intact = intact and c.ok and bool((a_buf[:bs] == 0xA5).all())
        rows.append({"attempt": "A: KV data, attention output and DMA registration intact",
                     "expected": ["intact"], "got": "intact" if intact else "CHANGED", "ok": intact})
    finally:
        b.close()
        a.close()
    return rows


CHILD = r"""
import ctypes, errno, json, os, socket, sys
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = "OPENED"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:
        res[name] = "refused: " + type(e).__name__
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(json.dumps({"op": "attach", "arena_bytes": 1 << 20}).encode() + b"\n")
    data = s.recv(65536)
    s.close()
    if not data:
        raise ConnectionRefusedError(errno.ECONNRESET, "closed by the daemon")
    if b'"ok": true' in data or b'"ok":true' in data:
        return
    raise PermissionError(errno.EACCES, data[:100].decode(errors="replace"))
def opn(path):
    os.close(os.open(path, os.O_RDONLY))
def vm_read(pid, addr):
    libc = ctypes.CDLL(None, use_errno=True)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(64)
    local = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = iovec(addr, 64)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
args = json.loads(sys.argv[1])
for name, path in args["sockets"].items():
    attempt(name, lambda p=path: connect(p))
for name, path in args["files"].items():
    attempt(name, lambda p=path: opn(p))
for name, (pid, addr) in args["vm"].items():
    attempt(name, lambda p=pid, a=addr: vm_read(p, a))
print(json.dumps(res))
"""


def _arena_paths(pid: int) -> tuple[str | None, str | None, int]:
    """/proc/pid/fd/N of a csdemu arena memfd, /proc/pid/map_files/RANGE and its start."""
    fd_path = None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "csdemu-arena" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                fd_path = f"/proc/{pid}/fd/{fd}"
                break
        except OSError:
            pass
    map_path, start = None, 0
    for line in open(f"/proc/{pid}/maps"):
        if "csdemu-arena" in line:
            rng = line.split()[0]
            map_path, start = f"/proc/{pid}/map_files/{rng}", int(rng.split("-")[0], 16)
            break
    return fd_path, map_path, start


def other_user_attacks(log=print) -> dict:
    """Run as root: a uid-65534 child tries every way in. -> {attempt: result}."""
    if os.geteuid() != 0:
        return {"skipped": "not running as root: cannot switch to a second uid"}
    pub = tempfile.mkdtemp(prefix="csdemu-iso-")
    d1 = small_daemon().start()                      # socket in its private 0700 dir
    try:
        # The daemon refuses a socket directory others may enter, so an
        # operator must open it up afterwards: the socket itself is still
        # 0600 ...
        pub_sock = os.path.join(pub, "public.sock")
        d3 = DaemonProcess(socket_path=pub_sock, data_dir=os.path.join(pub, "data"),
                           extra_args=SMALL_DRIVE).start()
        open_sock = os.path.join(pub, "open.sock")
        d4 = DaemonProcess(socket_path=open_sock, extra_args=SMALL_DRIVE).start()
        os.chmod(pub, 0o755)
        os.chmod(open_sock, 0o666)                   # ... and opened up, SO_PEERCRED must refuse
        clients = [csdemu.connect(p) for p in (d1.socket_path, pub_sock)]
        try:
            dfd, dmap, dstart = _arena_paths(d3.proc.pid)
            cfd, cmap, _ = _arena_paths(os.getpid())
            args = {
                "sockets": {"socket in the daemon's private dir": d1.socket_path,
                            "0600 socket in a public dir": pub_sock,
                            "0666 socket (SO_PEERCRED check)": open_sock},
                "files": {"daemon arena memfd via /proc/pid/fd": dfd,
                          "daemon arena via /proc/pid/map_files": dmap,
                          "daemon /proc/pid/mem": f"/proc/{d3.proc.pid}/mem",
                          "client arena memfd via /proc/pid/fd": cfd,
                          "client arena via /proc/pid/map_files": cmap,
                          "NAND backing file (data dir under a public dir)":
                              os.path.join(pub, "data", "nand.data")},
                "vm": {"process_vm_readv of the daemon's arena": [d3.proc.pid, dstart]},
            }
            p = subprocess.run(["/usr/bin/python3", "-c", CHILD, json.dumps(args)], user=NOBODY,
                               group=NOBODY, capture_output=True, text=True, timeout=60, cwd="/")
            if p.returncode:
                return {"error": p.stderr[-2000:]}
            out = json.loads(p.stdout)
            out["_modes"] = {"private socket": oct(stat.S_IMODE(os.stat(d1.socket_path).st_mode)),
                             "public socket": oct(stat.S_IMODE(os.stat(pub_sock).st_mode)),
                             "data dir": oct(stat.S_IMODE(os.stat(os.path.join(pub, "data")).st_mode))}
            return out
        finally:
            for c in clients:
                c.close()
            d3.cleanup()
            d4.cleanup()
    finally:
        d1.cleanup()
        shutil.rmtree(pub, ignore_errors=True)


def run_isolation(log=print) -> dict:
    d = small_daemon().start()
    try:
        rows = same_user_attacks(d.socket_path)
    finally:
        d.cleanup()
    other = other_user_attacks(log)
    other_rows = {k: v for k, v in other.items() if not k.startswith("_")}
    skipped = "skipped" in other or "error" in other
    opened = [k for k, v in other_rows.items() if v == "OPENED"] if not skipped else []
    return {"same_user_attempts": len(rows), "same_user_refused_right": sum(r["ok"] for r in rows),
            "same_user_failures": [r for r in rows if not r["ok"]],
            "other_user_attempts": 0 if skipped else len(other_rows),
            "other_user_refused": 0 if skipped else len(other_rows) - len(opened),
            "other_user_opened": opened, "other_user": other, "same_user": rows}


def main(argv=None):
    part_main(__doc__, run_isolation, None, seeded=False, argv=argv, name="isolation")


if __name__ == "__main__":
    main()
