// teadist model cache for the browser: a verified, resumable, offline store of GGUF models that
// hands wllama its shards as Blobs.
//
// Plain ES module, no build step. It reads a teadist manifest (one model) or release index
// (`model-manifest.json`, several models), downloads each shard with `fetch`, verifies every byte
// against the manifest's SHA-256 before it is stored, and keeps the verified part across
// reloads, so a broken download resumes with `Range` from the last verified block.
//
// Storage design (both back ends): a shard is stored as a run of *pieces*, each its own record
// (IndexedDB Blob) or file (OPFS), of `pieceSize` (default 8 MiB) whatever the manifest's block
// size. Where the manifest carries block hashes, each block is verified whole with SubtleCrypto
// as it arrives, and when a transfer breaks, the verified blocks of the unfinished piece are
// stored as a shorter piece, so a resume repeats at most one block. Every shard's bytes also feed
// a streaming SHA-256 (its state saved with every piece): a shard counts as verified only once
// its whole digest matches the manifest's sha256 — block hashes alone never suffice. A byte-chunk
// model is also checked against file.sha256 once, over the joined chunks. Each piece's own
// SHA-256 is recorded, and `blobs()` hashes the pieces again before handing them out (option
// `verifyOnLoad`), so bytes changed in storage are never given to wllama. `blobs()` builds each
// shard's Blob from its disk-backed pieces: no shard ever sits whole in memory.
// Bookkeeping (model entries, per-shard progress, the manifest copy for offline visits) lives in
// IndexedDB for both back ends; a piece is written before the progress record that counts it, so
// a record never claims bytes that are not stored. A model version is keyed by a digest of what
// identifies its bytes (file and chunk sha256s, sizes, layout, block maps): a changed manifest is
// a new version and the old pieces are never served for it.

const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
const MAX_CHUNKS = 10000;
const MAX_URLS = 16;
// wllama (llama.cpp's ftell in its wasm build) and Blob-backed files stop below 2 GiB.
export const WLLAMA_FILE_LIMIT = 2 ** 31 - 1;
const MIN_BLOCK_SIZE = 65536;
const MAX_BLOCK_SIZE = 67108864;
const DEFAULT_PIECE_SIZE = 8 * 1024 * 1024;
const BODY_READ_SIZE = 1024 * 1024; // one read of a response body (byte streams)
const DEFAULT_RETRIES = 2;
const DEFAULT_STALL_TIMEOUT_MS = 30000;
const DEFAULT_CONCURRENCY = 3;
const MAX_CONCURRENCY = 16;
const PROGRESS_INTERVAL_MS = 100;
const HEX64 = /^[0-9a-f]{64}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;
const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const HF_REPO_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const WINDOWS_DEVICES = new Set(['con', 'prn', 'aux', 'nul',
  ...Array.from({ length: 10 }, (_, i) => `com${i}`), ...Array.from({ length: 10 }, (_, i) => `lpt${i}`)]);

// -- errors -------------------------------------------------------------------------------------

/** Every failure of this module: a one-line `message`, a `code` to branch on, an optional `hint`. */
export class ModelCacheError extends Error {
  constructor(message, { code = 'error', hint = null, cause = undefined } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'ModelCacheError';
    this.code = code;
    this.hint = hint;
  }
}

/** The manifest or release index is malformed or unsafe (checked before anything is fetched). */
export class ManifestError extends ModelCacheError {
  constructor(message, options = {}) {
    super(message, { code: 'manifest', ...options });
    this.name = 'ManifestError';
  }
}

/** Bytes did not match the manifest's SHA-256; the shard was discarded. */
export class IntegrityError extends ModelCacheError {
  constructor(message, { shard, start, end, url, ...options }) {
    super(message, { code: 'integrity', ...options });
    this.name = 'IntegrityError';
    this.shard = shard;
    this.start = start;
    this.end = end;
    this.url = url;
  }
}

/** No source delivered a shard (HTTP errors, dropped connections); the verified part is kept. */
export class SourceError extends ModelCacheError {
  constructor(message, { shard, failures, ...options }) {
    super(message, { code: 'source', ...options });
    this.name = 'SourceError';
    this.shard = shard;
    this.failures = failures;
  }
}

/** The model does not fit in the origin's storage quota; nothing was written. */
export class QuotaError extends ModelCacheError {
  constructor(message, { neededBytes, availableBytes, candidates, ...options }) {
    super(message, { code: 'quota', ...options });
    this.name = 'QuotaError';
    this.neededBytes = neededBytes;
    this.availableBytes = availableBytes;
    this.candidates = candidates;
  }
}

// -- streaming SHA-256 (FIPS 180-4) ---------------------------------------------------------------
// SubtleCrypto has no incremental digest, so a shard without block hashes is hashed here as it
// streams; the state at a 64-byte boundary can be saved and restored to resume after a reload.

const K256 = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const IV256 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const W256 = new Int32Array(64);

function compress256(h, view, offset, end) {
  const w = W256;
  let h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3], h4 = h[4], h5 = h[5], h6 = h[6], h7 = h[7];
  for (; offset < end; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getInt32(offset + i * 4);
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15], y = w[i - 2];
      w[i] = (w[i - 16] + (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) + w[i - 7]
        + (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10))) | 0;
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, hh = h7;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7)))
        + ((e & f) ^ (~e & g)) + K256[i] + w[i]) | 0;
      const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10)))
        + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + hh) | 0;
  }
  h[0] = h0; h[1] = h1; h[2] = h2; h[3] = h3; h[4] = h4; h[5] = h5; h[6] = h6; h[7] = h7;
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('Sha256.update takes a Uint8Array, ArrayBuffer or ArrayBuffer view');
}

/** Incremental SHA-256 whose state can be saved at a 64-byte boundary and restored later. */
export class Sha256 {
  #h = Int32Array.from(IV256);
  #tail = new Uint8Array(64);
  #tailView = new DataView(this.#tail.buffer);
  #tailLength = 0;
  #bytes = 0;
  #finished = false;

