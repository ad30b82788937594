"""The deployment files (deploy/: systemd, container, Kubernetes) and docs/operations.md.

They parse, agree with each other and with the code (ports, paths, secret names, the settings
model, the CLI), and the generated Kubernetes objects match the committed alerts/ and
dashboards/ exactly.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from certpilot.cli import build_parser
from certpilot.openbao import DEFAULT_TOKEN_ENV
from certpilot.settings import Settings, SlackSettings, WebhookSettings, settings_from_mapping

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "certpilot.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "certpilot.env.example"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
IGNOREFILE = DEPLOY / "container" / "Containerfile.dockerignore"
GENERATE = DEPLOY / "generate.py"
OPERATIONS = REPO / "docs" / "operations.md"

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def objects() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_all(path)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return find("Deployment", "certpilot")


def container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "certpilot")


def config_text() -> str:
    text = find("ConfigMap", "certpilot-config")["data"]["certpilot.yaml"]
    assert isinstance(text, str)
    return text


def config() -> Settings:
    return settings_from_mapping(yaml.safe_load(config_text()), "configmap.yaml: certpilot.yaml")


def mount_path(volume: str) -> str:
    return str(next(m["mountPath"] for m in container()["volumeMounts"] if m["name"] == volume))


def volume(name: str) -> dict[str, Any]:
    volumes = deployment()["spec"]["template"]["spec"]["volumes"]
    found: dict[str, Any] = next(v for v in volumes if v["name"] == name)
    return found


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def run_generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- Kubernetes: every file ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_parses_and_names_itself(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path}: no YAML document"
    for doc in docs:
        assert doc.get("apiVersion"), f"{path}: no apiVersion"
        assert doc.get("kind"), f"{path}: no kind"
        if path.name == "kustomization.yaml":
            assert doc["apiVersion"].startswith("kustomize.config.k8s.io/")
            assert doc["kind"] in {"Kustomization", "Component"}
            continue
        meta = doc.get("metadata") or {}
        assert isinstance(meta.get("name"), str) and meta["name"], f"{path}: no metadata.name"
        # No namespace transformer in the kustomization: each namespaced object names its own.
        if doc["kind"] not in CLUSTER_SCOPED:
            assert meta.get("namespace"), f"{path}: {doc['kind']} {meta['name']} has no namespace"


def test_kustomizations_list_every_manifest() -> None:
    covered: set[Path] = set()
    for kustomization in sorted(K8S.rglob("kustomization.yaml")):
        (doc,) = load_all(kustomization)
        here = kustomization.parent
        listed = {(here / r).resolve() for r in doc.get("resources", [])}
        present = {p.resolve() for p in here.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == present, f"{kustomization}: resources differ from the files beside it"
        covered |= listed
        for component in doc.get("components", []):
            assert (here / component / "kustomization.yaml").exists()
    assert covered == {p.resolve() for p in manifest_files()}
    # Components are opt-in: the main kustomization names each one (commented out) for users.
    main = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    for component in sorted((K8S / "components").iterdir()):
        assert f"components/{component.name}" in main


# -- generated files -------------------------------------------------------------------------------


def test_generated_files_are_current() -> None:
    result = run_generate("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_check_names_the_file_that_drifted_and_writing_fixes_it(tmp_path: Path) -> None:
    for pattern in ("alerts/*.rules.yml", "dashboards/*.json", "deploy/kubernetes/*.yaml"):
        for src in REPO.glob(pattern):
            dst = tmp_path / src.relative_to(REPO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    root = ["--root", str(tmp_path)]
    assert run_generate("--check", *root).returncode == 0
    dashboard = sorted((tmp_path / "dashboards").glob("*.json"))[0]
    dashboard.write_text(dashboard.read_text(encoding="utf-8") + " \n", encoding="utf-8")
    stale = run_generate("--check", *root)
    assert stale.returncode == 1
    assert "deploy/kubernetes/dashboards-configmap.yaml: differs" in stale.stdout
    assert "prometheusrule.yaml" not in stale.stdout
    assert run_generate(*root).returncode == 0
    assert run_generate("--check", *root).returncode == 0
    # Still byte-identical, trailing whitespace and all.
    (cm,) = load_all(tmp_path / "deploy/kubernetes/dashboards-configmap.yaml")
    assert cm["data"][dashboard.name].encode() == dashboard.read_bytes()


def test_missing_inputs_are_a_usage_error(tmp_path: Path) -> None:
    result = run_generate("--check", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "alerts/*.rules.yml: no such files" in result.stderr


def test_prometheusrule_groups_are_the_alert_files_groups() -> None:
    rule = find("PrometheusRule", "certpilot")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = [
        group
        for path in sorted((REPO / "alerts").glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    ]
    assert rule["spec"]["groups"] == expected
    alerts = {r["alert"] for g in expected for r in g["rules"] if "alert" in r}
    assert {"CertpilotInventoryDown", "ScannerSourceDown", "CTLogUnreachable"} <= alerts


def test_dashboards_configmap_holds_every_dashboard_byte_for_byte() -> None:
    cm = find("ConfigMap", "certpilot-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((REPO / "dashboards").glob("*.json"))
    assert files
    assert set(cm["data"]) == {p.name for p in files}
    for path in files:
        assert cm["data"][path.name].encode("utf-8") == path.read_bytes(), path.name
        json.loads(cm["data"][path.name])


# -- Kubernetes: the objects agree -------------------------------------------------------------


def test_configmap_config_validates() -> None:
    settings = config()
    # Shared by the replicas: PostgreSQL, its URL (with the password) from a Secret.
    assert settings.store.url_env == "CERTPILOT_DB_URL"
    assert settings.http.host == "0.0.0.0"  # a pod must listen on its own address
    assert settings.http.token_file, "/metrics is reachable in the cluster: it needs a token"
    assert settings.remediation.webhook.token_file
    assert [k["name"] for k in settings.targets.kubernetes] == ["in-cluster"]


def test_configmap_config_passes_config_check(tmp_path: Path) -> None:
    path = tmp_path / "certpilot.yaml"
    path.write_text(config_text(), encoding="utf-8")
    env = {**os.environ, "CERTPILOT_DB_URL": "postgresql+psycopg://cp:s3cret@db.test:5432/cp"}
    result = subprocess.run(
        [sys.executable, "-m", "certpilot.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        ": ok (" in result.stdout and "store postgresql+psycopg://cp:***@db.test" in result.stdout
    )
    assert "s3cret" not in result.stdout


def test_deployment_probes_port_and_config_path() -> None:
    dep = deployment()
    assert dep["spec"]["replicas"] == 3
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": config().http.port}

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return int(ports[port] if isinstance(port, str) else port)

    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe_port(c[probe]) == config().http.port
    # The service runs the ConfigMap's file.
    assert c["args"][:2] == ["run", "--config"]
    config_path = Path(c["args"][2])
    assert str(config_path.parent) == mount_path("config")
    assert volume("config")["configMap"]["name"] == "certpilot-config"
    assert config_path.name in find("ConfigMap", "certpilot-config")["data"]
    # Shutdown: at least the service's 30 s grace for a job in flight.
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_deployment_security_context() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    c = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    # A read-only root needs somewhere to write.
    assert mount_path("tmp") == "/tmp"


def _mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity)
    assert m, quantity
    return float(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def test_resources_fit_about_200_mib_per_process() -> None:
    res = container()["resources"]
    processes = max(1, config().scan.workers)  # 1: in-process probing, else main + workers
    if processes > 1:
        processes += 1
    assert _mebibytes(res["requests"]["memory"]) >= 200 * processes * 0.9
    assert _mebibytes(res["limits"]["memory"]) >= _mebibytes(res["requests"]["memory"])
    assert res["requests"]["cpu"]


def test_secrets_reach_the_paths_the_config_names() -> None:
    settings = config()
    tokens = mount_path("tokens")
    secret = volume("tokens")["secret"]["secretName"]
    token_file = settings.http.token_file
    webhook_file = settings.remediation.webhook.token_file
    assert token_file and webhook_file
    for path in (token_file, webhook_file):
        assert str(Path(path).parent) == tokens
    # The ServiceMonitor sends the very token certpilot reads as http.token_file.
    endpoint = find("ServiceMonitor", "certpilot")["spec"]["endpoints"][0]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == {
        "name": secret,
        "key": Path(token_file).name,
    }
    # The database comes from the libpq variables of a Secret; Slack's from the names the
    # settings default to (slack.enabled is off in the ConfigMap, so they are optional).
    c = container()
    env = {e["name"]: e for e in c["env"]}
    db = env["CERTPILOT_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert db == {"name": "certpilot-db", "key": "url"}
    slack = SlackSettings()
    for name in (slack.bot_token_env, slack.signing_secret_env):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "certpilot-slack" and ref["optional"] is True
    assert not settings.slack.enabled


def test_service_servicemonitor_and_pdb_select_the_pods() -> None:
    dep = deployment()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert matches(dep["spec"]["selector"]["matchLabels"], pod_labels)
    svc = find("Service", "certpilot")
    assert matches(svc["spec"]["selector"], pod_labels)
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    assert port["port"] == config().http.port
    monitor = find("ServiceMonitor", "certpilot")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert matches(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    pdb = find("PodDisruptionBudget", "certpilot")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] < dep["spec"]["replicas"]


def test_rbac_scanner_reads_only_and_writer_is_optional() -> None:
    account = find("ServiceAccount", "certpilot")
    assert deployment()["spec"]["template"]["spec"]["serviceAccountName"] == "certpilot"
    subject = {
        "kind": "ServiceAccount",
        "name": "certpilot",
        "namespace": account["metadata"]["namespace"],
    }
    scanner = find("ClusterRole", "certpilot-scanner")
    verbs_by_resource = {
        res: set(rule["verbs"]) for rule in scanner["rules"] for res in rule["resources"]
    }
    assert {"secrets", "configmaps"} <= set(verbs_by_resource)
    for res, verbs in verbs_by_resource.items():
        assert verbs == {"get", "list", "watch"}, res
    binding = find("ClusterRoleBinding", "certpilot-scanner")
    assert binding["roleRef"]["name"] == "certpilot-scanner"
    assert binding["subjects"] == [subject]
    # The writer lives in a component the main kustomization does not enable by default.
    main = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert not main.get("components")
    writer = find("Role", "certpilot-secret-writer")
    (rule,) = writer["rules"]
    assert rule["resources"] == ["secrets"]
    assert {"get", "create", "update", "patch"} <= set(rule["verbs"])
    assert set(rule["verbs"]) <= {"get", "create", "update", "patch", "delete"}
    writer_binding = find("RoleBinding", "certpilot-secret-writer")
    assert writer_binding["metadata"]["namespace"] == writer["metadata"]["namespace"]
    assert writer_binding["subjects"] == [subject]


# -- systemd ---------------------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def unit_values(key: str) -> list[str]:
    """Every value of a directive systemd allows more than once (configparser keeps the last)."""
    return [
        line.partition("=")[2]
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{key}=")
    ]


def test_systemd_unit_runs_certpilot_hardened() -> None:
    u = unit()
    assert {"Unit", "Service", "Install"} <= set(u.sections())
    s = u["Service"]
    argv = shlex.split(s["ExecStart"])
    assert Path(argv[0]).name == "certpilot"
    assert argv[1:] == ["run", "--config", "/etc/certpilot/certpilot.yaml"]
    assert "certpilot run --config" in s["ExecStart"]
    assert s["User"] == "certpilot"
    assert s["StateDirectory"] == "certpilot"
    assert s["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert s[key] == "yes", key
    assert s["CapabilityBoundingSet"] == ""  # binds 9795: no capability needed
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["SystemCallFilter"] == "@system-service"
    assert int(s["LimitNOFILE"]) > 10_000  # scan.concurrency goes up to 10,000
    assert s["Restart"] == "on-failure"
    assert float(s["TimeoutStopSec"].removesuffix("s")) >= 30
    assert "/var/lib/certpilot" in unit_values("ReadWritePaths")
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_credentials_match_the_documented_paths() -> None:
    names = {v.partition(":")[0] for v in unit_values("LoadCredential")}
    assert names == {"metrics-token", "webhook-token"}
    text = UNIT.read_text(encoding="utf-8")
    for name in names:
        # certpilot.yaml cannot expand %d: the comment shows the resolved path.
        assert f"/run/credentials/certpilot.service/{name}" in text
    assert unit()["Service"]["EnvironmentFile"] == "-/etc/certpilot/certpilot.env"


def test_env_example_names_the_variables_certpilot_reads() -> None:
    names = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    slack = SlackSettings()
    expected = {
        slack.bot_token_env,
        slack.signing_secret_env,
        slack.app_token_env,
        WebhookSettings().token_env,
        DEFAULT_TOKEN_ENV,
        "PGPASSWORD",
    }
    assert expected <= names


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: use this environment's certpilot.
    program = Path(sys.executable).parent / "certpilot"
    if not program.exists():
        pytest.skip(f"no certpilot script next to {sys.executable}")
    copy = tmp_path / "certpilot.service"
    copy.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/certpilot/bin/certpilot", str(program)),
        encoding="utf-8",
    )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Unknown keys and bad values are only warnings (exit 0): fail on any line about the unit.
    complaints = [line for line in result.stderr.splitlines() if copy.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


# -- container -------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_runs_certpilot_as_non_root() -> None:
    ins = instructions()
    last = {word: rest for word, rest in ins}  # the final stage's values win
    assert json.loads(last["ENTRYPOINT"]) == ["certpilot"]
    cmd = json.loads(last["CMD"])
    assert cmd == ["run", "--config", "/etc/certpilot/certpilot.yaml"]
    assert cmd == container()["args"]  # the Deployment runs what the image runs
    uid = last["USER"].partition(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert int(uid) == deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert "/healthz" in last["HEALTHCHECK"] and "python" in last["HEALTHCHECK"]
    base = [rest for word, rest in ins if word == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert base and "3.11" in base[0] and "slim" in base[0]
    # No secret is baked in.
    for word, rest in ins:
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|SECRET|PASSWORD)", rest, re.I), rest


def test_containerfile_copies_every_package_the_wheel_needs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = {
        src
        for word, rest in instructions()
        if word == "COPY"
        for src in [a for a in rest.split() if not a.startswith("--")][:-1]
    }
    ignore = IGNOREFILE.read_text(encoding="utf-8").splitlines()
    for name in [*packages, "pyproject.toml", pyproject["project"]["readme"]]:
        assert name in copied, f"the Containerfile does not COPY {name}"
        assert f"!{name}/" in ignore or f"!{name}" in ignore, f"{IGNOREFILE.name} drops {name}"


# -- docs/operations.md ----------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def certpilot_argv(line: str) -> list[str] | None:
    """The arguments of the ``certpilot`` command in a shell line (also after ``kubectl exec
    ... --`` or ``podman exec NAME``), or ``None``."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return None
    if argv and Path(argv[0]).name == "certpilot":
        return argv[1:]
    verbs = subcommands(build_parser())
    for i, word in enumerate(argv[:-1]):
        if Path(word).name == "certpilot" and argv[i + 1] in verbs:
            return argv[i + 1 :]
    return None


