#!/usr/bin/env python3
"""The web chat in a real headless Chromium (issue 13), against the real broker binaries.

Run by ./scripts/check-web (which makes the venv and builds the binaries). Two setups, the
same scenario each:

- dev:     one broker in dev mode (no DATABASE_URL: everything in memory);
- cluster: two replicas A and B on a fresh PostgreSQL database and a private redis-server;
           the browser talks to A, the WebSocket peers sit on B and A;
- lb:      the same replicas behind compose/haproxy.cfg (sticky cookie), run natively:
           the browser talks to the load balancer.

Scenario: a person signs in through /login and lands on /app; they appear in a CLI peer's
list_peers as peerType "human"; a DM from a WebSocket peer (a Python client signing a real
ed25519 hello) shows up in the page; the person answers and the peer receives it; a peer
that goes offline leaves the page's online list; an admin peer kicks the person and the
page says so. Topics (history, SSE, posts) are exercised when the REST API is offered by
the broker (the page's /app/key answers with a key). Screenshots go to
target/web-screenshots/, and the page must log no console error.

Prints `N passed, N failed` and exits non-zero on any failure.
"""

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import nacl.signing
import websockets
from playwright.async_api import async_playwright, expect

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "debug"
SHOTS = ROOT / "target" / "web-screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HAPROXY = "/usr/sbin/haproxy"
ADMIN_TOKEN = "web-chat-test-admin-token-0123456789"
PG_ADMIN = os.environ.get("TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PASSWORD = "correct horse battery staple"
WAIT_MS = 10_000
# The person's member name: /cli/mesh/create names the owner's row `<mesh name>-owner`.
ALICE = "alice-owner"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One broker process; reads `listening on http://ADDR` from its output."""

    def __init__(self, name, env, log_dir):
        self.name = name
        self.log = open(log_dir / f"broker-{name}.log", "w+")
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": "0",
            "BROKER_ADMIN_TOKEN": ADMIN_TOKEN,
            "RUST_LOG": "broker=info",
            "SHUTDOWN_DRAIN_MS": "200",
            "SHUTDOWN_DEADLINE_MS": "3000",
            "BROKER_NODE_ID": name,
        }
        full.update(env)
        self.proc = subprocess.Popen(
            [str(BIN / "broker")], env=full, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            self.log.seek(0)
            m = re.search(r"listening on http://(\S+)", self.log.read())
            if m:
                self.addr = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.log.seek(0)
        raise RuntimeError(f"broker {name} did not start:\n{self.log.read()[-3000:]}")

    @property
    def http(self):
        return f"http://{self.addr}"

    @property
    def ws(self):
        return f"ws://{self.addr}/ws"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Endpoint:
    """Where the browser goes when it is not a broker itself: the load balancer."""

    def __init__(self, addr):
        self.addr = addr

    @property
    def http(self):
        return f"http://{self.addr}"

    @property
    def ws(self):
        return f"ws://{self.addr}/ws"


def start_haproxy(a, b, log_dir):
    """compose/haproxy.cfg (sticky cookie, WebSocket timeouts), natively, in front of a
    and b; ready once /health answers through it."""
    port = free_port()
    log = open(log_dir / "haproxy.log", "w")
    env = {**os.environ, "LB_BIND": f"127.0.0.1:{port}", "LB_SERVER_A_ADDR": a.addr,
           "LB_SERVER_B_ADDR": b.addr, "CHECK_INTER": "200ms"}
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(ROOT / "compose" / "haproxy.cfg")],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, Endpoint(f"127.0.0.1:{port}")
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"haproxy did not route: see {log_dir / 'haproxy.log'}")
        time.sleep(0.05)


def api(broker, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        broker.http + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    try:
        return base64.b64decode(text).decode()
    except Exception:
        return None


class Peer:
    """A WebSocket peer with a real ed25519 member key: hello, frames, pushes."""

    def __init__(self, name):
        self.name = name
        self.key = nacl.signing.SigningKey.generate()
        self.pubkey = self.key.verify_key.encode().hex()
        self.frames = []
        self.cond = asyncio.Condition()

    async def connect(self, url, mesh_id, member_id):
        self.ws = await websockets.connect(url, max_size=2**20)
        ts = int(time.time() * 1000)
        text = f"{mesh_id}|{member_id}|{self.pubkey}|{ts}"
        sig = self.key.sign(text.encode()).signature.hex()
        await self.ws.send(json.dumps({
            "type": "hello", "meshId": mesh_id, "memberId": member_id, "pubkey": self.pubkey,
            "displayName": self.name, "sessionId": f"py-{self.name}-{secrets.token_hex(4)}",
            "pid": os.getpid(), "cwd": "/tmp", "peerType": "ai", "channel": "test",
            "timestamp": ts, "signature": sig,
        }))
        self.reader = asyncio.create_task(self._read())
        return await self.expect(lambda f: f.get("type") == "hello_ack", "hello_ack")

    async def _read(self):
        try:
            async for raw in self.ws:
                f = json.loads(raw)
                async with self.cond:
                    self.frames.append(f)
                    self.cond.notify_all()
                if f.get("type") == "push" and f.get("subtype") != "system" and f.get("messageId"):
                    await self.ws.send(json.dumps({"type": "client_ack", "brokerMessageId": f["messageId"]}))
        except websockets.ConnectionClosed:
            pass

    async def expect(self, pred, what, timeout=WAIT_MS / 1000):
        async def wait():
            async with self.cond:
                while True:
                    for i, f in enumerate(self.frames):
                        if pred(f):
                            return self.frames.pop(i)
                    await self.cond.wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: no {what}; got {self.frames[-10:]}")

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def close(self):
        await self.ws.close()
        await self.reader


class Run:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    async def check(self, name, coro):
        try:
            await coro
            self.passed += 1
            print(f"ok   {name}", flush=True)
        except Exception:
            self.failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)


def setup_mesh(b):
    """A user with a password who owns a mesh made the way the CLI makes one
    (`/cli/mesh/create`: their member row is `<mesh name>-owner`, here ALICE), and two
    more members: bob (admin, a WebSocket peer) and carol (a WebSocket peer)."""
    email = f"alice-{secrets.token_hex(3)}@example.test"
    st, user = api(b, "POST", "/api/v1/users", {"email": email, "displayName": "Alice", "password": PASSWORD})
    assert st == 201, (st, user)
    st, tok = api(b, "POST", "/cli/token", {"user_id": user["id"], "email": email, "name": "Alice"})
    assert st == 200, (st, tok)
    alice_key = nacl.signing.SigningKey.generate().verify_key.encode().hex()
    req = urllib.request.Request(
        b.http + "/cli/mesh/create", method="POST",
        data=json.dumps({"name": "alice", "pubkey": alice_key}).encode(),
        headers={"Authorization": f"Bearer {tok['token']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        mesh = json.loads(r.read())
    bob, carol = Peer("bob"), Peer("carol")
    st, bm = api(b, "POST", f"/api/v1/meshes/{mesh['id']}/members",
                 {"pubkey": bob.pubkey, "displayName": "bob", "role": "admin"})
    assert st == 201, (st, bm)
    st, cm = api(b, "POST", f"/api/v1/meshes/{mesh['id']}/members",
                 {"pubkey": carol.pubkey, "displayName": "carol"})
    assert st == 201, (st, cm)
    return {"email": email, "mesh": mesh, "alice": {"pubkey": alice_key, "name": ALICE},
            "bob": (bob, bm["id"]), "carol": (carol, cm["id"])}


async def scenario(run, mode, a, b, browser):
    """`a` serves the browser (a broker or the load balancer); bob connects to `b`, carol
    to `a`."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = 0

    async def snap(page, what):
        nonlocal shot
        shot += 1
        await page.screenshot(path=str(SHOTS / f"{mode}-{shot:02d}-{what}.png"), full_page=True)

    m = setup_mesh(a)
    mesh_id = m["mesh"]["id"]
    bob, bob_id = m["bob"]
    carol, carol_id = m["carol"]
    await bob.connect(b.ws, mesh_id, bob_id)
    await carol.connect(a.ws, mesh_id, carol_id)

    ctx = await browser.new_context()
    page = await ctx.new_page()
    errors = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(f"{msg.text} at {msg.location.get('url')}"))
    page.on("pageerror", lambda e: errors.append(str(e)))

    async def sign_in():
        await page.goto(a.http + "/app")
        await expect(page).to_have_url(re.compile(r"/login\?next="))
        await page.fill("input[name=email]", m["email"])
        await page.fill("input[name=password]", PASSWORD)
        await snap(page, "login")
        await page.click("button[type=submit]")
        await expect(page).to_have_url(re.compile(r"/app$"))
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        csp = (await page.request.get(a.http + "/app")).headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
    await run.check(f"{mode}: sign in and open the chat", sign_in())

    async def human_is_a_peer():
        await expect(page.locator("#peers li[data-name=bob]")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#peers li[data-name=carol]")).to_be_visible(timeout=WAIT_MS)
        await bob.send({"type": "list_peers", "_reqId": "lp1"})
        pl = await bob.expect(lambda f: f.get("type") == "peers_list", "peers_list")
        human = [p for p in pl["peers"] if p["displayName"] == ALICE]
        assert human and human[0].get("peerType") == "human", pl
        assert human[0]["memberPubkey"] == m["alice"]["pubkey"], human
        await snap(page, "peers")
    await run.check(f"{mode}: the person is in list_peers as peerType human", human_is_a_peer())

    async def dm_from_peer():
        text = "hello from bob, @" + ALICE
        await bob.send({"type": "send", "targetSpec": m["alice"]["pubkey"], "priority": "now",
                        "nonce": b64("n" * 24), "ciphertext": b64(text), "id": "dm1"})
        ack = await bob.expect(lambda f: f.get("type") == "ack" and f.get("id") == "dm1", "ack")
        assert ack["queued"] is True, ack
        await expect(page.locator("#notif")).to_be_visible(timeout=WAIT_MS)
        await page.click("#peers li[data-name=bob] button")
        await expect(page.locator("#messages")).to_contain_text(text, timeout=WAIT_MS)
        await snap(page, "dm-received")
    await run.check(f"{mode}: a DM from a WebSocket peer shows up", dm_from_peer())

    async def dm_to_peer():
        await page.fill("#text", "hi bob, from the browser")
        await page.click("#send")
        push = await bob.expect(lambda f: f.get("type") == "push" and f.get("subtype") != "system"
                                and unb64(f.get("ciphertext", "")) == "hi bob, from the browser", "the browser's DM")
        assert push["senderName"] == ALICE, push
        await snap(page, "dm-sent")
    await run.check(f"{mode}: a DM from the page reaches the peer", dm_to_peer())

    await topics(run, mode, a, page, m, bob, snap)

    async def peer_goes_offline():
        await carol.close()
        await expect(page.locator("#peers li[data-name=carol]")).to_have_count(0, timeout=WAIT_MS)
        await snap(page, "peer-offline")
    await run.check(f"{mode}: a peer going offline leaves the online list", peer_goes_offline())

    async def kicked():
        await bob.send({"type": "kick", "target": ALICE, "_reqId": "k1"})
        ack = await bob.expect(lambda f: f.get("type") == "kick_ack", "kick_ack")
        assert ALICE in ack["kicked"], ack
        await expect(page.locator("#banner")).to_contain_text("kicked", timeout=WAIT_MS)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "off")
        await snap(page, "kicked")
    await run.check(f"{mode}: a kick reaches the page and it says so", kicked())

    async def banned():
        # Kicked is not banned: a reload rejoins; then a ban ends the page for good.
        await page.reload()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        # The page's first REST calls have answered (a ban now would refuse them, rightly).
        await expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
        await bob.send({"type": "ban", "target": ALICE, "_reqId": "b1"})
        ack = await bob.expect(lambda f: f.get("_reqId") == "b1", "ban reply")
        assert ack["type"] == "ban_ack", ack
        await expect(page.locator("#banner")).to_contain_text("banned", timeout=WAIT_MS)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "off")
        await snap(page, "banned")
    await run.check(f"{mode}: a ban reaches the page and it says so", banned())

    async def no_console_errors():
        assert not errors, errors
    await run.check(f"{mode}: the page logged no console error", no_console_errors())

    await bob.close()
    await ctx.close()


