"""scanner/files.py against real files written with the embedded local CA."""

from __future__ import annotations

import base64
import errno
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

import scanner.files as files
from certpilot.domain.judge import JudgePolicy
from certpilot.domain.model import FileTarget, Observation
from certpilot.domain.problems import ProblemCode
from certpilot.localca import Issued, LocalCA
from scanner.files import MAX_FILE_BYTES, expand, scan_file_target

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
P = ProblemCode


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA("Files Test", NOW)


@pytest.fixture(scope="module")
def rsa_ca() -> LocalCA:
    # SHA-1 fixtures need an RSA issuer (see certpilot.localca._sign_sha1).
    return LocalCA("Files RSA", NOW, intermediate_lifetime=None, key_kind="RSA", key_bits=2048)


@pytest.fixture(scope="module")
def leaf(ca: LocalCA) -> Issued:
    return ca.issue(["www.example.test"], NOW)


def scan(pattern: Path | str, **kw: object) -> list[Observation]:
    env = kw.pop("env", {})
    assert isinstance(env, dict)
    target = FileTarget(str(pattern), **kw)  # type: ignore[arg-type]
    return scan_file_target(target, NOW, env=env)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def p12(issued: Issued, password: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(b"www", issued.key, issued.cert, issued.chain, enc)


def key_secrets(issued: Issued) -> list[str]:
    """Forms in which the private key could leak into an observation."""
    pem = issued.key_pem()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    raw = base64.b64decode(body)
    return [body, body[:40], raw.hex()[:64], repr(raw[:32])[2:-1], "PRIVATE KEY-----"]


def assert_no_key(observations: list[Observation], *issued: Issued) -> None:
    text = "\n".join(repr(o) + json.dumps(o.to_dict()) for o in observations)
    for i in issued:
        for secret in key_secrets(i):
            assert secret not in text


def one_line(o: Observation) -> str:
    assert o.error is not None
    assert "\n" not in o.error and "\r" not in o.error
    return o.error


# --- PEM ----------------------------------------------------------------------------------


def test_pem_bundle_leaf_and_intermediate(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "fullchain.pem", leaf.chain_pem() + leaf.key_pem())
    target = FileTarget(str(path), labels={"team": "web"})
    obs = scan_file_target(target, NOW, env={})

    assert [o.ref for o in obs] == [f"file://{path}#0", f"file://{path}#1"]
    first, second = obs
    assert first.source == "file" and first.target == f"file:{path}"
    assert first.observed_at == NOW and first.error is None
    assert first.healthy and second.healthy
    assert first.leaf is not None and first.leaf.subject_cn == "www.example.test"
    assert second.leaf is not None and second.leaf.is_ca
    assert [c.subject_cn for c in first.chain] == ["www.example.test", "Files Test Intermediate CA"]
    assert first.chain == second.chain
    assert dict(first.labels) == {"team": "web"}
    assert first.duration_seconds >= 0
    json.dumps([o.to_dict() for o in obs])  # the JSON contract still serialises
    assert_no_key(obs, leaf)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"not_before": NOW - timedelta(days=100), "lifetime": timedelta(days=30)}, P.EXPIRED),
        ({"not_before": NOW + timedelta(days=2)}, P.NOT_YET_VALID),
        # 10 of 90 days left: under a third of the lifetime and under 30 days.
        ({"not_before": NOW - timedelta(days=80), "lifetime": timedelta(days=90)}, P.EXPIRING),
        ({"key_kind": "RSA", "key_bits": 1024}, P.WEAK_KEY),
    ],
)
def test_judged_problems(
    tmp_path: Path, ca: LocalCA, kwargs: dict[str, object], code: ProblemCode
) -> None:
    issued = ca.issue(["bad.example.test"], NOW, **kwargs)  # type: ignore[arg-type]
    path = write(tmp_path / "cert.crt", issued.cert_pem())
    (o,) = scan(path)
    assert o.codes == (code,)
    assert o.error is None and o.leaf is not None