def test_operations_guide_commands_exist() -> None:
    """Every command line in a code block parses in full; inline code that starts with
    ``certpilot`` names real verbs and actions (it may leave out required options)."""
    text = OPERATIONS.read_text(encoding="utf-8")
    parser = build_parser()
    lines: list[str] = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    full = [(line, argv) for line in lines if (argv := certpilot_argv(line)) is not None]
    assert len(full) >= 10
    assert {"config", "db", "audit"} <= {argv[0] for _, argv in full if argv}
    for line, argv in full:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/operations.md: not a certpilot command: {line}")
        for name, value in vars(args).items():
            if name.endswith("_command"):
                assert value is not None, line
    spans = re.findall(r"`(certpilot [^`]+)`", text.replace("\n", " "))
    assert spans
    for span in spans:
        current = parser
        for word in [w for w in shlex.split(span)[1:] if not w.startswith("-")]:
            verbs = subcommands(current)
            if not verbs:
                break
            assert word in verbs, f"docs/operations.md: `{span}`: no such command {word!r}"
            current = verbs[word]


def test_operations_guide_alerts_exist() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    alerts = {
        r["alert"]
        for path in (REPO / "alerts").glob("*.rules.yml")
        for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    not_alerts = {o["kind"] for o in objects()} | set(unit()["Service"]) | {"AlertmanagerConfig"}
    named = {
        w
        for w in re.findall(r"`([A-Za-z0-9]+)`", text)
        if re.fullmatch(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*", w)
        and sum(ch.isupper() for ch in w) >= 2
    }
    assert {"CertpilotInventoryDown", "ScannerSourceDown", "CTLogUnreachable"} <= named
    assert named - not_alerts <= alerts, named - not_alerts - alerts


def test_operations_guide_links_resolve() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [link for link in links if "://" not in link]
    assert relative
    for link in relative:
        assert (OPERATIONS.parent / link).exists(), link
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, anchor
