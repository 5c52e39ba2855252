"""UserCode: clearml-serving's Preprocess contract, isolation, errors."""

from __future__ import annotations

import asyncio
import io
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import ArtifactRef, EndpointConfig
from modelyard.errors import Unprocessable, UserCodeError
from modelyard.preprocess import UserCode, safe_extract, wrap_user_error


def write(path: Path, code: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def make_tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FULL = """
    from typing import Any

    class Preprocess:
        def __init__(self):
            self.model_endpoint = None   # clearml examples do this; it is set after __init__
            self.loaded = None

        def load(self, local_file_name):
            self.loaded = local_file_name
            return {"model": local_file_name}

        def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
            state["seen"] = True
            if collect_custom_statistics_fn:
                collect_custom_statistics_fn({"x": body["x"]})
            return [body["x"] * 2]

        def process(self, data, state, collect_custom_statistics_fn=None):
            return [v + 1 for v in data]

        def postprocess(self, data, state, collect_custom_statistics_fn=None):
            return {"y": data, "seen": state.get("seen")}
"""


def test_full_sync_contract(tmp_path: Path, make_config: Any, collect: Any, collected: list) -> None:
    code = write(tmp_path / "preprocess.py", FULL)
    uc = UserCode.load(code, make_config("custom", auxiliary={"k": 1}, options={"o": 2}))
    assert (uc.has_preprocess, uc.has_process, uc.has_postprocess, uc.has_load) == (
        True,
        True,
        True,
        True,
    )
    assert not uc.is_async("preprocess")
    inst = uc.instance
    assert inst.model_endpoint.endpoint == "ep"
    assert inst.model_endpoint.version == "1"
    assert inst.model_endpoint.engine == "custom"
    assert inst.model_endpoint.serving_url == "ep"
    assert inst.auxiliary_cfg == {"k": 1}
    assert inst.model_endpoint.auxiliary_cfg == {"k": 1}
    # the sync callables are plain functions
    state: dict[str, Any] = {}
    assert uc.preprocess is not None
    assert uc.preprocess({"x": 3}, state, collect) == [6]
    assert collected == [{"x": 3}]

    async def flow() -> Any:
        st: dict[str, Any] = {}
        d = await uc.run_preprocess({"x": 1}, st, collect)
        d = await uc.run_process(d, st, collect)
        return await uc.run_postprocess(d, st, collect)

    assert asyncio.run(flow()) == {"y": [3], "seen": True}
    assert uc.load_model(tmp_path / "m.bin") == {"model": str(tmp_path / "m.bin")}
    assert inst._model == {"model": str(tmp_path / "m.bin")}
    # a second call does not reload
    assert uc.load_model(tmp_path / "other") == {"model": str(tmp_path / "m.bin")}
    name = uc.module_name
    assert name in sys.modules
    uc.unload()
    assert name not in sys.modules


def test_no_hooks_pass_through(tmp_path: Path, make_config: Any) -> None:
    code = write(tmp_path / "p.py", "class Preprocess:\n    pass\n")
    uc = UserCode.load(code, make_config("sklearn"))
    assert not (uc.has_preprocess or uc.has_process or uc.has_postprocess or uc.has_load)
    assert uc.preprocess is None
    assert asyncio.run(uc.run_preprocess({"a": 1}, {})) == {"a": 1}
    assert asyncio.run(uc.run_postprocess([1], {})) == [1]
    with pytest.raises(UserCodeError, match="no process"):
        asyncio.run(uc.run_process([1], {}))
    assert uc.load_model("x") is None
    uc.unload()


def test_async_hooks(tmp_path: Path, make_config: Any, collect: Any, collected: list) -> None:
    code = write(
        tmp_path / "p.py",
        """
        import asyncio

        class Preprocess:
            async def load(self, local_file_name):
                await asyncio.sleep(0)
                return "model:" + str(local_file_name)

            async def preprocess(self, body, state, collect_custom_statistics_fn=None):
                await asyncio.sleep(0)
                collect_custom_statistics_fn({"n": len(body)})
                return body + [0]

            async def process(self, data, state, collect_custom_statistics_fn=None):
                return sum(data)

            def postprocess(self, data, state, collect_custom_statistics_fn=None):
                return {"sum": data}

            async def unload(self):
                await asyncio.sleep(0)
        """,
    )
    uc = UserCode.load(code, make_config("custom_async"))
    assert uc.is_async("preprocess") and uc.is_async("process") and uc.is_async("load")
    assert not uc.is_async("postprocess")
    assert uc.preprocess is not None
    assert asyncio.iscoroutinefunction(uc.preprocess)
    assert uc.load_model("f") == "model:f"  # an async load runs from a worker thread

    async def flow() -> Any:
        st: dict[str, Any] = {}
        d = await uc.run_preprocess([1, 2], st, collect)
        d = await uc.run_process(d, st, collect)
        return await uc.run_postprocess(d, st, collect)

    assert asyncio.run(flow()) == {"sum": 3}
    assert collected == [{"n": 2}]

    async def load_inside_loop() -> Any:
        uc2 = UserCode.load(code, make_config("custom_async"))
        try:
            return uc2.load_model("g")  # called with a running loop: must not deadlock
        finally:
            uc2.unload()

    assert asyncio.run(load_inside_loop()) == "model:g"
    uc.unload()


def test_fewer_argument_hooks(tmp_path: Path, make_config: Any, collect: Any) -> None:
    code = write(
        tmp_path / "p.py",
        """
        class Preprocess:
            def load(self):
                return "nothing to load"

            def preprocess(self, body):
                return body["v"]

            def process(self, data, state):
                state["p"] = 1
                return data * 10

            async def postprocess(self, data, state, collect, *extra):
                return {"out": data, "state": dict(state), "extra": extra}

            def unload(self):
                pass
        """,
    )
    uc = UserCode.load(code, make_config("custom"))

    async def flow() -> Any:
        st: dict[str, Any] = {}
        d = await uc.run_preprocess({"v": 4}, st, collect)
        d = await uc.run_process(d, st, collect)
        return await uc.run_postprocess(d, st, collect)

    assert asyncio.run(flow()) == {"out": 40, "state": {"p": 1}, "extra": ()}
    assert uc.load_model("x") == "nothing to load"
    uc.unload()


def test_too_many_required_args_is_user_code_error(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "p.py",
        """
        class Preprocess:
            def preprocess(self, body, state, collect, something_else):
                return body
        """,
    )
    with pytest.raises(UserCodeError, match=r"Preprocess.preprocess takes 4 required"):
        UserCode.load(code, make_config("sklearn"))


def test_syntax_error_names_file_and_line(tmp_path: Path, make_config: Any) -> None:
    code = write(tmp_path / "p.py", "class Preprocess:\n    def x(self)\n        pass\n")
    cfg = make_config("sklearn", preprocess=ArtifactRef(sha256="1" * 64, filename="my_pre.py"))
    with pytest.raises(UserCodeError) as info:
        UserCode.load(code, cfg)
    msg = str(info.value)
    assert "'my_pre.py', line 2" in msg
    assert "SyntaxError" in msg
    assert "Traceback" not in msg
    assert not [m for m in sys.modules if m.startswith("_modelyard_user_")]


def test_import_error_and_missing_class_and_init_error(tmp_path: Path, make_config: Any) -> None:
    bad_import = write(tmp_path / "a.py", "import os\nimport no_such_module_xyz\n")
    with pytest.raises(UserCodeError) as info:
        UserCode.load(bad_import, make_config("sklearn"))
    assert "'a.py', line 2" in str(info.value)
    assert "ModuleNotFoundError" in str(info.value)
    assert "no_such_module_xyz" in str(info.value)

    no_class = write(tmp_path / "b.py", "class Other:\n    pass\n")
    with pytest.raises(UserCodeError, match=r"'b\.py' defines no class named 'Preprocess'"):
        UserCode.load(no_class, make_config("sklearn"))

    bad_init = write(
        tmp_path / "c.py",
        """
        class Preprocess:
            def __init__(self):
                x = 1
                raise RuntimeError("boom in init")
        """,
    )
    with pytest.raises(UserCodeError) as info:
        UserCode.load(bad_init, make_config("sklearn"))
    msg = str(info.value)
    assert "'c.py', line 5" in msg and "RuntimeError: boom in init" in msg
    left = {m for m in sys.modules if m.startswith("_modelyard_user_")}
    assert not left, "failed loads must not leave modules behind"


def test_hook_exception_wrapped(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "p.py",
        """
        class Preprocess:
            def preprocess(self, body, state, collect=None):
                raise ValueError("field 'x' is missing")
        """,
    )
    uc = UserCode.load(code, make_config("sklearn"))
    with pytest.raises(ValueError) as info:
        asyncio.run(uc.run_preprocess({}, {}))
    err = wrap_user_error(info.value, "preprocess")
    assert isinstance(err, Unprocessable)
    assert str(err) == "preprocess raised ValueError: field 'x' is missing"
    assert err.__cause__ is info.value
    assert err.kind == "unprocessable"
    long = wrap_user_error(RuntimeError("y" * 2000), "process")
    assert len(str(long)) < 600
    uc.unload()


def test_two_loads_are_isolated(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "p.py",
        """
        COUNTER = 0
        SHARED = []

        class Preprocess:
            calls = 0

            def __init__(self):
                global COUNTER
                COUNTER += 1
                self.n = COUNTER

            def preprocess(self, body, state, collect=None):
                SHARED.append(body)
                type(self).calls += 1
                return {"n": self.n, "shared": list(SHARED), "calls": type(self).calls}
        """,
    )
    a = UserCode.load(code, make_config("sklearn", version="1"))
    b = UserCode.load(code, make_config("sklearn", version="1"))
    assert a.module_name != b.module_name
    assert a.module is not b.module
    assert a.preprocess is not None and b.preprocess is not None
    assert a.preprocess("a1", {}, None) == {"n": 1, "shared": ["a1"], "calls": 1}
    assert b.preprocess("b1", {}, None) == {"n": 1, "shared": ["b1"], "calls": 1}
    assert a.preprocess("a2", {}, None) == {"n": 1, "shared": ["a1", "a2"], "calls": 2}
    # a hot reload: new content at the same path, same size, same second
    code.write_text(code.read_text().replace("COUNTER = 0", "COUNTER = 5"))
    c = UserCode.load(code, make_config("sklearn", version="1"))
    assert c.instance.n == 6
    names = [a.module_name, b.module_name, c.module_name]
    for uc in (a, b, c):
        uc.unload()
    assert not set(names) & set(sys.modules)


def test_folder_package_from_tar(tmp_path: Path, make_config: Any) -> None:
    archive = make_tar(
        tmp_path / "pre.tar.gz",
        {
            "mypkg/__init__.py": "from .model import Preprocess\n",
            "mypkg/model.py": """
                from .helpers import double
                import sibling

                class Preprocess:
                    def preprocess(self, body, state, collect=None):
                        return sibling.add_one(double(body))
            """,
            "mypkg/helpers.py": "def double(x):\n    return x * 2\n",
            "mypkg/sibling.py": "def add_one(x):\n    return x + 1\n",
        },
    )
    cfg = make_config(
        "sklearn", preprocess=ArtifactRef(sha256="2" * 64, filename="pre.tar.gz", kind="folder")
    )
    a = UserCode.load(archive, cfg)
    b = UserCode.load(archive, cfg)
    assert a.preprocess is not None and a.preprocess(5, {}, None) == 11
    assert "sibling" not in sys.modules  # absolute sibling imports do not leak
    assert f"{a.module_name}.helpers" in sys.modules
    assert sys.modules[f"{a.module_name}.helpers"] is not sys.modules[f"{b.module_name}.helpers"]
    tmp = a.source
    assert tmp.exists()
    a.unload()
    assert not tmp.exists()
    assert f"{a.module_name}.helpers" not in sys.modules
    b.unload()


def test_folder_package_directory_and_error_line(tmp_path: Path, make_config: Any) -> None:
    folder = tmp_path / "pkg"
    write(folder / "__init__.py", "from .impl import Preprocess\n")
    write(folder / "impl.py", "class Preprocess:\n    pass\n\n\nraise KeyError('oops')\n")
    with pytest.raises(UserCodeError) as info:
        UserCode.load(folder, make_config("sklearn"))
    assert "impl.py', line 5" in str(info.value)
    assert "KeyError" in str(info.value)
    write(folder / "impl.py", "class Preprocess:\n    def process(self, d):\n        return d\n")
    uc = UserCode.load(folder, make_config("sklearn"))
    assert uc.process is not None and uc.process(3, {}, None) == 3
    uc.unload()


def test_tar_without_package_marker_and_single_file_tar(tmp_path: Path, make_config: Any) -> None:
    cfg = make_config("sklearn")
    bad = make_tar(tmp_path / "bad.tar.gz", {"a/x.py": "x = 1\n", "b/y.py": "y = 1\n"})
    with pytest.raises(UserCodeError, match=r"no __init__\.py"):
        UserCode.load(bad, cfg)
    single = make_tar(
        tmp_path / "single.tgz", {"pre.py": "class Preprocess:\n    def load(self, f): return 7\n"}
    )
    uc = UserCode.load(single, cfg)
    assert uc.load_model(None) == 7
    uc.unload()


@pytest.mark.parametrize("member", ["/etc/evil.py", "../evil.py", "pkg/../../evil.py"])
def test_unsafe_tar_members_rejected(tmp_path: Path, make_config: Any, member: str) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", {member: "x = 1\n"})
    with pytest.raises(UserCodeError, match="unsafe member path"):
        UserCode.load(archive, make_config("sklearn"))
    assert not (tmp_path / "evil.py").exists()


def test_tar_links_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/__init__.py")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserCodeError, match="link or special file"):
        safe_extract(archive, tmp_path / "out")


def test_send_request_injected(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "p.py",
        """
        class Preprocess:
            def __init__(self):
                # visible from __init__ too
                self.endpoint_at_init = self.model_endpoint.endpoint

            def preprocess(self, body, state, collect=None):
                return self.send_request("other", version="2", data=body)

            async def process(self, data, state, collect=None):
                return await self.async_send_request(endpoint="third", data=data)
        """,
    )
    calls: list[tuple] = []

    def send(endpoint: str, version: str | None = None, data: Any = None) -> Any:
        calls.append(("sync", endpoint, version, data))
        return {"answer": data}

    async def asend(endpoint: str, version: str | None = None, data: Any = None) -> Any:
        calls.append(("async", endpoint, version, data))
        return {"async_answer": data}

    uc = UserCode.load(code, make_config("custom"), send_request=send, async_send_request=asend)
    assert uc.instance.endpoint_at_init == "ep"

    async def flow() -> Any:
        d = await uc.run_preprocess({"q": 1}, {})
        return await uc.run_process(d, {})

    assert asyncio.run(flow()) == {"async_answer": {"answer": {"q": 1}}}
    assert calls == [
        ("sync", "other", "2", {"q": 1}),
        ("async", "third", None, {"answer": {"q": 1}}),
    ]
    uc.unload()


def test_custom_async_send_request_is_awaitable(tmp_path: Path, make_config: Any) -> None:
    """clearml-serving's custom_async engine makes ``self.send_request`` the async one."""
    code = write(
        tmp_path / "p.py",
        """
        class Preprocess:
            async def process(self, data, state, collect=None):
                return await self.send_request("x", data=data)
        """,
    )

    async def asend(endpoint: str, version: str | None = None, data: Any = None) -> Any:
        return [endpoint, data]

    uc = UserCode.load(code, make_config("custom_async"), async_send_request=asend)
    assert asyncio.run(uc.run_process(1, {})) == ["x", 1]
    uc.unload()


def test_send_request_missing_is_clear(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "p.py",
        "class Preprocess:\n    def preprocess(self, b):\n        return self.send_request('x')\n",
    )
    uc = UserCode.load(code, make_config("sklearn"))
    with pytest.raises(Exception, match="send_request is not available"):
        asyncio.run(uc.run_preprocess(1, {}))
    uc.unload()


def test_blob_without_py_suffix(tmp_path: Path, make_config: Any) -> None:
    """Artifacts are content-addressed: the local file may have no .py extension."""
    blob = write(
        tmp_path / ("a" * 64),
        "class Preprocess:\n    def preprocess(self, b):\n        return -b\n",
    )
    cfg: EndpointConfig = make_config(
        "sklearn", preprocess=ArtifactRef(sha256="a" * 64, filename="preprocess.py")
    )
    uc = UserCode.load(blob, cfg)
    fn: Callable[..., Any] | None = uc.preprocess
    assert fn is not None and fn(2, {}, None) == -2
    uc.unload()
    uc.unload()  # idempotent


def test_load_raising_is_user_code_error(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "p.py",
        "class Preprocess:\n    def load(self, f):\n        raise OSError('no ' + str(f))\n",
    )
    uc = UserCode.load(code, make_config("custom"))
    with pytest.raises(UserCodeError, match=r"'p.py', line 3: Preprocess.load raised OSError"):
        uc.load_model("model.bin")
    uc.unload()


# -- user-code errors: the user's own line, a log that does not flood, the last error ---------


def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def test_hook_error_names_the_innermost_line_of_the_users_code(tmp_path: Path, make_config: Any) -> None:
    code = write(
        tmp_path / "cache-blob",
        """
        import numpy as np

        def row(body):
            return [body[name] for name in ("x0", "x1")]

        class Preprocess:
            def preprocess(self, body, state, collect=None):
                return [row(body)]

            def postprocess(self, data, state, collect=None):
                return np.asarray(data, dtype=float)
        """,
    )
    cfg = make_config("sklearn", preprocess=ArtifactRef(sha256="c" * 64, filename="features.py"))
    uc = UserCode.load(code, cfg)
    assert uc.preprocess is not None and uc.postprocess is not None
    err = wrap_user_error(_raised(lambda: uc.preprocess({"x0": 1}, {}, None)), "preprocess", uc.errors)
    # the uploaded file's name, not the cache path; the helper's line, not the hook's (and the
    # function around a comprehension, on every Python version)
    assert str(err) == "preprocess raised KeyError: 'x1' (features.py:5, in row)"
    # raised inside numpy: the user's line that called it
    err = wrap_user_error(_raised(lambda: uc.postprocess("abc", {}, None)), "postprocess", uc.errors)
    assert err.message.startswith("postprocess raised ValueError: could not convert string to float")
    assert err.message.endswith("(features.py:12, in postprocess)")
    assert isinstance(err, Unprocessable) and isinstance(err.__cause__, ValueError)
    uc.unload()


def test_error_line_inside_a_package_names_the_file_in_it(tmp_path: Path, make_config: Any) -> None:
    folder = tmp_path / "unpacked"
    write(folder / "__init__.py", "from .model import Preprocess\n")
    write(
        folder / "model.py",
        "from .parse import parse\n\n"
        "class Preprocess:\n    def preprocess(self, b):\n        return parse(b)\n",
    )
    write(folder / "parse.py", "def parse(body):\n    return int(body)\n")
    cfg = make_config("sklearn", preprocess=ArtifactRef(sha256="d" * 64, filename="mycode", kind="folder"))
    uc = UserCode.load(folder, cfg)
    assert uc.preprocess is not None
    err = wrap_user_error(_raised(lambda: uc.preprocess("x", {}, None)), "preprocess", uc.errors)
    assert err.message == (
        "preprocess raised ValueError: invalid literal for int() with base 10: 'x' "
        "(mycode/parse.py:2, in parse)"
    )
    uc.unload()


def test_user_errors_log_tracebacks_rate_limited_and_keep_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from modelyard.preprocess_errors import MAX_KINDS, MESSAGE_CHARS, UserErrors

    now = [1000.0]
    notified: list[int] = []
    errors = UserErrors("iris/2", log_every_s=60, clock=lambda: now[0])
    errors.notify = lambda: notified.append(1)
    assert errors.snapshot() is None
    caplog.set_level("ERROR", logger="modelyard.usercode")
    for _ in range(50):  # a client looping on a bad request
        errors.wrap(_raised(lambda: {}["x1"]), "preprocess")
    (first,) = caplog.records
    assert first.getMessage() == "endpoint iris/2: preprocess raised KeyError: 'x1'"
    assert first.exc_info is not None and first.exc_info[0] is KeyError  # the traceback
    errors.wrap(_raised(lambda: 1 / 0), "postprocess")  # another kind: logged at once
    assert len(caplog.records) == 2 and len(notified) == 2
    now[0] += 59
    errors.wrap(_raised(lambda: {}["x1"]), "preprocess")
    assert len(caplog.records) == 2
    now[0] += 2  # a minute after it was last logged: once more, with what was left out
    errors.wrap(_raised(lambda: {}["x1"]), "preprocess")
    assert caplog.records[-1].getMessage().endswith("(50 more like it since it was last logged)")
    assert len(notified) == 3
    last = errors.snapshot()
    assert last is not None
    assert last["hook"] == "preprocess" and last["error"] == "preprocess raised KeyError: 'x1'"
    assert last["count"] == 52 and last["total"] == 53
    assert last["time"].endswith("Z") and last["where"] is None
    # bounded: kinds forgotten oldest first, messages cut
    for i in range(MAX_KINDS + 10):
        errors.wrap(RuntimeError("z" * 5000), f"hook{i}")
    assert len(errors._kinds) == MAX_KINDS
    last = errors.snapshot()
    assert last is not None and len(last["error"]) < MESSAGE_CHARS + 50
