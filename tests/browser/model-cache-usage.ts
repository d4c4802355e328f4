// Type-checked by tests/test_web_cache.py with `tsc --noEmit`: the way a TEA page uses the cache,
// against the hand-written teadist/web/model-cache.d.ts and wllama's own types.
import { Wllama } from '@wllama/wllama';
import {
  IntegrityError, ModelCache, ModelCacheError, QuotaError, Sha256, SourceError, formatBytes, parseManifest,
  type ModelListing, type ModelStatus, type ProgressReport, type StorageInfo,
} from '../../teadist/web/model-cache.js';

export async function loadModel(manifestUrl: string, bar: HTMLProgressElement, line: HTMLElement): Promise<string> {
  const cache = await ModelCache.open({ manifestUrl, storage: 'opfs' });
  const fallback: ModelCache = await ModelCache.open({ manifestUrl: new URL(manifestUrl), storage: 'indexeddb', retries: 1, verifyOnLoad: false });
  const models: ModelListing[] = await cache.list();
  const wanted = models.find((m) => m.format === 'gguf' && !m.cached) ?? models[0];
  const status: ModelStatus = await cache.status(wanted.id);
  line.textContent = `${wanted.file}: ${formatBytes(status.partialBytes)} of ${formatBytes(status.totalBytes)}`
    + (status.lastUsed === null ? '' : `, last used ${new Date(status.lastUsed).toISOString()}`);
  const ctrl = new AbortController();
  try {
    const done: ModelStatus = await cache.download(wanted.id, {
      signal: ctrl.signal,
      concurrency: 3,
      onProgress: (p: ProgressReport) => {
        bar.value = p.progress;
        line.textContent = `${p.phase}: ${p.text} (${p.loadedBytes}/${p.totalBytes}, ${p.timeElapsed.toFixed(1)} s`
          + (p.timeRemaining === null ? ')' : `, ${Math.round(p.timeRemaining)} s left)`);
      },
    });
    if (!done.downloaded || done.verifiedAt === null) throw new Error('not verified');
  } catch (err) {
    if (err instanceof QuotaError) {
      const names: string[] = err.candidates.map((c) => `${c.id} (${formatBytes(c.size)})`);
      line.textContent = `${err.message} — ${names.join(', ')}; need ${err.neededBytes}, have ${err.availableBytes}`;
      await cache.evictLeastRecentlyUsed(Math.max(0, (await cache.storageInfo()).used - err.neededBytes));
    } else if (err instanceof IntegrityError) {
      line.textContent = `${err.shard} bytes ${err.start}-${err.end} from ${err.url ?? '?'}`;
    } else if (err instanceof SourceError) {
      line.textContent = err.failures.map((f) => `${f.url}: ${f.reason}`).join('\n');
    } else if (err instanceof ModelCacheError) {
      line.textContent = `${err.code}: ${err.message}${err.hint ? ` (${err.hint})` : ''}`;
    }
    throw err;
  }
  const info: StorageInfo = await fallback.storageInfo();
  line.textContent = `${formatBytes(info.used)} used of ${formatBytes(info.quota)}, ${info.models.length} models,`
    + ` persisted: ${info.persisted}, offline manifest: ${cache.offline}`;
  const wllama = new Wllama({ default: '/wllama/wasm/wllama.wasm' });
  const blobs: Blob[] = await cache.blobs(wanted.id);
  await wllama.loadModel(blobs, { n_ctx: 2048, n_gpu_layers: 0 });
  const evicted = await cache.evictLeastRecentlyUsed(0);
  const removed: boolean = await cache.delete(evicted.evicted[0]?.id ?? wanted.id);
  await cache.clear();
  const h = new Sha256().update(new Uint8Array(64));
  const resumed = Sha256.restore(h.save()).update(new ArrayBuffer(3)).digest();
  const parsed = parseManifest('{}', manifestUrl)[0];
  return `${removed} ${resumed} ${parsed.shards[0].sources[0]} ${h.length}`;
}