def test_expiring_is_relative_and_absolute(tmp_path: Path, ca: LocalCA) -> None:
    # 40 of 398 days left: under a third of the lifetime but over 30 days, so not yet.
    start = NOW - timedelta(days=358)
    issued = ca.issue(["long.test"], NOW, not_before=start, lifetime=timedelta(days=398))
    (o,) = scan(write(tmp_path / "long.pem", issued.cert_pem()))
    assert o.healthy
    # 5 of 6 days left of a short-lived certificate: under 30 days but most of its life ahead.
    short = ca.issue(["short.test"], NOW, lifetime=timedelta(days=6))
    (o,) = scan(write(tmp_path / "short.pem", short.cert_pem()))
    assert o.healthy


def test_sha1_signature(tmp_path: Path, rsa_ca: LocalCA) -> None:
    issued = rsa_ca.issue(["sha1.test"], NOW, hash_alg=hashes.SHA1())
    (o,) = scan(write(tmp_path / "sha1.pem", issued.cert_pem()))
    assert o.codes == (P.WEAK_SIGNATURE,)


def test_policy_is_passed_to_the_judge(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "c.pem", leaf.cert_pem())
    strict = JudgePolicy(expiring_fraction=None, expiring_days=365)
    (o,) = scan_file_target(FileTarget(str(path)), NOW, env={}, policy=strict)
    assert o.codes == (P.EXPIRING,)


def test_corrupted_block_between_good_ones(tmp_path: Path, ca: LocalCA, leaf: Issued) -> None:
    other = ca.issue(["other.test"], NOW)
    bad = leaf.cert_pem().replace(b"M", b"!", 3)  # not base64 any more
    path = write(tmp_path / "bundle.pem", leaf.cert_pem() + bad + other.cert_pem())
    obs = scan(path)
    assert [o.ref for o in obs] == [f"file://{path}#{i}" for i in range(3)]
    assert obs[0].healthy and obs[2].healthy
    assert obs[1].codes == (P.MALFORMED,) and obs[1].leaf is None
    assert str(path) in one_line(obs[1]) and "#1" in one_line(obs[1])
    assert [c.subject_cn for c in obs[0].chain] == ["www.example.test", "other.test"]


def test_block_with_damaged_end_line_does_not_swallow_the_next(
    tmp_path: Path, ca: LocalCA, leaf: Issued
) -> None:
    other = ca.issue(["other.test"], NOW)
    broken = leaf.cert_pem().replace(b"-----END CERTIFICATE-----", b"-----END CERTIF")
    path = write(tmp_path / "bundle.pem", broken + other.cert_pem())
    first, second = scan(path)
    assert first.codes == (P.MALFORMED,) and "END" in one_line(first)
    assert second.healthy and second.leaf is not None
    assert second.leaf.subject_cn == "other.test"


def test_bad_der_inside_a_pem_block(tmp_path: Path) -> None:
    block = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(b"\x30\x03\x02\x01\x01")
    (o,) = scan(write(tmp_path / "x.pem", block + b"-----END CERTIFICATE-----\n"))
    assert o.codes == (P.MALFORMED,) and o.ref.endswith("#0")


def test_crlf_and_trusted_certificate_blocks(tmp_path: Path, leaf: Issued) -> None:
    crlf = leaf.cert_pem().replace(b"\n", b"\r\n")
    # OpenSSL's TRUSTED CERTIFICATE: the DER followed by trust settings (here a dummy SEQUENCE).
    trusted = (
        b"-----BEGIN TRUSTED CERTIFICATE-----\n"
        + base64.encodebytes(der(leaf) + b"\x30\x00")
        + b"-----END TRUSTED CERTIFICATE-----\n"
    )
    obs = scan(write(tmp_path / "mixed.pem", b"subject=CN=www\n" + crlf + trusted))
    assert [o.healthy for o in obs] == [True, True]
    assert obs[0].leaf == obs[1].leaf


