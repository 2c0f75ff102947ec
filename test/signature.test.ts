import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { secretFingerprint, sign, verifySignature } from '../src/receiver/signature.ts';
import { fixture, FIXTURE_SECRET } from './helpers/fixtures.ts';

describe('X-Hub-Signature-256', () => {
  const { body, signature } = fixture('text-message');

  it('accepts the signature Meta computed over the raw bytes', () => {
    expect(verifySignature(body, signature, [FIXTURE_SECRET])).toEqual({
      ok: true,
      keyIndex: 0,
      fingerprint: secretFingerprint(FIXTURE_SECRET),
    });
  });

  it('refuses a missing header', () => {
    expect(verifySignature(body, undefined, [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'missing' });
    expect(verifySignature(body, '', [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'missing' });
  });

  it('refuses a signature of the wrong length or form', () => {
    expect(verifySignature(body, signature.slice(0, -2), [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'malformed' });
    expect(verifySignature(body, signature + '00', [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'malformed' });
    expect(verifySignature(body, signature.replace('sha256=', 'sha1='), [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'malformed' });
    expect(verifySignature(body, 'sha256=' + 'zz'.repeat(32), [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'malformed' });
  });

  it('refuses a signature made with another secret or over other bytes', () => {
    expect(verifySignature(body, signature, ['another-secret'])).toEqual({ ok: false, reason: 'mismatch' });
    const tampered = Buffer.from(body.toString('utf8').replace('Hello there', 'Hello thera'));
    expect(verifySignature(tampered, signature, [FIXTURE_SECRET])).toEqual({ ok: false, reason: 'mismatch' });
  });

  it('accepts any configured secret and says which one matched (rotation)', () => {
    const r = verifySignature(body, signature, ['new-secret', FIXTURE_SECRET]);
    expect(r).toEqual({ ok: true, keyIndex: 1, fingerprint: secretFingerprint(FIXTURE_SECRET) });
  });

  it('checks the raw bytes: Meta escapes (\\uXXXX, \\/) do not survive re-serialisation', () => {
    const escaped = fixture('text-unicode-escaped');
    expect(escaped.body.toString('utf8')).toMatch(/\\u[0-9a-f]{4}/);
    expect(verifySignature(escaped.body, escaped.signature, [FIXTURE_SECRET]).ok).toBe(true);
    const reserialised = Buffer.from(JSON.stringify(JSON.parse(escaped.body.toString('utf8'))));
    expect(reserialised.equals(escaped.body)).toBe(false);
    expect(verifySignature(reserialised, escaped.signature, [FIXTURE_SECRET]).ok).toBe(false);
  });

  it('accepts upper-case hex and matches node:crypto', () => {
    const expected = 'sha256=' + createHmac('sha256', 's').update(body).digest('hex');
    expect(sign(body, 's')).toBe(expected);
    expect(verifySignature(body, expected.toUpperCase().replace('SHA256=', 'sha256='), ['s']).ok).toBe(true);
  });

  it('fingerprints do not contain the secret', () => {
    const fp = secretFingerprint(FIXTURE_SECRET);
    expect(fp).toMatch(/^[0-9a-f]{12}$/);
    expect(fp).not.toContain(FIXTURE_SECRET);
    expect(secretFingerprint('other')).not.toBe(fp);
  });
});
