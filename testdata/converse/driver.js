'use strict';
// Drives converse.js clients in one headless Chromium for
// integration_test/converse_test.go (see README.md).
//
//   node driver.js <base-url>
//
// <base-url> serves index.html at <base-url> and converse's dist/ at /dist/.
// Environment: CHROMIUM (default /usr/bin/chromium), DRIVER_LIFETIME_MS (the
// driver kills the browser and exits after this long, default 120000),
// DRIVER_OP_TIMEOUT_MS (each request, default 30000).
//
// Protocol: one JSON object per line. Requests on stdin carry an id and an
// op; each gets one answer on stdout, {"id", "result"} or {"id", "error"},
// possibly out of order (requests run concurrently):
//   {"id":1,"op":"open","page":"p","jid":"a@localhost","password":"…","websocket_url":"ws://…"}
//       → {"device":1234,"jid":"a@localhost/…"}   a new page in its own browser context, logged in
//   {"id":2,"op":"devices","page":"p","jid":"b@localhost","version":"urn:xmpp:omemo:2"} → [ids]
//   {"id":3,"op":"send","page":"p","to":"b@localhost","body":"…"} → summary of the sent stanza
//   {"id":4,"op":"chat","page":"p","jid":"b@localhost"} → the chat's messages
// Unsolicited events: {"event":"ready","browser_pid":n} first, then
// {"event":"message","page":"p",…} for every message a page received.
// The pages' console output, page errors and failed requests go to stderr as
// "[page] level: text" lines. End of stdin, SIGTERM or SIGINT close the
// browser and end the driver.

const readline = require('node:readline');
const puppeteer = require('puppeteer-core');

const baseURL = process.argv[2];
if (!baseURL) {
	process.stderr.write('usage: node driver.js <base-url>\n');
	process.exit(2);
}
const chromium = process.env.CHROMIUM || '/usr/bin/chromium';
const lifetime = Number(process.env.DRIVER_LIFETIME_MS || 120000);
const opTimeout = Number(process.env.DRIVER_OP_TIMEOUT_MS || 30000);

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const log = (line) => process.stderr.write(line.replace(/\n+$/, '') + '\n');
// pageLog writes every line of text with the prefix "[page] level: ", so
// that a reader can filter by page and level line by line.
const pageLog = (page, level, text) =>
	log(
		String(text)
			.replace(/\n+$/, '')
			.split('\n')
			.map((l) => `[${page}] ${level}: ${l}`)
			.join('\n'),
	);

// Only the loopback test servers may be reached: converse's UI links
// images on conversejs.org, for instance.
const local = (url) => {
	try {
		const u = new URL(url);
		return ['data:', 'blob:'].includes(u.protocol) || ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname);
	} catch {
		return false;
	}
};

let browser;
const pages = new Map(); // name → Page

let closing = false;
async function shutdown(code) {
	if (closing) return;
	closing = true;
	if (browser) {
		// browser.close can hang on a wedged browser: give it a second,
		// then kill the process (puppeteer also kills it when node exits).
		await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 1000))]);
		try {
			browser.process()?.kill('SIGKILL');
		} catch {}
	}
	process.exit(code);
}
process.on('SIGTERM', () => shutdown(143));
process.on('SIGINT', () => shutdown(130));
setTimeout(() => {
	log(`driver: lifetime of ${lifetime} ms exceeded, exiting`);
	shutdown(3);
}, lifetime);

function withTimeout(p, what) {
	let timer;
	return Promise.race([
		p,
		new Promise((_, reject) => {
			timer = setTimeout(() => reject(new Error(`${what}: no answer within ${opTimeout} ms`)), opTimeout);
		}),
	]).finally(() => clearTimeout(timer));
}

