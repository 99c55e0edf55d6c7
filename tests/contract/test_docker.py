"""docker/compose.yaml and docker/Dockerfile, checked without a Docker engine.

The compose file is parsed (YAML) and checked against the repository: every
service has a build or an image, the files it mounts exist, only real settings
(MW_* names of SETTINGS_DOC) are passed, the Prometheus config and rules it loads
are the ones in monitoring/, the workers are reachable under the names Prometheus
discovers. ``docker compose config -q`` (which needs no daemon) runs too when a
compose CLI is installed.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.settings import SETTINGS_DOC

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SETTING_NAMES = {f"MW_{name.upper()}" for name in SETTINGS_DOC}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host source, container target) of the service's bind mounts (named volumes left out)."""
    out = []
    for vol in service.get("volumes") or ():
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) >= 2 and (parts[0].startswith((".", "/", "~"))):
                out.append((parts[0], parts[1]))
        elif isinstance(vol, dict) and vol.get("type") == "bind":
            out.append((vol["source"], vol["target"]))
    return out


def _host_path(source: str) -> Path:
    return (DOCKER / source).resolve() if not source.startswith("/") else Path(source)


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _workers(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if _command(svc)[:1] == ["worker"]}


def test_every_service_has_a_build_or_an_image(compose):
    assert compose.get("services"), "no services"
    for name, svc in compose["services"].items():
        assert svc.get("build") or svc.get("image"), f"service {name} has neither build nor image"
        build = svc.get("build")
        if build:
            context = build if isinstance(build, str) else build.get("context", ".")
            ctx = (DOCKER / context).resolve()
            assert ctx.is_dir(), f"{name}: build context {ctx} missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ctx / dockerfile).is_file(), f"{name}: {ctx / dockerfile} missing"


def test_the_services_of_the_stack(compose):
    services = compose["services"]
    workers = _workers(compose)
    assert len(workers) >= 2, f"two workers expected, got {sorted(workers)}"
    kafka = services["kafka"]
    assert re.match(r"apache/kafka:4\.", kafka["image"]), kafka["image"]
    kenv = _env(kafka)
    assert "broker" in kenv["KAFKA_PROCESS_ROLES"] and "controller" in kenv["KAFKA_PROCESS_ROLES"]
    assert kenv["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kenv["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert kenv["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert any(_command(s)[:1] == ["simulate"] for s in services.values()), "no simulator"
    assert any("liquidation_bot.py" in " ".join(map(str, s.get("entrypoint") or [])) + " ".join(_command(s))
               for s in services.values()), "no liquidation bot"
    assert any("prom/prometheus" in str(s.get("image", "")) for s in services.values())
    assert any("grafana/grafana" in str(s.get("image", "")) for s in services.values())


def test_workers_are_reachable_by_their_names(compose):
    host_ports = set()
    for name, svc in _workers(compose).items():
        env = _env(svc)
        assert env.get("MW_WEB_HOST") == "0.0.0.0", name
        assert env.get("MW_WEB_CANONICAL_HOST") == name, f"{name}: MW_WEB_CANONICAL_HOST must be the service name"
        assert svc.get("restart") == "unless-stopped", name
        assert env.get("MW_BROKER", "").startswith("kafka://kafka:"), name
        for mapping in svc.get("ports") or ():
            host_ports.add(str(mapping).split(":")[0])
    assert len(host_ports) == len(_workers(compose)), f"workers need distinct published ports: {host_ports}"


def test_mounted_files_exist(compose):
    for name, svc in compose["services"].items():
        for source, target in _bind_mounts(svc):
            path = _host_path(source)
            assert path.exists(), f"{name}: mounts {source} ({path}), which does not exist"
            assert REPO in path.parents or path == REPO, f"{name}: mounts {path} from outside the repository"


def test_environment_names_are_real_settings(compose):
    for name, svc in compose["services"].items():
        for key in _env(svc):
            if key.startswith("MW_"):
                assert key in SETTING_NAMES, f"{name}: {key} is not a setting (see `marginwatch settings`)"
    for key in compose.get("x-marginwatch-env") or {}:
        assert key in SETTING_NAMES, key


def test_prometheus_config_and_rules_are_mounted(compose):
    (prom,) = [s for s in compose["services"].values() if "prom/prometheus" in str(s.get("image", ""))]
    flags = dict(arg.split("=", 1) for arg in _command(prom) if arg.startswith("--") and "=" in arg)
    config_in_container = flags["--config.file"]
    mounts = {target: _host_path(source) for source, target in _bind_mounts(prom)}

    def host_file(container_path: str) -> Path:
        for target, source in mounts.items():
            if container_path == target:
                return source
            if container_path.startswith(target.rstrip("/") + "/"):
                return source / container_path[len(target.rstrip("/")) + 1:]
        raise AssertionError(f"{container_path} is not mounted into the prometheus service")

    config = host_file(config_in_container)
    assert config == (REPO / "monitoring" / "prometheus.docker.yml").resolve(), config
    assert config.is_file()
    parsed = yaml.safe_load(config.read_text())
    base = config_in_container.rsplit("/", 1)[0]
    for rule in parsed.get("rule_files") or ():
        assert host_file(rule if rule.startswith("/") else f"{base}/{rule}").is_file(), rule
    # the scrape targets Prometheus discovers are the workers, on the port they listen on
    aliases = set()
    ports = set()
    for name, svc in _workers(compose).items():
        aliases.add(name)
        nets = svc.get("networks") or {}
        if isinstance(nets, dict):
            for net in nets.values():
                aliases.update((net or {}).get("aliases") or ())
        ports.add(int(_env(svc).get("MW_WEB_PORT", "6066")))
    for job in parsed["scrape_configs"]:
        for sd in job.get("dns_sd_configs") or ():
            for dns_name in sd["names"]:
                assert dns_name in aliases, f"prometheus discovers {dns_name!r}, no worker answers to it"
            assert sd["port"] in ports, f"prometheus scrapes port {sd['port']}, workers listen on {ports}"


def test_grafana_provisioning_is_mounted(compose):
    (graf,) = [s for s in compose["services"].values() if "grafana/grafana" in str(s.get("image", ""))]
    mounts = {target: _host_path(source) for source, target in _bind_mounts(graf)}
    assert mounts["/etc/grafana/provisioning"] == (REPO / "monitoring" / "grafana" / "provisioning").resolve()
    provider = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/marginwatch.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(t.startswith(path) and src.is_file() and src.suffix == ".json" for t, src in mounts.items()), \
        f"no dashboard mounted under {path}"


def test_dockerfile():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M), "base image must be python:3.11-slim"
    assert re.search(r"^ENTRYPOINT \[\"marginwatch\"\]", text, re.M)
    assert "pip install" in text
    for line in text.splitlines():
        m = re.match(r"COPY (\S+) ", line)
        if m and not m.group(1).startswith("--"):
            for src in m.group(1).split():
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"


def _compose_cli() -> list[str] | None:
    """A compose CLI that can run `config` (no daemon needed), or None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            proc = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        # compose v2 only ("Docker Compose version v2.x", or "dev" when built from source): v1
        # ("docker-compose version 1.29.2") does not know the compose specification's `name`
        if proc.returncode == 0 and "Docker Compose version" in proc.stdout and " version 1." not in proc.stdout:
            return cli
    return None


def test_docker_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose v2 CLI here: the file was checked by parsing only")
    proc = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
