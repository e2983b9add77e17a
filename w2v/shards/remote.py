"""Remote shards that survive a dropped connection: a read that fails mid-shard resumes where it stopped.

Object stores drop connections every day on a large cluster; without this, the rest of the shard
would be lost for the epoch. `ResumingStream` reads a shard from a URL and, when the read fails
(an exception, a `pipe:` command that exits non-zero) or ends before the size the index recorded,
opens it again from the byte it had reached: with an HTTP range request when the server accepts
ranges, otherwise by re-opening the source and skipping the bytes already read. Attempts are
bounded, with exponential backoff; each retry is counted. Local files never come here.
"""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections import Counter
from typing import BinaryIO

HTTP_TIMEOUT_SECONDS = 60.0


class ResumingStream:
    """A read-only stream of `url` (https://, http://, pipe:…, or any URL WebDataset's gopen opens)."""

    def __init__(self, url: str, expected_bytes: int | None, attempts: int = 5, backoff: float = 1.0,
                 stats: Counter | None = None):
        self.url, self.expected, self.attempts, self.backoff = url, expected_bytes, max(1, attempts), backoff
        self.stats = stats if stats is not None else Counter()
        self.position = 0
        self.failures = 0
        self.handle: BinaryIO | None = None
        try:
            self.handle = self._open(0)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self._reopen(exc)

    def read(self, size: int = -1) -> bytes:
        while True:
            error: BaseException | None = None
            try:
                data = self.handle.read(size)
            except (OSError, EOFError, ValueError, http.client.HTTPException) as exc:  # cut, or a pipe that failed
                data, error = b"", exc
            if data:
                self.position += len(data)
                return data
            if error is None:
                error = self._finish()
                if error is None:
                    return b""  # the real end
            self._reopen(error)

    def _finish(self) -> BaseException | None:
        """At an end of stream: None if it is the end of the shard, else why it is not."""
        try:
            self.handle.close()  # a pipe reports its command's exit status here
        except (OSError, ValueError) as exc:
            return exc
        if self.expected is not None and self.position < self.expected:
            return OSError(f"ended after {self.position} of {self.expected} bytes")
        return None

    def _reopen(self, error: BaseException) -> None:
        """Open the source again at `position`, with backoff, until it opens or the attempts run out."""
        while True:
            self.failures += 1
            if self.failures >= self.attempts:
                raise OSError(f"{self.url}: {error}; gave up after {self.attempts} attempts at byte {self.position}")
            self.stats["remote_retries"] += 1
            time.sleep(self.backoff * 2 ** (self.failures - 1))
            self.close()
            try:
                self.handle = self._open(self.position)
                return
            except (OSError, ValueError, http.client.HTTPException) as exc:
                error = exc

    def _open(self, position: int) -> BinaryIO:
        if self.url.startswith(("http://", "https://")):
            request = urllib.request.Request(self.url, headers={"Range": f"bytes={position}-"} if position else {})
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS)  # noqa: S310
            if position and response.status != 206:  # the server ignored the range: skip what we have
                _skip(response, position)
            return response
        from webdataset.gopen import gopen

        handle = gopen(self.url, "rb")
        if position:
            _skip(handle, position)
        return handle

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.handle.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> ResumingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _skip(handle: BinaryIO, count: int) -> None:
    while count > 0:
        data = handle.read(min(count, 1 << 20))
        if not data:
            raise OSError(f"the source ended after {count} bytes fewer than were already read")
        count -= len(data)
