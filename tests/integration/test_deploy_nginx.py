"""The ``files`` deploy target against a real nginx: write, ``nginx -t``, ``nginx -s reload``,
and a re-probe with the real TLS prober until the new serial is served.

Faults from issue 4, item 8: a certificate whose key does not match (``nginx -t`` refuses it,
the old certificate stays served), a reload command that fails (files restored, old
certificate served, even when nginx had already picked the new one up), and ``rollback()``
after a good deploy. ``nginx -s reload`` is asynchronous (../shared/components.md), so every
"is served" check is a bounded poll that also waits for the answer to stay put.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certpilot.domain.clock import SystemClock
from certpilot.domain.remedy import DeployError, IssuedCertificate
from certpilot.localca import Issued, LocalCA
from remediator.targets.files import PREV_SUFFIX, FilesTarget, FilesTargetConfig
from scanner.tls_endpoint import TlsProber
from scanner.trust import load_anchors
from tests.support.services import NginxFleet, require_binary

pytestmark = pytest.mark.service("nginx")

GOOD = "good.deploy.test"
MISMATCH = "mismatch.deploy.test"
RELOAD_FAILS = "reloadfails.deploy.test"
RELOAD_HALF = "reloadhalf.deploy.test"
ROLLBACK = "rollback.deploy.test"
NAMES = (GOOD, MISMATCH, RELOAD_FAILS, RELOAD_HALF, ROLLBACK)

POLL_SECONDS = 10.0


@dataclass
class Site:
    fleet: NginxFleet
    ca: LocalCA
    prober: TlsProber
    issued: dict[str, Issued]

    def nginx(self, *extra: str) -> tuple[str, ...]:
        f = self.fleet
        return (f.binary, "-p", f"{f.dir}/", "-c", str(f.conf_path), "-e", str(f.error_log), *extra)

    def target(self, name: str, *, reload_command: Sequence[str] | None = None) -> FilesTarget:
        ep = self.fleet.endpoint(name)
        config = FilesTargetConfig(
            cert_path=ep.cert_path,
            key_path=ep.key_path,
            test_command=self.nginx("-t"),
            reload_command=tuple(reload_command or self.nginx("-s", "reload")),
            timeout=30.0,
            endpoints=(ep.target(),),
        )
        return FilesTarget(f"nginx:{name}", config)

    def renew(self, name: str) -> Issued:
        return self.ca.issue([name], datetime.now(UTC))

    async def served_serial(self, name: str) -> str | None:
        [obs] = await self.prober.probe([self.fleet.endpoint(name).target()])
        return obs.leaf.serial if obs.leaf is not None else None

    async def settles_on(self, name: str, serial: str, settle: float = 0.7) -> str | None:
        """Poll until ``serial`` has been served on every probe for ``settle`` seconds; the
        last serial seen. One probe is not enough either way: ``nginx -s reload`` returns
        before the master acts on it, and for a moment after a reload the previous
        generation of workers still accepts connections with the previous certificate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POLL_SECONDS
        since: float | None = None
        while True:
            seen = await self.served_serial(name)
            now = loop.time()
            since = (since or now) if seen == serial else None
            if since is not None and now - since >= settle:
                return seen
            if now > deadline:
                return seen
            await asyncio.sleep(0.05)


def as_issued(i: Issued) -> IssuedCertificate:
    return IssuedCertificate(chain_pem=i.chain_pem(), key_pem=i.key_pem(), serial=i.serial_hex)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    nginx = require_binary("nginx")
    now = datetime.now(UTC)
    ca = LocalCA("certpilot deploy test", now)
    issued = {name: ca.issue([name], now) for name in NAMES}
    work = tmp_path_factory.mktemp("deploy-nginx")
    ca_file = work / "root.pem"
    ca_file.write_bytes(ca.root_pem())
    prober = TlsProber(load_anchors([str(ca_file)], use_system=False), SystemClock())
    specs = [(n, i.chain_pem(), i.key_pem()) for n, i in issued.items()]
    with NginxFleet(work / "nginx", specs, binary=nginx) as fleet:
        yield Site(fleet, ca, prober, issued)


