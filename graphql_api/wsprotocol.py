"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), plus one thing the fan-out needs: a
way to write an already-framed message straight to the socket.

A live update goes to thousands of sockets with the same bytes: the same text frame, when subscribers use
the same operation id (every dashboard does). Through ASGI each of those writes is a coroutine through
Starlette's and uvicorn's send, then websockets building and serializing the same frame again: about a
third of the API's CPU per delivery (``bench/bench_api.py``). The protocol here offers the scope extension
:data:`FRAMES`, a function that writes a serialized frame to the transport at once, or answers ``False``
when it cannot (the connection is closing or closed, the client reads slowly and the transport is paused,
or an extension such as compression was negotiated): then the caller sends the ordinary way, which waits or
raises as ASGI does. The bytes are those websockets itself writes for ``send_text`` (an unmasked, final text
frame, built by :func:`text_frame`); ``tests/integration/test_api_shared.py`` compares them.

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
    """``ws=`` for uvicorn: its sans-I/O WebSocket protocol, :data:`FRAMES` in every connection's scope.

    :meth:`write_frame` runs once per delivery, 10,000 times an event with 10,000 subscribers: it counts
    nothing itself (the fan-out counts frames per event). A count kept on the class here cost 8 % of the API's
    CPU per delivery and slowed every attribute read of these protocols besides (assigning a class attribute
    invalidates the interpreter's attribute caches for the class; py-spy, 2026-12-04)."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][FRAMES] = self.write_frame

    def write_frame(self, frame: bytes) -> bool:
        """Write ``frame`` (from :func:`text_frame`) now; ``False`` (nothing written) when ASGI's send must
        handle it: not open, closing, paused for a slow reader, or a frame extension in use."""
        if (
            self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.conn.extensions
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True
