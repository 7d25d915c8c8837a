"""The host library: attach to the daemon, create queues, issue commands.

    with csdemu.connect() as dev:
        dev.write(0, np.ones(4096, np.uint8))
        data = dev.read(0, 1)

A Device is not thread-safe; use one per thread (each gets its own queues).

Every call takes `timeout=` (seconds; None: the device's default, 60 s for
admin commands and 30 s for I/O, as Linux's NVMe driver has them). A command
that runs out of time is aborted and raises TimeoutError. If the daemon goes
away, every waiting and later call raises csdemu.DeviceGone.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from csdemu.host import tensors, watch
from csdemu.host.error_log import failed_field
from csdemu.host.kv import DmaCache, create_kv_namespace
from csdemu.host.queue import (ADMIN_TIMEOUT_S, IO_TIMEOUT_S, ArenaAllocator, Queue,
                               command_name)
from csdemu.transport.control import exchange, open_control
from csdemu.transport.errors import Completion, DaemonError, NVMeError
from csdemu.transport.paths import default_socket
from csdemu.transport.qpair import (ADMIN_CQ_OFF, ADMIN_DEPTH, ADMIN_SQ_OFF, CONTROL_BYTES,
                          ArenaView, HostCQ, HostSQ, cq_bytes, sq_bytes)
from nvme_cmds.features import FeatureId
from nvme_cmds.identify import CNS, ID_CTRL, ID_NS, to_dict
from nvme_cmds.logs import ENGINE_LOG, FLASH_LOG, SMART_LOG, LogPage, from_u128
from nvme_cmds.nvm import CDW11_DSM_AD, DSM_RANGE, lba_cdws
from nvme_cmds.opcodes import AdminOpcode, NvmOpcode, VendorAdminOpcode, VendorIoOpcode
from nvme_cmds.spec import FLAGS_PSDT_SHIFT

SGL_FLAGS = 1 << FLAGS_PSDT_SHIFT


class Device:
    def __init__(self, socket_path: str | None = None, arena_bytes: int = 16 << 20,
                 io_depth: int = 256, timeout: float | None = None,
                 admin_timeout: float = ADMIN_TIMEOUT_S, io_timeout: float = IO_TIMEOUT_S):
        """Attach to the daemon at `socket_path`, waiting at most `timeout` s
        (None: admin_timeout) for it: DaemonError if it does not answer, or
        is not run by this user or root. `admin_timeout` and `io_timeout`
        are the defaults of later calls."""
        self.socket_path = socket_path or default_socket()
        self.gone: str | None = None      # why the daemon went away (csdemu.host.watch)
        self.admin_timeout, self.io_timeout = admin_timeout, io_timeout
        self.sock = open_control(self.socket_path, admin_timeout if timeout is None else timeout)
        try:
            reply, fds = exchange(self.sock, self.socket_path,
                                  {"op": "attach", "arena_bytes": arena_bytes}, want_fds=True)
        except DaemonError:
            self.sock.close()
            raise
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            self.sock.close()
            raise DaemonError(reply.get("error", "attach refused"))
        self.client_id = reply["client_id"]
        arena_fd, self.kick_fd, *self.vector_fds = fds
        self.mm = mmap.mmap(arena_fd, reply["arena_bytes"])
        os.close(arena_fd)
        self.arena = ArenaView(self.mm, reply["arena_bytes"])
        self.alloc = ArenaAllocator(CONTROL_BYTES, self.arena.size)
        self.admin = Queue(self, 0, HostSQ(self.arena, 0, ADMIN_SQ_OFF, ADMIN_DEPTH),
                           HostCQ(self.arena, 0, ADMIN_CQ_OFF, ADMIN_DEPTH, 0), self.vector_fds[0],
                           admin_timeout)
        self.queues: dict[int, Queue] = {}
        watch.watch(self)          # from the first command on: one may wait for a dead daemon
        try:
            self.staging_bytes = min(4 << 20, self.arena.size // 4)
            self.staging = self.alloc.alloc(self.staging_bytes)
            self.io = self.create_queue(io_depth)
        except BaseException:
            self.close()
            raise
        self._ident = None
        self._lba_size = {}
        self.dma_cache = DmaCache(self)

    # ------------------------------------------------------------ lifetime
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def mark_gone(self, why: str) -> None:
        """The daemon closed the control socket (csdemu.host.watch calls
        this): wake every waiter, each of which then raises DeviceGone."""
        self.gone = why
        for fd in self.vector_fds:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass

    def close(self):
        if self.sock is None:
            return
        watch.unwatch(self)        # before the fds it would write go
        self.sock.close()          # EOF: the daemon reclaims queues and registrations
        self.sock = None
        for q in list(self.queues.values()) + [self.admin]:
            q.sq.arena = q.cq.arena = None
            q.cq.ext = None
        self.arena.close()
        self.mm.close()
        for fd in [self.kick_fd] + self.vector_fds:
            os.close(fd)

    # ------------------------------------------------------------ queues
    def create_queue(self, depth: int = 256, timeout: float | None = None) -> Queue:
        """A new I/O queue pair; its waits default to the device's io_timeout."""
        qid = next(i for i in range(1, 64) if i not in self.queues)
        cq_off = self.alloc.alloc(cq_bytes(depth))
        sq_off = self.alloc.alloc(sq_bytes(depth))
        vector = 1 + (qid - 1) % (len(self.vector_fds) - 1)
        self.admin_cmd(AdminOpcode.CREATE_IO_CQ, cdw10=((depth - 1) << 16) | qid,
                       cdw11=(vector << 16) | 0b11, prp1=cq_off, timeout=timeout)
        try:
            self.admin_cmd(AdminOpcode.CREATE_IO_SQ, cdw10=((depth - 1) << 16) | qid,
                           cdw11=(qid << 16) | 1, prp1=sq_off, timeout=timeout)
        except NVMeError:
            self.admin_cmd(AdminOpcode.DELETE_IO_CQ, cdw10=qid, timeout=timeout)
            raise
        cq = HostCQ(self.arena, qid, cq_off, depth, vector)
        q = Queue(self, qid, HostSQ(self.arena, qid, sq_off, depth, cq), cq,
                  self.vector_fds[vector], self.io_timeout)
        self.queues[qid] = q
        return q

    def delete_queue(self, q: Queue, timeout: float | None = None) -> None:
        self.admin_cmd(AdminOpcode.DELETE_IO_SQ, cdw10=q.qid, timeout=timeout)
        self.admin_cmd(AdminOpcode.DELETE_IO_CQ, cdw10=q.qid, timeout=timeout)
        self.alloc.release(q.sq.off, sq_bytes(q.depth))
        self.alloc.release(q.cq.off, cq_bytes(q.depth))
        del self.queues[q.qid]

    # ------------------------------------------------------------ raw commands
    def admin_cmd(self, opc, timeout: float | None = None, **kw) -> Completion:
        c = self.admin.execute(opc, timeout, **kw)
        if not c.ok:
            raise NVMeError(c.status, command_name(opc, True), failed_field(self, c, opc, True))
        return c

    def passthru(self, opcode: int, nsid: int = 0, cdw10=0, cdw11=0, cdw12=0, cdw13=0,
                 cdw14=0, cdw15=0, data=None, read_len: int = 0, admin: bool = False,
                 cdw2=0, cdw3=0, timeout: float | None = None) -> Completion:
        """Like `nvme io-passthru`/`admin-passthru`: returns the completion even on error.

        `data` (bytes-like) goes to the device; `read_len` bytes come back in
        `Completion.data`. Both move through the CMB arena (SGL). A command
        still running after `timeout` s (an Async Event Request waits for an
        event) is aborted: TimeoutError."""
        q = self.admin if admin else self.io
        payload = b"" if data is None else memoryview(data).cast("B")
        nbytes = max(len(payload), read_len)
        kw = dict(nsid=nsid, cdw10=cdw10, cdw11=cdw11, cdw12=cdw12, cdw13=cdw13,
                  cdw14=cdw14, cdw15=cdw15, cdw2=cdw2, cdw3=cdw3)
        if not nbytes:
            return q.execute(opcode, timeout, **kw)
        off = self.alloc.alloc(nbytes)
        release = lambda: self.alloc.release(off, nbytes)     # noqa: E731
        try:
            self.arena.u8[off:off + len(payload)] = np.frombuffer(payload, np.uint8)
            c = q.execute(opcode, timeout, on_late=release, flags=SGL_FLAGS, prp1=off,
                          prp2=nbytes, **kw)
        except TimeoutError:
            raise                  # the buffer is released when the late completion comes
        except BaseException:
            release()
            raise
        c.data = bytes(self.arena.u8[off:off + read_len]) if read_len else None
        release()
        return c

    def _staged(self, opc, nsid, nbytes, payload=None, out=None, what="", timeout=None,
                **cdws) -> Completion:
        self.io.settle()           # a timed-out command may still use the staging buffer
        off = self.staging
        if payload is not None:
            self.arena.u8[off:off + nbytes] = payload
        c = self.io.execute(opc, timeout, nsid=nsid, flags=SGL_FLAGS, prp1=off, prp2=nbytes,
                            **cdws)
        if not c.ok:
            raise NVMeError(c.status, what, failed_field(self, c, opc))
        if out is not None:
            out[:] = self.arena.u8[off:off + nbytes]
        return c

    # ------------------------------------------------------------ block I/O
    def lba_size(self, nsid: int = 1) -> int:
        if nsid not in self._lba_size:
            self._lba_size[nsid] = 1 << self.identify_ns(nsid)["lbaf0_lbads"]
        return self._lba_size[nsid]

    def _chunk_blocks(self, nsid):
        return max(1, min(self.staging_bytes, self.mdts_bytes()) // self.lba_size(nsid))

    def write(self, lba: int, data, nsid: int = 1, fua: bool = False,
              timeout: float | None = None) -> int:
        """Write whole blocks; returns the summed modeled device time (ns)."""
        buf = tensors.as_bytes(data, "write data")
        bs = self.lba_size(nsid)
        if buf.size == 0 or buf.size % bs:
            raise ValueError(f"write of {buf.size} bytes is not a whole number of {bs}-byte blocks")
        step, total = self._chunk_blocks(nsid), 0
        for i in range(0, buf.size // bs, step):
            chunk = buf[i * bs:(i + step) * bs]
            n = chunk.size // bs
            c = self._staged(NvmOpcode.WRITE, nsid, chunk.size, payload=chunk, what="write",
                             timeout=timeout, **lba_cdws(lba + i, n, fua))
            total += c.device_ns
        return total

    def read(self, lba: int, nblocks: int, nsid: int = 1,
             timeout: float | None = None) -> np.ndarray:
        if nblocks < 1:
            raise ValueError(f"read of {nblocks} blocks: nblocks must be at least 1")
        bs = self.lba_size(nsid)
        out = np.empty(nblocks * bs, np.uint8)
        step = self._chunk_blocks(nsid)
        for i in range(0, nblocks, step):
            n = min(step, nblocks - i)
            self._staged(NvmOpcode.READ, nsid, n * bs, out=out[i * bs:(i + n) * bs],
                         what="read", timeout=timeout, **lba_cdws(lba + i, n))
        return out

    def write_zeroes(self, lba: int, nblocks: int, nsid: int = 1,
                     timeout: float | None = None) -> None:
        for i in range(0, nblocks, 65536):
            n = min(65536, nblocks - i)
            c = self.io.execute(NvmOpcode.WRITE_ZEROES, timeout, nsid=nsid, **lba_cdws(lba + i, n))
            if not c.ok:
                raise NVMeError(c.status, "write zeroes",
                                failed_field(self, c, NvmOpcode.WRITE_ZEROES))

    def flush(self, nsid: int = 1, timeout: float | None = None) -> None:
        c = self.io.execute(NvmOpcode.FLUSH, timeout, nsid=nsid)
        if not c.ok:
            raise NVMeError(c.status, "flush", failed_field(self, c, NvmOpcode.FLUSH))

    def trim(self, lba: int, nblocks: int, nsid: int = 1, timeout: float | None = None) -> None:
        ranges = []
        while nblocks > 0:
            n = min(nblocks, 0xFFFFFFFF)
            ranges.append((0, n, lba))
            lba, nblocks = lba + n, nblocks - n
        for i in range(0, len(ranges), 256):
            part = np.array(ranges[i:i + 256], DSM_RANGE)
            self._staged(NvmOpcode.DATASET_MANAGEMENT, nsid, part.nbytes,
                         payload=part.view(np.uint8), what="trim", timeout=timeout,
                         cdw10=len(part) - 1, cdw11=CDW11_DSM_AD)

    # ------------------------------------------------------------ admin
    def _admin_read(self, opc, nbytes, what, timeout=None, **kw) -> np.ndarray:
        c = self.passthru(opc, read_len=nbytes, admin=True, timeout=timeout, **kw)
        if not c.ok:
            raise NVMeError(c.status, what, failed_field(self, c, opc, True))
        return np.frombuffer(c.data, np.uint8)

    def identify(self, timeout: float | None = None) -> dict:
        raw = self._admin_read(AdminOpcode.IDENTIFY, 4096, "identify", timeout,
                               cdw10=CNS.CONTROLLER)
        self._ident = to_dict(raw.view(ID_CTRL)[0])
        return self._ident

    def identify_ns(self, nsid: int = 1, timeout: float | None = None) -> dict:
        raw = self._admin_read(AdminOpcode.IDENTIFY, 4096, "identify namespace", timeout,
                               nsid=nsid, cdw10=CNS.NAMESPACE)
        return to_dict(raw.view(ID_NS)[0])

    def namespaces(self, timeout: float | None = None) -> list[int]:
        raw = self._admin_read(AdminOpcode.IDENTIFY, 4096, "namespace list", timeout,
                               cdw10=CNS.ACTIVE_NSID_LIST)
        return [int(x) for x in raw.view(np.uint32) if x]

    def mdts_bytes(self) -> int:
        ident = self._ident or self.identify()
        return (1 << ident["mdts"]) * 4096 if ident["mdts"] else 1 << 30

    def log_page(self, lid: int, length: int = 4096, offset: int = 0,
                 timeout: float | None = None) -> bytes:
        numd = length // 4 - 1
        return self._admin_read(AdminOpcode.GET_LOG_PAGE, length, f"log page {lid:#x}", timeout,
                                cdw10=(lid & 0xFF) | ((numd & 0xFFFF) << 16),
                                cdw11=numd >> 16, cdw12=offset & 0xFFFFFFFF,
                                cdw13=offset >> 32).tobytes()

    def smart(self, timeout: float | None = None) -> dict:
        rec = np.frombuffer(self.log_page(LogPage.SMART, 512, timeout=timeout), SMART_LOG)[0]
        out = {}
        for name in SMART_LOG.names:
            v = rec[name]
            out[name] = from_u128(v) if getattr(v, "shape", ()) == (2,) else int(v)
        out["composite_temperature_c"] = out["composite_temperature"] - 273
        return out

    def flash_log(self, timeout: float | None = None) -> dict:
        rec = np.frombuffer(self.log_page(LogPage.FLASH_STATS, FLASH_LOG.itemsize,
                                          timeout=timeout), FLASH_LOG)[0]
        out = to_dict(rec)
        out["channel_busy_ns"] = out["channel_busy_ns"][:out["nchannels"]]
        hw = out["host_pages_written"]
        out["waf"] = out["nand_pages_written"] / hw if hw else None
        return out

    def get_feature(self, fid: int, sel: int = 0, timeout: float | None = None) -> int:
        return self.admin_cmd(AdminOpcode.GET_FEATURES, timeout,
                              cdw10=(fid & 0xFF) | (sel << 8)).dw0

    def set_feature(self, fid: int, value: int, cdw12: int = 0, cdw13: int = 0,
                    timeout: float | None = None) -> int:
        return self.admin_cmd(AdminOpcode.SET_FEATURES, timeout, cdw10=fid, cdw11=value,
                              cdw12=cdw12, cdw13=cdw13).dw0

    def set_timing_mode(self, realtime: bool, timeout: float | None = None) -> None:
        self.set_feature(FeatureId.TIMING_MODE, int(realtime), timeout=timeout)

    # ------------------------------------------------------------ DMA (PRP)
    def register(self, array: np.ndarray, timeout: float | None = None) -> None:
        """Let the device DMA into/out of `array` (keep it alive until unregister)."""
        if not array.flags.c_contiguous:
            raise ValueError("only C-contiguous arrays can be registered for DMA")
        n = array.nbytes
        self.admin_cmd(VendorAdminOpcode.DMA_MAP, timeout, prp1=array.ctypes.data,
                       cdw10=n & 0xFFFFFFFF, cdw11=n >> 32)

    def unregister(self, array: np.ndarray, timeout: float | None = None) -> None:
        self.admin_cmd(VendorAdminOpcode.DMA_UNMAP, timeout, prp1=array.ctypes.data)

    # ------------------------------------------------------------ KV namespaces
    def create_kv_namespace(self, layers: int, q_heads: int, kv_heads: int, head_dim: int,
                            dtype: str = "float16", sparse_layout: bool = False, **kw):
        """A KV namespace for a model of this shape; it is deleted when this client goes."""
        return create_kv_namespace(self, layers, q_heads, kv_heads, head_dim, dtype,
                                   sparse_layout, **kw)

    def engine_log(self, timeout: float | None = None) -> dict:
        rec = np.frombuffer(self.log_page(LogPage.ENGINE_STATS, ENGINE_LOG.itemsize,
                                          timeout=timeout), ENGINE_LOG)[0]
        out = to_dict(rec)
        for k in ("channel_bytes", "channel_pages"):
            out[k] = out[k][:out["nchannels"]]
        return out

    def nop(self, timeout: float | None = None) -> Completion:
        return self.io.execute(VendorIoOpcode.NOP, timeout)


def connect(socket_path: str | None = None, timeout: float | None = None, **kw) -> Device:
    """Attach to the daemon (see Device): `timeout` bounds the wait for it;
    admin_timeout= and io_timeout= set the defaults of later calls."""
    return Device(socket_path, timeout=timeout, **kw)
