"""Least privilege and transport security (docs/security.md), on redis-servers this module starts.

- TLS: ``rediss://`` verified against a throwaway CA made here with the ``openssl`` CLI; clients that
  trust another CA (or only the system store), a certificate for another host name, a missing client
  certificate under mutual TLS: all refused with ``StoreUnavailableError``.
- ACL: the user line of docs/security.md (read from that file) runs the whole API, the asyncio API and
  the CLI with an empty ``ACL LOG``; every permission of the line is needed; the user reaches no
  other key, channel or admin command; a missing permission fails before any write.
- Tenants: two prefixes on one Redis see only their own pools, events and change notices; with one
  ACL user per prefix neither can read the other's keys.
- Secrets: with ``MONITOR`` watching, no secret of a member ever appears in a command sent to Redis.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import RedisServer
from provider_errors import rate_limited

import coordinator as co
from coordinator.cli.main import main as cli_main

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
PASSWORD = "pw-" + uuid.uuid4().hex


def members(n: int = 3) -> list[co.Member]:
    return [co.Member(id=f"acct-{i}") for i in range(1, n + 1)]


def pool_cfg(name: str = "openai") -> co.PoolConfig:
    return co.PoolConfig(name=name, members=members())


# -- a throwaway PKI and a TLS-only redis-server --------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getattr__(self, name: str) -> str:
        stem, _, suffix = name.rpartition("_")  # ca_pem -> ca.pem, other_ca_pem -> other_ca.pem
        return str(self.dir / f"{stem}.{suffix}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=coordinator test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)


def _make_cert(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extensions
    )
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make the test CA (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("pki")
    _make_ca(folder, "ca")
    _make_ca(folder, "other_ca")
    server_usage = "extendedKeyUsage=serverAuth\n"
    _make_cert(folder, "server", "ca", server_usage + "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _make_cert(folder, "elsewhere", "ca", server_usage + "subjectAltName=DNS:elsewhere.example\n")
    _make_cert(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return Pki(folder)


class TlsRedisServer(RedisServer):
    """A RedisServer that speaks TLS only: its port is the TLS port, the plain port is off."""

    def __init__(self, pki: Pki, cert: str = "server", auth_clients: bool = False) -> None:
        self.tls = ["--tls-cert-file", f"{pki.dir / cert}.pem", "--tls-key-file", f"{pki.dir / cert}.key",
                    "--tls-ca-cert-file", pki.ca_pem, "--tls-auth-clients", "yes" if auth_clients else "no"]
        self.pki = pki
        super().__init__()

    def start(self) -> None:
        if "--tls-port" not in self.args:
            at = self.args.index("--port")
            self.args[at : at + 2] = ["--port", "0", "--tls-port", str(self.port), *self.tls]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Readiness only: the chain is checked, the host name is not (one server has a foreign name).
        client = redis.Redis(port=self.port, ssl=True, ssl_ca_certs=self.pki.ca_pem, ssl_check_hostname=False,
                             ssl_certfile=self.pki.client_pem, ssl_keyfile=self.pki.client_key,
                             socket_connect_timeout=0.5)
        try:
            for _ in range(500):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    try:
                        self.proc.wait(timeout=0.02)  # the pause between tries; ends early if it died
                    except subprocess.TimeoutExpired:
                        continue
                    break
            raise RuntimeError(f"TLS redis-server on port {self.port} did not start")
        finally:
            client.close()

    def url(self, query: str = "", host: str = "127.0.0.1", userinfo: str = "") -> str:  # type: ignore[override]
        return f"rediss://{userinfo}{host}:{self.port}/0" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(pki)
    try:
        yield server
    finally:
        server.close()


def exercise(url: str, prefix: str | None = None) -> list[str]:
    """acquire, a failover, park, unpark and events through a fresh coordinator; the event types."""
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}"
    with co.Coordinator(url, [pool_cfg()], prefix=prefix) as coord:
        pool = coord.pool("openai")
        sel = pool.acquire()
        assert pool.report_failure(sel, "rate_limited", retry_after=30).transitioned
        pool.park("acct-3", reason="tls")
        pool.unpark("acct-3")
        return [event.type for event in pool.events()]


def test_rediss_verified_against_the_test_ca(pki: Pki, tls_server: TlsRedisServer) -> None:
    expected = ["created", "failover", "parked", "unparked"]
    assert exercise(tls_server.url(f"ssl_ca_certs={pki.ca_pem}")) == expected
    assert exercise(tls_server.url(f"ssl_ca_certs={pki.ca_pem}", host="localhost")) == expected

    async def run_async() -> list[str]:
        async with co.AsyncCoordinator(tls_server.url(f"ssl_ca_certs={pki.ca_pem}"), [pool_cfg()],
                                       prefix="tls-async", timeout=2.0) as coord:  # TLS on a busy machine
            pool = coord.pool("openai")
            await pool.report_failure(await pool.acquire(), "auth")
            return [event.type for event in await pool.events()]

    assert asyncio.run(run_async()) == ["created", "failover"]
    # It really is TLS: the port does not speak plain RESP.
    with co.Coordinator(f"redis://127.0.0.1:{tls_server.port}/0", [pool_cfg()]) as plain, \
            pytest.raises(co.StoreUnavailableError):
        plain.pool("openai").park("acct-1")


def refusal(url: str, caplog: pytest.LogCaptureFixture) -> str:
    """What an operator is told when the TLS handshake is refused: a deterministic misconfiguration,
    so the coordinator does not start, with one error naming the problem."""
    caplog.clear()
    with pytest.raises(co.StoreMisconfiguredError, match="TLS handshake failed") as info:
        co.Coordinator(url, [pool_cfg()], prefix="refused")
    told: list[str] = []
    error: BaseException | None = info.value
    while error is not None:
        told.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(told + [record.getMessage() for record in caplog.records]).lower()


@pytest.mark.parametrize("trust", ["system store", "another CA"])
def test_a_client_that_does_not_trust_the_ca_is_refused(
    pki: Pki, tls_server: TlsRedisServer, trust: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = tls_server.url() if trust == "system store" else tls_server.url(f"ssl_ca_certs={pki.other_ca_pem}")
    assert "certificate verify failed" in refusal(url, caplog)


def test_a_certificate_for_another_host_is_refused(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    server = TlsRedisServer(pki, cert="elsewhere")
    try:
        told = refusal(server.url(f"ssl_ca_certs={pki.ca_pem}"), caplog)
        assert "certificate verify failed" in told and "mismatch" in told
    finally:
        server.close()


def test_mutual_tls(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    server = TlsRedisServer(pki, auth_clients=True)
    try:
        refusal(server.url(f"ssl_ca_certs={pki.ca_pem}"), caplog)  # no client certificate
        query = f"ssl_ca_certs={pki.ca_pem}&ssl_certfile={pki.client_pem}&ssl_keyfile={pki.client_key}"
        assert exercise(server.url(query))[-1] == "unparked"
    finally:
        server.close()


# -- the documented ACL user ---------------------------------------------------------------------------


def acl_rule(admin: redis.Redis, prefix: str = "coord") -> list[str]:
    """The ACL SETUSER line of docs/security.md for ``prefix`` (user name = prefix), with its variant
    for Redis 7.2+, as arguments."""
    match = re.search(r"^ACL SETUSER coord .*$", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{DOC} lost its ACL SETUSER line"
    words = shlex.split(match.group(0).replace("coord", prefix).replace(">CHANGE-ME", f">{PASSWORD}"))
    version = tuple(int(part) for part in str(admin.info("server")["redis_version"]).split(".")[:2])
    if version >= (7, 2):
        words.append("+client|setinfo")  # the documented variant for Redis 7.2 and later
    return words


def set_user(admin: redis.Redis, words: list[str]) -> None:
    # One command, starting from nothing: connections of the user stay open and see the new rules.
    admin.execute_command(*words[:3], "reset", *words[3:])


def user_url(server: RedisServer, user: str = "coord", password: str = PASSWORD) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=acl_server.port, decode_responses=True)
    client.flushall()
    client.script_flush()  # so the scripts are loaded (SCRIPT LOAD) by the user under test
    client.acl_log_reset()
    try:
        yield client
    finally:
        client.close()


def denied(admin: redis.Redis) -> list[tuple[str, str]]:
    return [(entry["reason"], entry["object"]) for entry in admin.acl_log()]


def workload(url: str, prefix: str = "coord", **options: Any) -> None:
    """Everything a worker and an operator do through the library, as one user."""
    with co.Coordinator(url, [pool_cfg()], prefix=prefix, **options) as coord:
        pool = coord.pool("openai")
        sel = pool.acquire()
        pool.report_failure(sel, "transient")  # counts a failure, cools nothing yet
        pool.report_success(pool.acquire())  # resets the count: HDEL
        # cooled, not transitioned: a worker missing a grant is served by its stand-in, whose moves fire no hook
        assert pool.report_failure(pool.acquire(), "rate_limited", retry_after=60).cooled
        pool.park("acct-3", seconds=600, reason="quota")
        pool.unpark("acct-3")
        pool.rotate(reason="manual")
        snap = pool.snapshot()
        assert snap.active == "acct-3"
        events = pool.events()
        assert [e.type for e in events] == ["created", "failover", "parked", "unparked", "rotated"]
        assert pool.events_after(events[-2].id, block=0.01)[0].type == "rotated"
        pool.reset(reason="repair drill")
        assert coord.call("openai", lambda member: member.id) == "acct-1"
        # A worker's own subscription to the change notices.
        pubsub = coord.client.pubsub()
        try:
            pubsub.subscribe(f"{prefix}:changes")
            assert pubsub.get_message(timeout=5.0)["type"] == "subscribe"
        finally:
            pubsub.close()


def run_cli(capsys: pytest.CaptureFixture[str], config: Path, url: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main(["--config", str(config), "--redis", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)

    def write(prefix: str = "coord") -> Path:
        path = tmp_path / f"{prefix}.toml"
        ids = ", ".join(f'{{ id = "{m.id}" }}' for m in members())
        path.write_text(f'[redis]\nurl = "memory://"\nprefix = "{prefix}"\n\n[pools.openai]\nmembers = [{ids}]\n')
        return path

    return write


def test_the_documented_acl_user_runs_everything_and_is_never_refused(
    acl_server: RedisServer, admin: redis.Redis, capsys: pytest.CaptureFixture[str],
    config_file: Callable[[str], Path],
) -> None:
    set_user(admin, acl_rule(admin))
    url = user_url(acl_server)
    workload(url)

    async def run_async() -> None:
        async with co.AsyncCoordinator(url, [pool_cfg()], prefix="coord") as coord:
            pool = coord.pool("openai")
            await pool.report_failure(await pool.acquire(), "auth")
            await pool.park("acct-1", reason="async")
            assert (await pool.snapshot()).member("acct-1").parked
            assert [e.type for e in await pool.events()][-2:] == ["failover", "parked"]

    asyncio.run(run_async())

    config = config_file("coord")
    code, out, err = run_cli(capsys, config, url, "--json", "status")
    assert code == 0, err
    status = json.loads(out)["pools"][0]
    assert status["pool"] == "openai" and status["initialized"] and status["matches_config"]
    for args in (["park", "openai", "acct-2", "--for", "1h", "--reason", "cli"], ["unpark", "openai", "acct-2"],
                 ["rotate", "openai"], ["--json", "events", "--limit", "3"]):
        code, out, err = run_cli(capsys, config, url, *args)
        assert code == 0, (args, err)
    assert denied(admin) == [], "the documented user was refused something"


def test_every_permission_of_the_documented_user_is_needed(acl_server: RedisServer, admin: redis.Redis) -> None:
    words = acl_rule(admin)
    grants = [w for w in words[3:] if w[0] in "+~&"]
    assert len(grants) >= 14
    unneeded = []
    for grant in grants:
        admin.flushall()
        admin.script_flush()
        admin.acl_log_reset()
        set_user(admin, [w for w in words if w != grant])
        try:
            # No local view and so no notice listener (its SUBSCRIBE is the workload's own here): every
            # call goes to Redis, and closing does not wait for a listener thread.
            workload(user_url(acl_server), staleness=0)
        except (redis.RedisError, co.CoordinatorError):
            continue
        if not denied(admin):
            unneeded.append(grant)
    assert unneeded == [], f"the workload never needed {unneeded}: drop them from docs/security.md"


def test_the_acl_user_reaches_nothing_else(acl_server: RedisServer, admin: redis.Redis) -> None:
    set_user(admin, acl_rule(admin))
    admin.hset("other:{openai}", "secret", "x")
    admin.hset("coord:b:{openai}", "nested", "prefix")
    client = redis.Redis.from_url(user_url(acl_server), decode_responses=True)
    try:
        attempts: list[Callable[[], Any]] = [
            lambda: client.hgetall("other:{openai}"),
            lambda: client.hgetall("coord:b:{openai}"),  # a prefix nested under coord: is another tenant
            lambda: client.get("coord"),
            lambda: client.flushall(),
            lambda: client.flushdb(),
            lambda: client.config_get("*"),
            lambda: client.config_set("appendonly", "no"),
            lambda: client.keys("*"),
            lambda: client.scan(0),
            lambda: client.info(),
            lambda: client.eval("return 1", 0),
            lambda: client.publish("other:changes", "x"),
            lambda: client.client_list(),
            lambda: client.script_flush(),
            lambda: client.execute_command("MODULE", "LIST"),
            lambda: client.acl_list(),
        ]
        for attempt in attempts:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        pubsub = client.pubsub()
        with pytest.raises(redis.exceptions.NoPermissionError):
            pubsub.subscribe("other:changes")
            pubsub.get_message(timeout=5.0)
        pubsub.close()
        # A script it loads runs under the same ACL: it cannot reach another key either.
        sha = client.script_load("return redis.call('HGETALL', 'other:{openai}')")
        with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)no permissions|can't|cannot"):
            client.evalsha(sha, 1, "coord:{openai}")
    finally:
        client.close()


def test_a_missing_permission_fails_before_any_write(acl_server: RedisServer, admin: redis.Redis) -> None:
    """A grant revoked while workers run: calls are served locally, nothing is written, operator actions
    are refused naming the command; a worker started without it refuses to start."""
    words = acl_rule(admin)
    keys = co.KeySchema("coord").pool_keys("openai")
    for missing, command in (("&coord:changes", "PUBLISH"), ("+xadd", "XADD"), ("+hdel", "HDEL")):
        set_user(admin, words)
        with co.Coordinator(user_url(acl_server), [pool_cfg()], staleness=0) as coord:
            pool = coord.pool("openai")
            sel = pool.acquire()
            set_user(admin, [w for w in words if w != missing])
            before = (admin.hgetall(keys[0]), admin.xrange(keys[1]))
            result = pool.report_failure(sel, "rate_limited", retry_after=60)
            assert result.cooled and result.epoch.startswith("local"), "served by the stand-in"
            with pytest.raises(co.StoreMisconfiguredError, match=f"may not run {command} on .*nothing was written"):
                pool.park("acct-3")
            assert (admin.hgetall(keys[0]), admin.xrange(keys[1])) == before
        with pytest.raises(co.StoreMisconfiguredError, match=f"may not run {command}.*grant"):
            co.Coordinator(user_url(acl_server), [pool_cfg()])
    # DEL is checked at start like the others; revoked later, a corrupt pool alone is served locally.
    set_user(admin, [w for w in words if w != "+del"])
    with pytest.raises(co.StoreMisconfiguredError, match=r"may not run DEL.*grant"):
        co.Coordinator(user_url(acl_server), [pool_cfg()])
    set_user(admin, words)
    with co.Coordinator(user_url(acl_server), [pool_cfg(), pool_cfg("other")], staleness=0,
                        probe_interval=600) as coord:
        pool, other = coord.pool("openai"), coord.pool("other")
        pool.acquire()
        other.acquire()
        set_user(admin, [w for w in words if w != "+del"])
        before_hash = admin.hgetall(keys[0])
        with pytest.raises(co.StoreError, match="may not run DEL"):
            pool.reset()
        assert admin.hgetall(keys[0]) == before_hash
        # Without DEL a corrupt state cannot be healed (docs/design.md, "Corrupt state"): that pool's calls
        # are served locally, nothing is written, and Redis is asked again only after the pool's retry
        # interval (probe_interval); the other pools stay on Redis.
        admin.hset(keys[0], "generation", "abc")
        before = (admin.hgetall(keys[0]), admin.xrange(keys[1]))
        assert coord.call("openai", lambda member: member.id) == "acct-1"
        scripts_run = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
        for _ in range(5):
            assert pool.acquire().epoch.startswith("local")
        assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == scripts_run, "no Redis call per call"
        # Within the window the stand-in keeps what the calls report: a member cooled there stays
        # cooled, and a call whose first member fails is served by the next (the plan's own reads of
        # the pool are served like the call, never refused because the state is corrupt).
        first = pool.acquire()
        assert pool.report_failure(first, "rate_limited", retry_after=60).cooled
        assert pool.acquire().member.id != first.member.id, "the local cooldown holds for the next call"
        tried: list[str] = []

        def fails_on_the_active(member: co.Member) -> str:
            tried.append(member.id)
            if len(tried) == 1:
                raise rate_limited(60)
            return member.id

        served = coord.call("openai", fails_on_the_active)
        assert served == tried[-1] and len(tried) == 2 and tried[0] != tried[1], tried
        with pytest.raises(co.StoreMisconfiguredError, match="park was not applied"):
            pool.park("acct-3")
        sel = other.acquire()
        assert not sel.epoch.startswith("local")
        assert other.report_failure(sel, "rate_limited", retry_after=60).transitioned
        other_keys = co.KeySchema("coord").pool_keys("other")
        assert admin.hget(other_keys[0], "acct-1:cooling_kind") == "rate_limited"
        assert (admin.hgetall(keys[0]), admin.xrange(keys[1])) == before


# -- tenants -----------------------------------------------------------------------------------------


class Channel:
    """Messages on one channel up to a barrier message this test publishes: no waiting on time."""

    def __init__(self, admin: redis.Redis, channel: str) -> None:
        self.admin, self.channel = admin, channel
        self.pubsub = admin.pubsub()
        self.pubsub.subscribe(channel)
        assert self._next()["type"] == "subscribe"

    def _next(self) -> dict[str, Any]:
        message = self.pubsub.get_message(timeout=5.0)
        assert message is not None, f"nothing on {self.channel} within 5 s"
        return dict(message)

    def drain(self) -> list[str]:
        self.admin.publish(self.channel, "barrier")
        seen = []
        while (message := self._next())["data"] != "barrier":
            seen.append(message["data"])
        return seen

    def close(self) -> None:
        self.pubsub.close()


def test_two_prefixes_on_one_redis_see_only_their_own_pools_events_and_notices(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    url = f"redis://127.0.0.1:{acl_server.port}/0"
    billing_notices, search_notices = Channel(admin, "billing:changes"), Channel(admin, "search:changes")
    try:
        with co.Coordinator(url, [pool_cfg()], prefix="billing") as billing, \
                co.Coordinator(url, [pool_cfg()], prefix="search") as search:
            a, b = billing.pool("openai"), search.pool("openai")
            assert a.report_failure(a.acquire(), "rate_limited", retry_after=60).transitioned
            a.park("acct-3", reason="billing only")
            assert len(billing_notices.drain()) == 3 and search_notices.drain() == []
            assert b.events() == [] and b.snapshot().epoch is None
            assert b.acquire().member.id == "acct-1"
            assert [e.type for e in b.events()] == ["created"]
            assert [n.split()[0] for n in search_notices.drain()] == ["openai"] and billing_notices.drain() == []
            assert a.snapshot().active == "acct-2" and a.snapshot().member("acct-3").parked
            assert not b.snapshot().member("acct-3").parked
            assert [e.type for e in a.events()] == ["created", "failover", "parked"]
            b.reset()
            assert [e.type for e in a.events()] == ["created", "failover", "parked"]
        assert sorted(admin.keys("*")) == ["billing:{openai}", "billing:{openai}:events", "search:{openai}",
                                           "search:{openai}:events"]
    finally:
        billing_notices.close()
        search_notices.close()


def test_per_tenant_acl_users_cannot_read_each_other(
    acl_server: RedisServer, admin: redis.Redis, capsys: pytest.CaptureFixture[str],
    config_file: Callable[[str], Path],
) -> None:
    for tenant in ("billing", "search"):
        set_user(admin, acl_rule(admin, tenant))
        assert exercise(user_url(acl_server, tenant), prefix=tenant)[-1] == "unparked"
    billing = redis.Redis.from_url(user_url(acl_server, "billing"), decode_responses=True)
    try:
        for attempt in (lambda: billing.hgetall("search:{openai}"),
                        lambda: billing.xrevrange("search:{openai}:events"),
                        lambda: billing.hset("search:{openai}", "active", "acct-3"),
                        lambda: billing.publish("search:changes", "openai x 1 1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        billing.close()
    # The library as the wrong tenant: it does not start, naming the problem; nothing read or written.
    before = admin.hgetall("search:{openai}")
    with pytest.raises(co.StoreMisconfiguredError, match=r"may not .* keys such as search:\{openai\}.*no permissions"):
        co.Coordinator(user_url(acl_server, "billing"), [pool_cfg()], prefix="search")
    assert admin.hgetall("search:{openai}") == before
    code, _, err = run_cli(capsys, config_file("search"), user_url(acl_server, "billing"), "--json", "status")
    assert code == 2 and "no permissions" in err and PASSWORD not in err


# -- secrets ------------------------------------------------------------------------------------------


def test_secrets_never_reach_redis(acl_server: RedisServer, admin: redis.Redis,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = ["sk-secret-key-1", "sk-secret-from-env", "sk-secret-header", "sk-secret-in-url",
               "secret-model-name", "sk-secret-in-body"]
    monkeypatch.setenv("COORD_TEST_KEY_2", secrets[1])
    cfg = co.PoolConfig(name="openai", members=[
        co.Member(id="acct-1", api_key=secrets[0], model=secrets[4], headers={"x-api-key": secrets[2]}),
        co.Member(id="acct-2", api_key_env="COORD_TEST_KEY_2", base_url=f"https://u:{secrets[3]}@api.example/v1"),
    ])
    request = httpx.Request("POST", "https://api.example/v1/chat")
    throttled = httpx.Response(429, headers={"retry-after": "7", "x-leak": secrets[5]},
                               content=json.dumps({"error": {"message": secrets[5]}}).encode(), request=request)

    def call(member: co.Member) -> str:
        if member.id == "acct-1":
            raise httpx.HTTPStatusError("429", request=request, response=throttled)
        return f"served by {member.id} with {member.secret()}"

    url = f"redis://127.0.0.1:{acl_server.port}/0"
    with admin.monitor() as monitor:
        with co.Coordinator(url, [cfg], prefix="coord") as coord:
            assert coord.call("openai", call) == f"served by acct-2 with {secrets[1]}"
            pool = coord.pool("openai")
            pool.park("acct-1", reason="rotated")
            pool.snapshot()
            pool.events()
        redis.Redis(port=acl_server.port).echo("end-of-test")
        seen = []
        while "end-of-test" not in (command := monitor.next_command()["command"]):
            seen.append(command)
    sent = "\n".join(seen)
    assert "EVALSHA" in sent and "acct-2" in sent
    for secret in secrets:
        assert secret not in sent
    stored = json.dumps([admin.hgetall("coord:{openai}"), admin.xrange("coord:{openai}:events")])
    assert "acct-1" in stored and not any(secret in stored for secret in secrets)
