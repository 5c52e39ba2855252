"""pytorch engine: a TorchScript and a torch.export MLP, checked against the eager model."""

from __future__ import annotations

import asyncio
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelyard.config import TensorSpec
from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoHeads(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a * b


@pytest.fixture(scope="module")
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(6, 4))


def _expected(mlp: MLP, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return mlp(torch.from_numpy(x.astype(np.float32))).numpy()


def test_torchscript(tmp_path: Path, mlp: MLP, x: np.ndarray, make_config: Any, collect: Any) -> None:
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(mlp, torch.zeros(2, 4)), str(path))
    blob = Path(shutil.copy(path, tmp_path / ("e" * 64)))
    engine = default_engine_registry().create(make_config("pytorch", "mlp.pt"), blob)
    engine.load()
    assert engine.batchable
    out = asyncio.run(engine.predict(x.tolist(), {}, collect))  # JSON floats -> float32
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, _expected(mlp, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="pytorch model rejected the input"):
        engine.predict_sync(np.ones((2, 7)), {}, collect)
    with pytest.raises(InvalidInput, match="must be numeric"):
        engine.predict_sync([["a", "b"]], {}, collect)
    engine.unload()
    assert engine.model is None


def test_torch_export(tmp_path: Path, mlp: MLP, x: np.ndarray, make_config: Any, collect: Any) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(mlp, (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "mlp.pt2"
    torch.export.save(program, str(path))
    blob = Path(shutil.copy(path, tmp_path / ("f" * 64)))  # no .pt2 suffix on disk
    engine = default_engine_registry().create(make_config("pytorch", "mlp.pt2"), blob)
    engine.load()
    assert isinstance(engine.model, torch.export.ExportedProgram)
    np.testing.assert_allclose(engine.predict_sync(x, {}, collect), _expected(mlp, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        engine.predict_sync(x[:1], {}, collect), _expected(mlp, x[:1]), rtol=1e-5, atol=1e-6
    )


def test_dict_and_tuple_inputs_declared_dtype(tmp_path: Path, make_config: Any, collect: Any) -> None:
    program = torch.export.export(TwoHeads(), (torch.ones(3), torch.ones(3)))
    path = tmp_path / "two.pt2"
    torch.export.save(program, str(path))
    cfg = make_config(
        "pytorch",
        "two.pt2",
        inputs=[TensorSpec(name="a", dtype="float32"), TensorSpec(name="b", dtype="float32")],
    )
    engine = default_engine_registry().create(cfg, path)
    engine.load()
    out = engine.predict_sync({"a": [1, 2, 3], "b": [4, 5, 6]}, {}, collect)
    assert isinstance(out, list) and len(out) == 2
    np.testing.assert_allclose(out[0], [5, 7, 9])
    np.testing.assert_allclose(out[1], [4, 10, 18])
    out2 = engine.predict_sync(([1, 2, 3], [1, 1, 1]), {}, collect)
    np.testing.assert_allclose(out2[0], [2, 3, 4])
    with pytest.raises(InvalidInput, match="input 'b' is missing"):
        engine.predict_sync({"a": [1, 2, 3]}, {}, collect)
    # exported with b as a keyword: the dict is split the same way
    kw_program = torch.export.export(TwoHeads(), (torch.ones(3),), {"b": torch.ones(3)})
    kw_path = tmp_path / "kw.pt2"
    torch.export.save(kw_program, str(kw_path))
    kw_engine = default_engine_registry().create(make_config("pytorch", "kw.pt2"), kw_path)
    kw_engine.load()
    kw_out = kw_engine.predict_sync({"b": [1.0, 2, 3], "a": [2.0, 2, 2]}, {}, collect)
    np.testing.assert_allclose(kw_out[1], [2.0, 4, 6])
    with pytest.raises(InvalidInput, match="rejected the input: Guard failed"):
        kw_engine.predict_sync({"b": [1.0], "a": [2.0]}, {}, collect)
    # TorchScript takes keywords directly
    ts_path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.script(TwoHeads()), str(ts_path))
    ts_engine = default_engine_registry().create(make_config("pytorch", "two.pt"), ts_path)
    ts_engine.load()
    np.testing.assert_allclose(ts_engine.predict_sync({"b": [1.0], "a": [2.0]}, {}, collect)[0], [3.0])


def test_cuda_when_unavailable(tmp_path: Path, mlp: MLP, make_config: Any) -> None:
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp, (torch.zeros(2, 4),)), str(path))
    cfg = make_config("pytorch", "mlp.pt2", options={"device": "cuda"})
    engine = default_engine_registry().create(cfg, path)
    if torch.cuda.is_available():
        engine.load()
        assert engine.device.type == "cuda"
    else:
        with pytest.raises(ModelLoadError, match="asks for device 'cuda', but CUDA is not available"):
            engine.load()
    bad = make_config("pytorch", "mlp.pt2", options={"device": "warp-drive"})
    with pytest.raises(ModelLoadError, match="device='warp-drive'"):
        default_engine_registry().create(bad, path).load()


def test_corrupt_and_wrong_files(tmp_path: Path, mlp: MLP, make_config: Any) -> None:
    reg = default_engine_registry()
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"definitely not a zip")
    with pytest.raises(
        ModelLoadError, match=r"^cannot load pytorch model from 'model\.pt': not a TorchScript"
    ):
        reg.create(make_config("pytorch", "model.pt"), garbage).load()

    ckpt = tmp_path / "ckpt.pt"
    torch.save(mlp.state_dict(), str(ckpt))
    with pytest.raises(ModelLoadError, match=r"'ckpt\.pt': it is a torch\.save\(\) checkpoint"):
        reg.create(make_config("pytorch", "ckpt.pt"), ckpt).load()

    other_zip = tmp_path / "other.pt"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ModelLoadError, match="a zip file, but not a TorchScript"):
        reg.create(make_config("pytorch", "other.pt"), other_zip).load()

    # a TorchScript archive with a damaged member
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.trace(mlp, torch.zeros(2, 4)), str(good))
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("constants.pkl"):
                data = b"\x80\x04garbage"
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError, match=r"^cannot load pytorch model from 'broken\.pt': "):
        reg.create(make_config("pytorch", "broken.pt"), broken).load()


def test_user_load_returns_module(
    tmp_path: Path, mlp: MLP, x: np.ndarray, make_config: Any, collect: Any
) -> None:
    """clearml style: Preprocess.load builds the model; the engine runs it under inference_mode."""
    import textwrap

    from modelyard.preprocess import UserCode

    weights = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), str(weights))
    code = tmp_path / "pre.py"
    code.write_text(
        textwrap.dedent(
            """
            import torch

            class Preprocess:
                def load(self, local_file_name):
                    net = torch.nn.Sequential(
                        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
                    )
                    state = torch.load(local_file_name, weights_only=True)
                    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
                    return net
            """
        )
    )
    cfg = make_config("pytorch", "weights.pt")
    uc = UserCode.load(code, cfg)
    engine = default_engine_registry().create(cfg, weights, uc)
    engine.load()
    np.testing.assert_allclose(engine.predict_sync(x, {}, collect), _expected(mlp, x), rtol=1e-5, atol=1e-6)
    uc.unload()
