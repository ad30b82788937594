"""The ``files`` deploy target and its command runner, on real files and real processes.

Disk full is tested twice: on a real 64 KiB tmpfs when this process may mount one (root, as in
CI), and always by making ``os.write`` fail with ``ENOSPC`` part-way through a deploy.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from certpilot.domain.errors import ConfigError
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import DeployError, DeployReceipt, IssuedCertificate
from certpilot.localca import Issued, LocalCA, write_key
from remediator.targets import TARGET_TYPES, build_target
from remediator.targets.command import default_env, redact, run_command
from remediator.targets.files import (
    KEY_MODE,
    PREV_SUFFIX,
    FilesTarget,
    FilesTargetConfig,
    config_from_mapping,
)


def issued(i: Issued) -> IssuedCertificate:
    return IssuedCertificate(chain_pem=i.chain_pem(), key_pem=i.key_pem(), serial=i.serial_hex)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that may never reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


class Env:
    """A directory with a cert and key as a server would have them, and a target for it."""

    def __init__(self, root: Path, ca: LocalCA, now: datetime) -> None:
        self.root = root
        self.ca = ca
        self.now = now
        self.dir = root / "tls"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "tls.crt"
        self.key = self.dir / "tls.key"
        self.reloads = root / "reloads.log"
        self.old = ca.issue(["old.test"], now)

    def install_old(self) -> None:
        self.cert.write_bytes(self.old.chain_pem())
        self.cert.chmod(0o644)
        write_key(self.key, self.old.key_pem())

    def reload_cmd(self, exit_code: int = 0) -> tuple[str, ...]:
        # Records each reload so tests can count them; "$0" is the log path.
        return ("/bin/sh", "-c", f'echo reload >> "$0"; exit {exit_code}', str(self.reloads))

    def reload_count(self) -> int:
        return len(self.reloads.read_text().splitlines()) if self.reloads.exists() else 0

    def target(self, **overrides: Any) -> FilesTarget:
        options: dict[str, Any] = {
            "cert_path": self.cert,
            "key_path": self.key,
            "test_command": ("true",),
            "reload_command": self.reload_cmd(),
            "timeout": 10.0,
            "endpoints": (EndpointTarget("old.test", 443),),
        }
        options.update(overrides)
        return FilesTarget("web", FilesTargetConfig(**options))

    def new(self, name: str = "new.test") -> IssuedCertificate:
        return issued(self.ca.issue([name], self.now))

    def listing(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir())


@pytest.fixture
def env(tmp_path: Path, ca: LocalCA, now: datetime) -> Env:
    return Env(tmp_path, ca, now)


# -- atomic write, modes ----------------------------------------------------------------------


async def test_first_deploy_creates_files_with_modes(env: Env) -> None:
    new = env.new()
    receipt = await env.target().deploy(new)
    assert env.cert.read_bytes() == new.chain_pem.strip() + b"\n"
    assert env.key.read_bytes() == new.key_pem.strip() + b"\n"
    assert mode_of(env.key) == 0o600 == KEY_MODE
    assert mode_of(env.cert) == 0o644
    assert receipt.target == "web"
    assert receipt.serial == new.serial
    assert receipt.state["cert.prev"] == receipt.state["key.prev"] == ""  # created, not replaced
    assert env.listing() == ["tls.crt", "tls.key"]  # no temp file, no prev
    assert env.reload_count() == 1


async def test_temp_files_never_wider_than_final_mode(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is created with its final mode (O_EXCL, 0600 for the key) and checked with
    fstat the moment it exists: there is no window where a key is readable by others."""
    env.install_old()
    created: list[tuple[str, int, int, int]] = []  # name, flags, requested mode, actual mode
    real_open = os.open

    def recording_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd = real_open(path, flags, mode, **kw)
        if flags & os.O_CREAT and str(path).startswith(str(env.dir)):
            created.append((Path(path).name, flags, mode, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", recording_open)
    old_umask = os.umask(0)  # the worst case: a umask that narrows nothing
    try:
        await env.target().deploy(env.new())
    finally:
        os.umask(old_umask)
    key_temps = [c for c in created if c[0].startswith(".tls.key.")]
    cert_temps = [c for c in created if c[0].startswith(".tls.crt.")]
    assert key_temps and cert_temps
    for _name, flags, _requested, _actual in created:
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
    for _name, _flags, requested, actual in key_temps:
        assert requested == 0o600 and actual == 0o600
    for _name, _flags, requested, actual in cert_temps:
        assert requested == 0o644 and actual == 0o644
    assert mode_of(env.key) == 0o600
    assert mode_of(env.cert) == 0o644
    assert mode_of(env.key.with_name("tls.key" + PREV_SUFFIX)) == 0o600


async def test_umask_cannot_widen_and_fchmod_sets_exact_mode(env: Env) -> None:
    old_umask = os.umask(0o077)  # would leave a 0644 cert at 0600 without the fchmod
    try:
        await env.target(cert_mode=0o640).deploy(env.new())
    finally:
        os.umask(old_umask)
    assert mode_of(env.cert) == 0o640
    assert mode_of(env.key) == 0o600


async def test_previous_version_kept_with_same_bytes_and_mode(env: Env) -> None:
    env.install_old()
    env.cert.chmod(0o640)  # an unusual mode must survive in the kept copy
    receipt = await env.target().deploy(env.new())
    prev_cert = env.dir / f"tls.crt{PREV_SUFFIX}"
    prev_key = env.dir / f"tls.key{PREV_SUFFIX}"
    assert prev_cert.read_bytes() == env.old.chain_pem()
    assert prev_key.read_bytes() == env.old.key_pem()
    assert mode_of(prev_cert) == 0o640
    assert mode_of(prev_key) == 0o600
    assert receipt.state["cert.prev"] == str(prev_cert)
    assert receipt.state["key.prev"] == str(prev_key)
    assert sorted(env.listing()) == sorted(
        ["tls.crt", "tls.key", f"tls.crt{PREV_SUFFIX}", f"tls.key{PREV_SUFFIX}"]
    )


async def test_separate_chain_and_fullchain_files(env: Env) -> None:
    chain = env.dir / "chain.pem"
    full = env.dir / "fullchain.pem"
    new_issued = env.ca.issue(["new.test"], env.now)
    await env.target(chain_path=chain, fullchain_path=full).deploy(issued(new_issued))
    from cryptography.hazmat.primitives.serialization import Encoding

    assert env.cert.read_bytes() == new_issued.cert_pem()  # leaf only: the chain is separate
    assert chain.read_bytes() == b"".join(c.public_bytes(Encoding.PEM) for c in new_issued.chain)
    assert full.read_bytes() == new_issued.chain_pem()
    assert {mode_of(p) for p in (env.cert, chain, full)} == {0o644}


async def test_symlinked_path_is_written_through(env: Env) -> None:
    env.install_old()
    archive = env.root / "archive"
    archive.mkdir()
    real = archive / "cert1.pem"
    env.cert.rename(real)
    env.cert.symlink_to(real)
    new = env.new()
    await env.target().deploy(new)
    assert env.cert.is_symlink()
    assert real.read_bytes() == new.chain_pem.strip() + b"\n"


# -- rollback -------------------------------------------------------------------------------------


async def test_rollback_restores_bytes_and_modes_and_reloads(env: Env) -> None:
    env.install_old()
    env.cert.chmod(0o640)
    target = env.target()
    receipt = await target.deploy(env.new())
    assert mode_of(env.cert) == 0o644
    await target.rollback(receipt)
    assert env.cert.read_bytes() == env.old.chain_pem()
    assert env.key.read_bytes() == env.old.key_pem()
    assert mode_of(env.cert) == 0o640
    assert mode_of(env.key) == 0o600
    assert env.reload_count() == 2  # deploy + rollback
    assert not [n for n in env.listing() if "certpilot-tmp" in n]


async def test_temp_files_left_by_a_killed_deploy_are_removed(env: Env) -> None:
    env.install_old()
    stale = [env.dir / ".tls.key.certpilot-tmp.0123456789ab"]
    stale.append(env.dir / f".tls.key{PREV_SUFFIX}.certpilot-tmp.0123456789ab")
    for p in stale:
        write_key(p, b"half a key")
    await env.target().deploy(env.new())
    assert not [n for n in env.listing() if "certpilot-tmp" in n]


async def test_rollback_removes_files_the_deploy_created(env: Env) -> None:
    target = env.target()
    receipt = await target.deploy(env.new())
    await target.rollback(receipt)
    assert env.listing() == []


async def test_rollback_refuses_after_a_later_deploy(env: Env) -> None:
    env.install_old()
    target = env.target()
    first = await target.deploy(env.new("first.test"))
    second_cert = env.new("second.test")
    await target.deploy(second_cert)
    with pytest.raises(DeployError) as e:
        await target.rollback(first)
    assert e.value.step == "rollback"
    assert "changed since the deploy" in e.value.message
    assert env.cert.read_bytes() == second_cert.chain_pem.strip() + b"\n"


async def test_rollback_rejects_foreign_or_empty_receipts(env: Env) -> None:
    target = env.target()
    with pytest.raises(DeployError, match="receipt is for target"):
        await target.rollback(DeployReceipt(target="other", serial="1"))
    with pytest.raises(DeployError, match="records no files"):
        await target.rollback(DeployReceipt(target="web", serial="1"))


# -- failing commands ---------------------------------------------------------------------------


async def test_failing_test_command_restores_and_never_reloads(env: Env) -> None:
    env.install_old()
    target = env.target(test_command=("/bin/sh", "-c", "echo 'emerg: key mismatch' >&2; exit 3"))
    with pytest.raises(DeployError) as e:
        await target.deploy(env.new())
    assert e.value.step == "test"
    assert e.value.target == "web"
    assert "exited with 3" in e.value.message
    assert "emerg: key mismatch" in e.value.message
    assert env.cert.read_bytes() == env.old.chain_pem()
    assert env.key.read_bytes() == env.old.key_pem()
    assert mode_of(env.key) == 0o600
    assert env.reload_count() == 0


async def test_failing_reload_restores_and_reloads_again(env: Env) -> None:
    env.install_old()
    target = env.target(reload_command=env.reload_cmd(exit_code=1))
    with pytest.raises(DeployError) as e:
        await target.deploy(env.new())
    assert e.value.step == "reload"
    assert env.cert.read_bytes() == env.old.chain_pem()
    assert env.key.read_bytes() == env.old.key_pem()
    assert env.reload_count() == 2  # the failed reload, then the best-effort one after restore


async def test_first_deploy_failing_test_removes_created_files(env: Env) -> None:
    with pytest.raises(DeployError, match="test"):
        await env.target(test_command=("false",)).deploy(env.new())
    assert env.listing() == []


async def test_missing_command_is_a_clear_error(env: Env) -> None:
    env.install_old()
    with pytest.raises(DeployError) as e:
        await env.target(test_command=("no-such-nginx-binary", "-t")).deploy(env.new())
    assert e.value.step == "test"
    assert "cannot run `no-such-nginx-binary -t`" in e.value.message
    assert env.cert.read_bytes() == env.old.chain_pem()


async def test_test_command_timeout_kills_and_restores(env: Env) -> None:
    env.install_old()
    target = env.target(test_command=("sleep", "60"), timeout=0.5, kill_grace=0.5)
    started = time.monotonic()
    with pytest.raises(DeployError) as e:
        await target.deploy(env.new())
    assert time.monotonic() - started < 5
    assert e.value.step == "test"
    assert "timed out" in e.value.message
    assert env.cert.read_bytes() == env.old.chain_pem()


async def test_cancelled_deploy_restores_and_kills_the_command(env: Env) -> None:
    env.install_old()
    pidfile = env.root / "pid"
    target = env.target(
        test_command=("/bin/sh", "-c", 'echo $$ > "$0"; exec sleep 60', str(pidfile))
    )
    task = asyncio.ensure_future(target.deploy(env.new()))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)
    assert env.cert.read_bytes() == env.old.chain_pem()
    assert env.key.read_bytes() == env.old.key_pem()


async def test_key_material_never_in_errors_or_receipts(env: Env) -> None:
    env.install_old()
    new = env.new()
    # A careless hook that dumps the key into its error output.
    target = env.target(test_command=("/bin/sh", "-c", 'cat "$0" >&2; exit 1', str(env.key)))
    with pytest.raises(DeployError) as e:
        await target.deploy(new)
    body = new.key_pem.decode().splitlines()[1]
    assert "PRIVATE KEY" not in str(e.value)
    assert body not in str(e.value)
    assert "[private key redacted]" in str(e.value)
    receipt = await env.target().deploy(new)
    assert "PRIVATE" not in repr(receipt) and body not in repr(receipt)
    assert body not in repr(new)  # IssuedCertificate hides key_pem from repr


# -- the command runner ---------------------------------------------------------------------------


async def test_run_command_timeout_kills_process_group_within_bound() -> None:
    started = time.monotonic()
    result = await run_command(["sleep", "60"], timeout=0.5, kill_grace=0.5)
    assert time.monotonic() - started < 3
    assert result.timed_out and not result.ok
    assert "timed out after" in result.describe()


async def test_timeout_escalates_to_sigkill_and_reaches_grandchildren() -> None:
    # The shell and its background child both ignore SIGTERM: only SIGKILL to the group works.
    script = 'trap "" TERM; sleep 60 & echo $!; wait'
    started = time.monotonic()
    result = await run_command(["/bin/sh", "-c", script], timeout=0.5, kill_grace=0.5)
    assert time.monotonic() - started < 4
    assert result.timed_out
    grandchild = int(result.stdout.split()[0])
    for _ in range(50):
        if not alive(grandchild):
            break
        await asyncio.sleep(0.02)
    assert not alive(grandchild)


async def test_run_command_environment_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTPILOT_TEST_SECRET", "hunter2")
    probe = ["/bin/sh", "-c", 'echo "${CERTPILOT_TEST_SECRET:-unset} $PATH"']
    result = await run_command(probe, timeout=5)
    assert result.ok
    assert result.stdout.split() == ["unset", default_env()["PATH"]]
    given = await run_command(probe, timeout=5, env={"CERTPILOT_TEST_SECRET": "x", "PATH": "/bin"})
    assert given.stdout.split() == ["x", "/bin"]


async def test_run_command_keeps_a_bounded_tail() -> None:
    result = await run_command(
        ["/bin/sh", "-c", "yes line | head -n 100000 >&2; echo last >&2; exit 1"],
        timeout=10,
        tail_bytes=1000,
    )
    assert result.returncode == 1
    assert len(result.stderr) <= 1000
    assert result.stderr.rstrip().endswith("last")


def test_redact_handles_truncated_key_blocks() -> None:
    text = "x\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\ny"
    assert redact(text) == "x\n[private key redacted]\ny"
    assert redact("AAAA\n-----END EC PRIVATE KEY-----\ny") == "[private key redacted]\ny"
    assert redact("a\n-----BEGIN RSA PRIVATE KEY-----\nAAAA") == "a\n[private key redacted]"


# -- disk full, permissions --------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs; skipped where mounting is not permitted (non-root): the simulated
    ENOSPC test below covers the same path everywhere."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); ENOSPC is simulated")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


