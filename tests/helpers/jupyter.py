"""Code run in a JupyterLab session's kernel over its websocket, through the passthrough
(test_jupyterlab.py, and JupyterLab on Slurm in test_slurm.py)."""

from __future__ import annotations

import asyncio
import json
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import loopback


def run_code(url: str, code: str, headers: dict[str, str] | None = None, wait_output: bool = True) -> str:
    url, host = loopback(url)

    async def scenario() -> str:
        request = HTTPRequest(url, headers={"Host": host, **(headers or {})}, request_timeout=30)
        conn = await websocket_connect(request)
        msg_id = uuid.uuid4().hex
        await conn.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "buffers": [],
                }
            )
        )
        if not wait_output:
            return ""
        while True:
            message = await asyncio.wait_for(conn.read_message(), 60)
            if message is None:
                raise AssertionError("kernel websocket closed")
            if isinstance(message, bytes):
                continue
            data = json.loads(message)
            if data.get("parent_header", {}).get("msg_id") == msg_id and data["msg_type"] == "stream":
                conn.close()
                return data["content"]["text"]

    return asyncio.run(scenario())
