"""What a caller without a token (or with a weak one) can make the control plane do.

* The token is checked before the body is read: a 50 MB body without a token is answered 401
  while the client is still sending it (a raw socket shows the answer arrives after 1 MB);
  with a token, a body over ``control_max_body_bytes`` is 413 from its ``Content-Length`` at
  once, or as soon as a chunked body passes the limit; uploads have their own larger limit.
* Anonymous reads see endpoint ``options``/``auxiliary`` values redacted; any valid token
  (a replica's) sees them.
* Anonymous long-polls are bounded in number; a name that is not a service keeps nothing.
* A 405 names every method the path answers.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from tests.servers import run_uvicorn_in_thread

from modelyard.control.api import create_control_app
from modelyard.control.endpoints import REDACTED
from modelyard.control.tokens import REPLICA_TOKEN_NAME, TokenStore
from modelyard.control.watch import RevisionWatch
from modelyard.errors import NotFound
from modelyard.settings import Settings
from modelyard.store import Database, upgrade

pytestmark = pytest.mark.slow

MB = 1024 * 1024


@contextmanager
def control(settings: Settings, **update: Any) -> Iterator[tuple[FastAPI, str, dict[str, str]]]:
    app = create_control_app(settings.model_copy(update=update))
    admin = {"authorization": f"Bearer {settings.token_file().read_text().strip()}"}
    try:
        with run_uvicorn_in_thread(app) as url:
            yield app, url, admin
    finally:
        app.state.db.dispose()


def _raw_post(url: str, path: str, head: dict[str, str], parts: Iterator[bytes]) -> tuple[int, int]:
    """POST over a bare socket, sending ``parts`` until the server answers.

    Returns (status, bytes of body sent before the answer came); the server may close the
    connection under the client's feet once it has answered, which ends the sending too.
    """
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=15) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {where.netloc}", *(f"{k}: {v}" for k, v in head.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        sock.setblocking(False)
        answer = b""
        for part in parts:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except ConnectionError:
                break
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.sendall(part)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(part)
        sock.setblocking(True)
        sock.settimeout(15)
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, sent


def _slices(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


def test_a_body_without_a_token_is_refused_before_it_is_read(settings: Settings) -> None:
    with control(settings) as (_app, url, _admin):
        declared = 50 * MB
        head = {"Content-Type": "application/json", "Content-Length": str(declared)}

        def first_mb_then_wait() -> Iterator[bytes]:
            yield b"{" + b" " * (MB - 1)
            # then nothing more: an answer can only come if the server did not wait for the rest
            for _ in range(200):
                yield b""

        status, sent = _raw_post(url, "/api/services", head, first_mb_then_wait())
        assert status == 401
        assert sent == MB  # the other 49 MB were never needed
        # a bad token: 403, just as early
        head["Authorization"] = "Bearer not-a-token"
        status, sent = _raw_post(url, "/api/services", head, first_mb_then_wait())
        assert status == 403 and sent == MB
        # nothing was created
        assert [s["name"] for s in httpx.get(f"{url}/api/services").json()] == ["default"]


def test_an_over_limit_body_with_a_token_is_413(settings: Settings) -> None:
    limit = 256 * 1024
    with control(settings, control_max_body_bytes=limit) as (_app, url, admin):
        # declared too large: answered from the headers alone
        head = {"Content-Type": "application/json", "Content-Length": str(50 * MB), **admin}
        status, sent = _raw_post(url, "/api/services", head, iter([b""] * 200))
        assert status == 413 and sent == 0
        # chunked, no length: refused once past the limit, well before the 8 MB are sent
        chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked", **admin}

        def chunks() -> Iterator[bytes]:
            for part in _slices(8 * MB, 64 * 1024):
                time.sleep(0.002)  # a network's pace, so the answer can overtake the sending
                yield f"{len(part):x}\r\n".encode() + part + b"\r\n"

        status, sent = _raw_post(url, "/api/services", chunked, chunks())
        assert status == 413 and sent < 8 * MB
        with httpx.Client(base_url=url, timeout=30) as client:
            refused = client.post("/api/services", content=b'{"name":"' + b"a" * limit + b'"}', headers=admin)
            assert refused.status_code == 413
            assert refused.json()["kind"] == "payload_too_large"
            assert "MODELYARD_CONTROL_MAX_BODY_BYTES" in refused.json()["error"]
            # under the limit all is as before; malformed Content-Length is a 400
            assert client.post("/api/services", json={"name": "ok"}, headers=admin).status_code == 201
            stats = {"time": 1.0, "endpoints": {}}
            big = client.put(
                "/api/services/ok/replicas/r/stats",
                content=b'{"time": 1.0, "endpoints": {}}' + b" " * limit,
                headers={**admin, "content-type": "application/json"},
            )
            assert big.status_code == 413
            assert (
                client.put("/api/services/ok/replicas/r/stats", json=stats, headers=admin).status_code == 204
            )
        status, _ = _raw_post(url, "/api/services", {**admin, "Content-Length": "12x"}, iter([b""]))
        assert status == 400


def test_artifact_uploads_have_their_own_limit(settings: Settings) -> None:
    limit = 3 * MB  # larger than the JSON limit below: uploads are not held to it
    with control(settings, max_artifact_bytes=limit, control_max_body_bytes=MB) as (app, url, admin):
        with httpx.Client(base_url=url, timeout=30) as client:
            ok = client.post("/api/artifacts", content=b"x" * (2 * MB), headers=admin)
            assert ok.status_code == 201, ok.text
            declared = client.post("/api/artifacts", content=b"y" * (limit + 1), headers=admin)
            assert declared.status_code == 413 and "MODELYARD_MAX_ARTIFACT_BYTES" in declared.json()["error"]

            def stream() -> Iterator[bytes]:
                yield from _slices(limit + MB, MB)

            streamed = client.post("/api/artifacts", content=stream(), headers=admin)
            assert streamed.status_code == 413
            # no token: 401 before anything is written
            assert client.post("/api/artifacts", content=b"z" * MB).status_code == 401
        store = Path(app.state.settings.resolved_home()) / "artifacts"
        blobs = [p for p in (store / "blobs").rglob("*") if p.is_file()]
        assert len(blobs) == 1  # only the accepted upload
        assert not [p for p in (store / "tmp").rglob("*") if p.is_file()]  # refused ones cleaned up


def test_anonymous_reads_see_option_values_redacted(settings: Settings) -> None:
    with control(settings) as (_app, url, admin), httpx.Client(base_url=url, timeout=30) as client:
        secret = {"api_key": "sk-secret", "batch": 8}
        spec = {"endpoint": "e", "version": "1", "engine": "custom", "options": secret, "auxiliary": secret}
        assert client.post("/api/services/default/endpoints", json=spec, headers=admin).status_code == 201
        rule = {"endpoint": "auto", "engine": "custom", "name": "m.*", "options": secret}
        assert client.post("/api/services/default/auto-deploy", json=rule, headers=admin).status_code == 201
        replica = client.post("/api/tokens", json={"name": "r", "role": "replica"}, headers=admin).json()
        reader = client.post("/api/tokens", json={"name": "ro", "role": "reader"}, headers=admin).json()
        hidden = {"api_key": REDACTED, "batch": REDACTED}

        def views(headers: dict[str, str]) -> list[dict[str, Any]]:
            config = client.get("/api/services/default/config", headers=headers).json()["endpoints"][0]
            listed = client.get("/api/services/default/endpoints", headers=headers).json()[0]
            one = client.get("/api/services/default/endpoints/e/1", headers=headers).json()
            rules = client.get("/api/services/default/auto-deploy", headers=headers).json()[0]
            got = client.get("/api/services/default/auto-deploy/auto", headers=headers).json()
            return [config, listed, one, {"options": rules["options"]}, {"options": got["options"]}]

        for view in views({}) + views({"authorization": "Bearer not-a-token"}):
            assert view["options"] == hidden, view
            assert view.get("auxiliary", hidden) == hidden
            assert "sk-secret" not in str(view)
        for token in (admin["authorization"], f"Bearer {replica['token']}", f"Bearer {reader['token']}"):
            for view in views({"authorization": token}):
                assert view["options"] == secret
        # long-polls too: an anonymous wait that wakes on a change still gets the redacted view
        config = client.get("/api/services/default/config?after=0&wait=1").json()
        assert config["endpoints"][0]["auxiliary"] == hidden


def test_anonymous_long_polls_are_bounded(settings: Settings) -> None:
    with control(settings, anonymous_long_polls=2) as (_app, url, admin):
        replica = httpx.post(
            f"{url}/api/tokens", json={"name": "r", "role": "replica"}, headers=admin
        ).json()["token"]
        revision = httpx.get(f"{url}/api/services/default").json()["revision"]
        poll = f"/api/services/default/config?after={revision}&wait=3"

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                waiting = [asyncio.create_task(client.get(poll)) for _ in range(2)]
                await asyncio.sleep(1.0)  # both are waiting now
                third = await client.get(poll)
                with_token = await client.get(
                    poll.replace("wait=3", "wait=0.5"), headers={"authorization": f"Bearer {replica}"}
                )
                no_wait = await client.get(poll.replace("wait=3", "wait=0"))
                return [third, with_token, no_wait, *await asyncio.gather(*waiting)]

        third, with_token, no_wait, *first_two = asyncio.run(scenario())
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        assert "without a token" in third.json()["error"]
        assert with_token.status_code == 304  # replicas present a token: not counted
        assert no_wait.status_code == 304  # nothing held: answered at once
        assert [r.status_code for r in first_two] == [304, 304]
        # the slots are free again
        assert httpx.get(f"{url}{poll.replace('wait=3', 'wait=0.2')}").status_code == 304


def test_long_poll_arguments_are_checked(settings: Settings) -> None:
    with control(settings) as (_app, url, _admin):
        for query in ("after=-1", f"after={2**70}", "after=x", "after=1&wait=nan", "after=1&wait=-1"):
            answer = httpx.get(f"{url}/api/services/default/config?{query}")
            assert answer.status_code == 422, (query, answer.text)
            assert answer.json()["kind"] == "validation_error"
        assert httpx.get(f"{url}/api/services/no_such/config?after=1&wait=5").status_code == 404
        bad_name = httpx.get(f"{url}/api/services/%20x/config?after=1&wait=5")
        assert bad_name.status_code == 422


def test_a_watch_keeps_nothing_for_names_that_are_not_services() -> None:
    revisions = {"svc": 3}

    def read(name: str) -> int:
        if name not in revisions:
            raise NotFound(f"service {name!r} not found")
        return revisions[name]

    async def scenario() -> RevisionWatch:
        watch = RevisionWatch(read, interval_s=0.01)
        for i in range(50):
            with pytest.raises(NotFound):
                await watch.wait(f"nope-{i}", 1, 0.5)
        assert await watch.wait("svc", 3, 0.05) is None  # unchanged: timed out
        assert await watch.wait("svc", 2, 1.0) == 3
        return watch

    watch = asyncio.run(scenario())
    assert watch._services == {}  # nothing kept once nobody waits


def test_405_names_every_method_of_the_path(settings: Settings) -> None:
    with control(settings) as (_app, url, _admin):
        answer = httpx.put(f"{url}/api/services/default")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, DELETE"
        answer = httpx.post(f"{url}/api/services/default/endpoints/e/1")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, PATCH, DELETE"


def test_replica_role_and_the_upgrade_of_an_older_reader_replica_token(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'tokens.db'}")
    upgrade(db)
    store = TokenStore(db)
    try:
        # an older release registered the replica secret as a reader token
        assert store.register("secret", "reader", REPLICA_TOKEN_NAME, replace=True) == "reader"
        assert store.register("secret", "replica", REPLICA_TOKEN_NAME, replace=True) == "replica"
        assert store.verify("secret") == "replica"
        store.register_admin("a1")
        assert store.register("a1", "replica", "x") == "admin"  # never lowered
        assert store.create("ci", "replica").role == "replica"
        assert {t.name: t.role for t in store.list()}["ci"] == "replica"
    finally:
        db.dispose()


@pytest.mark.parametrize("raw", ["²", "1²", "-1", "0x10", "", "12 34"])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(raw: str) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails: the guard must answer 400, not 500."""
    from starlette.datastructures import Headers

    from modelyard.control.guard import declared_length
    from modelyard.errors import BadRequest

    with pytest.raises(BadRequest, match="Content-Length"):
        declared_length(Headers({"content-length": raw}))


def test_an_absurdly_long_content_length_reads_as_too_large() -> None:
    from starlette.datastructures import Headers

    from modelyard.control.guard import declared_length

    length = declared_length(Headers({"content-length": "9" * 5000}))
    assert length is not None and length > 10**18
