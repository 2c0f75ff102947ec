// wahook's four roles: `wahook setup-roles` creates them (a DBA with CREATEROLE) and applies their grants;
// `wahook start` on its embedded database also gives the receiver and the worker passwords of their own,
// kept in the data directory, so even the development setup runs with least privilege.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';

export async function setupRoles(url: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url, application_name: 'wahook setup-roles' });
  await client.connect();
  try {
    const r = await client.query<{ role: string }>('select r as role from wahook.setup_roles() as r');
    return r.rows.map((x) => x.role);
  } finally {
    await client.end();
  }
}

/** Role URLs for the embedded database: set up the roles, and passwords for the receiver and the worker. */
export async function embeddedRoleUrls(ownerUrl: string, dataDir: string): Promise<{ receiver: string; worker: string }> {
  await setupRoles(ownerUrl);
  const file = path.join(dataDir, 'role-passwords.json');
  const passwords = existsSync(file)
    ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>)
    : { wahook_receiver: randomBytes(18).toString('base64url'), wahook_worker: randomBytes(18).toString('base64url') };
  writeFileSync(file, JSON.stringify(passwords), { mode: 0o600 });
  const client = new pg.Client({ connectionString: ownerUrl });
  await client.connect();
  try {
    for (const [role, password] of Object.entries(passwords)) {
      await client.query('select wahook.set_login_password($1, $2)', [role, password]);
    }
  } finally {
    await client.end();
  }
  const urlFor = (role: string) => {
    const u = new URL(ownerUrl);
    u.username = role;
    u.password = passwords[role]!;
    return u.toString();
  };
  return { receiver: urlFor('wahook_receiver'), worker: urlFor('wahook_worker') };
}
