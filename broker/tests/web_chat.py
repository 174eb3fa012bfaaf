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
the broker (the page's /app/key answers with a key), with the page's own key: it registers
its IndexedDB-held ed25519 key for its web-managed member row, waits for a peer to share a
keyed topic's key, then posts v2 bodies the peer decrypts (PyNaCl, i.e. libsodium) and
shows the peer's v2 posts decrypted, and re-seals the key for the members pending-seals
lists until the list is empty; on PostgreSQL also "enable encryption" on a v1 topic. The
page's crypto.js is checked against vectors a Rust test computes (crypto_secretbox,
crypto_box, ed25519-dalek; target/web-crypto-vectors.json). Screenshots go to
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

import nacl.public
import nacl.secret
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
# The chat's topic identity: the person's web-managed row (rest.md §4.10).
ALICE_WEB = ALICE + "-web"
# Written by the Rust test web_chat::web_crypto_vectors_are_computed_by_rust (check-web
# runs it first): inputs and outputs of crypto_secretbox, crypto_box, X25519, ed25519 ->
# X25519 and sealed topic keys, which the page's crypto.js must reproduce.
VECTORS = ROOT / "target" / "web-crypto-vectors.json"
CHECK_VECTORS_JS = """async (V) => {
  const C = CMCrypto, h = C.hex, u = C.unhex, bad = [];
  const eq = (what, a, b) => { if (a !== b) bad.push(what + ': ' + a + ' != ' + b); };
  V.secretbox.forEach((v, i) => {
    eq('secretbox ' + i, h(C.secretbox(u(v.msg), u(v.nonce), u(v.key))), v.boxed);
    const m = C.secretboxOpen(u(v.boxed), u(v.nonce), u(v.key));
    eq('secretbox open ' + i, m && h(m), v.msg);
    const t = u(v.boxed); t[0] ^= 1;
    eq('secretbox forged ' + i, C.secretboxOpen(t, u(v.nonce), u(v.key)), null);
  });
  V.x25519.forEach((v, i) => {
    eq('x25519 ' + i, h(C.x25519(u(v.secret), u(v.public))), v.shared);
    eq('x25519 public ' + i, h(C.x25519Public(u(v.secret))), v.secretPublic);
  });
  for (const [i, v] of V.edToX.entries()) {
    eq('ed->x public ' + i, h(C.edPublicToX(u(v.edPublic))), v.xPublic);
    eq('ed->x secret ' + i, h(await C.edSeedToX(u(v.seed))), v.xSecret);
  }
  V.box.forEach((v, i) => {
    eq('box ' + i, h(C.box(u(v.msg), u(v.nonce), u(v.theirPublic), u(v.mySecret))), v.boxed);
  });
  for (const [i, v] of V.seal.entries()) {
    const s = C.sealKey(u(v.topicKey), u(v.memberEdPublic), u(v.eph), u(v.nonce));
    eq('seal ' + i, s.encryptedKey, v.encryptedKey);
    eq('seal nonce ' + i, s.nonce, v.nonceB64);
    const k = C.openKey(v.encryptedKey, v.nonceB64, await C.edSeedToX(u(v.memberSeed)));
    eq('open seal ' + i, k && h(k), v.topicKey);
    eq('body ' + i, C.encryptBody(v.text, u(v.topicKey), u(v.bodyNonce)).ciphertext, v.ciphertext);
    eq('body open ' + i, C.decryptBody(v.ciphertext, C.b64(u(v.bodyNonce)), u(v.topicKey)), v.text);
  }
  return { bad, checked: V.secretbox.length + V.x25519.length + V.edToX.length + V.box.length + V.seal.length };
}"""


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
    keys = {}
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
        # The topic is keyed (the broker sealed its key for bob, its creator): the page has
        # registered its own key and waits for a copy.
        await expect(page.locator("#keystate")).to_have_attribute("data-state", "waiting", timeout=WAIT_MS)
        await expect(page.locator("#keystate")).to_have_text("waiting for a peer to share the key")
        await snap(page, "topic-waiting-for-key")
        st, key = await bob_rest_key(bob)
        assert st, key
        keys["bob"] = key
        st, members = rest(a, "GET", "/api/v1/members", key)
        assert st == 200, members
        web_row = [x for x in members["members"] if x["displayName"] == ALICE_WEB][0]
        # ... the key in the page's IndexedDB, registered with POST /me/peer-pubkey.
        held = await page.evaluate("""(slot) => new Promise((res, rej) => {
            const r = indexedDB.open('claudemesh-chat', 1);
            r.onsuccess = () => { const g = r.result.transaction('keys').objectStore('keys').get(slot);
              g.onsuccess = () => res(g.result && g.result.publicKey); g.onerror = () => rej(g.error); };
            r.onerror = () => rej(r.error); })""", web_row["memberId"])
        assert held == web_row["pubkey"], (held, web_row)
        # bob opens his copy (ed25519 -> X25519, libsodium) and seals the key for the page
        # only; the page's own re-seal must then cover everyone else pending.
        topic_key = open_copy(a, "general", key, bob)
        keys["general"] = topic_key
        # carol joins too: pending, with no copy until someone seals for her.
        carol = m["carol"][0]
        await carol.send({"type": "topic_join", "topic": "general"})
        for _ in range(200):
            st, pending = rest(a, "GET", "/api/v1/topics/general/pending-seals", key)
            if m["carol"][1] in {x["memberId"] for x in pending["pending"]}:
                break
            await asyncio.sleep(0.05)
        st, pending = rest(a, "GET", "/api/v1/topics/general/pending-seals", key)
        assert st == 200, pending
        others = {x["memberId"] for x in pending["pending"]} - {web_row["memberId"]}
        assert web_row["memberId"] in {x["memberId"] for x in pending["pending"]}, pending
        assert others, pending
        sealed = seal_copy(topic_key, web_row["pubkey"])
        st, r = rest(a, "POST", "/api/v1/topics/general/seal", key, {"memberId": web_row["memberId"], **sealed})
        assert st == 200, r
        await expect(page.locator("#keystate")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
        await wait_pending_empty(a, "general", key)
        # A post from the page, with an @ mention picked from the autocomplete, reaches bob.
        await page.fill("#text", "")
        await page.type("#text", "thanks @bo")
        await expect(page.locator("#suggest button", has_text="@bob")).to_be_visible(timeout=WAIT_MS)
        await snap(page, "mention-autocomplete")
        await page.click("#suggest button:has-text('@bob')")
        await page.type("#text", "answer from the browser")
        await page.click("#send")
        # Posted v2: bob decrypts it with the topic key.
        push = await bob.expect(lambda f: f.get("type") == "push"
                                and opens_to(keys["general"], f, "thanks @bob answer from the browser"),
                                "the page's v2 topic post, decrypted by bob")
        assert push.get("senderName") == ALICE_WEB, push
        assert unb64(push["ciphertext"]) != "thanks @bob answer from the browser", push
        # bob posts v2: the page shows it decrypted.
        await post_v2(bob, tid, keys["general"], "v2 from bob: only members can read this", "tv2")
        await expect(page.locator("#messages")).to_contain_text("v2 from bob: only members can read this",
                                                               timeout=WAIT_MS)
        await expect(page.locator("#messages")).to_contain_text("thanks @bob answer from the browser", timeout=WAIT_MS)
        await snap(page, "topic-sent")
    await run.check(f"{mode}: a topic: history, live messages, a post", open_topic_and_chat())

    if mode == "dev":
        async def crypto_matches_rust():
            vectors = json.loads(VECTORS.read_text())
            got = await page.evaluate(CHECK_VECTORS_JS, vectors)
            assert not got["bad"], got["bad"]
            assert got["checked"] >= 30, got
            print(f"     {mode}: crypto.js matched {got['checked']} Rust vector groups")
        await run.check(f"{mode}: the page's crypto matches Rust's vectors", crypto_matches_rust())

    async def enable_encryption():
        # An unencrypted topic (as /cli/mesh/create's #general of the reference, or a migrated
        # one): bob creates one and its key is dropped in the database.
        await bob.send({"type": "topic_create", "name": "plain", "_reqId": "tcp"})
        await bob.expect(lambda f: f.get("_reqId") == "tcp", "topic_create reply")
        st, r = rest(a, "PATCH", "/api/v1/topics/plain/read", keys["bob"])
        assert st == 200, r
        psql_db(DBS[mode], "UPDATE topic SET encrypted_key_pubkey = NULL WHERE name = 'plain'; "
                "DELETE FROM topic_member_key WHERE topic_id IN (SELECT id FROM topic WHERE name = 'plain')")
        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
        await page.click("#topics li[data-name=plain] button")
        await expect(page.locator("#keystate")).to_have_attribute("data-state", "plain", timeout=WAIT_MS)
        await expect(page.locator("#keystate")).to_have_text("plaintext (v1)")
        await expect(page.locator("#encrypt")).to_be_visible()
        await snap(page, "topic-plaintext")
        await page.click("#encrypt")
        await expect(page.locator("#keystate")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
        # The page claimed the topic key and sealed it for every member (bob included).
        await wait_pending_empty(a, "plain", keys["bob"])
        topic_key = open_copy(a, "plain", keys["bob"], bob)
        st, hist = rest(a, "GET", "/api/v1/topics/plain/messages?limit=1", keys["bob"])
        assert st == 200, hist
        await post_v2(bob, hist["topicId"], topic_key, "v2 in a freshly keyed topic", "tv3")
        await expect(page.locator("#messages")).to_contain_text("v2 in a freshly keyed topic", timeout=WAIT_MS)
        await snap(page, "topic-encrypted")
    if mode in DBS:
        await run.check(f"{mode}: enable encryption: the page claims a key for a v1 topic and shares it",
                        enable_encryption())


# The PostgreSQL database of a mode (cluster, lb), for the test's direct edits.
DBS = {}


def psql_db(db, sql):
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    subprocess.run(["psql", url, "-q", "-c", sql], check=True, capture_output=True)


def open_copy(broker, topic, key, peer):
    """The topic key from `peer`'s sealed copy (its ed25519 member key as X25519, libsodium)."""
    st, copy = rest(broker, "GET", f"/api/v1/topics/{topic}/key", key)
    assert st == 200, copy
    blob = base64.b64decode(copy["encryptedKey"])
    topic_key = nacl.public.Box(peer.key.to_curve25519_private_key(), nacl.public.PublicKey(blob[:32])) \
        .decrypt(blob[32:], base64.b64decode(copy["nonce"]))
    assert len(topic_key) == 32
    return topic_key


def seal_copy(topic_key, member_pubkey):
    """A sealed copy for a member (extensions §9): fresh X25519 public key ‖ box, nonce."""
    ed = nacl.signing.VerifyKey(bytes.fromhex(member_pubkey))
    eph = nacl.public.PrivateKey.generate()
    nonce = secrets.token_bytes(24)
    boxed = nacl.public.Box(eph, ed.to_curve25519_public_key()).encrypt(topic_key, nonce).ciphertext
    return {"encryptedKey": base64.b64encode(bytes(eph.public_key) + boxed).decode(),
            "nonce": base64.b64encode(nonce).decode()}


def opens_to(topic_key, f, text):
    try:
        return nacl.secret.SecretBox(topic_key).decrypt(
            base64.b64decode(f["ciphertext"]), base64.b64decode(f["nonce"])) == text.encode()
    except Exception:
        return False


async def post_v2(peer, topic_id, topic_key, text, ref):
    nonce = secrets.token_bytes(24)
    ct = nacl.secret.SecretBox(topic_key).encrypt(text.encode(), nonce).ciphertext
    await peer.send({"type": "send", "targetSpec": f"#{topic_id}", "priority": "next", "bodyVersion": 2,
                     "nonce": base64.b64encode(nonce).decode(), "ciphertext": base64.b64encode(ct).decode(),
                     "id": ref})
    ack = await peer.expect(lambda f: f.get("type") == "ack" and f.get("id") == ref, "v2 ack")
    assert ack["queued"] is True, ack


async def wait_pending_empty(broker, topic, key):
    """pending-seals of a keyed topic becomes empty (the page's re-seal)."""
    pending = None
    for _ in range(200):
        st, pending = rest(broker, "GET", f"/api/v1/topics/{topic}/pending-seals", key)
        assert st == 200, pending
        if pending["senderPubkey"] and not pending["pending"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"pending-seals of #{topic} stays {pending}")


async def bob_rest_key(bob):
    """A REST key of bob's (read + send), minted over his WebSocket."""
    await bob.send({"type": "apikey_create", "label": "bob-test", "capabilities": ["read", "send"],
                    "_reqId": "ak"})
    f = await bob.expect(lambda f: f.get("_reqId") == "ak", "apikey_created")
    return bool(f.get("secret")), f.get("secret") or f


def rest(broker, method, path, key, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(broker.http + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


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
            DBS["cluster"] = DBS["lb"] = db
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
