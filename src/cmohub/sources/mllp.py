"""MLLP listener: HL7 v2 messages over TCP, acknowledged only once durably stored.

Framing (HL7 MLLP release 2): ``<VT>`` (0x0B) message ``<FS><CR>`` (0x1C 0x0D). One message
per frame. For each frame the listener

1. checks the message (:func:`cmohub.formats.hl7v2.parse_message` and ``classify``: NUL
   bytes, encoding characters, MSH, a message type the hub takes, required segments);
2. a bad message is answered ``AR`` (application reject) with an ERR segment naming the HL7
   error condition, our code and the segment/field — no value from the message — and is not
   stored: the sender must correct it;
3. a good message is handed to ``store`` (:meth:`cmohub.sources.hl7.MllpSpool.store`:
   encrypted payload, fsync, spool entry, fsync) and only when that returns is it answered
   ``AA``. When storing fails the answer is ``AR`` with ERR 207, so the sender keeps the
   message and resends it.

The same message sent twice is stored once (content-addressed) and acknowledged twice; the
sync task de-duplicates by sending application + control ID. The listener binds to loopback
unless told otherwise; frames larger than ``max_frame`` bytes are refused and the connection
closed. Nothing from a message is logged: counts, codes and control-ID-free outcomes only.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cmohub.errors import HubError, ParseError
from cmohub.formats.hl7v2 import (
    AckCode,
    build_ack,
    classify,
    decode_payload,
    parse_message,
    peek_header,
    split_messages,
)
from cmohub.formats.records import FormatProblem
from cmohub.log import get_logger

log = get_logger("cmohub.sources.mllp")

START = b"\x0b"
END = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 4 * 1024 * 1024


def frame(message: bytes) -> bytes:
    """Wrap one message in MLLP framing."""
    return START + message + END


@dataclass
class ListenerStats:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    store_failures: int = 0

    def reject(self, code: str) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1


def check_message(data: bytes) -> tuple[dict[str, str], FormatProblem | None]:
    """The message's header fields (for the ACK) and what is wrong with it, if anything."""
    try:
        text = decode_payload(data)
    except ParseError as error:
        return {}, FormatProblem(error.code, error.message, error.where)
    header = peek_header(text)
    try:
        split = split_messages(text)
        if len(split.messages) != 1:
            return header, FormatProblem(
                "PARSE_HL7_ENVELOPE", "send one message per MLLP frame", "MSH"
            )
        classify(parse_message(split.messages[0]))
    except ParseError as error:
        return header, FormatProblem(error.code, error.message, error.where)
    return header, None


class MllpListener:
    """A threaded MLLP server; ``store(bytes) -> sha256`` must make the message durable."""

    def __init__(
        self,
        store: Callable[[bytes], str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        application: str = "CMOHUB",
        facility: str = "A9999",
        max_frame: int = DEFAULT_MAX_FRAME,
        idle_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.clock = clock
        self.application = application
        self.facility = facility
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.stats = ListenerStats()
        self._lock = threading.Lock()
        self._counter = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("listener not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def _ack_id(self) -> str:
        with self._lock:
            self._counter += 1
            number = self._counter
        return f"ACK{self.clock().astimezone(UTC):%Y%m%d%H%M%S}{number:06d}"

    def _timestamp(self) -> str:
        return self.clock().astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")

    def answer(self, data: bytes) -> bytes:
        """Check, store and acknowledge one message (the frame's content)."""
        header, problem = check_message(data)
        if problem is not None:
            with self._lock:
                self.stats.reject(problem.code)
            log.info("MLLP message rejected: %s", problem.code)
            return self._ack(header, AckCode.REJECT, problem)
        try:
            self.store(data)
        except (HubError, OSError) as error:
            code = error.code if isinstance(error, HubError) else "STORE_UNAVAILABLE"
            with self._lock:
                self.stats.store_failures += 1
            log.warning("MLLP message not stored (%s): answered AR, the sender resends", code)
            return self._ack(
                header,
                AckCode.REJECT,
                FormatProblem("STORE_UNAVAILABLE", "the message could not be stored; resend it"),
            )
        with self._lock:
            self.stats.accepted += 1
        return self._ack(header, AckCode.ACCEPT, None)

    def _ack(self, header: dict[str, str], code: AckCode, problem: FormatProblem | None) -> bytes:
        return build_ack(
            header,
            code,
            control_id=self._ack_id(),
            timestamp=self._timestamp(),
            problem=problem,
            application=self.application,
            facility=self.facility,
        )

    def start(self) -> MllpListener:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                connection: socket.socket = self.request
                connection.settimeout(listener.idle_timeout)
                buffer = b""
                while True:
                    try:
                        chunk = connection.recv(65536)
                    except (TimeoutError, OSError):
                        return
                    if not chunk:
                        return
                    buffer += chunk
                    while True:
                        start = buffer.find(START)
                        if start < 0:
                            buffer = b""
                            break
                        end = buffer.find(END, start + 1)
                        if end < 0:
                            buffer = buffer[start:]
                            break
                        message = buffer[start + 1 : end]
                        buffer = buffer[end + len(END) :]
                        connection.sendall(frame(listener.answer(message)))
                    if len(buffer) > listener.max_frame:
                        problem = FormatProblem(
                            "MLLP_FRAME_TOO_LARGE",
                            f"a frame exceeds {listener.max_frame} bytes",
                        )
                        with listener._lock:
                            listener.stats.reject(problem.code)
                        connection.sendall(
                            frame(
                                listener._ack(
                                    peek_header(buffer[1:4096].decode("utf-8", "replace")),
                                    AckCode.REJECT,
                                    problem,
                                )
                            )
                        )
                        return

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def serve_forever(self) -> None:
        """Run in the foreground until interrupted (the CLI)."""
        if self._server is None:
            self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    @contextmanager
    def running(self) -> Iterator[MllpListener]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def send(host: str, port: int, messages: list[bytes], *, timeout: float = 10.0) -> list[bytes]:
    """Send messages over MLLP (one connection) and return each acknowledgement (tests, CLI)."""
    answers: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as connection:
        buffer = b""
        for message in messages:
            connection.sendall(frame(message))
            while END not in buffer:
                chunk = connection.recv(65536)
                if not chunk:
                    raise ConnectionError("the listener closed the connection")
                buffer += chunk
            end = buffer.index(END)
            answers.append(buffer[buffer.index(START) + 1 : end])
            buffer = buffer[end + len(END) :]
    return answers