// formatConsole turns a console call's arguments into text: converse logs
// '%c%s', 'color: …', text for stanzas, errors as their stack.
function formatConsole(msg) {
	if (msg.args().length === 0) {
		// The browser's own messages (a failed resource load): no arguments.
		const url = msg.location()?.url;
		return url ? `${msg.text()} (${url})` : msg.text();
	}
	const vals = msg.args().map((a) => {
		const ro = a.remoteObject();
		return ro.value !== undefined ? ro.value : ro.description || ro.type;
	});
	if (typeof vals[0] === 'string' && vals[0].includes('%')) {
		let i = 1;
		const first = vals[0].replace(/%[csdoOif]/g, (m) => {
			const v = vals[i++];
			return m === '%c' ? '' : String(v);
		});
		return [first, ...vals.slice(i)].join(' ');
	}
	return vals.map(String).join(' ');
}

async function open(req) {
	if (pages.has(req.page)) throw new Error(`page ${req.page} exists`);
	// A browser context per page: separate storage (IndexedDB) per client.
	const ctx = await browser.createBrowserContext();
	const page = await ctx.newPage();
	pages.set(req.page, page);
	const name = req.page;
	page.on('console', (m) => {
		// A blocked request is logged as "blocked" below.
		const url = m.location()?.url;
		if (m.args().length === 0 && url && !local(url)) return;
		pageLog(name, m.type(), formatConsole(m));
	});
	page.on('pageerror', (e) => pageLog(name, 'pageerror', e?.stack || e));
	page.on('requestfailed', (r) => {
		if (local(r.url())) pageLog(name, 'requestfailed', `${r.url()} ${r.failure()?.errorText}`);
	});
	await page.setRequestInterception(true);
	page.on('request', (r) => {
		if (r.isInterceptResolutionHandled()) return;
		if (local(r.url())) {
			r.continue();
		} else {
			pageLog(name, 'blocked', r.url());
			r.abort('blockedbyclient');
		}
	});
	await page.exposeFunction('interopEvent', (ev) => emit({ ...ev, page: name }));
	const resp = await page.goto(baseURL, { waitUntil: 'load', timeout: opTimeout });
	if (!resp?.ok()) throw new Error(`${baseURL}: HTTP ${resp?.status()}`);
	return page.evaluate((cfg) => window.interop.start(cfg), {
		jid: req.jid,
		password: req.password,
		websocket_url: req.websocket_url,
		loglevel: req.loglevel,
	});
}

function pageOf(req) {
	const page = pages.get(req.page);
	if (!page) throw new Error(`no page ${req.page}`);
	return page;
}

const ops = {
	open,
	devices: (req) => pageOf(req).evaluate((j, v) => window.interop.devices(j, v), req.jid, req.version),
	send: (req) => pageOf(req).evaluate((j, b) => window.interop.send(j, b), req.to, req.body),
	chat: (req) => pageOf(req).evaluate((j) => window.interop.chat(j), req.jid),
};

async function handle(line) {
	let req;
	try {
		req = JSON.parse(line);
	} catch (e) {
		log(`driver: bad request ${line}: ${e}`);
		return;
	}
	try {
		const op = ops[req.op];
		if (!op) throw new Error(`unknown op ${req.op}`);
		const result = await withTimeout(op(req), `${req.op} on page ${req.page}`);
		emit({ id: req.id, result: result ?? null });
	} catch (e) {
		emit({ id: req.id, error: String(e?.message || e) });
	}
}

async function main() {
	browser = await puppeteer.launch({
		executablePath: chromium,
		headless: true,
		// A pipe instead of a DevTools port: nothing else listens.
		pipe: true,
		protocolTimeout: opTimeout,
		timeout: opTimeout,
		// puppeteer makes a fresh --user-data-dir in $TMPDIR and removes it.
		args: [
			'--no-sandbox', // root in CI
			'--disable-gpu',
			'--disable-quic',
			'--no-first-run',
			'--disable-background-networking',
			'--disable-component-update',
			'--disable-sync',
			// No name resolves: nothing leaves the loopback interface.
			'--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
		],
	});
	emit({ event: 'ready', browser_pid: browser.process()?.pid || 0, version: await browser.version() });
	const rl = readline.createInterface({ input: process.stdin });
	rl.on('line', (line) => {
		handle(line);
	});
	rl.on('close', () => shutdown(0));
}

main().catch((e) => {
	log(`driver: ${e?.stack || e}`);
	shutdown(1);
});
