// Types for model-cache.js (hand-written; the module itself is plain JavaScript, no build step).

/** Where verified pieces are kept: the origin private file system, or IndexedDB Blobs. */
export type StorageKind = 'opfs' | 'indexeddb';

export type ModelFormat = 'single' | 'bytes' | 'gguf';

export interface OpenOptions {
  /** The manifest or release index (`model-manifest.json`); relative URLs resolve against the page. */
  manifestUrl: string | URL;
  /** Default 'opfs'. */
  storage?: StorageKind;
  /**
   * Size of a stored piece, in bytes (a power of two, 65536 to 67108864; default 8 MiB; at least
   * the manifest's block size). Shards without block hashes resume at a piece boundary; shards
   * with block hashes resume after their last verified block.
   */
  pieceSize?: number;
  /** Extra attempts per URL after a network error or a 5xx/429 answer (0 to 10; default 2). */
  retries?: number;
  /**
   * Milliseconds without a byte before the manifest request (then the copy kept from an earlier
   * visit is used) or a shard attempt (then it is resumed) is cut (100 to 3600000; default 30000).
   */
  stallTimeout?: number;
  /**
   * Default true: `blobs()` hashes every stored piece again (SubtleCrypto, one piece in memory at
   * a time) and compares it with the digest recorded when it was verified, so bytes changed in
   * storage are never handed out. False skips that read of the whole model.
   */
  verifyOnLoad?: boolean;
}

/** One model of the manifest, as `list()` gives it. */
export interface ModelListing {
  /** `name`, or `name:tag` when the manifest entry has a tag. */
  id: string;
  /** The original model file name. */
  file: string;
  /** The original model file's size in bytes. */
  size: number;
  format: ModelFormat;
  /** True when this version (this manifest's sha256) is downloaded and verified. */
  cached: boolean;
}

export interface ShardStatus {
  name: string;
  size: number;
  /**
   * Bytes of this shard already stored: verified block by block, or (shards without block hashes)
   * kept, to be verified once the whole shard is in. `verified` is true only when the whole
   * shard's SHA-256 matched.
   */
  storedBytes: number;
  verified: boolean;
}

export interface ModelStatus {
  downloaded: boolean;
  /** Bytes of this version already stored; a download resumes after them. */
  partialBytes: number;
  /** Bytes to download in all (the shards' sizes added up). */
  totalBytes: number;
  /** When the download completed and verified (ms since the epoch), or null. */
  verifiedAt: number | null;
  /** When `blobs()` last handed the model out, or the download completed (ms since the epoch), or null. */
  lastUsed: number | null;
  shards: ShardStatus[];
}

export interface ProgressReport {
  phase: 'downloading' | 'verifying' | 'ready';
  /** 0 to 1. */
  progress: number;
  loadedBytes: number;
  totalBytes: number;
  /** A one-line description for a status line. */
  text: string;
  /** Seconds since `download()` was called. */
  timeElapsed: number;
  /** Estimated seconds left; null until a transfer rate is known; 0 when ready. */
  timeRemaining: number | null;
}

export interface DownloadOptions {
  onProgress?: (report: ProgressReport) => void;
  /** Aborting leaves every verified piece stored; the next `download()` resumes after it. */
  signal?: AbortSignal;
  /** Shards fetched at the same time (1 to 16; default 3). */
  concurrency?: number;
}

export interface StoredModel {
  id: string;
  /** Bytes this version holds in the cache. */
  size: number;
  lastUsed: number | null;
  downloaded: boolean;
  totalBytes: number;
  /** False for a version the open manifest no longer lists (a stale release). */
  current: boolean;
  /** The version key (a digest of what identifies the model's bytes). */
  key: string;
  file: string;
}

export interface StorageInfo {
  /** Bytes this cache holds (this storage back end). */
  used: number;
  /** The origin's quota, from `navigator.storage.estimate()`. */
  quota: number;
  /** Quota minus the origin's whole usage. */
  available: number;
  persisted: boolean;
  /** Least recently used first: the order `evictLeastRecentlyUsed` removes them in. */
  models: StoredModel[];
}

export interface EvictedModel {
  id: string;
  size: number;
  lastUsed: number | null;
}

export interface EvictionResult {
  evicted: EvictedModel[];
  /** Bytes the cache holds afterwards (above the target only if the rest is being downloaded). */
  used: number;
}