async def topics(run, mode, a, page, m, bob, snap):
    """Topics over REST, when the broker offers it (the page's /app/key gives a key)."""
    has_key = await page.evaluate(
        "fetch('/app/key',{method:'POST',headers:{'Content-Type':'application/json',"
        "'X-CSRF-Token':document.querySelector('meta[name=csrf]').content},"
        "body:JSON.stringify({meshId:%s})}).then(r=>r.json()).then(d=>!!d.secret)" % json.dumps(m["mesh"]["id"])
    )
    if not has_key:
        print(f"skip {mode}: topics (the broker offers no REST API keys yet: /app/key has none)")
        return
    # Topics need the REST API and the topic family: created by bob over WebSocket.
    async def open_topic_and_chat():
        await bob.send({"type": "topic_create", "name": "general", "visibility": "public", "_reqId": "tc"})
        await bob.expect(lambda f: f.get("_reqId") == "tc", "topic_create reply")
        await bob.send({"type": "topic_list", "_reqId": "tl"})
        tl = await bob.expect(lambda f: f.get("_reqId") == "tl", "topic_list reply")
        tid = [t for t in tl["topics"] if t["name"] == "general"][0]["id"]

        async def post(text, ref):
            await bob.send({"type": "send", "targetSpec": f"#{tid}", "priority": "next",
                            "nonce": b64("n" * 24), "ciphertext": b64(text), "id": ref})
            ack = await bob.expect(lambda f: f.get("type") == "ack" and f.get("id") == ref, "topic ack")
            assert ack["queued"] is True, ack

        # History: posted (on bob's replica) before the page opens the topic.
        await post("posted before you came", "tp0")
        await page.reload()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await page.click("#topics li[data-name=general] button")
        await expect(page.locator("#title")).to_have_text("#general")
        await expect(page.locator("#messages")).to_contain_text("posted before you came", timeout=WAIT_MS)
        await expect(page.locator("#stream")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        # Live: a post by the WebSocket peer (replica b in the cluster) arrives, with a
        # mention notification.
        t0 = time.monotonic()
        await post("topic hello @" + ALICE, "tp1")
        await expect(page.locator("#messages")).to_contain_text("topic hello @" + ALICE, timeout=WAIT_MS)
        print(f"     {mode}: a peer's topic post was shown {1000 * (time.monotonic() - t0):.0f} ms after its ack")
        await expect(page.locator("#banner")).to_contain_text("mentioned you in #general", timeout=WAIT_MS)
        await snap(page, "topic-received")
        # A post from the page, with an @ mention picked from the autocomplete, reaches bob.
        await page.fill("#text", "")
        await page.type("#text", "thanks @bo")
        await expect(page.locator("#suggest button", has_text="@bob")).to_be_visible(timeout=WAIT_MS)
        await snap(page, "mention-autocomplete")
        await page.click("#suggest button:has-text('@bob')")
        await page.type("#text", "answer from the browser")
        await page.click("#send")
        push = await bob.expect(lambda f: f.get("type") == "push"
                                and unb64(f.get("ciphertext", "")) == "thanks @bob answer from the browser",
                                "the page's topic post")
        assert push.get("senderName") == ALICE, push
        await expect(page.locator("#messages")).to_contain_text("thanks @bob answer from the browser", timeout=WAIT_MS)
        await snap(page, "topic-sent")
    await run.check(f"{mode}: a topic: history, live messages, a post", open_topic_and_chat())


def psql(sql):
    subprocess.run(["psql", PG_ADMIN, "-q", "-c", sql], check=True, capture_output=True)


async def main():
    run = Run()
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    logs = Path(tempfile.mkdtemp(prefix="web-chat-"))
    procs = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
            # 1. Dev mode: one broker, everything in memory.
            dev = Broker("dev", {}, logs)
            procs.append(dev)
            await scenario(run, "dev", dev, dev, browser)

            # 2. Cluster: two replicas on PostgreSQL + a private redis-server.
            db = "web_" + secrets.token_hex(6)
            psql(f"CREATE DATABASE {db}")
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
            subprocess.run([str(BIN / "migrator"), "run"], env={**os.environ, "DATABASE_URL": url},
                           check=True, capture_output=True)
            rport = free_port()
            rdir = logs / "redis"
            rdir.mkdir()
            redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(rdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(200):
                    try:
                        socket.create_connection(("127.0.0.1", rport), 0.2).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                env = {"DATABASE_URL": url, "REDIS_URL": f"redis://127.0.0.1:{rport}"}
                ra = Broker("a", env, logs)
                procs.append(ra)
                rb = Broker("b", env, logs)
                procs.append(rb)
                await scenario(run, "cluster", ra, rb, browser)
                # 3. The same two replicas behind the sticky load balancer of compose/.
                lb, front = start_haproxy(ra, rb, logs)
                try:
                    await scenario(run, "lb", front, rb, browser)
                finally:
                    lb.terminate()
                    lb.wait(10)
            finally:
                for b in procs:
                    b.stop()
                procs.clear()
                redis.terminate()
                redis.wait(10)
                try:
                    psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                except subprocess.CalledProcessError:
                    pass
            await browser.close()
    except Exception:
        run.failed += 1
        print(f"FAIL setup\n{traceback.format_exc()}", flush=True)
    finally:
        for b in procs:
            b.stop()
    print(f"screenshots: {SHOTS}")
    if run.failed:
        print(f"broker logs: {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    print(f"{run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
