"""Snapshots of a drive's SMART, flash and engine logs, and their deltas:
what fio runs, `csdemu nbd` and `csdemu stress` print for a run."""
from __future__ import annotations


def device_counters(socket_path: str, timeout: float | None = None) -> dict:
    """SMART, vendor flash log (C0h) and engine log (C1h) of the daemon, now
    (each call bounded by `timeout`, None: the admin default)."""
    from csdemu.host.device import Device
    with Device(socket_path, arena_bytes=1 << 20, io_depth=4, timeout=timeout) as dev:
        return {"smart": dev.smart(timeout), "flash": dev.flash_log(timeout),
                "engine": dev.engine_log(timeout)}


_SMART_KEYS = ("data_units_read", "data_units_written", "host_read_commands",
               "host_write_commands", "media_errors")
_FLASH_KEYS = ("gc_runs", "gc_pages_copied", "host_pages_written", "nand_pages_written",
               "nand_pages_read", "erases", "read_failures", "program_failures")
_ENGINE_KEYS = ("attends", "sparf_attends", "appends", "tokens_appended", "pages_programmed",
                "reclaims", "pages_read_flash", "pages_read_dram", "pages_skipped",
                "bytes_read_flash")


def counter_deltas(before: dict, after: dict) -> dict:
    """What changed between two `device_counters()` snapshots, plus the run's WAF."""
    out = {"smart": {k: after["smart"][k] - before["smart"][k] for k in _SMART_KEYS},
           "flash": {k: after["flash"][k] - before["flash"][k] for k in _FLASH_KEYS},
           "engine": {k: after["engine"][k] - before["engine"][k] for k in _ENGINE_KEYS}}
    out["engine"]["channel_bytes"] = [int(a) - int(b) for a, b in
                                      zip(after["engine"]["channel_bytes"],
                                          before["engine"]["channel_bytes"])]
    out["engine"]["channel_pages"] = [int(a) - int(b) for a, b in
                                      zip(after["engine"]["channel_pages"],
                                          before["engine"]["channel_pages"])]
    f = out["flash"]
    f["waf"] = (f["nand_pages_written"] / f["host_pages_written"]
                if f["host_pages_written"] else None)
    f["waf_lifetime"] = after["flash"]["waf"]
    f["free_lines"] = after["flash"]["free_lines"]
    f["total_lines"] = after["flash"]["total_lines"]
    f["pe_max"] = after["flash"]["pe_max"]
    return out


def format_deltas(d: dict) -> str:
    f, s, e = d["flash"], d["smart"], d["engine"]
    waf = f"{f['waf']:.3f}" if f["waf"] is not None else "n/a"
    lines = ["device deltas for this run:",
             f"  SMART   data units read {s['data_units_read']}, written {s['data_units_written']}; "
             f"host read cmds {s['host_read_commands']}, write cmds {s['host_write_commands']}; "
             f"media errors {s['media_errors']}",
             f"  flash   WAF {waf} (host pages {f['host_pages_written']}, nand pages "
             f"{f['nand_pages_written']}); GC runs {f['gc_runs']}, pages copied "
             f"{f['gc_pages_copied']}; erases {f['erases']}; free lines "
             f"{f['free_lines']}/{f['total_lines']}"]
    if any(v for k, v in e.items() if not k.startswith("channel_")):
        lines.append(f"  engine  appends {e['appends']} ({e['tokens_appended']} tokens), attends "
                     f"{e['attends']} (SparF {e['sparf_attends']}), reclaims {e['reclaims']}, "
                     f"flash bytes read {e['bytes_read_flash']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- job files
