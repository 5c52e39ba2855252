"""Build the images and drive ``deploy/compose.yaml`` with the machine's container engine.

The images come from the same scripts ``make image`` runs (``scripts/image.sh``) and, where no
registry is reachable, ``scripts/local-images.sh`` for PostgreSQL, Redis, Prometheus and the S3
store (``deploy/compose.local.yaml``). podman-compose 1.0 appends an override file's lists to the
base file's instead of replacing them, so :func:`merged_compose` merges the two as docker compose
does and the engine's compose tool gets one file.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OFFICIAL_PROBE = "postgres:16"  # one of compose.yaml's third-party images


def run_script(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """``bash scripts/NAME ARGS``; its last line of output (a tag, an image name)."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"scripts/{name} exited {done.returncode}:\n{done.stderr[-6000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Engine:
    """docker or podman, as scripts/podman-setup.sh chose it (and the environment it needs)."""

    name: str
    compose: list[str]
    env: dict[str, str]

    @classmethod
    def detect(cls) -> Engine:
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "podman-setup.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise AssertionError(f"scripts/podman-setup.sh exited {done.returncode}: {done.stderr[-3000:]}")
        values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        env = dict(os.environ)
        if values.get("CONTAINERS_CONF"):
            env["CONTAINERS_CONF"] = values["CONTAINERS_CONF"]
        return cls(values["ENGINE"], values["COMPOSE"].split(), env)

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.name} {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}"
            )
        return done

    def has_image(self, image: str) -> bool:
        if self.run("image", "inspect", image, check=False).returncode == 0:
            return True
        return self.run("pull", "-q", image, check=False, timeout=300).returncode == 0

    def inspect(self, image: str) -> dict[str, Any]:
        return dict(json.loads(self.run("image", "inspect", image).stdout)[0])


def merge(base: Any, override: Any) -> Any:
    """docker compose's merge for the keys compose.local.yaml sets: mappings merge, the rest is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


def merged_compose(local: bool, target: Path) -> Path:
    """deploy/compose.yaml (with compose.local.yaml over it if ``local``) as one file at ``target``,
    bind-mount sources made absolute (they are relative to deploy/)."""
    config = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    if local:
        config = merge(config, yaml.safe_load((DEPLOY / "compose.local.yaml").read_text()))
    config = {k: v for k, v in config.items() if not k.startswith("x-")}  # anchors: already merged
    for service in config["services"].values():
        volumes = service.get("volumes", [])
        for i, mount in enumerate(volumes):
            if isinstance(mount, str) and mount.startswith("./"):
                volumes[i] = f"{DEPLOY}/{mount[2:]}"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@dataclass
class ComposeStack:
    """One compose project: its own name, network, volumes and host ports."""

    engine: Engine
    file: Path
    env: dict[str, str]
    project: str = field(default_factory=lambda: f"modelyard-e2e-{uuid.uuid4().hex[:8]}")

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.engine.compose, "-p", self.project, "-f", str(self.file), *args]
        done = subprocess.run(
            cmd, env={**self.engine.env, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def up(self, services: list[str]) -> None:
        self.compose("up", "-d", *services)

    def container(self, service: str) -> str:
        """The id of ``service``'s (first) container."""
        out = self.engine.run(
            "ps", "-a", "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        assert out, f"no container for {service} in {self.project}"
        return out[0]

    def exec(self, service: str, *cmd: str) -> str:
        return self.engine.run("exec", self.container(service), *cmd).stdout

    def restart(self, service: str) -> None:
        """Stop (SIGTERM, up to 10 s) and start ``service``'s container, as an orchestrator would."""
        self.engine.run("restart", "-t", "10", self.container(service), timeout=60)

    def containers(self) -> dict[str, dict[str, Any]]:
        """service -> its container's inspect data."""
        ids = self.engine.run(
            "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        ).stdout.split()
        if not ids:
            return {}
        data = json.loads(self.engine.run("inspect", *ids).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in data}

    def logs(self, tail: int = 60) -> str:
        out = []
        for service, info in sorted(self.containers().items()):
            done = self.engine.run("logs", "--tail", str(tail), info["Id"], check=False)
            out.append(f"--- {service} ({info['State'].get('Status')})\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    def down(self) -> None:
        """Remove the containers, then every volume they used (named, and the anonymous ones the
        image's VOLUME made, which podman-compose 1.0 leaves) and the network."""
        volumes = {
            mount["Name"]
            for info in self.containers().values()
            for mount in info.get("Mounts", [])
            if mount.get("Type") == "volume" and mount.get("Name")
        }
        self.compose("down", "-v", timeout=300, check=False)
        label = f"label=com.docker.compose.project={self.project}"
        volumes |= set(self.engine.run("volume", "ls", "-q", "--filter", label, check=False).stdout.split())
        if volumes:
            self.engine.run("volume", "rm", "-f", *sorted(volumes), check=False)
        networks = self.engine.run("network", "ls", "-q", "--filter", label, check=False).stdout.split()
        if networks:
            self.engine.run("network", "rm", *networks, check=False)


def wait_until(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
