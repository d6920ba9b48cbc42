"""Reading what a provider sends, within limits.

Bodies are decompressed here, not by httpx, in steps of at most DECODE_STEP bytes, and counted
as they are decompressed: a small gzip answer that unpacks to hundreds of MB stops at the limit
instead of filling memory. Only gzip and deflate are asked for (Accept-Encoding) and accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

ACCEPT_ENCODING = "gzip, deflate"
DECODE_STEP = 1 << 20  # the most one decompression step may produce


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"over the {limit}-byte limit")


class BadEncoding(Exception):
    """A Content-Encoding that was not asked for, or a compressed stream that does not decode."""


class _Decoder:
    def __init__(self, encoding: str) -> None:
        names = [name.strip().lower() for name in encoding.split(",") if name.strip()]
        names = [name for name in names if name != "identity"]
        if len(names) > 1 or (names and names[0] not in ("gzip", "x-gzip", "deflate")):
            raise BadEncoding(f"unsupported Content-Encoding '{encoding[:40]}'")
        self.kind = names[0] if names else None
        self._zlib: "zlib._Decompress | None" = None
        self._pending = b""  # deflate: the first bytes, until the zlib header can be told apart

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces of at most DECODE_STEP bytes, one at a time: the caller counts before the next."""
        if self.kind is None:
            yield data
            return
        if self._zlib is None:
            if self.kind in ("gzip", "x-gzip"):
                self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                self._pending += data
                if len(self._pending) < 2:
                    return
                data, self._pending = self._pending, b""
                # RFC 9110 "deflate" is zlib-wrapped; some servers send a raw deflate stream.
                wrapped = (data[0] & 0x0F) == 8 and (data[0] * 256 + data[1]) % 31 == 0
                self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        while data and not self._zlib.eof:
            try:
                piece = self._zlib.decompress(data, DECODE_STEP)
            except zlib.error as exc:
                raise BadEncoding(f"the {self.kind} body does not decode: {exc}") from None
            data = self._zlib.unconsumed_tail
            if piece:
                yield piece

    @property
    def complete(self) -> bool:
        return self.kind is None or (self._zlib is not None and self._zlib.eof)


async def read_limited(raw: AsyncIterator[bytes], encoding: str, limit: int, *, keep_partial: bool = False) -> tuple[bytes, bool]:
    """Decode and collect a raw byte stream up to `limit` decoded bytes.

    Returns (body, complete). Over the limit: BodyTooLarge, or with keep_partial the first `limit`
    bytes (error bodies are read that way: their first 64 KB say enough).
    """
    decoder = _Decoder(encoding)
    chunks: list[bytes] = []
    size = 0
    async for data in raw:
        for piece in decoder.feed(data):
            size += len(piece)
            if size > limit:
                if keep_partial:
                    chunks.append(piece[: len(piece) - (size - limit)])
                    return b"".join(chunks), False
                raise BodyTooLarge(limit)
            chunks.append(piece)
    return b"".join(chunks), decoder.complete
