"""Raw HTTP/1.1 over one client socket, for tests that control what one connection carries, in
which order and split how (an HTTP library would open new connections as it sees fit)."""

from __future__ import annotations

import socket

from helpers.harness import Server


class Connection:
    """One client connection: send bytes, read whole answers in order."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line, "the server closed the connection"
        version, code = status_line.split(b" ", 2)[:2]
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), status_line
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_request or int(code) in (204, 304):
            return int(code), headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self.file.readline().split(b";")[0], 16):
                body += self.file.read(size)
                assert self.file.readline() == b"\r\n"
            assert self.file.readline() == b"\r\n"
            return int(code), headers, body
        if "content-length" in headers:
            return int(code), headers, self.file.read(int(headers["content-length"]))
        return int(code), headers, self.file.read()  # to the end of the connection

    def closed_by_server(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def request(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", version: str = "1.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: uws.test"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
