"""FlashNamespace: the NVM command set on top of the block FTL.

Implements csdemu.drive.namespace.Namespace. One handler per opcode (FEMU's
csd_io_cmd switch); each decodes the standard NVMe fields, rejects reserved
bits with Invalid Field, checks the LBA range, and returns a Result whose
``done_ns`` is the modeled completion time starting at ``req.arrival_ns``:

    READ    arrival + firmware -> NAND reads (tR + bus) -> PCIe to host
    WRITE   arrival + firmware -> write-buffer slot -> PCIe from host ->
            complete (early completion), or after the NAND programs if FUA
            or the profile has no write buffer
    FLUSH   when every LUN, channel, the link and the write buffer are idle

Data for reads may be a zero-copy view of the NAND backing file: copy it out
before handling the next command (GC may erase and reuse the block).
"""
from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np

from csdemu.drive.flash.device_file import DEVICE_FILE, FORMAT_VERSION, device_record, read_device_file
from csdemu.drive.flash.files import BackingError, write_atomic
from csdemu.drive.flash.ftl import BlockFTL
from csdemu.drive.namespace import Request, Result
from csdemu.drive.profile import Profile, load_profile
from nvme_cmds.logs import FLASH_LOG, MAX_CHANNELS, SMART_LOG, LogPage, u128
from nvme_cmds import nvm
from nvme_cmds.nvm import CDW11_DSM_AD, CDW12_DEAC, CDW12_FUA, CDW12_RSVD_RW, DSM_RANGE
from nvme_cmds.opcodes import NvmOpcode
from nvme_cmds.status import Status

log = logging.getLogger("csdemu.drive.flash")


# Read and Write refuse CDW12_RSVD_RW (bits csdemu does not implement or the
# spec reserves); Write Zeroes also accepts DEAC.
WZ_RSVD = CDW12_RSVD_RW & ~CDW12_DEAC
DSM_CDW10_RSVD = 0xFFFF_FF00
DSM_CDW11_RSVD = 0xFFFF_FFF8


def _nbytes(buf) -> int:
    return buf.nbytes if hasattr(buf, "nbytes") else len(buf)


def _as_profile(profile) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def _layout(p: Profile) -> dict:
    d = p.to_dict()
    return {"geometry": d["geometry"], "lba_size": d["device"]["lba_size"],
            "over_provisioning_pct": d["device"]["over_provisioning_pct"],
            "kv_pct": d["device"].get("kv_pct", 0.0)}


