"""``modelyard model ...``: upload, register, download, list, show, publish, tag and remove models."""

from __future__ import annotations

from pathlib import Path

import typer

from modelyard.cli import _common as common

app = common.sub_app("Upload and manage models in the registry.")

FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "tensorflow", "custom")
"""What ``--framework`` accepts: the engines that serve a model file, and ``custom`` for a model
your own Preprocess code loads."""


def check_framework(framework: str) -> str:
    """``framework`` itself when known; else exit 1 naming the known ones (and the closest)."""
    if framework in FRAMEWORKS:
        return framework
    hint = common.did_you_mean(framework, FRAMEWORKS)
    raise common.fail(
        f"unknown --framework {framework!r}; known: {', '.join(FRAMEWORKS)}" + (f". {hint}" if hint else "")
    )


@common.command(app, "upload")
def upload(
    name: str = typer.Option(..., "--name", help="Model name."),
    project: str = typer.Option(..., "--project", help="Project the model belongs to."),
    framework: str = typer.Option(..., "--framework", help=f"Framework: {', '.join(FRAMEWORKS)}."),
    path: Path | None = typer.Option(
        None, "--path", help="Model file or folder to upload (a folder is sent as a .tar.gz)."
    ),
    url: str | None = typer.Option(
        None, "--url", help="Register a remote file instead (http(s)://, s3://, gs://, az://)."
    ),
    publish: bool = typer.Option(False, "--publish", help="Publish the model right away."),
    tags: list[str] | None = typer.Option(None, "--tags", help="Tags: --tags a b c."),
    metadata: list[str] | None = typer.Option(
        None, "--metadata", help="Metadata: --metadata key=value ... (values may be JSON)."
    ),
) -> None:
    """Upload a model (or register a remote one); prints the new model's id on the last line."""
    check_framework(framework)
    if (path is None) == (url is None):
        raise common.fail("give exactly one of --path (upload a file) or --url (register a URL)")
    meta = common.parse_pairs(metadata, "metadata")
    with common.client() as c:
        if path is not None:
            if not path.exists():
                raise common.fail(f"--path {str(path)!r} does not exist")
            label = f"uploading {path.name}" + ("/ (packed)" if path.is_dir() else "")
            with common.transfer_progress(label) as progress:
                model = c.upload_model(
                    path,
                    name=name,
                    project=project,
                    framework=framework,
                    tags=tags or (),
                    publish=publish,
                    metadata=meta,
                    progress=progress,
                )
        else:
            assert url is not None
            model = c.register_model_url(
                url,
                name=name,
                project=project,
                framework=framework,
                tags=tags or (),
                publish=publish,
                metadata=meta,
            )
    typer.echo(
        f"model {model.get('name')!r} version {model.get('version')} in project "
        f"{model.get('project')!r} registered{' and published' if model.get('published') else ''}",
        err=True,
    )
    typer.echo(model["id"])


@app.command("download")
def download(
    model_id: str = typer.Argument(..., help="The model's id."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="File to write, or an existing folder to write into. A folder model arrives as its .tar.gz.",
        show_default="the model's file name in the current folder",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a file that already exists."),
) -> None:
    """Download a model's file (hash-checked, with a progress bar); prints its path on the last line."""
    with common.client() as c:
        model = c.get_model(model_id)
        artifact = model.get("artifact")
        if not artifact:
            raise common.fail(
                f"model {model_id} has no stored file to download (registered as {model.get('url')!r})"
            )
        filename = Path(str(artifact.get("filename") or "")).name or str(artifact["sha256"])
        target = out if out is not None else Path(filename)
        if target.is_dir():
            target = target / filename
        if target.exists() and not force:
            raise common.fail(f"{str(target)!r} already exists; give --force to overwrite it")
        with common.transfer_progress(f"downloading {filename}") as progress:
            path = c.download(str(artifact["sha256"]), target, progress=progress)
    typer.echo(
        f"model {model.get('name')!r} version {model.get('version')} ({model.get('framework')}) "
        f"saved to {path}",
        err=True,
    )
    typer.echo(str(path))


@common.command(app, "list")
def list_(
    name: str | None = typer.Option(None, "--name", help="Name (regular expression, full match)."),
    project: str | None = typer.Option(None, "--project", help="Project."),
    framework: str | None = typer.Option(None, "--framework", help="Framework."),
    tags: list[str] | None = typer.Option(None, "--tags", help="Tags that must all be present."),
    published: bool | None = typer.Option(
        None, "--published/--unpublished", help="Only published (or unpublished) models."
    ),
    limit: int | None = typer.Option(None, "--limit", help="At most this many models."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List models, newest first."""
    with common.client() as c:
        models = c.list_models(
            name=name,
            project=project,
            framework=framework,
            tags=tags or None,
            published=published,
            limit=limit,
        )
    if as_json:
        common.print_json(models)
        return
    rows = []
    for m in models:
        artifact = m.get("artifact") or {}
        rows.append(
            [
                m.get("id"),
                m.get("name"),
                m.get("project"),
                m.get("version"),
                m.get("framework"),
                " ".join(m.get("tags") or []),
                "yes" if m.get("published") else "no",
                artifact.get("filename") or m.get("url") or "",
                common.short_time(m.get("created_at")),
            ]
        )
    common.print_table(
        ["id", "name", "project", "version", "framework", "tags", "published", "file", "created"],
        rows,
        empty="no models",
    )


@app.command("show")
def show(model_id: str = typer.Argument(..., help="The model's id.")) -> None:
    """Print a model as JSON."""
    with common.client() as c:
        common.print_json(c.get_model(model_id))


@app.command("publish")
def publish_(model_id: str = typer.Argument(..., help="The model's id.")) -> None:
    """Publish a model (auto-deploy rules and --published queries pick published models)."""
    with common.client() as c:
        model = c.publish_model(model_id)
    typer.echo(f"model {model_id} ({model.get('name')} v{model.get('version')}) published")


@common.command(app, "tag")
def tag(
    model_id: str = typer.Argument(..., help="The model's id."),
    add: list[str] | None = typer.Option(None, "--add", help="Tags to add: --add a b."),
    remove: list[str] | None = typer.Option(None, "--remove", help="Tags to remove."),
) -> None:
    """Add and remove a model's tags."""
    if not add and not remove:
        raise common.fail("nothing to do: give --add and/or --remove")
    with common.client() as c:
        model = c.tag_model(model_id, add=add or (), remove=remove or ())
    typer.echo(f"model {model_id} tags: {' '.join(model.get('tags') or []) or '(none)'}")


@app.command("remove")
def remove_(model_id: str = typer.Argument(..., help="The model's id.")) -> None:
    """Remove a model (refused while an endpoint uses it)."""
    with common.client() as c:
        c.remove_model(model_id)
    typer.echo(f"model {model_id} removed")
