// Code blocks, the sidebar, dark mode and the phone layout, in headless Chromium against the
// real `chatrun serve`. Screenshots of each look land in web/test-results/.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  chatIdOf,
  idle,
  lastAssistant,
  launchBrowser,
  results,
  send,
  sleep,
  startServer,
  storedChat,
  storedText,
  web,
} from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer({ tokensPerSec: 60 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const scripts = (page) =>
  page.evaluate(() =>
    performance
      .getEntriesByType('resource')
      .map((r) => new URL(r.name).pathname)
      .filter((p) => p.endsWith('.js')),
  );

const rgb = (locator, property) => locator.evaluate((el, p) => getComputedStyle(el)[p], property);

describe('code, sidebar, themes and phone', () => {
  it('answers a request for code with a highlighted block (highlighter loaded on demand) that copies', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.base });
    const page = await context.newPage();
    await page.goto(server.base);
    await page.getByRole('textbox', { name: 'Message' }).waitFor();
    // The first paint's JavaScript: what the page loaded before any code block was on screen.
    const firstPaint = await scripts(page);
    assert.ok(!firstPaint.some((p) => /highlight/.test(p)), `no highlighter at first: ${firstPaint}`);
    const gzipped = firstPaint.reduce((sum, p) => sum + gzipSync(readFileSync(join(web, 'dist', p)), { level: 9 }).length, 0);
    console.log(`first-paint JavaScript: ${firstPaint.join(', ')}: ${(gzipped / 1024).toFixed(1)} KiB gzipped`);
    assert.ok(gzipped < 200 * 1024, `first-paint JavaScript is ${gzipped} bytes gzipped`);

    await send(page, 'write a python function that reverses a string');
    await idle(page);
    const block = lastAssistant(page).getByRole('group', { name: 'python code' });
    await block.waitFor();
    await block.locator('code[data-highlighted="yes"]').waitFor();
    assert.ok((await scripts(page)).some((p) => /highlight/.test(p)), 'the highlighter came when a code block did');
    const keyword = block.locator('.hljs-keyword').first();
    assert.equal(await keyword.innerText(), 'def');
    const plainColor = await rgb(block.locator('code'), 'color');
    assert.notEqual(await rgb(keyword, 'color'), plainColor, 'keywords have their own colour');
    await block.getByRole('button', { name: 'Copy code' }).click();
    await block.getByRole('button', { name: 'Copied' }).waitFor();
    const stored = await storedChat(page, chatIdOf(page));
    const fence = storedText(stored.body.messages[1]).match(/```python\n([\s\S]*?)```/);
    assert.ok(fence, 'the stored reply has the fenced block');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), fence[1].replace(/\n$/, ''));
    await page.screenshot({ path: join(results, 'code-light-1280x800.png') });
    await context.close();
  });

  it('follows the system theme, and the toggle overrides it and is remembered', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'show me code for binary search');
    await idle(page);
    await lastAssistant(page).locator('code[data-highlighted="yes"]').waitFor();
    const body = page.locator('body');
    const toggle = page.getByRole('button', { name: 'Dark mode' });
    assert.equal(await toggle.getAttribute('aria-pressed'), 'true', 'dark, as the system is');
    assert.equal(await rgb(body, 'backgroundColor'), 'rgb(33, 33, 33)');
    assert.equal(await rgb(body, 'color'), 'rgb(236, 236, 236)');
    assert.equal(await rgb(page.getByRole('complementary', { name: 'Chats' }), 'backgroundColor'), 'rgb(23, 23, 23)');
    await page.screenshot({ path: join(results, 'code-dark-1280x800.png') });
    await toggle.click();
    assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
    assert.equal(await rgb(body, 'backgroundColor'), 'rgb(255, 255, 255)');
    assert.equal(await rgb(body, 'color'), 'rgb(13, 13, 13)');
    await page.reload();
    await page.getByRole('textbox', { name: 'Message' }).waitFor();
    assert.equal(await rgb(body, 'backgroundColor'), 'rgb(255, 255, 255)', 'the choice outlives a reload');
    assert.equal(await page.getByRole('button', { name: 'Dark mode' }).getAttribute('aria-pressed'), 'false');
    await page.getByRole('button', { name: 'Dark mode' }).click();
    assert.equal(await rgb(body, 'backgroundColor'), 'rgb(33, 33, 33)');
    await context.close();
  });

  it('on a phone: the sidebar is an overlay with a backdrop that closes on Escape or a tap outside', async () => {
    for (const colorScheme of ['light', 'dark']) {
      const context = await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme, isMobile: true, hasTouch: true });
      const page = await context.newPage();
      await page.goto(server.base);
      await send(page, 'Hello there');
      await idle(page);
      const sidebar = page.getByRole('complementary', { name: 'Chats' });
      const menu = page.getByRole('button', { name: 'Show chats' });
      assert.equal(await sidebar.isVisible(), false, 'hidden at first');
      const box = await page.getByRole('textbox', { name: 'Message' }).boundingBox();
      assert.ok(box.width > 250 && box.y + box.height <= 844, 'the message box fits the phone');
      await page.screenshot({ path: join(results, `chat-${colorScheme}-390x844.png`) });
      await menu.tap();
      await sidebar.waitFor();
      assert.equal(await menu.getAttribute('aria-expanded'), 'true');
      await sleep(300); // the slide-in
      const rect = await sidebar.boundingBox();
      assert.equal(rect.x, 0);
      assert.ok(rect.width < 390, 'over the chat, not instead of it');
      assert.ok(await page.getByTestId('backdrop').isVisible(), 'a backdrop covers the chat');
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')), 'Search chats');
      await page.screenshot({ path: join(results, `sidebar-${colorScheme}-390x844.png`) });
      await page.keyboard.press('Escape');
      await sidebar.waitFor({ state: 'hidden' });
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')), 'Show chats');
      await menu.tap();
      await sidebar.waitFor();
      await sleep(300);
      await page.touchscreen.tap(370, 400); // outside the sidebar
      await sidebar.waitFor({ state: 'hidden' });
      await menu.tap();
      await page.getByRole('link', { name: /Hello there/ }).tap();
      await sidebar.waitFor({ state: 'hidden' });
      await context.close();
    }
  });

  it('groups, searches, renames and deletes chats with in-page dialogs, by keyboard, showing errors', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Planning a garden');
    await idle(page);
    const gardenId = chatIdOf(page);
    await page.getByRole('button', { name: 'New chat' }).click();
    await page.waitForURL(`${server.base}/`);
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')), 'Message', 'a new chat is ready to type');
    await send(page, 'Sourdough starter tips');
    await idle(page);
    const history = page.getByRole('navigation', { name: 'Chat history' });
    const today = history.getByRole('region', { name: 'Today' });
    await today.getByRole('link', { name: 'Sourdough starter tips' }).waitFor();
    assert.ok(await today.getByRole('link', { name: 'Planning a garden' }).isVisible());

    // Search by title.
    const search = page.getByRole('searchbox', { name: 'Search chats' });
    await search.fill('sourdough');
    assert.equal(await history.getByRole('link').count(), 1);
    await search.fill('no such chat');
    await history.getByText('No chat matches.').waitFor();
    await search.fill('');
    assert.equal(await history.getByRole('link').count(), 2);

    // Rename by keyboard: from the chat's link, Tab reaches its Rename button.
    await history.getByRole('link', { name: 'Planning a garden' }).focus();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')), 'Rename Planning a garden');
    await page.keyboard.press('Enter');
    const rename = page.getByRole('dialog', { name: 'Rename chat' });
    await rename.waitFor();
    const title = rename.getByRole('textbox', { name: 'Title' });
    assert.equal(await title.evaluate((el) => el === document.activeElement), true);
    await page.keyboard.press('Delete');
    await page.keyboard.press('Enter');
    assert.equal(await rename.getByRole('alert').innerText(), 'A title cannot be empty.');
    await page.keyboard.press('Escape');
    await rename.waitFor({ state: 'hidden' });
    await history.getByRole('button', { name: 'Rename Planning a garden' }).press('Enter');
    await page.keyboard.type('Vegetable garden');
    await page.keyboard.press('Enter');
    await rename.waitFor({ state: 'hidden' });
    await history.getByRole('link', { name: 'Vegetable garden' }).waitFor();
    assert.equal((await storedChat(page, gardenId)).body.title, 'Vegetable garden');

    // Delete: a failure is shown in the dialog.
    await history.getByRole('link', { name: 'Vegetable garden' }).focus();
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')), 'Delete Vegetable garden');
    await page.keyboard.press('Enter');
    const remove = page.getByRole('dialog', { name: 'Delete chat?' });
    await remove.waitFor();
    await page.route('**/api/chats/*', (route) =>
      route.request().method() === 'DELETE'
        ? route.fulfill({ status: 500, contentType: 'application/json', body: '{"error":{"code":"internal","message":"the store is unavailable"}}' })
        : route.continue(),
    );
    await remove.getByRole('button', { name: 'Delete' }).click();
    assert.match(await remove.getByRole('alert').innerText(), /Could not delete: the store is unavailable/);
    await page.unroute('**/api/chats/*');
    await remove.getByRole('button', { name: 'Delete' }).click();
    await remove.waitFor({ state: 'hidden' });
    await history.getByRole('link', { name: 'Vegetable garden' }).waitFor({ state: 'detached' });
    assert.equal((await storedChat(page, gardenId)).status, 404);
    await context.close();
  });

  it('keeps the pages of chats it loaded when a new turn arrives', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(server.base);
    await page.getByRole('textbox', { name: 'Message' }).waitFor();
    // 22 chats, made over the WebSocket as the page would.
    await page.evaluate(async () => {
      const token = localStorage.getItem('chatrun.token') ?? (await (await fetch('/api/session', { method: 'POST' })).json()).token;
      localStorage.setItem('chatrun.token', token);
      const ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
      await new Promise((ok) => (ws.onopen = ok));
      let acks = 0;
      const done = new Promise((ok) => {
        ws.onmessage = (e) => {
          if (JSON.parse(e.data).type === 'ack' && ++acks === 22) ok();
        };
      });
      for (let i = 0; i < 22; i++) {
        const text = `Bulk chat number ${String(i).padStart(2, '0')}`;
        ws.send(JSON.stringify({ action: 'send-message', requestId: `b${i}`, chatId: `bulk-${i}`, trigger: 'submit-message', message: { id: `bulk-m${i}`, role: 'user', parts: [{ type: 'text', text }] } }));
      }
      await done;
      ws.close();
    });
    // The replies finish before the sidebar loads: a reply stored between its two pages would
    // move its chat above the first page's cursor (a fixed wait of 3 s was not always enough).
    await page.evaluate(async () => {
      const token = localStorage.getItem('chatrun.token');
      const deadline = Date.now() + 60_000;
      for (let i = 0; i < 22; i++) {
        for (;;) {
          const r = await fetch(`/api/chats/bulk-${i}`, { headers: { Authorization: `Bearer ${token}` } });
          const chat = r.ok ? await r.json() : null;
          if (chat?.session && !chat.session.streaming && chat.messages.length === 2) break;
          if (Date.now() > deadline) throw new Error(`the reply of bulk-${i} did not finish within 60 s`);
          await new Promise((ok) => setTimeout(ok, 100));
        }
      }
    });
    await page.reload();
    const history = page.getByRole('navigation', { name: 'Chat history' });
    await history.getByRole('link').first().waitFor();
    const firstPage = await history.getByRole('link').count();
    assert.ok(firstPage < 22, `one page first (${firstPage})`);
    await history.getByRole('button', { name: 'Load more' }).click();
    await history.getByRole('link', { name: 'Bulk chat number 00' }).waitFor();
    const all = await history.getByRole('link').count();
    assert.equal(all, 22);
    await history.getByRole('link', { name: 'Bulk chat number 00' }).click();
    await page.waitForURL(/\/c\/bulk-0$/);
    await send(page, 'One more thing');
    await idle(page);
    await sleep(500);
    assert.equal(await history.getByRole('link').count(), 22, 'the loaded pages stay');
    const links = await history.getByRole('link').allInnerTexts();
    assert.equal(links[0], 'Bulk chat number 00', 'the chat with the new turn moves to the top');
    await context.close();
  });
});
