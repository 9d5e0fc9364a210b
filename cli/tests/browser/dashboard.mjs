// The dashboard in a real browser: headless Debian chromium driven by playwright-core.
//
//   node cli/tests/browser/dashboard.mjs <admin-url> <screenshot-dir>
//
// Run by cli/tests/dashboard.rs, which starts the broker (with an operator and a viewer admin
// token), drives traffic, and registers the component DASH_COMPONENT whose instance watches its
// config. Environment: DASH_OPERATOR_TOKEN, DASH_VIEWER_TOKEN, DASH_COMPONENT, DASH_CONFIG
// (`key=value` to set through the edit form), DASH_EXPECT_ALERT (the alerts page must show a
// firing alert; without it the page only has to render).
//
// Prints `ok - ...` per check; exits 1 on the first failed check, 2 on bad usage.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error('usage: node dashboard.mjs <admin-url> <screenshot-dir>');
  process.exit(2);
}
const operator = process.env.DASH_OPERATOR_TOKEN || '';
const viewer = process.env.DASH_VIEWER_TOKEN || '';
const component = process.env.DASH_COMPONENT || 'planner';
const change = process.env.DASH_CONFIG || 'latency_ms=7';
const [changeKey, changeValue] = change.split('=');
mkdirSync(shots, { recursive: true });

// The whole run is bounded even if the browser hangs.
const hardStop = setTimeout(() => {
  console.error('FAIL - the browser run took longer than 240 s');
  process.exit(1);
}, 240_000);

function check(cond, what) {
  if (!cond) throw new Error(what);
  console.log(`ok - ${what}`);
}

async function shot(page, name) {
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot ${path}`);
}

async function login(page, token) {
  await page.goto(`${base}/login`);
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForURL(`${base}/`), page.click('#login-form button[type=submit]')]);
}

async function logout(page) {
  await Promise.all([page.waitForURL(/\/login$/), page.click('form[action="/logout"] button')]);
}

const profile = mkdtempSync(join(tmpdir(), 'agentwire-dash-chromium-'));
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  context.setDefaultTimeout(30_000);
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));

  // Without a token every page leads to the login form.
  await page.goto(`${base}/`);
  check(/\/login$/.test(page.url()), 'the overview without a token redirects to /login');
  await page.fill('input[name=token]', 'not-a-known-token-at-all');
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#login-error');
  check(true, 'an unknown token is refused in the page');
  await shot(page, 'login');

  // A viewer reads but gets no edit form, and its POST is refused.
  if (viewer) {
    await login(page, viewer);
    await page.goto(`${base}/config/${component}`);
    await page.waitForSelector('#current-values, .note');
    check((await page.locator('#config-form').count()) === 0, 'a viewer sees no edit form');
    const status = await page.evaluate(async (c) => {
      const r = await fetch(`/config/${c}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: 'environment=default&changes=x%3D1',
      });
      return r.status;
    }, component);
    check(status === 403, `a viewer's POST gets 403 (got ${status})`);
    await shot(page, 'config-viewer');
    await logout(page);
  }

  await login(page, operator);

  // Overview: figures move without a reload.
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1);
  const total = () => page.getAttribute('#v-msgs-in-total', 'data-value');
  const first = await total();
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.waitForFunction(
    (v) => {
      const el = document.getElementById('v-msgs-in-total');
      return el && el.dataset.value !== v;
    },
    first,
    { timeout: 30_000 },
  );
  const second = await total();
  check(navigations.length === 0, 'the overview updated in place (no reload)');
  check(Number(second) > Number(first), `messages in went from ${first} to ${second} live`);
  // Let the charts gather a few points, then check they are drawn.
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 4);
  const points = await page.getAttribute('#chart-msgs polyline', 'points');
  check(points && points.trim().split(/\s+/).length >= 2, 'the messages chart has points');
  check((await page.locator('#shard-msgs rect').count()) >= 1, 'the shard balance has bars');
  await shot(page, 'overview');

  // Components: the registered component and its instance.
  await page.goto(`${base}/components`);
  await page.waitForSelector(`tr[data-component="${component}"]`);
  check(true, `the components page lists ${component}`);
  await page.waitForSelector(`#graph-svg g[data-node="${component}"]`);
  check(true, 'the dependency graph draws it');
  await shot(page, 'components');
  await page.click(`tr[data-component="${component}"] a`);
  await page.waitForSelector('#instance-table tr[data-instance]');
  check(true, `the drill-down lists ${component}'s instances`);
  await shot(page, 'component-detail');

  // Config: a bad line is refused in the page, a good one becomes a new version.
  await page.goto(`${base}/config/${component}`);
  await page.fill('#changes', 'this is not a change');
  await page.click('#config-submit');
  await page.waitForSelector('#config-error');
  check((await page.textContent('#config-error')).includes('line 1'), 'an invalid edit shows its error');
  await page.fill('#changes', change);
  await page.click('#config-submit');
  await page.waitForSelector('#config-saved');
  const cell = await page.textContent(`#current-values tr[data-key="${changeKey}"]`);
  check(cell && cell.includes(changeValue), `the edit form set ${change}`);
  check((await page.locator('#history tr[data-version]').count()) >= 1, 'the history lists it');
  await shot(page, 'config');
  await page.goto(`${base}/config`);
  await page.waitForSelector(`section[data-component="${component}"]`);
  await shot(page, 'config-list');

  // Alerts.
  await page.goto(`${base}/alerts`);
  if (process.env.DASH_EXPECT_ALERT) {
    await page.waitForFunction(
      () => Number(document.getElementById('firing-count')?.textContent || 0) > 0,
      null,
      { timeout: 60_000 },
    );
    check(true, 'the alerts page shows a firing alert');
  } else {
    await page.waitForSelector('#alerts-body');
    check(true, 'the alerts page renders');
  }
  await shot(page, 'alerts');

  // Connections.
  await page.goto(`${base}/connections`);
  await page.waitForSelector('#talkers');
  check(Number(await page.getAttribute('#v-open', 'data-value')) >= 1, 'connections are listed');
  await shot(page, 'connections');
} catch (e) {
  failed = true;
  console.error(`FAIL - ${e && e.message ? e.message : e}`);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(hardStop);
}
process.exit(failed ? 1 : 0);
