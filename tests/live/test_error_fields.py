"""Every NVMeError says which command and which field (issue 19, item 12):
for standard commands too, the drive's Error Information log names the
field a failing status implies, and the library puts it in the message.
Bad arguments the wire cannot carry are a ValueError naming the field."""
import numpy as np
import pytest

import csdemu
from nvme_cmds import errlog
from nvme_cmds.opcodes import AdminOpcode, NvmOpcode
from nvme_cmds.status import Status


@pytest.fixture(scope="module")
def dev(small_dev):
    return small_dev


def _err(fn):
    with pytest.raises(csdemu.NVMeError) as e:
        fn()
    return e.value


def test_block_io_errors_name_the_lba_fields(dev):
    n = dev.identify_ns(1)["nsze"]
    e = _err(lambda: dev.read(n, 1))
    assert e.command == "read" and e.status == Status.LBA_OUT_OF_RANGE
    assert "SLBA (CDW10-11)" in e.field and "SLBA (CDW10-11)" in str(e)
    e = _err(lambda: dev.write(n - 1, np.zeros(2 * dev.lba_size(), np.uint8)))
    assert e.command == "write" and "NLB (CDW12[15:0])" in e.field


@pytest.mark.parametrize("call, command, field", [
    (lambda d: d.identify_ns(77), "identify namespace", "NSID"),
    (lambda d: d.get_feature(0xEE), "get features", "FID (CDW10[7:0])"),
    (lambda d: d.log_page(0x55), "log page 0x55", "LID (CDW10[7:0])"),
    (lambda d: d.flush(nsid=9), "flush", "NSID"),
])
def test_admin_and_namespace_errors_name_their_field(dev, call, command, field):
    e = _err(lambda: call(dev))
    assert e.command == command and e.field == field


@pytest.mark.parametrize("call, message", [
    (lambda d: d.read(-1, 1), "lba -1 does not fit SLBA"),
    (lambda d: d.read(0, 0), "nblocks must be at least 1"),
    (lambda d: d.write(1 << 64, np.zeros(4096, np.uint8)), "does not fit SLBA"),
])
def test_arguments_the_wire_cannot_carry_are_value_errors(dev, call, message):
    with pytest.raises(ValueError, match=message):
        call(dev)


def test_default_locations_point_at_the_field_the_status_is_about():
    loc = errlog.default_location(Status.LBA_OUT_OF_RANGE, NvmOpcode.READ, False)
    assert errlog.split_location(loc) == (40, 0)
    assert errlog.default_location(Status.INVALID_NAMESPACE, NvmOpcode.FLUSH, False) == 4
    assert errlog.field_name(AdminOpcode.ABORT, errlog.default_location(
        Status.INVALID_QID, AdminOpcode.ABORT, True), True) == "SQID (CDW10[15:0])"
    # a status that implies no field leaves the location empty
    assert errlog.default_location(Status.INTERNAL_ERROR, NvmOpcode.READ, False) == errlog.NO_LOCATION
    assert errlog.field_name(NvmOpcode.READ, errlog.NO_LOCATION, False) == ""
