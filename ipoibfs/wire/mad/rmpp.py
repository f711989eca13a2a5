"""RMPP, the reliable multi-packet protocol of the SA and the other RMPP classes (IBA 13.6,
the kernel's mad_rmpp.c), as pure logic.

The RMPP header (struct ib_rmpp_hdr) is bytes 24-35 of an RMPP-class MAD: version, type
(DATA, ACK, STOP, ABORT), response time (5 bits) and flags (ACTIVE, FIRST, LAST), status,
then the segment number and, on DATA, the payload length (on the first segment the whole
message's, on the last that segment's) or, on ACK, the new window's last segment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from .common import (
    IB_MGMT_METHOD_RESP,
    IB_MGMT_RMPP_HDR,
    MAD_SIZE,
    MadHdr,
    data_offset,
    is_rmpp_class,
)
from .layout import Buffer

IB_MGMT_RMPP_VERSION = 1

IB_MGMT_RMPP_TYPE_DATA = 1
IB_MGMT_RMPP_TYPE_ACK = 2
IB_MGMT_RMPP_TYPE_STOP = 3
IB_MGMT_RMPP_TYPE_ABORT = 4

IB_MGMT_RMPP_FLAG_ACTIVE = 1
IB_MGMT_RMPP_FLAG_FIRST = 2
IB_MGMT_RMPP_FLAG_LAST = 4

IB_MGMT_RMPP_NO_RESPTIME = 0x1F

IB_MGMT_RMPP_STATUS_SUCCESS = 0
IB_MGMT_RMPP_STATUS_RESX = 1
IB_MGMT_RMPP_STATUS_ABORT_MIN = 118
IB_MGMT_RMPP_STATUS_T2L = 118
IB_MGMT_RMPP_STATUS_BAD_LEN = 119
IB_MGMT_RMPP_STATUS_BAD_SEG = 120
IB_MGMT_RMPP_STATUS_BADT = 121
IB_MGMT_RMPP_STATUS_W2S = 122
IB_MGMT_RMPP_STATUS_S2B = 123
IB_MGMT_RMPP_STATUS_BAD_STATUS = 124
IB_MGMT_RMPP_STATUS_UNV = 125
IB_MGMT_RMPP_STATUS_TMR = 126
IB_MGMT_RMPP_STATUS_UNSPEC = 127
IB_MGMT_RMPP_STATUS_ABORT_MAX = 127

_RMPP = struct.Struct("!BBBBII")


@dataclass(frozen=True, slots=True, kw_only=True)
class RmppHdr:
    """struct ib_rmpp_hdr. An all-zero header (the default) is "RMPP not active"."""

    version: int = 0
    type: int = 0
    resp_time: int = 0
    flags: int = 0
    status: int = 0
    seg_num: int = 0
    paylen_newwin: int = 0

    SIZE: ClassVar[int] = _RMPP.size

    @property
    def active(self) -> bool:
        return bool(self.flags & IB_MGMT_RMPP_FLAG_ACTIVE)

    def pack(self) -> bytes:
        if not 0 <= self.resp_time < 32 or not 0 <= self.flags < 8:
            raise ValueError(f"RMPP response time {self.resp_time} (5 bits), flags "
                             f"{self.flags} (3 bits)")  # fmt: skip
        try:
            return _RMPP.pack(self.version, self.type, self.resp_time << 3 | self.flags,
                              self.status, self.seg_num, self.paylen_newwin)  # fmt: skip
        except struct.error as e:
            raise ValueError(f"RMPP header: {e}") from None

    @classmethod
    def unpack(cls, data: Buffer, offset: int = 24) -> Self:
        version, kind, rtime_flags, status, seg, paylen = _RMPP.unpack_from(data, offset)
        return cls(version=version, type=kind, resp_time=rtime_flags >> 3,
                   flags=rtime_flags & 7, status=status, seg_num=seg,
                   paylen_newwin=paylen)  # fmt: skip


#: mad_rmpp.c's window_size: max(recv_queue.max_active >> 3, 1), with the MAD QP's
#: receive queue of IB_MAD_QP_RECV_SIZE (512) entries
DEFAULT_WINDOW = 512 >> 3


def _rmpp_of(mad: Buffer) -> RmppHdr:
    return RmppHdr.unpack(mad)


def _with_rmpp(mad: Buffer, hdr: RmppHdr) -> bytes:
    return bytes(mad[:24]) + hdr.pack() + bytes(mad[24 + RmppHdr.SIZE :])


def _reply(received: Buffer, hdr_len: int, rmpp: RmppHdr) -> bytes:
    """An RMPP control MAD (ACK or ABORT) answering `received`: its headers up to the
    class's data, the response bit flipped (format_ack, nack_recv), the new RMPP header."""
    head = bytearray(received[:hdr_len])
    head[3] ^= IB_MGMT_METHOD_RESP
    return _with_rmpp(bytes(head).ljust(MAD_SIZE, b"\0"), rmpp)


