// The connection as a person sees it, in headless Chromium against the real `chatrun serve`:
// a dropped socket mid-reply, the server stopped and started again, a request the server never
// answers, and the page served over plain http on a non-local name (as on a LAN).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  LAN_HOST,
  assistants,
  chatIdOf,
  idle,
  lastAssistant,
  launchBrowser,
  partialReply,
  plain,
  replyText,
  results,
  send,
  sleep,
  startServer,
  storedChat,
  storedText,
  trackSockets,
  users,
} from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer({ tokensPerSec: 30 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const status = (page) => page.getByRole('status').filter({ hasText: /Reconnecting|Retrying/ });

describe('the connection', () => {
  it('resumes a reply after the socket drops mid-stream, with nothing lost or doubled', async () => {
    const context = await browser.newContext();
    await trackSockets(context);
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Explain how glaciers carve valleys');
    await partialReply(page, 5);
    const sockets = await page.evaluate(() => window.__sockets.length);
    await page.evaluate(() => window.__sockets.at(-1).close());
    await page.getByText('Reconnected.').waitFor({ timeout: 10_000 });
    assert.ok((await page.evaluate(() => window.__sockets.length)) > sockets, 'a new socket');
    await idle(page);
    assert.equal(await assistants(page).count(), 1);
    const stored = await storedChat(page, chatIdOf(page));
    assert.equal(plain(await replyText(lastAssistant(page))), plain(storedText(stored.body.messages[1])));
    await context.close();
  });

  it('says it is reconnecting while the server is down, fails a send visibly after 10 s, reconnects when it is back, and Retry resends the same message', async () => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Hello there');
    await idle(page);
    const chatId = chatIdOf(page);
    const before = (await storedChat(page, chatId)).body.messages;

    await server.stop();
    await status(page).getByText(/Connection lost\. Reconnecting/).waitFor({ timeout: 10_000 });
    assert.equal(await page.getByRole('img', { name: 'Connection: reconnecting' }).count(), 1);
    await page.screenshot({ path: join(results, 'reconnecting-1100x760.png') });

    const started = Date.now();
    await send(page, 'Are you back?');
    await users(page).nth(1).waitFor();
    const alert = page.getByRole('alert').filter({ hasText: 'No answer from the server within 10 seconds.' });
    await alert.waitFor({ timeout: 15_000 });
    const waited = Date.now() - started;
    assert.ok(waited >= 9_500 && waited < 14_000, `failed after ${waited} ms`);
    const sentId = await users(page).nth(1).getAttribute('data-message-id');

    await server.start();
    await page.getByText('Reconnected.').waitFor({ timeout: 15_000 });
    assert.equal(await status(page).count(), 0, 'the reconnecting notice is gone');
    await alert.getByRole('button', { name: 'Retry' }).click();
    await partialReply(page, 3);
    await idle(page);
    const after = (await storedChat(page, chatId)).body.messages;
    assert.deepEqual(after.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
    assert.deepEqual(after.slice(0, 2), before, 'the earlier reply was not regenerated');
    assert.equal(after[2].id, sentId, 'the same message, resent');
    assert.equal(storedText(after[2]), 'Are you back?');
    assert.equal(await users(page).count(), 2);
    assert.equal(plain(await replyText(lastAssistant(page))), plain(storedText(after[3])));
    await context.close();
  });

  it('when the answer comes late, shows the reply that did start instead of sending twice', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Hello there');
    await idle(page);
    const chatId = chatIdOf(page);
    server.pause();
    try {
      await send(page, 'Tell me about tide pools');
      await page.getByRole('alert').filter({ hasText: 'No answer from the server within 10 seconds.' }).waitFor({ timeout: 15_000 });
    } finally {
      server.resume();
    }
    // The message had reached the server: its reply streams in, and Retry has nothing to resend.
    await page.getByRole('alert').filter({ hasText: 'No answer' }).waitFor({ state: 'detached', timeout: 15_000 });
    await idle(page);
    await page.waitForFunction(() => document.querySelectorAll('article[aria-label="Assistant"]').length === 2, null, { timeout: 15_000 });
    const stored = (await storedChat(page, chatId)).body.messages;
    assert.deepEqual(stored.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
    assert.equal(await users(page).count(), 2);
    assert.equal(plain(await replyText(lastAssistant(page))), plain(storedText(stored[3])));
    await context.close();
  });

  it("shows API Gateway's own error frames (no `type`) and fails the send they answer, which Retry resends", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    let failNextSend = true;
    // Between the page and the server, as API Gateway would when send-message's function fails.
    await page.routeWebSocket(/\/ws/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((message) => {
        if (failNextSend && String(message).includes('"send-message"')) {
          failNextSend = false;
          ws.send(JSON.stringify({ message: 'Internal server error', connectionId: 'Xy1=', requestId: 'gw-42' }));
          return;
        }
        upstream.send(message);
      });
      upstream.onMessage((message) => ws.send(message));
    });
    await page.goto(server.base);
    const started = Date.now();
    await send(page, 'Hello there');
    const failed = page.getByRole('alert').filter({ hasText: 'Internal server error' }).filter({ has: page.getByRole('button', { name: 'Retry' }) });
    await failed.waitFor({ timeout: 5000 });
    assert.ok(Date.now() - started < 5000, 'at once, not after the 10 s timeout');
    await page.getByRole('alert').filter({ hasText: 'The server reported an error: Internal server error' }).waitFor();
    await failed.getByRole('button', { name: 'Retry' }).click();
    // The Send button is still there until the resent message is under way: wait for its reply.
    await assistants(page).first().waitFor({ timeout: 10_000 });
    await idle(page);
    const stored = (await storedChat(page, chatIdOf(page))).body.messages;
    assert.deepEqual(stored.map((m) => m.role), ['user', 'assistant']);
    assert.equal(await users(page).count(), 1);
    await context.close();
  });

  it('works over plain http on a non-local name: new chat ids and copying without secure-context APIs', async () => {
    const context = await browser.newContext();
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.base });
    const page = await context.newPage();
    await page.goto(`http://${LAN_HOST}:${server.port}/`);
    assert.equal(await page.evaluate(() => window.isSecureContext), false);
    assert.equal(await page.evaluate(() => typeof navigator.clipboard), 'undefined', 'no Clipboard API here');
    await send(page, 'Hello there');
    await page.waitForURL(/\/c\/[0-9a-f-]{36}$/);
    await idle(page);
    await page.evaluate(() =>
      document.addEventListener('copy', (e) => {
        const area = e.target;
        window.__copied = area.value.slice(area.selectionStart, area.selectionEnd);
      }),
    );
    await lastAssistant(page).getByRole('button', { name: 'Copy message' }).click();
    await lastAssistant(page).getByRole('button', { name: 'Copied' }).waitFor();
    const stored = await storedChat(page, chatIdOf(page));
    const expected = storedText(stored.body.messages[1]);
    assert.equal(await page.evaluate(() => window.__copied), expected, 'the fallback copied the reply');
    // The same clipboard, read from a page that may read it.
    const reader = await context.newPage();
    await reader.goto(server.base);
    assert.equal(await reader.evaluate(() => navigator.clipboard.readText()), expected);
    await context.close();
  });
});