def test_key_only_pem_named_explicitly_is_malformed(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "privkey.pem", leaf.key_pem())
    (o,) = scan(path)
    assert o.codes == (P.MALFORMED,) and o.ref == f"file://{path}#0"
    assert "no certificate found" in one_line(o) and "PRIVATE KEY" in one_line(o)
    assert_no_key([o], leaf)


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.pem", b"")
    garbage = write(tmp_path / "garbage.crt", b"\x01" + os.urandom(511))
    der_like = write(tmp_path / "broken.der", b"\x30\x82\x01\x00" + b"\x00" * 40)
    text = write(tmp_path / "notes.cer", b"hello, I am not a certificate\n")
    for path in (empty, garbage, der_like, text):
        (o,) = scan(path)
        assert o.codes == (P.MALFORMED,), path
        assert o.ref == f"file://{path}#0" and o.leaf is None
        assert one_line(o).startswith(f"{path}: ")
    (o,) = scan(empty)
    assert "no certificate found" in one_line(o)


# --- DER and PKCS#12 --------------------------------------------------------------------------


def test_der_file(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "leaf.der", der(leaf))
    (o,) = scan(path)
    assert o.healthy and o.ref == f"file://{path}#0"
    assert o.leaf is not None and o.leaf.subject_cn == "www.example.test"


def test_der_without_extension_is_sniffed(tmp_path: Path, leaf: Issued) -> None:
    (o,) = scan(write(tmp_path / "leaf", der(leaf)))
    assert o.healthy


def test_pkcs12_passphrase_from_env(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "site.p12", p12(leaf, b"s3cret"))
    obs = scan(path, password_env="P12_PASS", env={"P12_PASS": "s3cret"})
    assert [o.ref for o in obs] == [f"file://{path}#0", f"file://{path}#1"]
    assert all(o.healthy for o in obs)
    assert obs[0].leaf is not None and obs[0].leaf.subject_cn == "www.example.test"
    assert obs[1].leaf is not None and obs[1].leaf.is_ca
    assert len(obs[0].chain) == 2
    assert_no_key(obs, leaf)
    assert "s3cret" not in repr(obs)


def test_pkcs12_passphrase_from_file(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "site.pfx", p12(leaf, b"from-file"))
    secret = write(tmp_path / "pass.txt", b"from-file\n")
    obs = scan(path, password_file=str(secret))
    assert len(obs) == 2 and all(o.healthy for o in obs)


def test_pkcs12_sniffed_without_extension(tmp_path: Path, leaf: Issued) -> None:
    obs = scan(write(tmp_path / "keystore", p12(leaf, b"pw")), password_env="X", env={"X": "pw"})
    assert len(obs) == 2 and all(o.healthy for o in obs)


def test_pkcs12_without_passphrase(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "open.p12", p12(leaf, None))
    assert len(scan(path)) == 2
    # A passphrase configured for an archive that has none still opens it.
    assert len(scan(path, password_env="X", env={"X": "unused"})) == 2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"password_env": "P12_PASS", "env": {"P12_PASS": "wrong"}}, "wrong passphrase"),
        ({"password_env": "P12_PASS"}, "P12_PASS is not set"),
        ({}, "no passphrase is configured"),
        ({"password_file": "/nonexistent/pass"}, "cannot read password_file /nonexistent/pass"),
    ],
)
def test_pkcs12_passphrase_problems_are_unreadable(
    tmp_path: Path, leaf: Issued, kwargs: dict[str, object], needle: str
) -> None:
    path = write(tmp_path / "site.p12", p12(leaf, b"right"))
    (o,) = scan(path, **kwargs)
    assert o.codes == (P.UNREADABLE,) and o.ref == f"file://{path}#0"
    assert needle in one_line(o) and str(path) in one_line(o)
    assert "right" not in repr(o) and "wrong" not in repr(o).replace("wrong passphrase", "")
    assert_no_key([o], leaf)


def test_pkcs12_garbage_and_truncated_are_malformed(tmp_path: Path, leaf: Issued) -> None:
    garbage = write(tmp_path / "garbage.p12", b"\x01" + os.urandom(300))
    truncated = write(tmp_path / "cut.pfx", p12(leaf, b"pw")[:-40])
    for path in (garbage, truncated):
        (o,) = scan(path, password_env="X", env={"X": "pw"})
        assert o.codes == (P.MALFORMED,), one_line(o)


# --- unreadable -------------------------------------------------------------------------------


