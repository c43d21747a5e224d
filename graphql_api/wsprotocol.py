"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), plus one thing the fan-out needs: a
way to write an already-framed message straight to the socket.

A live update goes to thousands of sockets with the same bytes: the same text frame, when subscribers use
the same operation id (every dashboard does). Through ASGI each of those writes is a coroutine through
Starlette's and uvicorn's send, then websockets building and serializing the same frame again: about a
third of the API's CPU per delivery (``bench/bench_api.py``). The protocol here offers the scope extension
:data:`FRAMES`, a function that writes a serialized frame to the transport at once, or answers ``False``
when it cannot (the connection is not open yet, closing or closed, or the client reads slowly and the
transport is paused): then the caller sends the ordinary way, which waits or raises as ASGI does. A
connection that negotiated an extension (compression) is offered no such function. The bytes are those
websockets itself writes for ``send_text`` (an unmasked, final text frame, built by :func:`text_frame`);
``tests/integration/test_api_shared.py`` compares them.

Served by another ASGI server, the extension is absent and every send goes through ASGI.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["FRAMES", "FrameWriterProtocol", "text_frame"]

FRAMES = "cryptostream.websocket.frames"


def text_frame(text: bytes) -> bytes:
    """A server's unfragmented text frame carrying ``text`` (UTF-8), as websockets serializes it."""
    return Frame(Opcode.TEXT, text).serialize(mask=False, extensions=[])


class FrameWriterProtocol(WebSocketsSansIOProtocol):
    """``ws=`` for uvicorn: its sans-I/O WebSocket protocol, :data:`FRAMES` in the scope of every connection
    that negotiated no extension (with one, such as compression, every frame goes through ASGI).

    :meth:`write_frame` runs once per delivery, 10,000 times an event with 10,000 subscribers, so it reads
    only this object's own attributes and the transport: whether the transport is paused and whether
    websockets' state has left OPEN are kept here as flags, set where they change (``pause_writing``,
    ``resume_writing``; after each read of the peer's bytes, the only thing that moves websockets' state
    without uvicorn also setting ``close_sent`` or closing the transport). A trial write reading only this
    object's attributes and the transport, as this one does, used 15-17 % less of the API's CPU per delivery
    than asking the ``asyncio.Event`` and websockets' state each time (10,000 subscribers, 3 runs each way,
    2026-12-04); a count of frames kept on the class cost 8 % more (assigning a class attribute invalidates
    the interpreter's attribute caches for the class): the fan-out counts frames per event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = False  # the transport's buffer is over its high-water mark: ASGI's send waits for it
        self.peer_closed = False  # websockets' state left OPEN on the peer's bytes (a close, a bad frame)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None and not self.conn.extensions:
            scope["extensions"][FRAMES] = self.write_frame

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.peer_closed = self.conn.state not in (State.CONNECTING, State.OPEN)

    def pause_writing(self) -> None:
        self.paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        super().resume_writing()

    def write_frame(self, frame: bytes) -> bool:
        """Write ``frame`` (from :func:`text_frame`) now; ``False`` (nothing written) when ASGI's send must
        handle it: not open yet, closing or closed, or paused for a slow reader."""
        if (
            self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or self.paused
            or self.peer_closed
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True