def abort(received: Buffer, status: int) -> bytes:
    """nack_recv: the ABORT answering a bad RMPP MAD."""
    hdr_len = data_offset(received[1])
    rtime = _rmpp_of(received).resp_time
    return _reply(received, hdr_len, RmppHdr(version=IB_MGMT_RMPP_VERSION,
                                             type=IB_MGMT_RMPP_TYPE_ABORT, resp_time=rtime,
                                             flags=IB_MGMT_RMPP_FLAG_ACTIVE,
                                             status=status))  # fmt: skip


def segments(message: Buffer) -> list[bytes]:
    """A whole RMPP-class message (its headers, then any length of data) cut into
    256-byte DATA segments as send_next_seg makes them: each repeats the headers, carries
    the next `MAD_SIZE - hdr_len` bytes of data (the last zero-padded), is ACTIVE, the
    first FIRST, the last LAST; the first's payload length is the message's (counting the
    class header of every segment after the RMPP header, minus the last one's padding),
    the last's that segment's, the others' 0."""
    raw = bytes(message)
    mgmt_class = raw[1]
    if not is_rmpp_class(mgmt_class):
        raise ValueError(f"class {mgmt_class:#04x} does not use RMPP")
    hdr_len = data_offset(mgmt_class)
    if len(raw) < hdr_len:
        raise ValueError(f"an RMPP message of class {mgmt_class:#04x} is at least {hdr_len} bytes")
    data = raw[hdr_len:]
    seg_size = MAD_SIZE - hdr_len
    seg_rmpp_size = MAD_SIZE - IB_MGMT_RMPP_HDR
    pad = seg_size - len(data) % seg_size if data else seg_size  # get_pad_size
    pad = 0 if pad == seg_size and data else pad
    count = max(1, -(-len(data) // seg_size))
    base = _rmpp_of(raw)
    out = []
    for n in range(1, count + 1):
        flags = IB_MGMT_RMPP_FLAG_ACTIVE
        paylen = 0
        if n == 1:
            flags |= IB_MGMT_RMPP_FLAG_FIRST
            paylen = count * seg_rmpp_size - pad
        if n == count:
            flags |= IB_MGMT_RMPP_FLAG_LAST
            paylen = seg_rmpp_size - pad
        hdr = RmppHdr(version=IB_MGMT_RMPP_VERSION, type=IB_MGMT_RMPP_TYPE_DATA,
                      resp_time=base.resp_time, flags=flags, seg_num=n,
                      paylen_newwin=paylen)  # fmt: skip
        chunk = data[(n - 1) * seg_size : n * seg_size].ljust(seg_size, b"\0")
        out.append(_with_rmpp(raw[:hdr_len], hdr) + chunk)
    return out


def transaction_key(mad: Buffer) -> tuple[int, int, int, int]:
    """What find_rmpp_recv matches segments on besides the source LID and QP: the TID,
    class, class version and method."""
    hdr = MadHdr.unpack(mad)
    return hdr.tid, hdr.mgmt_class, hdr.class_version, hdr.method


@dataclass
class RmppReceiver:
    """The receiving side of one RMPP transfer (start_rmpp/continue_rmpp): segments in,
    ACKs (or an ABORT) out, and the reassembled message once the LAST segment completes
    a contiguous run. The message is laid out as user_mad.c hands it to a reader: the
    first segment's headers, then every segment's data, `mad_len` bytes in all."""

    window: int = DEFAULT_WINDOW
    seg_num: int = 0
    newwin: int = 1
    last_ack: int = 0
    complete: bool = False
    aborted: int | None = None
    _segments: dict[int, bytes] = field(default_factory=dict)

    def receive(self, mad: Buffer) -> tuple[list[bytes], bytes | None]:
        """One MAD of the transfer: (MADs to send back, the message when it is whole).
        A MAD without RMPP active is a message by itself."""
        raw = bytes(mad[:MAD_SIZE])
        hdr = _rmpp_of(raw)
        if not hdr.active:
            return [], raw
        if hdr.version != IB_MGMT_RMPP_VERSION:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_UNV)
        if hdr.type in (IB_MGMT_RMPP_TYPE_ABORT, IB_MGMT_RMPP_TYPE_STOP):
            self.aborted = hdr.status
            return [], None
        if hdr.type != IB_MGMT_RMPP_TYPE_DATA:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_BADT)
        if hdr.status:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_BAD_STATUS)
        first = bool(hdr.flags & IB_MGMT_RMPP_FLAG_FIRST)
        if (hdr.seg_num == 1) != first:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_BAD_SEG)
        if self.aborted is not None:
            return [], None
        if self.seg_num == 0:
            if not first:
                return [], None  # no transfer to continue: dropped
            return self._start(raw)
        return self._continue(raw, hdr.seg_num)

    def _abort(self, raw: bytes, status: int) -> tuple[list[bytes], None]:
        self.aborted = status
        return [abort(raw, status)], None

    def _ack(self, raw: bytes) -> bytes:
        self.last_ack = self.seg_num
        hdr_len = data_offset(raw[1])
        rtime = _rmpp_of(raw).resp_time
        return _reply(raw, hdr_len, RmppHdr(version=IB_MGMT_RMPP_VERSION,
                                            type=IB_MGMT_RMPP_TYPE_ACK, resp_time=rtime,
                                            flags=IB_MGMT_RMPP_FLAG_ACTIVE,
                                            seg_num=self.seg_num,
                                            paylen_newwin=self.newwin))  # fmt: skip

    def _start(self, raw: bytes) -> tuple[list[bytes], bytes | None]:
        self._segments[1] = raw
        self.seg_num = 1
        if _rmpp_of(raw).flags & IB_MGMT_RMPP_FLAG_LAST:
            return self._complete()
        self.newwin += self.window
        return [self._ack(raw)], None

    def _continue(self, raw: bytes, seg_num: int) -> tuple[list[bytes], bytes | None]:
        if seg_num > self.newwin:
            return [], None
        if seg_num <= self.last_ack or self.complete:
            return [self._ack(self._segments[1])], None  # a duplicate: ACK again
        if seg_num in self._segments:
            return [], None
        self._segments[seg_num] = raw
        if seg_num != self.seg_num + 1:
            return [], None  # out of order: kept until the gap fills
        while self.seg_num + 1 in self._segments:
            self.seg_num += 1
        if _rmpp_of(self._segments[self.seg_num]).flags & IB_MGMT_RMPP_FLAG_LAST:
            return self._complete()
        if self.seg_num == self.newwin:
            self.newwin += self.window
            return [self._ack(self._segments[1])], None
        return [], None

    def _complete(self) -> tuple[list[bytes], bytes]:
        self.complete = True
        first = self._segments[1]
        ack = self._ack(first)
        hdr_len = data_offset(first[1])
        last = _rmpp_of(self._segments[self.seg_num])
        data_size = MAD_SIZE - hdr_len
        pad = (MAD_SIZE - IB_MGMT_RMPP_HDR) - last.paylen_newwin  # get_mad_len
        if not 0 <= pad <= MAD_SIZE - IB_MGMT_RMPP_HDR:
            pad = 0
        mad_len = hdr_len + self.seg_num * data_size - pad
        body = b"".join(self._segments[n][hdr_len:] for n in range(1, self.seg_num + 1))
        return [ack], (first[:hdr_len] + body)[:mad_len]


