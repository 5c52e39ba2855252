"""The model registry: versions, tags, publishing and safe removal.

A model's artifact is immutable once registered (it is addressed by hash);
what changes is its tags and published flag, which is what auto-deployment and
``model_query`` select on. Versions count up per (name, project); two
concurrent uploads of the same name race on the unique constraint and the loser
retries with the next number instead of failing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence

import regex
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.artifact_names import check_filename, filename_problem
from modelyard.artifacts import ArtifactStore
from modelyard.config import ArtifactRef, endpoint_key
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.registry.schemas import Model, ModelCreate, ModelFilter, TagsChange
from modelyard.store import BlobRow, Database, EndpointRow, ModelRow, ServiceRow, utcnow

_VERSION_RETRIES = 8

ModelHook = Callable[[Session, ModelRow], Callable[[], None] | None]
"""Called inside the transaction that created, published or re-tagged a model (auto-deploy uses
it to deploy in the same transaction); the callable it returns, if any, runs after the commit."""


def model_from_row(row: ModelRow) -> Model:
    artifact = None
    if row.artifact_sha256:
        artifact = ArtifactRef(
            sha256=row.artifact_sha256,
            filename=row.artifact_filename or "model.bin",
            size=row.artifact_size or 0,
            kind="folder" if row.artifact_kind == "folder" else "file",
        )
    return Model(
        id=row.id,
        name=row.name,
        project=row.project,
        version=row.version,
        framework=row.framework,
        tags=list(row.tags or []),
        published=row.published,
        artifact=artifact,
        url=row.url,
        metadata=dict(row.metadata_ or {}),
        created_at=row.created_at,
    )


def record_blob(session: Session, sha: str, size: int) -> None:
    """Remember that the store holds ``sha`` (idempotent)."""
    if session.get(BlobRow, sha) is None:
        session.add(BlobRow(sha256=sha, size=size, created_at=utcnow()))


def _filename_from_url(url: str) -> str:
    """The url's last path segment when it is a valid file name, else ``model.bin``."""
    name = posixpath.basename(url.split("?", 1)[0].split("#", 1)[0].rstrip("/"))
    return name if name and filename_problem(name) is None else "model.bin"


NAME_FILTER_TIMEOUT_S = 0.05
"""Most time one model name may take to test against a caller's name filter: anyone may list
models (reads need no token by default), and a pattern such as ``(a+)+$`` backtracks
exponentially in a backtracking engine; past this budget the listing is refused (400)."""


def matches(model: Model, flt: ModelFilter, name_re: regex.Pattern[str] | None) -> bool:
    """Whether ``model`` passes ``flt`` (the parts SQL cannot do portably: regex and tags)."""
    if name_re is not None:
        try:
            if not name_re.fullmatch(model.name, timeout=NAME_FILTER_TIMEOUT_S):
                return False
        except TimeoutError:
            raise BadRequest(
                f"model name filter {flt.name!r} takes too long to evaluate (over "
                f"{NAME_FILTER_TIMEOUT_S * 1000:.0f} ms on one name): simplify the regular expression"
            ) from None
    return all(tag in model.tags for tag in flt.tags)


def compile_name(pattern: str | None) -> regex.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise BadRequest(f"model name filter {pattern!r} is not a valid regular expression: {exc}") from None


def select_models(session: Session, flt: ModelFilter) -> list[ModelRow]:
    """Rows of the models matching ``flt`` in ``session``, newest first."""
    name_re = compile_name(flt.name)
    query = select(ModelRow).order_by(ModelRow.created_at.desc(), ModelRow.version.desc())
    if flt.project is not None:
        query = query.where(ModelRow.project == flt.project)
    if flt.framework is not None:
        query = query.where(ModelRow.framework == flt.framework)
    if flt.published is not None:
        query = query.where(ModelRow.published == flt.published)
    out: list[ModelRow] = []
    for row in session.scalars(query):
        if matches(model_from_row(row), flt, name_re):
            out.append(row)
            if flt.limit is not None and len(out) >= flt.limit:
                break
    return out