def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "gone.pem"
    link.symlink_to(tmp_path / "missing.pem")
    assert expand(FileTarget(str(link))) == [link]
    (o,) = scan(link)
    assert o.codes == (P.UNREADABLE,) and o.ref == f"file://{link}#0"
    assert one_line(o).startswith(f"{link}: broken symlink")


def test_broken_symlink_found_by_a_directory_walk(tmp_path: Path, leaf: Issued) -> None:
    write(tmp_path / "ok.pem", leaf.cert_pem())
    (tmp_path / "dangling.crt").symlink_to(tmp_path / "nowhere")
    obs = scan(tmp_path)
    assert [o.ref.rsplit("/", 1)[1] for o in obs] == ["dangling.crt#0", "ok.pem#0"]
    assert obs[0].codes == (P.UNREADABLE,) and obs[1].healthy


def test_file_that_vanished_and_directory_where_a_file_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # expand() listed them, then the files changed under it (a deploy in progress).
    vanished = tmp_path / "vanished.pem"
    became_dir = tmp_path / "dir.pem"
    became_dir.mkdir()
    monkeypatch.setattr(files, "expand", lambda target: [became_dir, vanished])
    by_dir, by_gone = scan(tmp_path / "*.pem")
    assert by_dir.codes == (P.UNREADABLE,) and "is a directory" in one_line(by_dir)
    assert by_gone.codes == (P.UNREADABLE,) and "no such file" in one_line(by_gone)
    assert by_gone.ref == f"file://{vanished}#0"


def test_permission_denied(tmp_path: Path, leaf: Issued, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "locked.pem", leaf.cert_pem())
    path.chmod(0o000)
    if os.geteuid() != 0:
        (o,) = scan(path)
        assert o.codes == (P.UNREADABLE,) and "permission denied" in one_line(o)
    # root reads mode 000 files: make the kernel's answer explicit instead.
    real_open = os.open

    def deny(file: str | Path, flags: int, *args: int, **kwargs: int) -> int:
        if Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    (o,) = scan(path)
    assert o.codes == (P.UNREADABLE,)
    assert one_line(o) == f"{path}: permission denied"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pem"
    os.mkfifo(fifo)
    (o,) = scan(fifo)
    assert o.codes == (P.UNREADABLE,) and "not a regular file" in one_line(o)


def test_huge_file_is_refused_unread(
    tmp_path: Path, leaf: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "huge.pem", leaf.cert_pem())
    with path.open("r+b") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: cheap to make
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    (o,) = scan(path)
    assert o.codes == (P.MALFORMED,) and "file too large" in one_line(o)
    assert reads == []


def test_control_characters_in_a_name_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "evil\nname.pem", b"junk")
    (o,) = scan(path)
    assert o.ref == f"file://{path}#0"
    one_line(o)


# --- expand: directories and globs ------------------------------------------------------------


def make_tree(root: Path, leaf: Issued) -> None:
    write(root / "a.pem", leaf.cert_pem())
    write(root / "sub" / "b.CRT", leaf.cert_pem())
    write(root / "sub" / "deep" / "c.cer", leaf.cert_pem())
    write(root / "sub" / "deep" / "d.p12", p12(leaf, None))
    write(root / "sub" / "fullchain", b"# bundle\n" + leaf.chain_pem())  # no extension
    write(root / "sub" / "blob", os.urandom(64))  # no extension, not PEM: left alone
    write(root / "sub" / "notes.txt", leaf.cert_pem())  # wrong extension: left alone
    write(root / "sub" / "privkey.pem", leaf.key_pem())  # a key next to its certificate
    write(root / "sub" / "x.ca-bundle", leaf.chain_pem())
    write(root / ".hidden" / "h.pem", leaf.cert_pem())  # k8s ..data style copies
    write(root / "sub" / ".h.pem", leaf.cert_pem())