async def test_disk_full_on_real_tmpfs_leaves_old_files(
    tiny_fs: Path, ca: LocalCA, now: datetime
) -> None:
    env = Env(tiny_fs, ca, now)
    env.install_old()
    target = env.target()
    filler = fill(tiny_fs)
    with pytest.raises(DeployError) as e:
        await target.deploy(env.new())
    assert e.value.step == "write"
    assert e.value.message == f"{env.cert}: No space left on device"
    assert env.cert.read_bytes() == env.old.chain_pem()
    assert env.key.read_bytes() == env.old.key_pem()
    assert mode_of(env.key) == 0o600
    assert not [n for n in env.listing() if "certpilot-tmp" in n]
    assert env.reload_count() == 0
    filler.unlink()  # space again: the same deploy now goes through
    new = env.new()
    receipt = await target.deploy(new)
    assert receipt.serial == new.serial


async def test_disk_full_midway_simulated_restores_every_file(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing the key, after the certificate file was already replaced."""
    env.install_old()
    real_write = os.write

    def failing_write(fd: int, data: Any) -> int:
        if ".tls.key.certpilot-tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(DeployError) as e:
        await env.target().deploy(env.new())
    monkeypatch.undo()
    assert e.value.step == "write"
    assert e.value.message == f"{env.key}: No space left on device"
    assert env.cert.read_bytes() == env.old.chain_pem()
    assert env.key.read_bytes() == env.old.key_pem()
    assert not [n for n in env.listing() if "certpilot-tmp" in n]
    assert env.reload_count() == 0


async def test_permission_denied_is_a_write_error_naming_the_path(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.install_old()
    real_open = os.open

    def denying_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if ".tls.crt.certpilot-tmp" in str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", denying_open)
    with pytest.raises(DeployError) as e:
        await env.target().deploy(env.new())
    monkeypatch.undo()
    assert e.value.step == "write"
    assert e.value.message == f"{env.cert}: Permission denied"
    assert env.cert.read_bytes() == env.old.chain_pem()


async def test_unknown_owner_is_a_write_error_before_anything_changes(env: Env) -> None:
    env.install_old()
    with pytest.raises(DeployError, match="unknown user or group") as e:
        await env.target(owner="no-such-user-certpilot").deploy(env.new())
    assert e.value.step == "write"
    assert env.listing() == ["tls.crt", "tls.key"]


async def test_configured_owner_and_group_are_applied(env: Env) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    await env.target(owner="nobody", group=0).deploy(env.new())
    import pwd

    assert env.key.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert env.key.stat().st_gid == 0
    assert mode_of(env.key) == 0o600


async def test_garbage_is_refused_before_touching_files(env: Env) -> None:
    env.install_old()
    target = env.target()
    with pytest.raises(DeployError) as e:
        await target.deploy(IssuedCertificate(chain_pem=b"not a cert", key_pem=b"nope"))
    assert e.value.step == "validate"
    good = env.new()
    with pytest.raises(DeployError, match="no PEM private key"):
        await target.deploy(IssuedCertificate(chain_pem=good.chain_pem, key_pem=b""))
    assert env.listing() == ["tls.crt", "tls.key"]
    assert env.cert.read_bytes() == env.old.chain_pem()


# -- configuration and the table -------------------------------------------------------------------


def test_table_builds_a_files_target_from_yaml_options(tmp_path: Path) -> None:
    assert set(TARGET_TYPES) == {"files", "openbao_kv", "k8s_secret"}
    target = build_target(
        "files",
        "edge",
        {
            "cert_path": str(tmp_path / "c.pem"),
            "key_path": str(tmp_path / "k.pem"),
            "cert_mode": "0640",
            "test_command": ["nginx", "-t"],
            "reload_command": ["nginx", "-s", "reload"],
            "timeout": "45s",
            "env": {"PATH": "/usr/sbin:/usr/bin"},
            "endpoints": ["edge.example.com:8443", {"host": "edge.example.com", "address": "::1"}],
        },
    )
    assert isinstance(target, FilesTarget)
    c = target.config
    assert c.cert_mode == 0o640
    assert c.test_command == ("nginx", "-t")
    assert c.timeout == 45.0
    assert list(target.endpoints()) == [
        EndpointTarget("edge.example.com", 8443),
        EndpointTarget("edge.example.com", 443, address="::1"),
    ]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"key_path": "/k"}, "targets.cert_path"),
        (
            {"cert_path": "/c", "key_path": "/k", "reload_command": "nginx -s reload"},
            "targets.reload_command",
        ),
        ({"cert_path": "/c", "key_path": "/k", "timeout": "soon"}, "targets.timeout"),
        ({"cert_path": "/c", "key_path": "/k", "endpoints": ["a:b:c:d"]}, "targets.endpoints[0]"),
        ({"cert_path": "/c", "key_path": "/k", "cert_mode": "rw"}, "targets.cert_mode"),
        ({"cert_path": "/c", "key_path": "/k", "colour": "red"}, "targets.colour"),
        ({"cert_path": "/c", "key_path": "/c"}, "targets"),
        ({"cert_path": "/c", "key_path": "/k", "cert_mode": "0666"}, "targets"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_mapping(options, source="certpilot.yaml")
    assert e.value.source == "certpilot.yaml"
    assert e.value.field == field


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="one of files") as e:
        build_target("ftp", "x", {})
    assert e.value.field == "targets.kind"
