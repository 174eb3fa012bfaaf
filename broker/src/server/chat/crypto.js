// The web chat's topic-key crypto (extensions.md §9, rest.md §4.6 and §7), written for this
// page: nothing copied, nothing fetched. NaCl-compatible, checked against vectors computed
// in Rust (broker/tests/web_chat.rs writes them, broker/tests/web_chat.py evaluates these
// functions in Chromium and compares):
//
// - XSalsa20 = HSalsa20 (a subkey from the key and the first 16 nonce bytes) + Salsa20/20;
// - Poly1305 (BigInt arithmetic modulo 2^130 - 5);
// - secretbox = XSalsa20-Poly1305 as crypto_secretbox_easy: tag (16 B) ‖ ciphertext, the
//   first 32 keystream bytes being the one-time Poly1305 key;
// - X25519 (RFC 7748 Montgomery ladder on BigInt);
// - box = crypto_box_easy: secretbox under HSalsa20(X25519(secret, public), 0);
// - ed25519 → X25519: public u = (1 + y) / (1 - y) mod p; secret = SHA-512(seed)[0..32],
//   clamped (libsodium's crypto_sign_ed25519_{pk,sk}_to_curve25519).
//
// The browser's member key is an ed25519 key made by WebCrypto (Ed25519), its 32-byte seed
// kept in IndexedDB. Not constant-time (BigInt): a chat page's keys, not a server's.
'use strict';

