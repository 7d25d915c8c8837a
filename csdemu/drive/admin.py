"""Admin command set: queue management, Identify, Get Log Page, features,
Abort, and the vendor admin commands (DMA map/unmap, KV namespaces).

Each handler takes (ctrl, session, cmd) with `cmd` the unpacked SQE tuple
(opc, flags, cid, nsid, cdw2, cdw3, mptr, prp1, prp2, cdw10..cdw15) and
returns (status, dw0, dw1); status None means "held" (Async Event Request).
"""
from __future__ import annotations

import time

import numpy as np

from csdemu.drive import dma
from csdemu.drive.error_log import ERROR_LOG_ENTRIES, error_log
from csdemu.transport.qpair import MAX_QUEUE_DEPTH, MAX_QUEUES, cq_bytes, sq_bytes
from csdemu.drive.session import NUM_VECTORS
from nvme_cmds import identify as idf
from nvme_cmds.features import SEL_CAPABILITIES, SEL_DEFAULT, SEL_SAVED, FeatureId, TimingMode
from nvme_cmds.logs import SMART_LOG, LogPage, u128
from nvme_cmds.opcodes import AdminOpcode, VendorAdminOpcode
from nvme_cmds.status import Status

OK = (Status.SUCCESS, 0, 0)
AER_LIMIT = 4
NVME_VERSION = 0x00020000      # 2.0


def _bad(status):
    return status, 0, 0


def handle(ctrl, session, cmd):
    opc = cmd[0]
    fn = _HANDLERS.get(opc)
    if fn is None:
        return _bad(Status.INVALID_OPCODE)
    st = ctrl.check_flags(cmd[1])
    if st:
        return _bad(st)
    try:
        return fn(ctrl, session, cmd)
    except Exception as exc:
        ctrl.log_exception(exc)
        return _bad(Status.INTERNAL_ERROR)


# ---------------------------------------------------------------- queues
def _qid_size(cdw10):
    return cdw10 & 0xFFFF, (cdw10 >> 16) + 1


def create_io_cq(ctrl, s, cmd):
    qid, depth = _qid_size(cmd[9])
    cdw11 = cmd[10]
    pc, ien, iv = cdw11 & 1, (cdw11 >> 1) & 1, cdw11 >> 16
    if qid == 0 or qid >= MAX_QUEUES or qid in s.cqs:
        return _bad(Status.INVALID_QID)
    if depth < 2 or depth > MAX_QUEUE_DEPTH:
        return _bad(Status.INVALID_QUEUE_SIZE)
    if not pc or cdw11 & 0xFFFC:
        return _bad(Status.INVALID_FIELD)
    if iv >= NUM_VECTORS:
        return _bad(Status.INVALID_INTERRUPT_VECTOR)
    if not s.span_ok("cq", qid, cmd[7], cq_bytes(depth)):
        return _bad(Status.INVALID_FIELD)
    s.add_cq(qid, cmd[7], depth, iv, bool(ien))
    return OK


def create_io_sq(ctrl, s, cmd):
    qid, depth = _qid_size(cmd[9])
    cdw11 = cmd[10]
    pc, cqid = cdw11 & 1, cdw11 >> 16
    if qid == 0 or qid >= MAX_QUEUES or qid in s.sqs:
        return _bad(Status.INVALID_QID)
    if depth < 2 or depth > MAX_QUEUE_DEPTH:
        return _bad(Status.INVALID_QUEUE_SIZE)
    if not pc or cdw11 & 0xFFF8:
        return _bad(Status.INVALID_FIELD)
    if cqid == 0 or cqid not in s.cqs:
        return _bad(Status.INVALID_CQ)
    if not s.span_ok("sq", qid, cmd[7], sq_bytes(depth)):
        return _bad(Status.INVALID_FIELD)
    s.add_sq(qid, cmd[7], depth, cqid)
    return OK


def delete_io_sq(ctrl, s, cmd):
    qid = cmd[9] & 0xFFFF
    if qid == 0 or qid not in s.sqs or cmd[9] >> 16:
        return _bad(Status.INVALID_QID)
    sq = s.sqs[qid]
    ctrl.drop_sq(s, sq)
    s.remove_sq(qid)
    return OK


