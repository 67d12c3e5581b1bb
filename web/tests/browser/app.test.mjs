// The page in a real headless Chromium against the real `chatrun serve` (offline model, slowed
// so that refreshes and stops land mid-reply). The test starts both and stops both.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const repo = resolve(web, '..');
const binary = process.env.CHATRUN_BIN ?? join(repo, 'target/debug/chatrun');
const results = join(web, 'test-results');

const freePort = () =>
  new Promise((ok) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });

let server;
let browser;
let base;
let dataDir;

before(async () => {
  assert.ok(existsSync(binary), `${binary} is missing: cargo build -p chatrun-local --bin chatrun`);
  assert.ok(existsSync(join(web, 'dist/index.html')), 'web/dist is missing: npm run build');
  mkdirSync(results, { recursive: true });
  const port = await freePort();
  dataDir = mkdtempSync(join(tmpdir(), 'chatrun-browser-'));
  base = `http://127.0.0.1:${port}`;
  server = spawn(binary, ['serve', '--port', String(port), '--data-dir', dataDir, '--web-dir', join(web, 'dist')], {
    env: { ...process.env, CHAT_OFFLINE_TOKENS_PER_SEC: '12', OPENAI_API_KEY: '', OPENAI_BASE_URL: '', ANTHROPIC_API_KEY: '', RUST_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/api/health`)).ok) break;
    } catch {}
    if (i > 200) throw new Error('chatrun did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
  server?.kill('SIGINT');
  await new Promise((r) => (server?.exitCode !== null ? r() : server.once('exit', r)));
  rmSync(dataDir, { recursive: true, force: true });
});

/** Markdown and its rendering compared as plain words. */
const plain = (text) =>
  text
    .replace(/\*\*/g, '')
    .replace(/^\s*[-*] /gm, '')
    .replace(/\s+/g, ' ')
    .trim();

const assistantTexts = (page) => page.locator('article.message.assistant').allInnerTexts();
const lastAssistant = (page) => page.locator('article.message.assistant').last();
const idle = (page) => page.getByRole('button', { name: 'Send' }).waitFor({ timeout: 30_000 });

async function send(page, text) {
  const box = page.getByLabel('Message');
  await box.fill(text);
  await box.press('Enter');
}

async function storedChat(page, chatId) {
  return page.evaluate(async (id) => {
    const token = localStorage.getItem('chatrun.token');
    const r = await fetch(`/api/chats/${id}`, { headers: { Authorization: `Bearer ${token}` } });
    return { status: r.status, body: r.status === 200 ? await r.json() : null };
  }, chatId);
}

const chatIdOf = (page) => new URL(page.url()).pathname.split('/')[2];

async function newChat(context) {
  const page = await context.newPage();
  await page.goto(base);
  await page.getByRole('button', { name: 'Start a new chat' }).click();
  await page.waitForURL(/\/c\//);
  return page;
}

async function partialReply(page, minWords = 4) {
  await page.waitForFunction(
    (n) => {
      const all = document.querySelectorAll('article.message.assistant');
      const last = all[all.length - 1];
      return last && last.innerText.split(/\s+/).filter(Boolean).length >= n;
    },
    minWords,
    { timeout: 20_000 },
  );
}

describe('the chat page', () => {
  it('sends a message and streams the reply in', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await newChat(context);
    await send(page, 'Tell me about tide pools and the animals that live there');
    await page.locator('article.message.user').first().waitFor();
    await partialReply(page, 3);
    const early = (await lastAssistant(page).innerText()).length;
    await partialReply(page, 12);
    const later = (await lastAssistant(page).innerText()).length;
    assert.ok(later > early, 'the reply grows while it streams');
    assert.ok(await page.getByRole('button', { name: /Stop/ }).isVisible(), 'a stop button while streaming');
    await idle(page);
    const stored = await storedChat(page, chatIdOf(page));
    assert.equal(stored.body.messages.length, 2);
    assert.equal(plain(await lastAssistant(page).innerText()), plain(stored.body.messages[1].parts.find((p) => p.type === 'text').text));
    await page.getByRole('link', { name: /Tell me about tide pools/ }).waitFor();
    await page.screenshot({ path: join(results, 'chat-1280x800.png'), fullPage: false });
    await page.setViewportSize({ width: 390, height: 844 });
    await new Promise((r) => setTimeout(r, 500)); // the sidebar slides away
    await page.screenshot({ path: join(results, 'chat-390x844.png') });
    await page.getByRole('button', { name: 'Show chats' }).click();
    await new Promise((r) => setTimeout(r, 500));
    await page.screenshot({ path: join(results, 'sidebar-390x844.png') });
    await context.close();
  });

  it('carries on after a refresh mid-stream, with the final text shown once', async () => {
    const context = await browser.newContext();
    const page = await newChat(context);
    await send(page, 'Explain how glaciers carve valleys');
    await partialReply(page, 5);
    await page.reload();
    await page.locator('article.message.user').first().waitFor();
    await partialReply(page, 5);
    await idle(page);
    const shown = await assistantTexts(page);
    assert.equal(shown.length, 1, 'one reply');
    const stored = await storedChat(page, chatIdOf(page));
    const storedText = stored.body.messages[1].parts.find((p) => p.type === 'text').text;
    assert.equal(plain(shown[0]), plain(storedText), 'nothing missing, nothing doubled');
    assert.equal((await page.locator('article.message.user').count()), 1);
    await context.close();
  });

  it('shows the same reply live in a second tab', async () => {
    const context = await browser.newContext();
    const first = await newChat(context);
    await send(first, 'Hello there');
    await idle(first);
    const second = await context.newPage();
    await second.goto(first.url());
    await second.locator('article.message.assistant').first().waitFor();
    await new Promise((r) => setTimeout(r, 300));
    await send(first, 'What makes coral reefs so colourful?');
    await second.locator('article.message.user').nth(1).waitFor({ timeout: 20_000 });
    await second.locator('article.message.assistant').nth(1).waitFor({ timeout: 20_000 });
    await partialReply(second, 4);
    assert.equal(await first.getByRole('button', { name: /Stop/ }).isVisible(), true, 'still streaming when the second tab shows it');
    await idle(first);
    await second.waitForFunction(
      (expected) => {
        const all = document.querySelectorAll('article.message.assistant');
        return all.length === 2 && all[1].innerText === expected;
      },
      await lastAssistant(first).innerText(),
      { timeout: 20_000 },
    );
    await context.close();
  });

  it('keeps exactly the text shown before stopping, after a refresh', async () => {
    const context = await browser.newContext();
    const page = await newChat(context);
    await send(page, 'Write a long story about a lighthouse keeper');
    await partialReply(page, 6);
    await page.getByRole('button', { name: /Stop/ }).click();
    await idle(page);
    await new Promise((r) => setTimeout(r, 800)); // the stored reply replaces what was in flight
    const before = plain(await lastAssistant(page).innerText());
    const stored = await storedChat(page, chatIdOf(page));
    const storedText = stored.body.messages[1].parts.find((p) => p.type === 'text').text;
    assert.equal(plain(storedText), before);
    assert.equal(stored.body.session.streaming, false);
    await page.reload();
    await lastAssistant(page).waitFor();
    assert.equal(plain(await lastAssistant(page).innerText()), before);
    assert.ok(before.split(' ').length < 60, 'stopped early');
    await context.close();
  });

  it('renames and deletes chats in the sidebar and on the server', async () => {
    const context = await browser.newContext();
    const page = await newChat(context);
    await send(page, 'A chat to rename');
    await idle(page);
    const chatId = chatIdOf(page);
    const link = page.getByRole('link', { name: /A chat to rename/ });
    await link.waitFor();
    page.once('dialog', (d) => d.accept('Renamed by the test'));
    await page.getByRole('button', { name: 'Rename A chat to rename' }).click();
    await page.getByRole('link', { name: /Renamed by the test/ }).waitFor();
    assert.equal((await storedChat(page, chatId)).body.title, 'Renamed by the test');
    page.once('dialog', (d) => {
      assert.match(d.message(), /Delete/);
      d.accept();
    });
    await page.getByRole('button', { name: 'Delete Renamed by the test' }).click();
    await page.getByRole('link', { name: /Renamed by the test/ }).waitFor({ state: 'detached' });
    assert.equal((await storedChat(page, chatId)).status, 404);
    await context.close();
  });
});
