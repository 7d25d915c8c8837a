"""The host side of an array of drives: how kv heads (and, past one drive per
kv head, sequences) are split across the drives, and how long the host's
PCIe links they share take to carry q out and the outputs back.

The live array (csdemu.host.array) and the system model
(csdemu.sysmodel.array) both use this package, so an N-drive attend costs
the same in both by construction. It imports nothing else from csdemu: the
host library and the system model sit above it.

    plan(kv_heads, drives) -> [Share]       split.py: the rule
    load_topology(name_or_path) -> Topology links.py: the host's PCIe lanes
    array_time(topology, drives, steps) -> ArrayTime
"""
from csdemu.topology.links import (PCIE_EFFICIENCY, PCIE_LANE_GBPS, ArrayTime, MemberStep,
                                   Topology, TopologyError, array_time, attend_io_bytes,
                                   list_topologies, load_topology)
from csdemu.topology.split import Share, plan, rows_for

__all__ = ["PCIE_EFFICIENCY", "PCIE_LANE_GBPS", "ArrayTime", "MemberStep", "Topology",
           "TopologyError", "array_time", "attend_io_bytes", "list_topologies", "load_topology",
           "Share", "plan", "rows_for"]
