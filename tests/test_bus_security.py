"""A bus that is safe to share, against a real Mosquitto: who may connect, what each role may
publish, whose name a control carries, whose events a run takes, which files are private."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mlrb_tui.cli import cli
from runner.broker_access import AccountStore, hash_password, verify_password
from runner.bus import (
    BusConfig,
    BusRefused,
    BusUnavailable,
    EventSubscriber,
    RunnerEndpoint,
    Topics,
    open_client,
    send_control,
    submit_job,
)
from runner.bus_options import bus_options
from runner.config import Config, DaemonInfo, write_daemon_info
from runner.control import ControlCommand
from runner.embedded_broker import _accepts, find_mosquitto, free_port
from runner.engine import Engine
from runner.events import Event, EventFactory, RejectCounter, encode_batch
from runner.journal import Journal, JournalReader
from runner.recorder import Recorder
from tests.conftest import Mosquitto, raw_client, require, until

pytestmark = pytest.mark.mosquitto


def outputs(factory: EventFactory, n: int, text: str = "line") -> list[Event]:
    return [factory.make("sandbox.output", {"stream": "stdout", "text": f"{text} {i}"})
            for i in range(n)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_password_hash_is_mosquittos_pbkdf2_format() -> None:
    hashed = hash_password("s3cret", salt=b"0123456789ab", iterations=101)
    assert hashed.startswith("$7$101$") and hashed.count("$") == 4
    assert verify_password("s3cret", hashed) and not verify_password("s3cret!", hashed)


# -- refusals ----------------------------------------------------------------------------
async def test_anonymous_and_wrong_password_clients_are_refused(mosquitto: Mosquitto) -> None:
    with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5):
            pass
    wrong = mosquitto.config().as_user("tester", "not-the-password")
    with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
        async with raw_client(wrong):
            pass
    cmd = ControlCommand(run="run-a", action="kill", operator="tester", reason="x")
    with pytest.raises(BusUnavailable, match="Not authorized"):
        await send_control(wrong, cmd, timeout=3)
    async with raw_client(mosquitto.config()):  # the right password gets in
        pass


async def test_the_broker_refuses_what_a_role_may_not_publish(mosquitto: Mosquitto,
                                                             tmp_path: Path) -> None:
    operator, viewer = mosquitto.config("operator"), mosquitto.config("viewer")
    t = Topics(operator.prefix)
    commands: list[ControlCommand] = []
    rejects = RejectCounter()
    runner = RunnerEndpoint(mosquitto.config("host-a"), "host-a",
                            JournalReader(tmp_path / "j.db").events)
    got: list[Event] = []
    sub = EventSubscriber(viewer, got.extend)
    sub_task = asyncio.create_task(sub.run())

    async def on_command(cmd: ControlCommand) -> None:
        commands.append(cmd)

    await runner.start()
    try:
        await runner.listen_controls(on_command, rejects)
        await until(lambda: t.all_controls in runner.subscribed and sub.connected,
                    "the runner's control subscription and the viewer's")
        # a viewer's kill: the broker says no, and the runner never sees it
        kill = ControlCommand(run="run-a", action="kill", operator="watcher", reason="mine now")
        with pytest.raises(BusRefused, match="Not authorized"):
            await send_control(viewer, kill)
        async with open_client(operator) as c:
            # an operator's control under another user's name
            with pytest.raises(BusRefused, match="Not authorized"):
                await c.publish_checked(t.control("run-a", "watcher"), kill.to_json())
            # an operator's job under another user's name, and one outside any name
            for topic in (t.jobs_of("watcher"), t.jobs):
                with pytest.raises(BusRefused, match="Not authorized"):
                    await c.publish_checked(topic, b'{"id": "j1", "task": "tiny_train"}')
            # an operator's requeue or job state: only runners say where a job went
            for topic in (t.requeue("host-a"), t.job_state("host-a", "j1")):
                with pytest.raises(BusRefused, match="Not authorized"):
                    await c.publish_checked(topic, b"{}")
            # an operator's event, under its own name or a runner's
            forged = encode_batch(outputs(EventFactory("run-a"), 1, "forged"))
            for who in ("tester", "host-a"):
                with pytest.raises(BusRefused, match="Not authorized"):
                    await c.publish_checked(t.event(who, "run-a"), forged)
        with pytest.raises(BusRefused, match="Not authorized"):  # a viewer submits nothing
            await submit_job(viewer, {"id": "j2", "task": "tiny_train"})
        async with open_client(mosquitto.config("host-b")) as c:  # a runner, under another's id
            with pytest.raises(BusRefused, match="Not authorized"):
                await c.publish_checked(t.event("host-a", "run-a"), forged)
            for topic in (t.requeue("host-a"), t.job_state("host-a", "j1"), t.jobs_of("host-b")):
                with pytest.raises(BusRefused, match="Not authorized"):
                    await c.publish_checked(topic, b"{}")
        # what the broker did let through, after all of that, arrives alone
        hold = ControlCommand(run="run-a", action="hold", operator="claims-to-be-root", reason="look")
        await send_control(operator, hold)
        real = outputs(EventFactory("run-a"), 1, "real")
        async with raw_client(mosquitto.config("host-a")) as c:
            await c.publish(t.event("host-a", "run-a"), encode_batch(real), qos=1)
        await until(lambda: commands and got, "the operator's hold and the runner's event")
        # the operator is the authenticated account, never the name the payload claims
        assert commands == [hold.model_copy(update={"operator": "tester"})]
        assert [e.data["text"] for e in got] == ["real 0"]
        assert rejects.total == 0 and sub.rejects.total == 0
    finally:
        sub_task.cancel()
        await runner.stop()


async def test_the_audit_names_the_authenticated_account_not_the_claimed_one(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from runner.config import BusTable
    from runner.engine import Job

    monkeypatch.setenv("MLRB_TASKS_PATH", str(Path(__file__).parent / "fixtures" / "tasks"))
    monkeypatch.setenv("TINY_STEPS", "100000")  # long enough to be killed while it runs
    monkeypatch.setenv("TINY_DELAY", "0.05")
    cred = mosquitto.accounts["gpu-host-a"]
    cfg = Config(home=tmp_path / "host", bus_url=mosquitto.url, backend="local",
                 bus=BusTable(username=cred.username, password=cred.password))
    engine = Engine(cfg)
    await engine.start()
    try:
        assert engine.runner_id == "gpu-host-a"  # the account is the runner id
        run = await engine.submit(Job(task="tiny_train", agent="scripted"))
        await until(lambda: engine.publisher.subscribed >= {Topics(cfg.prefix).all_controls},
                    "the runner's control subscription")
        await until(lambda: engine.supervisors[run].status == "running", "the run to start",
                    timeout=60)
        kill = ControlCommand(run=run, action="kill", operator="mallory@anywhere", reason="audit")
        await send_control(mosquitto.config("operator"), kill)
        assert (await engine.wait([run]))[run] == "killed"
    finally:
        await engine.stop()
    with sqlite3.connect(cfg.db_path) as db:
        audit = db.execute("SELECT action, operator, reason FROM interventions WHERE run = ?",
                           (run,)).fetchall()
    assert audit == [("kill", "tester", "audit")]


# -- forgery -----------------------------------------------------------------------------
async def test_a_forged_event_is_not_recorded_and_the_recorder_equals_the_journal(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "host-a.db")
    local = JournalReader(tmp_path / "host-a.db")
    pub = RunnerEndpoint(mosquitto.config("host-a"), "host-a", local.events)
    rec = Recorder(mosquitto.config("viewer"), tmp_path / "fleet.db", client_id="mlrb-rec-forgery")
    central = JournalReader(tmp_path / "fleet.db")
    rec_task = asyncio.create_task(rec.run())
    t = Topics("mlrb/v1")
    await pub.start()
    try:
        await asyncio.wait_for(rec.ready.wait(), 10)
        factory = EventFactory("run-a")
        first = [factory.make("run.created", {"task": "tiny_train", "runner": "host-a"}),
                 *outputs(factory, 19)]
        await journal.write(first)
        pub.publish(first)
        await until(lambda: central.max_seq("run-a") == 20, "the owner's first events recorded")
        # host-b holds runner credentials, so it may publish, but only under its own id
        twin = EventFactory("run-a", next_seq=5)
        forged = outputs(twin, 20, "forged")  # seq 5..24: some held already, some not yet
        async with raw_client(mosquitto.config("host-b")) as c:
            await c.publish(t.event("host-b", "run-a"), encode_batch(forged), qos=1)
            # a run.created that names another runner than its publisher
            claim = EventFactory("run-z").make("run.created", {"runner": "host-a"})
            await c.publish(t.event("host-b", "run-z"), encode_batch([claim]), qos=1)
        await until(lambda: rec.rejects.counts.get("not_owner", 0) == 2, "both forgeries refused")
        rest = outputs(factory, 10)
        await journal.write(rest)
        pub.publish(rest)
        # the owner itself sending a different seq 3 (a bug, or a forgery) is counted, not kept
        async with raw_client(mosquitto.config("host-a")) as c:
            again = EventFactory("run-a", next_seq=3)
            await c.publish(t.event("host-a", "run-a"), encode_batch(outputs(again, 1, "other")), qos=1)
        await until(lambda: rec.conflicts == 1, "the differing seq 3 counted")

        def rows(reader: JournalReader) -> list[bytes]:
            return [e.wire for e in reader.events("run-a", 0, 1000)]
        await until(lambda: rows(central) == rows(local), "the recorder's copy to equal the journal")
        assert len(rows(central)) == 30 and central.find_run("run-z") is None
        assert not any(b"forged" in r or b"other" in r for r in rows(central))
        assert central.list_runs()[0]["runner"] == "host-a"
        assert mode(tmp_path / "fleet.db") == 0o600  # the fleet's transcripts are private too
    finally:
        await pub.stop()
        rec_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rec_task
        journal.close()


# -- files -------------------------------------------------------------------------------
async def test_mlrb_home_and_its_secrets_are_private(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    home = tmp_path / "home"
    cfg = Config(home=home, backend="local")
    engine = Engine(cfg)
    await engine.start()
    try:
        write_daemon_info(cfg, DaemonInfo(pid=os.getpid(), bus_url=engine.bus_url or "",
                                          prefix=cfg.prefix, runner_id=engine.runner_id,
                                          db=str(cfg.db_path), broker="mosquitto", started=0.0))
        assert mode(home) == 0o700 and mode(cfg.broker_dir) == 0o700
        for f in (cfg.db_path, cfg.daemon_file, *(cfg.broker_dir / n for n in (
                "credentials.json", "passwd", "acl", "users.json", "mosquitto.conf",
                "mosquitto.log"))):
            assert mode(f) == 0o600, f
        wal = Path(f"{cfg.db_path}-wal")
        assert not wal.exists() or mode(wal) == 0o600
        # a local client reads the credentials and gets in; without them it is refused
        operator = bus_options(cfg, "operator", engine_info(cfg))
        assert operator is not None and operator.username and operator.password
        async with raw_client(operator):
            pass
        with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
            async with raw_client(operator.as_user(None, None)):
                pass
        assert "allow_anonymous false" in (cfg.broker_dir / "mosquitto.conf").read_text()
        # a read-only console's account: the broker refuses its controls
        viewer = bus_options(cfg, "viewer", engine_info(cfg))
        assert viewer is not None and viewer.username != operator.username
        cmd = ControlCommand(run="run-a", action="kill", operator="x", reason="read-only")
        with pytest.raises(BusRefused, match="Not authorized"):
            await send_control(viewer, cmd)
        await send_control(operator, cmd)  # the operator's is let through
    finally:
        await engine.stop()


def engine_info(cfg: Config) -> DaemonInfo:
    import json

    return DaemonInfo(**json.loads(cfg.daemon_file.read_text()))


# -- TLS and a fleet broker written by `mlrb broker config` ------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(dir: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (dir / f"{cn}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_cert(dir: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
              cn: str = "localhost", stem: str = "server") -> None:
    """`stem`.crt and `stem`.key, signed by `ca`; a server's names localhost and 127.0.0.1."""
    import ipaddress

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if stem == "server":
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    (dir / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dir / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


async def test_a_fleet_broker_with_tls_verifies_the_server_and_refuses_a_wrong_ca(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = find_mosquitto()
    require(exe is not None, "mosquitto")
    assert exe is not None
    monkeypatch.setenv("MLRB_HOME", str(tmp_path / "home"))
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    make_cert(fleet, make_ca(fleet, "ca"))
    make_ca(tmp_path, "stranger")  # a CA that signed nothing of this broker
    port = free_port()
    cli_runner = CliRunner()
    out = cli_runner.invoke(cli, ["broker", "config", "--dir", str(fleet), "--port", str(port),
                                  "--bind", "127.0.0.1", "--cafile", "ca.crt"])
    assert out.exit_code == 0, out.output
    assert "allow_anonymous false" in out.output and f"listener {port} 127.0.0.1" in out.output
    assert f"acl_file {fleet.resolve() / 'acl'}" in out.output
    added = cli_runner.invoke(cli, ["broker", "user", "add", "alice", "--role", "operator",
                                    "--dir", str(fleet)])
    assert added.exit_code == 0, added.output
    password = added.output.split("password: ")[1].strip()
    for name, role in (("bob", "viewer"), ("gpu-host-a", "runner"), ("gone", "viewer")):
        assert cli_runner.invoke(cli, ["broker", "user", "add", name, "--role", role,
                                       "--password-stdin", "--dir", str(fleet)],
                                 input="pw\n").exit_code == 0
    assert cli_runner.invoke(cli, ["broker", "user", "remove", "gone", "--dir", str(fleet)]).exit_code == 0
    listed = cli_runner.invoke(cli, ["broker", "user", "list", "--dir", str(fleet)]).output.split()
    assert listed == ["alice", "operator", "bob", "viewer", "gpu-host-a", "runner"]
    assert "user gone" not in (fleet / "acl").read_text()
    kept = (fleet / "users.json").read_text() + (fleet / "passwd").read_text()
    assert password not in kept and AccountStore(fleet).load()["alice"].role == "operator"
    assert mode(fleet) == 0o700 and all(mode(fleet / n) == 0o600 for n in ("passwd", "acl", "mosquitto.conf"))

    log = open(tmp_path / "fleet.log", "wb")  # noqa: SIM115 - the broker's stderr until it ends
    proc = subprocess.Popen([exe, "-c", str(fleet / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        await until(lambda: _accepts(port), f"the fleet broker on port {port}")
        url = f"mqtts://localhost:{port}"
        alice = BusConfig(url, username="alice", password=password, ca_file=str(fleet / "ca.crt"))
        runner = BusConfig(url, username="gpu-host-a", password="pw", ca_file=str(fleet / "ca.crt"))
        got: list[bytes] = []
        async with open_client(runner) as r:
            await r.subscribe_checked(Topics("mlrb/v1").all_controls)
            cmd = ControlCommand(run="run-a", action="hold", operator="alice", reason="over TLS")
            await send_control(alice, cmd)
            async with asyncio.timeout(10):
                async for m in r.messages:
                    got.append(bytes(m.payload))  # type: ignore[arg-type]
                    assert m.topic.value == "mlrb/v1/run/run-a/control/alice"
                    break
        assert got == [cmd.to_json()]
        bob = BusConfig(url, username="bob", password="pw", ca_file=str(fleet / "ca.crt"))
        with pytest.raises(BusRefused):
            await send_control(bob, cmd)
        # the server's certificate is checked: a CA that did not sign it is refused
        wrong = BusConfig(url, username="alice", password=password,
                          ca_file=str(tmp_path / "stranger.crt"))
        with pytest.raises(BusUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await send_control(wrong, cmd, timeout=3)
        # and without TLS the listener answers nothing a client could use
        with pytest.raises(BusUnavailable):
            await send_control(BusConfig(f"mqtt://localhost:{port}", username="alice",
                                         password=password), cmd, timeout=3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def test_client_certificates_name_the_account(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    exe = find_mosquitto()
    require(exe is not None, "mosquitto")
    assert exe is not None
    monkeypatch.setenv("MLRB_HOME", str(tmp_path / "home"))
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    ca = make_ca(fleet, "ca")
    make_cert(fleet, ca)
    make_cert(tmp_path, ca, cn="gpu-host-a", stem="gpu-host-a")
    port = free_port()
    cli_runner = CliRunner()
    out = cli_runner.invoke(cli, ["broker", "config", "--dir", str(fleet), "--port", str(port),
                                  "--bind", "127.0.0.1", "--client-certs"])
    assert out.exit_code == 0 and "use_identity_as_username true" in out.output, out.output
    assert cli_runner.invoke(cli, ["broker", "user", "add", "gpu-host-a", "--role", "runner",
                                   "--dir", str(fleet)]).exit_code == 0
    log = open(tmp_path / "fleet.log", "wb")  # noqa: SIM115 - the broker's stderr until it ends
    proc = subprocess.Popen([exe, "-c", str(fleet / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        await until(lambda: _accepts(port), f"the fleet broker on port {port}")
        t = Topics("mlrb/v1")
        me = BusConfig(f"mqtts://localhost:{port}", ca_file=str(fleet / "ca.crt"),
                       cert_file=str(tmp_path / "gpu-host-a.crt"),
                       key_file=str(tmp_path / "gpu-host-a.key"))
        async with open_client(me) as c:  # no password: the certificate's CN is the account
            await c.publish_checked(t.runner_state("gpu-host-a"), b"online", retain=True)
            with pytest.raises(BusRefused, match="Not authorized"):
                await c.publish_checked(t.runner_state("gpu-host-b"), b"online")
        with pytest.raises(aiomqtt.MqttError):  # without a certificate there is no way in
            async with open_client(BusConfig(me.url, ca_file=me.ca_file)):
                pass
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def test_the_local_accounts_are_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    from runner.embedded_broker import EmbeddedBroker

    monkeypatch.setenv("MLRB_OPERATOR", "ana@ops")
    async with EmbeddedBroker(tmp_path / "broker", runner="gpu-host-a") as first:
        operator, viewer = first.bus_config("operator"), first.bus_config("viewer")
    assert (operator.username, viewer.username) == ("ana@ops", "ana@ops-viewer")
    # a later start, whoever claims to be at the keyboard, keeps the accounts and passwords
    monkeypatch.setenv("MLRB_OPERATOR", "eve@elsewhere")
    async with EmbeddedBroker(tmp_path / "broker", runner="gpu-host-a") as again:
        kept = again.bus_config("operator")
        assert (kept.username, kept.password) == (operator.username, operator.password)
        assert again.bus_config("viewer").username == "ana@ops-viewer"
        async with raw_client(again.bus_config("operator")):
            pass