def test_directory_scan(tmp_path: Path, leaf: Issued) -> None:
    root = tmp_path / "certs"
    make_tree(root, leaf)
    paths = expand(FileTarget(str(root)))
    assert [p.relative_to(root).as_posix() for p in paths] == [
        "a.pem",
        "sub/b.CRT",
        "sub/deep/c.cer",
        "sub/deep/d.p12",
        "sub/fullchain",
        "sub/privkey.pem",
        "sub/x.ca-bundle",
    ]
    obs = scan(root)
    # privkey.pem is not a certificate file: no observation, no noise.
    refs = [o.ref.removeprefix(f"file://{root}/") for o in obs]
    assert refs == [
        "a.pem#0",
        "sub/b.CRT#0",
        "sub/deep/c.cer#0",
        "sub/deep/d.p12#0",
        "sub/deep/d.p12#1",
        "sub/fullchain#0",
        "sub/fullchain#1",
        "sub/x.ca-bundle#0",
        "sub/x.ca-bundle#1",
    ]
    assert all(o.healthy for o in obs)
    assert_no_key(obs, leaf)


def test_symlinked_files_are_read_symlinked_dirs_are_not_entered(
    tmp_path: Path, leaf: Issued
) -> None:
    archive = write(tmp_path / "archive" / "cert1.pem", leaf.cert_pem())
    live = tmp_path / "live"
    live.mkdir()
    (live / "cert.pem").symlink_to(archive)  # certbot's layout
    (live / "loop").symlink_to(tmp_path)  # would leave the tree and loop
    assert expand(FileTarget(str(live))) == [live / "cert.pem"]
    assert expand(FileTarget(str(live / "**"))) == [live / "cert.pem"]
    assert expand(FileTarget(str(live / "**" / "*.pem"))) == [live / "cert.pem"]
    (o,) = scan(live / "cert.pem")
    assert o.ref == f"file://{live}/cert.pem#0" and o.healthy  # the link's name, not its target


def test_recursive_glob(tmp_path: Path, leaf: Issued) -> None:
    root = tmp_path / "certs"
    make_tree(root, leaf)
    got = expand(FileTarget(str(root / "**" / "*.pem")))
    assert [p.relative_to(root).as_posix() for p in got] == ["a.pem", "sub/privkey.pem"]
    got = expand(FileTarget(str(root / "**" / "*.c[er][rt]")))
    assert [p.relative_to(root).as_posix() for p in got] == ["sub/deep/c.cer"]
    obs = scan(root / "**" / "*.pem")
    assert [o.ref for o in obs] == [f"file://{root}/a.pem#0"]


def test_glob_matches_are_taken_as_named_and_dirs_are_walked(tmp_path: Path, leaf: Issued) -> None:
    root = tmp_path / "certs"
    make_tree(root, leaf)
    got = expand(FileTarget(str(root / "s*" / "*.txt")))
    assert got == [root / "sub" / "notes.txt"]  # named by the glob, so read whatever its name
    got = expand(FileTarget(str(root / "s?b")))
    assert got == expand(FileTarget(str(root / "sub")))


def test_relative_pattern_gives_absolute_refs(
    tmp_path: Path, leaf: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, leaf)
    monkeypatch.chdir(tmp_path / "sub")
    assert expand(FileTarget("../a.pem")) == [tmp_path / "a.pem"]
    assert expand(FileTarget("deep/*.cer")) == [tmp_path / "sub" / "deep" / "c.cer"]
    (o,) = scan("../a.pem")
    assert o.ref == f"file://{tmp_path}/a.pem#0"


def test_literal_name_with_glob_characters(tmp_path: Path, leaf: Issued) -> None:
    path = write(tmp_path / "cert[1].pem", leaf.cert_pem())
    assert expand(FileTarget(str(path))) == [path]


@pytest.mark.parametrize(
    "pattern", ["missing.pem", "missing/*.pem", "**/*.nothing", "nodir/**", ""]
)
def test_pattern_matching_nothing(tmp_path: Path, pattern: str) -> None:
    target = FileTarget(str(tmp_path / pattern) if pattern else "")
    assert expand(target) == []
    assert scan_file_target(target, NOW, env={}) == []


def test_deduplicated_and_sorted(tmp_path: Path, leaf: Issued) -> None:
    make_tree(tmp_path, leaf)
    paths = expand(FileTarget(str(tmp_path / "**" / "**" / "*.pem")))
    assert paths == sorted(set(paths)) and len(paths) == 2
