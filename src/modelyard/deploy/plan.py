"""From an ``Inference`` spec to the control-plane state it asks for (pure: no I/O but hashing files).

The mapping, which ``apply``/``diff``/``delete`` and the Kubernetes renderer share:

* service = ``metadata.service``; endpoint = ``metadata.name``.
* each predictor → endpoint version ``<metadata.name>/<predictor.version or predictor.name>``.
  Named rather than numbered so reordering predictors or inserting one in the middle
  never re-points an existing version at another model.
* ``batching`` → endpoint options ``max_batch_size`` / ``max_batch_delay_ms`` (over ``options``).
* ``spec.framework`` (or ``predictor.framework``) → the endpoint's engine.
* more than one predictor, or any ``trafficWeight`` → a canary at ``spec.canaryEndpoint``
  (default ``metadata.name``) splitting over the versions. Predictors without a weight get 0
  when others have one; with no weights at all the split is even.

The spec *owns* every version of its endpoint in its service: a version that is not in the
spec any more is removed by the next ``apply``. Nothing else in the service is touched.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.config import endpoint_key
from modelyard.deploy.spec import InferenceSpec, ModelSelector
from modelyard.errors import BadRequest


@dataclass(frozen=True)
class PreprocessFile:
    """Local user code for an endpoint version, with the hash the control plane will store."""

    path: Path
    sha256: str
    filename: str
    kind: str  # "file" or "folder"


@dataclass(frozen=True)
class DesiredEndpoint:
    """One endpoint version as the spec wants it (the model still a selector, resolved at apply)."""

    endpoint: str
    version: str
    engine: str
    model: ModelSelector
    preprocess: PreprocessFile | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    options: dict[str, Any]
    auxiliary: dict[str, Any]
    where: str
    """``file:line`` of the predictor, for errors found at apply time."""
    model_where: str = ""
    """``file:line: spec.predictors[i].model`` for "no such model" at apply time."""

    @property
    def key(self) -> str:
        return endpoint_key(self.endpoint, self.version)


@dataclass(frozen=True)
class CanaryPlan:
    """A weighted split over endpoint versions; applied through the canary API when there is one."""

    endpoint: str
    targets: list[str]
    weights: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "targets": list(self.targets), "weights": list(self.weights)}


@dataclass(frozen=True)
class Plan:
    service: str
    endpoint: str
    endpoints: list[DesiredEndpoint] = field(default_factory=list)
    canary: CanaryPlan | None = None
    source: str = "<string>"

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for ``--json`` output and tests)."""
        return {
            "service": self.service,
            "endpoint": self.endpoint,
            "endpoints": [
                {
                    "key": e.key,
                    "engine": e.engine,
                    "model": e.model.model_dump(exclude_defaults=True),
                    "preprocess": None
                    if e.preprocess is None
                    else {"sha256": e.preprocess.sha256, "filename": e.preprocess.filename},
                    "options": e.options,
                }
                for e in self.endpoints
            ],
            "canary": self.canary.as_dict() if self.canary else None,
        }


def hash_preprocess(path: Path, where: str) -> PreprocessFile:
    """The sha256 the control plane will give this code: the file's bytes, or the packed folder's.

    Folders are packed exactly as :meth:`modelyard.client.Client.upload_file` packs them
    (normalised tar.gz), so equal content gives an equal hash and a second apply uploads nothing.
    """
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
        return PreprocessFile(path, digest.hexdigest(), path.name, "file")
    if path.is_dir():
        from modelyard.client import pack_folder

        folder = path.resolve()
        with tempfile.TemporaryDirectory(prefix="modelyard-plan-") as tmp:
            packed = pack_folder(folder, Path(tmp) / f"{folder.name}.tar.gz")
            sha = hashlib.sha256(packed.read_bytes()).hexdigest()
        return PreprocessFile(path, sha, f"{folder.name}.tar.gz", "folder")
    raise BadRequest(f"{where}: preprocess {str(path)!r} is neither a file nor a folder")


def endpoint_options(predictor_options: dict[str, Any], batching: Any) -> dict[str, Any]:
    options = dict(predictor_options)
    if batching is not None:
        options["max_batch_size"] = batching.max_batch_size
        delay = batching.max_delay_ms
        options["max_batch_delay_ms"] = int(delay) if float(delay).is_integer() else delay
    return options


def canary_for(spec: InferenceSpec, keys: list[str]) -> CanaryPlan | None:
    predictors = spec.spec.predictors
    weighted = [p.traffic_weight for p in predictors if p.traffic_weight is not None]
    if len(predictors) < 2 and not weighted:
        return None
    # Without any weight the split is even; with some, the unweighted predictors get none.
    weights = [float(p.traffic_weight or 0.0) if weighted else 1.0 for p in predictors]
    endpoint = spec.spec.canary_endpoint or spec.metadata.name
    return CanaryPlan(endpoint=endpoint, targets=keys, weights=weights)


def plan_spec(spec: InferenceSpec) -> Plan:
    """The desired endpoints and canary for one spec document."""
    name = spec.metadata.name
    endpoints: list[DesiredEndpoint] = []
    for index, predictor in enumerate(spec.spec.predictors):
        where = spec.line_of("spec", "predictors", index)
        preprocess = None
        if predictor.preprocess:
            path = Path(predictor.preprocess).expanduser()
            if not path.is_absolute():
                path = spec.base_dir / path
            if not path.exists():
                raise BadRequest(
                    f"{spec.line_of('spec', 'predictors', index, 'preprocess')}: "
                    f"spec.predictors[{index}].preprocess: {str(path)!r} does not exist"
                )
            preprocess = hash_preprocess(path, where)
        endpoints.append(
            DesiredEndpoint(
                endpoint=name,
                version=predictor.endpoint_version,
                engine=predictor.framework or spec.spec.framework,
                model=predictor.model,
                preprocess=preprocess,
                inputs=[t.model_dump(mode="json", exclude_none=True) for t in predictor.inputs],
                outputs=[t.model_dump(mode="json", exclude_none=True) for t in predictor.outputs],
                options=endpoint_options(predictor.options, predictor.batching),
                auxiliary=dict(predictor.auxiliary),
                where=where,
                model_where=f"{spec.line_of('spec', 'predictors', index, 'model')}: "
                f"spec.predictors[{index}].model",
            )
        )
    canary = canary_for(spec, [e.key for e in endpoints])
    return Plan(
        service=spec.metadata.service,
        endpoint=name,
        endpoints=endpoints,
        canary=canary,
        source=spec.source,
    )