class FlashNamespace:
    """A block namespace on emulated flash. Formats `data_dir` if it holds no
    device, else opens it and recovers (the stored geometry must match)."""

    def __init__(self, nsid: int, profile, data_dir, *, sync_before_erase: bool = True,
                 checkpoint_every_pages: int | None = None, preallocate: bool = False):
        self.nsid = nsid
        self.profile = _as_profile(profile)
        self.dir = Path(data_dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        devfile = self.dir / DEVICE_FILE
        create = not devfile.exists()
        version = FORMAT_VERSION
        if not create:
            stored, old = read_device_file(self.dir)
            version = stored["format_version"]
            if _layout(old) != _layout(self.profile):
                diff = [k for k in _layout(old) if _layout(old)[k] != _layout(self.profile)[k]]
                raise ValueError(f"{data_dir}: formatted with profile {old.name!r}; "
                                 f"{', '.join(diff)} differ from profile {self.profile.name!r}")
        self.ftl = BlockFTL(self.profile, self.dir, create=create,
                            sync_before_erase=sync_before_erase,
                            checkpoint_every_pages=checkpoint_every_pages,
                            preallocate=preallocate, seeded_crc=version >= 2)
        if create:
            write_atomic(devfile, (device_record(self.profile),))
        der = self.profile.derive()
        self.lba_size = self.profile.device.lba_size
        self.lpp = der.lbas_per_page
        self.nlbas = der.nlbas
        self.page_bytes = self.profile.geometry.page_bytes
        t = self.profile.timing
        self._fw = (t.fw_read_ns, t.fw_read_4k_ns, t.fw_write_ns, t.fw_write_per_4k_ns, t.fw_other_ns)
        self.host = dict.fromkeys(("read_cmds", "write_cmds", "bytes_read", "bytes_written"), 0)
        self.write_cache = True       # Volatile Write Cache feature (06h); off = every write FUA
        self._handlers = {NvmOpcode.READ: self._read, NvmOpcode.WRITE: self._write,
                          NvmOpcode.FLUSH: self._flush, NvmOpcode.WRITE_ZEROES: self._write_zeroes,
                          NvmOpcode.DATASET_MANAGEMENT: self._dsm}

    @classmethod
    def open(cls, nsid: int, data_dir, **kw) -> "FlashNamespace":
        """Open (and recover) a formatted data dir with the profile stored in it."""
        return cls(nsid, read_device_file(data_dir)[1], data_dir, **kw)

    # ------------------------------------------------------------------ dispatch
    def process_io(self, req: Request) -> Result:
        h = self._handlers.get(req.opcode)
        if req.arrival_ns > self.ftl.floor:
            self.ftl.floor = req.arrival_ns
        if h is None:
            return Result(Status.INVALID_OPCODE, req.arrival_ns)
        try:
            return h(req)
        except Exception:                         # keep the daemon serving
            log.exception("flash namespace %d: opcode %#x failed", self.nsid, req.opcode)
            return Result(Status.INTERNAL_ERROR, req.arrival_ns)

    def _range(self, req: Request, rsvd: int):
        c = req.cdw
        first, n, st = self._lbas(c[0], c[1], c[2], rsvd)
        if st:
            return None, st
        return (first, n, bool(c[2] & CDW12_FUA) or req.fua), Status.SUCCESS

    def _lbas(self, cdw10: int, cdw11: int, cdw12: int, rsvd: int) -> tuple[int, int, int]:
        """-> (first LBA, blocks, status) of an LBA command: Invalid Field if
        CDW12 has a bit of `rsvd` set, LBA Out of Range past the end."""
        if cdw12 & rsvd:
            return 0, 0, Status.INVALID_FIELD
        first, n = nvm.slba(cdw10, cdw11), nvm.nlb(cdw12)
        if first + n > self.nlbas:
            return first, n, Status.LBA_OUT_OF_RANGE
        return first, n, Status.SUCCESS

    # ------------------------------------------------------------------ READ
    def _read(self, req: Request) -> Result:
        r, st = self._range(req, CDW12_RSVD_RW)
        if r is None:
            return Result(st, req.arrival_ns)
        slba, nlb, _ = r
        nbytes = nlb * self.lba_size
        t0 = req.arrival_ns + self._read_fw(nbytes)
        lpp = self.lpp
        self.host["read_cmds"] += 1
        if lpp == 1:
            ok, data, done = self.ftl.read(slba, nlb, t0)
            if not ok:
                return Result(Status.UNRECOVERED_READ_ERROR, done)
            self.host["bytes_read"] += nbytes
            return Result(Status.SUCCESS, done, data=data.reshape(-1))
        lp0, lp1 = slba // lpp, (slba + nlb - 1) // lpp
        ok, data, done = self.ftl.read(lp0, lp1 - lp0 + 1, t0)
        if not ok:
            return Result(Status.UNRECOVERED_READ_ERROR, done)
        off = (slba - lp0 * lpp) * self.lba_size
        self.host["bytes_read"] += nbytes
        return Result(Status.SUCCESS, done, data=data.reshape(-1)[off:off + nbytes])

    def _read_fw(self, nbytes: int) -> int:
        return self._fw[1] if nbytes <= 4096 else self._fw[0]

    def read_into(self, cdw10: int, cdw11: int, cdw12: int, arrival_ns: int, out) -> int:
        """The common Read, without a Request: mapped pages, LBA = page, the
        host buffer in the client's arena; the data goes straight into `out`
        (nlb * lba_size uint8). -> done_ns, or -1 having done nothing, and the
        controller takes process_io, which also reports any error."""
        if self.lpp != 1:
            return -1
        first, n, st = self._lbas(cdw10, cdw11, cdw12, CDW12_RSVD_RW)
        if st:
            return -1
        ftl = self.ftl
        if arrival_ns > ftl.floor:
            ftl.floor = arrival_ns
        nbytes = n * self.lba_size
        done = ftl.read_into(first, n, arrival_ns + self._read_fw(nbytes), out)
        if done >= 0:
            host = self.host
            host["read_cmds"] += 1
            host["bytes_read"] += nbytes
        return done

    # ------------------------------------------------------------------ WRITE
    def _write(self, req: Request) -> Result:
        r, st = self._range(req, CDW12_RSVD_RW)
        if r is None:
            return Result(st, req.arrival_ns)
        slba, nlb, fua = r
        fua = fua or not self.write_cache
        nbytes = nlb * self.lba_size
        if req.data is None or _nbytes(req.data) != nbytes:
            return Result(Status.INVALID_FIELD, req.arrival_ns)
        t0 = req.arrival_ns + self._fw[2] + self._fw[3] * ((nbytes + 4095) // 4096)
        src = np.frombuffer(req.data, np.uint8)
        self.host["write_cmds"] += 1
        return self._write_bytes(slba, nlb, src, t0, fua)

    def _write_bytes(self, slba: int, nlb: int, src: np.ndarray, t0: int, fua: bool) -> Result:
        try:
            return self._write_pages(slba, nlb, src, t0, fua)
        except BackingError as e:                 # an I/O error, not a lack of room
            log.error("flash namespace %d: write of LBA %d: %s", self.nsid, slba, e)
            return Result(Status.CAPACITY_EXCEEDED if e.full else Status.WRITE_FAULT, t0)

    def _write_pages(self, slba: int, nlb: int, src: np.ndarray, t0: int, fua: bool) -> Result:
        lpp, pb = self.lpp, self.page_bytes
        if lpp == 1:
            pages = src.reshape(nlb, pb)
            lp0 = slba
        else:                                     # read-modify-write partial pages
            lp0, lp1 = slba // lpp, (slba + nlb - 1) // lpp
            pages = np.zeros((lp1 - lp0 + 1, pb), np.uint8)
            if slba % lpp:
                pages[0] = self._peek(lp0)
            if (slba + nlb) % lpp:
                pages[-1] = self._peek(lp1)
            off = (slba - lp0 * lpp) * self.lba_size
            pages.reshape(-1)[off:off + src.size] = src
        ok, done = self.ftl.write(lp0, pages, t0, fua=fua)
        if not ok:
            return Result(Status.CAPACITY_EXCEEDED, done)
        self.host["bytes_written"] += nlb * self.lba_size
        return Result(Status.SUCCESS, done)

    def _peek(self, lpn: int) -> np.ndarray:
        ok, data, _ = self.ftl.read(lpn, 1, 0)
        if not ok:                  # no fresh CRC over corrupt data: the write fails
            raise BackingError(0, f"read-modify-write of LPN {lpn}: its page fails its CRC")
        return data[0]

    # ------------------------------------------------------------------ FLUSH / WZ / DSM
    def _flush(self, req: Request) -> Result:
        try:
            return Result(Status.SUCCESS, self.ftl.flush(req.arrival_ns + self._fw[4]))
        except BackingError as e:
            log.error("flash namespace %d: flush: %s", self.nsid, e)
            return Result(Status.WRITE_FAULT, req.arrival_ns)

    def _zero(self, slba: int, nlb: int, t0: int, fua: bool) -> int:
        """Deallocate the whole pages of the range, zero-fill partial ones."""
        lpp, end = self.lpp, slba + nlb
        first = -(-slba // lpp)                   # first whole page
        last = end // lpp                         # one past the last whole page
        done = t0
        if last > first:
            self.ftl.deallocate(first, last - first)
            parts = ((slba, first * lpp), (last * lpp, end))
        else:
            parts = ((slba, end),)
        for lo, hi in parts:
            if hi > lo:
                r = self._write_bytes(lo, hi - lo, np.zeros((hi - lo) * self.lba_size, np.uint8),
                                      t0, fua)
                if r.status != Status.SUCCESS:
                    raise BackingError(errno.ENOSPC if r.status == Status.CAPACITY_EXCEEDED
                                       else errno.EIO, f"zeroing LBAs {lo}-{hi - 1}")
                done = max(done, r.done_ns)
        if fua:
            self.ftl.journal.commit(sync=False)
        return done

    def _committed(self, req: Request, fn, *args) -> Result:
        """Write Zeroes and DSM: Write Fault if the journal cannot be written,
        Capacity Exceeded if a partial page cannot be zeroed for want of room."""
        try:
            return Result(Status.SUCCESS, fn(*args))
        except BackingError as e:
            log.error("flash namespace %d: opcode %#x: %s", self.nsid, req.opcode, e)
            return Result(Status.CAPACITY_EXCEEDED if e.full else Status.WRITE_FAULT,
                          req.arrival_ns)

    def _write_zeroes(self, req: Request) -> Result:
        r, st = self._range(req, WZ_RSVD)
        if r is None:
            return Result(st, req.arrival_ns)
        slba, nlb, fua = r
        self.host["write_cmds"] += 1
        return self._committed(req, self._zero, slba, nlb, req.arrival_ns + self._fw[4],
                               fua or not self.write_cache)

    def _dsm(self, req: Request) -> Result:
        c = req.cdw
        if c[0] & DSM_CDW10_RSVD or c[1] & DSM_CDW11_RSVD:
            return Result(Status.INVALID_FIELD, req.arrival_ns)
        nr = (c[0] & 0xFF) + 1
        if req.data is None or _nbytes(req.data) < nr * DSM_RANGE.itemsize:
            return Result(Status.INVALID_FIELD, req.arrival_ns)
        ranges = np.frombuffer(req.data, DSM_RANGE, count=nr)
        ends = ranges["slba"].astype(object) + ranges["nlb"].astype(object)
        if any(e > self.nlbas for e in ends):
            return Result(Status.LBA_OUT_OF_RANGE, req.arrival_ns)
        return self._committed(req, self._deallocate, ranges, c[1] & CDW11_DSM_AD,
                               req.arrival_ns + self._fw[4])

    def _deallocate(self, ranges, ad: bool, t0: int) -> int:
        done = t0
        if ad:
            for rg in ranges:
                if int(rg["nlb"]):
                    done = max(done, self._zero(int(rg["slba"]), int(rg["nlb"]), t0, False))
        return done

    # ------------------------------------------------------------------ admin-side views
    def set_fault_injection(self, **kw) -> dict:
        """Change fault injection at run time (read_fail_ppm, program_fail_ppm,
        erase_fail_ppm, read_fail_every, program_fail_every, seed)."""
        self.ftl.faults.configure(**kw)
        return self.ftl.faults.config()

    def restart_timeline(self, now_ns: int) -> None:
        self.ftl.restart_timeline(now_ns)

    def set_write_cache(self, enabled: bool) -> None:
        """Volatile Write Cache (feature 06h): when off, writes complete only
        after their NAND programs and deallocations are journaled at once."""
        self.write_cache = bool(enabled)

    def stats(self) -> dict:
        s = self.ftl.stats()
        s.update(host_read_commands=self.host["read_cmds"],
                 host_write_commands=self.host["write_cmds"],
                 host_bytes_read=self.host["bytes_read"],
                 host_bytes_written=self.host["bytes_written"],
                 nlbas=self.nlbas, lba_size=self.lba_size, profile=self.profile.name,
                 faults=self.ftl.faults.config())
        return s

    def health(self) -> dict:
        ftl = self.ftl
        der = self.profile.derive()
        s = ftl.stats()
        used = int(round(100.0 * s["pe_avg"] / self.profile.device.endurance_pe_cycles))
        spare = der.total_pages - der.user_pages
        bad_pages = s["bad_blocks"] * self.profile.geometry.pages_per_block
        avail = max(0, int(100 * (spare - bad_pages) // spare)) if spare else 0
        return {"percentage_used": min(255, used), "available_spare": avail,
                "available_spare_threshold": 10,
                "critical_warning": 0x1 if avail < 10 else 0,
                "media_errors": s["media_errors"],
                "data_units_read": -(-self.host["bytes_read"] // 512_000),
                "data_units_written": -(-self.host["bytes_written"] // 512_000),
                "host_read_commands": self.host["read_cmds"],
                "host_write_commands": self.host["write_cmds"]}

    def log_page(self, lid: int) -> bytes | None:
        if lid == LogPage.FLASH_STATS:
            s = self.ftl.stats()
            a = np.zeros(1, FLASH_LOG)
            a["version"], a["nchannels"] = 1, self.profile.geometry.channels
            for k in ("gc_runs", "gc_pages_copied", "host_pages_written", "nand_pages_written",
                      "nand_pages_read", "erases", "pe_min", "pe_max", "pe_avg", "free_lines",
                      "total_lines", "bad_blocks", "read_failures", "program_failures"):
                a[k] = s[k]
            busy = np.zeros(MAX_CHANNELS, np.uint64)
            busy[:len(s["channel_busy_ns"])] = s["channel_busy_ns"]
            a["channel_busy_ns"] = busy
            return a.tobytes()
        if lid == LogPage.SMART:
            h = self.health()
            a = np.zeros(1, SMART_LOG)
            for k in ("critical_warning", "available_spare", "available_spare_threshold",
                      "percentage_used"):
                a[k] = h[k]
            for k in ("data_units_read", "data_units_written", "host_read_commands",
                      "host_write_commands", "media_errors"):
                a[k] = u128(h[k])
            return a.tobytes()
        return None

    def identify(self) -> bytes:
        """Identify Namespace (CNS 00h), 4096 bytes."""
        b = bytearray(4096)
        nuse = int((self.ftl.l2p >= 0).sum()) * self.lpp
        b[0:8] = self.nlbas.to_bytes(8, "little")          # NSZE
        b[8:16] = self.nlbas.to_bytes(8, "little")         # NCAP
        b[16:24] = nuse.to_bytes(8, "little")              # NUSE
        b[24] = 0x1 | 0x10                                 # NSFEAT: thin provisioning, NPWG.. valid
        b[25] = 0                                          # NLBAF: one format
        b[26] = 0                                          # FLBAS: format 0
        b[33] = 0x1 | 0x8                                  # DLFEAT: dealloc reads 0, WZ dealloc
        g = self.profile.geometry
        fp_lbas = max(1, (g.flash_page_bytes or g.page_bytes) // self.lba_size)
        b[64:66] = (fp_lbas - 1).to_bytes(2, "little")     # NPWG (0's based)
        b[72:74] = (fp_lbas - 1).to_bytes(2, "little")     # NOWS (0's based)
        lbads = self.lba_size.bit_length() - 1
        b[128:132] = (lbads << 16).to_bytes(4, "little")   # LBAF0: MS 0, LBADS, RP 0
        return bytes(b)

    def close(self) -> None:
        self.ftl.close()