export declare class ModelCache {
  private constructor();
  static open(options: OpenOptions): Promise<ModelCache>;
  /** The manifest URL, absolute. */
  readonly manifestUrl: string;
  readonly storage: StorageKind;
  /**
   * True when the network gave no valid manifest (unreachable, an HTTP error, a broken file) and
   * the copy kept from an earlier visit is in use.
   */
  readonly offline: boolean;
  /** Why the network copy of the manifest was not used, or null. */
  readonly manifestProblem: string | null;

  list(): Promise<ModelListing[]>;
  status(id: string): Promise<ModelStatus>;
  /**
   * Fetch, verify and store every shard, resuming after what is already verified; resolves with
   * the new status. Rejects with IntegrityError, SourceError, QuotaError, ModelCacheError, or the
   * signal's reason (an AbortError).
   */
  download(id: string, options?: DownloadOptions): Promise<ModelStatus>;
  /**
   * The shards as disk-backed Blobs in order, for `wllama.loadModel(blobs, …)` (a byte-chunk model
   * as one Blob); updates lastUsed. Holds the model's lock meanwhile (an eviction passes it over);
   * with `verifyOnLoad` each stored piece is hashed again first. Rejects with code
   * 'not-downloaded' (and discards the shard) when a piece is missing or changed.
   */
  blobs(id: string): Promise<Blob[]>;
  storageInfo(): Promise<StorageInfo>;
  evictLeastRecentlyUsed(targetBytes: number): Promise<EvictionResult>;
  /**
   * Removes every stored version of the model, and this manifest's version of it also when another
   * model with the same bytes stored it; true when something was removed.
   */
  delete(id: string): Promise<boolean>;
  /** Removes every stored model of this back end (manifest copies stay, for offline visits). */
  clear(): Promise<void>;
}

export type ModelCacheErrorCode =
  | 'error' | 'usage' | 'unsupported' | 'manifest' | 'unknown-model' | 'not-downloaded' | 'too-large'
  | 'integrity' | 'source' | 'quota' | 'storage' | 'busy';

export declare class ModelCacheError extends Error {
  constructor(message: string, options?: { code?: ModelCacheErrorCode; hint?: string | null; cause?: unknown });
  readonly code: ModelCacheErrorCode;
  /** What to do next, or null. */
  readonly hint: string | null;
}

export declare class ManifestError extends ModelCacheError {}

export declare class IntegrityError extends ModelCacheError {
  /** The shard's file name. */
  readonly shard: string;
  /** First and last byte (inclusive) of the range that failed its hash. */
  readonly start: number;
  readonly end: number;
  readonly url: string | null;
}

export interface SourceFailure {
  url: string;
  reason: string;
}

export declare class SourceError extends ModelCacheError {
  readonly shard: string;
  readonly failures: SourceFailure[];
}

export declare class QuotaError extends ModelCacheError {
  readonly neededBytes: number;
  readonly availableBytes: number;
  /** Least recently used first. */
  readonly candidates: EvictedModel[];
}

export interface Sha256State {
  h: number[];
  bytes: number;
}

/** Incremental SHA-256 (SubtleCrypto has none); its state can be saved at a 64-byte boundary. */
export declare class Sha256 {
  update(data: Uint8Array | ArrayBuffer | ArrayBufferView): this;
  readonly length: number;
  /** Lowercase hex. */
  digest(): string;
  save(): Sha256State;
  static restore(state: Sha256State): Sha256;
}

export interface ParsedShard {
  index: number;
  name: string;
  size: number;
  sha256: string;
  offset: number | null;
  layout: { blockSize: number; blocks: string[] } | null;
  /** Tried in order: the name resolved against the manifest's URL, then the listed URLs. */
  sources: string[];
  /** Listed URLs a browser cannot read (GitHub's releases/download/, no CORS): never tried. */
  skipped: string[];
}

export interface ParsedModel {
  id: string;
  name: string;
  tag: string | null;
  description: string | null;
  file: { name: string; size: number; sha256: string };
  format: ModelFormat;
  shards: ParsedShard[];
  totalBytes: number;
}

/** Validate a manifest or release index; throws ManifestError naming the field. */
export declare function parseManifest(text: string, manifestUrl: string): ParsedModel[];

/** Binary units: 1536 → "1.5 KiB". */
export declare function formatBytes(n: number): string;

/** The largest file wllama can load (2^31 − 1 bytes). */
export declare const WLLAMA_FILE_LIMIT: number;
