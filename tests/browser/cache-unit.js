// Unit checks of model-cache.js in the browser (tests/test_web_cache.py): the streaming SHA-256
// against known vectors and SubtleCrypto, and the manifest checks; the results go back to Python.
import * as MC from '/teadist/model-cache.js';

export default async function run() {
  const { Sha256, parseManifest } = MC;
  const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
  const enc = (s) => new TextEncoder().encode(s);
  const out = { vectors: {}, random: [], resumed: null, saveMidBlock: null, rejected: {} };
  const vectors = {
    empty: '', abc: 'abc',
    '448 bits': 'abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq',
    '896 bits': 'abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu',
  };
  for (const [k, v] of Object.entries(vectors)) out.vectors[k] = new Sha256().update(enc(v)).digest();
  const million = new Sha256();
  const a = enc('a'.repeat(1000));
  for (let i = 0; i < 1000; i++) million.update(i % 2 ? a : a.subarray(0, 999)).update(i % 2 ? new Uint8Array(0) : a.subarray(999));
  out.vectors.million = million.digest();
  // Random data in random cuts, against SubtleCrypto, at the padding edges and beyond.
  const data = new Uint8Array(65536 * 5 + 17);
  for (let at = 0; at < data.length; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536));
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 65536, data.length]) {
    const h = new Sha256();
    let at = 0;
    while (at < n) { const step = Math.min(n - at, 1 + Math.floor(Math.random() * 9000)); h.update(data.subarray(at, at + step)); at += step; }
    out.random.push([n, h.digest() === hex(await crypto.subtle.digest('SHA-256', data.subarray(0, n)))]);
  }
  // Save at a block boundary, restore through JSON (as IndexedDB would keep it), continue.
  const first = new Sha256().update(data.subarray(0, 65536 * 3));
  const state = JSON.parse(JSON.stringify(first.save()));
  out.resumed = Sha256.restore(state).update(data.subarray(65536 * 3)).digest() === hex(await crypto.subtle.digest('SHA-256', data));
  try { new Sha256().update(data.subarray(0, 100)).save(); out.saveMidBlock = 'saved'; } catch (e) { out.saveMidBlock = e.message; }
  try { Sha256.restore({ h: [1, 2, 3], bytes: 64 }); out.badRestore = 'restored'; } catch (e) { out.badRestore = e.message; }
  const base = { schema_version: '1.1', name: 'm', format: 'gguf', rebuild: {},
    file: { name: 'm.gguf', size: 70000, sha256: 'a'.repeat(64) },
    chunks: [{ name: 'm-00001-of-00001.gguf', size: 70000, sha256: 'b'.repeat(64) }] };
  const twoBlocks = { block_size: 65536, blocks: ['c'.repeat(64), 'd'.repeat(64)] };
  const bad = {
    traversal: { chunks: [{ ...base.chunks[0], name: '../../etc/passwd' }] },
    backslash: { chunks: [{ ...base.chunks[0], name: '..\\x.gguf' }] },
    blockCount: { chunks: [{ ...base.chunks[0], block_size: 65536, blocks: ['c'.repeat(64)] }] },
    blockSize: { chunks: [{ ...base.chunks[0], block_size: 100000, blocks: ['c'.repeat(64)] }] },
    tinyBlocks: { chunks: [{ ...base.chunks[0], block_size: 4096, blocks: Array(18).fill('c'.repeat(64)) }] },
    blockHashCase: { chunks: [{ ...base.chunks[0], block_size: 65536, blocks: ['C'.repeat(64), 'd'.repeat(64)] }] },
    blocksIn10: { schema_version: '1.0', chunks: [{ ...base.chunks[0], ...twoBlocks }] },
    major2: { schema_version: '2.0' },
    hugeSize: { chunks: [{ ...base.chunks[0], size: 2 ** 60 }] },
    negative: { chunks: [{ ...base.chunks[0], size: -1 }] },
    fileUrl: { chunks: [{ ...base.chunks[0], urls: ['file:///etc/passwd'] }] },
    jsUrl: { chunks: [{ ...base.chunks[0], urls: ['javascript:alert(1)'] }] },
    unpinned: { format: 'single', chunks: undefined, rebuild: undefined, file: { name: 'm.gguf', size: null, sha256: null } },
    gap: { format: 'bytes', rebuild: undefined, chunks: [{ ...base.chunks[0], offset: 5 }] },
    sum: { format: 'bytes', rebuild: undefined, chunks: [{ ...base.chunks[0], offset: 0, size: 69999 }] },
    duplicate: { chunks: [base.chunks[0], base.chunks[0]] },
    // the revision is a URL segment: '..' (removed by fetch) named another file of the repository
    hfDotRevision: { format: 'single', chunks: undefined, rebuild: undefined,
      sources: [{ type: 'hf', repo: 'org/repo', revision: '..', path: 'resolve/main/m.gguf' }] },
  };
  for (const [k, patch] of Object.entries(bad)) {
    try { parseManifest(JSON.stringify({ ...base, ...patch }), 'https://x.test/m.json'); out.rejected[k] = null; }
    catch (e) { out.rejected[k] = [e.name, e.message]; }
  }
  const twoIds = JSON.stringify({ schema_version: '1.0', kind: 'release-index', models: [base, base] });
  try { parseManifest(twoIds, 'https://x.test/m.json'); out.rejected.sameId = null; } catch (e) { out.rejected.sameId = [e.name, e.message]; }
  const ok = parseManifest(JSON.stringify({ ...base, chunks: [{ ...base.chunks[0], ...twoBlocks,
    urls: ['https://github.com/o/r/releases/download/v1/m-00001-of-00001.gguf',
      'https://api.github.com/repos/o/r/releases/assets/1'] }] }), 'https://host.test/rel/model-manifest.json');
  out.sources = ok[0].shards[0].sources;
  out.skipped = ok[0].shards[0].skipped;
  out.layout = ok[0].shards[0].layout;
  const hf = parseManifest(JSON.stringify({ schema_version: '1.0', name: 'h', format: 'single',
    file: { name: 'h h.gguf', size: 1, sha256: 'a'.repeat(64) },
    sources: [{ type: 'hf', repo: 'org/repo', revision: 'abc', path: 'sub/h h.gguf' }] }), 'https://host.test/x/');
  out.hfSources = hf[0].shards[0].sources;
  out.exports = Object.keys(MC).sort();
  out.methods = Object.getOwnPropertyNames(MC.ModelCache.prototype).filter((n) => n !== 'constructor').sort();
  out.statics = Object.getOwnPropertyNames(MC.ModelCache).filter((n) => typeof MC.ModelCache[n] === 'function').sort();
  return out;
}
