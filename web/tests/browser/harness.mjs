// What the browser tests share: a real `chatrun serve` (offline model, slowed so refreshes and
// stops land mid-reply) that a test can stop and start again on the same port and data, and a
// headless Debian Chromium driven by playwright-core.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const web = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const repo = resolve(web, '..');
const binary = process.env.CHATRUN_BIN ?? join(repo, 'target/debug/chatrun');
export const results = join(web, 'test-results');
/** A name that is not localhost: pages served under it are not a secure context, as on a LAN. */
export const LAN_HOST = 'chatrun.test';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const freePort = () =>
  new Promise((ok) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });

/**
 * Starts `chatrun serve`; `stop()` and `start()` again keep the port and the data. `models`
 * lists more models besides the offline one (`CHAT_MODELS`): the offline model answers as each.
 * `replyTokens` makes every offline reply exactly that long (`CHAT_OFFLINE_REPLY_TOKENS`), for
 * tests that need many turns quickly.
 */
export async function startServer({ tokensPerSec = 12, models = [], replyTokens } = {}) {
  assert.ok(existsSync(binary), `${binary} is missing: cargo build -p chatrun-local --bin chatrun`);
  assert.ok(existsSync(join(web, 'dist/index.html')), 'web/dist is missing: npm run build');
  mkdirSync(results, { recursive: true });
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'chatrun-browser-'));
  const base = `http://127.0.0.1:${port}`;
  let child;
  const server = {
    port,
    base,
    dataDir,
    async start() {
      child = spawn(binary, ['serve', '--port', String(port), '--data-dir', dataDir, '--web-dir', join(web, 'dist')], {
        env: {
          ...process.env,
          CHAT_OFFLINE_TOKENS_PER_SEC: String(tokensPerSec),
          CHAT_MODELS: models.join(','),
          ...(replyTokens ? { CHAT_OFFLINE_REPLY_TOKENS: String(replyTokens) } : {}),
          OPENAI_API_KEY: '',
          OPENAI_BASE_URL: '',
          ANTHROPIC_API_KEY: '',
          RUST_LOG: 'warn',
          // The suites open many pages (a guest each) and send many messages from one address;
          // the limits themselves are tested in crates/local/tests/limits.rs and vitest.
          CHAT_USER_MAX_CONCURRENT_TURNS: '1000000',
          CHAT_USER_MESSAGES_PER_MINUTE: '1000000',
          CHAT_GUEST_SESSIONS_PER_IP_PER_HOUR: '1000000',
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      for (let i = 0; ; i++) {
        try {
          if ((await fetch(`${base}/api/health`)).ok) break;
        } catch {}
        if (i > 400) throw new Error('chatrun did not start');
        await sleep(50);
      }
    },
    /** Freezes the server (SIGSTOP): connections stay open and nothing answers. */
    pause() {
      child.kill('SIGSTOP');
    },
    resume() {
      child.kill('SIGCONT');
    },
    async stop() {
      if (!child || child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exited;
    },
    async close() {
      await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  await server.start();
  return server;
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      `--host-resolver-rules=MAP ${LAN_HOST} 127.0.0.1`,
    ],
  });
}

/** Markdown and its rendering compared as plain words. */
export const plain = (text) =>
  text
    .replace(/```[a-z]*\n?/g, '')
    .replace(/\*\*|`/g, '')
    .replace(/^\s*[-*] /gm, '')
    .replace(/^#+ /gm, '')
    .replace(/\s+/g, ' ')
    .trim();

export const assistants = (page) => page.getByRole('article', { name: 'Assistant' });
export const users = (page) => page.getByRole('article', { name: 'You' });
export const lastAssistant = (page) => assistants(page).last();
/** The reply has finished: the Send button is back. */
export const idle = (page, timeout = 40_000) => page.getByRole('button', { name: 'Send' }).waitFor({ timeout });
/** The words of the text parts of a reply, as the page shows them (without its buttons). */
export const replyText = (locator) => locator.locator('.message-body').innerText();

export async function send(page, text) {
  const box = page.getByRole('textbox', { name: 'Message' });
  await box.fill(text);
  await box.press('Enter');
}

export async function storedChat(page, chatId) {
  return page.evaluate(async (id) => {
    const token = localStorage.getItem('chatrun.token');
    const r = await fetch(`/api/chats/${id}`, { headers: { Authorization: `Bearer ${token}` } });
    return { status: r.status, body: r.status === 200 ? await r.json() : null };
  }, chatId);
}

export const storedText = (message) =>
  message.parts
    .filter((p) => p.type === 'text')
    .map((p) => p.text)
    .join('\n\n');

export const chatIdOf = (page) => new URL(page.url()).pathname.split('/')[2];

/** Waits until the last reply shows at least `minWords` words. */
export async function partialReply(page, minWords = 4) {
  await page.waitForFunction(
    (n) => {
      const all = document.querySelectorAll('article[aria-label="Assistant"] .message-body');
      const last = all[all.length - 1];
      return last && last.innerText.split(/\s+/).filter(Boolean).length >= n;
    },
    minWords,
    { timeout: 20_000 },
  );
}

/** The page's WebSockets, kept where a test can close them (a dropped connection). */
export const trackSockets = (context) =>
  context.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.__sockets.push(this);
      }
    };
  });