const CMCrypto = (() => {
  // ---- bytes -----------------------------------------------------------------------------

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function unhex(s) {
    if (s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error('bad hex');
    const out = new Uint8Array(s.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
    return out;
  }

  function b64(bytes) {
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }

  function unb64(s) {
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  }

  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  function random(n) {
    const b = new Uint8Array(n);
    crypto.getRandomValues(b);
    return b;
  }

  // Little-endian bytes <-> BigInt.
  function toBig(bytes) {
    let n = 0n;
    for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
    return n;
  }

  function fromBig(n, len) {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; i++) {
      out[i] = Number(n & 0xffn);
      n >>= 8n;
    }
    return out;
  }

  // ---- Salsa20 ---------------------------------------------------------------------------

  function word(b, i) {
    return (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
  }

  // "expand 32-byte k", the key at words 1-4 and 11-14, `input` (16 bytes) at words 6-9.
  function initial(key, input) {
    const s = new Uint32Array(16);
    s[0] = 0x61707865;
    s[5] = 0x3320646e;
    s[10] = 0x79622d32;
    s[15] = 0x6b206574;
    for (let i = 0; i < 4; i++) {
      s[1 + i] = word(key, 4 * i);
      s[11 + i] = word(key, 16 + 4 * i);
      s[6 + i] = word(input, 4 * i);
    }
    return s;
  }

  // 20 rounds (10 double rounds: columns, then rows) on a copy of the state.
  function rounds(s) {
    const x = Uint32Array.from(s);
    const rotl = (v, n) => (v << n) | (v >>> (32 - n));
    const qr = (a, b, c, d) => {
      x[b] ^= rotl(x[a] + x[d], 7);
      x[c] ^= rotl(x[b] + x[a], 9);
      x[d] ^= rotl(x[c] + x[b], 13);
      x[a] ^= rotl(x[d] + x[c], 18);
    };
    for (let i = 0; i < 10; i++) {
      qr(0, 4, 8, 12);
      qr(5, 9, 13, 1);
      qr(10, 14, 2, 6);
      qr(15, 3, 7, 11);
      qr(0, 1, 2, 3);
      qr(5, 6, 7, 4);
      qr(10, 11, 8, 9);
      qr(15, 12, 13, 14);
    }
    return x;
  }

  function words(ws) {
    const out = new Uint8Array(4 * ws.length);
    ws.forEach((w, i) => {
      out[4 * i] = w & 0xff;
      out[4 * i + 1] = (w >>> 8) & 0xff;
      out[4 * i + 2] = (w >>> 16) & 0xff;
      out[4 * i + 3] = (w >>> 24) & 0xff;
    });
    return out;
  }

  // HSalsa20(key, 16-byte input): words 0, 5, 10, 15, 6, 7, 8, 9 after the rounds.
  function hsalsa20(key, input) {
    const x = rounds(initial(key, input));
    return words([x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9]]);
  }

  // `len` bytes of XSalsa20 keystream for a 32-byte key and a 24-byte nonce.
  function xsalsa20Stream(key, nonce, len) {
    const sub = hsalsa20(key, nonce.subarray(0, 16));
    const input = new Uint8Array(16);
    input.set(nonce.subarray(16, 24), 0);
    const out = new Uint8Array(len);
    for (let block = 0, off = 0; off < len; block++, off += 64) {
      // Words 8-9: the 64-bit block counter.
      input[8] = block & 0xff;
      input[9] = (block >>> 8) & 0xff;
      input[10] = (block >>> 16) & 0xff;
      input[11] = (block >>> 24) & 0xff;
      const s = initial(sub, input);
      const x = rounds(s);
      for (let i = 0; i < 16; i++) x[i] += s[i];
      out.set(words(x).subarray(0, Math.min(64, len - off)), off);
    }
    return out;
  }

  // ---- Poly1305 --------------------------------------------------------------------------

  const P1305 = (1n << 130n) - 5n;

  function poly1305(msg, key) {
    const r = toBig(key.subarray(0, 16)) & 0x0ffffffc0ffffffc0ffffffc0fffffffn;
    const s = toBig(key.subarray(16, 32));
    let h = 0n;
    for (let i = 0; i < msg.length; i += 16) {
      const chunk = msg.subarray(i, Math.min(i + 16, msg.length));
      const n = toBig(chunk) | (1n << BigInt(8 * chunk.length));
      h = ((h + n) * r) % P1305;
    }
    return fromBig((h + s) & ((1n << 128n) - 1n), 16);
  }

  // ---- secretbox (crypto_secretbox_easy) -------------------------------------------------

  function secretbox(msg, nonce, key) {
    const stream = xsalsa20Stream(key, nonce, 32 + msg.length);
    const c = new Uint8Array(msg.length);
    for (let i = 0; i < msg.length; i++) c[i] = msg[i] ^ stream[32 + i];
    return concat(poly1305(c, stream.subarray(0, 32)), c);
  }

  // The plaintext, or null when the tag does not match.
  function secretboxOpen(boxed, nonce, key) {
    if (boxed.length < 16) return null;
    const c = boxed.subarray(16);
    const stream = xsalsa20Stream(key, nonce, 32 + c.length);
    const tag = poly1305(c, stream.subarray(0, 32));
    let diff = 0;
    for (let i = 0; i < 16; i++) diff |= tag[i] ^ boxed[i];
    if (diff !== 0) return null;
    const m = new Uint8Array(c.length);
    for (let i = 0; i < c.length; i++) m[i] = c[i] ^ stream[32 + i];
    return m;
  }

  // ---- X25519 ----------------------------------------------------------------------------

  const P = (1n << 255n) - 19n;
  const mod = (a) => ((a % P) + P) % P;

  function pow(b, e) {
    let r = 1n;
    b = mod(b);
    while (e > 0n) {
      if (e & 1n) r = (r * b) % P;
      b = (b * b) % P;
      e >>= 1n;
    }
    return r;
  }

  const inv = (a) => pow(a, P - 2n);

  function clamp(k) {
    const c = Uint8Array.from(k);
    c[0] &= 248;
    c[31] &= 127;
    c[31] |= 64;
    return c;
  }

  function x25519(scalar, u) {
    const k = toBig(clamp(scalar));
    const x1 = toBig(u) & ((1n << 255n) - 1n);
    let x2 = 1n;
    let z2 = 0n;
    let x3 = x1;
    let z3 = 1n;
    let swap = 0n;
    for (let t = 254n; t >= 0n; t--) {
      const bit = (k >> t) & 1n;
      if (swap ^ bit) {
        [x2, x3] = [x3, x2];
        [z2, z3] = [z3, z2];
      }
      swap = bit;
      const A = mod(x2 + z2);
      const AA = (A * A) % P;
      const B = mod(x2 - z2);
      const BB = (B * B) % P;
      const E = mod(AA - BB);
      const C = mod(x3 + z3);
      const D = mod(x3 - z3);
      const DA = (D * A) % P;
      const CB = (C * B) % P;
      x3 = mod((DA + CB) * (DA + CB));
      z3 = mod(x1 * mod((DA - CB) * (DA - CB)));
      x2 = (AA * BB) % P;
      z2 = mod(E * (AA + 121665n * E));
    }
    if (swap) {
      [x2, x3] = [x3, x2];
      [z2, z3] = [z3, z2];
    }
    return fromBig(mod(x2 * inv(z2)), 32);
  }

  const BASE = fromBig(9n, 32);

  function x25519Public(secret) {
    return x25519(secret, BASE);
  }

  // ---- box (crypto_box_easy) -------------------------------------------------------------

  function boxKey(theirPublic, mySecret) {
    return hsalsa20(x25519(mySecret, theirPublic), new Uint8Array(16));
  }

  function box(msg, nonce, theirPublic, mySecret) {
    return secretbox(msg, nonce, boxKey(theirPublic, mySecret));
  }

  function boxOpen(boxed, nonce, theirPublic, mySecret) {
    return secretboxOpen(boxed, nonce, boxKey(theirPublic, mySecret));
  }

  // ---- ed25519 -> X25519 -----------------------------------------------------------------

  function edPublicToX(edPublic) {
    const y = toBig(edPublic) & ((1n << 255n) - 1n);
    return fromBig(mod((1n + y) * inv(mod(1n - y))), 32);
  }

  async function edSeedToX(seed) {
    const h = new Uint8Array(await crypto.subtle.digest('SHA-512', seed));
    return clamp(h.subarray(0, 32));
  }

  // ---- sealed topic keys (extensions.md §9) ----------------------------------------------

  // A copy of `topicKey` for the member whose ed25519 key is `memberEdPublic`: base64 of a
  // fresh X25519 public key ‖ box(topicKey), and the base64 nonce. `eph` and `nonce` may be
  // given (tests); otherwise random.
  function sealKey(topicKey, memberEdPublic, eph, nonce) {
    const secret = eph || random(32);
    const n = nonce || random(24);
    const sealed = box(topicKey, n, edPublicToX(memberEdPublic), secret);
    return {
      senderPublic: x25519Public(secret),
      encryptedKey: b64(concat(x25519Public(secret), sealed)),
      nonce: b64(n),
    };
  }

  // Opens this member's copy (base64 strings as the REST API gives them) with its X25519
  // secret; the 32-byte topic key or null.
  function openKey(encryptedKey, nonce, mySecretX) {
    const blob = unb64(encryptedKey);
    if (blob.length < 48) return null;
    const key = boxOpen(blob.subarray(32), unb64(nonce), blob.subarray(0, 32), mySecretX);
    return key && key.length === 32 ? key : null;
  }

  // A v2 topic body: base64 ciphertext and nonce of `text` under the topic key.
  function encryptBody(text, topicKey, nonce) {
    const n = nonce || random(24);
    return { ciphertext: b64(secretbox(new TextEncoder().encode(text), n, topicKey)), nonce: b64(n) };
  }

  // The text of a v2 body, or null.
  function decryptBody(ciphertext, nonce, topicKey) {
    try {
      const m = secretboxOpen(unb64(ciphertext), unb64(nonce), topicKey);
      return m && new TextDecoder('utf-8', { fatal: true }).decode(m);
    } catch (_) {
      return null;
    }
  }

  // ---- the browser's member key (IndexedDB) ----------------------------------------------

  function db() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open('claudemesh-chat', 1);
      req.onupgradeneeded = () => req.result.createObjectStore('keys');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  function idb(mode, fn) {
    return db().then((d) => new Promise((resolve, reject) => {
      const tx = d.transaction('keys', mode);
      const req = fn(tx.objectStore('keys'));
      tx.oncomplete = () => { d.close(); resolve(req.result); };
      tx.onerror = () => { d.close(); reject(tx.error); };
    }));
  }

  function b64url(s) {
    return unb64(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
  }

  // The ed25519 key this browser holds for `slot` (a member id): {seed, publicKey} as
  // bytes, made with WebCrypto and kept in IndexedDB on first use.
  async function memberKey(slot) {
    const kept = await idb('readonly', (s) => s.get(slot));
    if (kept && kept.seed && kept.publicKey) return { seed: unhex(kept.seed), publicKey: unhex(kept.publicKey) };
    const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify']);
    const jwk = await crypto.subtle.exportKey('jwk', pair.privateKey);
    const key = { seed: b64url(jwk.d), publicKey: b64url(jwk.x) };
    await idb('readwrite', (s) => s.put({ seed: hex(key.seed), publicKey: hex(key.publicKey) }, slot));
    return key;
  }

  return {
    hex, unhex, b64, unb64, random,
    hsalsa20, xsalsa20Stream, poly1305, secretbox, secretboxOpen,
    x25519, x25519Public, box, boxOpen, edPublicToX, edSeedToX,
    sealKey, openKey, encryptBody, decryptBody, memberKey,
  };
})();