@dataclass
class RmppSender:
    """The sending side of one RMPP transfer (ib_send_rmpp_mad, process_rmpp_ack,
    ib_retry_rmpp): the message's segments go out up to the receiver's window, each ACK
    moves the window on; the transfer is done when the last segment is ACKed."""

    message: bytes
    newwin: int = 1
    seg_num: int = 0
    last_ack: int = 0
    aborted: int | None = None
    _segments: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._segments = segments(self.message)

    @property
    def seg_count(self) -> int:
        return len(self._segments)

    @property
    def done(self) -> bool:
        return self.last_ack == self.seg_count

    def start(self) -> list[bytes]:
        """The first window's segments."""
        return self._send_window()

    def _send_window(self) -> list[bytes]:
        out = []
        while self.seg_num < min(self.newwin, self.seg_count):
            self.seg_num += 1
            out.append(self._segments[self.seg_num - 1])
        return out

    def receive(self, mad: Buffer) -> list[bytes]:
        """An ACK, STOP or ABORT from the receiver: the segments it lets out next, or the
        ABORT a bad ACK gets."""
        raw = bytes(mad[:MAD_SIZE])
        hdr = _rmpp_of(raw)
        if not hdr.active or self.aborted is not None:
            return []
        if hdr.type in (IB_MGMT_RMPP_TYPE_STOP, IB_MGMT_RMPP_TYPE_ABORT):
            self.aborted = hdr.status
            return []
        if hdr.type != IB_MGMT_RMPP_TYPE_ACK:
            return []
        if hdr.status:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_BAD_STATUS)
        seg_num, newwin = hdr.seg_num, hdr.paylen_newwin
        if newwin < seg_num:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_W2S)
        if self.done:
            return []
        if seg_num > self.seg_count or seg_num > self.newwin:
            return self._abort(raw, IB_MGMT_RMPP_STATUS_S2B)
        if newwin < self.newwin or seg_num < self.last_ack:
            return []  # an old ACK
        self.last_ack = max(self.last_ack, seg_num)
        self.newwin = newwin
        if self.done:
            return []
        return self._send_window()

    def _abort(self, raw: bytes, status: int) -> list[bytes]:
        self.aborted = status
        return [abort(raw, status)]

    def retry(self) -> list[bytes]:
        """No ACK in time (ib_retry_rmpp): everything after the last ACKed segment again,
        up to the window."""
        if self.done or self.aborted is not None:
            return []
        self.seg_num = self.last_ack
        return self._send_window()


def reassemble(mads: list[bytes], window: int = DEFAULT_WINDOW) -> bytes:
    """The message a complete, in-order list of segments makes (for tests and captures)."""
    receiver = RmppReceiver(window=window)
    message = None
    for mad in mads:
        _, message = receiver.receive(mad)
    if message is None:
        raise ValueError("the segments do not make a whole message")
    return message