def delete_io_cq(ctrl, s, cmd):
    qid = cmd[9] & 0xFFFF
    if qid == 0 or qid not in s.cqs or cmd[9] >> 16:
        return _bad(Status.INVALID_QID)
    if s.cqs[qid].sq_ids:
        return _bad(Status.INVALID_QUEUE_DELETION)
    s.remove_cq(qid)
    return OK


# ---------------------------------------------------------------- identify
def identify_controller(ctrl) -> np.ndarray:
    rec = np.zeros(1, idf.ID_CTRL)
    c = ctrl.config
    rec["vid"] = 0x1DE5
    rec["ssvid"] = 0x1DE5
    rec["sn"] = c.serial.encode()
    rec["mn"] = c.model.encode()
    rec["fr"] = b"0.1.0"
    rec["mdts"] = max(0, (c.mdts_bytes // 4096).bit_length() - 1)
    rec["cntlid"] = 1
    rec["ver"] = NVME_VERSION
    rec["lpa"] = 0x02                        # extended data for Get Log Page
    rec["elpe"] = ERROR_LOG_ENTRIES - 1      # 0's based
    rec["sqes"] = 0x66                       # 64-byte SQEs
    rec["cqes"] = 0x44                       # 16-byte CQEs
    rec["maxcmd"] = MAX_QUEUE_DEPTH
    rec["nn"] = 1024
    rec["oncs"] = idf.ONCS_DSM | idf.ONCS_WRITE_ZEROES
    rec["vwc"] = 1
    rec["sgls"] = idf.SGLS_SUPPORTED
    vs = rec["vs"]
    vs["magic"] = b"CSDE"
    vs["version"] = 1
    vs["timing_mode"] = ctrl.config.timing_mode
    vs["profile"] = ctrl.config.profile_name.encode()[:32]
    for key, value in ctrl.device_info.items():
        if key in idf.CSD_VENDOR.names:
            vs[key] = value
    return rec


def identify(ctrl, s, cmd):
    cns = cmd[9] & 0xFF
    if cmd[9] >> 8 & 0xFF:
        return _bad(Status.INVALID_FIELD)
    nsid = cmd[3]
    if cns == idf.CNS.CONTROLLER:
        data = identify_controller(ctrl)
    elif cns == idf.CNS.NAMESPACE:
        st = ctrl.ns_access(s, nsid)
        if st:
            return _bad(st)
        data = np.frombuffer(ctrl.namespaces[nsid].identify(), np.uint8)
    elif cns == idf.CNS.ACTIVE_NSID_LIST:
        ids = sorted(n for n in ctrl.namespaces if n > nsid and ctrl.visible(s, n))[:1024]
        data = np.zeros(1024, np.uint32)
        data[:len(ids)] = ids
    else:
        return _bad(Status.INVALID_FIELD)
    return _bad(ctrl.data_out(s, cmd[1], cmd[7], cmd[8], data, 4096))


# ---------------------------------------------------------------- logs
def smart_log(ctrl) -> np.ndarray:
    rec = np.zeros(1, SMART_LOG)
    c = ctrl.counters
    health = {}
    for ns in ctrl.namespaces.values():
        h = ns.health()
        if h:
            health = h
            break
    rec["composite_temperature"] = 313           # Kelvin: 40 °C, no thermal model
    rec["available_spare"] = health.get("available_spare", 100)
    rec["available_spare_threshold"] = 10
    rec["percentage_used"] = min(255, health.get("percentage_used", 0))
    # Data units are thousands of 512-byte units, rounded up (spec).
    for field, nbytes in (("data_units_read", c.bytes_read), ("data_units_written", c.bytes_written)):
        rec[field] = u128((nbytes + 512 * 1000 - 1) // (512 * 1000))
    rec["host_read_commands"] = u128(c.host_read_commands)
    rec["host_write_commands"] = u128(c.host_write_commands)
    rec["controller_busy_time"] = u128(c.busy_ns // 60_000_000_000)
    life = ctrl.lifetime
    if life is not None:
        rec["power_cycles"] = u128(life.data["power_cycles"])
        rec["unsafe_shutdowns"] = u128(life.data["unsafe_shutdowns"])
        rec["power_on_hours"] = u128(life.power_on_hours())
    rec["media_errors"] = u128(c.media_errors + health.get("media_errors", 0))
    return rec


def log_page_bytes(ctrl, lid: int) -> np.ndarray | None:
    if lid == LogPage.SMART:
        return smart_log(ctrl).view(np.uint8)
    for ns in ctrl.namespaces.values():
        page = ns.log_page(lid)
        if page is not None:
            return np.frombuffer(page, np.uint8)
    if lid == LogPage.ENGINE_STATS and ctrl.kv is not None:
        return np.frombuffer(ctrl.kv.engine_log(ctrl), np.uint8)
    return None


def get_log_page(ctrl, s, cmd):
    cdw10, cdw11 = cmd[9], cmd[10]
    lid = cdw10 & 0xFF
    numd = ((cdw10 >> 16) | ((cdw11 & 0xFFFF) << 16)) + 1
    offset = cmd[11] | (cmd[12] << 32)
    page = error_log(ctrl, s).page() if lid == LogPage.ERROR_INFO else log_page_bytes(ctrl, lid)
    if page is None:
        return _bad(Status.INVALID_LOG_PAGE)
    if offset % 4 or offset > page.nbytes:
        return _bad(Status.INVALID_FIELD)
    length = numd * 4
    out = np.zeros(length, np.uint8)
    chunk = page[offset:offset + length]
    out[:chunk.nbytes] = chunk
    return _bad(ctrl.data_out(s, cmd[1], cmd[7], cmd[8], out, length))


# ---------------------------------------------------------------- features
FEATURE_DEFAULTS = {
    FeatureId.ARBITRATION: 0,
    FeatureId.POWER_MANAGEMENT: 0,
    FeatureId.VOLATILE_WRITE_CACHE: 1,
    FeatureId.NUMBER_OF_QUEUES: ((MAX_QUEUES - 2) << 16) | (MAX_QUEUES - 2),
    FeatureId.INTERRUPT_COALESCING: 0,
    FeatureId.TIMING_MODE: TimingMode.VIRTUAL,
    FeatureId.FAULT_INJECTION: 0,
}


def set_features(ctrl, s, cmd):
    cdw10, value = cmd[9], cmd[10]
    fid = cdw10 & 0xFF
    if cdw10 >> 31:
        return _bad(Status.FEATURE_NOT_SAVEABLE)
    if fid not in FEATURE_DEFAULTS or cdw10 & 0x7FFFFF00:
        return _bad(Status.INVALID_FIELD)
    if fid == FeatureId.NUMBER_OF_QUEUES:
        # Requests are capped at what the controller has; dw0 reports the grant.
        return Status.SUCCESS, FEATURE_DEFAULTS[fid], 0
    if fid == FeatureId.TIMING_MODE:
        if value not in (TimingMode.VIRTUAL, TimingMode.REALTIME):
            return _bad(Status.INVALID_FIELD)
        if value == TimingMode.REALTIME and ctrl.config.timing_mode != value:
            now = time.monotonic_ns()
            for ns in ctrl.namespaces.values():
                if hasattr(ns, "restart_timeline"):
                    ns.restart_timeline(now)
            if ctrl.kv is not None:
                ctrl.kv.engine.restart_timeline(now)
            ctrl.timeline_ns = now
        if ctrl.config.timing_mode != value:
            ctrl.epoch += 1           # every CQ's horizon belongs to the old timeline
        ctrl.config.timing_mode = value
    elif fid == FeatureId.FAULT_INJECTION:
        ns = ctrl.namespaces.get(1)
        setter = getattr(ns, "set_fault_injection", None)
        if setter is None:
            return _bad(Status.FEATURE_NOT_CHANGEABLE)
        try:
            setter(read_fail_ppm=cmd[10], program_fail_ppm=cmd[11], seed=cmd[12])
        except ValueError:
            return _bad(Status.INVALID_FIELD)
    elif fid == FeatureId.VOLATILE_WRITE_CACHE:
        if value > 1:
            return _bad(Status.INVALID_FIELD)
        for ns in ctrl.namespaces.values():
            if hasattr(ns, "set_write_cache"):
                ns.set_write_cache(bool(value & 1))
    ctrl.features[fid] = value
    return OK


def get_features(ctrl, s, cmd):
    cdw10 = cmd[9]
    fid, sel = cdw10 & 0xFF, (cdw10 >> 8) & 0x7
    if fid not in FEATURE_DEFAULTS or cdw10 >> 11:
        return _bad(Status.INVALID_FIELD)
    if sel == SEL_CAPABILITIES:
        return Status.SUCCESS, 0b100 if fid != FeatureId.NUMBER_OF_QUEUES else 0, 0
    if sel in (SEL_DEFAULT, SEL_SAVED) or sel > SEL_CAPABILITIES:
        if sel > SEL_CAPABILITIES:
            return _bad(Status.INVALID_FIELD)
        return Status.SUCCESS, FEATURE_DEFAULTS[fid], 0
    if fid == FeatureId.TIMING_MODE:
        return Status.SUCCESS, int(ctrl.config.timing_mode), 0
    return Status.SUCCESS, ctrl.features.get(fid, FEATURE_DEFAULTS[fid]), 0


# ---------------------------------------------------------------- misc
def abort(ctrl, s, cmd):
    sqid, cid = cmd[9] & 0xFFFF, cmd[9] >> 16
    if sqid not in s.sqs:
        return _bad(Status.INVALID_QID)
    # dw0 bit 0 = 1: not aborted (already completed, or not fetched yet and
    # will run: the host drops its late completion).
    return Status.SUCCESS, 0 if ctrl.abort_held(s, sqid, cid) else 1, 0


def async_event_request(ctrl, s, cmd):
    if len(s.aers) >= AER_LIMIT:
        return _bad(Status.ASYNC_EVENT_LIMIT_EXCEEDED)
    s.aers.append(cmd[2])
    return None, 0, 0


def keep_alive(ctrl, s, cmd):
    return OK


def dma_map(ctrl, s, cmd):
    addr, length = cmd[7], cmd[9] | (cmd[10] << 32)
    if length == 0 or not dma.probe(s.pid, addr, length, s.scratch.ctypes.data):
        return _bad(Status.DATA_TRANSFER_ERROR)
    if not s.iommu.map(addr, length):
        return _bad(Status.INVALID_FIELD)
    return OK


def dma_unmap(ctrl, s, cmd):
    return OK if s.iommu.unmap(cmd[7]) else _bad(Status.INVALID_FIELD)


def kv_admin(ctrl, s, cmd):
    if ctrl.kv is None:
        return _bad(Status.INVALID_OPCODE)
    return ctrl.kv.handle(ctrl, s, cmd)


_HANDLERS = {
    AdminOpcode.DELETE_IO_SQ: delete_io_sq,
    AdminOpcode.CREATE_IO_SQ: create_io_sq,
    AdminOpcode.GET_LOG_PAGE: get_log_page,
    AdminOpcode.DELETE_IO_CQ: delete_io_cq,
    AdminOpcode.CREATE_IO_CQ: create_io_cq,
    AdminOpcode.IDENTIFY: identify,
    AdminOpcode.ABORT: abort,
    AdminOpcode.SET_FEATURES: set_features,
    AdminOpcode.GET_FEATURES: get_features,
    AdminOpcode.ASYNC_EVENT_REQUEST: async_event_request,
    AdminOpcode.KEEP_ALIVE: keep_alive,
    VendorAdminOpcode.DMA_MAP: dma_map,
    VendorAdminOpcode.DMA_UNMAP: dma_unmap,
    VendorAdminOpcode.CREATE_KV_NAMESPACE: kv_admin,
    VendorAdminOpcode.DELETE_KV_NAMESPACE: kv_admin,
}
_HANDLERS = {int(k): v for k, v in _HANDLERS.items()}