class ModelRegistry:
    """Models in ``db`` with their files in ``artifacts``."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts
        self._hooks: list[ModelHook] = []

    def add_hook(self, hook: ModelHook) -> None:
        """Run ``hook`` in the transaction of every model create, publish and tag change."""
        self._hooks.append(hook)

    def _changed(self, session: Session, row: ModelRow) -> list[Callable[[], None]]:
        session.flush()
        return [after for hook in self._hooks if (after := hook(session, row)) is not None]

    @staticmethod
    def _after(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            callback()

    # -- artifacts ---------------------------------------------------------

    def record_artifact(self, sha: str, size: int) -> None:
        with self.db.write() as session:
            record_blob(session, sha, size)

    # -- create --------------------------------------------------------------

    def create(self, spec: ModelCreate) -> Model:
        """Register a model; fetches ``spec.url`` into the store first when no artifact is given.

        The file name is checked first (:class:`BadRequest` naming the problem): replicas keep
        the artifact under it, so it must be one plain path component.
        """
        if spec.filename is not None:
            check_filename(spec.filename, "model")
        if spec.artifact_sha256:
            sha = spec.artifact_sha256
            if not self.artifacts.exists(sha):
                raise NotFound(f"artifact {sha} not found; upload it first (POST /api/artifacts)")
            size = self.artifacts.size(sha)
            filename = spec.filename or (_filename_from_url(spec.url) if spec.url else "model.bin")
        elif spec.url:
            # Fetching may take long: do it before, not inside, the transaction.
            sha, size = self.artifacts.fetch_url(spec.url)
            filename = spec.filename or _filename_from_url(spec.url)
        else:
            raise BadRequest(f"model {spec.name!r}: give either artifact_sha256 or url")

        for _ in range(_VERSION_RETRIES):
            try:
                with self.db.write() as session:
                    record_blob(session, sha, size)
                    current = session.scalar(
                        select(func.max(ModelRow.version)).where(
                            ModelRow.name == spec.name, ModelRow.project == spec.project
                        )
                    )
                    row = ModelRow(
                        name=spec.name,
                        project=spec.project,
                        version=(current or 0) + 1,
                        framework=spec.framework,
                        tags=list(spec.tags),
                        published=spec.published,
                        artifact_sha256=sha,
                        artifact_filename=filename,
                        artifact_size=size,
                        artifact_kind=spec.kind,
                        url=spec.url,
                        metadata_=dict(spec.metadata),
                        created_at=utcnow(),
                    )
                    session.add(row)
                    session.flush()
                    model = model_from_row(row)
                    after = self._changed(session, row)
            except IntegrityError:
                continue  # another writer took this version number; take the next one
            self._after(after)
            return model
        raise Conflict(f"model {spec.name!r} in project {spec.project!r}: could not allocate a version")

    # -- read ----------------------------------------------------------------

    def get(self, model_id: str) -> Model:
        with self.db.read() as session:
            return model_from_row(self._row(session, model_id))

    def _row(self, session: Session, model_id: str) -> ModelRow:
        row = session.get(ModelRow, model_id)
        if row is None:
            raise NotFound(f"model {model_id} not found")
        return row

    def list(self, flt: ModelFilter | None = None) -> list[Model]:
        """Models matching ``flt``, newest first."""
        with self.db.read() as session:
            return [model_from_row(r) for r in select_models(session, flt or ModelFilter())]

    def newest(self, flt: ModelFilter) -> Model:
        """The newest model matching ``flt``; :class:`NotFound` describing the query otherwise."""
        found = self.list(flt.model_copy(update={"limit": 1}))
        if not found:
            wanted = flt.model_dump(exclude_none=True, exclude_defaults=True)
            raise NotFound(f"no model matches the query {wanted}")
        return found[0]

    # -- change --------------------------------------------------------------

    def publish(self, model_id: str, published: bool = True) -> Model:
        with self.db.write() as session:
            row = self._row(session, model_id)
            row.published = published
            session.flush()
            model = model_from_row(row)
            after = self._changed(session, row)
        self._after(after)
        return model

    def change_tags(self, model_id: str, change: TagsChange) -> Model:
        with self.db.write() as session:
            row = self._row(session, model_id)
            tags = [t for t in (row.tags or []) if t not in change.remove]
            tags += [t for t in change.add if t not in tags]
            row.tags = tags
            session.flush()
            model = model_from_row(row)
            after = self._changed(session, row)
        self._after(after)
        return model

    def users(self, session: Session, model_id: str) -> Sequence[tuple[str, str, str]]:
        """``(service, endpoint, version)`` of every endpoint serving ``model_id``."""
        rows = session.execute(
            select(ServiceRow.name, EndpointRow.endpoint, EndpointRow.version)
            .join(ServiceRow, EndpointRow.service_id == ServiceRow.id)
            .where(EndpointRow.model_id == model_id)
            .order_by(ServiceRow.name, EndpointRow.endpoint, EndpointRow.version)
        )
        return [(s, e, v) for s, e, v in rows]

    def remove(self, model_id: str) -> None:
        """Delete the model; :class:`Conflict` naming an endpoint when one still serves it.

        The artifact stays in the store: other models may share its hash.
        """
        try:
            with self.db.write() as session:
                row = self._row(session, model_id)
                users = self.users(session, model_id)
                if users:
                    service, endpoint, version = users[0]
                    more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
                    raise Conflict(
                        f"model {model_id} ({row.name}) is used by endpoint "
                        f"'{endpoint_key(endpoint, version)}' in service '{service}'{more}"
                    )
                session.delete(row)
        except IntegrityError:
            # An endpoint started using it between our check and the delete (foreign key).
            raise Conflict(f"model {model_id} is used by an endpoint added meanwhile") from None