  /** Feed bytes; returns this. */
  update(data) {
    if (this.#finished) throw new Error('Sha256: update() after digest()');
    let bytes = toBytes(data);
    if (this.#bytes + bytes.length > Number.MAX_SAFE_INTEGER / 8) throw new RangeError('Sha256: input too long');
    this.#bytes += bytes.length;
    if (this.#tailLength > 0) {
      const take = Math.min(64 - this.#tailLength, bytes.length);
      this.#tail.set(bytes.subarray(0, take), this.#tailLength);
      this.#tailLength += take;
      bytes = bytes.subarray(take);
      if (this.#tailLength < 64) return this;
      compress256(this.#h, this.#tailView, 0, 64);
      this.#tailLength = 0;
    }
    const whole = bytes.length - (bytes.length % 64);
    if (whole > 0) compress256(this.#h, new DataView(bytes.buffer, bytes.byteOffset, whole), 0, whole);
    if (whole < bytes.length) {
      this.#tail.set(bytes.subarray(whole));
      this.#tailLength = bytes.length - whole;
    }
    return this;
  }

  /** Number of bytes fed so far. */
  get length() {
    return this.#bytes;
  }

  /** Finish and return the lowercase hex digest. */
  digest() {
    if (this.#finished) throw new Error('Sha256: digest() called twice');
    this.#finished = true;
    const bits = this.#bytes * 8;
    const pad = new Uint8Array(this.#tailLength < 56 ? 64 : 128);
    pad.set(this.#tail.subarray(0, this.#tailLength));
    pad[this.#tailLength] = 0x80;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(pad.length - 4, bits >>> 0);
    compress256(this.#h, view, 0, pad.length);
    return Array.from(this.#h, (x) => (x >>> 0).toString(16).padStart(8, '0')).join('');
  }

  /** The state after a whole number of 64-byte blocks, as plain JSON-safe data. */
  save() {
    if (this.#finished || this.#tailLength !== 0) {
      throw new Error('Sha256: state can only be saved at a 64-byte boundary, before digest()');
    }
    return { h: Array.from(this.#h), bytes: this.#bytes };
  }

  /** A hasher continuing from `save()`'s result. */
  static restore(state) {
    const ok = state && Array.isArray(state.h) && state.h.length === 8
      && state.h.every((x) => Number.isInteger(x)) && Number.isSafeInteger(state.bytes)
      && state.bytes >= 0 && state.bytes % 64 === 0;
    if (!ok) throw new Error('Sha256: not a saved state');
    const hasher = new Sha256();
    hasher.#h.set(state.h);
    hasher.#bytes = state.bytes;
    return hasher;
  }
}

async function subtleSha256(bytes) {
  return hexOf(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

function hexOf(bytes) {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

// -- formatting -----------------------------------------------------------------------------------

/** Human-readable size, binary units (1536 → "1.5 KiB"). */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return String(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function when(ms) {
  return ms == null ? 'never' : new Date(ms).toISOString();
}

function quoted(text) {
  return JSON.stringify(String(text).slice(0, 200));
}

// -- manifest -------------------------------------------------------------------------------------

function plainNameProblem(name) {
  if (typeof name !== 'string') return 'must be a string';
  if (!name) return 'is empty';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return 'contains a control character';
  if (name.includes('/') || name.includes('\\')) return 'contains a path separator';
  if (name === '.' || name === '..') return 'is a relative path component';
  if (name.includes(':')) return "contains ':'";
  if (name !== name.trim() || name.endsWith('.')) return 'has leading/trailing space or a trailing dot';
  if (WINDOWS_DEVICES.has(name.split('.')[0].toLowerCase())) return 'is a reserved device name';
  if (new TextEncoder().encode(name).length > 255) return 'is longer than 255 bytes';
  return null;
}

function plainName(name, field) {
  const problem = plainNameProblem(name);
  if (problem) throw new ManifestError(`${field}: ${quoted(name)} ${problem}; only plain file names are allowed`);
  return name;
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function size(value, field, { nullable = false } = {}) {
  if (value === null && nullable) return null;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ManifestError(`${field}: ${quoted(value)} is not a whole number of bytes`);
  }
  return value;
}

function sha(value, field, { nullable = false } = {}) {
  if (value === null && nullable) return null;
  if (typeof value !== 'string' || !HEX64.test(value)) {
    throw new ManifestError(`${field}: ${quoted(value)} is not a lowercase hex SHA-256`);
  }
  return value;
}

// scheme://user:password@host…: what teadist refuses on the Python side too; never echoed.
const USERINFO_RE = /^[A-Za-z][A-Za-z0-9+.-]*:[\\/]*[^/\\?#]*@/;
const USERINFO_PROBLEM = 'the URL carries a user name or password in its host part';

function httpUrl(value, field) {
  if (typeof value !== 'string' || value.length > 2048) throw new ManifestError(`${field}: not a URL`);
  if (USERINFO_RE.test(value)) {
    throw new ManifestError(`${field}: ${USERINFO_PROBLEM}; such a URL is never used or shown`,
      { hint: 'list a URL without credentials (a browser sends none to another origin anyway)' });
  }
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new ManifestError(`${field}: ${quoted(value)} is not an absolute URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ManifestError(`${field}: ${quoted(value)} is not an http(s) URL`);
  }
  if (url.username || url.password) throw new ManifestError(`${field}: ${USERINFO_PROBLEM}; such a URL is never used or shown`);
  return url.href;
}

function schemaMinor(data, field) {
  const match = typeof data.schema_version === 'string' ? /^(\d+)\.(\d+)$/.exec(data.schema_version) : null;
  if (!match) throw new ManifestError(`${field}.schema_version: ${quoted(data.schema_version)} is not 'MAJOR.MINOR'`);
  if (match[1] !== '1') {
    throw new ManifestError(`${field}.schema_version: major version ${match[1]} is not supported (this loader reads 1.x)`,
      { hint: 'update teadist/web/model-cache.js' });
  }
  return Number(match[2]);
}

/** Block hashes of one file object: null when it has none. */
function blockLayout(obj, fileSize, minor, field) {
  const hasSize = obj.block_size !== undefined;
  const hasBlocks = obj.blocks !== undefined;
  if (!hasSize && !hasBlocks) return null;
  if (hasSize !== hasBlocks) throw new ManifestError(`${field}: block_size and blocks go together`);
  if (minor < 1) throw new ManifestError(`${field}.blocks: block hashes need schema_version 1.1 or later`);
  const bs = obj.block_size;
  if (!Number.isSafeInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw new ManifestError(`${field}.block_size: ${quoted(bs)} is not a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`);
  }
  if (!Array.isArray(obj.blocks)) throw new ManifestError(`${field}.blocks: must be a list of SHA-256`);
  const expected = Math.ceil(fileSize / bs);
  if (obj.blocks.length !== expected) {
    throw new ManifestError(`${field}.blocks: ${obj.blocks.length} hashes, a ${fileSize}-byte file in ${bs}-byte blocks has ${expected}`);
  }
  obj.blocks.forEach((h, i) => sha(h, `${field}.blocks[${i}]`));
  return { blockSize: bs, blocks: obj.blocks.slice() };
}

// GitHub's releases/download/ URLs answer without CORS headers: no page can read them, so trying
// them only costs retries. The REST API's asset URLs (…/releases/assets/ID) are the browser's way.
const NO_CORS_URL = /^https:\/\/github\.com\/[^/]+\/[^/]+\/releases\/download\//;

/** The URLs a browser can use, in order, and the ones it cannot (kept for error messages). */
function browserSources(urls) {
  const unique = [...new Set(urls)];
  return { sources: unique.filter((u) => !NO_CORS_URL.test(u)), skipped: unique.filter((u) => NO_CORS_URL.test(u)) };
}

function encodePath(path) {
  return path.split('/').map(encodeURIComponent).join('/');
}

/**
 * Validate one v1 manifest and return the loader's view of it. `baseUrl` is the manifest's own URL:
 * chunk names are resolved against it first, then each chunk's listed `urls` are tried.
 */
function readModel(data, baseUrl, field) {
  if (!isObject(data)) throw new ManifestError(`${field}: must be a JSON object`);
  const minor = schemaMinor(data, field);
  if (typeof data.name !== 'string' || data.name.length > 128 || !NAME_RE.test(data.name)) {
    throw new ManifestError(`${field}.name: ${quoted(data.name)} is not a valid model name`);
  }
  if (data.tag !== undefined && (typeof data.tag !== 'string' || data.tag.length > 64 || !TAG_RE.test(data.tag))) {
    throw new ManifestError(`${field}.tag: ${quoted(data.tag)} is not a valid tag`);
  }
  const file = data.file;
  if (!isObject(file)) throw new ManifestError(`${field}.file: must be an object`);
  plainName(file.name, `${field}.file.name`);
  const fileSize = size(file.size, `${field}.file.size`, { nullable: true });
  const fileSha = sha(file.sha256, `${field}.file.sha256`, { nullable: true });
  const format = data.format;
  if (!['single', 'bytes', 'gguf'].includes(format)) {
    throw new ManifestError(`${field}.format: ${quoted(format)} is not single, bytes or gguf`);
  }
  if (fileSize === null || fileSha === null) {
    throw new ManifestError(`${field}.file: ${quoted(file.name)} has no pinned size and sha256; a browser cannot verify it`,
      { hint: 'pin it first (teadist registry pin)' });
  }
  const fileBlocks = blockLayout(file, fileSize, minor, `${field}.file`);
  const resolve = (name) => new URL(encodeURIComponent(name), baseUrl).href;
  let shards;
  if (format === 'single') {
    if (data.chunks !== undefined && (!Array.isArray(data.chunks) || data.chunks.length)) {
      throw new ManifestError(`${field}.chunks: format 'single' takes no chunks`);
    }
    const sources = [resolve(file.name)];
    const listed = data.sources ?? [];
    if (!Array.isArray(listed) || listed.length > 32) throw new ManifestError(`${field}.sources: must be a list`);
    listed.forEach((src, i) => {
      const where = `${field}.sources[${i}]`;
      if (!isObject(src)) throw new ManifestError(`${where}: must be an object`);
      if (src.type === 'url') {
        sources.push(httpUrl(src.url, `${where}.url`));
      } else if (src.type === 'hf') {
        if (typeof src.repo !== 'string' || !HF_REPO_RE.test(src.repo)) throw new ManifestError(`${where}.repo: not ORG/NAME`);
        if (typeof src.path !== 'string' || !src.path || src.path.split('/').some((p) => plainNameProblem(p))) {
          throw new ManifestError(`${where}.path: ${quoted(src.path)} is not a safe path`);
        }
        const endpoint = src.endpoint === undefined ? 'https://huggingface.co' : httpUrl(src.endpoint, `${where}.endpoint`);
        const revision = src.revision === undefined ? 'main' : src.revision;
        if (typeof revision !== 'string' || !revision || revision.length > 255 || revision === '.' || revision === '..') {
          throw new ManifestError(`${where}.revision: invalid`);  // a '.' or '..' segment is removed from the URL
        }
        sources.push(`${endpoint.replace(/\/+$/, '')}/${encodePath(src.repo)}/resolve/${encodeURIComponent(revision)}/${encodePath(src.path)}`);
      } else {
        throw new ManifestError(`${where}.type: ${quoted(src.type)} is not url or hf`);
      }
    });
    shards = [{ name: file.name, size: fileSize, sha256: fileSha, offset: 0, layout: fileBlocks, ...browserSources(sources) }];
  } else {
    const chunks = data.chunks;
    if (!Array.isArray(chunks) || chunks.length === 0) {
      throw new ManifestError(`${field}.chunks: format ${quoted(format)} needs at least one chunk`);
    }
    if (chunks.length > MAX_CHUNKS) throw new ManifestError(`${field}.chunks: more than ${MAX_CHUNKS} chunks`);
    const seen = new Set();
    let expected = 0;
    shards = chunks.map((chunk, i) => {
      const where = `${field}.chunks[${i}]`;
      if (!isObject(chunk)) throw new ManifestError(`${where}: must be an object`);
      const name = plainName(chunk.name, `${where}.name`);
      if (seen.has(name)) throw new ManifestError(`${where}.name: duplicate name ${quoted(name)}`);
      if (name === file.name) throw new ManifestError(`${where}.name: same as file.name ${quoted(name)}`);
      seen.add(name);
      const chunkSize = size(chunk.size, `${where}.size`);
      const chunkSha = sha(chunk.sha256, `${where}.sha256`);
      let offset = null;
      if (format === 'bytes') {
        offset = size(chunk.offset, `${where}.offset`);
        if (offset !== expected) {
          throw new ManifestError(`${where}.offset: ${offset} does not follow the previous chunk (expected ${expected})`);
        }
        if (chunkSize === 0 && chunks.length > 1) throw new ManifestError(`${where}.size: empty chunk in a multi-chunk manifest`);
        expected += chunkSize;
      }
      const urls = chunk.urls ?? [];
      if (!Array.isArray(urls) || urls.length > MAX_URLS) throw new ManifestError(`${where}.urls: at most ${MAX_URLS} URLs`);
      const sources = [resolve(name), ...urls.map((u, j) => httpUrl(u, `${where}.urls[${j}]`))];
      return { name, size: chunkSize, sha256: chunkSha, offset, layout: blockLayout(chunk, chunkSize, minor, where),
        ...browserSources(sources) };
    });
    if (format === 'bytes' && expected !== fileSize) {
      throw new ManifestError(`${field}.chunks: sizes add up to ${expected} bytes, file.size is ${fileSize}`);
    }
  }
  const id = data.tag ? `${data.name}:${data.tag}` : data.name;
  return {
    id, name: data.name, tag: data.tag ?? null, description: typeof data.description === 'string' ? data.description : null,
    file: { name: file.name, size: fileSize, sha256: fileSha }, format,
    shards: shards.map((s, index) => ({ index, ...s })), totalBytes: shards.reduce((n, s) => n + s.size, 0),
  };
}

/**
 * Parse the text of a manifest or release index into models (`[{ id, file, format, shards, … }]`).
 * Throws ManifestError naming the field for anything malformed or unsafe.
 */
export function parseManifest(text, manifestUrl) {
  if (typeof manifestUrl !== 'string' || USERINFO_RE.test(manifestUrl)) {
    throw new ManifestError(typeof manifestUrl === 'string' ? `manifest URL: ${USERINFO_PROBLEM}; it is never used or shown`
      : 'manifest URL: must be a string');
  }
  if (typeof text !== 'string') throw new ManifestError('manifest: not text');
  if (text.length > MAX_MANIFEST_BYTES) throw new ManifestError(`manifest: larger than ${MAX_MANIFEST_BYTES} bytes`);
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new ManifestError(`manifest ${manifestUrl}: not valid JSON (${err.message})`);
  }
  if (!isObject(data)) throw new ManifestError(`manifest ${manifestUrl}: top level must be a JSON object`);
  let models;
  if (data.kind === 'release-index') {
    schemaMinor(data, 'release index');
    if (!Array.isArray(data.models) || data.models.length === 0) {
      throw new ManifestError('release index: needs a non-empty models list');
    }
    if (data.models.length > MAX_CHUNKS) throw new ManifestError('release index: too many models');
    models = data.models.map((m, i) => readModel(m, manifestUrl, `models[${i}]`));
  } else if (data.kind !== undefined) {
    throw new ManifestError(`manifest ${manifestUrl}: unknown kind ${quoted(data.kind)}`);
  } else {
    models = [readModel(data, manifestUrl, 'manifest')];
  }
  const ids = new Set();
  for (const m of models) {
    if (ids.has(m.id)) throw new ManifestError(`release index: two models are called ${quoted(m.id)}`);
    ids.add(m.id);
  }
  return models;
}

/**
 * The digest that names a model version: everything that decides its bytes and how they were
 * verified — block maps included, so bytes accepted under one manifest's block hashes never pass
 * for another manifest's version with the same sha256s.
 */
async function versionKey(model) {
  const identity = JSON.stringify(['teadist-model-v2', model.format, model.file.name, model.file.size, model.file.sha256,
    model.shards.map((s) => [s.name, s.size, s.sha256, s.offset, s.layout ? [s.layout.blockSize, s.layout.blocks] : null])]);
  return subtleSha256(new TextEncoder().encode(identity));
}

// -- IndexedDB bookkeeping ----------------------------------------------------------------------

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new DOMException('IndexedDB transaction aborted', 'AbortError'));
    tx.onerror = () => { /* onabort follows with the same error */ };
  });
}

function keyRange(key, ...prefix) {
  // Array keys sort after numbers, so [key, ...prefix, []] is above every [key, ...prefix, n].
  return IDBKeyRange.bound([key, ...prefix], [key, ...prefix, []]);
}

async function openDatabase(name) {
  const req = indexedDB.open(name, 1);
  req.onupgradeneeded = () => {
    const db = req.result;
    db.createObjectStore('manifests', { keyPath: 'url' });
    db.createObjectStore('entries', { keyPath: 'key' });
    // [key, shard] → { pieceSize, pieces, bytes, sizes, digests, hashState, complete }
    db.createObjectStore('progress');
    db.createObjectStore('pieces'); // [key, shard, piece] → Blob (IndexedDB back end only)
  };
  const db = await request(req);
  db.onversionchange = () => db.close();
  return db;
}

class Bookkeeping {
  constructor(db) {
    this.db = db;
  }

  async get(store, key) {
    return request(this.db.transaction(store).objectStore(store).get(key));
  }

  async all(store, range = undefined) {
    return request(this.db.transaction(store).objectStore(store).getAll(range));
  }

  async put(store, value, key = undefined) {
    const tx = this.db.transaction(store, 'readwrite');
    tx.objectStore(store).put(value, key);
    return committed(tx);
  }

  /**
   * Read-modify-write one record in one transaction: `change(record)` returns the new record, or
   * undefined to leave it. A record that is gone stays gone. Resolves whether it was written.
   */
  async update(store, key, change) {
    const tx = this.db.transaction(store, 'readwrite');
    const objects = tx.objectStore(store);
    let written = false;
    const get = objects.get(key);
    get.onsuccess = () => {
      const next = get.result === undefined ? undefined : change(get.result);
      if (next !== undefined) {
        objects.put(next);
        written = true;
      }
    };
    await committed(tx);
    return written;
  }

  async progressOf(key) {
    const tx = this.db.transaction('progress');
    const store = tx.objectStore('progress');
    const [keys, values] = await Promise.all([request(store.getAllKeys(keyRange(key))), request(store.getAll(keyRange(key)))]);
    const out = new Map();
    keys.forEach((k, i) => out.set(k[1], values[i]));
    return out;
  }

  async storedBytes() {
    const tx = this.db.transaction('progress');
    const store = tx.objectStore('progress');
    const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
    const out = new Map();
    keys.forEach((k, i) => out.set(k[0], (out.get(k[0]) ?? 0) + values[i].bytes));
    return out;
  }

  /** Forget a version (entry, progress and IndexedDB pieces) in one transaction. */
  async dropVersion(key) {
    const tx = this.db.transaction(['entries', 'progress', 'pieces'], 'readwrite');
    tx.objectStore('entries').delete(key);
    tx.objectStore('progress').delete(keyRange(key));
    tx.objectStore('pieces').delete(keyRange(key));
    return committed(tx);
  }
}

// -- piece storage back ends -----------------------------------------------------------------------

// How a piece is stored, written once: the page's back ends call these, and the worker that stores
// pieces (see PieceWriters) runs the very same functions, their source put into its own. So each
// uses nothing but its arguments and the platform.

/** One piece as the file `shard.piece` in the model version's folder under `root`; the file is
 * swapped in whole when the writable closes, or not at all. */
async function writeOpfsPiece(root, key, shard, piece, bytes) {
  const dir = await root.getDirectoryHandle(key, { create: true });
  const writable = await (await dir.getFileHandle(`${shard}.${piece}`, { create: true })).createWritable();
  try {
    await writable.write(bytes);
    await writable.close();
  } catch (err) {
    await writable.abort().catch(() => {});
    throw err;
  }
}

/** One piece and the progress record counting it, in one IndexedDB transaction: both or neither. */
function putIndexedDbPiece(db, key, shard, piece, bytes, progress) {
  const tx = db.transaction(['pieces', 'progress'], 'readwrite');
  tx.objectStore('pieces').put(new Blob([bytes]), [key, shard, piece]);
  tx.objectStore('progress').put(progress, [key, shard]);
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new DOMException('IndexedDB transaction aborted', 'AbortError'));
    tx.onerror = () => { /* onabort follows with the same error */ };
  });
}

const PIECE_WRITER_SOURCE = `'use strict';
const writeOpfsPiece = ${writeOpfsPiece};
const putIndexedDbPiece = ${putIndexedDbPiece};
let db = null;
function opened(name) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(name);
    req.onsuccess = () => { req.result.onversionchange = () => req.result.close(); resolve(req.result); };
    req.onerror = () => reject(req.error);
  });
}
async function toOpfs({ name, key, shard, piece, bytes }) {
  const root = await (await navigator.storage.getDirectory()).getDirectoryHandle(name, { create: true });
  await writeOpfsPiece(root, key, shard, piece, bytes);
}
async function toIndexedDb({ name, key, shard, piece, bytes, progress }) {
  db ??= await opened(name);
  await putIndexedDbPiece(db, key, shard, piece, bytes, progress);
}
onmessage = async ({ data }) => {
  if (data.kind === 'ping') { postMessage({ pong: true }); return; }
  try {
    await (data.kind === 'opfs' ? toOpfs(data) : toIndexedDb(data));
    postMessage({ id: data.id, ok: true });
  } catch (err) {
    postMessage({ id: data.id, ok: false, name: String(err?.name ?? 'Error'), message: String(err?.message ?? err) });
  }
};
`;
const PIECES_PER_WRITER = 2;
// A worker with writes pending is asked every PING_MS whether it is still there; one that has not
// answered by the next ask ended without an error event (it closed, the browser stopped it).
const PING_MS = 5000;
let pieceWriterUrl = null; // one blob: URL for every cache in the page
const OPFS_DIRECTORY = 'teadist-model-cache';

/**
 * Storing a piece makes a Blob of its bytes (IndexedDB's put of a Blob; an OPFS writable's write
 * does it inside the browser), and the browser keeps those bytes for as long as the Blob object
 * exists: the page's garbage collector frees such small-looking objects late, so storing 8 MiB
 * pieces from the page held hundreds of MiB for a large model. So pieces are stored from a worker
 * that is ended after a few pieces, which releases its Blobs at once: memory stays at a few pieces
 * whatever the model's size. Where no worker can start (no Worker, a page policy that forbids
 * blob: workers), pieces are stored from the page as before.
 */
class PieceWriters {
  #current = null; // { worker, sent, pending: Map(id → { resolve, reject }) }
  #nextId = 0;
  #broken = typeof Worker === 'undefined';

  /**
   * Store one piece in the worker: `{ kind: 'opfs' | 'indexeddb', name, key, shard, piece, bytes,
   * progress }` (IndexedDB commits the progress record with the piece). Resolves when it is
   * stored; returns null when no worker can do it, resolves null when the worker died first.
   */
  write(piece) {
    const writer = this.#writer();
    if (writer === null) return null;
    const id = this.#nextId++;
    const message = { ...piece, id };
    const done = new Promise((resolve, reject) => writer.pending.set(id, { resolve, reject }));
    writer.worker.postMessage(message); // a copy: the caller reuses `bytes`
    writer.sent += 1;
    this.#watch(writer);
    if (writer.sent >= PIECES_PER_WRITER) {
      this.#current = null; // new pieces go to a new worker; this one ends with its last answer
      this.#retire(writer);
    }
    return done;
  }

  #writer() {
    if (this.#broken) return null;
    if (this.#current) return this.#current;
    let worker;
    try {
      pieceWriterUrl ??= URL.createObjectURL(new Blob([PIECE_WRITER_SOURCE], { type: 'text/javascript' }));
      worker = new Worker(pieceWriterUrl);
    } catch {
      this.#broken = true;
      return null;
    }
    const writer = { worker, sent: 0, pending: new Map(), timer: null, pingSentAt: null };
    worker.onmessage = ({ data }) => {
      writer.pingSentAt = null; // it is alive
      if (data.pong) return;
      const waiting = writer.pending.get(data.id);
      if (!waiting) return;
      writer.pending.delete(data.id);
      if (data.ok) waiting.resolve(undefined);
      else waiting.reject(new DOMException(data.message, data.name));
      this.#retire(writer);
    };
    worker.onerror = (event) => {
      // The worker could not start or died: its pieces are stored from the page instead.
      event.preventDefault?.();
      this.#lost(writer);
    };
    this.#current = writer;
    return writer;
  }

  /** A worker that died or ended: its pending pieces are stored from the page, and so are later ones. */
  #lost(writer) {
    this.#broken = true;
    if (this.#current === writer) this.#current = null;
    clearInterval(writer.timer);
    writer.timer = null;
    writer.worker.terminate();
    for (const waiting of writer.pending.values()) waiting.resolve(null);
    writer.pending.clear();
  }

  /**
   * A worker can end without an error event; its writes would then never answer. While writes are
   * pending, ask it every PING_MS; no answer by the next ask (any message counts) means it is gone.
   * A worker that is only slow answers at once: its event loop is free while storage works.
   */
  #watch(writer) {
    if (writer.timer !== null) return;
    writer.timer = setInterval(() => {
      if (writer.pending.size === 0) {
        clearInterval(writer.timer);
        writer.timer = null;
        writer.pingSentAt = null;
      } else if (writer.pingSentAt !== null && performance.now() - writer.pingSentAt >= PING_MS) {
        this.#lost(writer);
      } else if (writer.pingSentAt === null) {
        writer.pingSentAt = performance.now();
        writer.worker.postMessage({ kind: 'ping' });
      }
    }, PING_MS);
  }

  #retire(writer) {
    if (this.#current !== writer && writer.pending.size === 0) {
      clearInterval(writer.timer);
      writer.timer = null;
      writer.worker.terminate();
    }
  }
}

class IndexedDbPieces {
  kind = 'indexeddb';

  constructor(book, dbName) {
    this.book = book;
    this.dbName = dbName;
    this.writers = new PieceWriters();
  }

  /** The piece and the progress record counting it commit together, or neither does. */
  async write(key, shard, piece, bytes, progress) {
    // Without a worker, or when the worker died before answering (null), the page stores it.
    const byWorker = this.writers.write({ kind: 'indexeddb', name: this.dbName, key, shard, piece, bytes, progress });
    if (byWorker !== null && await byWorker !== null) return;
    await putIndexedDbPiece(this.book.db, key, shard, piece, bytes, progress);
  }

  async read(key, shard, count) {
    const store = this.book.db.transaction('pieces').objectStore('pieces');
    // Both requests go out before the first await, while the transaction is surely active.
    const [blobs, keys] = await Promise.all([request(store.getAll(keyRange(key, shard))),
      request(store.getAllKeys(keyRange(key, shard)))]);
    const out = new Array(count).fill(null);
    keys.forEach((k, i) => { if (k[2] < count) out[k[2]] = blobs[i]; });
    return out;
  }

  async dropShard(key, shard) {
    const tx = this.book.db.transaction(['progress', 'pieces'], 'readwrite');
    tx.objectStore('progress').delete([key, shard]);
    tx.objectStore('pieces').delete(keyRange(key, shard));
    return committed(tx);
  }

  async dropVersion(key) {
    return this.book.dropVersion(key);
  }

  async collectGarbage() { /* versions are dropped in one transaction: no orphans */ }
}

class OpfsPieces {
  kind = 'opfs';

  constructor(book, root) {
    this.book = book;
    this.root = root;
    this.writers = new PieceWriters();
  }

  static async open(book) {
    const top = await navigator.storage.getDirectory();
    return new OpfsPieces(book, await top.getDirectoryHandle(OPFS_DIRECTORY, { create: true }));
  }

  /** The piece file is committed (createWritable swaps it in on close) before its progress record. */
  async write(key, shard, piece, bytes, progress) {
    // Without a worker, or when the worker died before answering (null), the page writes the file.
    const byWorker = this.writers.write({ kind: 'opfs', name: OPFS_DIRECTORY, key, shard, piece, bytes });
    if (byWorker === null || await byWorker === null) await writeOpfsPiece(this.root, key, shard, piece, bytes);
    await this.book.put('progress', progress, [key, shard]);
  }

  async read(key, shard, count) {
    const out = new Array(count).fill(null);
    let dir;
    try {
      dir = await this.root.getDirectoryHandle(key);
    } catch {
      return out;
    }
    await Promise.all(out.map(async (_, i) => {
      try {
        out[i] = await (await dir.getFileHandle(`${shard}.${i}`)).getFile();
      } catch {
        out[i] = null;
      }
    }));
    return out;
  }

  async dropShard(key, shard) {
    const tx = this.book.db.transaction('progress', 'readwrite');
    tx.objectStore('progress').delete([key, shard]);
    await committed(tx);
    let dir;
    try {
      dir = await this.root.getDirectoryHandle(key);
    } catch {
      return;
    }
    const names = [];
    for await (const name of dir.keys()) if (name.startsWith(`${shard}.`)) names.push(name);
    await Promise.all(names.map((name) => dir.removeEntry(name).catch(() => {})));
  }

  /** Bookkeeping first: a folder left behind by a crash is an orphan that the next open removes. */
  async dropVersion(key) {
    await this.book.dropVersion(key);
    await this.root.removeEntry(key, { recursive: true }).catch((err) => {
      if (err?.name !== 'NotFoundError') throw err;
    });
  }

  async collectGarbage(isKnown) {
    const names = [];
    for await (const name of this.root.keys()) names.push(name);
    for (const name of names) {
      if (await isKnown(name)) continue;
      await withLock(`opfs:${name}`, { ifAvailable: true }, async (held) => {
        if (held && !(await isKnown(name))) {
          await this.root.removeEntry(name, { recursive: true }).catch(() => {});
        }
      });
    }
  }
}

// One lock per model version, across tabs and workers (Web Locks). Without the API (very old
// browsers) a process-local queue still keeps this page's own calls apart.
const localLocks = new Map();

async function withLock(key, { ifAvailable = false, signal = undefined } = {}, fn) {
  const name = `teadist-model-cache:${key}`;
  if (typeof navigator !== 'undefined' && navigator.locks) {
    const options = ifAvailable ? { ifAvailable: true } : (signal ? { signal } : {});
    return navigator.locks.request(name, options, (lock) => fn(lock !== null));
  }
  const previous = localLocks.get(name);
  if (previous && ifAvailable) return fn(false);
  let release;
  const current = new Promise((resolve) => { release = resolve; });
  localLocks.set(name, current);
  try {
    await previous;
    return await fn(true);
  } finally {
    release();
    if (localLocks.get(name) === current) localLocks.delete(name);
  }
}

// -- download plumbing ----------------------------------------------------------------------------

/** One failed attempt at one URL; `transient` ones are retried on the same URL. */
class AttemptError extends Error {
  constructor(message, { transient = false, integrity = null } = {}) {
    super(message);
    this.transient = transient;
    this.integrity = integrity; // { start, end, what } when bytes failed their hash
  }
}

/**
 * Cuts an attempt when the server sends nothing for `ms`: a silent, open connection would
 * otherwise hold a download forever. Aborting the outer signal aborts the attempt too.
 */
class StallWatch {
  constructor(ms, outer) {
    this.ms = ms;
    this.stalled = false;
    this.outer = outer;
    this.controller = new AbortController();
    this.onOuterAbort = () => this.controller.abort(abortReason(outer));
    outer.addEventListener('abort', this.onOuterAbort, { once: true });
    this.timer = 0;
    this.reset();
  }

  get signal() {
    return this.controller.signal;
  }

  reset() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.stalled = true;
      this.controller.abort(new DOMException(this.describe(), 'TimeoutError'));
    }, this.ms);
  }

  describe() {
    return `no data for ${this.ms / 1000} s`;
  }

  close() {
    clearTimeout(this.timer);
    this.outer.removeEventListener('abort', this.onOuterAbort);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', stop);
      resolve();
    }
    function stop() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal?.addEventListener('abort', stop, { once: true });
  });
}

function abortReason(signal) {
  return signal.reason ?? new DOMException('The download was aborted.', 'AbortError');
}

/** A failed piece write; the caller turns a full disk into a QuotaError naming what to evict. */
class StorageWriteError extends Error {
  constructor(err, model, shard) {
    super(`storage failed while writing ${quoted(shard.name)} of ${quoted(model.id)}: ${err?.message ?? err}`);
    this.quota = err?.name === 'QuotaExceededError';
    this.cause = err;
  }
}

class Progress {
  constructor(model, onProgress) {
    this.model = model;
    this.onProgress = typeof onProgress === 'function' ? onProgress : null;
    this.started = performance.now();
    this.loaded = 0;
    this.sessionBytes = 0;
    this.lastEmit = 0;
  }

  emit(phase, text = null, force = false) {
    if (!this.onProgress) return;
    const now = performance.now();
    if (!force && now - this.lastEmit < PROGRESS_INTERVAL_MS) return;
    this.lastEmit = now;
    const total = this.model.totalBytes;
    const elapsed = (now - this.started) / 1000;
    const rate = elapsed > 0 ? this.sessionBytes / elapsed : 0;
    const left = Math.max(0, total - this.loaded);
    const remaining = phase === 'ready' ? 0 : (rate > 0 ? left / rate : null);
    const report = {
      phase,
      progress: total > 0 ? Math.min(1, this.loaded / total) : (phase === 'ready' ? 1 : 0),
      loadedBytes: this.loaded,
      totalBytes: total,
      text: text ?? `${this.model.id}: ${formatBytes(this.loaded)} of ${formatBytes(total)}`
        + (phase === 'downloading' && rate > 0 ? ` (${formatBytes(Math.round(rate))}/s)` : ''),
      timeElapsed: elapsed,
      timeRemaining: remaining,
    };
    // A failing callback must not break the download; show it where page code would look.
    const complain = (err) => console.error('ModelCache onProgress callback failed:', err);
    try {
      const result = this.onProgress(report);
      if (result && typeof result.then === 'function') result.then(undefined, complain);
    } catch (err) {
      complain(err);
    }
  }
}

function parseContentRange(value) {
  const match = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim()) : null;
  return match ? { start: Number(match[1]), end: Number(match[2]), total: match[3] === '*' ? null : Number(match[3]) } : null;
}

// -- the cache ------------------------------------------------------------------------------------

/**
 * A verified model cache for one manifest URL, on one storage back end ('opfs' or 'indexeddb').
 * Create it with `await ModelCache.open({ manifestUrl, storage })`.
 */
export class ModelCache {
  #book;
  #pieces;
  #models;
  #pieceSize;
  #retries;
  #stallTimeout;
  #verifyOnLoad;

  constructor(secret, fields) {
    if (secret !== OPEN_TOKEN) throw new TypeError('use ModelCache.open({ manifestUrl, storage })');
    Object.assign(this, fields.public);
    this.#book = fields.book;
    this.#pieces = fields.pieces;
    this.#models = fields.models;
    this.#pieceSize = fields.pieceSize;
    this.#retries = fields.retries;
    this.#stallTimeout = fields.stallTimeout;
    this.#verifyOnLoad = fields.verifyOnLoad;
    Object.freeze(this);
  }

  /**
   * Read the manifest (or, when it cannot be fetched, the copy kept from the last visit) and open
   * the chosen storage. Options: `manifestUrl` (relative URLs resolve against the page),
   * `storage` ('opfs' | 'indexeddb'), and rarely `pieceSize` (size of a stored piece, a power of
   * two ≥ 64 KiB, default 8 MiB; shards without block hashes resume at a piece boundary), `retries`
   * (extra attempts per URL on a network error), `stallTimeout` (ms without a byte before the
   * manifest request or a shard attempt is given up; default 30 s) and `verifyOnLoad` (default
   * true: `blobs()` hashes every stored piece again before handing it out).
   */
  static async open({ manifestUrl, storage = 'opfs', pieceSize = DEFAULT_PIECE_SIZE, retries = DEFAULT_RETRIES,
    stallTimeout = DEFAULT_STALL_TIMEOUT_MS, verifyOnLoad = true } = {}) {
    if (storage !== 'opfs' && storage !== 'indexeddb') {
      throw new ModelCacheError(`storage must be 'opfs' or 'indexeddb', not ${quoted(storage)}`, { code: 'usage' });
    }
    if (!Number.isSafeInteger(pieceSize) || pieceSize < MIN_BLOCK_SIZE || pieceSize > MAX_BLOCK_SIZE || (pieceSize & (pieceSize - 1))) {
      throw new ModelCacheError(`pieceSize must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`, { code: 'usage' });
    }
    if (!Number.isSafeInteger(retries) || retries < 0 || retries > 10) {
      throw new ModelCacheError('retries must be a whole number from 0 to 10', { code: 'usage' });
    }
    if (!Number.isSafeInteger(stallTimeout) || stallTimeout < 100 || stallTimeout > 3600000) {
      throw new ModelCacheError('stallTimeout must be milliseconds from 100 to 3600000', { code: 'usage' });
    }
    if (typeof verifyOnLoad !== 'boolean') throw new ModelCacheError('verifyOnLoad must be true or false', { code: 'usage' });
    if (manifestUrl === undefined || manifestUrl === null || manifestUrl === '') {
      throw new ModelCacheError('manifestUrl is required', { code: 'usage' });
    }
    if (USERINFO_RE.test(String(manifestUrl))) {
      throw new ModelCacheError(`manifestUrl: ${USERINFO_PROBLEM}; it is never used or shown`, { code: 'usage' });
    }
    let url;
    try {
      url = new URL(String(manifestUrl), globalThis.location?.href).href;
    } catch {
      throw new ModelCacheError(`manifestUrl ${quoted(manifestUrl)} is not a URL`, { code: 'usage' });
    }
    if (new URL(url).username || new URL(url).password) {
      throw new ModelCacheError(`manifestUrl: ${USERINFO_PROBLEM}; it is never used or shown`, { code: 'usage' });
    }
    if (typeof indexedDB === 'undefined') {
      throw new ModelCacheError('this browser offers no IndexedDB here (private mode?); the model cache cannot work', { code: 'unsupported' });
    }
    if (storage === 'opfs' && !globalThis.navigator?.storage?.getDirectory) {
      throw new ModelCacheError('this browser offers no origin private file system (OPFS)',
        { code: 'unsupported', hint: "open the cache with storage: 'indexeddb'" });
    }
    let book;
    const dbName = `teadist-model-cache-${storage}`;
    try {
      book = new Bookkeeping(await openDatabase(dbName));
    } catch (err) {
      throw new ModelCacheError(`cannot open IndexedDB here (${err?.message ?? err}); the model cache needs it for its records`,
        { code: 'unsupported', hint: 'private browsing or disabled site data can cause this', cause: err });
    }
    let pieces;
    try {
      pieces = storage === 'opfs' ? await OpfsPieces.open(book) : new IndexedDbPieces(book, dbName);
    } catch (err) {
      throw new ModelCacheError(`cannot open the ${storage} storage: ${err?.message ?? err}`,
        { code: 'unsupported', hint: storage === 'opfs' ? "try storage: 'indexeddb'" : null, cause: err });
    }
    const { text, offline, problem } = await loadManifestText(url, book, stallTimeout);
    const parsed = parseManifest(text, url);
    const models = new Map();
    for (const model of parsed) {
      model.key = await versionKey(model);
      models.set(model.id, model);
    }
    await pieces.collectGarbage(async (key) => (await book.get('entries', key)) !== undefined);
    return new ModelCache(OPEN_TOKEN, {
      public: { manifestUrl: url, storage, offline, manifestProblem: problem },
      book, pieces, models, pieceSize, retries, stallTimeout, verifyOnLoad,
    });
  }

  /** One lock per stored version of this back end, across tabs (Web Locks). */
  #lock(key, options, fn) {
    return withLock(`${this.storage}:${key}`, options, fn);
  }

  #model(id) {
    const model = this.#models.get(id);
    if (!model) {
      throw new ModelCacheError(`model ${quoted(id)} is not in ${this.manifestUrl}`,
        { code: 'unknown-model', hint: `models: ${[...this.#models.keys()].join(', ')}` });
    }
    return model;
  }

  /** The models the manifest lists: `[{ id, file, size, format, cached }]`. */
  async list() {
    const out = [];
    for (const model of this.#models.values()) {
      const entry = await this.#book.get('entries', model.key);
      out.push({ id: model.id, file: model.file.name, size: model.file.size, format: model.format,
        cached: Boolean(entry?.complete) });
    }
    return out;
  }

  /** `{ downloaded, partialBytes, totalBytes, verifiedAt, lastUsed }` for the manifest's version. */
  async status(id) {
    const model = this.#model(id);
    const entry = await this.#book.get('entries', model.key);
    const progress = await this.#book.progressOf(model.key);
    let stored = 0;
    for (const p of progress.values()) stored += p.bytes;
    return {
      downloaded: Boolean(entry?.complete),
      partialBytes: stored,
      totalBytes: model.totalBytes,
      verifiedAt: entry?.verifiedAt ?? null,
      lastUsed: entry?.lastUsed ?? null,
      shards: model.shards.map((s) => {
        const p = progress.get(s.index);
        return { name: s.name, size: s.size, storedBytes: p?.bytes ?? 0, verified: Boolean(p?.complete) };
      }),
    };
  }

  /**
   * Download, verify and store the model; resume from the last verified block. Resolves with
   * `status(id)`. Rejects with an IntegrityError, SourceError, QuotaError or the signal's reason.
   */
  async download(id, { onProgress = undefined, signal = undefined, concurrency = DEFAULT_CONCURRENCY } = {}) {
    const model = this.#model(id);
    if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > MAX_CONCURRENCY) {
      throw new ModelCacheError(`concurrency must be a whole number from 1 to ${MAX_CONCURRENCY}`, { code: 'usage' });
    }
    checkLoadable(model);
    if (signal?.aborted) throw abortReason(signal);
    const progress = new Progress(model, onProgress);
    await this.#lock(model.key, { signal }, async () => {
      await this.#download(model, progress, signal, concurrency);
    });
    return this.status(id);
  }

  async #download(model, progress, signal, concurrency) {
    let entry = await this.#book.get('entries', model.key);
    const stored = await this.#book.progressOf(model.key);
    progress.loaded = [...stored.values()].reduce((n, p) => n + p.bytes, 0);
    if (entry?.complete) {
      progress.emit('ready', `${model.id}: cached and verified`, true);
      return;
    }
    progress.emit('verifying', `${model.id}: checking what is already stored`, true);
    await this.#dropStaleVersions(model);
    if (entry) {
      // Pieces that went missing under us (storage cleared by the browser) are fetched again.
      for (const shard of model.shards) {
        const p = stored.get(shard.index);
        if (!p) continue;
        const blobs = await this.#pieces.read(model.key, shard.index, p.pieces);
        if (!piecesIntact(blobs, shard, p)) {
          await this.#pieces.dropShard(model.key, shard.index);
          stored.delete(shard.index);
        }
      }
      progress.loaded = [...stored.values()].reduce((n, p) => n + p.bytes, 0);
    }
    const needed = model.totalBytes - progress.loaded;
    await this.#checkQuota(model, needed);
    requestPersistence();
    if (!entry) {
      entry = { key: model.key, id: model.id, file: model.file.name, format: model.format, totalBytes: model.totalBytes,
        manifestUrl: this.manifestUrl, complete: false, createdAt: Date.now(), verifiedAt: null, lastUsed: null };
      await this.#book.put('entries', entry);
    }
    const inner = new AbortController();
    const onAbort = () => inner.abort(abortReason(signal));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const queue = model.shards.filter((s) => !stored.get(s.index)?.complete);
      let failure = null;
      const worker = async () => {
        while (queue.length && !inner.signal.aborted) {
          const shard = queue.shift();
          try {
            await this.#downloadShard(model, shard, stored.get(shard.index), progress, inner.signal);
          } catch (err) {
            // First failure wins; the others stop at their next verified piece.
            if (!failure) failure = err;
            if (!inner.signal.aborted) inner.abort(err);
          }
        }
      };
      progress.emit('downloading', null, true);
      await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
      if (signal?.aborted) throw abortReason(signal);
      if (failure instanceof StorageWriteError && failure.quota) {
        // The estimate said it would fit, the browser disagreed (its estimate is coarse on purpose).
        const needed = model.totalBytes - progress.loaded;
        throw await this.#quotaError(model, needed, 0,
          `storage is full: ${model.id} still needs ${formatBytes(needed)} (${needed} bytes); `
          + `the ${formatBytes(progress.loaded)} stored so far are kept`, failure.cause);
      }
      if (failure instanceof StorageWriteError) {
        throw new ModelCacheError(failure.message, { code: 'storage', cause: failure.cause });
      }
      if (failure) throw failure;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    // Every piece was verified as it arrived; before the version counts as complete, check that
    // storage holds each one at its size (a store that lost a write must not pass for complete).
    progress.emit('verifying', `${model.id}: checking the stored shards`, true);
    const done = await this.#book.progressOf(model.key);
    for (const shard of model.shards) {
      const p = done.get(shard.index);
      const parts = p?.complete ? await this.#pieces.read(model.key, shard.index, p.pieces) : [];
      if (!p?.complete || !piecesIntact(parts, shard, p)) {
        await this.#pieces.dropShard(model.key, shard.index);
        throw new ModelCacheError(`storage lost part of shard ${quoted(shard.name)} of ${quoted(model.id)} right after writing it`,
          { code: 'storage', hint: 'call download() again; if this repeats, the browser storage is failing' });
      }
    }
    if (model.format === 'bytes') await this.#checkJoinedFile(model, done, progress);
    const now = Date.now();
    await this.#book.put('entries', { ...entry, complete: true, verifiedAt: now, lastUsed: now });
    progress.loaded = model.totalBytes;
    progress.emit('ready', `${model.id}: downloaded and verified`, true);
  }

  /**
   * Byte chunks are handed out joined, as the file the manifest names: its sha256 must match the
   * joined chunks too (a manifest whose chunk hashes disagree with its file hash is refused, and
   * nothing of it is kept). One streaming pass over the stored pieces, one piece in memory at a
   * time; skipped when the only chunk is the file itself.
   */
  async #checkJoinedFile(model, done, progress) {
    if (model.shards.length === 1 && model.shards[0].sha256 === model.file.sha256) return;
    progress.emit('verifying', `${model.id}: checking the joined chunks against file.sha256`, true);
    const hasher = new Sha256();
    for (const shard of model.shards) {
      const p = done.get(shard.index);
      for (const piece of await this.#pieces.read(model.key, shard.index, p.pieces)) {
        hasher.update(new Uint8Array(await piece.arrayBuffer()));
      }
    }
    if (hasher.digest() !== model.file.sha256) {
      await this.#pieces.dropVersion(model.key);
      throw new IntegrityError(`${quoted(model.id)}: the joined chunks (bytes 0-${model.file.size - 1}) do not match the `
        + `manifest's file.sha256 although every chunk matched its own; nothing of it is cached`,
      { shard: model.file.name, start: 0, end: Math.max(0, model.file.size - 1), url: null,
        hint: 'the manifest contradicts itself: republish the release' });
    }
  }

  async #dropStaleVersions(model) {
    const entries = await this.#book.all('entries');
    for (const old of entries) {
      if (old.id !== model.id || old.key === model.key) continue;
      // Another tab may still be downloading that version: leave it to a later call then.
      await this.#lock(old.key, { ifAvailable: true }, async (held) => {
        if (held) await this.#pieces.dropVersion(old.key);
      });
    }
  }

  async #checkQuota(model, needed) {
    if (needed <= 0 || !navigator.storage?.estimate) return;
    const { quota = 0, usage = 0 } = await navigator.storage.estimate();
    const available = Math.max(0, quota - usage);
    if (needed <= available) return;
    throw await this.#quotaError(model, needed, available,
      `${model.id} needs ${formatBytes(needed)} (${needed} bytes) more, but only ${formatBytes(available)} `
      + `(${available} bytes) of this site's storage quota is free; nothing was written`);
  }

  async #quotaError(model, needed, available, message, cause = undefined) {
    const info = await this.storageInfo();
    const candidates = info.models.filter((m) => m.key !== model.key)
      .map(({ id, size: bytes, lastUsed }) => ({ id, size: bytes, lastUsed }));
    const listed = candidates.slice(0, 5).map((c) => `${c.id} (${formatBytes(c.size)}, last used ${when(c.lastUsed)})`);
    return new QuotaError(message + (listed.length ? `; least recently used first: ${listed.join(', ')}` : ''),
      { neededBytes: needed, availableBytes: available, candidates, cause,
        hint: candidates.length ? 'free space with evictLeastRecentlyUsed(targetBytes) or delete(id), then download again'
          : 'the browser grants this site too little storage for this model' });
  }

  async #downloadShard(model, shard, stored, progress, signal) {
    // Stored pieces are large (default 8 MiB, at least one block) whatever the manifest's block
    // size: one file or record per 64 KiB block made storage the bottleneck.
    const fresh = () => ({ pieceSize: shard.layout ? Math.max(shard.layout.blockSize, this.#pieceSize) : this.#pieceSize,
      pieces: 0, bytes: 0, sizes: [], digests: [], hashState: null, complete: false });
    let state = stored ?? fresh();
    if (shard.size === 0) {
      if (shard.sha256 !== EMPTY_SHA256) {
        throw new IntegrityError(`shard ${quoted(shard.name)} of ${quoted(model.id)}: the manifest gives an empty shard a non-empty SHA-256`,
          { shard: shard.name, start: 0, end: 0, url: null });
      }
      await this.#book.put('progress', { ...state, complete: true }, [model.key, shard.index]);
      return;
    }
    const failures = [];
    let integrity = null;
    for (const url of shard.sources) {
      for (let attempt = 0; ; attempt += 1) {
        if (signal.aborted) throw abortReason(signal);
        const before = state.bytes;
        try {
          state = await this.#fetchInto(model, shard, state, url, progress, signal);
          return;
        } catch (err) {
          if (signal.aborted) throw abortReason(signal);
          if (!(err instanceof AttemptError)) throw err;
          failures.push({ url, reason: err.message });
          state = err.state ?? state;
          if (err.integrity) {
            integrity ??= { ...err.integrity, url };
            if (err.integrity.whole) {
              // The whole shard's SHA-256 failed: every stored piece of it is suspect.
              await this.#pieces.dropShard(model.key, shard.index);
              progress.loaded -= state.bytes;
              state = fresh();
            }
            break;
          }
          // A retry on the same URL only when the failure is transient; progress resets the count.
          if (err.transient && (attempt < this.#retries || state.bytes > before)) {
            if (state.bytes > before) attempt = -1;
            await sleep(250 * 2 ** Math.max(0, attempt), signal);
            continue;
          }
          break;
        }
      }
    }
    const detail = [...failures.map((f) => `${f.url}: ${f.reason}`),
      ...shard.skipped.map((u) => `${u}: not tried (GitHub's releases/download URLs send no CORS headers)`)].join('; ');
    if (integrity) {
      await this.#pieces.dropShard(model.key, shard.index);
      progress.loaded -= state.bytes;
      progress.emit('downloading', null, true);
      throw new IntegrityError(
        `shard ${quoted(shard.name)} of ${quoted(model.id)} failed its SHA-256 at bytes ${integrity.start}-${integrity.end} `
        + `(${integrity.what}) from ${integrity.url}; the shard was discarded, nothing of it is cached`
        + (failures.length > 1 ? ` [all sources: ${detail}]` : ''),
        { shard: shard.name, start: integrity.start, end: integrity.end, url: integrity.url,
          hint: 'the server holds other bytes than the manifest describes: republish the release or fix the mirror' });
    }
    // Without block hashes nothing is verified before the whole shard is: say so.
    const kept = shard.layout ? 'verified and kept' : 'kept, to be verified once the whole shard is in';
    throw new SourceError(
      `shard ${quoted(shard.name)} of ${quoted(model.id)}: no source delivered bytes ${state.bytes}-${shard.size - 1} `
      + `(${formatBytes(state.bytes)} ${kept}): ${detail}`,
      { shard: shard.name, failures, hint: 'check the network or the server, then call download() again to resume' });
  }

  /**
   * One request to one URL, from the end of what is stored. With block hashes each block is
   * checked (SubtleCrypto) as soon as it is whole and only then fed to the shard's streaming
   * SHA-256; without, bytes feed that hasher as they arrive. A full piece is stored at once; when
   * an attempt fails, the verified blocks of the unfinished piece are stored too, so the resume
   * repeats at most one block. The last piece is stored only when the whole shard's SHA-256
   * matches the manifest. Returns the new state.
   */
  async #fetchInto(model, shard, state, url, progress, signal) {
    const layout = shard.layout;
    let current = state;
    const fail = (message, options = {}) => Object.assign(new AttemptError(message, options), { state: current });
    const start = current.bytes;
    const requested = start > 0 ? ` (asked for bytes ${start}-${shard.size - 1})` : '';
    const headers = { Accept: 'application/octet-stream' };
    if (start > 0) headers.Range = `bytes=${start}-${shard.size - 1}`;
    const watch = new StallWatch(this.#stallTimeout, signal);
    let response;
    try {
      response = await fetch(url, { headers, signal: watch.signal, cache: 'no-store', credentials: 'same-origin' });
    } catch (err) {
      watch.close();
      if (signal.aborted) throw abortReason(signal);
      if (watch.stalled) throw fail(`${watch.describe()} before the response${requested}`, { transient: true });
      const crossOrigin = new URL(url).origin !== globalThis.location?.origin;
      throw fail(`request failed (${err?.message ?? err}${crossOrigin ? '; a server on another origin must also send CORS headers' : ''})`,
        { transient: true });
    }
    const refuse = (message, options = {}) => {
      watch.close();
      response.body?.cancel().catch(() => {});
      return fail(message, options);
    };
    let skip = 0;
    // Content-Length is the body's length only without a Content-Encoding, which a cross-origin
    // response does not expose: there the byte count and the hashes decide alone.
    const length = response.type === 'basic' && !response.headers.get('Content-Encoding')
      ? response.headers.get('Content-Length') : null;
    if (response.status === 206 && start > 0) {
      // Cross-origin servers may not expose Content-Range: then the hashes catch any misplaced byte.
      const range = parseContentRange(response.headers.get('Content-Range'));
      if (response.headers.has('Content-Range') && (!range || range.start !== start || range.end !== shard.size - 1
          || (range.total !== null && range.total !== shard.size))) {
        throw refuse(`answered ${quoted(response.headers.get('Content-Range'))}${requested}`);
      }
      if (length !== null && Number(length) !== shard.size - start) throw refuse(`answered ${length} bytes${requested}`);
    } else if (response.status === 200) {
      if (length !== null && Number(length) !== shard.size) throw refuse(`has ${length} bytes, the manifest says ${shard.size}`);
      skip = start; // the server ignored Range: read past what is already stored
    } else {
      const s = response.status;
      throw refuse(`HTTP ${s}${response.statusText ? ' ' + response.statusText : ''}${requested}`,
        { transient: s >= 500 || s === 429 || s === 408 });
    }
    if (!response.body) throw refuse('response has no body');
    // Memory stays at one piece buffer and one read buffer, whatever the model's size: the body is
    // read only when the previous piece is stored (the network waits for slow storage), the piece
    // buffer is reused for every piece, and where the stream allows it (a byte stream) each read
    // lands in the same read buffer instead of a new chunk per read — garbage that the page's GC
    // collected late enough to hold hundreds of MiB.
    const body = new BodyReader(response.body);
    const hasher = current.hashState ? Sha256.restore(current.hashState) : new Sha256();
    let pieceStart = start;
    const pieceBuffer = new ArrayBuffer(Math.min(current.pieceSize, shard.size - pieceStart));
    let buffer = new Uint8Array(pieceBuffer);
    let filled = 0;
    let verified = 0; // bytes of the buffer whose blocks matched (layout only)
    let received = 0;
    try {
      while (pieceStart < shard.size) {
        let chunk;
        try {
          chunk = await body.read();
        } catch (err) {
          if (signal.aborted) throw abortReason(signal);
          if (watch.stalled) throw fail(`${watch.describe()} after ${received} bytes${requested}`, { transient: true });
          throw fail(`connection dropped after ${received} bytes${requested} (${err?.message ?? err})`, { transient: true });
        }
        if (chunk.done) throw fail(`body ended after ${received} bytes${requested}`, { transient: true });
        watch.reset();
        let bytes = chunk.value;
        received += bytes.length;
        if (skip > 0) {
          const drop = Math.min(skip, bytes.length);
          skip -= drop;
          bytes = bytes.subarray(drop);
        }
        // Bytes past the manifest's size are not ours: once every piece is stored, stop reading.
        while (bytes.length > 0 && pieceStart < shard.size) {
          const take = Math.min(buffer.length - filled, bytes.length);
          buffer.set(bytes.subarray(0, take), filled);
          // Hashed as it arrives (small steps keep the page responsive); the state saved with a
          // piece is always at its end, and a failed attempt restarts from that saved state.
          if (!layout) hasher.update(bytes.subarray(0, take));
          filled += take;
          bytes = bytes.subarray(take);
          progress.loaded += take;
          progress.sessionBytes += take;
          if (layout) verified = await checkBlocks(shard, buffer, pieceStart, verified, filled, hasher, fail);
          if (filled === buffer.length) {
            current = await this.#commitPiece(model, shard, current, buffer, hasher);
            watch.reset(); // time spent storing is not the server's silence
            pieceStart += buffer.length;
            filled = 0;
            verified = 0;
            // Stored pieces hold copies (a Blob, a written file): the buffer is free for the next one.
            if (pieceStart < shard.size) buffer = new Uint8Array(pieceBuffer, 0, Math.min(current.pieceSize, shard.size - pieceStart));
          }
          progress.emit('downloading');
        }
      }
      return current;
    } catch (err) {
      if (verified > 0 && !err?.integrity && !(err instanceof StorageWriteError)) {
        // Keep the verified blocks of the unfinished piece: the resume starts right after them.
        try {
          current = await this.#commitPiece(model, shard, current, buffer.subarray(0, verified), hasher);
          filled -= verified;
        } catch { /* storage failed too: the resume starts at the last stored piece */ }
      }
      progress.loaded -= filled; // bytes of an unfinished piece are not kept
      if (err instanceof AttemptError) err.state = current;
      throw err;
    } finally {
      watch.close();
      body.cancel();
    }
  }

  /** Store one piece (`bytes`, which follow `state.bytes`) and the progress record counting it. */
  async #commitPiece(model, shard, state, bytes, hasher) {
    const start = state.bytes;
    const end = start + bytes.length - 1;
    const last = end === shard.size - 1;
    let hashState = null;
    if (last) {
      // The manifest vouches for the shard's sha256: block hashes alone never make it complete.
      const digest = hasher.digest();
      if (digest !== shard.sha256) {
        throw Object.assign(new AttemptError(`the whole shard (bytes 0-${end}) failed its SHA-256`
          + (shard.layout ? ' although every block matched its block hash (the manifest contradicts itself)' : ''),
        { integrity: { start: 0, end, what: 'whole shard', whole: true } }), { state });
      }
    } else {
      hashState = hasher.save();
    }
    // The stored piece's own digest: blobs() hashes the piece again and compares before handing it out.
    const digest = await subtleSha256(bytes);
    const next = { pieceSize: state.pieceSize, pieces: state.pieces + 1, bytes: end + 1, sizes: [...state.sizes, bytes.length],
      digests: [...state.digests, digest], hashState, complete: last };
    try {
      await this.#pieces.write(model.key, shard.index, state.pieces, bytes, next);
    } catch (err) {
      throw new StorageWriteError(err, model, shard);
    }
    return next;
  }

  /**
   * The model's shards as Blobs in order, ready for `wllama.loadModel(blobs, …)`: disk-backed,
   * built from the stored pieces. A byte-chunk model comes back as one Blob (it must be under
   * 2 GiB). Updates `lastUsed`.
   */
  async blobs(id) {
    const model = this.#model(id);
    checkLoadable(model);
    // Held while the pieces are read, checked and lastUsed is written: an eviction or delete from
    // another tab waits (or passes this version over) instead of leaving a complete entry behind
    // whose pieces are gone.
    return this.#lock(model.key, {}, () => this.#blobs(id, model));
  }

  async #blobs(id, model) {
    const entry = await this.#book.get('entries', model.key);
    if (!entry?.complete) {
      throw new ModelCacheError(`model ${quoted(id)} is not downloaded (this version, ${model.file.sha256.slice(0, 12)}…)`,
        { code: 'not-downloaded', hint: `call download(${quoted(id)}) first` });
    }
    const progress = await this.#book.progressOf(model.key);
    const shardBlobs = [];
    const discard = async (shard, what) => {
      // The browser evicted or damaged part of the store: make download() fetch this shard again.
      await this.#pieces.dropShard(model.key, shard.index);
      await this.#book.update('entries', model.key, (e) => ({ ...e, complete: false, verifiedAt: null }));
      return new ModelCacheError(`the cached copy of ${quoted(id)} ${what} shard ${quoted(shard.name)}; it was discarded`,
        { code: 'not-downloaded', hint: `call download(${quoted(id)}) to fetch it again` });
    };
    for (const shard of model.shards) {
      const p = progress.get(shard.index);
      const parts = p?.complete ? await this.#pieces.read(model.key, shard.index, p.pieces) : [];
      if (!p?.complete || !piecesIntact(parts, shard, p)) throw await discard(shard, 'lost part of');
      if (this.#verifyOnLoad) {
        // Each piece is hashed again (one at a time: memory stays at one piece) and compared with
        // the digest recorded when it was verified: bytes changed in storage are never handed out.
        let at = 0;
        for (let i = 0; i < parts.length; i += 1) {
          let digest;
          try {
            digest = await subtleSha256(new Uint8Array(await parts[i].arrayBuffer()));
          } catch {
            digest = null; // changed while read (OPFS refuses a File whose file changed)
          }
          if (digest !== p.digests[i]) throw await discard(shard, `has bytes ${at}-${at + parts[i].size - 1} changed in storage in`);
          at += parts[i].size;
        }
      }
      shardBlobs.push(new Blob(parts, { type: 'application/octet-stream' }));
    }
    const touched = await this.#book.update('entries', model.key,
      (e) => (e.complete ? { ...e, lastUsed: Math.max(Date.now(), (e.lastUsed ?? 0) + 1) } : undefined));
    if (!touched) {
      throw new ModelCacheError(`model ${quoted(id)} was removed from the cache while it was being loaded`,
        { code: 'not-downloaded', hint: `call download(${quoted(id)}) again` });
    }
    if (model.format === 'bytes') return [new Blob(shardBlobs, { type: 'application/octet-stream' })];
    return shardBlobs;
  }

  /** `{ used, quota, available, persisted, models: [{ id, size, lastUsed, … }] }` (LRU first). */
  async storageInfo() {
    const estimate = navigator.storage?.estimate ? await navigator.storage.estimate() : {};
    const quota = estimate.quota ?? 0;
    const persisted = navigator.storage?.persisted ? await navigator.storage.persisted() : false;
    const entries = await this.#book.all('entries');
    const bytes = await this.#book.storedBytes();
    const current = new Set([...this.#models.values()].map((m) => m.key));
    const models = entries.map((e) => ({
      id: e.id, size: bytes.get(e.key) ?? 0, lastUsed: e.lastUsed, downloaded: Boolean(e.complete),
      totalBytes: e.totalBytes, current: current.has(e.key), key: e.key, file: e.file,
    })).sort(byLeastRecentlyUsed);
    return {
      used: models.reduce((n, m) => n + m.size, 0),
      quota,
      available: Math.max(0, quota - (estimate.usage ?? 0)),
      persisted,
      models,
    };
  }

  /**
   * Remove least recently used models until this cache holds at most `targetBytes`. Models being
   * downloaded (here or in another tab) are skipped. Resolves `{ evicted: [{ id, size, lastUsed }], used }`.
   */
  async evictLeastRecentlyUsed(targetBytes) {
    if (!Number.isSafeInteger(targetBytes) || targetBytes < 0) {
      throw new ModelCacheError(`targetBytes must be a whole number of bytes, not ${quoted(targetBytes)}`, { code: 'usage' });
    }
    const info = await this.storageInfo();
    let used = info.used;
    const evicted = [];
    for (const m of info.models) {
      if (used <= targetBytes) break;
      await this.#lock(m.key, { ifAvailable: true }, async (held) => {
        if (!held) return;
        await this.#pieces.dropVersion(m.key);
        used -= m.size;
        evicted.push({ id: m.id, size: m.size, lastUsed: m.lastUsed });
      });
    }
    return { evicted, used };
  }

  /**
   * Remove every stored version of model `id`, and this manifest's version of it even when it was
   * stored under another model's id (two models with the same bytes share one stored version).
   * Resolves true when something was removed.
   */
  async delete(id) {
    if (typeof id !== 'string') throw new ModelCacheError('delete(id) takes a model id', { code: 'usage' });
    const key = this.#models.get(id)?.key;
    const entries = (await this.#book.all('entries')).filter((e) => e.id === id || e.key === key);
    for (const e of entries) await this.#dropOrFail(e);
    return entries.length > 0;
  }

  /** Remove every stored model of this back end (the manifest copies stay, for offline visits). */
  async clear() {
    for (const e of await this.#book.all('entries')) await this.#dropOrFail(e);
    await this.#pieces.collectGarbage(async (key) => (await this.#book.get('entries', key)) !== undefined);
  }

  async #dropOrFail(entry) {
    await this.#lock(entry.key, { ifAvailable: true }, async (held) => {
      if (!held) {
        throw new ModelCacheError(`model ${quoted(entry.id)} is being downloaded right now`,
          { code: 'busy', hint: 'abort that download (its signal) first' });
      }
      await this.#pieces.dropVersion(entry.key);
    });
  }
}

const OPEN_TOKEN = Symbol('ModelCache.open');

function byLeastRecentlyUsed(a, b) {
  return (a.lastUsed ?? -1) - (b.lastUsed ?? -1) || a.id.localeCompare(b.id);
}

/** Every piece the record counts is there at its recorded size (pieces from before 'sizes' never are). */
function piecesIntact(blobs, shard, progress) {
  const sizes = progress.sizes;
  return Array.isArray(sizes) && Array.isArray(progress.digests) && sizes.length === progress.pieces
    && blobs.length === progress.pieces && sizes.reduce((n, x) => n + x, 0) === progress.bytes
    && blobs.every((blob, i) => blob !== null && blob.size === sizes[i]);
}

/**
 * A response body read into one reused buffer when the stream is a byte stream (BYOB reads), or
 * chunk by chunk as the stream hands them out otherwise. The bytes a read returns are valid until
 * the next read.
 */
class BodyReader {
  constructor(body) {
    try {
      this.reader = body.getReader({ mode: 'byob' });
      this.byob = true;
    } catch {
      this.reader = body.getReader();
      this.byob = false;
    }
    this.buffer = null;
  }

  async read() {
    if (!this.byob) return this.reader.read();
    // The buffer is handed to the stream and comes back (transferred) holding the bytes read; after
    // a failed read the next one starts with a new buffer.
    const given = this.buffer ?? new ArrayBuffer(BODY_READ_SIZE);
    this.buffer = null;
    const result = await this.reader.read(new Uint8Array(given));
    if (result.value?.buffer.byteLength) this.buffer = result.value.buffer;
    return result;
  }

  cancel() {
    this.reader.cancel().catch(() => {});
  }
}

/**
 * Check the blocks of a piece (`buffer`, starting at shard byte `pieceStart`) that became whole
 * since the last call: from `verified` up to `filled`. A matching block feeds the shard's hasher;
 * a block that differs throws (built by `fail`). Returns the new count of verified bytes.
 */
async function checkBlocks(shard, buffer, pieceStart, verified, filled, hasher, fail) {
  const { blockSize, blocks } = shard.layout;
  while (verified < filled) {
    const at = pieceStart + verified;
    const length = Math.min(blockSize, shard.size - at);
    if (filled - verified < length) break;
    const index = at / blockSize; // pieces start on block boundaries
    const block = buffer.subarray(verified, verified + length);
    if (await subtleSha256(block) !== blocks[index]) {
      const end = at + length - 1;
      throw fail(`bytes ${at}-${end} (block ${index + 1} of ${blocks.length}) failed their SHA-256`,
        { integrity: { start: at, end, what: `block ${index + 1} of ${blocks.length}` } });
    }
    hasher.update(block);
    verified += length;
  }
  return verified;
}

/** wllama takes GGUF shards or one file, each under 2 GiB: refuse anything it cannot load. */
function checkLoadable(model) {
  if (model.totalBytes === 0) {
    throw new ModelCacheError(`${model.id} is empty (0 bytes); there is nothing to load`, { code: 'manifest' });
  }
  if (model.format === 'bytes' || model.format === 'single') {
    if (model.file.size > WLLAMA_FILE_LIMIT) {
      throw new ModelCacheError(
        `${model.id} is one ${formatBytes(model.file.size)} file (${model.format === 'bytes' ? 'byte chunks' : 'a single file'}); `
        + 'a browser can load at most 2 GiB as one file',
        { code: 'too-large', hint: 'publish it as GGUF shards: a release config entry with "format": "gguf", "shard_size": "512M"' });
    }
    return;
  }
  const big = model.shards.find((s) => s.size > WLLAMA_FILE_LIMIT);
  if (big) {
    throw new ModelCacheError(`${model.id}: shard ${quoted(big.name)} is ${formatBytes(big.size)}; a browser loads at most 2 GiB per shard`,
      { code: 'too-large', hint: 'publish smaller shards ("shard_size": "512M")' });
  }
}

function requestPersistence() {
  // Persistent storage keeps the browser from evicting the cache under storage pressure.
  if (navigator.storage?.persist) {
    navigator.storage.persisted().then((yes) => (yes ? true : navigator.storage.persist())).catch(() => {});
  }
}

/**
 * The manifest's text: from the network when it answers with a valid manifest (then kept for
 * later), otherwise the copy kept from an earlier visit. Falling back is safe: that copy was
 * valid, and every byte it lists is verified anyway. Without a copy, the network's problem is the error.
 */
async function loadManifestText(url, book, stallTimeout) {
  let problem;
  let error;
  // A server that answers nothing (or stops mid-way) must not hold open() forever: the same
  // stall timeout as shard requests, then the copy kept from the last visit.
  const watch = new StallWatch(stallTimeout, new AbortController().signal);
  try {
    const response = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/octet-stream' }, signal: watch.signal });
    watch.reset();
    if (response.ok) {
      const declared = Number(response.headers.get('Content-Length'));
      if (declared > MAX_MANIFEST_BYTES) throw new ManifestError(`manifest ${url}: larger than ${MAX_MANIFEST_BYTES} bytes`);
      const text = await readLimited(response, url, watch);
      parseManifest(text, url);
      // The copy is for later visits; failing to keep it (a full disk) must not fail this one.
      await book.put('manifests', { url, text, savedAt: Date.now() }).catch(() => {});
      return { text, offline: false, problem: null };
    }
    response.body?.cancel().catch(() => {});
    problem = `HTTP ${response.status} from ${url}`;
  } catch (err) {
    if (!watch.stalled && !(err instanceof ModelCacheError) && !(err instanceof TypeError) && err?.name !== 'AbortError') throw err;
    error = err instanceof ModelCacheError ? err : null;
    problem = error ? error.message
      : (watch.stalled ? `${watch.describe()} from ${url}` : `cannot fetch ${url} (${err?.message ?? err})`);
  } finally {
    watch.close();
  }
  const copy = await book.get('manifests', url);
  if (!copy) {
    if (error) throw error;
    throw new ModelCacheError(`${problem}, and no copy of it is kept from an earlier visit`,
      { code: 'source', hint: 'check the URL and the network (a manifest on another origin needs CORS headers)' });
  }
  return { text: copy.text, offline: true, problem };
}

async function readLimited(response, url, watch) {
  const reader = response.body.getReader();
  const parts = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    watch.reset();
    if (done) break;
    total += value.length;
    if (total > MAX_MANIFEST_BYTES) {
      reader.cancel().catch(() => {});
      throw new ManifestError(`manifest ${url}: larger than ${MAX_MANIFEST_BYTES} bytes`);
    }
    parts.push(value);
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ManifestError(`manifest ${url}: not UTF-8`);
  }
}
