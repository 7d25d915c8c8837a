"""One control-socket connection as the daemon sees it, bounded both ways.

The daemon's single loop serves every client's queues, so nothing a client
sends or fails to read may make it wait, grow without bound or crash:
- a request is one line of at most MAX_LINE bytes, a flat JSON object
  (the protocol has no nested values, so nesting is refused before parsing,
  where the parser would recurse);
- replies go out without blocking; what the socket does not take waits in a
  buffer of at most MAX_UNSENT bytes, flushed when the socket is writable.
  A client that lets more pile up is not reading its replies and is dropped.
"""
from __future__ import annotations

import array
import json
import re
import socket

#: the longest request, attach, is under 100 bytes; 1,000 times that is no client's
MAX_LINE = 64 << 10
#: about 100 status replies with a few clients each; more unread is a client that never reads
MAX_UNSENT = 256 << 10
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class Refused(Exception):
    """The client broke the protocol; the message is the one-line reply."""


def parse_request(line: bytes) -> dict:
    """One request line -> the message; Refused(why) if it is not a flat
    JSON object with a string "op"."""
    openers = _STRING.sub(b'""', line)
    if openers.count(b"{") + openers.count(b"[") > 1:
        raise Refused("malformed control message: requests are flat JSON objects, nothing nested")
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        raise Refused("malformed control message: not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise Refused('malformed control message: expected {"op": "..."}')
    return msg


class ControlConn:
    __slots__ = ("sock", "cred", "inbuf", "outbuf", "session")

    def __init__(self, sock: socket.socket, cred: tuple[int, int]):
        self.sock, self.cred = sock, cred
        self.inbuf = b""
        self.outbuf = b""
        self.session = None

    def feed(self, chunk: bytes) -> list[bytes]:
        """Bytes received -> the complete request lines; Refused when a line
        grows past MAX_LINE (bytes that never end a line included)."""
        buf = self.inbuf + chunk
        *lines, self.inbuf = buf.split(b"\n")
        if len(self.inbuf) > MAX_LINE or any(len(ln) > MAX_LINE for ln in lines):
            self.inbuf = b""
            raise Refused(f"control message longer than {MAX_LINE} bytes")
        return lines

    def send(self, obj: dict, fds=()) -> bool:
        """Queue one reply and send what the socket takes now; False when the
        client must be dropped (it does not read, or the socket failed)."""
        data = (json.dumps(obj) + "\n").encode()
        if fds:
            if self.outbuf:          # fds travel with the reply's first byte, in order
                return False
            try:
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                   array.array("i", fds))], socket.MSG_DONTWAIT)
            except OSError:          # BlockingIOError included: a fresh socket takes it
                return False
            self.outbuf = data[sent:]
            return True
        if len(self.outbuf) + len(data) > MAX_UNSENT:
            return False
        self.outbuf += data
        return self.flush()

    def flush(self) -> bool:
        """Send what the socket takes; False if it failed."""
        while self.outbuf:
            try:
                sent = self.sock.send(self.outbuf, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            self.outbuf = self.outbuf[sent:]
        return True
