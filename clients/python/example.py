#!/usr/bin/env python3
"""Calling wsmq from Python with the `websockets` package (pip install websockets).

A small client: one websocket, every answer matched to its call by id (answers come as jobs
finish, in any order), `$/progress` reports handed to a callback, per-call deadline and priority
as `wsmq` options, and cancelling the asyncio task of a call sends `$/cancel`.

    python3 clients/python/example.py --url ws://127.0.0.1:8080/ws

The end-to-end suite runs it against a real system (tests/tests/e2e/clients.rs).
"""

import argparse
import asyncio
import itertools
import json
from urllib.parse import urlencode

import websockets


class RpcError(Exception):
    """A JSON-RPC error: the gateway's (-32000…-32004, -326xx) or the worker's own."""

    def __init__(self, code, message, data=None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.data = code, message, data


class Wsmq:
    """Calls over one websocket. Start `run()` as a task; it reads every frame."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending = {}  # id -> (future, on_progress)
        self.cancelled = {}  # id of a call given up -> the gateway's answer to it (-32002)

    async def run(self):
        try:
            async for frame in self.ws:
                message = json.loads(frame)
                for m in message if isinstance(message, list) else [message]:
                    self._dispatch(m)
        finally:
            for future, _ in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection lost"))

    def _dispatch(self, m):
        if m.get("method") == "$/progress":
            entry = self.pending.get(m["params"]["id"])
            if entry and entry[1]:
                entry[1](m["params"]["value"])
        elif "id" in m and m["id"] in self.pending:
            future, _ = self.pending.pop(m["id"])
            if not future.done():
                future.set_result(m)
        elif "id" in m and m["id"] in self.cancelled:
            answer = self.cancelled[m["id"]]
            if not answer.done():
                answer.set_result(m)
        # `$/session` (the token to resume with after a drop) is ignored here.

    async def call(self, method, params=None, *, timeout_ms=None, priority=None, on_progress=None):
        call_id = next(self.ids)
        request = {"jsonrpc": "2.0", "method": method, "id": call_id}
        if params is not None:
            request["params"] = params
        options = {}
        if timeout_ms is not None:
            options["timeout_ms"] = timeout_ms
        if priority is not None:
            options["priority"] = priority
        if options:
            request["wsmq"] = options
        future = asyncio.get_running_loop().create_future()
        self.pending[call_id] = (future, on_progress)
        await self.ws.send(json.dumps(request))
        try:
            answer = await future
        except asyncio.CancelledError:
            # The caller gave up: tell the gateway, which tells the worker and answers the call
            # -32002 (kept in `cancelled`, for whoever wants to see it confirmed).
            self.pending.pop(call_id, None)
            self.cancelled[call_id] = asyncio.get_running_loop().create_future()
            cancel = {"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": call_id}}
            await self.ws.send(json.dumps(cancel))
            raise
        if "error" in answer:
            e = answer["error"]
            raise RpcError(e["code"], e["message"], e.get("data"))
        return answer["result"]


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--token", help="for a gateway that requires one (sent as ?token=)")
    args = parser.parse_args()
    url = args.url + ("?" + urlencode({"token": args.token}) if args.token else "")

    async with websockets.connect(url) as ws:
        client = Wsmq(ws)
        reader = asyncio.create_task(client.run())

        # Results come as jobs finish: the slow call was sent first but answers last.
        slow = asyncio.create_task(client.call("sleep", {"ms": 1000}))
        fast = asyncio.create_task(client.call("fib", {"n": 30}))
        for done in asyncio.as_completed([slow, fast]):
            print("finished:", json.dumps(await done, sort_keys=True))

        result = await client.call(
            "progress", {"steps": 3, "ms": 50}, timeout_ms=10_000, priority=5,
            on_progress=lambda v: print("progress:", json.dumps(v, sort_keys=True)))
        print("progress result:", json.dumps(result))

        try:
            await client.call("fail", {"why": "example"})
        except RpcError as e:
            print("worker error:", e.code, e.message)

        try:
            await client.call("sleep", {"ms": 5000}, timeout_ms=200)
        except RpcError as e:
            print("timeout:", e.code)

        task = asyncio.create_task(client.call("sleep", {"ms": 60_000}))
        await asyncio.sleep(0.2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Given up here; the gateway confirms it ended the call.
            (answer,) = await asyncio.wait_for(
                asyncio.gather(*client.cancelled.values()), timeout=10)
            print("cancelled:", answer["error"]["code"], answer["error"]["message"])

        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main())
