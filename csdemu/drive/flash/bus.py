"""The busy intervals of a bus (a flash channel or the PCIe link).

A bus keeps its future busy intervals, sorted and disjoint, so a transfer may
take an idle gap before a transfer booked earlier but due later (NVMeVirt's
time-slot channel model allows the same): one read stuck behind a 2 ms erase
does not hold up the bus for the other dies. All buses share one int64 array
``iv[2, buses, BUS_SLOTS]`` (starts, ends) and their counts sit in the timing
state buffer ``st`` at ``nb_off``; `csdemu.drive.flash.timing` owns both and books
every transfer here. Integer nanoseconds throughout.
"""
from __future__ import annotations

import numba

BUS_SLOTS = 256          # busy intervals remembered per bus (channel or link)
#: intervals fused into one when a bus runs out of slots. Fusing only the two
#: earliest freed one slot per shift of the whole list, and a busy attend
#: (30k column reads leaving sub-transfer gaps) then paid that on every page.
BUS_MERGE = 17


@numba.njit(cache=True, nogil=True, inline="always")
def book(iv, st, nb_off, b, ready, dur, floor, dies, L):
    """Earliest start >= ready of a `dur`-long transfer on bus b; books it.
    iv[0, b] / iv[1, b] hold the sorted, disjoint busy intervals of bus b and
    st[nb_off + b] how many there are. Indexed in place: a row view
    (``iv[0, b]``) costs two atomic reference counts per call, which was
    most of charging a 30k-page attend. `dies`, `L`: where the free times of
    the bus's L dies are in `st` (L = 0 for the host link)."""
    n = drop_before(iv, st, nb_off, b, floor)
    if n == iv.shape[2]:
        # Full: first forget what ended before the bus's earliest free die
        # (exact: see bus_floor); done only now, as trimming on every
        # booking cost more than the bookings (a SparF attend keeps ~150
        # intervals per bus), and a search skips those intervals anyway.
        n = drop_before(iv, st, nb_off, b, bus_floor(st, dies, L, floor))
    if n == iv.shape[2]:                            # still full: merge the earliest
        m = BUS_MERGE                                # into one, BUS_MERGE - 1
        iv[1, b, 0] = iv[1, b, m - 1]                # slots freed at one shift
        for j in range(1, n - m + 1):
            iv[0, b, j] = iv[0, b, j + m - 1]
            iv[1, b, j] = iv[1, b, j + m - 1]
        n -= m - 1
    if dur <= 0:
        st[nb_off + b] = n
        return ready
    t = ready
    # intervals are sorted and disjoint, so their ends are sorted too: the
    # first one not over by `ready`, found from the newest back. Transfers
    # land near the end of a bus's future (a SparF attend's 30k partial-page
    # reads insert ~20 from the end of ~180): this walk took 15 % off such an
    # attend's charge against a binary search's unpredictable branches, and
    # costs at most BUS_SLOTS steps when a transfer lands early
    i = n
    while i > 0 and iv[1, b, i - 1] > t:
        i -= 1
    while i < n:
        if iv[1, b, i] <= t:
            i += 1
        elif iv[0, b, i] >= t + dur:
            break
        else:
            t = iv[1, b, i]
            i += 1
    e = t + dur
    if i > 0 and iv[1, b, i - 1] == t:                    # extend the previous interval
        iv[1, b, i - 1] = e
        if i < n and iv[0, b, i] == e:                    # ... and fuse with the next
            iv[1, b, i - 1] = iv[1, b, i]
            for j in range(i, n - 1):
                iv[0, b, j] = iv[0, b, j + 1]
                iv[1, b, j] = iv[1, b, j + 1]
            n -= 1
    elif i < n and iv[0, b, i] == e:                      # extend the next interval back
        iv[0, b, i] = t
    else:                                            # insert a new interval at i
        for j in range(n, i, -1):
            iv[0, b, j] = iv[0, b, j - 1]
            iv[1, b, j] = iv[1, b, j - 1]
        iv[0, b, i] = t
        iv[1, b, i] = e
        n += 1
    st[nb_off + b] = n
    return t


@numba.njit(cache=True, nogil=True, inline="always")
def drop_before(iv, st, nb_off, b, floor):
    """Forget bus b's intervals that ended by `floor`; -> intervals left."""
    n = st[nb_off + b]
    k = 0
    while k < n and iv[1, b, k] <= floor:
        k += 1
    if k:
        for j in range(n - k):
            iv[0, b, j] = iv[0, b, j + k]
            iv[1, b, j] = iv[1, b, j + k]
        n -= k
        st[nb_off + b] = n
    return n


@numba.njit(cache=True, nogil=True)
def forget_before(st, iv, nb_off, floor):
    for b in range(iv.shape[1]):
        drop_before(iv, st, nb_off, b, floor)
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def bus_floor(st, dies, L, floor):
    """A floor for a channel's bus that loses nothing: every transfer on it
    starts once its die is free (a read after tR, a program at once), and a
    die's free time only grows, so intervals that ended before the channel's
    earliest free die (st[dies : dies + L]) can never hold a gap that is used."""
    if L == 0:
        return floor
    m = st[dies]
    for li in range(dies + 1, dies + L):
        if st[li] < m:
            m = st[li]
    return m if m > floor else floor
