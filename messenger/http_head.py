"""The messenger's HTTP/1.1 protocol: uvicorn's httptools one, with h11's cap on what it holds of a
request's head (its line and headers) and of a chunked body's trailers."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_MAX_BYTES = 16 * 1024  # h11's cap on what it holds of a message unfinished (uvicorn's default)


class CappedHead(HttpToolsProtocol):
    """uvicorn's httptools protocol, with h11's cap on a request's head (its line and headers) and
    on a chunked body's trailers: past it, 400 and the connection closes.

    Why: httptools keeps a header until its end, however long, and uvicorn caps it only with h11: one
    client sending an endless header line grew the messenger by what it sent (200 MB: +230 MB; as a
    trailer, 150 MB: +200 MB). A head is counted by the reads it spans after the one it began in
    (which may hold the message before it, pipelined): what is held of it is at most the cap and two
    reads (256 KiB each)."""

    _head: int | None = None  # bytes read of an unfinished head (or trailers); None while none is read

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = -1  # begun in this read: counted from the next

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._head = -1  # the last chunk's (no data): its trailers follow

    def on_body(self, body: bytes) -> None:
        self._head = None
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self._head = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head is None or self.transport.is_closing():
            return
        self._head = 0 if self._head < 0 else self._head + len(data)
        if self._head > HEAD_MAX_BYTES:
            self._head = None
            self.logger.warning("Request head too large.")
            self.send_400_response("Request head too large.")