def files_of(site: Site, name: str) -> tuple[bytes, bytes]:
    ep = site.fleet.endpoint(name)
    return ep.cert_path.read_bytes(), ep.key_path.read_bytes()


async def test_deploy_serves_the_new_certificate(site: Site) -> None:
    master = site.fleet.pid
    old = site.issued[GOOD]
    assert await site.served_serial(GOOD) == old.serial_hex
    new = site.renew(GOOD)

    receipt = await site.target(GOOD).deploy(as_issued(new))

    assert receipt.serial == new.serial_hex
    assert await site.settles_on(GOOD, new.serial_hex) == new.serial_hex
    ep = site.fleet.endpoint(GOOD)
    assert ep.key_path.stat().st_mode & 0o777 == 0o600
    assert Path(f"{ep.cert_path}{PREV_SUFFIX}").read_bytes() == old.chain_pem()
    assert site.fleet.pid == master  # reloaded, not restarted
    site.issued[GOOD] = new


async def test_mismatched_key_fails_nginx_t_and_keeps_old_certificate(site: Site) -> None:
    old = site.issued[MISMATCH]
    before = files_of(site, MISMATCH)
    other = site.renew(MISMATCH)  # a certificate for a different key than the one sent
    bad = IssuedCertificate(chain_pem=other.chain_pem(), key_pem=old.key_pem())

    with pytest.raises(DeployError) as e:
        await site.target(MISMATCH).deploy(bad)

    assert e.value.step == "test"
    assert "nginx" in e.value.message and "exited with 1" in e.value.message
    assert "key values mismatch" in e.value.message  # nginx's own diagnosis, in the error
    assert "PRIVATE KEY" not in str(e.value)
    assert files_of(site, MISMATCH) == before
    assert await site.settles_on(MISMATCH, old.serial_hex) == old.serial_hex
    site.fleet.check_config()  # what is on disk is good again: the next reload works


async def test_failing_reload_command_rolls_back(site: Site) -> None:
    old = site.issued[RELOAD_FAILS]
    before = files_of(site, RELOAD_FAILS)

    with pytest.raises(DeployError) as e:
        await site.target(RELOAD_FAILS, reload_command=["false"]).deploy(
            as_issued(site.renew(RELOAD_FAILS))
        )

    assert e.value.step == "reload"
    assert files_of(site, RELOAD_FAILS) == before
    assert await site.settles_on(RELOAD_FAILS, old.serial_hex) == old.serial_hex


async def test_reload_that_fails_after_nginx_reloaded_is_undone(site: Site) -> None:
    """The harder case: the hook did reload nginx (new certificate picked up), then failed.
    The target restores the files and reloads again, so the old certificate comes back."""
    old = site.issued[RELOAD_HALF]
    before = files_of(site, RELOAD_HALF)
    reload_then_fail = ("/bin/sh", "-c", '"$@"; exit 1', "sh", *site.nginx("-s", "reload"))

    with pytest.raises(DeployError) as e:
        await site.target(RELOAD_HALF, reload_command=reload_then_fail).deploy(
            as_issued(site.renew(RELOAD_HALF))
        )

    assert e.value.step == "reload"
    assert files_of(site, RELOAD_HALF) == before
    assert await site.settles_on(RELOAD_HALF, old.serial_hex) == old.serial_hex


async def test_rollback_after_good_deploy_serves_old_certificate_again(site: Site) -> None:
    old = site.issued[ROLLBACK]
    new = site.renew(ROLLBACK)
    target = site.target(ROLLBACK)
    receipt = await target.deploy(as_issued(new))
    assert await site.settles_on(ROLLBACK, new.serial_hex) == new.serial_hex

    await target.rollback(receipt)

    assert files_of(site, ROLLBACK) == (old.chain_pem(), old.key_pem())
    assert await site.settles_on(ROLLBACK, old.serial_hex) == old.serial_hex
    # Every other server kept its certificate through all of the above.
    assert await site.served_serial(GOOD) == site.issued[GOOD].serial_hex
