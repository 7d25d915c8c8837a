"""Feature identifiers (Set/Get Features, admin 09h/0Ah)."""
from enum import IntEnum


class FeatureId(IntEnum):
    ARBITRATION = 0x01
    POWER_MANAGEMENT = 0x02
    VOLATILE_WRITE_CACHE = 0x06
    NUMBER_OF_QUEUES = 0x07
    INTERRUPT_COALESCING = 0x08
    # vendor specific, C0h-FFh
    TIMING_MODE = 0xC0          # 0 = virtual, 1 = realtime
    FAULT_INJECTION = 0xC1      # cdw11 = read fail ppm, cdw12 = program fail ppm, cdw13 = seed


class TimingMode(IntEnum):
    VIRTUAL = 0
    REALTIME = 1


SEL_CURRENT = 0
SEL_DEFAULT = 1
SEL_SAVED = 2
SEL_CAPABILITIES = 3
