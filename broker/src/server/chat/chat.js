// The claudemesh web chat (served at /app by the broker; see server/chat.rs).
// No framework, no inline script, nothing fetched from elsewhere. Everything shown is set
// with textContent, never as HTML.
//
// Two channels:
// - the tab's WebSocket (/app/ws): the person as a presence of their member: peers with
//   status, DMs (queued durably, acknowledged with client_ack), system events, kick/ban;
// - the REST v1 API (/api/v1, rest.md) with a key minted for the page (/app/key): topics,
//   history, the SSE stream, posts with @mentions, members, notifications.
//
// Topic keys (rest.md §7, crypto in crypto.js): the page's key is issued by the person's
// web-managed member row, whose ed25519 key this browser holds (IndexedDB) and registers
// with POST /me/peer-pubkey. Per topic it fetches its sealed copy of the topic key: 404 →
// "waiting for a peer to share the key" (retried every 5 s), 409 → "plaintext (v1)" with an
// "enable encryption" button (claim-key). Holding the key it posts v2 (secretbox), shows
// v2 messages decrypted, and re-seals the key every 30 s for the members pending-seals
// lists.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf"]').content;

  const S = {
    meshes: [],
    mesh: null, // {meshId, displayName, memberPubkey, ...}
    ws: null,
    wsBackoff: 1000,
    stopped: false, // kicked or banned: no reconnect
    key: null, // REST key secret, or null when the REST API is unavailable
    topics: [],
    peers: [],
    members: [],
    view: null, // {kind:'topic', name} | {kind:'dm', pubkey, name}
    seen: new Set(),
    lines: [], // messages of the current view: {id, who, text, at, mine}
    dms: new Map(), // member pubkey -> [{id, who, text, at, mine}]
    unreadDm: new Map(),
    stream: null, // AbortController of the topic stream
    streamBackoff: 1000,
    lastEvent: 0,
    notifications: 0,
    lastRead: 0,
    web: null, // {memberId, displayName, pubkey}: the page key's issuer, the web-managed row
    me: null, // {seed, publicKey, xSecret}: this browser's member key (IndexedDB)
    topicKey: null, // the open topic's 32-byte key, when held
    keyState: 'none', // none | plain | waiting | ready
    keyTimer: null,
    sealTimer: null,
  };

  // ---- helpers -------------------------------------------------------------------------

  function tabId() {
    let t = sessionStorage.getItem('cm_tab');
    if (!t) {
      const b = new Uint8Array(12);
      crypto.getRandomValues(b);
      t = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
      sessionStorage.setItem('cm_tab', t);
    }
    return t;
  }

  function b64encode(text) {
    const bytes = new TextEncoder().encode(text);
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }

  function b64decode(b64) {
    try {
      const bin = atob(b64);
      const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch (_) {
      return null;
    }
  }

  function randomNonce() {
    const b = new Uint8Array(24);
    crypto.getRandomValues(b);
    let s = '';
    for (const x of b) s += String.fromCharCode(x);
    return btoa(s);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function banner(text, kind) {
    const b = $('banner');
    b.textContent = text;
    b.className = kind || 'info';
    b.hidden = !text;
  }

  function setConn(state, text) {
    const c = $('conn');
    c.className = 'dot ' + state;
    c.textContent = text;
    c.dataset.state = state;
  }

  // The topic stream's state (live, connecting, reconnecting, stopped) and the seconds
  // since its last event.
  function setStream(state) {
    const e = $('stream');
    e.dataset.state = state;
    S.streamState = state;
    showStream();
  }

  function showStream() {
    const e = $('stream');
    if (!S.streamState || S.streamState === 'none') {
      e.textContent = '';
      return;
    }
    const ago = S.lastEvent ? ' · last event ' + Math.round((Date.now() - S.lastEvent) / 1000) + ' s ago' : '';
    e.textContent = 'stream ' + S.streamState + ago;
  }

  function myName() {
    return S.mesh ? S.mesh.displayName : '';
  }

  function mentionsMe(text) {
    const n = myName().toLowerCase();
    if (!n) return false;
    const re = /@([\w.-]{1,64})/g;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m[1].toLowerCase() === n) return true;
    }
    return false;
  }

  function knownNames() {
    const online = new Map();
    for (const p of S.peers) online.set(p.displayName, true);
    const names = new Map();
    for (const p of S.peers) names.set(p.displayName, true);
    for (const m of S.members) if (!names.has(m.displayName)) names.set(m.displayName, !!m.online || online.has(m.displayName));
    return names; // name -> online
  }

  function extractMentions(text) {
    const names = new Set(Array.from(knownNames().keys(), (n) => n.toLowerCase()));
    const out = [];
    const re = /@([\w.-]{1,64})/g;
    let m;
    while ((m = re.exec(text)) !== null && out.length < 16) {
      const n = m[1].toLowerCase();
      if (names.has(n) && !out.includes(n)) out.push(n);
    }
    return out;
  }

  function notify(text) {
    S.notifications += 1;
    const n = $('notif');
    n.hidden = false;
    n.textContent = String(S.notifications);
    n.title = text;
    banner(text, 'mention');
  }

  // ---- rendering -----------------------------------------------------------------------

  function renderMessages() {
    const list = $('messages');
    const filter = $('search').value.trim().toLowerCase();
    list.textContent = '';
    for (const l of S.lines) {
      if (filter && !(l.text.toLowerCase().includes(filter) || l.who.toLowerCase().includes(filter))) continue;
      const li = el('li', l.mine ? 'msg mine' : l.system ? 'msg system' : 'msg');
      li.dataset.id = l.id || '';
      li.append(el('span', 'who', l.who), el('span', 'text', l.text));
      if (l.at) li.append(el('time', 'at', new Date(l.at).toLocaleTimeString()));
      list.append(li);
    }
    list.scrollTop = list.scrollHeight;
  }

  function addLine(line) {
    if (line.id) {
      if (S.seen.has(line.id)) return;
      S.seen.add(line.id);
    }
    S.lines.push(line);
    renderMessages();
  }

  function systemLine(text) {
    addLine({ id: null, who: '·', text, at: Date.now(), system: true });
  }

  function renderPeers() {
    const ul = $('peers');
    ul.textContent = '';
    const mine = S.mesh ? S.mesh.memberPubkey : '';
    const seen = new Set();
    for (const p of S.peers) {
      const key = p.memberPubkey || p.pubkey;
      if (key === mine || seen.has(key)) continue;
      seen.add(key);
      const li = el('li', 'peer');
      li.dataset.name = p.displayName;
      li.dataset.status = p.status;
      const b = el('button', 'linkish');
      b.type = 'button';
      b.append(el('span', 'dot ' + p.status, ''), el('span', 'name', p.displayName),
        el('span', 'tag', p.peerType || 'ai'), el('span', 'status', p.status));
      const unread = S.unreadDm.get(key) || 0;
      if (unread) b.append(el('span', 'badge', String(unread)));
      b.addEventListener('click', () => openDm(key, p.displayName));
      li.append(b);
      ul.append(li);
    }
    if (!ul.children.length) ul.append(el('li', 'note', 'nobody else is online'));
  }

  function renderTopics() {
    const ul = $('topics');
    ul.textContent = '';
    for (const t of S.topics) {
      const li = el('li', 'topic');
      li.dataset.name = t.name;
      const b = el('button', 'linkish', '#' + t.name);
      b.type = 'button';
      if (t.unread) b.append(el('span', 'badge', String(t.unread)));
      b.addEventListener('click', () => openTopic(t.name));
      li.append(b);
      ul.append(li);
    }
  }

  function setView(view, title) {
    stopStream();
    stopKeys();
    S.view = view;
    S.lines = [];
    S.seen = new Set();
    $('title').textContent = title;
    $('text').disabled = false;
    $('send').disabled = false;
    $('text').focus();
    renderMessages();
  }

  // ---- the WebSocket (presence, peers, DMs) --------------------------------------------

  function send(frame) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(frame));
  }

  function connect() {
    if (!S.mesh || S.stopped) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = proto + '//' + location.host + '/app/ws?mesh=' + encodeURIComponent(S.mesh.meshId) +
      '&tab=' + tabId() + '&csrf=' + encodeURIComponent(csrf);
    setConn('connecting', 'connecting');
    const ws = new WebSocket(url);
    S.ws = ws;
    ws.addEventListener('message', (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch (_) { return; }
      onFrame(f);
    });
    ws.addEventListener('close', (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      if (ev.code === 4001) {
        S.stopped = true;
        setConn('off', 'kicked');
        banner('You were kicked from this mesh. Reload the page to rejoin.', 'fatal');
        return;
      }
      if (ev.code === 4002) {
        // Banned: the member's keys are refused from now on too.
        S.stopped = true;
        S.key = null;
        stopStream();
        setConn('off', 'banned');
        banner('You have been removed (banned) from this mesh.', 'fatal');
        return;
      }
      setConn('reconnecting', 'reconnecting');
      const wait = S.wsBackoff;
      S.wsBackoff = Math.min(S.wsBackoff * 2, 15000);
      setTimeout(connect, wait);
    });
  }

  function onFrame(f) {
    switch (f.type) {
      case 'hello_ack':
        S.wsBackoff = 1000;
        setConn('live', 'live');
        send({ type: 'set_status', status: $('status').value });
        send({ type: 'list_peers' });
        break;
      case 'peers_list':
        S.peers = f.peers || [];
        renderPeers();
        break;
      case 'push':
        onPush(f);
        break;
      case 'ack':
        if (f.queued === false) systemLine('not sent: ' + (f.error || 'refused'));
        break;
      case 'error':
        systemLine('broker: ' + (f.message || f.code));
        break;
      default:
        break;
    }
  }

  function onPush(f) {
    if (f.subtype === 'system') {
      if (/^peer_/.test(f.event || '')) send({ type: 'list_peers' });
      return;
    }
    if (f.messageId) send({ type: 'client_ack', brokerMessageId: f.messageId });
    const text = b64decode(f.ciphertext || '');
    const shown = text === null ? '🔒 encrypted message' : text;
    if (f.topic) {
      // A topic post fanned out to this presence; the stream may bring it too (same id).
      // Pushes carry no bodyVersion: in a keyed topic only the stream's copy is shown.
      if (S.keyState === 'plain' && S.view && S.view.kind === 'topic' && (S.view.name === f.topic || S.view.id === f.topic)) {
        addLine({ id: f.messageId, who: f.senderName || '?', text: shown, at: Date.parse(f.createdAt) || Date.now() });
      }
      if (text && mentionsMe(text)) notify('@' + (f.senderName || '?') + ' mentioned you in #' + f.topic);
      return;
    }
    const from = f.senderMemberPubkey || f.senderPubkey;
    const line = { id: f.messageId, who: f.senderName || from.slice(0, 8), text: shown, at: Date.parse(f.createdAt) || Date.now() };
    const conv = S.dms.get(from) || [];
    if (!conv.some((l) => l.id === line.id)) conv.push(line);
    S.dms.set(from, conv);
    if (S.view && S.view.kind === 'dm' && S.view.pubkey === from) {
      addLine(line);
    } else {
      S.unreadDm.set(from, (S.unreadDm.get(from) || 0) + 1);
      renderPeers();
      notify('direct message from ' + line.who);
    }
  }

  function openDm(pubkey, name) {
    setView({ kind: 'dm', pubkey, name }, 'DM with ' + name);
    S.unreadDm.delete(pubkey);
    renderPeers();
    for (const l of S.dms.get(pubkey) || []) addLine(l);
  }

  function sendDm(text) {
    const v = S.view;
    const id = 'web-' + Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
    send({ type: 'send', targetSpec: v.pubkey, priority: 'now', nonce: randomNonce(), ciphertext: b64encode(text), id });
    const line = { id, who: myName(), text, at: Date.now(), mine: true };
    const conv = S.dms.get(v.pubkey) || [];
    conv.push(line);
    S.dms.set(v.pubkey, conv);
    addLine(line);
  }

  // ---- REST (topics) -------------------------------------------------------------------

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: 'Bearer ' + S.key } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch('/api/v1' + path, init);
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    return { status: r.status, ok: r.ok, data };
  }

  // One key per mesh and tab, kept in sessionStorage until shortly before it expires, so
  // reloads do not mint key after key (the broker bounds keys per member).
  async function mintKey() {
    const slot = 'cm_key:' + S.mesh.meshId;
    try {
      const kept = JSON.parse(sessionStorage.getItem(slot) || 'null');
      if (kept && kept.secret && kept.memberId && Date.parse(kept.expiresAt) > Date.now() + 600000) {
        S.key = kept.secret;
        S.web = { memberId: kept.memberId, displayName: kept.displayName, pubkey: kept.pubkey };
        const probe = await api('GET', '/topics');
        if (probe.status !== 401) return true;
      }
    } catch (_) { /* mint a new one */ }
    sessionStorage.removeItem(slot);
    const r = await fetch('/app/key', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify({ meshId: S.mesh.meshId }),
    });
    const data = await r.json().catch(() => ({}));
    if (r.ok && data.secret) {
      S.key = data.secret;
      S.web = { memberId: data.memberId, displayName: data.displayName, pubkey: data.pubkey };
      sessionStorage.setItem(slot, JSON.stringify({
        secret: data.secret, expiresAt: data.expiresAt,
        memberId: data.memberId, displayName: data.displayName, pubkey: data.pubkey,
      }));
      return true;
    }
    S.key = null;
    $('topics-note').textContent = data.message || 'topics are not available on this broker';
    return false;
  }

  async function loadTopics() {
    if (!S.key || S.stopped) return;
    const r = await api('GET', '/topics');
    if (!r.ok) {
      $('topics-note').textContent = 'topics: ' + r.status;
      return;
    }
    S.topics = r.data.topics || [];
    $('topics-note').textContent = S.topics.length ? '' : 'no topics yet';
    renderTopics();
  }

  async function loadMembers() {
    if (!S.key || S.stopped) return;
    const r = await api('GET', '/members');
    if (r.ok) S.members = r.data.members || [];
  }

  async function loadNotifications() {
    if (!S.key || S.stopped) return;
    const r = await api('GET', '/notifications?unread=1');
    if (r.ok && r.data.notifications) {
      S.notifications = r.data.notifications.length;
      const n = $('notif');
      n.hidden = S.notifications === 0;
      n.textContent = String(S.notifications);
    }
  }

  function v2Text(m) {
    if (!S.topicKey) return '🔒 decrypting…';
    const text = CMCrypto.decryptBody(m.ciphertext, m.nonce, S.topicKey);
    return text === null ? '🔒 cannot decrypt' : text;
  }

  function topicLine(m) {
    const text = m.bodyVersion === 2 ? v2Text(m) : b64decode(m.ciphertext);
    return {
      id: m.id,
      who: m.senderName || '?',
      text: text === null ? '🔒 encrypted message' : text,
      at: Date.parse(m.createdAt) || Date.now(),
      mine: (!!S.web && m.senderMemberId === S.web.memberId) || (!!S.mesh && m.senderPubkey === S.mesh.memberPubkey),
      v2: m.bodyVersion === 2 ? m : null,
    };
  }

  // ---- topic keys ----------------------------------------------------------------------

  // This browser's member key, registered as the web-managed row's key (once per load).
  async function ensureMemberKey() {
    if (!S.web) return false;
    if (!S.me) {
      const k = await CMCrypto.memberKey(S.web.memberId);
      S.me = { seed: k.seed, publicKey: k.publicKey, xSecret: await CMCrypto.edSeedToX(k.seed) };
    }
    const mine = CMCrypto.hex(S.me.publicKey);
    if (S.web.pubkey === mine) return true;
    const r = await api('POST', '/me/peer-pubkey', { pubkey: mine });
    if (!r.ok) {
      systemLine('key not registered: ' + r.status + ' ' + ((r.data && r.data.error) || ''));
      return false;
    }
    S.web.pubkey = r.data.pubkey;
    const slot = 'cm_key:' + S.mesh.meshId;
    try {
      const kept = JSON.parse(sessionStorage.getItem(slot) || 'null');
      if (kept) sessionStorage.setItem(slot, JSON.stringify({ ...kept, pubkey: r.data.pubkey }));
    } catch (_) { /* nothing kept */ }
    return true;
  }

  function setKeyState(state, text) {
    S.keyState = state;
    const e = $('keystate');
    e.dataset.state = state;
    e.textContent = text || '';
    $('encrypt').hidden = state !== 'plain';
  }

  function stopKeys() {
    clearTimeout(S.keyTimer);
    clearInterval(S.sealTimer);
    S.keyTimer = null;
    S.sealTimer = null;
    S.topicKey = null;
    setKeyState('none', '');
  }

  function topicPath(name, rest) {
    return '/topics/' + encodeURIComponent(name) + rest;
  }

  // The topic's key state. pending-seals first (it says "unencrypted" with a null
  // senderPubkey, and lists us while we have no copy), so that the usual answers are not
  // failed requests in the console; then our copy from /key (still read for 404 and 409).
  async function fetchTopicKey(name) {
    if (!S.view || S.view.kind !== 'topic' || S.view.name !== name) return;
    const probe = await api('GET', topicPath(name, '/pending-seals'));
    if (!S.view || S.view.name !== name) return;
    if (probe.ok && probe.data.senderPubkey === null) {
      setKeyState('plain', 'plaintext (v1)');
      return;
    }
    if (probe.ok && (probe.data.pending || []).some((m) => m.memberId === S.web.memberId)) {
      setKeyState('waiting', 'waiting for a peer to share the key');
      S.keyTimer = setTimeout(() => fetchTopicKey(name), 5000);
      return;
    }
    const r = await api('GET', topicPath(name, '/key'));
    if (!S.view || S.view.name !== name) return;
    if (r.status === 409) {
      setKeyState('plain', 'plaintext (v1)');
      return;
    }
    if (r.status === 404) {
      setKeyState('waiting', 'waiting for a peer to share the key');
      S.keyTimer = setTimeout(() => fetchTopicKey(name), 5000);
      return;
    }
    if (!r.ok) {
      setKeyState('none', 'key: ' + r.status);
      return;
    }
    const key = CMCrypto.openKey(r.data.encryptedKey, r.data.nonce, S.me.xSecret);
    if (!key) {
      // A copy sealed to an older key of ours, or garbage: ask to be re-sealed.
      setKeyState('waiting', 'waiting for a peer to share the key (our copy does not open)');
      S.keyTimer = setTimeout(() => fetchTopicKey(name), 5000);
      return;
    }
    holdKey(name, key);
  }

  function holdKey(name, key) {
    S.topicKey = key;
    setKeyState('ready', 'encrypted (v2)');
    // Messages shown as "decrypting…" now open.
    for (const l of S.lines) if (l.v2) l.text = v2Text(l.v2);
    renderMessages();
    reseal(name);
    clearInterval(S.sealTimer);
    S.sealTimer = setInterval(() => reseal(name), 30000);
  }

  // Seals the held key for every member pending-seals lists.
  async function reseal(name) {
    if (!S.topicKey || !S.view || S.view.name !== name) return;
    const r = await api('GET', topicPath(name, '/pending-seals'));
    if (!r.ok) return;
    for (const m of r.data.pending || []) {
      let copy;
      try {
        copy = CMCrypto.sealKey(S.topicKey, CMCrypto.unhex(m.pubkey));
      } catch (_) {
        continue; // not an ed25519 key
      }
      await api('POST', topicPath(name, '/seal'), { memberId: m.memberId, encryptedKey: copy.encryptedKey, nonce: copy.nonce });
    }
  }

  // "enable encryption": a fresh topic key, sealed for ourselves, claimed for the topic.
  async function enableEncryption() {
    if (!S.view || S.view.kind !== 'topic' || !S.me) return;
    const name = S.view.name;
    const key = CMCrypto.random(32);
    const copy = CMCrypto.sealKey(key, S.me.publicKey);
    const r = await api('POST', topicPath(name, '/claim-key'), {
      encryptedKeyPubkey: CMCrypto.hex(copy.senderPublic), encryptedKey: copy.encryptedKey, nonce: copy.nonce,
    });
    if (r.ok) {
      holdKey(name, key);
      return;
    }
    if (r.status === 409) {
      // Someone else claimed it first: wait for our copy.
      fetchTopicKey(name);
      return;
    }
    systemLine('encryption not enabled: ' + r.status + ' ' + ((r.data && r.data.error) || ''));
  }

  async function openTopic(name) {
    setView({ kind: 'topic', name }, '#' + name);
    const keyed = ensureMemberKey().catch((e) => { systemLine('key: ' + e); return false; });
    for (const t of S.topics) if (t.name === name) t.unread = 0;
    renderTopics();
    const r = await api('GET', '/topics/' + encodeURIComponent(name) + '/messages?limit=100');
    if (!r.ok) {
      systemLine('history: ' + r.status + ' ' + ((r.data && (r.data.error || r.data.code)) || ''));
      return;
    }
    if (r.data.topicId) S.view.id = r.data.topicId;
    for (const m of (r.data.messages || []).slice().reverse()) addLine(topicLine(m));
    // The read mark also makes the web-managed row a member of the topic: before the key.
    const marked = markRead(true);
    openStream(name);
    await marked;
    if (await keyed) fetchTopicKey(name);
  }

  function markRead(force) {
    if (!S.view || S.view.kind !== 'topic') return;
    if (!force && Date.now() - S.lastRead < 5000) return;
    S.lastRead = Date.now();
    return api('PATCH', '/topics/' + encodeURIComponent(S.view.name) + '/read').catch(() => {});
  }

  function stopStream() {
    if (S.stream) S.stream.abort();
    S.stream = null;
    setStream('none');
  }

  async function openStream(name) {
    stopStream();
    const ctl = new AbortController();
    S.stream = ctl;
    setStream(S.streamBackoff > 1000 ? 'reconnecting' : 'connecting');
    try {
      const r = await fetch('/api/v1/topics/' + encodeURIComponent(name) + '/stream', {
        headers: { Authorization: 'Bearer ' + S.key, Accept: 'text/event-stream' },
        signal: ctl.signal,
      });
      if (!r.ok) {
        if (r.status >= 400 && r.status < 500) {
          setStream('stopped');
          systemLine('stream stopped: ' + r.status);
          return;
        }
        throw new Error('status ' + r.status);
      }
      S.streamBackoff = 1000;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          onEvent(block);
        }
      }
      throw new Error('stream ended');
    } catch (e) {
      if (ctl.signal.aborted || S.stream !== ctl) return;
      setStream('reconnecting');
      const wait = S.streamBackoff;
      S.streamBackoff = Math.min(S.streamBackoff * 2, 15000);
      setTimeout(() => { if (S.stream === ctl) openStream(name); }, wait);
    }
  }

  function onEvent(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    S.lastEvent = Date.now();
    if (event === 'ready') setStream('live');
    if (event !== 'message') {
      if (event === 'error') systemLine('stream: ' + data.join('\n'));
      return;
    }
    let m;
    try { m = JSON.parse(data.join('\n')); } catch (_) { return; }
    const line = topicLine(m);
    addLine(line);
    if (!line.mine && mentionsMe(line.text)) notify('@' + line.who + ' mentioned you in #' + S.view.name);
    markRead(false);
  }

  async function postTopic(text) {
    if (S.keyState === 'waiting') {
      systemLine('not sent: waiting for a peer to share the key');
      return;
    }
    const body = S.topicKey
      ? { ...CMCrypto.encryptBody(text, S.topicKey), bodyVersion: 2 }
      : { ciphertext: b64encode(text), nonce: randomNonce(), bodyVersion: 1 };
    const r = await api('POST', '/messages', {
      topic: S.view.name,
      ...body,
      priority: 'next',
      mentions: extractMentions(text),
    });
    if (!r.ok) systemLine('not sent: ' + r.status + ' ' + ((r.data && (r.data.error || r.data.code)) || ''));
    // The post comes back over the stream (de-duplicated by id).
  }

  // ---- composer and @ autocomplete -----------------------------------------------------

  function currentMentionPrefix() {
    const t = $('text');
    const upto = t.value.slice(0, t.selectionStart);
    const m = /@([\w.-]{0,64})$/.exec(upto);
    return m ? m[1] : null;
  }

  function suggest() {
    const box = $('suggest');
    const prefix = currentMentionPrefix();
    box.textContent = '';
    if (prefix === null) {
      box.hidden = true;
      return;
    }
    const names = Array.from(knownNames().entries())
      .filter(([n]) => n.toLowerCase().startsWith(prefix.toLowerCase()) && n !== myName())
      .sort((a, b) => (b[1] - a[1]) || a[0].localeCompare(b[0]))
      .slice(0, 8);
    for (const [n, online] of names) {
      const b = el('button', online ? 'online' : '', '@' + n);
      b.type = 'button';
      b.addEventListener('click', () => complete(n));
      box.append(b);
    }
    box.hidden = names.length === 0;
  }

  function complete(name) {
    const t = $('text');
    const upto = t.value.slice(0, t.selectionStart);
    const rest = t.value.slice(t.selectionStart);
    t.value = upto.replace(/@[\w.-]{0,64}$/, '@' + name + ' ') + rest;
    $('suggest').hidden = true;
    t.focus();
  }

  function onSubmit(ev) {
    ev.preventDefault();
    const text = $('text').value.trim();
    if (!text || !S.view) return;
    $('text').value = '';
    $('suggest').hidden = true;
    if (S.view.kind === 'dm') sendDm(text);
    else postTopic(text);
  }

  // ---- start ---------------------------------------------------------------------------

  async function pickMesh(meshId) {
    if (S.ws) {
      const old = S.ws;
      S.ws = null;
      old.close(1000, 'switching mesh');
    }
    stopStream();
    S.mesh = S.meshes.find((m) => m.meshId === meshId) || null;
    S.stopped = false;
    S.peers = [];
    S.topics = [];
    S.members = [];
    S.view = null;
    S.lines = [];
    S.web = null;
    S.me = null;
    stopKeys();
    renderPeers();
    renderTopics();
    renderMessages();
    if (!S.mesh) return;
    document.body.dataset.ready = '';
    connect();
    if (await mintKey()) {
      await loadTopics();
      await loadMembers();
      await loadNotifications();
    }
    // The first loads have answered (tests and scripts wait for this).
    document.body.dataset.ready = '1';
  }

  async function start() {
    $('composer').addEventListener('submit', onSubmit);
    $('encrypt').addEventListener('click', () => { enableEncryption().catch((e) => systemLine('encryption: ' + e)); });
    $('text').addEventListener('input', suggest);
    $('search').addEventListener('input', renderMessages);
    $('status').addEventListener('change', () => send({ type: 'set_status', status: $('status').value }));
    $('mesh').addEventListener('change', () => pickMesh($('mesh').value));
    $('notif').addEventListener('click', () => {
      S.notifications = 0;
      $('notif').hidden = true;
      banner('');
      if (S.key) api('POST', '/notifications/read', { all: true }).catch(() => {});
    });
    // A peer whose socket closed leaves list_peers at once, but its peer_left comes only
    // after the lease grace: the online list is re-read every 5 s while the tab is shown.
    setInterval(() => {
      if (S.ws && document.visibilityState === 'visible') send({ type: 'list_peers' });
    }, 5000);
    setInterval(loadMembers, 20000);
    setInterval(showStream, 1000);
    const r = await fetch('/app/meshes');
    if (!r.ok) {
      banner('Could not load your meshes (' + r.status + ').', 'fatal');
      return;
    }
    const data = await r.json();
    S.meshes = data.meshes || [];
    const sel = $('mesh');
    for (const m of S.meshes) {
      const o = el('option', '', m.name + ' (as ' + m.displayName + ')');
      o.value = m.meshId;
      sel.append(o);
    }
    if (!S.meshes.length) {
      banner('You are not a member of any mesh yet.', 'info');
      return;
    }
    const wanted = new URLSearchParams(location.search).get('mesh');
    const first = S.meshes.find((m) => m.meshId === wanted || m.slug === wanted) || S.meshes[0];
    sel.value = first.meshId;
    await pickMesh(first.meshId);
  }

  document.addEventListener('DOMContentLoaded', start);
})();
