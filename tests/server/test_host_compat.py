"""The real host (reflow) end to end: a client that behaves exactly like it.

UUID string ids; ``load`` of a bare decorated script (no manifest) from an allowed folder;
``process`` with a state context; outputs read from ``output`` notifications as
``{actor_id, port, data, timestamp}`` (an unsigned integer timestamp) and from
``result.outputs``. Persistent state on the embedded store and on a real Redis, across
calls, a server restart and two servers sharing one Redis (shared/spec/state.md).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient
from redis_support import RedisProcess
from server_support import RuntimeFactory, ServerFactory

from service.settings import Settings, StateSettings

MULTIPLIER = '''
from typing import Any

def actor(metadata: dict[str, Any]):
    def wrap(fn):
        fn.metadata = metadata
        return fn
    return wrap

@actor({
    "component": "test_multiplier",
    "description": "Multiplies input by 2",
    "inports": ["input"],
    "outports": ["output"]
})
async def process(context):
    value = context.get_input("input", 0)
    await context.send_output("output", value * 2)
    return {"status": "completed"}
'''

COUNTER = '''
@actor(name="counter", inports=["tick"], outports=["count"], description="Counts its calls",
       state_backend="redis")
async def process(context):
    count = await context.get_state().increment("count")
    await context.send_output("count", count)
    return {"count": count}
'''

COUNTER_JS = '''
const metadata = {
  component: "counter_js",  // read statically, never run on the host
  inports: ["tick"],
  outports: ["count"],
};

async function process(context) {
  const count = await context.getState().increment("count");
  await context.sendOutput("count", count);
  return { count };
}
'''


class Host:
    """What the host does on its WebSocket: string UUID ids, notifications parsed its way."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws

    async def request(self, method: str, params: dict[str, Any]
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(the ``output`` notifications as the host parses them, the response)."""
        request_id = str(uuid.uuid4())
        await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request_id,
                                           "method": method, "params": params}))
        outputs = []
        while True:
            msg = await self.ws.receive(timeout=30)
            assert msg.type == WSMsgType.TEXT, msg
            message = json.loads(msg.data)
            if message.get("method") == "output":
                outputs.append(_host_output(message["params"], request_id))
            elif "method" not in message:
                assert message["id"] == request_id
                return outputs, message

    async def count(self, actor_id: str, namespace: str = "default") -> int:
        outputs, response = await self.request("process", {
            "actor_id": actor_id, "payload": {"tick": True}, "config": {},
            "state": {"namespace": namespace, "actor_id": actor_id,
                      "redis_url": "redis://127.0.0.1:6379"},
            "timestamp": 1234567890})
        assert "result" in response, response
        result = response["result"]
        assert outputs == [{"actor_id": actor_id, "port": "count",
                            "data": result["outputs"]["count"]}]
        count: int = result["return"]["count"]
        assert result["outputs"] == {"count": count}
        return count


def _host_output(params: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The host reads {actor_id, port, data, timestamp}: timestamp an unsigned integer."""
    assert params["request_id"] == request_id
    timestamp = params["timestamp"]
    assert isinstance(timestamp, int) and not isinstance(timestamp, bool) and timestamp >= 0
    return {"actor_id": params["actor_id"], "port": params["port"], "data": params["data"]}


@pytest.fixture
def actors_dir(tmp_path: Path) -> Path:
    """The host's folder of bare scripts (allowed_roots holds tmp_path in these settings)."""
    folder = tmp_path / "actors"
    folder.mkdir()
    (folder / "test_multiplier.py").write_text(MULTIPLIER)
    (folder / "counter.py").write_text(COUNTER)
    (folder / "counter_js.js").write_text(COUNTER_JS)
    (folder / "no_metadata.py").write_text("async def process(context):\n    return 1\n")
    folder.chmod(0o755)
    tmp_path.chmod(0o755)
    return folder


async def _host(server: TestClient) -> Host:
    return Host(await server.ws_connect("/"))


async def _server(make_server: ServerFactory, redis_url: str = "") -> TestClient:
    return await make_server(manifest_paths=(), state=StateSettings(redis_url=redis_url))


async def _load(host: Host, path: Path) -> dict[str, Any]:
    _, response = await host.request("load", {"file_path": str(path)})
    return response


async def test_the_hosts_integration_flow(make_server: ServerFactory, actors_dir: Path) -> None:
    host = await _host(await _server(make_server))
    response = await _load(host, actors_dir / "test_multiplier.py")
    result = response["result"]
    assert result["success"] is True and result["replaced"] is False
    assert result["actor"]["id"] == "test_multiplier"
    assert result["actor"]["description"] == "Multiplies input by 2"
    assert result["actor"]["inports"] == {"input": {"schema": {}, "description": "",
                                                    "required": False}}
    assert result["actor"]["outports"] == {"output": {"schema": {}, "description": ""}}
    outputs, response = await host.request("process", {
        "actor_id": "test_multiplier", "payload": {"input": 21}, "config": {},
        "state": {"namespace": "default", "actor_id": "test_multiplier",
                  "redis_url": "redis://localhost:6379"},
        "timestamp": 1234567890})
    assert outputs == [{"actor_id": "test_multiplier", "port": "output", "data": 42}]
    assert response["result"]["outputs"] == {"output": 42}
    assert response["result"]["return"] == {"status": "completed"}
    assert (await _load(host, actors_dir / "test_multiplier.py"))["result"]["replaced"] is True


@pytest.mark.parametrize("script", ["counter.py", "counter_js.js"])
async def test_a_counter_counts_across_calls_on_the_embedded_store(
        make_server: ServerFactory, actors_dir: Path, script: str) -> None:
    host = await _host(await _server(make_server))
    actor_id = (await _load(host, actors_dir / script))["result"]["actor"]["id"]
    assert [await host.count(actor_id) for _ in range(3)] == [1, 2, 3]
    assert await host.count(actor_id, namespace="other") == 1  # namespaces are apart
    _, described = await host.request("describe", {"actor_id": actor_id})
    # counter.py declares state_backend="redis"; counter_js.js declares nothing
    assert described["result"].get("state") == ("persistent" if script == "counter.py" else None)


async def test_a_counter_counts_in_redis_across_a_restart(
        make_runtime: RuntimeFactory, make_server: ServerFactory, settings: Settings,
        actors_dir: Path, redis_process: RedisProcess) -> None:
    state = StateSettings(redis_url=redis_process.url)
    first = await make_runtime(settings.replace(manifest_paths=(), state=state))
    host = await _host(await make_server(first))
    await _load(host, actors_dir / "counter.py")
    assert [await host.count("counter") for _ in range(3)] == [1, 2, 3]
    assert redis_process.cli("GET", "default:counter:count") == "3"
    await host.ws.close()
    await first.aclose()  # the server goes away; Redis keeps the count

    host = await _host(await _server(make_server, redis_process.url))
    await _load(host, actors_dir / "counter.py")
    assert await host.count("counter") == 4
    assert redis_process.cli("GET", "default:counter:count") == "4"
    assert 0 < int(redis_process.cli("TTL", "default:counter:count")) <= 3600


async def test_two_servers_share_one_redis(make_server: ServerFactory, actors_dir: Path,
                                           redis_process: RedisProcess) -> None:
    servers = [await _server(make_server, redis_process.url) for _ in range(2)]
    hosts = [await _host(server) for server in servers]
    for host in hosts:
        await _load(host, actors_dir / "counter.py")
    assert [await hosts[i % 2].count("counter") for i in range(4)] == [1, 2, 3, 4]
    # concurrent calls, each on its own connection, spread over both servers
    concurrent = [await _host(servers[i % 2]) for i in range(6)]
    counts = await asyncio.gather(*(host.count("counter") for host in concurrent))
    assert sorted(counts) == [5, 6, 7, 8, 9, 10]  # increment is atomic across servers
    assert redis_process.cli("GET", "default:counter:count") == "10"


async def test_the_clients_redis_url_is_never_dialled(
        make_server: ServerFactory, actors_dir: Path, redis_factory: Any) -> None:
    ours, theirs = redis_factory(), redis_factory()
    host = await _host(await _server(make_server, ours.url))
    await _load(host, actors_dir / "counter.py")
    _, response = await host.request("process", {
        "actor_id": "counter", "payload": {},
        "state": {"namespace": "default", "actor_id": "counter", "redis_url": theirs.url}})
    assert response["result"]["state"]["redis_url"] == theirs.url  # given back, not used
    assert ours.cli("GET", "default:counter:count") == "1"
    assert theirs.cli("DBSIZE") == "0"
    assert "connected_clients:1" in theirs.cli("INFO", "clients")  # only redis-cli itself


async def test_a_script_with_neither_manifest_nor_metadata_is_minus_32007(
        make_server: ServerFactory, actors_dir: Path, tmp_path: Path) -> None:
    host = await _host(await _server(make_server))
    error = (await _load(host, actors_dir / "no_metadata.py"))["error"]
    assert error["code"] == -32007
    message = error["data"]["errors"][0]["message"]
    assert "no_metadata.yaml" in message and "@actor" in message
    assert error["data"]["errors"][0]["file"].endswith("no_metadata.py")
    missing = (await _load(host, actors_dir / "absent.py"))["error"]
    assert missing["code"] == -32011
    confined = await _host(await make_server(manifest_paths=(), allowed_roots=(tmp_path / "x",)))
    assert (await _load(confined, actors_dir / "counter.py"))["error"]["code"] == -32011


@pytest.mark.parametrize(("state", "path"), [
    ({"namespace": "default", "actor_id": "someone_else"}, "/state/actor_id"),
    ({"namespace": "a:b", "actor_id": "counter"}, "/state/namespace"),
    ({"namespace": "a*", "actor_id": "counter"}, "/state/namespace"),
    ({"namespace": "a\nb", "actor_id": "counter"}, "/state/namespace"),
    ({"namespace": "", "actor_id": "counter"}, "/state/namespace"),
])
async def test_an_invalid_state_context_is_minus_32602(
        make_server: ServerFactory, actors_dir: Path, state: dict[str, str], path: str) -> None:
    host = await _host(await _server(make_server))
    await _load(host, actors_dir / "counter.py")
    _, response = await host.request("process", {"actor_id": "counter", "payload": {},
                                                 "state": state})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"][0]["path"] == path


async def test_other_objects_stay_inline_state(make_server: ServerFactory,
                                               actors_dir: Path) -> None:
    host = await _host(await _server(make_server))
    await _load(host, actors_dir / "counter.py")
    for state in ({"namespace": "default", "actor_id": "counter", "extra": 1},
                  {"namespace": 1, "actor_id": "counter"}, {"count": 41}):
        _, response = await host.request("process", {"actor_id": "counter", "payload": {},
                                                     "state": state})
        assert response["result"]["state"] == {**state, "count": state.get("count", 0) + 1}


async def test_a_store_that_is_down_is_minus_32009(make_server: ServerFactory,
                                                   actors_dir: Path,
                                                   redis_process: RedisProcess) -> None:
    host = await _host(await _server(make_server, redis_process.url))
    await _load(host, actors_dir / "counter.py")
    assert await host.count("counter") == 1
    redis_process.stop()
    _, response = await host.request("process", {
        "actor_id": "counter", "payload": {},
        "state": {"namespace": "default", "actor_id": "counter"}})
    error = response["error"]
    assert error["code"] == -32009
    assert error["data"]["backend"] == "state:redis" and "redis" in error["data"]["reason"]


async def test_the_state_budget_is_minus_32006(make_server: ServerFactory,
                                               actors_dir: Path) -> None:
    (actors_dir / "greedy.py").write_text(
        '@actor({"component": "greedy"})\n'
        "async def process(context):\n"
        "    for i in range(100):\n"
        "        await context.get_state().set(f'k{i}', i)\n")
    server = await make_server(manifest_paths=(),
                               state=StateSettings(ops_per_call=10, bytes_per_call=100_000))
    host = await _host(server)
    await _load(host, actors_dir / "greedy.py")
    _, response = await host.request("process", {
        "actor_id": "greedy", "payload": {},
        "state": {"namespace": "default", "actor_id": "greedy"}})
    assert response["error"]["code"] == -32006
    assert response["error"]["data"] == {"resource": "state", "limit": {"ops": 10}}


async def test_manifest_paths_and_actors_load_script_only_actors(
        make_runtime: RuntimeFactory, settings: Settings, actors_dir: Path) -> None:
    runtime = await make_runtime(settings.replace(manifest_paths=(actors_dir,)))
    # no_metadata.py is a helper module in a folder walk, not an actor
    assert [a.id for a in runtime.actors()] == ["counter", "counter_js", "test_multiplier"]
    result = await runtime.process("test_multiplier", {"input": 2})
    assert result["outputs"] == {"output": 4}
