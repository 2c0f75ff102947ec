// X-Hub-Signature-256: `sha256=<64 hex>` = HMAC-SHA256(app secret, raw body bytes). Checked on the exact bytes
// received (Meta escapes non-ASCII as \uXXXX and / as \/, so re-serialised JSON would not match), against every
// configured secret (rotation), in constant time.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

export type SignatureCheck =
  | { ok: true; keyIndex: number; fingerprint: string }
  | { ok: false; reason: 'missing' | 'malformed' | 'mismatch' };

const HEADER = /^sha256=([0-9a-fA-F]{64})$/;

/** A short, stable, non-reversible name for a secret, safe to store and log. */
export function secretFingerprint(secret: string): string {
  return createHash('sha256').update('wahook-secret-fingerprint:').update(secret).digest('hex').slice(0, 12);
}

export function sign(body: Buffer | string, secret: string): string {
  return 'sha256=' + createHmac('sha256', secret).update(body).digest('hex');
}

export function verifySignature(body: Buffer, header: string | undefined, secrets: readonly string[]): SignatureCheck {
  if (header === undefined || header === '') return { ok: false, reason: 'missing' };
  const m = HEADER.exec(header.trim());
  if (!m) return { ok: false, reason: 'malformed' };
  const given = Buffer.from(m[1]!.toLowerCase(), 'hex');
  let match = -1;
  // Check every secret, whichever matches, so timing does not reveal which one did.
  secrets.forEach((secret, i) => {
    const expected = createHmac('sha256', secret).update(body).digest();
    if (expected.length === given.length && timingSafeEqual(expected, given) && match === -1) match = i;
  });
  if (match === -1) return { ok: false, reason: 'mismatch' };
  return { ok: true, keyIndex: match, fingerprint: secretFingerprint(secrets[match]!) };
}
