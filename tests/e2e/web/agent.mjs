// Browser agents for the end-to-end suites: Debian's Chromium driven by playwright-core, each
// agent a page running JsSIP over its own WebSocket. Reads commands on stdin, one per line,
// and prints every event as a line on stdout (the suite waits for the lines it expects):
//   ua NAME WS_URL AOR USER PASSWORD   open a page, register     -> "NAME registered"
//   call NAME TARGET_URI [opus]        place a call (opus: offer Opus alone) -> "NAME call confirmed"
//   stats NAME                         -> "NAME stats in=N out=N dtls=STATE srtp=CIPHER codec=MIME"
//   hold NAME / unhold NAME            re-INVITE (sendonly / sendrecv) -> "NAME hold" / "NAME unhold"
//   hangup NAME                        end the call               -> "NAME ended local ..."
//   close NAME                         close the page: its WebSocket drops, no un-REGISTER
//   quit
// Incoming calls are answered at once ("NAME incoming from USER", "NAME incoming confirmed").
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));
const files = { '/': ['page.html', 'text/html'], '/jssip.min.js': ['dist/jssip.min.js', 'text/javascript'] };
const srv = http.createServer((req, res) => {
  const f = files[req.url];
  if (!f) { res.writeHead(404); return res.end(); }
  res.writeHead(200, { 'content-type': f[1] });
  res.end(fs.readFileSync(path.join(dir, f[0])));
});
// a fixed port when the suite allows only its own page's Origin
await new Promise((r) => srv.listen(Number(process.env.AGENT_HTTP_PORT || 0), '127.0.0.1', r));
const url = `http://127.0.0.1:${srv.address().port}/`;
const say = (l) => process.stdout.write(l + '\n');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    '--allow-loopback-in-peer-connection', '--ignore-certificate-errors'],
});
say(`browser ${browser.version()}`);
const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
const pages = new Map();

async function run(line) {
  const [cmd, name, ...rest] = line.trim().split(/\s+/);
  if (cmd === 'ua') {
    const page = await ctx.newPage();
    page.on('console', (m) => { if (process.env.AGENT_DEBUG) say(`[${name} console] ${m.text()}`); });
    page.on('pageerror', (e) => say(`${name} page_error ${e.message}`));
    await page.exposeFunction('report', (l) => say(l));
    await page.goto(url);
    pages.set(name, page);
    const [ws, aor, user, pass] = rest;
    await page.evaluate(([n, w, a, u, p]) => window.startUA(n, w, a, u, p), [name, ws, aor, user, pass]);
  } else if (cmd === 'call') {
    await pages.get(name).evaluate(([n, t, o]) => window.call(n, t, o), [name, rest[0], rest[1] || '']);
  } else if (cmd === 'stats') {
    await pages.get(name).evaluate((n) => window.stats(n), name);
  } else if (cmd === 'hold' || cmd === 'unhold') {
    await pages.get(name).evaluate(([n, on]) => window.hold(n, on), [name, cmd === 'hold']);
  } else if (cmd === 'hangup') {
    await pages.get(name).evaluate(() => window.hangup());
  } else if (cmd === 'close') {
    await pages.get(name).close({ runBeforeUnload: false });
    pages.delete(name);
    say(`${name} closed`);
  } else if (cmd === 'quit') {
    await browser.close();
    srv.close();
    say('bye');
    process.exit(0);
  } else if (cmd) {
    say(`unknown command ${cmd}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  try { await run(line); } catch (e) { say(`error ${e.message.split('\n')[0]}`); }
}
await browser.close();
process.exit(0);
